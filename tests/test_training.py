"""The training loop: exact resume, every discriminator type, clean stop on SIGTERM."""

import json
import time

import pytest
import torch
from conftest import TINY, assert_identical, tiny_cfg, train_until_sigterm

from usis import config as C
from usis.cli import main
from usis.train.trainer import Trainer


@pytest.mark.parametrize("extra", [["model.pixel_noise=0"], ["model.pixel_noise=2"]], ids=["paper", "pixel_noise"])
def test_resume_is_bit_identical(tmp_path, extra):
    n = 3  # odd, so the lazy R1 phase crosses the resume point
    a = Trainer(tiny_cfg(*extra), tmp_path / "a", progress=False)
    a.fit(2 * n, eval_at_start=False)

    b = Trainer(tiny_cfg(*extra), tmp_path / "b", progress=False)
    b.fit(n, eval_at_start=False)
    del b
    b2 = Trainer(tiny_cfg(*extra), tmp_path / "b", progress=False)
    b2.resume()
    assert b2.step == n
    b2.fit(2 * n, eval_at_start=False)

    sa = torch.load(tmp_path / "a/checkpoints/latest.pt", weights_only=True)
    sb = torch.load(tmp_path / "b/checkpoints/latest.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 2 * n
    assert_identical(sa, sb)


@pytest.mark.parametrize("extra", [["model.pixel_noise=0"], ["model.pixel_noise=2"]], ids=["paper", "pixel_noise"])
def test_sampling_does_not_change_the_training_trajectory(tmp_path, extra):
    # sample grids refresh the EMA generator's BN statistics on training label maps; that must not
    # draw from the global RNG (the training noise) nor touch the training state
    a = Trainer(tiny_cfg("train.sample_every=1", *extra), tmp_path / "a", progress=False)
    a.fit(3, eval_at_start=False)
    b = Trainer(tiny_cfg(*extra), tmp_path / "b", progress=False)
    b.fit(3, eval_at_start=False)
    assert len(list((tmp_path / "a/samples").glob("*.png"))) == 3
    sa = torch.load(tmp_path / "a/checkpoints/latest.pt", weights_only=True)
    sb = torch.load(tmp_path / "b/checkpoints/latest.pt", weights_only=True)
    sa["config"] = sb["config"] = None
    assert_identical(sa, sb)


@pytest.mark.parametrize("lambda_seg", [1.0, 2.5])
def test_segmenter_step_matches_a_separate_pass_on_the_fake_batch(tmp_path, lambda_seg):
    # the trainer takes S's gradient from the G step's backward (same fakes, same weights); it must be
    # the gradient of S's own loss on the detached fakes, whatever lambda_seg is. Without per-pixel noise:
    # with it, a few gradient entries below Adam's eps (~1e-9, sums with heavy cancellation) make the
    # first Adam step of those entries differ by float rounding, not by the logic under test.
    import copy

    from usis.losses import class_balanced_ce
    from usis.nn.generator import one_hot_labels

    tr = Trainer(tiny_cfg(f"train.lambda_seg={lambda_seg}", "model.pixel_noise=0", "train.fresh_fakes=false",
                          "model.s_extra_channel=true"),
                 tmp_path, progress=False)
    G0, S_ref, S0 = copy.deepcopy(tr.nets.G), copy.deepcopy(tr.nets.S), copy.deepcopy(tr.nets.S)
    opt_ref = torch.optim.Adam(S_ref.parameters(), lr=tr.opt_s.defaults["lr"], betas=tr.opt_s.defaults["betas"])
    labels = tr.loaders.next_labels()["label"]
    photos = tr.loaders.next_photos()["image"]

    torch.manual_seed(123)
    tr.train_step(labels, photos)
    torch.manual_seed(123)  # the same noise draw as inside the step
    fake = G0(one_hot_labels(labels, tr.num_classes)).detach()
    class_balanced_ce(S_ref(fake), labels, tr.dontcare, extra_channel=True).backward()
    opt_ref.step()

    for (name, p), p_ref in zip(tr.nets.S.named_parameters(), S_ref.parameters(), strict=True):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6, msg=f"S.{name}")
    assert any(not torch.equal(p, p0) for p, p0 in zip(tr.nets.S.parameters(), S0.parameters(), strict=True))


def test_fresh_fakes_train_s_on_a_new_fake_from_the_updated_generator(tmp_path):
    # train.fresh_fakes (the reference): after G's update, S's step draws a new fake (new noise) with the
    # updated G; S's gradient must be that of its own loss on exactly that batch
    import copy

    from usis.losses import class_balanced_ce

    tr = Trainer(tiny_cfg("train.fresh_fakes=true", "model.pixel_noise=0", "model.s_extra_channel=true"), tmp_path,
                 progress=False)
    S_ref = copy.deepcopy(tr.nets.S)
    opt_ref = torch.optim.Adam(S_ref.parameters(), lr=tr.opt_s.defaults["lr"], betas=tr.opt_s.defaults["betas"])
    fakes = []
    real_forward = tr.nets.G.forward

    def recording_forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        fakes.append(out.detach().clone())
        return out

    tr.nets.G.forward = recording_forward
    labels = tr.loaders.next_labels()["label"]
    photos = tr.loaders.next_photos()["image"]
    tr.train_step(labels, photos)
    assert len(fakes) == 3  # G's step, S's fresh fake, D's fresh fake
    assert not torch.equal(fakes[0], fakes[1]) and not torch.equal(fakes[1], fakes[2])
    with torch.no_grad():
        S_ref(fakes[0])  # G's step runs S too (a spectral-norm power iteration, no gradient for S)
    class_balanced_ce(S_ref(fakes[1]), labels, tr.dontcare, extra_channel=True).backward()
    opt_ref.step()
    for (name, p), p_ref in zip(tr.nets.S.named_parameters(), S_ref.parameters(), strict=True):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6, msg=f"S.{name}")


def test_a_step_updates_every_network_including_the_decoder(tmp_path):
    tr = Trainer(tiny_cfg(), tmp_path, progress=False)
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in tr.nets.named().items()}
    labels = tr.loaders.next_labels()["label"]
    photos = tr.loaders.next_photos()["image"]
    losses = tr.train_step(labels, photos)
    assert all(v.dim() == 0 and bool(torch.isfinite(v)) for v in losses.values())  # 0-d tensors on the device
    assert {"loss_g_seg", "loss_g_adv", "loss_s", "loss_d", "loss_d_adv", "loss_d_rec", "r1"} <= losses.keys()
    for k, net in tr.nets.named().items():
        changed = [not torch.equal(p0, p) for p0, p in zip(before[k], net.parameters(), strict=True)]
        assert all(changed), f"{k}: {changed.count(False)} parameter tensors did not move"


@pytest.mark.parametrize("d_type", ["wavelet", "whole", "patch"])
def test_three_iterations_with_each_discriminator(tmp_path, d_type, capsys):
    out = tmp_path / d_type
    args = ["train", "--preset", "synthetic", "--out", str(out), "--iters", "3", "--no-progress"]
    for s in TINY + [f"model.d_type={d_type}", "train.sample_every=3"]:
        args += ["--set", s]
    assert main(args) == 0
    state = torch.load(out / "checkpoints/latest.pt", weights_only=True)
    assert state["step"] == 3
    assert state["config"]["model"]["d_type"] == d_type
    assert {"G", "G_ema", "S", "D", "decoder", "optim", "rng", "loaders"} <= state.keys()
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 3]
    assert (out / "samples/step_0000003.png").exists()
    assert json.loads((out / "config.json").read_text())["model"]["d_type"] == d_type


def test_existing_run_needs_resume_flag(tmp_path, capsys):
    args = ["train", "--preset", "synthetic", "--out", str(tmp_path), "--iters", "1", "--no-progress"]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--resume", "--iters", "2", "--no-progress"]) == 0
    assert torch.load(tmp_path / "checkpoints/latest.pt", weights_only=True)["step"] == 2


def test_sigterm_saves_a_loadable_checkpoint_and_exits_zero(tmp_path):
    assert "rng_ranks" not in train_until_sigterm(tmp_path)


def test_demo_metrics_table():
    from usis.demo import metrics_table

    first = {"step": 0, "miou": 8.0, "miou_ceiling": 80.0, "sfid": 10.0, "iou/car": 2.0, "iou/pole": None}
    last = {"step": 900, "miou": 44.0, "miou_ceiling": 80.0, "sfid": 2.0, "iou/car": 41.5, "iou/pole": 3.25}
    table = metrics_table([first, {"step": 450, "miou": 20.0, "miou_ceiling": 80.0, "sfid": 5.0}, last])
    lines = table.splitlines()
    assert lines[0] == "| metric | step 0 | step 900 | note |"
    assert "| mIoU / ceiling | 0.100 | 0.550 | bar: >= 0.50 (met) |" in lines
    assert "| sFID end / start | | 0.200 | bar: <= 0.25 (met) |" in lines
    assert "| IoU car (%) | 2.0 | 41.5 | |" in lines
    assert "| IoU pole (%) | n/a | 3.2 | |" in lines
    assert not any("C2ST" in line for line in lines)  # not measured: no row
    last.update(c2st=0.975, c2st_loss=0.0662, msssim=0.41)  # realism and diversity at the end only
    lines = metrics_table([first, last]).splitlines()
    assert "| C2ST: a classifier tells generated from real photos | n/a | 0.975 | 0.5 = cannot tell, 1.0 = always can |" \
        in lines
    assert any(line.startswith("| MS-SSIM between noise seeds | n/a | 0.410 |") for line in lines)
    assert metrics_table([]) == "(no evaluation was recorded)"
    # just under a bar is "not met", whatever the rounding would suggest
    close = {"step": 1597, "miou": 42.73, "miou_ceiling": 86.24, "sfid": 1.48}
    lines = metrics_table([{"step": 0, "miou": 9.0, "miou_ceiling": 86.24, "sfid": 4.68}, close]).splitlines()
    assert "| mIoU / ceiling | 0.104 | 0.495 | bar: >= 0.50 (not met) |" in lines
    assert "| sFID end / start | | 0.316 | bar: <= 0.25 (not met) |" in lines


def test_demo_trains_until_its_deadline(tmp_path, capsys):
    # make demo passes the time make began: the training ends RESERVE_S before the demo's minutes are up,
    # whatever the preset's train.max_seconds says (here the deadline has long passed: one step)
    from usis.demo import main as demo_main

    overrides = [a for s in TINY for a in ("--set", s)]
    t0 = time.time()
    assert demo_main(["--out", str(tmp_path / "demo"), "--started", str(t0 - 3600)] + overrides) == 0
    assert torch.load(tmp_path / "demo/checkpoints/latest.pt", weights_only=True)["step"] == 1
    out = capsys.readouterr().out  # a machine too slow for the preset's steps is told so, and how to go on
    assert "note: this machine trained 1 of the preset's 4500 steps" in out and "--keep" in out
    # with time left it trains on (until its iterations, the earlier end here)
    assert demo_main(["--out", str(tmp_path / "demo"), "--minutes", "10"] + overrides + ["--set", "train.iters=3"]) == 0
    assert torch.load(tmp_path / "demo/checkpoints/latest.pt", weights_only=True)["step"] == 3
    assert "min in all" in capsys.readouterr().out


def test_linear_learning_rate_decay_over_the_end_of_the_run(tmp_path):
    tr = Trainer(tiny_cfg("train.lr_decay_from=0.5"), tmp_path / "a", progress=False)
    tr.fit(4, eval_at_start=False)
    assert tr.lr_schedule == (2.0, 4.0)  # constant to step 2 of 4, then linear to 0 at step 4
    # the last step (step 3 of 4: progress 0.75) ran at half the base rates
    t = tr.cfg.train
    assert tr.opt_g.param_groups[0]["lr"] == pytest.approx(0.5 * t.lr_g)
    assert tr.opt_s.param_groups[0]["lr"] == pytest.approx(0.5 * t.lr_s)
    assert tr.opt_d.param_groups[0]["lr"] == pytest.approx(0.5 * t.lr_d)
    lrs = [json.loads(line)["lr_g"] for line in (tmp_path / "a/stats.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([t.lr_g, t.lr_g, t.lr_g, 0.5 * t.lr_g])
    # the default (1.0) keeps the paper's constant rates
    const = Trainer(tiny_cfg(), tmp_path / "b", progress=False)
    const.fit(2, eval_at_start=False)
    assert const.opt_g.param_groups[0]["lr"] == const.cfg.train.lr_g
    with pytest.raises(C.ConfigError, match="lr_decay_from"):
        C.validate(tiny_cfg("train.lr_decay_from=1.5"))


def test_an_evaluation_step_is_evaluated_and_logged_once(tmp_path):
    # the time budget can end a run on a periodic-evaluation step; the final evaluation must not repeat it
    calls = []

    def evaluator(trainer):
        calls.append(trainer.step)
        return {"score": float(trainer.step)}

    tr = Trainer(tiny_cfg(), tmp_path, progress=False, evaluator=evaluator)
    tr.fit(2, eval_at_start=False)
    assert calls == [2]
    assert tr.run_evaluation() == {"score": 2.0} and calls == [2]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2]
    tr.fit(3, eval_at_start=False)  # a new step is evaluated again
    assert calls == [2, 3]


def test_keep_every_keeps_the_generator_along_its_training(tmp_path):
    from usis.generate import load_generator
    from usis.train.trainer import Trainer

    tr = Trainer(tiny_cfg("train.keep_every=2", "train.ckpt_every=3"), tmp_path, progress=False)
    tr.fit(5, eval_at_start=False)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt"))
    assert kept == ["step_0000002.pt", "step_0000004.pt"]
    steps = [torch.load(tmp_path / "checkpoints" / k, weights_only=True)["step"] for k in kept]
    assert steps == [2, 4]  # each its own step, not overwritten by later saves
    assert load_generator(tmp_path / "checkpoints" / "step_0000002.pt").step == 2
