"""Digests of what N training steps compute, for every variant of the step: refactors of the step are checked
against the code before them bit for bit (weights, buffers, optimizer states and every logged loss).

    python benchmarks/step_digest.py --out /tmp/before.json            # on the code before a change
    python benchmarks/step_digest.py --out /tmp/after.json --compare /tmp/before.json

Each variant is the synthetic preset (its own sizes and data; nothing periodic: no evaluation, samples or
checkpoints) with the overrides below, trained ``--steps`` steps (default 6: the lazy R1 steps 0 and 4 and the
steps between) in one process (one thread) and in two data-parallel processes (:func:`usis.train.distributed.launch`,
one thread each, global batch 2). A digest is the SHA-256 of every tensor of the trainer's state (the networks'
parameters and buffers, every optimizer's state) after the last step, and one of the losses of every step, in
a fixed order. The two ranks of a data-parallel run must hold the same parameters (their BN statistics are
their own); rank 0's digest is reported.

The digests depend on the machine and the torch build (float summation order): compare files written on the
same machine. ``--compare`` prints each variant's verdict and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from usis import config as C  # noqa: E402
from usis.train.distributed import Dist, launch  # noqa: E402

NO_NOISE = ["model.noise_3d=false", "model.pixel_noise=0"]
NO_DECODER = ["model.decoder=false"]
# the synthetic preset and every variant of benchmarks/ablation.py's paper study, plus the step's switches
VARIANTS: dict[str, list[str]] = {
    "preset": [],
    "nchw": ["train.channels_last=false"],
    "patch_D": ["model.d_type=patch", *NO_DECODER],
    "whole_D": ["model.d_type=whole", *NO_DECODER],
    "wavelet_D": NO_DECODER,
    "wavelet_G": ["model.g_type=wavelet", "model.g_ch=2"],
    "l1_cycle": ["train.seg_loss=l1", *NO_DECODER],
    "reverse_cycle": ["train.lambda_rev=10", *NO_DECODER],
    "reverse_cycle_no_noise": ["train.lambda_rev=10", *NO_DECODER, *NO_NOISE],
    "no_noise": [*NO_DECODER, *NO_NOISE],
    "fresh_fakes": ["train.fresh_fakes=true"],
    "r1_reference": ["train.r1_mode=reference"],
    "r1_reference_fresh_fakes": ["train.r1_mode=reference", "train.fresh_fakes=true", "train.r1_gamma=10"],
    "lambda_seg_2.5": ["train.lambda_seg=2.5"],
    "lambda_seg_0": ["train.lambda_seg=0"],
    "reverse_lambda_seg_2.5": ["train.lambda_rev=10", "train.lambda_seg=2.5"],
    "c_plus_one_reference_init": ["model.s_extra_channel=true", "model.init=reference"],
}
BASE = ["train.batch_size=2", "train.sample_every=0", "train.eval_every=-1", "train.ckpt_every=0",
        "train.num_threads=1", "train.log_every=1000", "data.num_workers=0"]


# the logged values of the step before issue 29, by their names since (loss_d was D's adversarial part)
LEGACY = {"loss_g": "loss_g", "loss_g_seg": "loss_g_seg", "loss_g_adv": "loss_g_adv", "loss_g_rev": "loss_rev",
          "loss_s": "loss_s", "loss_d_adv": "loss_d", "loss_d_rec": "loss_rec", "d_real": "d_real",
          "d_fake": "d_fake", "r1": "r1", "loss_d_label": "loss_d_label"}


def legacy_names(out: dict) -> dict:
    """The values the step logged before issue 29, under the names it gave them (values logged since are left
    out of the digest)."""
    if "loss_d_adv" not in out:  # the code before issue 29
        return out
    return {old: out[new] for new, old in LEGACY.items() if new in out}


def config(overrides: list[str], nproc: int) -> C.Config:
    return C.apply_overrides(C.get_preset("synthetic"), BASE + overrides + [f"train.nproc={nproc}"])


def _digest_state(trainer) -> str:
    h = hashlib.sha256()
    state = trainer.state_dict()

    def walk(prefix, obj):
        if isinstance(obj, dict):
            for k in sorted(obj, key=str):
                walk(f"{prefix}.{k}", obj[k])
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                walk(f"{prefix}[{i}]", v)
        elif isinstance(obj, torch.Tensor):
            h.update(prefix.encode() + obj.detach().cpu().contiguous().numpy().tobytes())

    for key in [*trainer.nets.named(), "optim"]:
        walk(key, state[key])
    return h.hexdigest()


def _run(dist: Dist | None, overrides: list[str], nproc: int, steps: int, out: str) -> dict:
    from usis.train.trainer import Trainer

    trainer = Trainer(config(overrides, nproc), out, dist=dist, progress=False)
    losses = []
    h = hashlib.sha256()
    for _ in range(steps):
        labels = trainer.loaders.next_labels()["label"]
        photos = trainer.loaders.next_photos()["image"]
        out_ = trainer.train_step(labels, photos)
        out_ = legacy_names(out_)
        for k in sorted(out_):
            v = out_[k].detach().float().cpu()
            h.update(k.encode() + v.numpy().tobytes())
        losses.append({k: float(v) for k, v in sorted(out_.items())})
    result = {"state": _digest_state(trainer), "losses": h.hexdigest(), "last": losses[-1]}
    if dist is not None and dist.enabled:  # the parameters (buffers hold each rank's own BN statistics)
        h = hashlib.sha256()
        for name, net in trainer.nets.named().items():
            for k, p in net.named_parameters():
                h.update(f"{name}.{k}".encode() + p.detach().cpu().contiguous().numpy().tobytes())
        every = dist.all_gather_object(h.hexdigest())
        result["ranks_equal"] = len(set(every)) == 1
    return result


def digest(name: str, steps: int, tmp: Path) -> dict:
    overrides = VARIANTS[name]
    torch.set_num_threads(1)
    one = _run(None, overrides, 1, steps, str(tmp / f"{name}-1"))
    two = launch(_run, 2, (overrides, 2, steps, str(tmp / f"{name}-2")))
    return {"overrides": overrides, "one_process": one, "two_processes": two}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file for the digests")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names (default: all)")
    ap.add_argument("--compare", help="a JSON file written by this script: print each variant's verdict")
    args = ap.parse_args()
    import tempfile

    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results[name] = digest(name, args.steps, Path(tmp))
            print(f"{name}: {results[name]['one_process']['state'][:12]} / {results[name]['two_processes']['state'][:12]}",
                  flush=True)
    Path(args.out).write_text(json.dumps({"steps": args.steps, "torch": torch.__version__, "variants": results},
                                         indent=1))
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())["variants"]
    bad = 0
    for name, r in results.items():
        if name not in before:
            print(f"{name}: not in {args.compare}")
            continue
        for mode in ("one_process", "two_processes"):
            same = all(r[mode][k] == before[name][mode][k] for k in ("state", "losses"))
            ok = same and r[mode].get("ranks_equal", True)
            bad += not ok
            print(f"{name:28s} {mode:14s} {'identical' if same else 'DIFFERS'}"
                  + ("" if r[mode].get("ranks_equal", True) else " (ranks differ)"))
    print(f"{bad} of {2 * len(results)} differ" if bad else "all identical")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
