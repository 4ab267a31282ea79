"""CUDA: the same networks and training loop on a GPU (run by benchmarks/gpu_check.sh on a GPU machine).

These tests need a CUDA device and are skipped without one; everything they exercise also runs on the
CPU in the other test modules.
"""

import copy

import pytest
import torch
from conftest import TINY

from usis import config as C
from usis.generate import load_generator
from usis.nn.build import build_networks
from usis.nn.wavelets import dwt, iwt
from usis.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# TINY, wider and on the GPU
CUDA_TINY = [*TINY, "data.width=128", "data.synthetic_train=16", "model.g_ch=4", "model.s_ch=4", "model.d_ch=8",
             "model.d_max_ch=32", "train.device=cuda"]


@pytest.mark.parametrize("g_type", ["spade", "wavelet"])
def test_networks_agree_between_cpu_and_cuda(g_type):
    torch.manual_seed(0)
    cfg = C.apply_overrides(C.get_preset("synthetic"), CUDA_TINY + [f"model.g_type={g_type}"])
    nets = build_networks(cfg)
    labels = torch.randint(0, cfg.data.num_classes, (2, 64, 128))
    onehot = torch.nn.functional.one_hot(labels, cfg.data.num_classes).permute(0, 3, 1, 2).float()
    z = torch.randn(2, cfg.model.z_dim)
    noise = nets.G.sample_pixel_noise(2, 64, 128, generator=torch.Generator().manual_seed(1))  # the same on both
    x = torch.rand(2, 3, 64, 128) * 2 - 1
    with torch.no_grad():
        for name, net, inp in (("G", nets.G, (onehot, z, noise)), ("S", nets.S, (x,)), ("D", nets.D, (x,))):
            net.eval()
            cpu = net(*inp)
            gpu = copy.deepcopy(net).cuda()(*(t.cuda() for t in inp)).cpu()
            assert gpu.shape == cpu.shape
            err = (gpu - cpu).abs().max().item()
            assert err < 2e-2 * max(1.0, cpu.abs().max().item()), f"{name}: max |cuda - cpu| = {err}"


def test_haar_roundtrip_on_cuda():
    x = torch.randn(2, 3, 32, 64, device="cuda")
    y = dwt(x)
    assert y.shape == (2, 12, 16, 32) and y.is_cuda
    assert torch.allclose(iwt(y), x, atol=1e-5)


@pytest.mark.parametrize("amp,extra", [(False, []), (True, []), (False, ["model.g_type=wavelet", "model.g_ch=1"]),
                                       (False, ["train.lambda_rev=10"])], ids=["fp32", "bf16", "wavelet_G", "reverse"])
def test_training_on_cuda_saves_a_checkpoint_that_loads_on_cpu(tmp_path, amp, extra):
    cfg = C.apply_overrides(C.get_preset("synthetic"), CUDA_TINY + [f"train.amp={str(amp).lower()}", *extra])
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    assert tr.device.type == "cuda"
    tr.fit(3, eval_at_start=False)
    state = torch.load(tmp_path / "run/checkpoints/latest.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 3
    for name in ("G", "G_ema", "S", "D"):
        for k, v in state[name].items():
            assert v.device.type == "cpu"
            if v.is_floating_point():
                assert torch.isfinite(v).all(), f"{name}.{k} is not finite after 3 CUDA steps"
    # and the generator from it runs on the CPU
    G = load_generator(tmp_path / "run/checkpoints/latest.pt", device="cpu").G
    labels = torch.randint(0, cfg.data.num_classes, (1, 64, 128))
    onehot = torch.nn.functional.one_hot(labels, cfg.data.num_classes).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        img = G(onehot, torch.zeros(1, cfg.model.z_dim))
    assert img.shape == (1, 3, 64, 128) and torch.isfinite(img).all()


def test_steady_state_training_steps_never_wait_for_the_gpu(tmp_path):
    # issue 19: no host-device synchronisation inside Trainer.train_step (losses stay on the device; the
    # divergence check reads them when the loop logs). set_sync_debug_mode("error") raises on any sync.
    cfg = C.apply_overrides(C.get_preset("synthetic"), CUDA_TINY + ["train.channels_last=true", "train.amp=true"])
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    batches = [(tr.loaders.next_labels()["label"].cuda(), tr.loaders.next_photos()["image"].cuda())
               for _ in range(6)]
    for labels, photos in batches[:2]:  # warm-up: an R1 step and a plain one (r1_every=2)
        tr.train_step(labels, photos)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for labels, photos in batches[2:]:
            losses = tr.train_step(labels, photos)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(v.is_cuda for v in losses.values())
    tr.divergence.observe(tr.step, losses)
    assert tr.divergence.first_bad() is None
