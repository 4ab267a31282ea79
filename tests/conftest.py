"""Shared tiny configurations and helpers for the tests (import them: ``from conftest import TINY``)."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from usis import config as C

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A fresh module of ``benchmarks/NAME.py`` (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Networks a few thousand parameters big: every code path runs, in milliseconds per step.
TINY_NETS = ["model.g_ch=2", "model.z_dim=4", "model.spade_hidden=8", "model.s_ch=2", "model.d_ch=4",
             "model.d_max_ch=16", "model.dec_ch=16"]
# The synthetic preset at 64 x 64 with tiny networks, one process, one thread, nothing periodic.
TINY = ["data.height=64", "data.width=64", "data.synthetic_train=12", "data.synthetic_val=4", *TINY_NETS,
        "train.batch_size=2", "train.r1_every=2", "train.log_every=1", "train.sample_every=0",
        "train.eval_every=-1", "train.ckpt_every=0", "train.num_threads=1", "train.nproc=1"]


def tiny_cfg(*extra: str) -> C.Config:
    """The synthetic preset with :data:`TINY` and ``extra`` overrides applied (later ones win)."""
    return C.apply_overrides(C.get_preset("synthetic"), TINY + list(extra))


# The networks' unit tests: 5 classes at the four sizes the networks must take (64 and 256 high; 1:1 and 1:2).
NET_SIZES = [(64, 64), (64, 128), (256, 256), (256, 512)]
NET_CLASSES = 5


def random_onehot(n: int, h: int, w: int, seed: int = 0, classes: int = NET_CLASSES) -> torch.Tensor:
    """A seeded random label map as the generators take it (``n x classes x h x w`` one-hot)."""
    from usis.nn.generator import one_hot_labels

    g = torch.Generator().manual_seed(seed)
    return one_hot_labels(torch.randint(0, classes, (n, h, w), generator=g), classes)


def set_args(items) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [a for s in items for a in ("--set", s)]


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def whole_and_resumed(tmp_path, *extra, steps=4, stop=2, check_resumed=None):
    """The checkpoints of ``tiny_cfg(*extra)`` trained ``steps`` steps in one go (``tmp_path/a``) and stopped at
    ``stop``, then resumed to ``steps`` (``tmp_path/b``; ``check_resumed(trainer)`` sees it just resumed)."""
    from usis.train.trainer import Trainer

    a = Trainer(tiny_cfg(*extra), tmp_path / "a", progress=False)
    a.fit(steps, eval_at_start=False)
    b = Trainer(tiny_cfg(*extra), tmp_path / "b", progress=False)
    b.fit(stop, eval_at_start=False)
    b2 = Trainer(tiny_cfg(*extra), tmp_path / "b", progress=False)
    b2.resume()
    if check_resumed is not None:
        check_resumed(b2)
    b2.fit(steps, eval_at_start=False)
    return (torch.load(tmp_path / "a/checkpoints/latest.pt", weights_only=True),
            torch.load(tmp_path / "b/checkpoints/latest.pt", weights_only=True))


def assert_identical(a, b, ignore=(".train_seconds",)):
    """Every tensor and value equal, except measured wall time (``ignore``)."""
    fa, fb = dict(_flatten(a)), dict(_flatten(b))
    for k in ignore:
        fa.pop(k, None), fb.pop(k, None)
    assert fa.keys() == fb.keys()
    for k in fa:
        if isinstance(fa[k], torch.Tensor):
            assert torch.equal(fa[k], fb[k]), f"{k} differs"
        else:
            assert fa[k] == fb[k], f"{k}: {fa[k]!r} != {fb[k]!r}"


def train_until_sigterm(out: Path, extra: list[str] = ()) -> dict:
    """Start `usis train` (tiny config) in a subprocess, SIGTERM it after two logged steps, check that it
    exits 0 and prints the resume command; returns the checkpoint it left."""
    args = [sys.executable, "-m", "usis.cli", "train", "--preset", "synthetic", "--out", str(out),
            "--iters", "100000", "--no-progress", *set_args(TINY + list(extra))]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stats = Path(out) / "stats.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (stats.exists() and stats.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "usis train --out" in err and "--resume" in err
    assert "Traceback" not in err and "leaked semaphore" not in err, err  # a clean stop, workers included
    state = torch.load(Path(out) / "checkpoints/latest.pt", weights_only=True)
    assert 2 <= state["step"] < 100000
    return state


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A training checkpoint of the TINY synthetic config after one step (one per test module)."""
    from usis.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "synthetic", "--out", str(out), "--iters", "1", "--no-progress",
                 *set_args(TINY)]) == 0
    return out / "checkpoints" / "latest.pt"
