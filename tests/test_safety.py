"""A diverging or killed run never costs the user a good checkpoint; time-budget runs resume exactly."""

import signal

import pytest
import torch
from conftest import TINY, assert_identical, tiny_cfg

from usis.cli import main
from usis.train import trainer as trainer_mod
from usis.train.trainer import Trainer


def _args(out, iters, *extra):
    args = ["train", "--preset", "synthetic", "--out", str(out), "--iters", str(iters), "--no-progress"]
    for s in TINY + ["train.ckpt_every=2"] + list(extra):
        args += ["--set", s]
    return args


def _all_finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_all_finite(v) for v in state.values())
    if isinstance(state, list | tuple):
        return all(_all_finite(v) for v in state)
    return True


def _inject_at(monkeypatch, step_k, where):
    """Before the training step that starts at ``step_k``, write a NaN into ``where(trainer)``."""
    real = Trainer.train_step

    def train_step(self, labels, photos, labelled=None):
        if self.step == step_k:
            with torch.no_grad():
                t = where(self)
                t[(0,) * t.dim()] = float("nan")  # any memory format (the preset trains channels-last)
        return real(self, labels, photos, labelled)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _inject_at(monkeypatch, 5, lambda tr: tr.nets.G.conv_img.weight)
    rc = main(_args(tmp_path, 20))
    err = capsys.readouterr().err
    assert rc != 0
    assert "diverged at step 6" in err and "loss_g" in err and "nan" in err.lower()
    assert err.count("error:") == 1 and "Traceback" not in err
    state = torch.load(tmp_path / "checkpoints/latest.pt", weights_only=True)
    assert state["step"] == 4  # the save of step 4; nothing after the NaN was written
    assert _all_finite(state)
    assert not (tmp_path / "checkpoints/best.pt").exists() or _all_finite(
        torch.load(tmp_path / "checkpoints/best.pt", weights_only=True))


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch, capsys):
    # a NaN that no loss sees (the EMA generator's weights): caught when the checkpoint is about to be written
    _inject_at(monkeypatch, 3, lambda tr: next(tr.nets.G_ema.parameters()))
    rc = main(_args(tmp_path, 20))
    err = capsys.readouterr().err
    assert rc == 3
    assert "NaN or inf" in err and "latest.pt was not written" in err
    state = torch.load(tmp_path / "checkpoints/latest.pt", weights_only=True)
    assert state["step"] == 2 and _all_finite(state)


def test_huge_learning_rates_end_in_one_message_not_nan_checkpoints(tmp_path, capsys):
    # the new user's experiment from the issue
    rc = main(_args(tmp_path, 40, "train.lr_g=1e3", "train.lr_d=1e3", "train.lr_s=1e3"))
    err = capsys.readouterr().err
    assert rc == 3 and "diverged" in err
    latest = tmp_path / "checkpoints/latest.pt"
    if latest.exists():  # it may diverge before the first save
        assert _all_finite(torch.load(latest, weights_only=True))


def test_latest_rotates_to_previous_and_resume_names_it_when_latest_is_broken(tmp_path, capsys):
    assert main(_args(tmp_path, 4)) == 0  # saves at steps 2 and 4 (and 4 again at the end)
    ck = tmp_path / "checkpoints"
    prev = torch.load(ck / "previous.pt", weights_only=True)
    assert prev["step"] in (2, 4) and torch.load(ck / "latest.pt", weights_only=True)["step"] == 4
    (ck / "latest.pt").write_bytes(b"truncated by a full disk")
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path), "--resume", "--iters", "6", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and str(ck / "previous.pt") in err and "--resume" in err
    # and resuming from the named file works
    assert main(["train", "--out", str(tmp_path), "--resume", str(ck / "previous.pt"), "--iters", "6",
                 "--no-progress"]) == 0
    assert torch.load(ck / "latest.pt", weights_only=True)["step"] == 6


def test_stale_temporary_files_are_removed_at_the_next_start(tmp_path, capsys):
    ck = tmp_path / "checkpoints"
    assert main(_args(tmp_path, 2)) == 0
    stale = [ck / "latest.pt.k9x2abcd.tmp", ck / "best.pt.0qz81xyz.tmp", ck / "previous.pt.4242.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 1000)  # what a save killed by kill -9 leaves
    keep = ck / "notes.txt"
    keep.write_text("mine")
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path), "--resume", "--iters", "3", "--no-progress"]) == 0
    assert not any(p.exists() for p in stale)
    assert keep.read_text() == "mine"
    assert "removed 3 stale temporary checkpoint file(s)" in capsys.readouterr().err


class FakeClock:
    """One second per call; at call ``signal_at`` it sends SIGTERM to this process (a user's Ctrl-C)."""

    def __init__(self, signal_at=None):
        self.t, self.calls, self.signal_at = 0.0, 0, signal_at

    def __call__(self):
        self.calls += 1
        if self.calls == self.signal_at:
            signal.raise_signal(signal.SIGTERM)
        self.t += 1.0
        return self.t


def test_resume_with_a_time_based_lr_decay_is_bit_exact(tmp_path):
    # max_seconds=8 of (fake) training time, decay from half of it: the decay starts by time at step 4
    # and is fixed in steps from then on (to step 8, the speed so far times the time left)
    extra = ("train.max_seconds=8", "train.lr_decay_from=0.5")
    a = Trainer(tiny_cfg(*extra), tmp_path / "a", progress=False)
    a.clock = FakeClock()
    sa = a.fit(100, eval_at_start=False)
    assert sa["step"] == 8 and a.lr_schedule == (4.0, 8.0)

    b = Trainer(tiny_cfg(*extra), tmp_path / "b", progress=False)
    b.clock = FakeClock(signal_at=4)  # stops after step 3, before the decay has begun
    sb = b.fit(100, eval_at_start=False)
    assert sb["interrupted"] and b.step == 3 and b.lr_schedule is None
    b2 = Trainer(tiny_cfg(*extra), tmp_path / "b", progress=False)
    b2.resume()
    assert b2.train_seconds == 3.0  # the time already spent counts against the budget
    b2.clock = FakeClock()
    assert b2.fit(100, eval_at_start=False)["step"] == 8

    ckpt_a = torch.load(tmp_path / "a/checkpoints/latest.pt", weights_only=True)
    ckpt_b = torch.load(tmp_path / "b/checkpoints/latest.pt", weights_only=True)
    assert ckpt_a["lr_schedule"] == ckpt_b["lr_schedule"] == [4.0, 8.0]
    assert_identical(ckpt_a, ckpt_b, ignore=())  # the fake clock makes even the time equal

    # interrupted during the decay: the schedule comes back from the checkpoint
    c = Trainer(tiny_cfg(*extra), tmp_path / "c", progress=False)
    c.clock = FakeClock(signal_at=7)
    c.fit(100, eval_at_start=False)
    assert c.step == 6 and c.lr_schedule == (4.0, 8.0)
    c2 = Trainer(tiny_cfg(*extra), tmp_path / "c", progress=False)
    c2.resume()
    assert c2.lr_schedule == (4.0, 8.0)
    c2.clock = FakeClock()
    c2.fit(100, eval_at_start=False)
    assert_identical(ckpt_a, torch.load(tmp_path / "c/checkpoints/latest.pt", weights_only=True), ignore=())


def test_lr_factor_follows_the_saved_schedule(tmp_path):
    tr = Trainer(tiny_cfg("train.lr_decay_from=0.5"), tmp_path, progress=False)
    tr.step = 3
    assert tr.lr_factor(10, None) == 1.0 and tr.lr_schedule is None
    tr.step = 5
    assert tr.lr_factor(10, None) == 1.0 and tr.lr_schedule == (5.0, 10.0)
    tr.step = 8
    assert tr.lr_factor(10, None) == pytest.approx(0.4)
    # by time: 40 s of a 60 s budget at 4 steps/s -> fixed from step 160 to 160 + 4 * 20
    tr2 = Trainer(tiny_cfg("train.lr_decay_from=0.5"), tmp_path / "t", progress=False)
    tr2.step, tr2.train_seconds = 160, 40.0
    assert tr2.lr_factor(10_000, 60.0) == 1.0 and tr2.lr_schedule == (160.0, 240.0)
    tr2.step = 200
    assert tr2.lr_factor(10_000, 60.0) == pytest.approx(0.5)
    assert trainer_mod.TrainingDiverged.__mro__[1] is RuntimeError


def test_a_run_saved_before_the_recipe_options_resumes_with_its_own_recipe(tmp_path):
    # checkpoints written before model.s_extra_channel / train.r1_mode / ... existed trained the earlier
    # recipe: resuming one must keep it (and the segmenter's C outputs), not switch to today's defaults
    assert main(_args(tmp_path, 2, "model.s_extra_channel=false", "train.r1_mode=fused", "train.fresh_fakes=false",
                      "model.init=default", "train.ema_warmup=true")) == 0
    path = tmp_path / "checkpoints/latest.pt"
    state = torch.load(path, weights_only=True)
    for section, key in (("model", "s_extra_channel"), ("model", "init"), ("train", "r1_mode"),
                         ("train", "fresh_fakes"), ("train", "ema_warmup")):
        del state["config"][section][key]
    torch.save(state, path)
    assert main(["train", "--out", str(tmp_path), "--resume", "--iters", "3", "--no-progress"]) == 0
    cfg = torch.load(path, weights_only=True)["config"]
    assert cfg["model"]["s_extra_channel"] is False and cfg["train"]["r1_mode"] == "fused"
    assert cfg["train"]["fresh_fakes"] is False and cfg["train"]["ema_warmup"] is True
