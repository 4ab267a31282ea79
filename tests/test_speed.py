"""The speed switches (usis.train.speed) change how a step runs, not what it computes."""

import copy

import pytest
import torch
from conftest import tiny_cfg

from usis.cli import main
from usis.train.ema import update_ema
from usis.train.speed import DivergenceCheck
from usis.train.trainer import Trainer

# the switches off: the reference point every variant is compared with
EAGER_NCHW = ["train.channels_last=false", "train.compile=false", "train.amp=false"]


def _one_step(tmp_path, *extra, steps: int = 1):
    """A fresh tiny trainer (same seed, same batches) after ``steps`` steps: (losses of the last, networks)."""
    tr = Trainer(tiny_cfg(*EAGER_NCHW, *extra), tmp_path, progress=False)
    _calm_adam(tr)
    for _ in range(steps):
        labels = tr.loaders.next_labels()["label"]
        photos = tr.loaders.next_photos()["image"]
        losses = tr.train_step(labels, photos)
    return {k: float(v) for k, v in losses.items()}, tr


def _calm_adam(tr) -> None:
    """Adam's epsilon 1e-8 -> 1e-3 in every optimizer of ``tr`` (both sides of a comparison).

    Adam's first steps move a parameter by about its learning rate whatever the size of its gradient, so
    a parameter whose gradient is zero in exact arithmetic (a bias in front of a batch or instance norm:
    G's convolutions, the decoder's) moves by +-lr on float rounding noise alone (|g| ~ 1e-7), in a
    direction that any change of summation order flips. With epsilon 1e-3 such noise moves it by ~1e-4 lr,
    while real gradients still move their parameters at first order in the gradient's value."""
    for opt in (tr.opt_g, tr.opt_s, tr.opt_d, tr.opt_dl):
        for group in opt.param_groups if opt is not None else ():
            group["eps"] = 1e-3


def _assert_same_step(a, b, rtol: float = 1e-4):
    """Losses within ``rtol`` relative each; every network's weights and buffers within ``rtol`` relative
    (the norm of the difference over the norm of the weights)."""
    (la, ta), (lb, tb) = a, b
    assert la.keys() == lb.keys()
    for k in la:
        assert abs(la[k] - lb[k]) <= rtol * max(1e-3, abs(la[k])), f"{k}: {la[k]} vs {lb[k]}"
    for name, net in ta.nets.named().items():
        other = dict(tb.nets.named()[name].state_dict())
        diff = norm = 0.0
        for key, v in net.state_dict().items():
            w = other[key]
            if v.is_floating_point():
                diff += (v.double() - w.double()).pow(2).sum().item()
                norm += v.double().pow(2).sum().item()
            else:
                assert torch.equal(v, w), f"{name}.{key}"
        assert diff ** 0.5 <= rtol * norm ** 0.5, f"{name}: |diff| / |w| = {(diff / norm) ** 0.5:.3g}"


@pytest.mark.parametrize("steps", [1, 2], ids=["r1_step", "plain_step"])
def test_channels_last_step_equals_the_nchw_step(tmp_path, steps):
    # steps=1 runs the lazy R1 step (r1_every=2 in the tiny config), steps=2 one without it after it
    ref = _one_step(tmp_path / "a", steps=steps)
    cl = _one_step(tmp_path / "b", "train.channels_last=true", steps=steps)
    assert next(cl[1].nets.G.parameters()).dim() == 1 or any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in cl[1].nets.G.parameters())
    _assert_same_step(ref, cl)


def test_channels_last_run_saves_weights_that_load_into_nchw_networks(tmp_path):
    tr = Trainer(tiny_cfg("train.channels_last=true"), tmp_path, progress=False)
    tr.fit(2, eval_at_start=False)
    state = torch.load(tmp_path / "checkpoints/latest.pt", weights_only=True)
    plain = Trainer(tiny_cfg(*EAGER_NCHW), tmp_path / "plain", progress=False)
    plain.load_state_dict(state)
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    assert torch.allclose(plain.generate(labels, 0), tr.generate(labels, 0), atol=1e-5)


def test_the_ema_update_is_one_foreach_op_with_the_loop_s_values(tmp_path):
    tr = Trainer(tiny_cfg(), tmp_path, progress=False)
    G = tr.nets.G
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p))
    loop, fused = copy.deepcopy(tr.nets.G_ema), copy.deepcopy(tr.nets.G_ema)
    with torch.no_grad():
        for pe, pm in zip(loop.parameters(), G.parameters(), strict=True):
            pe.lerp_(pm, 1 - 0.9)
        for be, bm in zip(loop.buffers(), G.buffers(), strict=True):
            be.copy_(bm)
    with torch.profiler.profile() as prof:
        update_ema(fused, G, 0.9, step=10**9, warmup=False)
    calls = {e.key: e.count for e in prof.key_averages()}
    # one call each (on a CPU the foreach ops loop over the tensors inside; on CUDA they are fused kernels)
    assert calls.get("aten::_foreach_lerp_") == 1 and calls.get("aten::_foreach_copy_") == 1, calls
    for (k, a), b in zip(loop.state_dict().items(), fused.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_the_divergence_check_reports_the_first_non_finite_step():
    check = DivergenceCheck()
    assert check.first_bad() is None
    check.observe(1, {"loss_g": torch.tensor(1.0), "r1": torch.tensor(0.5)})
    check.observe(2, {"loss_g": torch.tensor(float("nan"))})
    check.observe(3, {"loss_g": torch.tensor(float("inf"))})
    step, losses = check.first_bad()
    assert step == 2 and losses["loss_g"] != losses["loss_g"]  # NaN
    assert check.first_bad() is None  # what was read is forgotten
    check.observe(4, {"loss_g": torch.tensor(2.0)})
    assert check.first_bad() is None


def test_a_nan_between_two_reads_is_reported_at_its_own_step(tmp_path, monkeypatch, capsys):
    # losses are read every log_every=4 steps; the NaN enters at step 6, which is not a read
    real = Trainer.train_step

    def train_step(self, labels, photos, labelled=None):
        if self.step == 5:
            with torch.no_grad():
                w = self.nets.G.conv_img.weight
                w[(0,) * w.dim()] = float("nan")  # any memory format (the preset trains channels-last)
        return real(self, labels, photos, labelled)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    from conftest import TINY
    args = ["train", "--preset", "synthetic", "--out", str(tmp_path), "--iters", "20", "--no-progress"]
    for s in TINY + ["train.log_every=4", "train.ckpt_every=3"]:
        args += ["--set", s]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 3 and "diverged at step 6" in err and "Traceback" not in err
    state = torch.load(tmp_path / "checkpoints/latest.pt", weights_only=True)
    assert state["step"] == 3  # the save at step 6 found the NaN first and wrote nothing


def test_compiled_step_equals_eager_and_does_not_recompile(tmp_path):
    # aot_eager: Dynamo's graphs and AOTAutograd's joint forward/backward graphs (what decides recompiles and
    # what the compiled step computes) without inductor's C++ code generation, which takes many minutes
    # on two CPU cores; inductor itself is timed by benchmarks/gpu_check.sh and train_step.py
    import torch._dynamo

    torch._dynamo.reset()
    ref = _one_step(tmp_path / "a", steps=3)
    tr = Trainer(tiny_cfg(*EAGER_NCHW, "train.compile=true", "train.compile_backend=aot_eager"), tmp_path / "b",
                 progress=False)
    _calm_adam(tr)
    compiles = []
    for _ in range(3):
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        losses = tr.train_step(tr.loaders.next_labels()["label"], tr.loaders.next_photos()["image"])
        compiles.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - before)
    _assert_same_step(ref, ({k: float(v) for k, v in losses.items()}, tr))
    assert compiles[0] > 0  # the networks were compiled
    # warm-up: the first step (an R1 step) and the second (not one) compile their graphs; the third
    # (an R1 step again, r1_every=2) and every later one run without compiling anything
    for _ in range(3):
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        tr.train_step(tr.loaders.next_labels()["label"], tr.loaders.next_photos()["image"])
        compiles.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - before)
    assert compiles[2:] == [0, 0, 0, 0], compiles
