"""Training progress with stderr in a file (issue 21): plain lines at a steady interval, no carriage returns;
a tqdm bar in a terminal."""

import io
import re
import sys

from conftest import TINY, set_args
from tqdm import tqdm

from usis import config as C
from usis.cli import main
from usis.train.progress import NoProgress, PlainProgress, progress_bar


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_at_the_configured_interval():
    clock, out = FakeClock(), io.StringIO()
    bar = progress_bar(total=100, initial=0, enabled=True, interval_s=10, file=out, clock=clock)
    assert isinstance(bar, PlainProgress)
    for step in range(1, 36):  # one step a second
        clock.t += 1.0
        bar.update(1)
        bar.set_postfix({"loss_g_adv": "0.693", "loss_d": 1.386})
        if step == 5:
            assert out.getvalue() == ""  # nothing before the first interval
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [re.match(r"usis (\d+)/100 ", line).group(1) for line in lines] == ["10", "20", "30", "35"]
    assert lines[0] == "usis 10/100 (10.0%) 1 it/s loss_g_adv=0.693 loss_d=1.386 elapsed 0:10 left 1:30"
    assert lines[1] == "usis 20/100 (20.0%) 1 it/s loss_g_adv=0.693 loss_d=1.386 elapsed 0:20 left 1:20"
    assert lines[3].startswith("usis 35/100 (35.0%) 1 it/s") and "left 1:05" in lines[3]  # the last, at close
    bar.close()
    assert out.getvalue() == text  # closed once


def test_the_speed_is_that_of_the_last_interval_and_a_resumed_run_counts_from_its_step():
    clock, out = FakeClock(), io.StringIO()
    bar = PlainProgress(total=1000, initial=500, interval_s=30, file=out, clock=clock)
    clock.t += 60.0  # a slow first step (compilation, the first evaluation)
    bar.update(1)
    for _ in range(120):
        clock.t += 0.25  # then 4 it/s
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("usis 501/1000 (50.1%) 0.0167 it/s")
    assert lines[1] == "usis 621/1000 (62.1%) 4 it/s elapsed 1:30 left 1:35"


def test_interval_zero_writes_a_line_every_step_and_close_adds_none():
    clock, out = FakeClock(), io.StringIO()
    bar = progress_bar(total=3, interval_s=0, file=out, clock=clock)
    for _ in range(3):
        clock.t += 2.0
        bar.update(1)
    bar.close()
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["1/3", "2/3", "3/3"]
    assert "left" not in out.getvalue().splitlines()[-1]


def test_a_terminal_gets_tqdm_and_disabled_shows_nothing():
    bar = progress_bar(total=10, initial=2, enabled=True, file=Terminal())
    assert isinstance(bar, tqdm) and bar.n == 2
    bar.close()
    out = io.StringIO()
    quiet = progress_bar(total=10, enabled=False, file=out)
    assert isinstance(quiet, NoProgress)
    quiet.update(5), quiet.set_postfix({"a": 1}), quiet.close()
    assert out.getvalue() == ""


def test_a_failed_write_does_not_end_the_run():
    class FullLog(io.StringIO):
        def write(self, s):
            raise OSError(28, "No space left on device")

    clock = FakeClock()
    bar = progress_bar(total=4, interval_s=0, file=FullLog(), clock=clock)
    clock.t += 1
    bar.update(1)
    bar.close()


def test_the_interval_is_a_config_field():
    assert C.TrainConfig().log_interval_s == 30.0
    cfg = C.apply_overrides(C.get_preset("synthetic"), ["train.log_interval_s=5"])
    assert cfg.train.log_interval_s == 5.0


def test_training_with_stderr_in_a_file_writes_plain_progress_lines(tmp_path, monkeypatch):
    # Trainer._fit draws its progress with progress_bar(..., interval_s=train.log_interval_s), sys.stderr:
    # a file here (as under nohup or a job scheduler), so plain lines, one per step at interval 0
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        rc = main(["train", "--preset", "synthetic", "--out", str(tmp_path / "run"), "--iters", "6",
                   *set_args(TINY + ["train.log_interval_s=0"])])
    monkeypatch.undo()
    text = log.read_bytes().decode()  # as written: read_text would turn a carriage return into a newline
    assert rc == 0, text
    assert "\r" not in text
    steps = [int(m.group(1)) for m in re.finditer(r"^usis (\d+)/6 \(", text, re.MULTILINE)]
    assert steps == [1, 2, 3, 4, 5, 6], text
    assert re.search(r"^usis 3/6 \(50\.0%\) \S+ it/s .*\bloss_d=\S+ .*elapsed \d+:\d\d left \d+:\d\d$", text, re.MULTILINE)


def test_a_demo_like_log_holds_no_carriage_return(tmp_path, monkeypatch):
    # `make demo > log` on a machine without the synthetic evaluator cached: the evaluator is trained first, inside
    # the run's first evaluation (made short here: 3 steps on 16 images; a line every step); its progress is
    # plain lines too, as training's (issue 34)
    from usis.metrics.synthetic_eval import fit

    monkeypatch.setattr(fit, "TRAIN_STEPS", 3)
    monkeypatch.setattr(fit, "TRAIN_IMAGES", 16)
    monkeypatch.setattr(fit, "PROGRESS_INTERVAL_S", 0.0)
    log = tmp_path / "demo.log"
    with open(log, "w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        rc = main(["train", "--preset", "synthetic", "--out", str(tmp_path / "run"), "--iters", "2",
                   *set_args(TINY + ["train.eval_every=0", f"eval.cache_dir={tmp_path / 'cache'}",
                                     "train.log_interval_s=0"])])
    monkeypatch.undo()
    text = log.read_bytes().decode()  # as written
    assert rc == 0, text
    assert "\r" not in text
    evaluator = [line for line in text.splitlines() if line.startswith("training synthetic evaluator 64x64 ")]
    assert [line.split()[4] for line in evaluator] == ["1/3", "2/3", "3/3"], text
    assert re.match(r"training synthetic evaluator 64x64 3/3 \(100\.0%\) \S+ it/s loss=\d", evaluator[-1])
    assert re.search(r"^usis 2/2 \(100\.0%\)", text, re.MULTILINE)
