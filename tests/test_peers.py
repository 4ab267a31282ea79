"""benchmarks/peers.py: the steps documented, the peers' data as they read it, and one message (with the command
that fetches them) where their code is missing. Their training itself runs in the benchmark, not here."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import load_benchmark
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _peers():
    return load_benchmark("peers")


def test_help_documents_the_steps():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    for step in ("prepare", "train", "test", "score", "report", "get_peers.sh", "--preprocess none", "module."):
        assert step in out


def test_the_peers_read_palette_maps_and_photos_and_a_missing_checkout_is_one_message(tmp_path, monkeypatch, capsys):
    peers = _peers()
    monkeypatch.setattr(peers, "PEERS", tmp_path / "nowhere")
    code = peers.main(["train", "--methods", "cut", "--train-images", "3", "--work", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "bash benchmarks/get_peers.sh" in err and "nowhere/cut" in err
    data = tmp_path / "work" / "data"
    assert [len(list((data / s).glob("*.png"))) for s in ("trainA", "trainB", "testA", "testB")] == [3, 3, 200, 200]
    # trainA: exact palette colours (no resize blending class borders), one per class present
    from usis.data.synthetic import PALETTE

    a = np.asarray(Image.open(data / "trainA" / "00000.png"))
    assert a.shape == (64, 128, 3)
    assert {tuple(c) for c in a.reshape(-1, 3)} <= {tuple(c) for c in PALETTE}
    b = np.asarray(Image.open(data / "trainB" / "00000.png"))
    assert b.shape == (64, 128, 3) and len(np.unique(b.reshape(-1, 3), axis=0)) > 100  # a photo


def test_the_downstream_step_checks_the_checkouts_first_and_tabulates_against_the_oracle(tmp_path, monkeypatch, capsys):
    peers = _peers()
    monkeypatch.setattr(peers, "PEERS", tmp_path / "nowhere")
    code = peers.main(["downstream", "--methods", "fastcut", "--train-images", "2", "--work", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "get_peers.sh" in err and "for fastcut" in err
    assert not (tmp_path / "w" / "downstream.json").exists()
    iou = {c: 10.0 for c in peers.DOWNSTREAM_CLASSES}
    results = {"oracle (real photos)|0": {"row": "oracle (real photos)", "seed": "0", "miou": 80.0, "iou": iou},
               "oracle (real photos)|1": {"row": "oracle (real photos)", "seed": "1", "miou": 80.0, "iou": iou},
               "cut (width 16)|0": {"row": "cut (width 16)", "seed": "0", "miou": 30.0, "iou": {**iou, "car": 20.0}},
               "cut (width 16)|1": {"row": "cut (width 16)", "seed": "1", "miou": 50.0, "iou": iou}}
    table = peers.downstream_table(results)
    cut = next(line for line in table if line.startswith("| cut"))
    assert "| 0, 1 | 40 +- 14 | 0.50 | 15 +- 7.1 | 10 +- 0 |" in cut  # mean +- std; the share of the oracle


def test_a_usis_row_downstream_py_measured_is_reused_only_for_the_same_weights_seed_and_protocol(tmp_path,
                                                                                                  monkeypatch):
    peers = _peers()
    monkeypatch.setattr(peers, "ROOT", tmp_path)
    ds = peers._downstream_protocol()
    ckpt = tmp_path / "g.pt"
    ckpt.write_bytes(b"weights")
    proto = {"maps": ds.TRAIN_IMAGES, "per_map": 1, "test": 200, "steps": ds.TRAIN_STEPS, "size": [64, 128],
             "pool_seed": ds.POOL_SEED, "segmenter_seed": ds.SEGMENTER_SEED, "keep": 0.7}
    saved = tmp_path / "runs" / "downstream" / "x" / "results" / "usis_seeds" / "seed1.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(__import__("json").dumps({"protocol": proto, "digest": ds.digest(str(ckpt)), "seed": 1,
                                               "miou": 42.0, "pixel_accuracy": 80.0, "iou": {"car": 20.0}}))
    found = peers._measured_by_downstream(ds, str(ckpt), 1)
    assert found["miou"] == 42.0 and found["path"] == str(saved)
    assert peers._measured_by_downstream(ds, str(ckpt), 0) is None  # another segmenter seed
    ckpt.write_bytes(b"other weights")
    assert peers._measured_by_downstream(ds, str(ckpt), 1) is None  # other weights at the same path
    ckpt.write_bytes(b"weights")
    saved.write_text(saved.read_text().replace('"steps": 400', '"steps": 200'))
    assert peers._measured_by_downstream(ds, str(ckpt), 1) is None  # another protocol


def test_the_cyclegan_shim_lets_their_scripts_call_the_model_and_changes_nothing_else(tmp_path):
    """CUT's copy of the CycleGAN model (the two mismatches reproduced by a stand-in checkout): without the shim their
    train.py fails before its first step; with it the no-op takes their argument and ``opt.amp`` is off."""
    peers = _peers()
    code = tmp_path / "cut"
    (code / "models").mkdir(parents=True)
    (code / "models" / "__init__.py").write_text("")
    (code / "models" / "cycle_gan_model.py").write_text(
        "class CycleGANModel:\n"
        "    def __init__(self, opt):\n        self.opt = opt\n        self.width = opt.ngf\n"
        "    def data_dependent_initialize(self):\n        return\n"
        "    def backward_G(self):\n        return 'scaled' if self.opt.amp else 'plain'\n")
    (code / "train.py").write_text(
        "import argparse, sys, torch\nfrom models.cycle_gan_model import CycleGANModel\n"
        "opt = argparse.Namespace(ngf=int(sys.argv[1]))\nm = CycleGANModel(opt)\n"
        "m.data_dependent_initialize({'A': None})\n"
        "print('ran', m.width, m.backward_G(), torch.initial_seed())\n")
    log = tmp_path / "train.log"
    try:
        peers._run_theirs(code, "train.py", ["16"], 3, log)
        raise AssertionError("their stand-in should fail without the shim")
    except peers.PeersError as e:
        assert "TypeError" in str(e) and "data_dependent_initialize" in str(e)
    log.unlink()
    peers._run_theirs(code, "train.py", ["16"], 3, log, peers.SHIMS["cyclegan_cut"])
    assert log.read_text().splitlines()[-1] == "ran 16 plain 3"  # their options, amp off, the RNG seeded
    assert set(peers.SHIMS) == {"cyclegan_cut"}  # CUT, FastCUT and CycleGAN's own code run as shipped


def test_the_report_keeps_every_seeds_figures_beside_the_table(tmp_path):
    import json

    import torch

    peers = _peers()
    row = {"miou_ratio": 0.5, "sfid": 1.0, "c2st": 1.0, "c2st_loss": 0.001, **{f"iou/{c}": 10.0 for c in peers.CLASSES}}
    scores = {"cyclegan_cut (width 16)|0": {"row": "cyclegan_cut (width 16)", "seed": "0", **row},
              "cyclegan_cut (width 16)|1": {"row": "cyclegan_cut (width 16)", "seed": "1", **row, "miou_ratio": 0.7}}
    grid = [torch.zeros(6, 3, 64, 128, dtype=torch.uint8)] * 3
    down = {"oracle (real photos)|0": {"row": "oracle (real photos)", "seed": "0", "miou": 80.0,
                                       "iou": {c: 1.0 for c in peers.DOWNSTREAM_CLASSES}}}
    peers.report({"scores": scores, "grid": grid, "grid_rows": ["cyclegan_cut (width 16)"]}, tmp_path / "p.md", down)
    assert "| cyclegan_cut (width 16) | 0, 1 | 0.6 +- 0.14 |" in (tmp_path / "p.md").read_text()
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved == {"scores": scores, "downstream": down} and (tmp_path / "p.png").is_file()


def test_a_usis_row_without_its_checkpoint_is_one_message_before_any_work(tmp_path, capsys):
    peers = _peers()
    code = peers.main(["score", "--methods", "cut", "--work", str(tmp_path / "w"),
                       "--usis", "usis, model.s_local=4@0=runs/x/latest.pt"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no checkpoint file '4@0=runs/x/latest.pt'" in err
    assert "may not contain '='" in err and not (tmp_path / "w").exists()
