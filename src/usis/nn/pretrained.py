"""Networks that save and load themselves: ``save_pretrained(dir)`` / ``from_pretrained(dir)``.

A class that derives from :class:`Pretrained` records the arguments it was constructed with (its own
config, JSON data) and writes, into one folder,

* ``<weights_name>``: the state dict as safetensors (parameters and buffers: BN statistics, spectral-norm
  vectors), and
* ``config.json``: ``{"format": <format_name>, "version": 1, "class": <class name>, "config": {...}}`` plus
  whatever ``metadata`` the caller adds (the export adds the training run's config and step), and
* ``README.md`` when the caller gives a model card (the export does: :mod:`usis.cards`).

``from_pretrained`` rebuilds the network from ``config`` and loads the weights strictly. Every problem
(missing file, another class, a newer format, weights that do not fit) is a
:class:`~usis.errors.CheckpointError` that names the file and the fix.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save
from torch import nn

from usis.errors import CheckpointError
from usis.utils.io import atomic_write

CONFIG_NAME = "config.json"
CARD_NAME = "README.md"  # a model card, as the Hugging Face Hub reads it
FORMAT_VERSION = 1  # of config.json's layout; a newer file is refused with a clear message

T = TypeVar("T", bound="Pretrained")


class Pretrained(nn.Module):
    """Mixin for ``nn.Module`` subclasses: the constructor's arguments become ``self.config``."""

    weights_name = "model.safetensors"
    format_name = "usis-network"
    config: dict[str, Any]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            init(self, *args, **kw)
            if type(self) is cls:  # the most derived class records its own arguments
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                self.config = {k: _plain(v) for k, v in list(bound.arguments.items())[1:]}

        cls.__init__ = recording_init

    def save_pretrained(self, directory: str | os.PathLike, metadata: dict[str, Any] | None = None,
                        card: str | None = None) -> Path:
        """Write ``directory/<weights_name>`` and ``directory/config.json`` (atomically), and with ``card``
        (a model card's text: :mod:`usis.cards`) ``directory/README.md``; returns the folder."""
        out = Path(directory)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        atomic_write(out / self.weights_name, save(tensors, metadata={"format": self.format_name}))
        meta = {"format": self.format_name, "version": FORMAT_VERSION, "class": type(self).__name__,
                "config": self.config, **(metadata or {})}
        atomic_write(out / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if card is not None:
            atomic_write(out / CARD_NAME, card)
        return out

    @classmethod
    def read_pretrained_config(cls, directory: str | os.PathLike) -> dict[str, Any]:
        """``config.json`` of a folder written by :meth:`save_pretrained`, checked for format and class."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{path.parent}: no {CONFIG_NAME}; pass a folder written by save_pretrained / "
                                  "`usis export`")
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot read it ({e}); write the folder again") from e
        if not isinstance(meta, dict) or meta.get("format") != cls.format_name:
            raise CheckpointError(f"{path}: not a {cls.format_name} folder (format {meta.get('format')!r})")
        version = meta.get("version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: written by a newer usis (format version {version}, this one reads up "
                                  f"to {FORMAT_VERSION}); upgrade usis (pip install -U usis)")
        if cls.stored_class(meta) is None:
            raise CheckpointError(f"{path}: holds a {meta['class']}, not a {cls.__name__}")
        return meta

    @classmethod
    def stored_class(cls: type[T], meta: dict[str, Any]) -> type[T] | None:
        """The class a ``config.json`` names: ``cls`` or one of its (imported) subclasses; ``None`` if
        neither (``BaseGenerator.stored_class`` gives the SPADE or the wavelet generator)."""
        name = meta.get("class", cls.__name__)
        stack: list[type] = [cls]
        while stack:
            klass = stack.pop()
            if klass.__name__ == name:
                return klass
            stack.extend(klass.__subclasses__())
        return None

    @classmethod
    def from_pretrained(cls: type[T], directory: str | os.PathLike, device: str | torch.device = "cpu") -> T:
        """The network saved in ``directory`` (eval mode, on ``device``); called on a base class, the
        subclass the folder holds."""
        meta = cls.read_pretrained_config(directory)
        klass = cls.stored_class(meta)
        return klass.from_config_and_weights(meta["config"], Path(directory) / klass.weights_name, device)

    @classmethod
    def from_config_and_weights(cls: type[T], config: dict[str, Any], weights: str | os.PathLike,
                                device: str | torch.device = "cpu") -> T:
        try:
            net = cls(**config)
        except TypeError as e:
            raise CheckpointError(f"{weights}: its config does not fit this version's {cls.__name__} ({e})") from e
        load_state(net, read_weights(weights), str(weights))
        return net.to(device).eval()


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on the CPU; a missing, truncated or foreign file is a
    :class:`CheckpointError` naming it."""
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # missing, truncated, not safetensors
        raise CheckpointError(f"{path}: cannot read the weights ({type(e).__name__}: {e}); write the folder "
                              "again (`usis export`)") from e


def load_state(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``net.load_state_dict(state)`` (strict); a mismatch is a :class:`CheckpointError` naming ``source``."""
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{source}: the weights do not fit the stored config ({first}); was the file edited "
                              "or written by another version?") from e


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v
