"""Data-parallel training on the CPU (gloo): replicas stay identical, resume is exact, SIGTERM stops cleanly."""

import hashlib

import torch
from conftest import TINY, assert_identical, tiny_cfg, train_until_sigterm

from usis.cli import main
from usis.train.distributed import Dist, launch, resolve_nproc
from usis.train.trainer import Trainer

NPROC = ["--set", "train.nproc=2"]


def _tiny_args(out, iters):
    args = ["train", "--preset", "synthetic", "--out", str(out), "--iters", str(iters), "--no-progress"]
    for s in TINY:
        args += ["--set", s]
    return args + NPROC


def _average_worker(dist: Dist):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    for i, p in enumerate(net.parameters()):
        p.grad = torch.full_like(p, float(dist.rank + 1) * (i + 1))
    dist.average_gradients(net.parameters())
    flags = dist.any(dist.rank == 1, False)
    return dist.all_gather_object(([p.grad.clone() for p in net.parameters()], flags))


def test_average_gradients_is_the_mean_over_ranks():
    per_rank = launch(_average_worker, 2)
    assert len(per_rank) == 2
    for grads, flags in per_rank:
        assert torch.allclose(grads[0], torch.full((2, 3), 1.5))  # (1 + 2) / 2
        assert torch.allclose(grads[1], torch.full((2,), 3.0))  # (2 + 4) / 2
        assert flags == [True, False]  # rank 1's flag reached rank 0 too


def _shm_worker(dist: Dist, fail_room: bool):
    import usis.train.distributed as D

    if fail_room and dist.rank == 0:  # /dev/shm without the room (a container's 64 MB): gloo for every set
        def no_room(fd, offset, length):
            raise OSError(28, "No space left on device")
        D.os.posix_fallocate = no_room
    shm = D._shm
    nets = [torch.nn.Linear(7, 5), torch.nn.Conv2d(3, 4, 3)]
    results = {"shm": [], "gloo": []}
    for path in ("shm", "gloo"):
        D._shm = shm if path == "shm" else None
        torch.manual_seed(10 + dist.rank)
        for _ in range(5):  # generations; two sets in flight at once, finished in the other order
            for net in nets:
                for p in net.parameters():
                    p.grad = torch.randn_like(p)
            first = dist.start_averaging(nets[0].parameters())
            second = dist.start_averaging(nets[1].parameters())
            second.wait()
            first.wait()
            results[path].append([p.grad.clone() for net in nets for p in net.parameters()])
    D._shm = shm
    used = shm is not None and any(v is not None for v in shm.sets.values())
    return dist.all_gather_object((results, used))


def test_shared_memory_average_equals_gloo_bit_for_bit():
    """launch() on a CPU averages through /dev/shm: the same bits as gloo's all-reduce, on every rank, with two
    averages in flight at once (each set's generations alternate between the two halves of its buffer)."""
    per_rank = launch(_shm_worker, 2, (False,))
    for results, used in per_rank:
        assert used == (__import__("platform").machine().lower() in ("x86_64", "amd64"))
        for a, b in zip(results["shm"], results["gloo"], strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    for a, b in zip(per_rank[0][0]["shm"], per_rank[1][0]["shm"], strict=True):  # the ranks agree
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # the mean, not just the same on both: rank 0's and rank 1's draws averaged
    torch.manual_seed(10)
    r0 = [torch.randn(5, 7), torch.randn(5)]
    torch.manual_seed(11)
    r1 = [torch.randn(5, 7), torch.randn(5)]
    assert torch.equal(per_rank[0][0]["shm"][0][0], (r0[0] + r1[0]) / 2)


def test_shared_memory_without_room_falls_back_to_gloo_on_every_rank():
    per_rank = launch(_shm_worker, 2, (True,))
    for results, used in per_rank:
        assert not used  # rank 1 could have mapped nothing: both went to gloo
        for a, b in zip(results["shm"], results["gloo"], strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _fingerprint(trainer: Trainer) -> str:
    h = hashlib.sha256()
    for name, net in trainer.nets.named().items():
        for k, v in net.state_dict().items():
            if "running_" in k or "num_batches" in k:  # BN statistics are per process by design
                continue
            h.update(name.encode() + k.encode() + v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _fit_worker(dist: Dist, cfg, out, iters):
    trainer = Trainer(cfg, out, dist=dist, progress=False)
    start = _fingerprint(trainer)
    trainer.fit(iters, eval_at_start=False)
    return dist.all_gather_object((start, _fingerprint(trainer), trainer.step, trainer.local_batch))


def test_replicas_start_equal_and_stay_equal(tmp_path):
    per_rank = launch(_fit_worker, 2, (tiny_cfg(), tmp_path, 3))
    (start0, end0, step0, lb0), (start1, end1, step1, lb1) = per_rank
    assert start0 == start1  # rank 1 took rank 0's initial weights (it drew its own from seed + 1)
    assert end0 == end1  # averaged gradients: the replicas never drift apart
    assert end0 != start0  # and they did train
    assert step0 == step1 == 3 and lb0 == lb1 == 1  # global batch 2 over 2 processes


def _eval_worker(dist: Dist, cfg, out):
    # rank 0 evaluates alone (an untrained evaluator stands in for the one that trains for a minute);
    # nothing in the metrics may wait for the other rank
    from usis.data import build_datasets
    from usis.metrics import synthetic_eval as se
    from usis.metrics.periodic import make_evaluator

    se.SyntheticEvaluator.load_or_train = classmethod(
        lambda cls, height=64, width=128, cache_dir=None, device="cpu", progress=True: cls(se.EvalNet(), height,
                                                                                            width, device=device))
    evaluator = make_evaluator(cfg, build_datasets(cfg, "val")) if dist.is_main else None
    trainer = Trainer(cfg, out, dist=dist, evaluator=evaluator, progress=False)
    summary = trainer.fit(2)
    return dist.all_gather_object((summary.get("final_metrics"), trainer.best))


def test_evaluation_in_a_data_parallel_run(tmp_path):
    cfg = tiny_cfg("train.eval_every=1", "eval.num_images=4")
    per_rank = launch(_eval_worker, 2, (cfg, tmp_path), timeout_s=120)
    (m0, best0), (m1, best1) = per_rank
    assert {"miou", "miou_ceiling", "sfid"} <= m0.keys() and m0 == m1  # rank 1 learns rank 0's result
    assert best0 == best1 and "sfid" in best0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # steps 0, 1, 2, written once (by rank 0)
    assert (tmp_path / "checkpoints/best.pt").is_file()


def test_two_processes_resume_bit_identical(tmp_path):
    n = 3  # odd: the lazy R1 phase crosses the resume point
    assert main(_tiny_args(tmp_path / "a", 2 * n)) == 0
    assert main(_tiny_args(tmp_path / "b", n)) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--iters", str(2 * n), "--no-progress"]) == 0
    sa = torch.load(tmp_path / "a/checkpoints/latest.pt", weights_only=True)
    sb = torch.load(tmp_path / "b/checkpoints/latest.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 2 * n
    assert len(sa["rng_ranks"]) == 2  # each rank's noise stream continues where it stopped
    assert not torch.equal(sa["rng_ranks"][0]["torch"], sa["rng_ranks"][1]["torch"])
    assert_identical(sa, sb)


def test_automatic_process_count(monkeypatch):
    assert resolve_nproc(3, 6, use_cuda=False) == 3  # explicit
    assert resolve_nproc(0, 8, use_cuda=True) == 1  # one GPU unless asked for more
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert resolve_nproc(0, 2, use_cuda=False) == 2  # never more processes than images in the batch
    assert resolve_nproc(0, 6, use_cuda=False) == 3  # a divisor of the batch, at most one per core
    assert resolve_nproc(0, 8, use_cuda=False) == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert resolve_nproc(0, 8, use_cuda=False) == 1


def test_batch_must_split_over_the_processes(tmp_path, capsys):
    args = _tiny_args(tmp_path, 2) + ["--set", "train.batch_size=3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.nproc=2" in err and "batch" in err


def test_sigterm_to_the_launcher_stops_every_process_cleanly(tmp_path):
    # the launcher passes SIGTERM on; both workers stop at the same step, save and exit 0
    state = train_until_sigterm(tmp_path, ["train.nproc=2"])
    assert len(state["rng_ranks"]) == 2


def _torchrun_two_nodes(out, iters, resume=False):
    """``torchrun --nnodes 2`` as two launchers on this machine (one process each), rendezvous on
    127.0.0.1 over gloo: what a run across two machines does, minus the network."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from usis.train.distributed import free_port

    port = free_port()
    train = ["--out", str(out), "--iters", str(iters), "--no-progress"]
    if resume:
        train += ["--resume"]
    else:
        train += ["--preset", "synthetic"] + [a for s in TINY + ["train.nproc=2"] for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
                               str(node), "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port",
                               str(port), "-m", "usis.cli", "train"] + train,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for node in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, outs, strict=True):
        assert p.returncode == 0, text[-3000:]
    return outs


def test_two_nodes_train_checkpoint_and_resume_like_one_node(tmp_path):
    n = 3
    assert main(_tiny_args(tmp_path / "one_node", 2 * n)) == 0  # one launcher, two processes
    _torchrun_two_nodes(tmp_path / "two_nodes", 2 * n)
    _torchrun_two_nodes(tmp_path / "resumed", n)
    _torchrun_two_nodes(tmp_path / "resumed", 2 * n, resume=True)
    ref = torch.load(tmp_path / "one_node/checkpoints/latest.pt", weights_only=True)
    for name in ("two_nodes", "resumed"):
        state = torch.load(tmp_path / name / "checkpoints/latest.pt", weights_only=True)
        assert state["step"] == 2 * n and len(state["rng_ranks"]) == 2
        assert_identical(ref, state)
