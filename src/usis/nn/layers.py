"""Building blocks shared by the networks: SPADE, StyleGAN2-style equalized layers, blur."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm as _spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm as _TorchSpectralNorm


def maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Wrap ``module`` in spectral normalisation when ``enabled``: ``torch.nn.utils.spectral_norm`` (its
    parameters, buffers, state-dict keys and forward, as in the reference), with the gradient of
    :class:`SpectralNorm`."""
    if not enabled:
        return module
    _spectral_norm(module)
    for hook in module._forward_pre_hooks.values():
        if type(hook) is _TorchSpectralNorm:
            hook.__class__ = SpectralNorm
    return module


def in_memory_order(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its dimensions in the order of its memory, a view: ``N x H x W x C`` for a channels-last
    4-D tensor (then contiguous), ``t`` itself otherwise. :func:`from_memory_order` undoes it."""
    return t.permute(0, 2, 3, 1) if _is_channels_last(t) else t


def from_memory_order(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``m``, shaped as ``in_memory_order(like)``, as a tensor of ``like``'s shape and layout (a view)."""
    return m.view(in_memory_order(like).shape).permute(0, 3, 1, 2) if _is_channels_last(like) else m.view(like.shape)


def _weight_matrix(weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``weight`` as an ``out x (in * kh * kw)`` matrix without a copy: its columns in the order of its memory
    (``(kh, kw, in)`` for a channels-last conv weight, flagged ``True``; ``(in, kh, kw)`` otherwise)."""
    return in_memory_order(weight).reshape(weight.shape[0], -1), _is_channels_last(weight)


class _Normalize(torch.autograd.Function):
    """``W / sigma`` with ``sigma = u^T W v`` for fixed unit vectors ``u``, ``v`` (spectral norm's estimate;
    ``v`` in the column order of :func:`_weight_matrix`).

    The forward is torch's division; the backward is the closed form
    ``dL/dW = (G - <G, W / sigma> u v^T) / sigma`` (``G = dL/d(W / sigma)``): a dot product, a rank-1 update
    and a division over the weight, where autograd through ``weight / dot(u, mv(W, v))`` makes about
    nine passes over it (the division's two gradients, the outer product of ``mv``'s, their sum), and
    copies a channels-last weight and its gradient into matrices. Same gradient up to float rounding.
    Under ``create_graph`` (a double backward) it is the same formula in differentiable ops with ``sigma``
    recomputed from ``W``, so the second derivative is exact too.
    """

    @staticmethod
    def forward(ctx, weight, u, v, sigma):
        ctx.save_for_backward(weight, u, v, sigma)
        return weight / sigma

    @staticmethod
    def backward(ctx, grad):
        weight, u, v, sigma = ctx.saved_tensors
        w, cl = _weight_matrix(weight)
        if torch.is_grad_enabled():
            sigma = torch.dot(u, torch.mv(w, v))
        g = (grad.permute(0, 2, 3, 1) if cl else grad).reshape(w.shape)  # a view when the layouts match
        coef = torch.dot(g.reshape(-1), w.reshape(-1)) / sigma  # <G, W / sigma>
        out = torch.addr(g, u, v * coef, alpha=-1) / sigma
        return from_memory_order(out, weight), None, None, None


class SpectralNorm(_TorchSpectralNorm):
    """``torch.nn.utils.spectral_norm``'s forward hook, bit for bit in its forward on a contiguous weight
    (the same power iteration, ``u`` and ``v`` updated in place in training mode, ``sigma = u^T W v``,
    ``W / sigma``), with three savings: ``W v`` from the power iteration is reused for ``sigma`` (the same
    product of the same operands, so the same bits; torch computes it again); a channels-last weight is
    read in its own memory order (torch copies it into a matrix at every forward; the products then sum in
    another order: the same values up to float rounding); and the gradient is :class:`_Normalize`'s closed
    form. On the synthetic preset's step (batch 1, one CPU thread) torch's version cost ~11 ms of ~132
    (benchmarks/RESULTS.md, "CPU step, session 14").
    """

    def compute_weight(self, module: nn.Module, do_power_iteration: bool) -> torch.Tensor:
        weight = getattr(module, self.name + "_orig")
        u = getattr(module, self.name + "_u")
        v = getattr(module, self.name + "_v")
        if self.dim != 0:  # not used by our networks: torch's own computation
            return super().compute_weight(module, do_power_iteration)
        w, cl = _weight_matrix(weight)
        _, c, kh, kw = weight.shape if cl else (0, 0, 0, 0)
        with torch.no_grad():
            # v in the matrix's column order: the buffer itself, or (channels-last) a reordered copy of it
            vc = v.view(c, kh, kw).permute(1, 2, 0).reshape(-1) if cl else v
            if do_power_iteration:
                for _ in range(self.n_power_iterations):
                    vc = F.normalize(torch.mv(w.t(), u), dim=0, eps=self.eps, out=None if cl else v)
                    wv = torch.mv(w, vc)
                    u = F.normalize(wv, dim=0, eps=self.eps, out=u)
                if cl:  # back into the buffer, in its (in, kh, kw) order
                    v.copy_(vc.view(kh, kw, c).permute(2, 0, 1).reshape(-1))
                else:
                    vc = vc.clone(memory_format=torch.contiguous_format)
                # cloned as torch does: the in-place updates of a later forward must not reach this graph
                u = u.clone(memory_format=torch.contiguous_format)
            else:
                wv = torch.mv(w, vc)
            sigma = torch.dot(u, wv)
        return _Normalize.apply(weight, u, vc, sigma)


@torch.no_grad()
def converge_spectral_norm(module: nn.Module, iters: int = 10) -> None:
    """Run power iterations on every spectrally normalised weight in ``module``.

    ``torch.nn.utils.spectral_norm`` starts from random singular-vector estimates and refines them by
    one iteration per training forward. Until then (e.g. evaluating an untrained EMA copy in eval mode)
    the estimated norm is far too small and the network saturates; converging the estimates at
    construction makes "the model at initialisation" mean what it says. Deterministic (no RNG).
    """
    for m in module.modules():
        if not hasattr(m, "weight_u") or not hasattr(m, "weight_orig"):
            continue
        w = m.weight_orig.flatten(1)
        u, v = m.weight_u, m.weight_v
        for _ in range(iters):
            v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
            u = F.normalize(w @ v, dim=0, eps=1e-12)
        m.weight_u.copy_(u)
        m.weight_v.copy_(v)


def param_free_norm(kind: str, channels: int) -> nn.Module:
    """The parameter-free normalisation in front of SPADE's modulation."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "syncbatch":
        return nn.SyncBatchNorm(channels, affine=False)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    raise ValueError(f"unknown norm {kind!r}: choose batch, syncbatch or instance")


class SPADE(nn.Module):
    """Spatially-adaptive denormalisation: ``norm(x) * (1 + gamma(seg)) + beta(seg)``.

    ``seg`` is the conditioning tensor (one-hot label map, with the 3D noise concatenated), resized
    with nearest-neighbour interpolation to ``x``'s resolution.
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int = 128, norm: str = "batch"):
        super().__init__()
        self.norm = param_free_norm(norm, channels)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        if seg.shape[-2:] != x.shape[-2:]:
            seg = F.interpolate(seg, size=x.shape[-2:], mode="nearest")
        h = self.shared(seg)
        # gamma and beta as one convolution (same parameters, one pass over h: faster on CPU)
        weight = torch.cat((self.gamma.weight, self.beta.weight))
        bias = torch.cat((self.gamma.bias, self.beta.bias))
        gamma, beta = F.conv2d(h, weight, bias, padding=1).chunk(2, dim=1)
        return torch.addcmul(beta, self.norm(x), 1 + gamma)


# ---------------------------------------------------------------------- StyleGAN2-style layers (SWAGAN D)


def _blur_kernel(taps=(1, 3, 3, 1)) -> torch.Tensor:
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[:, None] * k[None, :]
    return k / k.sum()


class Blur(nn.Module):
    """Depthwise FIR low-pass ``[1, 3, 3, 1]`` (outer product, normalised) with explicit padding and stride."""

    def __init__(self, pad: tuple[int, int], stride: int = 1):
        super().__init__()
        self.pad = pad
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _blur(x, self.pad, self.stride)


class EqualConv2d(nn.Module):
    """Conv with equalized learning rate: weights ~ N(0, 1), scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU(0.2), scaled by sqrt(2) to keep unit variance."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return F.leaky_relu(x + self.bias.view(shape), 0.2) * math.sqrt(2.0)


class EqualLinear(nn.Module):
    def __init__(self, cin: int, cout: int, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = 1.0 / math.sqrt(cin)
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale)
        out = out + self.bias
        return F.leaky_relu(out, 0.2) * math.sqrt(2.0) if self.activate else out


class ConvLayer(nn.Sequential):
    """Equalized conv (optionally blur + stride-2 downsampling) followed by a fused leaky ReLU."""

    def __init__(self, cin: int, cout: int, k: int, downsample: bool = False, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = (4 - 2) + (k - 1)
            layers.append(Blur(((p + 1) // 2, p // 2)))
            layers.append(EqualConv2d(cin, cout, k, stride=2, padding=0, bias=not activate))
        else:
            layers.append(EqualConv2d(cin, cout, k, padding=k // 2, bias=not activate))
        if activate:
            layers.append(FusedLeakyReLU(cout))
        super().__init__(*layers)


def _blur(x: torch.Tensor, pad: tuple[int, int], stride: int) -> torch.Tensor:
    """``x`` zero-padded by ``pad`` (before, after) on both spatial axes, then :func:`_depthwise_blur`.

    On a CPU both steps are two matrix products with banded matrices that hold the padding
    (:func:`_band`): a GEMM per pass, where the shifted views make eight slices and six elementwise ops
    whose backward builds a zero-filled full-size gradient per slice (``slice_backward``); about twice as fast
    forward and backward on the synthetic preset's D (benchmarks/RESULTS.md, "CPU step, session 14"). The
    products are exact binary fractions, so the result is the same filter up to the order of the sums.
    Elsewhere (CUDA), the padding and the shifted views as before.
    """
    if x.device.type != "cpu" or x.dim() != 4:
        p0, p1 = pad
        return _depthwise_blur(F.pad(x, (p0, p1, p0, p1)), stride)
    n, c, h, w = x.shape
    rows, cols = _band(h, pad, stride, x), _band(w, pad, stride, x)
    ho, wo = rows.shape[0], cols.shape[0]
    if _is_channels_last(x):  # (n, h, w, c) in memory: columns then rows, no copy of the layout
        y = torch.matmul(cols, x.permute(0, 2, 3, 1).reshape(n * h, w, c))  # n*h x wo x c
        out = torch.matmul(rows, y.view(n, h, wo * c))  # n x ho x wo*c
        return out.view(n, ho, wo, c).permute(0, 3, 1, 2)
    y = x.reshape(n * c * h, w) @ cols.t()  # n*c*h x wo
    return torch.matmul(rows, y.view(n * c, h, wo)).view(n, c, ho, wo)


_BANDS: dict[tuple, torch.Tensor] = {}


def _band(size: int, pad: tuple[int, int], stride: int, like: torch.Tensor) -> torch.Tensor:
    """The ``[1, 3, 3, 1] / 8`` filter along one axis of ``size`` samples, zero-padded by ``pad``, every
    ``stride``-th output: an ``out x size`` matrix (cached per size, dtype and device)."""
    key = (size, pad, stride, like.dtype, like.device)
    band = _BANDS.get(key)
    if band is None:
        out = (size + pad[0] + pad[1] - 4) // stride + 1
        band = torch.zeros(out, size, dtype=torch.float64)
        for i in range(out):
            for k, tap in enumerate((1, 3, 3, 1)):
                j = stride * i + k - pad[0]
                if 0 <= j < size:
                    band[i, j] = tap / 8
        band = _BANDS.setdefault(key, band.to(like.device, like.dtype))
    return band


def _depthwise_blur(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The ``[1, 3, 3, 1]`` FIR (its normalised outer product, :func:`_blur_kernel`) on every channel of
    ``x`` (no padding), then every ``stride``-th pixel.

    Computed separably, rows then columns, each pass as ``(a + d + 3 (b + c)) / 8`` over four shifted
    (strided) views: the same filter as a depthwise convolution up to float rounding (the products are
    exact binary fractions; only the order of the sums differs). On a CPU the convolution ran this at
    0.1-1 GFLOP/s (one input channel: nothing for oneDNN to vectorise over), ~6 % of the synthetic
    preset's step; eight elementwise ops per pass are 10-50x faster there, and the double backward of the
    lazy R1 step differentiates plain adds and slices (no per-group convolutions).
    """
    h, w = x.shape[-2:]
    ho, wo = (h - 4) // stride + 1, (w - 4) // stride + 1
    rows = [x[..., i : i + stride * (ho - 1) + 1 : stride, :] for i in range(4)]
    y = torch.add(rows[0] + rows[3], rows[1] + rows[2], alpha=3).mul_(0.125)
    cols = [y[..., j : j + stride * (wo - 1) + 1 : stride] for j in range(4)]
    out = torch.add(cols[0] + cols[3], cols[1] + cols[2], alpha=3).mul_(0.125)
    return out.contiguous(memory_format=torch.channels_last) if _is_channels_last(x) else out


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()


def blur_downsample(x: torch.Tensor) -> torch.Tensor:
    """Anti-aliased x2 downsampling with the ``[1, 3, 3, 1]`` filter (StyleGAN2's Downsample)."""
    return _blur(x, (1, 1), stride=2)


def minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one channel with the mean per-group feature stddev (StyleGAN2 minibatch-stddev).

    The group is the largest divisor of the batch not above ``group``, so any batch size works.
    """
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
    y = x.view(g, -1, c, h, w)
    y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # (n/g,)
    y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat((x, y), dim=1)


@torch.no_grad()
def init_reference_(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """The reference implementation's initialisation (``init_networks`` in its ``models/models.py``).

    Every convolution and linear layer gets Xavier-normal weights with ``gain`` (std
    ``gain * sqrt(2 / (fan_in + fan_out))``) and zero biases; affine batch norms get weights drawn from
    N(1, gain) and zero biases. Spectrally normalised layers are included: the draw goes into
    ``weight_orig``, as in the reference (where ``m.weight.data`` shares its storage). Draws from the
    global RNG, in module order. Returns ``module``.
    """
    for m in module.modules():
        name = type(m).__name__
        if "BatchNorm" in name:
            if getattr(m, "weight", None) is not None:
                nn.init.normal_(m.weight, 1.0, gain)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif "Conv" in name or "Linear" in name:
            weight = getattr(m, "weight_orig", None)
            if weight is None:
                weight = getattr(m, "weight", None)
            if not isinstance(weight, torch.Tensor):
                continue
            nn.init.xavier_normal_(weight, gain=gain)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return module
