"""DRN-D-105 segmentation network (Yu, Koltun, Funkhouser, "Dilated Residual Networks", CVPR 2017).

The SPADE / USIS Cityscapes mIoU uses the public DRN-D-105 checkpoint trained on the 19 Cityscapes
``trainIds`` (``drn-d-105_ms_cityscapes.pth`` from the fyu/drn model page). This module is an
independent implementation whose ``state_dict`` has exactly the checkpoint's key names and shapes:

* ``base.0`` - ``base.8``: the nine stages of DRN-D (the classification net without its average pool
  and fc, kept as one ``nn.Sequential``):

  - ``base.0``: conv 7x7 3->16 + BN + ReLU (keys ``base.0.0.weight``, ``base.0.1.*``);
  - ``base.1``, ``base.2``: conv 3x3 + BN + ReLU, 16->16 (stride 1) and 16->32 (stride 2);
  - ``base.3`` - ``base.6``: bottleneck stages with 3, 4, 23, 3 blocks, widths 64, 128, 256, 512
    (x4 expansion), strides 2, 2, 1, 1 and dilations 1, 1, 2, 4; the first block of each stage has a
    1x1 projection ``downsample.0`` (conv) / ``downsample.1`` (BN);
  - ``base.7``, ``base.8``: conv 3x3 + BN + ReLU 2048->512 (dilation 2) and 512->512 (dilation 1);

* ``seg``: 1x1 conv 512 -> 19 class scores (with bias), at 1/8 of the input resolution;
* ``up``: depthwise transposed conv (kernel 16, stride 8, padding 4, no bias) initialised to
  bilinear upsampling (frozen), which brings the scores back to the input resolution.

Inference follows the reference test script: RGB in [0, 1] normalised with the Cityscapes mean/std
that DRN was trained with (the ``info.json`` of fyu/drn, also shipped with the USIS code), argmax over
the 19 classes at the resolution of the label maps (256 x 512 in the paper's setting).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usis.metrics.fid import MetricsError

#: Mean / std of the Cityscapes training images in [0, 1] (fyu/drn ``info.json``).
DRN_CITYSCAPES_MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
DRN_CITYSCAPES_STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)

DRN_WEIGHTS_HINT = (
    "Download the Cityscapes DRN-D-105 weights (drn-d-105_ms_cityscapes.pth) from the model page linked in "
    "https://github.com/fyu/drn#testing (http://go.yf.io/drn-cityscapes-models)."
)

_D105_STAGES = (3, 4, 23, 3)  # bottleneck blocks in base.3 - base.6
_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation * (kernel // 2)
    return [nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class _Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand (x4), residual add, ReLU."""

    def __init__(self, in_ch: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_ch = width * 4
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + skip)


def _bottleneck_stage(in_ch: int, width: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    layers = [_Bottleneck(in_ch, width, stride, dilation)]
    layers += [_Bottleneck(width * 4, width, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def bilinear_upsample_kernel(size: int) -> Tensor:
    """The size x size kernel of a transposed conv that performs bilinear upsampling (FCN style)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    r = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return (r[:, None] * r[None, :]).float()


class DRNSegD105(nn.Module):
    """DRN-D-105 + 1x1 classifier + x8 bilinear transposed conv; ``forward`` returns class scores.

    Input: a batch normalised with :data:`DRN_CITYSCAPES_MEAN` / :data:`DRN_CITYSCAPES_STD`
    (N x 3 x H x W); output: N x classes x H x W logits (resized to H x W if H, W are not multiples of 8).
    """

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        c = _CHANNELS
        stages: list[nn.Module] = [
            nn.Sequential(*_conv_bn_relu(3, c[0], 7)),
            nn.Sequential(*_conv_bn_relu(c[0], c[0], 3)),
            nn.Sequential(*_conv_bn_relu(c[0], c[1], 3, stride=2)),
        ]
        in_ch = c[1]
        for width, blocks, stride, dilation in zip(c[2:6], _D105_STAGES, (2, 2, 1, 1), (1, 1, 2, 4), strict=True):
            stages.append(_bottleneck_stage(in_ch, width, blocks, stride, dilation))
            in_ch = width * 4
        stages.append(nn.Sequential(*_conv_bn_relu(in_ch, c[6], 3, dilation=2)))
        stages.append(nn.Sequential(*_conv_bn_relu(c[6], c[7], 3, dilation=1)))
        self.base = nn.Sequential(*stages)
        self.seg = nn.Conv2d(c[7], num_classes, 1, bias=True)
        self.up = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4, groups=num_classes,
                                     bias=False)
        self.num_classes = num_classes
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.seg.bias)
        with torch.no_grad():
            self.up.weight.copy_(bilinear_upsample_kernel(16).expand_as(self.up.weight))
        self.up.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.up(self.seg(self.base(x)))
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] (N x 3 x H x W) -> int64 class ids N x H x W."""
        mean = torch.tensor(DRN_CITYSCAPES_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(DRN_CITYSCAPES_STD, device=images.device).view(1, 3, 1, 1)
        x = ((images.float().clamp(-1, 1) + 1) / 2 - mean) / std
        return self(x).argmax(1)


def _unwrap_state_dict(obj: object) -> dict[str, Tensor] | None:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a fyu/drn training checkpoint
    if not isinstance(obj, dict):
        return None
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_drn_d_105(path: str | Path, num_classes: int = 19, map_location: str | torch.device = "cpu") -> DRNSegD105:
    """Load a DRN-D-105 segmentation checkpoint (``weights_only=True``, strict key/shape check), in eval mode."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MetricsError(f"DRN-D-105 weights not found: {path}. {DRN_WEIGHTS_HINT}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise MetricsError(f"cannot read the DRN-D-105 weights {path}: {type(e).__name__}: {e}. "
                           f"{DRN_WEIGHTS_HINT}") from e
    state = _unwrap_state_dict(obj)
    if not state:
        raise MetricsError(f"{path} holds no state dict. {DRN_WEIGHTS_HINT}")
    model = DRNSegD105(num_classes)
    expected = model.state_dict()
    # checkpoints from before PyTorch 0.4 lack BatchNorm's num_batches_tracked; it is unused in eval
    for k, v in expected.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} keys with other shapes (e.g. {k}: file {tuple(state[k].shape)}, "
                           f"model {tuple(expected[k].shape)})")
        raise MetricsError(f"{path} is not a DRN-D-105 segmentation checkpoint with {num_classes} classes: "
                           + "; ".join(details) + f". {DRN_WEIGHTS_HINT}")
    model.load_state_dict(state, strict=True)
    return model.eval()
