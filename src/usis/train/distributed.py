"""Data-parallel training: several processes, one model replica each, gradients averaged every step.

Two ways in:

* ``train.nproc=N`` (``usis train ... --set train.nproc=2``): :func:`launch` starts N worker processes on
  this machine (CPU: ``gloo``, one intra-op thread each unless ``train.num_threads`` says otherwise;
  CUDA: ``nccl``, one GPU each). On a CPU this is the fast way to use several cores: the networks are
  small, so one process with two intra-op threads is barely faster than one thread, while two
  processes of one thread each do nearly twice the work (benchmarks/RESULTS.md).
* ``torchrun --nproc-per-node N -m usis.cli train ...``: the process group comes from torchrun's
  environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

``train.batch_size`` is the GLOBAL batch in both cases (as in StyleGAN2-ADA): each of the N processes
draws ``batch_size / N`` label maps and as many photos per step, from its own share of every epoch.
All replicas start from rank 0's weights and buffers, average their gradients before every optimizer
step (one flattened all-reduce per update, so the replicas stay identical) and stop at the same step.
Rank 0 alone writes files (checkpoints, samples, logs) and evaluates; batch-norm statistics are per
process, as with plain ``DistributedDataParallel`` (``model.g_norm=syncbatch`` syncs them on CUDA).

The hand-written gradient all-reduce instead of ``DistributedDataParallel``: the discriminator's R1
penalty differentiates through the network twice (``create_graph=True``), which DDP does not support,
and the training step freezes and unfreezes networks between its phases.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from usis.errors import install_warning_format


class Dist:
    """The process group of a run as the trainer sees it; with ``world_size == 1`` every call is a no-op."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int | None = None):
        self.rank, self.world_size = int(rank), int(world_size)
        self.local_rank = self.rank if local_rank is None else int(local_rank)
        if self.world_size > 1 and not dist.is_initialized():
            raise RuntimeError("a distributed run needs torch.distributed initialised first (see usis.train.distributed)")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @torch.no_grad()
    def broadcast_modules(self, modules: Iterable[nn.Module | None]) -> None:
        """Copy rank 0's parameters and buffers (BN statistics, spectral-norm vectors) to every rank."""
        if not self.enabled:
            return
        for module in modules:
            if module is not None:
                for t in list(module.parameters()) + list(module.buffers()):
                    dist.broadcast(t.data, src=0)

    @torch.no_grad()
    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace every existing ``.grad`` by its mean over the ranks (one all-reduce of a flat buffer)."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the ranks (so that every rank takes the same branch)."""
        if not self.enabled:
            return [bool(f) for f in flags]
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


from_environment_used = False  # this process joined a torchrun process group (usis.cli.entry exits fast)


def from_environment() -> Dist:
    """The process group of a ``torchrun`` launch (initialised here if needed), or a single process."""
    global from_environment_used
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    from_environment_used = True
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return Dist(rank, world, local)


def resolve_nproc(nproc: int, batch_size: int, use_cuda: bool) -> int:
    """``train.nproc`` as a process count: 0 (auto) -> one process on CUDA; on a CPU one process per core,
    at most ``batch_size`` of them and a divisor of it (the global batch splits evenly)."""
    if nproc > 0:
        return nproc
    if use_cuda:
        return 1
    return max(n for n in range(1, max(1, min(cpu_cores(), batch_size)) + 1) if batch_size % n == 0)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the launching process dies (no orphans training on)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _worker(rank: int, world: int, port: int, use_cuda: bool, fn: Callable[..., Any], args: tuple, results,
            timeout_s: float | None) -> None:
    _die_with_parent()
    install_warning_format()  # this worker's warnings read as the CLI's: usis: warning: ...
    # The terminal's Ctrl-C reaches every process of the group once; the trainer's own handler (installed
    # in fit) turns it into a clean stop. Until then a Ctrl-C ends this worker like any Python program.
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(rank)
    extra = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, **extra)
    try:
        out = fn(Dist(rank, world, rank), *args)
        if rank == 0:  # plain pickle: tensors by value, not as shared memory of a process about to exit
            results.put(pickle.dumps(out))  # a SimpleQueue writes to the pipe before put returns
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other ranks may never get there
        raise
    shutdown()
    exit_now(0)


def shutdown() -> None:
    """End this process's part in the process group: wait until every rank got here (none tears down its
    connections while another still talks), then destroy the group. A no-op without one."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def exit_now(code: int) -> None:
    """Leave a finished worker process without the interpreter's finalisation.

    With gloo on torch 2.14 (CPU), about one worker exit in thirty aborted with ``terminate called
    without an active exception`` (SIGABRT) after all its work and the group's destruction were done:
    a c10d/gloo thread met the C++ teardown of the exiting interpreter (faulthandler showed no Python
    frame left, so it was past the ``atexit`` handlers). The handlers still run here, while everything
    is alive (multiprocessing's finalizers: without them the resource tracker reports tqdm's locks as
    leaked semaphores); then the process ends with the worker's exit code. Every file is closed and
    the result is in the pipe by then: nothing is lost.
    """
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)  # CPython: the handlers Py_Finalize would run
    if run_exitfuncs is not None:
        run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def launch(fn: Callable[..., Any], nproc: int, args: tuple = (), use_cuda: bool = False,
           timeout_s: float | None = None) -> Any:
    """Run ``fn(Dist, *args)`` in ``nproc`` new processes joined in one process group; returns rank 0's result.
    ``timeout_s``: how long a collective may wait for the other ranks (torch's default: 30 min).

    ``fn`` and ``args`` must be picklable (module-level function, plain data): the workers are started
    with ``spawn``. SIGTERM to this process is passed on to the workers (which save and stop); a
    terminal's Ctrl-C reaches them directly, so this process only waits for them.
    """
    if use_cuda and nproc > torch.cuda.device_count():
        raise RuntimeError(f"train.nproc={nproc} but this machine has {torch.cuda.device_count()} GPU(s): "
                           f"use at most one process per GPU (--set train.nproc={torch.cuda.device_count()})")
    results = mp.get_context("spawn").SimpleQueue()
    ctx = mp.start_processes(_worker, args=(nproc, free_port(), use_cuda, fn, args, results, timeout_s),
                             nprocs=nproc, join=False, start_method="spawn")

    def forward(signum, frame):
        for p in ctx.processes:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
           signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: None)}
    try:
        while not ctx.join():
            pass
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return pickle.loads(results.get()) if not results.empty() else None
