"""Our wavelet generator against the reference implementation's: parameter counts and outputs.

Needs a checkout of the reference (GeorgeEskandar/USIS-Unsupervised-Semantic-Image-Synthesis, AGPL-3.0;
run here, never copied): its ``ResidualWaveletGenerator_1`` is instantiated from its own code, counted,
its weights are copied into ours (key names mapped) and both are run on the same label map and noise.

    python benchmarks/reference_wavelet_g.py --reference /path/to/USIS-Unsupervised-Semantic-Image-Synthesis

Prints the counts at the run-script config (Cityscapes: 35 label channels, 64-d noise, channels_G 16) and
at ch 64, and the largest output difference in eval and train mode (random weights, 256 x 512).
"""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from usis.nn.wavelet_generator import WaveletGenerator  # noqa: E402


def reference_opt(ch: int, classes: int = 35, z_dim: int = 64) -> Namespace:
    return Namespace(channels_G=ch, no_spectral_norm=False, param_free_norm="batch", spade_ks=3, z_dim=z_dim,
                     no_3dnoise=False, semantic_nc=classes, crop_size=512, aspect_ratio=2.0, num_res_blocks=6,
                     gpu_ids="-1", progressive_growing=False)


def our_key(k: str) -> str:
    return (k.replace("mlp_shared", "shared").replace("mlp_gamma", "gamma").replace("mlp_beta", "beta")
            .replace("first_norm", "norm").replace("conv_img.conv", "to_rgb"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="a checkout of the reference repository")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.reference).resolve()))
    import models.generator as ref  # the reference's module  # lazy: only importable from its checkout

    for ch in (16, 64):
        R = ref.ResidualWaveletGenerator_1(reference_opt(ch))
        n_ref = sum(p.numel() for p in R.parameters())
        unused = sum(p.numel() for b in R.body if b.learned_shortcut for p in b.norm_s.parameters())
        ours = {sn: sum(p.numel() for p in WaveletGenerator(35, ch=ch, shortcut_norm=sn).parameters())
                for sn in (True, False)}
        print(f"ch {ch}: reference {n_ref:,} (of which never used: norm_s {unused:,}, {unused / n_ref:.1%}); "
              f"ours {ours[True]:,} (shortcut_norm=true), {ours[False]:,} (false)")
        del R

    torch.manual_seed(0)
    R = ref.ResidualWaveletGenerator_1(reference_opt(2, classes=6, z_dim=8))
    for shortcut_norm in (False, True):
        G = WaveletGenerator(6, ch=2, z_dim=8, spade_hidden=128, shortcut_norm=shortcut_norm)
        mine = G.state_dict()
        state = {our_key(k): v for k, v in R.state_dict().items() if our_key(k) in mine}
        assert set(state) == set(mine), set(mine) ^ set(state)
        with torch.no_grad():
            for k, v in state.items():  # fresh random weights (small), spectral-norm vectors and BN stats kept
                if v.is_floating_point() and not any(s in k for s in ("running", "weight_u", "weight_v")):
                    v.copy_(torch.randn_like(v) * 0.05)
        G.load_state_dict(state)
        R.load_state_dict({k: state[our_key(k)] for k in R.state_dict() if our_key(k) in state}, strict=False)
        if shortcut_norm:  # the reference's block with its normalised shortcut (the call it comments out)
            for b in R.body:
                if b.learned_shortcut:
                    def forward(x, seg, b=b):
                        dx = b.conv_1(b.activ(b.norm_1(b.conv_0(b.activ(b.norm_0(x, seg))), seg)))
                        return b.conv_s(b.norm_s(x, seg)), dx
                    b.forward = forward
        labels = torch.randint(0, 6, (2, 256, 512), generator=torch.Generator().manual_seed(1))
        onehot = F.one_hot(labels, 6).permute(0, 3, 1, 2).float()
        z = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
        for mode in ("train", "eval"):
            R.train(mode == "train")
            G.train(mode == "train")
            with torch.no_grad():
                a = R.forward_determinstic(onehot.clone(), z[:, :, None, None].expand(2, 8, 256, 512).clone())
                b = G(onehot, z)
            print(f"shortcut_norm={shortcut_norm} ({'our default' if shortcut_norm else 'the reference forward'}), "
                  f"{mode} mode: max |ours - reference| = {(a - b).abs().max().item():.1e} (output std "
                  f"{a.std().item():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
