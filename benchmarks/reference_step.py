"""Seconds per full training iteration of the REFERENCE implementation, timed like train_step.py.

The reference is GeorgeEskandar/USIS-Unsupervised-Semantic-Image-Synthesis (AGPL-3.0). Nothing of it is
copied here: a checkout is imported at run time and its own objects do the work. Place one with

    bash benchmarks/get_reference.sh [SOURCE]   # git clone (GitHub, or a local mirror / bare git dir as SOURCE)

into ``benchmarks/reference/`` (git-ignored; the default of ``--reference``). A machine without network (the
GPU device) gets it with the working tree: name ``benchmarks/reference`` in the device tool's ``carry``.

    python benchmarks/reference_step.py --batch 8 --iters 8                   # Cityscapes, SPADE G ch 64
    python benchmarks/reference_step.py --batch 8 --netG wavelet --channels-G 16
    python benchmarks/reference_step.py --device cpu --threads 1 --batch 1 --crop-size 128 --netDu wavelet \\
        --iters 1 --warmup 0                                                  # a tiny CPU smoke run

What one iteration is: the body of the reference's ``train.py`` loop, driving its ``models.Unpaired_model``
through its own ``forward(image, label, mode, losses_computer)`` modes, in its order: ``preprocess_input``
(host batch -> device, one-hot); G step (``"losses_G"``: G(m) -> S cross entropy + non-saturating loss on D,
Adam step of netG); S step (``"losses_S"``: a fresh fake under no_grad, Adam step of netS); D step
(``"losses_Du"``: a fresh fake and the real photo, plus the wavelet decoder's L1 with ``--netDu
wavelet_decoder``; the loss times ``reg_every``, Adam step of netDu); every ``reg_every``-th iteration (index
``i % reg_every == 0``, as there) the lazy R1 step (``"Du_regularize"``, its own Adam step of netDu); the EMA
update (``util.utils.update_EMA``); and the loss read-out: its ``losses_saver`` copies each of the iteration's
6 losses to the host (device synchronisations), done here as one ``.item()`` each (``--no-loss-readout``
leaves it out; the saver itself is not used: with NumPy 2 it fails on the 1-element placeholder that the
loop passes for the R1 loss on non-R1 iterations). Not timed: its
sample images, checkpoints and FID every N iterations, and the EMA's batch-norm statistics refresh, which
``update_EMA`` runs only on those iterations (50 batches every ``freq_print`` = 1000 iterations by default;
the frequencies are set out of reach here). The optimizers are the script's: Adam with ``lr_g``, ``lr_d`` and
``5 * lr_d`` and its betas (as there, the wavelet decoder's parameters are in no optimizer).

Options: the reference's own parser (``config.add_all_arguments``) with its Cityscapes defaults
(``config.set_dataset_default_lm``: lr_G 4e-4, EMA 0.999, ...) and the fields its ``CityscapesDataset`` sets
(35 semantic channels with a don't-care label, crop 512 at aspect 2: 256 x 512 images); ``--netG``,
``--channels-G``, ``--netDu`` default to the configuration of our Cityscapes preset (SPADE/OASIS generator at
ch 64, wavelet discriminator with the wavelet decoder); ``--ref-arg`` passes any other of its options
(``--ref-arg=--param_free_norm=batch``). The reference's run script (usis.sh) trains ``--netG wavelet
--channels_G 16 --netDu wavelet`` at batch 1; its param_free_norm default, ``syncbatch``, is kept (on one
device it runs plain batch norm). It runs as it is: fp32, NCHW, eager, cuDNN's defaults (benchmark off).

Data: random label maps (ids in [0, 35), shaped as its loader gives them: N x 1 x H x W floats) and photos in
[-1, 1], a few batches made once on the host and cycled. Timing as train_step.py: ``--warmup`` iterations
excluded, ``--iters`` timed ones rounded up to a multiple of ``reg_every`` (so R1 counts at its true rate),
``torch.cuda.synchronize()`` before and after; peak memory is ``torch.cuda.max_memory_allocated`` over the
timed iterations (on a CPU: the process's peak RSS). On a CPU the reference's unconditional ``.cuda()`` calls
are patched to no-ops (``torch.Tensor.cuda``, ``nn.Module.cuda``) and its ``gpu_ids`` is ``-1``; if OpenCV is
missing, a stub ``cv2`` is installed (the reference imports it for an edge loss that is off by default).
Prints ONE JSON line with train_step.py's field names where they apply, plus ``"impl": "reference"``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from torch import nn

DEFAULT_REFERENCE = Path(__file__).resolve().parent / "reference"


def _no_cuda() -> None:
    """Make the reference's unconditional ``.cuda()`` calls no-ops (CPU runs only)."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self


def _import_reference(path: Path):
    """Import the reference's modules (``config``, ``models.models``, ``models.losses``, ``util.utils``)
    from the checkout at ``path``."""
    if not (path / "models" / "models.py").is_file():
        raise SystemExit(f"reference_step.py: no reference checkout at {path} (models/models.py missing); "
                         "run `bash benchmarks/get_reference.sh` or pass --reference PATH")
    try:
        import cv2  # noqa: F401  # the reference's CannyFilter (edge loss, off by default) imports it
    except ImportError:
        stub = types.ModuleType("cv2")

        def missing(name):
            raise AttributeError(f"cv2.{name}: OpenCV is not installed (stub from reference_step.py)")

        stub.__getattr__ = missing
        sys.modules["cv2"] = stub
    sys.path.insert(0, str(path))
    import config as ref_config  # the reference's modules, importable only from its checkout
    import models.losses as ref_losses
    import models.models as ref_models
    import util.utils as ref_utils

    return ref_config, ref_models, ref_losses, ref_utils


def _commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def reference_options(ref_config, args, gpu_ids: str, checkpoints_dir: str):
    """The reference's option namespace: its parser, its Cityscapes defaults, its dataset's fields."""
    parser = argparse.ArgumentParser(prog="reference")
    ref_config.add_all_arguments(parser, True)
    parser.add_argument("--phase", type=str, default="train")
    never = str(10**9)  # its periodic images / checkpoints / FID (and the EMA's BN refresh with them): off
    argv = ["--name", "reference_step", "--dataset_mode", "cityscapes", "--checkpoints_dir", checkpoints_dir,
            "--gpu_ids", gpu_ids, "--batch_size", str(args.batch), "--netG", args.netG,
            "--channels_G", str(args.channels_G), "--netDu", args.netDu, "--model_supervision", "0",
            "--freq_print", never, "--freq_fid", never, "--freq_save_ckpt", never, "--freq_save_latest", never,
            "--freq_smooth_loss", never, "--freq_save_loss", never, *args.ref_arg]
    opt = parser.parse_args(argv)
    ref_config.set_dataset_default_lm(opt, parser)
    opt = parser.parse_args(argv)
    opt.phase = "train"
    opt.loaded_latest_iter = 0
    # the fields its CityscapesDataset sets on the options
    opt.load_size = opt.crop_size = args.crop_size
    opt.aspect_ratio = 2.0
    opt.label_nc = 34
    opt.semantic_nc = 35
    opt.contain_dontcare_label = True
    return opt


class _OneDevice:
    """The CPU stand-in for the reference's ``put_on_multi_gpus`` wrapper (which on ``gpu_ids -1`` makes the
    model its own submodule): ``.module`` is the model, calling it calls the model."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args):
        return self.module(*args)


def measure(args) -> dict:
    ref_path = Path(args.reference).resolve()
    dev = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        if dev.index is not None:
            torch.cuda.set_device(dev.index)
        gpu_ids = str(torch.cuda.current_device())  # its gpu_ids: the device its DataParallel wrapper uses
    else:
        _no_cuda()
        gpu_ids = "-1"
    ref_config, ref_models, ref_losses, ref_utils = _import_reference(ref_path)

    with tempfile.TemporaryDirectory() as tmp:
        opt = reference_options(ref_config, args, gpu_ids, tmp)
        with contextlib.redirect_stdout(sys.stderr):  # its constructors print; stdout carries the JSON only
            ref_utils.fix_seed(opt.seed)
            model = ref_models.Unpaired_model(opt)
            model = ref_models.put_on_multi_gpus(model, opt) if dev.type == "cuda" else _OneDevice(model)
        m = model.module
        opt_g = torch.optim.Adam(m.netG.parameters(), lr=opt.lr_g, betas=(opt.beta1, opt.beta2))
        opt_s = torch.optim.Adam(m.netS.parameters(), lr=opt.lr_d, betas=(opt.beta1, opt.beta2))
        opt_d = torch.optim.Adam(m.netDu.parameters(), lr=5 * opt.lr_d, betas=(opt.beta1, opt.beta2))
        lc = ref_losses.losses_computer(opt)

        h, w = round(opt.crop_size / opt.aspect_ratio), opt.crop_size
        g = torch.Generator().manual_seed(0)
        batches = [{"image": torch.rand(args.batch, 3, h, w, generator=g) * 2 - 1,
                    "label": torch.randint(0, opt.semantic_nc, (args.batch, 1, h, w), generator=g).float()}
                   for _ in range(4)]

        def iteration(i: int) -> None:
            data = {k: v.clone() for k, v in batches[i % len(batches)].items()}
            image, label = ref_models.preprocess_input(opt, data)
            logged = []
            for net, optim, mode, scale in ((m.netG, opt_g, "losses_G", 1), (m.netS, opt_s, "losses_S", 1),
                                            (m.netDu, opt_d, "losses_Du", opt.reg_every)):
                net.zero_grad()
                loss, parts = model(image, label, mode, lc)
                (scale * loss.mean()).backward()
                optim.step()
                logged += [p.mean() for p in parts]
            if i % opt.reg_every == 0:
                m.netDu.zero_grad()
                loss, parts = model(image, label, "Du_regularize", lc)
                loss.mean().backward()
                opt_d.step()
                logged += [p.mean() for p in parts]
            else:
                logged.append(torch.zeros(1))
            if not opt.no_EMA:
                ref_utils.update_EMA(model, i + 1, None, opt)  # i + 1: never a BN-refresh iteration
            if args.loss_readout:
                [x.item() for x in logged]

        with contextlib.redirect_stdout(sys.stderr):
            t_warm = time.perf_counter()
            for i in range(args.warmup):
                iteration(i)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            warmup_s = time.perf_counter() - t_warm
            iters = math.ceil(args.iters / opt.reg_every) * opt.reg_every
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for i in range(args.warmup, args.warmup + iters):
                iteration(i)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / iters
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB
        params = {"G": m.netG, "S": m.netS, "D": m.netDu}
        if getattr(m, "wavelet_decoder", None) is not None:
            params["decoder"] = m.wavelet_decoder
        return {
            "impl": "reference", "preset": "cityscapes", "batch": args.batch, "nproc": 1, "size": [h, w],
            "iters": iters, "warmup": args.warmup, "warmup_s": round(warmup_s, 3), "s_per_iter": round(dt, 4), "peak_mem_mb": round(peak, 1),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "params": {k: sum(p.numel() for p in v.parameters()) for k, v in params.items()},
            "amp": False, "channels_last": False, "compile": False,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "netG": opt.netG, "channels_G": opt.channels_G, "netDu": opt.netDu,
            "param_free_norm": opt.param_free_norm, "reg_every": opt.reg_every, "loss_readout": args.loss_readout,
            "ref_args": args.ref_arg, "reference_commit": _commit(ref_path),
        }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", default=str(DEFAULT_REFERENCE), help="a checkout of the reference repository")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=8, help="timed iterations (rounded up to a multiple of reg_every)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--netG", default="default", choices=("default", "wavelet"),
                   help="its generator: default = OASIS/SPADE (ours: model.g_type=spade), wavelet")
    p.add_argument("--channels-G", dest="channels_G", type=int, default=64)
    p.add_argument("--netDu", default="wavelet_decoder",
                   help="its unconditional discriminator: wavelet_decoder (ours: d_type=wavelet, decoder=true), "
                        "wavelet (no decoder), or another name it knows")
    p.add_argument("--crop-size", type=int, default=512,
                   help="its crop_size (image width; height = width / 2); 512 = Cityscapes 256x512. The decoder "
                        "needs 512; smaller sizes work with --netDu wavelet")
    p.add_argument("--ref-arg", action="append", default=[],
                   help="one more option for the reference's parser, e.g. --ref-arg=--param_free_norm=batch")
    p.add_argument("--loss-readout", action=argparse.BooleanOptionalAction, default=True,
                   help="read every loss to the host each iteration, as its losses_saver does (.item() each)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
