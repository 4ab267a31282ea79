"""A disk that fills up (issue 21): a checkpoint save ends the run with one message and loses nothing; a
sample grid, a log line or a TensorBoard write is skipped with one warning and training goes on;
`usis generate` / `usis export` end with one message.

The full disk is simulated: writes to the matching files go through up to a byte budget, then raise
``OSError(ENOSPC)`` part-way (as a real full disk does, so torch.save fails as it does there: a
``RuntimeError`` raised while handling the OSError)."""

import builtins
import errno
import functools
import io
import json
import os
import shutil
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, set_args, tiny_cfg
from PIL import Image

import usis.train.run
from usis.checkpoint import save_atomic
from usis.cli import main
from usis.errors import DiskFullError
from usis.train import trainer as trainer_mod
from usis.train.logging import RunLog
from usis.train.trainer import Trainer
from usis.utils.io import disk_full_cause, disk_full_error, format_size

FREE = 12_300_000  # what the full disk reports as free: "12.3 MB"
CHECKPOINT_TEMP = r"\.pt\.[^/]+\.tmp$"

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds an open file's path in /proc")


class _FillingFile:
    """A file on a disk that fills up: see :class:`FullDisk`."""

    def __init__(self, f, disk: "FullDisk"):
        self._f, self._disk = f, disk

    def write(self, data):
        n = self._disk.take(len(data))
        if n:
            self._f.write(data[:n])
        if n < len(data):
            self._disk.failed()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False

    def __getattr__(self, name):
        return getattr(self._f, name)


class FullDisk:
    """Writes to files whose path matches the regular expression ``match`` (opened with ``open``, ``io.open``
    or ``os.fdopen``): the first ``skip`` such files are written in full; then only ``budget`` more bytes fit
    and a write past them raises ENOSPC part-way, ``times`` times (``None``: for ever), after which the disk
    has space again. ``on_full()`` runs when the first file that may not fit is opened. The disk reports
    :data:`FREE` bytes free."""

    def __init__(self, mp: pytest.MonkeyPatch, match: str, skip: int = 0, budget: int = 0, times: int | None = None,
                 on_full=None):
        import re

        self.pattern = re.compile(match)
        self.skip, self.budget, self.times, self.on_full = skip, budget, times, on_full
        self.opened: list[str] = []
        self.failures = 0
        real_open, real_fdopen = builtins.open, os.fdopen

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            name = os.fsdecode(file) if isinstance(file, str | bytes | os.PathLike) else ""
            return self._wrap(f, name, mode)

        def fake_fdopen(fd, mode="r", *args, **kwargs):
            name = os.readlink(f"/proc/self/fd/{fd}")
            return self._wrap(real_fdopen(fd, mode, *args, **kwargs), name, mode)

        mp.setattr(builtins, "open", fake_open)
        mp.setattr(io, "open", fake_open)
        mp.setattr(os, "fdopen", fake_fdopen)
        mp.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10 * FREE, used=9 * FREE, free=FREE))

    def _wrap(self, f, name: str, mode: str):
        if not any(c in mode for c in "wax+") or not self.pattern.search(name):
            return f
        self.opened.append(name)
        if len(self.opened) <= self.skip:
            return f
        if len(self.opened) == self.skip + 1 and self.on_full is not None:
            self.on_full()
        return _FillingFile(f, self)

    def take(self, n: int) -> int:
        k = min(n, self.budget)
        self.budget -= k
        return k

    def failed(self) -> None:
        self.failures += 1
        if self.times is not None and self.failures >= self.times:
            self.budget = 1 << 62  # space again


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.pt"))}


# ------------------------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_save_on_a_full_disk_ends_the_run_with_one_message(tmp_path, monkeypatch, capfd):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    before: dict[str, bytes] = {}
    # saves at steps 2 and 4 fit; the disk is full at the third (step 6), 4 kB into the file
    disk = FullDisk(monkeypatch, CHECKPOINT_TEMP, skip=2, budget=4096, on_full=lambda: before.update(_snapshot(ckpts)))
    rc = main(["train", "--preset", "synthetic", "--out", str(run), "--iters", "8", "--no-progress",
               *set_args(TINY + ["train.ckpt_every=2"])])
    err = capfd.readouterr().err
    assert rc == 2, err
    assert disk.failures == 1 and set(before) == {"latest.pt", "previous.pt"}
    assert "Traceback" not in err and "RuntimeError" not in err and "Errno" not in err, err
    (line,) = _error_lines(err)
    assert str(ckpts) in line and f"{format_size(FREE)} free" in line
    assert f"needs about {format_size(len(before['latest.pt']))}" in line  # the size of the latest checkpoint
    assert f"usis train --out {run} --resume" in line
    # nothing lost: both checkpoints as they were and loadable; no temporary file
    assert _snapshot(ckpts) == before
    steps = [torch.load(ckpts / n, weights_only=True)["step"] for n in ("latest.pt", "previous.pt")]
    assert steps == [4, 2]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    # with space again, the command it printed continues the run
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert torch.load(ckpts / "latest.pt", weights_only=True)["step"] == 8


def test_a_full_disk_while_keeping_previous_leaves_both_checkpoints(tmp_path, monkeypatch):
    # a file system without hard links: previous.pt is a copy, and the copy is what meets the full disk
    latest, previous = tmp_path / "latest.pt", tmp_path / "previous.pt"
    save_atomic({"step": 1, "w": torch.zeros(1000)}, latest)
    save_atomic({"step": 2, "w": torch.ones(1000)}, latest, previous=previous)
    before = _snapshot(tmp_path)

    def no_link(src, dst):
        raise OSError(errno.EPERM, "no hard links here")

    def half_a_copy(src, dst):  # the disk fills up half-way through the copy
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(shutil, "copyfile", half_a_copy)
    FullDisk(monkeypatch, r"^$")  # only its free space
    with pytest.raises(DiskFullError, match="disk full") as info:
        save_atomic({"step": 3, "w": torch.full((1000,), 3.0)}, latest, previous=previous)
    assert info.value.free == FREE and info.value.needed >= len(before["latest.pt"])
    assert _snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "previous.pt"]


def _full_disk_train_process(match: str, skip: int, budget: int, dist, *args):
    """train_process in a data-parallel worker whose disk is full for rank 0's files matching ``match`` (after
    ``skip`` of them, ``budget`` bytes fit): with functools.partial, what the workers run."""
    with pytest.MonkeyPatch.context() as mp:
        if dist.is_main:
            FullDisk(mp, match, skip=skip, budget=budget)
        return trainer_mod.train_process(dist, *args)


def test_a_full_disk_in_a_data_parallel_run_ends_every_rank_with_one_message(tmp_path, monkeypatch, capfd):
    # the disk fills up at rank 0's second checkpoint save
    monkeypatch.setattr(usis.train.run, "train_process", functools.partial(_full_disk_train_process, CHECKPOINT_TEMP,
                                                                           1, 4096))
    run = tmp_path / "run"
    rc = main(["train", "--preset", "synthetic", "--out", str(run), "--iters", "8", "--no-progress",
               *set_args(TINY + ["train.ckpt_every=2", "train.nproc=2"])])
    err = capfd.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "leaked semaphore" not in err, err
    (line,) = _error_lines(err)
    assert str(run / "checkpoints") in line and f"usis train --out {run} --resume" in line
    assert torch.load(run / "checkpoints/latest.pt", weights_only=True)["step"] == 2
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------- logs and samples


def test_full_disk_in_sample_grids_and_logs_warns_once_and_training_goes_on(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(RunLog, "TB_RETRY_S", 0.0)
    run = tmp_path / "run"
    # each kind fails three times (sample grids and stats lines part-way), then the disk has space again
    grids = FullDisk(monkeypatch, r"/samples/step_\d+\.png$", skip=1, budget=300, times=3)
    stats = FullDisk(monkeypatch, r"/stats\.jsonl$", skip=2, budget=20, times=3)
    events = FullDisk(monkeypatch, r"tfevents", budget=0, times=3)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # count every warning issued, not Python's once-per-place
        rc = main(["train", "--preset", "synthetic", "--out", str(run), "--iters", "8", "--no-progress",
                   *set_args(TINY + ["train.sample_every=1"])])
    err = capfd.readouterr().err
    assert rc == 0, err
    assert grids.failures == stats.failures == events.failures == 3
    assert "Traceback" not in err and "Exception in thread" not in err, err
    warned = [line for line in err.splitlines() if line.startswith("usis: warning: disk full")]
    assert len(warned) == 3, err  # one per kind of file
    for kind in ("sample grids are", "stats.jsonl lines are", "TensorBoard events are"):
        (line,) = [w for w in warned if kind in w]
        assert f"{format_size(FREE)} free" in line and "training goes on" in line
    # the failed grids left no partial file; the later ones were written
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"step_{s:07d}.png" for s in (1, 5, 6, 7, 8)]
    for p in (run / "samples").iterdir():
        Image.open(p).verify()
    # no partial stats line: every line is JSON, and the steps whose line met the full disk are missing
    steps = [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 6, 7, 8]
    assert any(p.stat().st_size for p in (run / "tb").glob("*tfevents*"))  # TensorBoard came back
    assert torch.load(run / "checkpoints/latest.pt", weights_only=True)["step"] == 8


def test_a_full_disk_under_metrics_jsonl_warns_once(tmp_path, monkeypatch, recwarn):
    tr = Trainer(tiny_cfg(), tmp_path, progress=False, evaluator=lambda trainer: {"score": float(trainer.step)})
    FullDisk(monkeypatch, r"/metrics\.jsonl$", budget=5, times=2)
    for step in range(1, 5):
        tr.step = step
        tr.run_evaluation()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3, 4]
    assert len([w for w in recwarn if "metrics.jsonl" in str(w.message)]) == 1


def test_other_write_errors_are_not_swallowed(tmp_path, monkeypatch):
    log = RunLog(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "permission denied")

    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(PermissionError):
        log.record("stats.jsonl", {"step": 1})


# ------------------------------------------------------------------------------------- generate, export


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "synthetic", "--out", str(out), "--iters", "1", "--no-progress",
                 *set_args(TINY)]) == 0
    return out / "checkpoints/latest.pt"


def test_export_on_a_full_disk_is_one_message(checkpoint, tmp_path, monkeypatch, capfd):
    out = tmp_path / "export"
    FullDisk(monkeypatch, r"generator\.safetensors\.[^/]+\.tmp$", budget=1000)
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert str(out) in line and f"{format_size(FREE)} free" in line and "needed" in line
    assert not list(out.iterdir())  # no partial or temporary file


def test_generate_on_a_full_disk_is_one_message(checkpoint, tmp_path, monkeypatch, capfd):
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(labels / f"{name}.png")
    out = tmp_path / "images"
    FullDisk(monkeypatch, r"_seed\d+\.png$", skip=3, budget=200)  # the 4th of 8 images meets the full disk
    assert main(["generate", "--checkpoint", str(checkpoint), "--labels", str(labels), "--out", str(out),
                 "--n", "4", "--device", "cpu"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert str(out) in line and f"{format_size(FREE)} free" in line
    assert "5 file(s) still to write" in line and "3 file(s) were written" in line
    assert sorted(p.name for p in out.iterdir()) == ["a_seed0.png", "a_seed1.png", "a_seed2.png"]  # none torn


def test_what_counts_as_a_full_disk(tmp_path):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    try:  # torch.save's way: a RuntimeError raised while handling the OSError
        try:
            raise full
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
    except RuntimeError as e:
        chained = e
    chained.__context__ = full
    assert disk_full_cause(chained) is full
    assert disk_full_cause(OSError(errno.EACCES, "denied")) is None and disk_full_cause(ValueError()) is None
    quota = disk_full_error(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path / "f.bin", needed=2_500_000)
    assert "quota" in str(quota) and "2.5 MB needed" in str(quota) and quota.errno == errno.EDQUOT
    assert [format_size(n) for n in (0, 999, 1000, 27_900_000, 3 * 10**12)] == ["0 B", "999 B", "1.0 kB", "27.9 MB",
                                                                                "3.0 TB"]


# ------------------------------------------------------------- the run's config.json, evaluate, the app (issue 34)


def test_a_full_disk_under_the_runs_config_json_is_one_message_and_loses_nothing(checkpoint, tmp_path, monkeypatch,
                                                                                 capfd):
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent.parent, run)
    before = _snapshot(run / "checkpoints")
    FullDisk(monkeypatch, r"/run/config\.json(\.[^/]*\.tmp)?$", budget=10)  # written (atomically) as the run starts
    assert main(["train", "--out", str(run), "--resume", "--iters", "3", "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Errno" not in err, err
    (line,) = _error_lines(err)
    assert str(run / "config.json") in line and f"{format_size(FREE)} free" in line
    assert f"usis train --out {run} --resume" in line
    assert _snapshot(run / "checkpoints") == before  # nothing lost
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "--iters", "3", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["preset"] == "synthetic"  # written again, whole


def test_a_full_disk_under_config_json_in_a_data_parallel_run_is_one_message(tmp_path, monkeypatch, capfd):
    # rank 0's disk is full as it writes the run's config.json
    monkeypatch.setattr(usis.train.run, "train_process",
                        functools.partial(_full_disk_train_process, r"/config\.json(\.[^/]*\.tmp)?$", 0, 10))
    run = tmp_path / "run"
    rc = main(["train", "--preset", "synthetic", "--out", str(run), "--iters", "2", "--no-progress",
               *set_args(TINY + ["train.nproc=2"])])
    err = capfd.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    (line,) = _error_lines(err)
    assert str(run / "config.json") in line and "start again" in line


EVALUATE = ["--metrics", "msssim", "--msssim-maps", "2", "--msssim-samples", "2", "--device", "cpu"]


def test_evaluate_on_a_full_disk_keeps_the_report_or_its_numbers(checkpoint, tmp_path, monkeypatch, capfd):
    out = tmp_path / "eval"
    FullDisk(monkeypatch, r"/eval/samples\.png$", budget=100)  # the preview, written after the report
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--out", str(out), *EVALUATE]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert str(out / "samples.png") in line and f"{format_size(FREE)} free" in line and "report was written" in line
    assert json.loads((out / "report.json").read_text())["results"]["msssim"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]  # no torn samples.png
    monkeypatch.undo()
    # the report itself on a full disk: the message holds the numbers it could not write
    FullDisk(monkeypatch, r"/eval2/report\.json\.[^/]+\.tmp$", budget=10)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "eval2"), *EVALUATE]) == 2
    (line,) = _error_lines(capfd.readouterr().err)
    assert "report.json" in line and "the results were: msssim=" in line


def test_the_apps_downloads_on_a_full_disk_are_one_message_and_the_images_stay(checkpoint, monkeypatch, capfd):
    pytest.importorskip("gradio")
    from usis.app import LabelApp

    app = LabelApp.from_checkpoint(checkpoint, device="cpu")
    ids = app.blank(1)
    shots = app.shots(0, 2)
    images = app.generate(ids, shots)
    FullDisk(monkeypatch, r"/usis-app-[^/]+/[^/]+/[^/]+$", skip=2, budget=100)  # the third file meets it
    with pytest.raises(DiskFullError, match="disk full") as info:
        app.save(ids, images, shots)
    assert "cannot be downloaded" in str(info.value) and f"{format_size(FREE)} free" in str(info.value)
    assert not [p for p in app.tmp_dir.iterdir()]  # the request's folder is gone, nothing torn left
    # in the page: the images shown, no downloads, one message (no traceback in the terminal)
    demo = app.build()
    on_generate = next(f.fn for f in demo.fns.values() if f.name == "on_generate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gr.Warning outside a request
        _, gallery, shot_list, _, files, status = on_generate(app.editor_value(ids), ids, 2, 0, False)
    assert len(gallery["value"]) == 2 and shot_list == shots and files == []
    assert status.startswith("error: disk full:") and "cannot be downloaded" in status
    assert "Traceback" not in capfd.readouterr().err
