"""A data-parallel run that loses a process: `kill -9` of one worker (or a worker that stops answering)
ends the run within a bounded time, non-zero, with one message naming the rank and the resume command;
no traceback, no leaked semaphores, no survivor left waiting in a collective; `--resume` then goes on.

Each test trains the tiny 64 x 64 config in two CPU processes (gloo) in a subprocess, as a user would:
``usis train ... --set train.nproc=2`` (the launcher of usis.train.distributed) and under torchrun.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, set_args

from usis.cli import main
from usis.train.distributed import Dist, launch

RUN = TINY + ["train.nproc=2", "train.ckpt_every=3"]
STARTED_S = 300  # generous: two processes starting and training a few steps on a busy 2-core machine
ENDED_S = 60  # the bound on kill -> exit (measured: under 2 s idle, up to ~12 s on a loaded, niced machine)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _start(out: Path, log: Path, extra=(), torchrun: bool = False) -> subprocess.Popen:
    train = ["-m", "usis.cli", "train", "--preset", "synthetic", "--out", str(out), "--iters", "100000",
             "--no-progress", *set_args(RUN + list(extra))]
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", "2"] if torchrun else []
    with open(log, "w") as f:  # a file, not a pipe: nobody has to read it while it runs
        return subprocess.Popen([sys.executable, *launcher, *train], stdout=f, stderr=subprocess.STDOUT,
                                env=_env(), start_new_session=True)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _workers(pid: int) -> dict[int, int]:
    """rank -> pid of the training processes under ``pid`` (each names itself usis-rank-R)."""
    found = {}
    for kid in _children(pid):
        for p in [kid, *_children(kid)]:
            if _comm(p).startswith("usis-rank-"):
                found[int(_comm(p).rsplit("-", 1)[1])] = p
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _wait_until_training(proc: subprocess.Popen, out: Path, log: Path,
                         checkpoint: bool = True) -> tuple[dict[int, int], int | None]:
    """Both workers found, some steps logged (so every rank did all-reduce) and, with ``checkpoint``, a
    checkpoint written; returns the workers and the checkpoint's step."""
    deadline = time.time() + STARTED_S
    stats = out / "stats.jsonl"
    latest = out / "checkpoints/latest.pt"
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        workers = _workers(proc.pid)
        if len(workers) == 2 and (latest.exists() or not checkpoint) and stats.exists() \
                and stats.read_text().count("\n") >= 4:
            return workers, torch.load(latest, weights_only=True)["step"] if checkpoint else None
        time.sleep(0.2)
    raise AssertionError(f"not training after {STARTED_S} s:\n{log.read_text()[-3000:]}")


def _end_after(proc: subprocess.Popen, victim: int, sig: int, log: Path) -> float:
    t0 = time.monotonic()
    os.kill(victim, sig)
    try:
        proc.wait(timeout=ENDED_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {ENDED_S} s after the worker's {signal.Signals(sig).name}:\n"
                             f"{log.read_text()[-3000:]}") from None
    return time.monotonic() - t0


@pytest.fixture
def processes():
    """Every process group a test starts, killed at its end if still there (a failed test leaves no hogs)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # workers left in the group
            except ProcessLookupError:
                pass


def _resume(out: Path, iters: int, torchrun: bool = False) -> str:
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", "2"] if torchrun else []
    res = subprocess.run([sys.executable, *launcher, "-m", "usis.cli", "train", "--out", str(out), "--resume",
                          "--iters", str(iters), "--no-progress"], capture_output=True, text=True, env=_env(),
                         timeout=STARTED_S)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stderr


def test_kill_9_of_a_worker_ends_the_run_with_one_message_and_resume_goes_on(tmp_path, processes):
    out, log = tmp_path / "run", tmp_path / "train.log"
    proc = _start(out, log)
    processes.append(proc)
    workers, _ = _wait_until_training(proc, out, log)
    tracker = [p for p in _children(proc.pid) if "resource_tracker" in _cmdline(p)]
    took = _end_after(proc, workers[1], signal.SIGKILL, log)
    for p in tracker:  # it reports leaked semaphores as it ends, after the launcher
        for _ in range(100):
            if _gone(p):
                break
            time.sleep(0.1)
    err = log.read_text()
    assert proc.returncode == 2, err
    assert took < ENDED_S
    assert all(_gone(p) for p in workers.values()), "a survivor is still running"
    assert err.count("error:") == 1, err
    assert "rank 1" in err and "SIGKILL" in err and "out of memory" in err, err
    assert f"usis train --out {out} --resume" in err, err
    assert "Traceback" not in err and "leaked semaphore" not in err and "Terminating process" not in err, err
    print(f"kill -9 of rank 1 -> exit {proc.returncode} after {took:.1f} s")

    saved = torch.load(out / "checkpoints/latest.pt", weights_only=True)["step"]
    assert f"(step {saved})" in err
    err = _resume(out, saved + 2)
    assert f"at step {saved}" in err
    assert torch.load(out / "checkpoints/latest.pt", weights_only=True)["step"] == saved + 2


def test_a_worker_that_stops_answering_ends_the_run_after_the_timeout(tmp_path, processes):
    # SIGSTOP of rank 0 (it also serves the group's store) between steps: rank 1 waits train.dist_timeout in
    # its collective, gives up; the launcher then ends the silent one and names it. No periodic checkpoint:
    # while rank 0 saves (or evaluates) alone, the others wait up to distributed.SOLO_WAIT_S by design, so a
    # SIGSTOP that landed in a save (ckpt_every=3 made that one run in a few) would not be this case.
    out, log = tmp_path / "run", tmp_path / "train.log"
    proc = _start(out, log, ["train.dist_timeout=5", "train.ckpt_every=0"])
    processes.append(proc)
    workers, _ = _wait_until_training(proc, out, log, checkpoint=False)
    took = _end_after(proc, workers[0], signal.SIGSTOP, log)
    err = log.read_text()
    assert proc.returncode == 2, err
    assert 5 <= took < ENDED_S
    assert all(_gone(p) for p in workers.values()), "a worker is still there"
    assert err.count("error:") == 1, err
    assert "rank 0" in err and "stopped answering" in err and "train.dist_timeout" in err, err
    # how to go on: nothing was saved yet in this run (the kill -9 tests check the --resume command)
    assert "no checkpoint was saved yet" in err and "start the run again with the same command" in err, err
    assert "Traceback" not in err, err
    print(f"SIGSTOP of rank 0 -> exit {proc.returncode} after {took:.1f} s")


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed next to this Python")
def test_under_torchrun_the_survivor_ends_with_one_line_and_resume_goes_on(tmp_path, processes):
    out, log = tmp_path / "run", tmp_path / "torchrun.log"
    proc = _start(out, log, torchrun=True)
    processes.append(proc)
    workers, _ = _wait_until_training(proc, out, log)
    took = _end_after(proc, workers[1], signal.SIGKILL, log)
    text = log.read_text()
    assert proc.returncode != 0, text
    assert all(_gone(p) for p in workers.values()), "a survivor is still running"
    # torchrun's agent names the rank and the signal (its own report ends in a traceback of torchrun itself)
    assert "rank      : 1 (local_rank: 1)" in text and "SIGKILL" in text, text
    # the survivor: one line and the resume command, no traceback from a worker (torchrun's report repeats the line
    # as its entry's "traceback", from the file the agent reads: issue 34)
    assert len(re.findall(r"^error: rank 0", text, re.MULTILINE)) == 1, text
    assert f"usis train --out {out} --resume" in text, text
    assert "src/usis" not in text and "distributed_c10d" not in text and "leaked semaphore" not in text, text
    print(f"torchrun, kill -9 of rank 1 -> exit {proc.returncode} after {took:.1f} s")

    saved = torch.load(out / "checkpoints/latest.pt", weights_only=True)["step"]
    _resume(out, saved + 2, torchrun=True)
    assert torch.load(out / "checkpoints/latest.pt", weights_only=True)["step"] == saved + 2


def _rank_0_alone_for_a_while(dist: Dist, seconds: float):
    if dist.is_main:
        time.sleep(seconds)  # an evaluation, a checkpoint on a slow disk
    return dist.all_gather_object(dist.broadcast_object(f"from rank {dist.rank}"))


def test_waits_for_rank_0_working_alone_outlast_the_collective_timeout():
    # train.dist_timeout bounds a step's collectives; rank 0's solo work (evaluation, saving) may take longer
    assert launch(_rank_0_alone_for_a_while, 2, (4.0,), timeout_s=1.0) == ["from rank 0", "from rank 0"]


def test_a_failed_rank_hands_its_error_line_to_torchruns_report(tmp_path, monkeypatch, capsys):
    # torchrun's agent reports a failed rank from the JSON file it names in TORCHELASTIC_ERROR_FILE: with our
    # line there, its report shows the cause instead of a link to its documentation (issue 34)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    assert main(["train", "--preset", "folder", "--out", str(tmp_path / "run")]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=2, error_file=str(error_file))
    assert failure.message["message"] == line and abs(failure.timestamp - time.time()) < 600
    report = ChildFailedError("usis.cli", {0: failure}).format_msg()
    assert f"traceback : {line}" in report and "To enable traceback" not in report
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")
    error_file.unlink()
    assert main(["train", "--preset", "folder", "--out", str(tmp_path / "run")]) == 2
    assert not error_file.exists()  # outside torchrun: nothing written


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed next to this Python")
def test_under_torchrun_the_agents_report_names_our_message(tmp_path):
    # both ranks fail their config check at once; torchrun still ends with its own traceback (README,
    # "Several processes"), but its report's root cause is our line
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "usis.cli", "train",
            "--preset", "folder", "--out", str(tmp_path / "run")]
    done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=STARTED_S)
    text = done.stdout + done.stderr
    assert done.returncode == 1, text  # torchrun's status for a failed launch, whatever the ranks returned
    assert "traceback : error: data.num_classes=0" in text and "To enable traceback" not in text, text
