"""The ``usis`` command. Thin: parses arguments, then calls library functions.

The library is imported inside each command's function (not at the top), so that ``usis --help`` and a
mistyped option answer at once instead of after importing torch and the networks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from usis import config as C
from usis.errors import UsisError, install_warning_format


def _add_config_args(p: argparse.ArgumentParser, preset_required: bool = True) -> None:
    p.add_argument("--preset", required=preset_required, choices=sorted(C.PRESETS),
                   help="starting configuration (paper hyperparameters per dataset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr_g=2e-4 --set data.root=/data/cityscapes")


def _resolve(args) -> C.Config:
    cfg = C.apply_overrides(C.get_preset(args.preset), args.overrides)
    return cfg


def _add_revision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", default=None,
                   help="with --checkpoint org/name: the Hub repo's branch, tag or commit (default main); the cache is "
                        "$HF_HUB_CACHE (~/.cache/huggingface/hub), HF_HUB_OFFLINE=1 reads it only")


# ---------------------------------------------------------------------------------------------- info


def cmd_info(args) -> int:
    from usis.nn.build import build_networks
    from usis.train.trainer import count_parameters

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
    from usis.checkpoint import CheckpointError, checkpoint_path, load_checkpoint

    out = Path(args.out)
    ckpt_path = checkpoint_path(out)
    if args.resume:
        resume_path = ckpt_path if args.resume == "latest" else Path(args.resume)
        if not resume_path.exists():
            print(f"error: --resume: no checkpoint at {resume_path}; start without --resume", file=sys.stderr)
            return 2
        try:
            state = load_checkpoint(resume_path)
        except CheckpointError as e:
            previous = resume_path.with_name("previous.pt")
            hint = ""
            if previous.exists() and previous != resume_path:
                hint = (f"\nthe checkpoint saved before it is intact: resume from it with\n"
                        f"  usis train --out {out} --resume {previous}")
            print(f"error: {e}{hint}", file=sys.stderr)
            return 2
        cfg = C.apply_overrides(C.saved_config(state["config"]), args.overrides)
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
    if args.dry_run:
        C.validate(cfg)
        print(cfg.to_json())
        return 0

    from usis.train.run import train

    summary = train(cfg, out, resume_path if args.resume else None, not args.no_progress, args.deadline)
    if "rank" in summary:  # a torchrun rank other than 0: rank 0 reports
        return 3 if summary.get("diverged") else 2 if summary.get("disk_full") else 0
    if summary.get("diverged"):
        print(f"error: {summary['diverged']}", file=sys.stderr)
        report_to_torchrun(f"error: {summary['diverged']}")
        return 3
    print(f"checkpoint: {ckpt_path} (step {summary['step']})", file=sys.stderr)
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


# ---------------------------------------------------------------------------------------------- generate


def cmd_generate(args) -> int:
    from usis.generate import GenerateError, generate_from_files, load_generator
    from usis.utils.device import resolve_device

    gen = load_generator(args.checkpoint, resolve_device(args.device, setting="--device"), revision=args.revision)
    if args.num_classes is not None and args.num_classes != gen.num_classes:
        raise GenerateError(f"--num-classes {args.num_classes}: this generator was trained with {gen.num_classes} "
                            f"classes (ids 0..{gen.num_classes - 1}) and accepts no other count; use label maps of "
                            "its label set, or drop --num-classes")
    paths = generate_from_files(gen, args.labels, args.out, n=args.n, seed=args.seed, colorize=args.colorize,
                                local_style=args.local_style, batch_size=args.batch_size)
    maps = len(paths) // args.n
    print(f"wrote {len(paths)} images ({maps} label map{'s' if maps != 1 else ''} x {args.n} seeds, "
          f"{args.seed}..{args.seed + args.n - 1}) to {args.out}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from usis.generate import export_generator
    from usis.hub import HUB_FILES, HubError, is_hub_name, push_export

    if args.private and not args.push_to_hub:
        raise HubError("--private: it makes the repo that --push-to-hub creates private; add --push-to-hub org/name")
    if args.push_to_hub and not is_hub_name(args.push_to_hub):  # before anything is written
        raise HubError(f"--push-to-hub {args.push_to_hub}: give the repo as org/name (your user or organisation, a "
                       "slash, the model's name: letters, digits, '-', '_' or '.')")
    weights, cfg_path, card = export_generator(args.checkpoint, args.out, repo_id=args.push_to_hub)
    print(f"wrote {weights}, {cfg_path.name} and {card.name} (the model card)", file=sys.stderr)
    if args.push_to_hub:
        url = push_export(args.out, args.push_to_hub, private=args.private)
        print(f"pushed {', '.join(HUB_FILES)} to {url}", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from usis.evaluate import evaluate_checkpoint

    out = evaluate_checkpoint(args.checkpoint, args.out, metrics=args.metrics, segmenter=args.segmenter,
                              segmenter_path=args.segmenter_path, segmenter_mapping=args.segmenter_mapping,
                              fid_weights=args.fid_weights, num_images=args.num_images, overrides=args.overrides,
                              device=args.device, seed=args.seed, batch_size=args.batch_size,
                              msssim_maps=args.msssim_maps, msssim_samples=args.msssim_samples,
                              revision=args.revision)
    for k, v in out["results"].items():
        print(f"{k:>15}: {v:.4f}" if isinstance(v, float) else f"{k:>15}: {v}")
    print(f"report: {out['report_md']} ({out['report_json'].name})", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- synthesize


def cmd_synthesize(args) -> int:
    from usis.generate import load_generator
    from usis.synthesis import real_statistics
    from usis.synthesize import check_filter, make_scorer, synthesize_folder
    from usis.utils.device import resolve_device

    check_filter(args.keep, args.min_score)
    gen = load_generator(args.checkpoint, resolve_device(args.device, setting="--device"), revision=args.revision)
    scorer, note = make_scorer(gen, args.segmenter, args.segmenter_path, args.segmenter_mapping,
                               required=args.keep is not None or args.min_score is not None)
    measure = None
    if args.pixel_filter is not None or args.resample is not None:
        measure = real_statistics(gen.cfg, gen.device, args.filter_segmenter, args.filter_segmenter_path,
                                  args.filter_segmenter_mapping, args.real_photos, args.real_labels)
    s = synthesize_folder(gen, args.labels, args.out, n=args.n, seed=args.seed, local_style=args.local_style,
                          keep=args.keep, min_score=args.min_score, scorer=scorer, note=note,
                          batch_size=args.batch_size, progress=not args.no_progress, one_style=args.one_style,
                          pixel_filter=args.pixel_filter, resample=args.resample, measure=measure)
    made = f"generated {s.generated}" if s.generated else "nothing generated: every pair was already made"
    print(f"{s.kept} of {s.pairs} pairs in {s.out}/images and {s.out}/labels ({made}; "
          f"{s.pairs - s.kept} rejected, listed in manifest.jsonl only)" if s.kept != s.pairs else
          f"{s.pairs} pairs in {s.out}/images and {s.out}/labels ({made})", file=sys.stderr)
    print(f"manifest: {s.out / 'manifest.jsonl'} (scores: {s.scorer or 'none'}); classes: {s.out / 'classes.json'}; "
          f"card: {s.out / 'README.md'}", file=sys.stderr)
    print(f"check it: {s.check_command}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- app


def cmd_app(args) -> int:
    from usis.app import serve

    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, auth=args.auth,
          auth_file=args.auth_file, open_network=args.open, concurrency=args.concurrency, revision=args.revision)
    return 0


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
    pt.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                    help="continue the run in --out from its latest.pt, or from CHECKPOINT (e.g. the run's "
                         "checkpoints/previous.pt, the good checkpoint before the latest)")
    pt.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    pt.add_argument("--no-progress", action="store_true", help="no progress bar")
    pt.add_argument("--deadline", type=float, default=None, metavar="UNIX_TIME",
                    help="stop training (then save, sample and evaluate) once the clock passes this time, in seconds "
                         "since the epoch (`date -d 'today 18:00' +%%s`); make demo uses it to end within 15 minutes")
    pt.set_defaults(func=cmd_train)

    pd = sub.add_parser("data", help="dataset tools")
    dsub = pd.add_subparsers(dest="data_command", required=True)
    pc = dsub.add_parser("check", help="check a dataset: counts, sizes, class histogram, problems")
    _add_config_args(pc)
    pc.add_argument("--json", action="store_true")
    pc.set_defaults(func=cmd_data_check)

    pg = sub.add_parser("generate", help="turn label maps into images with a trained generator")
    pg.add_argument("--checkpoint", required=True,
                    help="training checkpoint (.pt), a `usis export` folder, or a Hugging Face Hub model repo org/name")
    _add_revision_arg(pg)
    pg.add_argument("--labels", required=True, help="a label PNG (class ids) or a folder of them")
    pg.add_argument("--out", required=True, help="output folder: <stem>_seed<S>.png per image")
    pg.add_argument("--n", type=int, default=4, help="images per label map (seeds S..S+n-1)")
    pg.add_argument("--seed", type=int, default=0, help="first noise seed; image k of a map uses seed + k")
    pg.add_argument("--colorize", action="store_true", help="also write the colourised label as <stem>_label.png")
    pg.add_argument("--local-style", action="store_true", help="a different noise vector per class region")
    pg.add_argument("--num-classes", type=int, default=None,
                    help="expected class count (checked against the checkpoint)")
    pg.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    pg.add_argument("--batch-size", type=int, default=8)
    pg.set_defaults(func=cmd_generate)

    px = sub.add_parser("export", help="write the EMA generator as safetensors + config.json")
    px.add_argument("--checkpoint", required=True, help="training checkpoint (.pt) or run folder")
    px.add_argument("--out", required=True, help="output folder (generator.safetensors, config.json, README.md: the "
                                                 "model card)")
    px.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                    help="then upload the folder's three files (nothing else) to this Hugging Face Hub model repo, "
                         "created if needed (log in first: hf auth login, or set HF_TOKEN)")
    px.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    px.set_defaults(func=cmd_export)

    pe = sub.add_parser("evaluate", help="FID / KID / mIoU / MS-SSIM of a checkpoint; writes report.json + .md")
    pe.add_argument("--checkpoint", required=True,
                    help="training checkpoint (.pt), a `usis export` folder, or a Hugging Face Hub model repo org/name")
    _add_revision_arg(pe)
    pe.add_argument("--out", required=True, help="report folder")
    pe.add_argument("--metrics", default=None,
                    help="comma list of fid, kid, miou, msssim, c2st (a classifier two-sample test of realism, "
                         "no downloaded weights; synthetic preset: miou, sfid, msssim, c2st); default: the run's "
                         "eval.metrics")
    pe.add_argument("--segmenter", choices=["drn", "segformer", "torchscript"], default=None,
                    help="pretrained segmenter for mIoU")
    pe.add_argument("--segmenter-path", default=None, help="its weights file, model folder / hub name, or .pt")
    pe.add_argument("--segmenter-mapping", default=None, help="torchscript: JSON class-mapping file")
    pe.add_argument("--fid-weights", default=None,
                    help="TF-FID Inception weights (pt_inception-2015-12-05-6726825d.pth); eval.fid_weights")
    pe.add_argument("--num-images", type=int, default=None,
                    help="validation label maps / photos used (default eval.num_images; 0 = all)")
    pe.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override the run's config, e.g. --set data.root=/data/cityscapes")
    pe.add_argument("--device", default="auto")
    pe.add_argument("--seed", type=int, default=0, help="noise seed of the first image (image i: seed + i)")
    pe.add_argument("--batch-size", type=int, default=None, help="default eval.batch_size")
    pe.add_argument("--msssim-maps", type=int, default=50, help="label maps used for MS-SSIM diversity")
    pe.add_argument("--msssim-samples", type=int, default=20, help="images per label map for MS-SSIM")
    pe.set_defaults(func=cmd_evaluate)

    ps = sub.add_parser("synthesize", help="make a labelled dataset (images/ + labels/ + a scored manifest) from "
                                           "label maps")
    ps.add_argument("--checkpoint", required=True,
                    help="training checkpoint (.pt) or run folder (its S scores the pairs), a `usis export` folder, "
                         "or a Hugging Face Hub model repo org/name")
    _add_revision_arg(ps)
    ps.add_argument("--labels", required=True, help="a folder of label PNGs (class ids; sub-folders are kept) or one")
    ps.add_argument("--out", required=True, help="dataset folder: images/, labels/, classes.json, manifest.jsonl; "
                                                 "rerun the same command to resume")
    ps.add_argument("--n", type=int, default=1, help="pairs per label map (default 1; with --resample hard: at most)")
    ps.add_argument("--seed", type=int, default=0,
                    help="noise seeds: pair k of a map has a seed of its own, derived from this seed, the map's path "
                         "and k (a dataset of many styles); with --one-style seed + k for every map")
    ps.add_argument("--one-style", action="store_true",
                    help="pair k of every map gets seed + k: the whole dataset in one style per k (as usis generate)")
    ps.add_argument("--local-style", action="store_true", help="a different noise vector per class region")
    filt = ps.add_mutually_exclusive_group()
    filt.add_argument("--keep", type=float, default=None, metavar="FRACTION",
                      help="keep the best FRACTION of the pairs by score (0.7: the best 70 %%)")
    filt.add_argument("--min-score", type=float, default=None, metavar="X",
                      help="keep the pairs whose score (mIoU in percent over the classes present) is >= X")
    ps.add_argument("--segmenter", default="own", choices=["own", "drn", "segformer", "torchscript", "synthetic", "none"],
                    help="what scores a pair: own (default: the checkpoint's S), one of `usis evaluate`'s segmenters "
                         "(synthetic: the synthetic preset's evaluator), or none")
    ps.add_argument("--segmenter-path", default=None, help="its weights file, model folder / hub name, or .pt")
    ps.add_argument("--segmenter-mapping", default=None, help="torchscript: JSON class-mapping file")
    ps.add_argument("--pixel-filter", type=float, nargs="?", const=1.25, default=None, metavar="MARGIN",
                    help="FreeMask's pixel filter: a pixel whose loss under a segmenter trained on real photos exceeds "
                         "MARGIN (default 1.25) x its class's mean on real photos is written as the ignore id")
    ps.add_argument("--resample", choices=["hard"], default=None,
                    help="hard: 1 to --n pairs per map by the rank of its hardness (its classes' mean losses)")
    ps.add_argument("--filter-segmenter", default=None, choices=["synthetic", "drn", "segformer", "torchscript"],
                    help="the segmenter trained on real photos that --pixel-filter / --resample measure with "
                         "(default on the synthetic preset: synthetic, its evaluator)")
    ps.add_argument("--filter-segmenter-path", default=None, help="its weights file, model folder / hub name, or .pt")
    ps.add_argument("--filter-segmenter-mapping", default=None, help="torchscript: JSON class-mapping file")
    ps.add_argument("--real-photos", default=None,
                    help="real photos with label maps in --real-labels (same relative paths): the class means of "
                         "--pixel-filter / --resample (default on the synthetic preset: its held-out renderings)")
    ps.add_argument("--real-labels", default=None, help="the label maps of --real-photos")
    ps.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ps.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (a resumed run keeps its "
                                                              "batches: use the same value for identical bytes)")
    ps.add_argument("--no-progress", action="store_true", help="no progress bar")
    ps.set_defaults(func=cmd_synthesize)

    pa = sub.add_parser("app", help="paint label maps and turn them into images in a browser (pip install 'usis[app]')")
    pa.add_argument("--checkpoint", default=None,
                    help="training checkpoint (.pt), run folder, `usis export` folder or Hugging Face Hub model repo "
                         "org/name (default: runs/demo)")
    _add_revision_arg(pa)
    pa.add_argument("--host", default="127.0.0.1",
                    help="address to serve on (0.0.0.0: every interface; beyond 127.0.0.1 / localhost it needs a "
                         "login or --open)")
    pa.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    pa.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    login = pa.add_mutually_exclusive_group()
    login.add_argument("--auth-file", default=None, metavar="FILE",
                       help="a login page: FILE holds a line USER:PASSWORD per user (chmod 600 it); or set "
                            "USIS_APP_AUTH=USER:PASSWORD")
    login.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                       help="a login page for this user (the password stays in the shell history: prefer --auth-file "
                            "or USIS_APP_AUTH)")
    pa.add_argument("--open", action="store_true",
                    help="serve beyond this machine without a login: anyone who can reach the port can use it")
    pa.add_argument("--concurrency", type=int, default=1, metavar="N",
                    help="generations run at once (default 1); the others wait in the queue, which shows their "
                         "place and the time left")
    pa.set_defaults(func=cmd_app)
    return p


def main(argv: list[str] | None = None) -> int:
    install_warning_format()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsisError as e:  # every error a user can cause: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        report_to_torchrun(f"error: {e}")
        return 2


def report_to_torchrun(message: str) -> None:
    """Under torchrun, hand this process's ``error:`` line to its agent (the JSON file torch's elastic agent
    names in ``$TORCHELASTIC_ERROR_FILE``), so that the agent's report of the failed rank shows it as the
    root cause instead of a link to its documentation. The agent's own traceback (a ``ChildFailedError``
    raised in the torchrun process after this one has exited) cannot be switched off from here: README,
    "Several processes". Elsewhere: nothing."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": {"message": message, "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}
    try:
        Path(path).write_text(json.dumps(record))
    except OSError:  # the report is a courtesy: the error line is on stderr already
        pass


def entry() -> None:
    """The ``usis`` command: :func:`main`, then exit. A torchrun worker leaves without the interpreter's
    finalisation (``usis.train.distributed.exit_now``: gloo's threads may abort the exit otherwise)."""
    code = main()
    dist_mod = sys.modules.get("usis.train.distributed")  # imported only by a training command
    if dist_mod is not None and dist_mod.from_environment_used:
        dist_mod.exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
