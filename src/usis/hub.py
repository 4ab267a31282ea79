"""Models on the Hugging Face Hub: ``org/name`` as a model source, and pushing an export folder.

Where a model comes from (:func:`resolve_model`; ``USISPipeline.from_pretrained`` and the ``--checkpoint``
of ``usis generate`` / ``synthesize`` / ``evaluate`` / ``app`` all reach it through
:func:`usis.generate.load_generator`):

1. A local path that exists is used as it is. A name that is also a folder here (``lab/usis-cs`` with a
   folder ``lab/usis-cs`` under the working directory) is that folder, never the Hub; to reach the repo,
   run from another folder or rename the local one.
2. Otherwise a name of the Hub's form ``org/name`` (one slash; letters, digits, ``-``, ``_``, ``.``; not
   starting with ``.`` or ``~``, not ending in ``.pt`` / ``.pth`` / ``.safetensors``: those are local
   files) is a model repo. Its export files (:data:`HUB_FILES`) are fetched with
   :func:`huggingface_hub.snapshot_download` into huggingface_hub's cache (``~/.cache/huggingface/hub``,
   ``$HF_HUB_CACHE``, or ``cache_dir``), laid out as huggingface_hub lays it out
   (``models--org--name/snapshots/<commit>/...``, ``refs/<revision>``), and read from there. Offline
   (``HF_HUB_OFFLINE=1``, or no network) the cached snapshot of ``revision`` is used.
3. Anything else is a local path that does not exist (the caller's message).

Every failure of huggingface_hub is one :class:`HubError` (a :class:`~usis.errors.CheckpointError`, so the
CLI prints one ``error:`` line and exits 2): no such repo (or private), no such revision, a gated or
disabled repo, offline or no network with nothing cached, a repo that is not a usis model (no
``generator.safetensors`` + ``config.json``), a full disk under the cache.

Pushing (:func:`push_export`) uploads the three files of an export folder in one commit: the weights
(``generator.safetensors``: the EMA generator only), ``config.json`` and the model card ``README.md``;
never a training checkpoint, its other networks or its optimizer states.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from usis.errors import CheckpointError, UsisError
from usis.nn.generator import BaseGenerator
from usis.nn.pretrained import CARD_NAME, CONFIG_NAME
from usis.utils.io import disk_full_cause, disk_full_error

WEIGHTS_NAME = BaseGenerator.weights_name  # generator.safetensors
HUB_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)  # what an export holds, fetches and pushes
LOCAL_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt")  # names ending so are files, never repos
HUB_URL = "https://huggingface.co"


class HubError(CheckpointError):
    """A model on the Hub that cannot be fetched or pushed; the message says why and what to do."""


def is_hub_name(name: str | os.PathLike) -> bool:
    """Whether ``name`` has the form of a Hub model repo, ``org/name`` (see the module docstring). A
    :class:`~pathlib.Path` is always a local path."""
    if not isinstance(name, str) or name.count("/") != 1 or name.startswith((".", "~")):
        return False
    if name.lower().endswith(LOCAL_SUFFIXES):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hub cache a download uses: ``cache_dir``, else huggingface_hub's (``$HF_HUB_CACHE``, ...)."""
    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser().absolute()


def resolve_model(name: str | os.PathLike, revision: str | None = None,
                  cache_dir: str | os.PathLike | None = None, token: str | bool | None = None
                  ) -> tuple[Path, str | None]:
    """Where the model ``name`` is on this machine, and its Hub reference (``org/name@<commit>``; ``None``
    for a local path). A local path that exists wins; a Hub name is fetched (or found in the cache); any
    other name is returned as a (missing) local path for the caller's message. ``revision`` (a branch, tag
    or commit) and ``cache_dir`` apply to Hub names only."""
    local = Path(name).expanduser()
    if local.exists() or not is_hub_name(name):
        if revision is not None:
            raise HubError(f"revision {revision!r}: {name} is a local path, and revisions apply to Hub repos "
                           "(org/name) only; drop the revision")
        return local, None
    repo_id = str(name)
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                        allow_patterns=list(HUB_FILES)))
    except Exception as e:  # noqa: BLE001 - each of the Hub's failures becomes one message; a bug is re-raised
        message = _hub_error(e, repo_id, revision, cache_folder(cache_dir))
        if message is None:
            raise
        raise message from e
    missing = [f for f in (WEIGHTS_NAME, CONFIG_NAME) if not (folder / f).is_file()]
    if missing:
        at = f" at revision {revision!r}" if revision else ""
        raise HubError(f"{repo_id}{at} is not a usis model: the repo holds no {' or '.join(missing)} (a usis model "
                       f"repo holds what `usis export` writes: {', '.join(HUB_FILES)}); check the name, or push one "
                       f"with `usis export --checkpoint RUN --out DIR --push-to-hub {repo_id}`")
    commit = folder.name if folder.parent.name == "snapshots" else (revision or "main")
    return folder, f"{repo_id}@{commit}"


def push_export(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | bool | None = None,
                commit_message: str | None = None) -> str:
    """Upload an export folder's :data:`HUB_FILES` (weights, config, card: nothing else in the folder) to the
    model repo ``repo_id`` in one commit, creating the repo if needed (``private``: created private; an
    existing repo keeps its visibility). Returns the repo's URL. Log in first (``hf auth login``, or
    ``$HF_TOKEN``) with a token that may write to ``repo_id``."""
    folder = Path(folder)
    if not is_hub_name(repo_id):
        raise HubError(f"--push-to-hub {repo_id}: give the repo as org/name (your user or organisation, a slash, "
                       "the model's name: letters, digits, '-', '_' or '.')")
    missing = [f for f in HUB_FILES if not (folder / f).is_file()]
    if missing:
        raise HubError(f"{folder}: no {', '.join(missing)}; push a folder written by `usis export` (or "
                       "USISPipeline.save_pretrained), which holds the generator, its config and its card")
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in HUB_FILES]
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.create_commit(repo_id, operations=operations, repo_type="model",
                          commit_message=commit_message or "usis export: generator, config and model card")
    except Exception as e:  # noqa: BLE001 - each of the Hub's failures becomes one message; a bug is re-raised
        message = _hub_error(e, repo_id, None, None, push=True)
        if message is None:
            raise
        raise message from e
    return f"{HUB_URL}/{repo_id}"


def _offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def _is_transport_error(e: BaseException) -> bool:
    """A connection, DNS, proxy or timeout failure of huggingface_hub's HTTP client (httpx / httpcore, whose
    classes derive from neither OSError nor ConnectionError)."""
    client = type(e).__module__.split(".")[0]
    return isinstance(e, ConnectionError | TimeoutError) or client in ("httpx", "httpx2", "httpcore", "httpcore2")


def _hub_error(e: Exception, repo_id: str, revision: str | None, cache: Path | None,
               push: bool = False) -> UsisError | None:
    """The one message for a failure of huggingface_hub ``e`` while fetching (or, ``push``, pushing)
    ``repo_id``; None for an error that is not the Hub's (a bug: re-raised as it is)."""
    at = f" at revision {revision!r}" if revision else ""
    login = "log in with `hf auth login` (or set $HF_TOKEN)"
    full = disk_full_cause(e)
    if full is not None:
        where = Path(full.filename) if full.filename else (cache or Path.cwd()) / f"models--{repo_id.replace('/', '--')}"
        return disk_full_error(e, where, hint="free some space there, or point $HF_HUB_CACHE (or cache_dir) elsewhere")
    if push:
        if isinstance(e, OfflineModeIsEnabled) or _offline():
            return HubError(f"pushing {repo_id}: HF_HUB_OFFLINE=1 forbids network access; unset it to push")
        if isinstance(e, HfHubHTTPError) and e.response is not None and e.response.status_code in (401, 403):
            return HubError(f"pushing {repo_id}: the Hub refused it ({e.response.status_code}): {login} with a "
                            f"token that may write to {repo_id.split('/')[0]}")
        if isinstance(e, HfHubHTTPError):
            return HubError(f"pushing {repo_id}: the Hub answered {_first_line(e)}; try again later")
        if _is_transport_error(e):
            return HubError(f"pushing {repo_id}: cannot reach the Hub ({type(e).__name__}: {e}); check the network "
                            "(or the proxy: $HTTPS_PROXY) and push again")
        return None
    if isinstance(e, GatedRepoError):
        return HubError(f"{repo_id} is a gated repo on the Hub: ask for access at {HUB_URL}/{repo_id}, then {login}")
    if isinstance(e, DisabledRepoError):
        return HubError(f"{repo_id}: its owner disabled this repo on the Hub; use another model")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(f"{repo_id}: no such file or folder here, and no model repo {repo_id} on the Hub (or it is "
                        f"private: {login}); check the name")
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{repo_id} has no revision {revision!r} on the Hub; pass one of its branches, tags or "
                        f"commits (see {HUB_URL}/{repo_id}/commits/main)")
    if isinstance(e, LocalEntryNotFoundError) and getattr(e, "snapshot_path", None):  # IncompleteSnapshotError
        return HubError(f"{repo_id}{at}: its copy in the Hub cache {cache} is incomplete and the Hub cannot be "
                        "reached; download it again with network access")
    if isinstance(e, LocalEntryNotFoundError | OfflineModeIsEnabled) or _is_transport_error(e):
        if _offline() or isinstance(e, OfflineModeIsEnabled) or isinstance(e.__cause__, OfflineModeIsEnabled):
            return HubError(f"{repo_id}{at}: no such local file or folder, and HF_HUB_OFFLINE=1 while the Hub cache "
                            f"{cache} holds no copy of it; download it once with network access (the same command "
                            "without HF_HUB_OFFLINE=1), or pass a local export folder")
        return HubError(f"{repo_id}{at}: no such local file or folder, and the Hub cannot be reached while the Hub "
                        f"cache {cache} holds no copy of it; check the network (or the proxy: $HTTPS_PROXY), or pass "
                        "a local export folder")
    if isinstance(e, HfHubHTTPError) and e.response is not None and e.response.status_code == 401:
        return HubError(f"{repo_id}: the Hub refused access (401): {login}")
    if isinstance(e, HfHubHTTPError):
        return HubError(f"{repo_id}: the Hub answered {_first_line(e)}; try again later")
    return None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
