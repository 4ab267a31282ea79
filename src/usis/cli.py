"""The ``usis`` command. Thin: parses arguments, then calls library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from usis import config as C


def _add_config_args(p: argparse.ArgumentParser, preset_required: bool = True) -> None:
    p.add_argument("--preset", required=preset_required, choices=sorted(C.PRESETS),
                   help="starting configuration (paper hyperparameters per dataset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr_g=2e-4 --set data.root=/data/cityscapes")


def _resolve(args) -> C.Config:
    cfg = C.apply_overrides(C.get_preset(args.preset), args.overrides)
    return cfg


# ---------------------------------------------------------------------------------------------- info


def cmd_info(args) -> int:
    from usis.train.trainer import build_networks, count_parameters

    cfg = _resolve(args)
    C.validate(cfg)
    nets = build_networks(cfg)
    params = {"generator": count_parameters(nets.G), "segmenter": count_parameters(nets.S),
              "discriminator": count_parameters(nets.D), "decoder": count_parameters(nets.decoder)}
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "params": params}, indent=2))
    else:
        print(cfg.to_json())
        for k, v in params.items():
            print(f"{k:>14}: {v:,} parameters ({v / 1e6:.2f}M)")
    return 0


# ---------------------------------------------------------------------------------------------- train


def cmd_train(args) -> int:
    from usis.train.checkpoint import load_checkpoint

    out = Path(args.out)
    ckpt_path = out / "checkpoints" / "latest.pt"
    if args.resume:
        if not ckpt_path.exists():
            print(f"error: --resume: no checkpoint at {ckpt_path}; start without --resume", file=sys.stderr)
            return 2
        state = load_checkpoint(ckpt_path)
        cfg = C.apply_overrides(C.Config.from_dict(state["config"]), args.overrides)
    else:
        if args.preset is None:
            print("error: --preset is required (e.g. --preset synthetic)", file=sys.stderr)
            return 2
        cfg = _resolve(args)
        if ckpt_path.exists() and not args.dry_run:
            print(f"error: {ckpt_path} exists; add --resume to continue that run or choose another --out",
                  file=sys.stderr)
            return 2
    if args.iters is not None:
        cfg.train.iters = args.iters
    if args.seed is not None:
        cfg.train.seed = args.seed
    C.validate(cfg)
    if args.dry_run:
        print(cfg.to_json())
        return 0

    from usis.data import build_datasets
    from usis.data.check import preflight
    from usis.train.evaluation import make_evaluator
    from usis.train.trainer import Trainer

    preflight(cfg)
    data = (build_datasets(cfg, "train"), build_datasets(cfg, "val"))
    evaluator = make_evaluator(cfg, data[1]) if cfg.train.eval_every >= 0 else None
    trainer = Trainer(cfg, out, data=data, evaluator=evaluator, progress=not args.no_progress)
    if args.resume:
        trainer.load_state_dict(state)
        print(f"resumed from {ckpt_path} at step {trainer.step}", file=sys.stderr)
    summary = trainer.fit(cfg.train.iters)
    print(f"checkpoint: {out / 'checkpoints' / 'latest.pt'} (step {summary['step']})", file=sys.stderr)
    print(f"samples:    {out / 'samples'}", file=sys.stderr)
    if summary["interrupted"]:
        cmd = f"usis train --out {out} --resume"
        if args.iters is not None:
            cmd += f" --iters {args.iters}"
        print(f"interrupted at step {summary['step']}; resume with:\n  {cmd}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- data


def cmd_data_check(args) -> int:
    from usis.data.check import run_check

    cfg = _resolve(args)
    return run_check(cfg, json_out=args.json)


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="usis", description="USIS: unsupervised semantic image synthesis")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("info", help="print the resolved config and parameter counts")
    _add_config_args(pi)
    pi.add_argument("--json", action="store_true")
    pi.set_defaults(func=cmd_info)

    pt = sub.add_parser("train", help="train USIS on unpaired label maps and photos")
    _add_config_args(pt, preset_required=False)
    pt.add_argument("--out", required=True, help="run folder (checkpoints, samples, logs)")
    pt.add_argument("--iters", type=int, default=None, help="total iterations (overrides train.iters)")
    pt.add_argument("--seed", type=int, default=None)
    pt.add_argument("--resume", action="store_true", help="continue the run in --out from latest.pt")
    pt.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    pt.add_argument("--no-progress", action="store_true", help="no progress bar")
    pt.set_defaults(func=cmd_train)

    pd = sub.add_parser("data", help="dataset tools")
    dsub = pd.add_subparsers(dest="data_command", required=True)
    pc = dsub.add_parser("check", help="check a dataset: counts, sizes, class histogram, problems")
    _add_config_args(pc)
    pc.add_argument("--json", action="store_true")
    pc.set_defaults(func=cmd_data_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # user-facing errors from the library carry their own message
        from usis.errors import USER_ERRORS

        if isinstance(e, USER_ERRORS()):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
