"""Sharing a model (issue 34): the model card of every export, loading ``org/name`` from the Hugging Face Hub's
cache (offline, as huggingface_hub lays it out), one message per Hub error, and pushing an export, against a
stand-in for the Hub's API. No test reaches the network: offline mode, or ``HfApi`` methods replaced, and the
endpoint pointed at a closed local port."""

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, set_args
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from PIL import Image
from safetensors.torch import load_file

from usis import USISPipeline
from usis.cli import main
from usis.data.synthetic import CLASS_NAMES, PALETTE
from usis.generate import generator_digest, load_generator
from usis.hub import HUB_FILES, HubError, is_hub_name, push_export
from usis.metrics import synthetic_eval as se
from usis.metrics.protocol import METRICS

REPO = "lab/usis-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
CLOSED_ENDPOINT = "http://127.0.0.1:9"  # nothing listens there: a request that slipped through fails at once


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny synthetic run evaluated at every step (an untrained stand-in for the synthetic evaluator, whose
    real weights take a minute to train and do not matter here), exported to ``exported/``."""
    out = tmp_path_factory.mktemp("hubrun")

    def untrained(cls, height=64, width=128, cache_dir=None, device="cpu", progress=True):
        torch.manual_seed(0)
        return cls(se.EvalNet(), height, width, device=device)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(se.SyntheticEvaluator, "load_or_train", classmethod(untrained))
        assert main(["train", "--preset", "synthetic", "--out", str(out), "--iters", "3", "--no-progress",
                     *set_args(TINY + ["train.eval_every=1", "model.pixel_noise=2"])]) == 0
    assert main(["export", "--checkpoint", str(out / "checkpoints/latest.pt"), "--out", str(out / "exported")]) == 0
    return out


def _records(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _front_matter(card: str) -> tuple[dict, str, str]:
    """(metadata, the YAML text, the prose) of a card."""
    assert card.startswith("---\n")
    text, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(text), text, body


def _label_map(path: Path | None = None) -> np.ndarray:
    ids = (np.arange(64)[:, None] // 8 + np.arange(64)[None, :] // 16) % 10
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids.astype(np.uint8), "L").save(path)
    return ids


def _hub_cache(root: Path, export: Path, repo: str = REPO, commit: str = COMMIT, refs=("main",),
               files=HUB_FILES) -> Path:
    """``root`` as huggingface_hub lays out its cache: ``models--org--name/snapshots/<commit>/<files>`` and
    ``refs/<ref>`` holding the commit."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in files:
        (snapshot / name).write_bytes((export / name).read_bytes())
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    return root


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as huggingface_hub reads it (its constants are read once, at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_ENDPOINT)


@pytest.fixture
def online(monkeypatch):
    """Online mode, but with HfApi's look-ups replaced by the test (and the endpoint a closed port)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_ENDPOINT)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------ model card


def test_an_export_carries_a_model_card_filled_from_the_runs_records(run):
    card = (run / "exported/README.md").read_text()
    meta, yaml_text, body = _front_matter(card)
    assert meta["library_name"] == "usis" and meta["pipeline_tag"] == "image-to-image"
    assert {"usis", "semantic-image-synthesis", "image-to-image", "synthetic"} <= set(meta["tags"])
    # the license is left to the user, with a note that says so (a YAML comment: no value is claimed)
    assert "license" not in meta and "# license: not set" in yaml_text and "# datasets:" in yaml_text
    # the metrics are the run's own record of the exported step, with the protocol's names
    (index,) = meta["model-index"]
    (result,) = index["results"]
    assert result["task"]["type"] == "image-to-image" and result["dataset"]["type"] == "synthetic"
    recorded = _records(run)[3]
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {k: recorded[k] for k in METRICS if k in recorded}  # every measure the registry knows
    assert {"miou", "miou_ceiling", "sfid", "c2st", "msssim"} <= values.keys()  # the preset's, at the end
    assert {m["name"] for m in result["metrics"]} == {METRICS[k][0] for k in values}
    # the Hub's own parser reads it
    parsed = ModelCard(card)
    assert parsed.data.library_name == "usis" and {r.metric_type for r in parsed.data.eval_results} == set(values)
    # the prose: what, label set, training, evaluation protocol, use, limits
    assert "# usis generator: synthetic preset, step 3" in body
    for i, (name, colour) in enumerate(zip(CLASS_NAMES, PALETTE, strict=True)):
        assert f"| {i} | {name}" in body and "#{:02x}{:02x}{:02x}".format(*colour) in body
    cfg = load_generator(run / "checkpoints/latest.pt").cfg
    assert f"| `train.lr_g` | {cfg.train.lr_g:.4g} |" in body and f"| `model.g_ch` | {cfg.model.g_ch} |" in body
    assert "seed 0" in body and "noise seed 1234 + i" in body and "first 200 validation label maps" in body
    best_step = min((s for s in _records(run) if s <= 3), key=lambda s: (_records(run)[s]["sfid"], s))
    assert f"The run's best `sfid` up to this step (what `best.pt` follows): {_records(run)[best_step]['sfid']:.4g}" \
           f" at step {best_step}" in body
    digest = generator_digest(load_generator(run / "exported").G)
    assert f"`{digest}`" in body
    for part in ("## Use it", "usis generate --checkpoint", "USISPipeline.from_pretrained", "usis app --checkpoint",
                 "## Limits", "not whether the image looks real"):
        assert part in body
    assert str(run) not in card  # no local paths of the machine it was made on


def test_exporting_again_gives_the_same_bytes_whatever_the_source(run, tmp_path):
    first = run / "exported"
    assert main(["export", "--checkpoint", str(run / "checkpoints/latest.pt"), "--out", str(tmp_path / "again")]) == 0
    assert main(["export", "--checkpoint", str(first), "--out", str(tmp_path / "of_export")]) == 0
    USISPipeline.from_pretrained(first, device="cpu").save_pretrained(tmp_path / "pipeline")
    for folder in ("again", "of_export", "pipeline"):
        for name in ("README.md", "generator.safetensors"):
            assert (tmp_path / folder / name).read_bytes() == (first / name).read_bytes(), (folder, name)
    assert (tmp_path / "again/config.json").read_bytes() == (first / "config.json").read_bytes()


def test_a_card_without_evaluations_says_so(ckpt, tmp_path):
    # the conftest run trains without any evaluation: no model-index, and the card says how to measure it
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e")]) == 0
    meta, _, body = _front_matter((tmp_path / "e/README.md").read_text())
    assert "model-index" not in meta and "No evaluation was recorded at step 1" in body and "usis evaluate" in body


# ------------------------------------------------------------------------------------------- loading


def test_from_pretrained_loads_a_hub_repo_from_the_cache_offline_and_makes_the_same_images(run, tmp_path, offline):
    cache = _hub_cache(tmp_path / "hub", run / "exported")
    pipe = USISPipeline.from_pretrained(REPO, cache_dir=cache, device="cpu")
    local = USISPipeline.from_pretrained(run / "exported", device="cpu")
    assert pipe.hub == f"{REPO}@{COMMIT}" and local.hub is None and pipe.step == local.step == 3
    ids = _label_map()
    assert torch.equal(pipe(ids, seeds=[0, 1, 2], output_type="pt"), local(ids, seeds=[0, 1, 2], output_type="pt"))
    # a re-export from the Hub copy keeps the card (it names where it came from in config.json only)
    pipe.save_pretrained(tmp_path / "re")
    assert (tmp_path / "re/README.md").read_bytes() == (run / "exported/README.md").read_bytes()
    assert json.loads((tmp_path / "re/config.json").read_text())["source"] == f"{REPO}@{COMMIT}"


def test_a_revision_picks_its_snapshot(run, ckpt, tmp_path, offline):
    other = tmp_path / "step1_export"  # the conftest run's generator, after one step
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(other)]) == 0
    cache = _hub_cache(tmp_path / "hub", run / "exported")
    _hub_cache(cache, other, commit=OTHER_COMMIT, refs=("v1",))
    assert USISPipeline.from_pretrained(REPO, cache_dir=cache, device="cpu").step == 3
    assert USISPipeline.from_pretrained(REPO, revision="v1", cache_dir=cache, device="cpu").step == 1
    by_commit = USISPipeline.from_pretrained(REPO, revision=OTHER_COMMIT, cache_dir=cache, device="cpu")
    assert by_commit.step == 1 and by_commit.hub == f"{REPO}@{OTHER_COMMIT}"


def test_every_command_takes_a_hub_name(run, tmp_path, offline, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hub_cache(tmp_path / "hub", run / "exported")))
    _label_map(tmp_path / "labels/m.png")
    for checkpoint, out in ((REPO, "from_hub"), (str(run / "exported"), "from_folder")):
        assert main(["generate", "--checkpoint", checkpoint, "--labels", str(tmp_path / "labels"), "--out",
                     str(tmp_path / out), "--n", "2", "--device", "cpu"]) == 0
    for name in ("m_seed0.png", "m_seed1.png"):
        assert (tmp_path / "from_hub" / name).read_bytes() == (tmp_path / "from_folder" / name).read_bytes()
    assert main(["synthesize", "--checkpoint", REPO, "--labels", str(tmp_path / "labels"), "--out",
                 str(tmp_path / "ds"), "--device", "cpu", "--no-progress"]) == 0
    card = (tmp_path / "ds/README.md").read_text()
    assert f"from the Hub: `{REPO}@{COMMIT}`" in card and f"https://huggingface.co/{REPO}" in card
    from usis.app import LabelApp

    app = LabelApp.from_checkpoint(REPO, device="cpu")
    assert app.pipe.hub == f"{REPO}@{COMMIT}" and app.num_classes == 10


def test_a_local_folder_of_the_same_name_wins(run, ckpt, tmp_path, offline, monkeypatch):
    cache = _hub_cache(tmp_path / "hub", run / "exported")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--checkpoint", str(ckpt), "--out", REPO]) == 0  # ./lab/usis-tiny, step 1
    pipe = USISPipeline.from_pretrained(REPO, cache_dir=cache, device="cpu")
    assert pipe.hub is None and pipe.step == 1
    with pytest.raises(HubError, match="revisions apply to Hub repos"):
        USISPipeline.from_pretrained(REPO, revision="v1", device="cpu")


def test_what_counts_as_a_hub_name():
    assert is_hub_name("lab/usis-cityscapes") and is_hub_name("user_1/model.v2")
    for local in ("runs/demo/checkpoints/latest.pt", "exported", "./lab/x", "~/x/y", "/abs/path", "a/b.pt",
                  "a/b.safetensors", "a--b/c", "a/b/c"):
        assert not is_hub_name(local), local
    assert not is_hub_name(Path("lab/usis-cityscapes"))  # a Path is a local path


def _response(status: int):
    return types.SimpleNamespace(status_code=status, headers={}, request=None)


def _raising(error):
    def repo_info(self, *args, **kwargs):
        raise error
    return repo_info


def _connect_error():
    httpx = pytest.importorskip("httpx2")
    return httpx.ConnectError("[Errno 111] Connection refused")


ONLINE_ERRORS = {
    "no such repo": (lambda: RepositoryNotFoundError("404 Repository Not Found", response=_response(404)),
                     "no model repo lab/usis-tiny on the Hub (or it is private: log in"),
    "no such revision": (lambda: RevisionNotFoundError("404 Revision Not Found", response=_response(404)),
                         "has no revision 'v9' on the Hub"),
    "gated": (lambda: GatedRepoError("403 gated", response=_response(403)),
              "is a gated repo on the Hub: ask for access at https://huggingface.co/lab/usis-tiny"),
    "not authorised": (lambda: HfHubHTTPError("401 Unauthorized", response=_response(401)), "refused access (401)"),
    "no network": (_connect_error, "the Hub cannot be reached while the Hub cache"),
}


@pytest.mark.parametrize("case", sorted(ONLINE_ERRORS))
def test_each_hub_error_is_one_message_and_exit_2(case, tmp_path, online, monkeypatch, capsys):
    make, expected = ONLINE_ERRORS[case]
    monkeypatch.setattr(HfApi, "repo_info", _raising(make()))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    args = ["--revision", "v9"] if case == "no such revision" else []
    assert main(["generate", "--checkpoint", REPO, "--labels", str(tmp_path), "--out", str(tmp_path / "o"),
                 *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert expected in line, line
    assert not (tmp_path / "o").exists()


def test_offline_with_nothing_cached_and_a_repo_that_is_not_a_usis_model(run, tmp_path, offline, monkeypatch,
                                                                           capsys):
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    _label_map(tmp_path / "labels/m.png")
    # every command shares the resolution: one message, exit 2
    commands = {
        "generate": ["generate", "--checkpoint", REPO, "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "o")],
        "synthesize": ["synthesize", "--checkpoint", REPO, "--labels", str(tmp_path / "labels"), "--out",
                       str(tmp_path / "o"), "--no-progress"],
        "evaluate": ["evaluate", "--checkpoint", REPO, "--out", str(tmp_path / "o")],
        "app": ["app", "--checkpoint", REPO],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        (line,) = _error_lines(err)
        assert "Traceback" not in err and f"error: {REPO}: no such local file or folder, and HF_HUB_OFFLINE=1" in line
        assert str(cache) in line, line
    # cached, but at another revision
    _hub_cache(cache, run / "exported")
    assert main([*commands["generate"], "--revision", "v2"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"{REPO} at revision 'v2': no such local file or folder, and HF_HUB_OFFLINE=1" in line
    # a repo without the export's files (say, a transformers model) is not a usis model
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert/config.json").write_text('{"model_type": "bert"}')
    _hub_cache(cache, tmp_path / "bert", repo="lab/bert", files=("config.json",))
    assert main(["generate", "--checkpoint", "lab/bert", "--labels", str(tmp_path / "labels"), "--out",
                 str(tmp_path / "o")]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "lab/bert is not a usis model: the repo holds no generator.safetensors" in line
    assert "--push-to-hub lab/bert" in line


# ------------------------------------------------------------------------------------------- pushing


class StandInHub:
    """HfApi's create_repo and create_commit, recorded: what would have been sent, read at call time."""

    def __init__(self, monkeypatch, fail_with=None):
        self.repos: list[dict] = []
        self.commits: list[dict] = []
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.repos.append({"repo_id": repo_id, **kwargs})
            return f"https://huggingface.co/{repo_id}"

        def create_commit(api, repo_id, operations, **kwargs):
            if fail_with is not None:
                raise fail_with
            files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
            hub.commits.append({"repo_id": repo_id, "files": files, **kwargs})

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)


def test_push_uploads_the_card_config_and_weights_only(run, tmp_path, online, monkeypatch, capsys):
    hub = StandInHub(monkeypatch)
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(run / "checkpoints/latest.pt"), "--out", str(out), "--push-to-hub",
                 REPO, "--private"]) == 0
    assert f"to https://huggingface.co/{REPO}" in capsys.readouterr().err
    (repo,) = hub.repos
    assert repo["repo_id"] == REPO and repo["private"] is True and repo["exist_ok"] is True
    (commit,) = hub.commits
    assert commit["repo_id"] == REPO and sorted(commit["files"]) == sorted(HUB_FILES)
    for name in HUB_FILES:
        assert commit["files"][name] == (out / name).read_bytes()
    # the weights are the EMA generator's alone: no optimizer state, no other network
    (tmp_path / "pushed.safetensors").write_bytes(commit["files"]["generator.safetensors"])
    pushed = load_file(tmp_path / "pushed.safetensors")
    ema = torch.load(run / "checkpoints/latest.pt", weights_only=True)["G_ema"]
    assert pushed.keys() == ema.keys() and all(torch.equal(pushed[k], ema[k]) for k in ema)
    # the card pushed names the repo in its loading examples
    meta, _, body = _front_matter(commit["files"]["README.md"].decode())
    assert meta["model-index"][0]["name"] == REPO and f'USISPipeline.from_pretrained("{REPO}")' in body
    # a folder with more in it (a checkpoint copied beside the export) still pushes the three files only
    crowded = tmp_path / "crowded"
    shutil.copytree(out, crowded)
    shutil.copy(run / "checkpoints/latest.pt", crowded / "latest.pt")
    push_export(crowded, REPO)
    assert sorted(hub.commits[-1]["files"]) == sorted(HUB_FILES)
    # the Python API pushes the same files (config.json's "source" names the folder it was loaded from)
    USISPipeline.from_pretrained(out, device="cpu").push_to_hub(REPO)
    again = hub.commits[-1]["files"]
    assert hub.repos[-1]["private"] is False and sorted(again) == sorted(HUB_FILES)
    assert again["README.md"] == commit["files"]["README.md"]
    assert again["generator.safetensors"] == commit["files"]["generator.safetensors"]
    configs = [{k: v for k, v in json.loads(files["config.json"]).items() if k != "source"}
               for files in (again, commit["files"])]
    assert configs[0] == configs[1]


def test_push_errors_are_one_message_and_exit_2(run, tmp_path, online, monkeypatch, capsys):
    StandInHub(monkeypatch, fail_with=HfHubHTTPError("403 Forbidden", response=_response(403)))
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(run / "checkpoints/latest.pt"), "--out", str(out), "--push-to-hub",
                 REPO]) == 2
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    assert "Traceback" not in err and "the Hub refused it (403)" in line and "hf auth login" in line
    assert (out / "README.md").is_file()  # the export itself was written: push it again once logged in
    for bad in (["--push-to-hub", "not-a-repo"], ["--private"]):
        assert main(["export", "--checkpoint", str(run / "checkpoints/latest.pt"), "--out", str(tmp_path / "x"),
                     *bad]) == 2
        (line,) = _error_lines(capsys.readouterr().err)
        assert "org/name" in line
        assert not (tmp_path / "x").exists()  # refused before anything was written
    # offline: the stand-in fails as huggingface_hub's client does there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    StandInHub(monkeypatch, fail_with=OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode"))
    pipe = USISPipeline.from_pretrained(out, device="cpu")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1 forbids network access; unset it to push"):
        pipe.push_to_hub(REPO)
