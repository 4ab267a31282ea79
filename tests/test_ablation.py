"""benchmarks/ablation.py: which runs it skips or resumes, and the statistics it reports."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ablation"] = mod
    spec.loader.exec_module(mod)
    return mod


def _write_run(run_dir: Path, records, checkpoint=True):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if checkpoint:
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "checkpoints" / "latest.pt").write_bytes(b"x")


def _rec(step, miou, sfid, ceiling=80.0):
    return {"step": step, "miou": miou, "miou_ceiling": ceiling, "sfid": sfid}


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(ablation, tmp_path):
    _write_run(tmp_path / "done", [_rec(0, 8, 4), _rec(100, 40, 1)])
    _write_run(tmp_path / "half", [_rec(0, 8, 4), _rec(50, 20, 2)])
    _write_run(tmp_path / "fresh", [], checkpoint=False)
    assert ablation.run_state(tmp_path / "done", 100) == "done"
    assert ablation.run_state(tmp_path / "half", 100) == "resume"
    assert ablation.run_state(tmp_path / "fresh", 100) == "new"
    assert ablation.run_state(tmp_path / "missing", 100) == "new"
    cmd = ablation.train_command(tmp_path / "half", ["train.lr_g=1"], seed=3, iters=100, resume=True)
    assert "--resume" in cmd and "--set" not in cmd  # the run's own config comes from its checkpoint
    cmd = ablation.train_command(tmp_path / "fresh", ["train.lr_g=1"], seed=3, iters=100, resume=False)
    assert cmd[cmd.index("--seed") + 1] == "3" and cmd[cmd.index("--set") + 1] == "train.lr_g=1"


def test_a_step_evaluated_twice_counts_once(ablation, tmp_path):
    _write_run(tmp_path / "r", [_rec(0, 8, 4), _rec(50, 20, 2), _rec(50, 24, 3)])
    assert ablation.read_metrics(tmp_path / "r")[50]["miou"] == 24  # the later record (after a resume)


def test_mean_and_std_over_seeds(ablation, tmp_path):
    out = tmp_path / "study"
    for seed, (m, s) in enumerate([(40, 1.0), (48, 2.0), (32, 3.0)]):
        _write_run(out / "a" / f"seed{seed}", [_rec(0, 8, 4.0), _rec(100, m, s)])
    _write_run(out / "b" / "seed0", [_rec(0, 8, 4.0), _rec(100, 60, 0.5)])
    runs = ablation.collect(out, ["a", "b"], [0, 1, 2])
    assert set(runs["a"]) == {0, 1, 2} and set(runs["b"]) == {0}
    agg = ablation.aggregate(runs)
    mean, std, n = agg["a"]["miou_ratio"][100]
    assert n == 3 and mean == pytest.approx(0.5) and std == pytest.approx(0.1)  # (0.5, 0.6, 0.4) / sample std
    mean, std, n = agg["a"]["sfid_ratio"][100]
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.25)  # (0.25, 0.5, 0.75)
    assert agg["b"]["miou_ratio"][100] == (0.75, 0.0, 1)
    table = ablation.table(agg)
    assert "At step 100" in table and "| a | 3 | 0.500 +- 0.100 |" in table
    png = ablation.plot(agg, runs, tmp_path / "plot.png", "test")
    assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_keeps_every_runs_evaluations(ablation, tmp_path):
    out = tmp_path / "study"
    _write_run(out / "a" / "seed1", [_rec(0, 8, 4.0), _rec(100, 40, 1.0)])
    study = ablation.Study(variants={"a": []}, iters=100, eval_every=100, about="t")
    ablation.report("t", study, out, ["a"], [0, 1], tmp_path)
    saved = json.loads((tmp_path / "t_runs.json").read_text())
    assert saved == {"a": {"1": [_rec(0, 8, 4.0), _rec(100, 40, 1.0)]}}
    # a later report, the run folder gone, a new seed beside it: the kept seed is reported with the new one
    (out / "a" / "seed1" / "metrics.jsonl").unlink()
    _write_run(out / "a" / "seed0", [_rec(0, 8, 4.0), _rec(100, 48, 1.0)])
    text = ablation.report("t", study, out, ["a"], [0, 1], tmp_path)
    saved = json.loads((tmp_path / "t_runs.json").read_text())
    assert set(saved["a"]) == {"0", "1"} and saved["a"]["1"][1]["miou"] == 40
    assert "| a | 2 | 0.550 +- 0.071 |" in text
    # a seed not asked for is left out of the table, not out of what is kept
    text = ablation.report("t", study, out, ["a"], [0], tmp_path)
    assert "| a | 1 | 0.600 +- 0.000 |" in text
    assert set(json.loads((tmp_path / "t_runs.json").read_text())["a"]) == {"0", "1"}


def test_every_study_variant_is_a_valid_config(ablation):
    from usis import config as C

    for name, study in ablation.STUDIES.items():
        for variant, overrides in study.variants.items():
            cfg = C.apply_overrides(C.get_preset("synthetic"),
                                    ablation.run_overrides(study, overrides, study.eval_every))
            C.validate(cfg)
            assert cfg.train.nproc == 1 and cfg.train.max_seconds == 0, (name, variant)


def test_demo_stability_summarises_seed_curves(ablation, tmp_path):
    spec = importlib.util.spec_from_file_location("demo_stability", ROOT / "benchmarks" / "demo_stability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    start = {"step": 0, "miou": 10.0, "miou_ceiling": 80.0, "sfid": 4.0}
    # seed a meets both bars at 2000 and 2250; seed b misses the mIoU bar at 2000
    _write_run(tmp_path / "a", [start, {"step": 2000, "miou": 44.0, "miou_ceiling": 80.0, "sfid": 0.8},
                                {"step": 2250, "miou": 48.0, "miou_ceiling": 80.0, "sfid": 0.6}])
    _write_run(tmp_path / "b", [start, {"step": 2000, "miou": 36.0, "miou_ceiling": 80.0, "sfid": 0.9},
                                {"step": 2250, "miou": 42.0, "miou_ceiling": 80.0, "sfid": 0.7}])
    assert mod.seed_curves([tmp_path / "a", tmp_path / "b"], "t", tmp_path / "rep", 1500) == 0
    rows = (tmp_path / "rep/demo_stability_t.md").read_text().splitlines()[2:]
    assert rows[0].startswith("| 2000 | 0.550, 0.200 | 0.450, 0.225 | 0.500 +- 0.071 |") and rows[0].endswith("| no |")
    assert rows[1].startswith("| 2250 | 0.600, 0.150 | 0.525, 0.175 |") and rows[1].endswith("| yes |")
    assert (tmp_path / "rep/demo_stability_t.png").stat().st_size > 0


def test_only_steps_every_seed_evaluated_are_aggregated(ablation, tmp_path):
    out = tmp_path / "study"
    _write_run(out / "a" / "seed0", [_rec(0, 8, 4.0), _rec(50, 20, 2.0), _rec(100, 40, 1.0)])  # every 50 steps
    _write_run(out / "a" / "seed1", [_rec(0, 8, 4.0), _rec(100, 48, 2.0)])  # every 100 steps
    _write_run(out / "b" / "seed0", [_rec(0, 8, 4.0), _rec(50, 30, 1.0)])  # stopped early
    agg = ablation.aggregate(ablation.collect(out, ["a", "b"], [0, 1]))
    assert set(agg["a"]["miou_ratio"]) == {0, 100}  # step 50: one seed of two, left out
    assert agg["a"]["miou_ratio"][100][2] == 2
    assert ablation.last_common_step(agg) == 0  # b never reached 100, and a has step 50 for one seed only
    assert "At step 0" in ablation.table(agg) and "| b | 0 | - |" in ablation.table(agg, step=100)
