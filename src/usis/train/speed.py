"""The speed switches of a training run, in one place (``train.amp``, ``train.channels_last``,
``train.compile``, ``train.cudnn_benchmark``), and the deferred divergence check.

The phases (:mod:`usis.train.phases`) know none of this. The schedule (:mod:`usis.train.schedule`) calls
the networks through :meth:`Speed.forward` (the compiled forward, or the module itself), runs each phase
under :meth:`Speed.autocast` and puts its batches in the networks' memory format with :meth:`Speed.batch`.
Everything else (the memory format of the weights, cuDNN's autotuner) is set once when the trainer is built.

* ``channels_last``: the networks' weights and every 4-D batch in NHWC. oneDNN (CPU) and cuDNN's
  tensor-core kernels (GPU) work in NHWC natively; in NCHW they reorder around every convolution.
  Values are the same up to float summation order.
* ``amp``: bf16 autocast on CUDA (a no-op on a CPU, where bf16 convolutions are slower). Losses are
  computed in fp32 (the phases cast logits with ``.float()``).
* ``compile``: ``torch.compile`` of each network's forward. The R1 penalty differentiates D's gradient
  (``create_graph=True``), which compiled graphs do not support (pytorch/pytorch#91469), so the schedule
  runs a forward on a leaf that requires grad (R1's photos) with the module itself. Each network compiles a
  few graphs during the first iterations (with and without gradients for its parameters; D with and without
  features); after that there are no recompiles (``tests/test_speed.py`` counts them).
* ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark`` on CUDA (fixed shapes: the autotuner's choice
  holds for the whole run).

No host-device synchronisation happens inside a step: the losses stay on the device as 0-d tensors.
:class:`DivergenceCheck` keeps the losses of the steps since it was last read and looks for a non-finite
one in a single read, when the loop logs (every ``train.log_every`` steps) and before every save; the
step it reports is the first non-finite one.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from usis.config import TrainConfig


def _to_channels_last(net: nn.Module | None) -> None:
    if net is not None:
        net.to(memory_format=torch.channels_last)


class Speed:
    """The run's speed switches, applied to ``nets`` (a :class:`usis.nn.build.Networks`) on ``device``."""

    def __init__(self, t: TrainConfig, nets, device: torch.device):
        self.device = device
        self.amp = bool(t.amp) and device.type == "cuda"
        self.channels_last = bool(t.channels_last)
        self.compiled = bool(t.compile)
        self.backend = t.compile_backend
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)
        if self.channels_last:
            for net in nets.named().values():
                _to_channels_last(net)
        self._forwards: dict[int, Any] = {}

    def forward(self, module: nn.Module) -> Any:
        """What to call for ``module``'s forward: its compiled forward with ``train.compile`` (one per module),
        the module itself otherwise."""
        if not self.compiled:
            return module
        if id(module) not in self._forwards:
            # dynamic=False: the shapes are fixed for a run; a compiled graph per shape is what we want
            self._forwards[id(module)] = torch.compile(module, backend=self.backend, dynamic=False)
        return self._forwards[id(module)]

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """A batch (images or one-hot maps, N x C x H x W) in the networks' memory format."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        """bf16 autocast on CUDA when ``train.amp``; otherwise nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


class DivergenceCheck:
    """The losses of the steps since the last read, kept on the device; :meth:`first_bad` reads them once.

    ``observe(step, losses)`` costs nothing (it keeps references to the step's 0-d loss tensors);
    ``first_bad()`` returns ``(step, {name: value})`` of the first step with a non-finite loss, or ``None``,
    and forgets what it has read.
    """

    def __init__(self):
        self._window: list[tuple[int, dict[str, torch.Tensor]]] = []

    def observe(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        self._window.append((step, losses))

    def first_bad(self) -> tuple[int, dict[str, float]] | None:
        if not self._window:
            return None
        window, self._window = self._window, []
        flags = torch.stack([torch.isfinite(torch.stack([v.float() for v in losses.values()])).all()
                             for _, losses in window])
        ok = flags.tolist()  # the one host-device synchronisation
        for (step, losses), good in zip(window, ok, strict=True):
            if not good:
                return step, {k: float(v) for k, v in losses.items()}
        return None
