"""The Python API (README example, USISPipeline), networks that save and load themselves, one noise
definition for training samples / generate / the pipeline, and the layering of the package."""

import ast
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, set_args, tiny_cfg
from PIL import Image

from usis import UsisError, USISPipeline
from usis.cli import main
from usis.errors import CheckpointError, DeviceError, GenerateError
from usis.generate import generate_images, load_generator
from usis.nn.build import build_networks
from usis.nn.generator import Generator
from usis.nn.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "synthetic", "--out", str(out), "--iters", "2", "--no-progress",
                 *set_args(TINY + ["model.pixel_noise=2"])]) == 0
    exp = out / "exported"
    assert main(["export", "--checkpoint", str(out / "checkpoints/latest.pt"), "--out", str(exp)]) == 0
    return out


def _label_png(path: Path, h=64, w=64, k=9) -> np.ndarray:
    ids = (np.arange(h)[:, None] // 8 + np.arange(w)[None, :] // 16) % k
    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)
    return ids


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "USISPipeline.from_pretrained" in b)
    assert '"exported/"' in example and '"label.png"' in example
    return example


@pytest.mark.parametrize("source", ["export", "checkpoint"])
def test_readme_python_example_runs(run, tmp_path, monkeypatch, source):
    example = _readme_example()
    if source == "export":
        shutil.copytree(run / "exported", tmp_path / "exported")
    else:
        example = example.replace('"exported/"', repr(str(run / "checkpoints/latest.pt")))
    _label_png(tmp_path / "label.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    for k in range(3):
        img = np.asarray(Image.open(tmp_path / f"image_seed{k}.png"))
        assert img.shape == (64, 64, 3) and img.std() > 0
    assert Image.open(tmp_path / "label_color.png").size == (64, 64)
    # the same images as `usis generate --seed k`
    assert main(["generate", "--checkpoint", str(run / "checkpoints/latest.pt"), "--labels",
                 str(tmp_path / "label.png"), "--out", str(tmp_path / "cli"), "--n", "3", "--seed", "0"]) == 0
    for k in range(3):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"image_seed{k}.png")),
                              np.asarray(Image.open(tmp_path / "cli" / f"label_seed{k}.png")))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "image_seed0.png")),
                              np.asarray(Image.open(tmp_path / "image_seed1.png")))


def test_pipeline_inputs_batches_and_outputs(run, tmp_path):
    pipe = USISPipeline.from_pretrained(run / "exported", device="cpu")
    assert pipe.size == (64, 64) and pipe.num_classes == 10 and len(pipe.class_names) == len(pipe.palette) == 10
    ids = _label_png(tmp_path / "a.png")
    from_pil = pipe(Image.open(tmp_path / "a.png"), seeds=[5], output_type="pt")
    from_np = pipe(ids, seeds=5, output_type="pt")
    from_pt = pipe(torch.from_numpy(ids), seeds=[5], output_type="pt")
    assert from_pil.shape == (1, 3, 64, 64) and torch.equal(from_pil, from_np) and torch.equal(from_np, from_pt)
    # a list of maps -> a list per map; an image does not depend on its batch
    both = pipe([ids, ids[::-1].copy()], seeds=[5, 6], output_type="pt", batch_size=3)
    assert len(both) == 2 and both[0].shape == (2, 3, 64, 64)
    assert torch.allclose(both[0][:1], from_np, atol=1e-5)
    # a smaller map is resized to the model's size (nearest)
    assert pipe(ids[::2, ::2], seeds=[1])[0].size == (64, 64)
    # per-region style changes the image
    assert not torch.equal(pipe(ids, seeds=[5], local_style=True, output_type="pt"), from_np)
    # precision: bfloat16 weights give nearly the same image
    half = USISPipeline.from_pretrained(run / "exported", device="cpu", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert (half(ids, seeds=[5], output_type="pt") - from_np).abs().mean() < 0.1


def test_pipeline_rejects_bad_input_with_one_message(run):
    pipe = USISPipeline.from_pretrained(run / "checkpoints/latest.pt", device="cpu")
    with pytest.raises(GenerateError, match=r"label ids \{10, 40\} are outside \[0, 10\)"):
        pipe(np.array([[0, 10], [40, 1]]))
    with pytest.raises(UsisError, match="H x W class ids"):
        pipe(np.zeros((2, 3, 4, 5), dtype=np.int64))
    with pytest.raises(UsisError, match="must be integers"):
        pipe(np.full((4, 4), 0.5))
    with pytest.raises(UsisError, match="expected a PIL image"):
        pipe("label.png")
    with pytest.raises(DeviceError, match="not a device name"):
        pipe.to("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            pipe.to("cuda")


def test_training_samples_generate_and_pipeline_agree(tmp_path):
    """One noise definition: the grid's column for seed s == `usis generate --seed s` == pipe(seeds=[s])."""
    from usis.train.samples import first_items
    from usis.train.trainer import Trainer

    # NCHW as the loaded generator: in channels-last (the synthetic preset's default) the trainer's samples
    # differ from an NCHW generator's by float rounding (~1e-5), which is test_speed's subject, not this one's
    trainer = Trainer(tiny_cfg("model.pixel_noise=2", "train.channels_last=false"), tmp_path, progress=False)
    trainer.fit(2, eval_at_start=False)
    labels, _ = first_items(trainer.val_data)
    trainer.refresh_ema_bn()
    sampled = trainer.generate(labels, 7)
    gen = load_generator(tmp_path / "checkpoints/latest.pt")
    assert torch.allclose(sampled, generate_images(gen.G, labels, [7] * len(labels)), atol=1e-6)
    pipe = USISPipeline.from_pretrained(tmp_path / "checkpoints/latest.pt", device="cpu")
    # alone vs in a batch of 2: ~2e-6 from the batch's numerics (an 8-bit pixel is 8e-3)
    assert torch.allclose(sampled[1:2], pipe(labels[1], seeds=[7], output_type="pt"), atol=1e-5)
    # per image seeds: image i of a batch is the image of its own seed alone
    both = trainer.generate(labels[:2], [3, 4])
    assert torch.allclose(both[1:], trainer.generate(labels[1:2], 4), atol=1e-5)


# ------------------------------------------------------------------------------------------- contracts


def _nets():
    torch.manual_seed(0)
    nets = build_networks(tiny_cfg())
    return {"generator": nets.G, "segmenter": nets.S, "discriminator": nets.D, "decoder": nets.decoder}


def _inputs(name, nets):
    g = torch.Generator().manual_seed(0)
    net = nets[name]
    if name == "generator":
        m = torch.nn.functional.one_hot(torch.randint(0, net.num_classes, (2, 64, 64), generator=g), net.num_classes)
        z = torch.randn(2, net.z_dim, generator=g)
        return (m.permute(0, 3, 1, 2).float(), z, net.sample_pixel_noise(2, 64, 64, generator=g))  # no fresh draws
    x = torch.randn(2, 3, 64, 64, generator=g)
    if name == "decoder":
        with torch.no_grad():
            return ([f.clone() for f in nets["discriminator"].eval()(x, return_features=True)[1]],)
    return (x,)


def _first(out):
    return out if torch.is_tensor(out) else out[0]


@pytest.mark.parametrize("name", ["generator", "segmenter", "discriminator", "decoder"])
def test_network_contract_save_load_determinism_device(name, tmp_path):
    nets = _nets()
    net = nets[name].eval()
    x = _inputs(name, nets)
    with torch.no_grad():
        y = _first(net(*x))
        assert torch.equal(y, _first(net(*x)))  # deterministic in eval mode
    folder = net.save_pretrained(tmp_path / name)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["class"] == type(net).__name__ and meta["config"] == net.config
    loaded = type(net).from_pretrained(folder)
    assert loaded.config == net.config and not loaded.training
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    with torch.no_grad():
        assert torch.equal(y, _first(loaded(*x)))
    moved = loaded.to("meta")  # a device move keeps the config and moves every tensor
    assert all(t.device.type == "meta" for t in moved.state_dict().values()) and moved.config == net.config


def test_from_pretrained_refuses_the_wrong_folder(tmp_path):
    torch.manual_seed(0)
    G = Generator(5, ch=2, z_dim=4, spade_hidden=8)
    G.save_pretrained(tmp_path / "g")
    with pytest.raises(CheckpointError, match="not a usis-network folder"):
        Segmenter.from_pretrained(tmp_path / "g")
    meta = json.loads((tmp_path / "g/config.json").read_text())
    (tmp_path / "g/config.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(CheckpointError, match="newer usis"):
        Generator.from_pretrained(tmp_path / "g")
    with pytest.raises(CheckpointError, match="no config.json"):
        Generator.from_pretrained(tmp_path / "nothing")


def test_export_is_save_pretrained(run):
    G = Generator.from_pretrained(run / "exported")
    gen = load_generator(run / "checkpoints/latest.pt")
    assert G.config == gen.G.config
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), gen.G.state_dict().values(), strict=True))
    meta = json.loads((run / "exported/config.json").read_text())
    assert meta["format"] == "usis-generator" and meta["run"]["model"]["num_classes"] == 10 and meta["step"] == 2


# ---------------------------------------------------------------------------------------------- layering


def _imports(path: Path, package_root: Path) -> set[str]:
    """The usis modules ``path`` imports, at module level or inside functions (a lazy import that closes a
    cycle is still a cycle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("usis"):
            found.add(node.module)
            for alias in node.names:  # "from usis.nn import build" imports the module usis.nn.build
                sub = f"{node.module}.{alias.name}"
                if (package_root / (sub.replace(".", "/") + ".py")).exists():
                    found.add(sub)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("usis"))
    return found


def test_the_package_has_no_import_cycle():
    src = ROOT / "src"
    modules = {}
    for path in (src / "usis").rglob("*.py"):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {m: {i for i in _imports(p, src) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    # the layering: nothing below the entry points imports them, generate never touches train/
    lower = [m for m in modules if m.split(".")[1:2] and m.split(".")[1] in ("nn", "data", "metrics", "utils")]
    for m in lower + ["usis.losses", "usis.checkpoint", "usis.errors", "usis.config"]:
        bad = {i for i in graph[m] if i.startswith(("usis.train", "usis.cli", "usis.generate", "usis.evaluate",
                                                     "usis.pipeline", "usis.demo"))}
        assert not bad, f"{m} imports {bad}"
    assert not {i for i in graph["usis.generate"] if i.startswith("usis.train")}


def test_a_checkpoint_from_a_newer_usis_gets_a_clear_message(run, tmp_path, capsys):
    state = torch.load(run / "checkpoints/latest.pt", weights_only=True)
    newer = tmp_path / "run/checkpoints/latest.pt"
    newer.parent.mkdir(parents=True)
    torch.save({**state, "version": 99}, newer)
    label = tmp_path / "a.png"
    _label_png(label)
    assert main(["generate", "--checkpoint", str(newer), "--labels", str(label), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "newer usis" in err and "format 99" in err and "Traceback" not in err
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--no-progress"]) == 2
    assert "newer usis" in capsys.readouterr().err


def test_imports_inside_functions_are_only_the_lazy_ones():
    """Imports belong at the top of a module; inside a function only in the CLI (fast --help), the package's
    lazy API, and for slow or optional dependencies, each marked with a "# lazy: why" comment."""
    bad = []
    for path in sorted((ROOT / "src/usis").rglob("*.py")):
        if path.name in ("cli.py", "__init__.py"):
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        block = " ".join(lines[sub.lineno - 1:sub.end_lineno])
                        if "# lazy:" not in block:
                            bad.append(f"{path.relative_to(ROOT)}:{sub.lineno}: {lines[sub.lineno - 1].strip()}")
    assert not bad, "imports inside functions without a '# lazy:' reason:\n" + "\n".join(bad)
