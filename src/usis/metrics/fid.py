"""FID and KID through torchmetrics, with a cache of the real images' statistics.

Feature extractor. The paper's protocol uses the Inception-v3 pool features (2048-d) with the
TensorFlow FID weights (``pt_inception-2015-12-05-6726825d.pth``, the file pytorch-fid downloads; the
same network torch-fidelity ships as ``weights-inception-2015-12-05-6726825d.pth``).
:func:`build_inception` wraps torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's network) with
TF-1.x-compatible bilinear resizing to 299 x 299 (``antialias=False``; torchmetrics' default
antialiased resize gives slightly different numbers than the reference FID implementations).

Any ``nn.Module`` that maps images in [-1, 1] (float, N x 3 x H x W) to features (N x D) can be
used instead (e.g. the synthetic preset's evaluator); the statistics cache works for all of them.

Computation. Features are extracted once per batch and fed to torchmetrics'
``FrechetInceptionDistance`` and ``KernelInceptionDistance`` (the Frechet distance and the MMD are
not re-implemented here). The KID subset size adapts to small evaluation sets:
``min(1000, n_real, n_fake)``.

Real-statistics cache. :func:`compute_fid` stores the real side's torchmetrics state (sum, sum of
outer products and count of the features; for KID also the features themselves) under
``<cache_dir>/fid_stats/<key>.pt``, where ``key = real_stats_key(dataset, split, resolution,
extractor, n)``; the file is written atomically and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from usis.errors import MetricsError, UsisWarning
from usis.utils.io import atomic_write, default_cache_dir, torch_save_atomic

PYTORCH_FID_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILENAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
_CACHE_VERSION = 1



# ------------------------------------------------------------------------------------------ paths


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _find_in_hub_cache() -> Path | None:
    for name in INCEPTION_FILENAMES:
        candidate = _hub_checkpoint_dir() / name
        if candidate.is_file():
            return candidate
    return None


DOWNLOAD_TIMEOUT_S = 30.0  # per connection attempt and per read: a hanging proxy must not stall training


def _download_inception(timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download the pytorch-fid weights into the torch hub cache (raises on any network failure).

    ``timeout`` bounds the connection and every read (an offline cluster whose connections hang gives up
    after it instead of waiting forever); the file's SHA-256 must start with the 8 hex digits in its name
    (6726825d), as torch hub checks; it is written atomically, so a broken download leaves nothing.
    """
    dest = _hub_checkpoint_dir() / INCEPTION_FILENAMES[0]
    expected = dest.name.rsplit("-", 1)[-1].split(".")[0]
    digest = hashlib.sha256()

    def copy(f) -> None:
        with urllib.request.urlopen(PYTORCH_FID_URL, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        if not digest.hexdigest().startswith(expected):
            raise OSError(f"downloaded file's SHA-256 {digest.hexdigest()[:8]}... does not start with {expected}")

    atomic_write(dest, copy)
    return dest


def _missing_weights_message(reason: str) -> str:
    return (
        f"{reason}\nFID/KID need the TF-FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth). "
        f"Download them once from\n  {PYTORCH_FID_URL}\nand pass the file with --fid-weights PATH "
        f"(config option eval.fid_weights, e.g. --set eval.fid_weights=/path/to/pt_inception-2015-12-05-"
        f"6726825d.pth), or put it into the torch hub cache {_hub_checkpoint_dir()}."
    )


# ------------------------------------------------------------------------------------ extractor


def images_to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float N x 3 x H x W -> uint8 in [0, 255] (rounded, clamped)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _file_sha1(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _validate_inception_file(path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable, truncated, or not a plain tensor file
        raise MetricsError(_missing_weights_message(
            f"cannot read the Inception weights {path}: {type(e).__name__}: {e} (corrupt or incomplete "
            "download? delete the file and download it again)")) from e
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise MetricsError(_missing_weights_message(
            f"{path} is not an Inception-v3 state dict (no key Mixed_7c.branch_pool.conv.weight)"))
    fc = state.get("fc.weight")
    if fc is None or tuple(fc.shape) != (1008, 2048):
        raise MetricsError(_missing_weights_message(
            f"{path} is not the TF-FID Inception (expected fc.weight of shape (1008, 2048), "
            f"got {None if fc is None else tuple(fc.shape)}); torchvision's ImageNet Inception does not work"))


class InceptionFeatures(nn.Module):
    """TF-FID Inception-v3 pool features: [-1, 1] float N x 3 x H x W -> float32 N x 2048.

    Images are converted to uint8 and resized to 299 x 299 inside (TF-1.x-compatible bilinear).
    ``extractor_id`` names the network and the weights file's hash, for statistics-cache keys.
    """

    num_features = 2048

    def __init__(self, net: nn.Module, extractor_id: str) -> None:
        super().__init__()
        self.net = net
        self.extractor_id = extractor_id

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images_to_uint8(images)).reshape(images.shape[0], -1).float()

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # never leaves eval mode


def build_inception(weights_path: str | None = None, antialias: bool = False) -> InceptionFeatures:
    """Build the TF-FID Inception-v3 feature extractor.

    ``weights_path``: the ``pt_inception-2015-12-05-6726825d.pth`` file (config ``eval.fid_weights``,
    CLI ``--fid-weights``). Empty/None: use the copy in the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``, either file name) or download it there; without network this
    raises :class:`MetricsError` saying where to get the file.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3  # lazy: torchmetrics is slow to import

    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MetricsError(_missing_weights_message(f"Inception weights file not found: {path}"))
    else:
        found = _find_in_hub_cache()
        if found is None:
            try:
                found = _download_inception()
            except Exception as e:  # no network, proxy, HTTP error, disk full, ...
                raise MetricsError(_missing_weights_message(
                    f"eval.fid_weights is not set and downloading the Inception weights failed "
                    f"({type(e).__name__}: {e})")) from e
        path = found
    _validate_inception_file(path)
    # The file just loaded with weights_only=True, so torch-fidelity's own (unrestricted) load of it
    # below cannot run code; the second read is the price of reusing its network definition.
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(path), antialias=antialias)
    except Exception as e:
        raise MetricsError(_missing_weights_message(f"loading the Inception weights {path} failed: {e}")) from e
    resize = "aa" if antialias else "tf1"
    return InceptionFeatures(net, f"inception-v3-tf-2015-12-05:{_file_sha1(path)[:12]}:pool2048:{resize}")


def feature_extractor_id(module: nn.Module) -> str:
    """The extractor's ``extractor_id`` attribute (set it on custom extractors), else its class name."""
    return str(getattr(module, "extractor_id", None) or type(module).__qualname__)


# -------------------------------------------------------------------------------------- metric


class _Precomputed(nn.Module):
    """Identity 'feature extractor': the metrics receive features we computed once for both."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def _module_device(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


class FIDKID:
    """Accumulates real and fake features and computes FID (and optionally KID) with torchmetrics.

    ``feature_extractor`` maps images in [-1, 1] (float N x 3 x H x W) to features N x D; it is run
    under ``torch.no_grad`` on its own device. Metric states stay on the CPU in float64.
    """

    def __init__(self, feature_extractor: nn.Module, kid: bool = False, kid_subsets: int = 100,
                 kid_max_subset_size: int = 1000) -> None:
        self.extractor = feature_extractor.eval()
        self.kid_enabled = kid
        self.kid_subsets = kid_subsets
        self.kid_max_subset_size = kid_max_subset_size
        self._fid = None
        self._kid = None
        self.num_features: int | None = None

    # features ---------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Features (float32, CPU, N x D) of a batch of images in [-1, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images N x 3 x H x W, got {tuple(images.shape)}")
        feats = self.extractor(images.to(_module_device(self.extractor), torch.float32))
        return feats.reshape(images.shape[0], -1).float().cpu()

    def _ensure_metrics(self, dim: int) -> None:
        if self._fid is not None:
            if dim != self.num_features:
                raise ValueError(f"feature size changed from {self.num_features} to {dim}")
            return
        from torchmetrics.image.fid import FrechetInceptionDistance  # lazy: torchmetrics is slow to import
        from torchmetrics.image.kid import KernelInceptionDistance  # lazy: as above

        self.num_features = dim
        # sync_on_compute=False: the caller feeds every image here; inside a data-parallel training run only
        # rank 0 evaluates, and torchmetrics' default cross-process sync would wait for the others forever
        self._fid = FrechetInceptionDistance(feature=_Precomputed(dim), reset_real_features=False,
                                             sync_on_compute=False)
        if self.kid_enabled:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "KID will save all extracted features in buffer"
                self._kid = KernelInceptionDistance(feature=_Precomputed(dim), subsets=self.kid_subsets,
                                                    reset_real_features=False, sync_on_compute=False)

    def update(self, images: Tensor, real: bool) -> None:
        self.update_features(self.features(images), real)

    def update_features(self, feats: Tensor, real: bool) -> None:
        """Add precomputed features (N x D) to the real or the fake side."""
        feats = feats.reshape(feats.shape[0], -1).cpu()
        self._ensure_metrics(feats.shape[1])
        self._fid.update(feats.double(), real=real)
        if self._kid is not None:
            self._kid.update(feats.float(), real=real)

    @property
    def num_real(self) -> int:
        return 0 if self._fid is None else int(self._fid.real_features_num_samples)

    @property
    def num_fake(self) -> int:
        return 0 if self._fid is None else int(self._fid.fake_features_num_samples)

    # real-side state (for the cache) ---------------------------------------------------------
    def real_state(self) -> dict[str, Tensor]:
        if self._fid is None:
            raise ValueError("no real images were added")
        state = {
            "features_sum": self._fid.real_features_sum.clone(),
            "features_cov_sum": self._fid.real_features_cov_sum.clone(),
            "num_samples": self._fid.real_features_num_samples.clone(),
        }
        if self._kid is not None:
            state["features"] = torch.cat([f.float() for f in self._kid.real_features])
        return state

    def load_real_state(self, state: dict[str, Tensor]) -> None:
        """Replace the real side by a state from :meth:`real_state`."""
        if self.kid_enabled and "features" not in state:
            raise ValueError("this state holds no real features, which KID needs")
        self._ensure_metrics(int(state["features_sum"].numel()))
        self._fid.real_features_sum = state["features_sum"].double().clone()
        self._fid.real_features_cov_sum = state["features_cov_sum"].double().clone()
        self._fid.real_features_num_samples = state["num_samples"].long().clone()
        self._fid._computed = None  # drop torchmetrics' cached result, if any
        if self._kid is not None:
            self._kid.real_features.clear()
            self._kid.real_features.append(state["features"].float())
            self._kid._computed = None

    def reset_fake(self) -> None:
        """Forget the fake side, keep the real side (e.g. between periodic evaluations)."""
        if self._fid is not None:
            self._fid.reset()
        if self._kid is not None:
            self._kid.reset()

    def compute(self) -> dict[str, float]:
        """``{"fid": ...}`` plus ``kid_mean`` / ``kid_std`` when KID is enabled."""
        if self.num_real < 2 or self.num_fake < 2:
            raise ValueError(f"FID needs at least 2 real and 2 fake images (got {self.num_real} real, "
                             f"{self.num_fake} fake)")
        out = {"fid": float(self._fid.compute())}
        if self._kid is not None:
            self._kid.subset_size = min(self.kid_max_subset_size, self.num_real, self.num_fake)
            kid_mean, kid_std = self._kid.compute()
            out["kid_mean"] = float(kid_mean)
            out["kid_std"] = float(kid_std)
        return out


# ------------------------------------------------------------------------------- stats cache


def real_stats_key(dataset: str, split: str, resolution: tuple[int, ...] | list[int], extractor: str,
                   n: int) -> str:
    """SHA-1 key of what determines the real statistics (dataset, split, H x W, extractor id, count)."""
    payload = json.dumps([_CACHE_VERSION, str(dataset), str(split), [int(r) for r in resolution],
                          str(extractor), int(n)])
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def stats_path(cache_dir: str | os.PathLike | None, key: str) -> Path:
    return Path(cache_dir or default_cache_dir()).expanduser() / "fid_stats" / f"{key}.pt"


def save_real_stats(path: str | os.PathLike, state: dict[str, Tensor], key: str = "") -> None:
    """Write a real-statistics file atomically (temporary file in the same folder + ``os.replace``)."""
    payload = {"version": _CACHE_VERSION, "key": key, **{k: v.cpu() for k, v in state.items()}}
    torch_save_atomic(payload, path, fsync=False)


def load_real_stats(path: str | os.PathLike, need_features: bool = False) -> dict[str, Tensor] | None:
    """The cached state, or ``None`` if absent, unreadable (warns) or lacking the KID features."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        warnings.warn(f"ignoring unreadable FID statistics cache {path} ({e}); recomputing", UsisWarning, stacklevel=2)
        return None
    if not isinstance(payload, dict) or payload.get("version") != _CACHE_VERSION:
        return None
    if need_features and "features" not in payload:
        return None
    return {k: v for k, v in payload.items() if isinstance(v, Tensor)}


def compute_fid(fake_iter: Iterable[Tensor], real_iter_factory: Callable[[], Iterable[Tensor]],
                key: str | None, cache_dir: str | os.PathLike | None, feature_extractor: nn.Module,
                kid: bool = False, kid_subsets: int = 100) -> dict[str, float | int | str]:
    """FID (and KID) between generated and real images, reusing cached real statistics.

    ``fake_iter`` yields batches of generated images, ``real_iter_factory()`` returns an iterable of
    real batches (both float N x 3 x H x W in [-1, 1]); the factory is only called when the cache
    under ``key`` misses (``key=None`` disables the cache). Returns ``fid`` (and ``kid_mean``,
    ``kid_std``), ``num_real``, ``num_fake`` and ``cache`` (``"hit"``, ``"miss"`` or ``"off"``).
    """
    return compute_distances(fake_iter, real_iter_factory, {"fid": FeatureDistance(feature_extractor, key, kid)},
                             cache_dir, kid_subsets)["fid"]


class FeatureDistance(NamedTuple):
    """One Frechet distance to compute: its feature extractor, the real-statistics cache key (``None``: no
    cache) and whether KID is wanted too."""

    extractor: nn.Module
    key: str | None = None
    kid: bool = False


def compute_distances(fake_iter: Iterable[Tensor], real_iter_factory: Callable[[], Iterable[Tensor]],
                      distances: dict[str, FeatureDistance], cache_dir: str | os.PathLike | None = None,
                      kid_subsets: int = 100) -> dict[str, dict[str, float | int | str]]:
    """Several feature distances (FID with Inception, sFID with the synthetic evaluator, ...) over ONE pass of
    the generated images: each name gets :func:`compute_fid`'s result. Real statistics come from each
    key's cache; the real images are read once, for all the distances whose cache missed."""
    metrics, cache, paths = {}, {}, {}
    for name, d in distances.items():
        metrics[name] = FIDKID(d.extractor, kid=d.kid, kid_subsets=kid_subsets)
        paths[name] = stats_path(cache_dir, d.key) if d.key else None
        state = load_real_stats(paths[name], need_features=d.kid) if paths[name] is not None else None
        if state is not None:
            metrics[name].load_real_state(state)
            cache[name] = "hit"
    missing = [name for name in distances if name not in cache]
    if missing:
        for batch in real_iter_factory():
            for name in missing:
                metrics[name].update(batch, real=True)
        for name in missing:
            if metrics[name].num_real == 0:
                raise ValueError("the real-image iterator yielded no images")
            cache[name] = "off"
            if paths[name] is not None:
                save_real_stats(paths[name], metrics[name].real_state(), key=distances[name].key)
                cache[name] = "miss"
    for batch in fake_iter:
        for metric in metrics.values():
            metric.update(batch, real=False)
    out = {}
    for name, metric in metrics.items():
        res: dict[str, float | int | str] = dict(metric.compute())
        res.update(num_real=metric.num_real, num_fake=metric.num_fake, cache=cache[name])
        out[name] = res
    return out
