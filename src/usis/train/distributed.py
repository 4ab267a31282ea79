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

When a process dies (``kill -9``, the kernel's out-of-memory killer, a crash in native code) the run
ends at once with one message naming its rank and the signal, and the resume command; the processes
left are stopped, never left waiting. :func:`launch` watches its workers and stops the others a few
seconds after the first one fails (:data:`GRACE_S`); under torchrun its elastic agent does the same and
reports the rank. Backstop for a process that is alive but silent (hung, stopped, a lost machine):
every collective gives up after ``train.dist_timeout`` seconds (default :data:`DEFAULT_TIMEOUT_S`);
where the other ranks wait while rank 0 works alone (its evaluator's setup, every evaluation and
checkpoint) they wait up to :data:`SOLO_WAIT_S`.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import mmap
import os
import pickle
import platform
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from tqdm import tqdm

from usis.checkpoint import checkpoint_path
from usis.errors import ConfigError, UsisError, install_warning_format
from usis.nn.layers import _is_channels_last, from_memory_order, in_memory_order

DEFAULT_TIMEOUT_S = 120.0  # train.dist_timeout: how long a collective waits for the other processes
SOLO_WAIT_S = 3600.0  # how long the others wait while rank 0 works alone (evaluation, checkpoints)
GRACE_S = 5.0  # launch: once a worker failed, how long the others get to end by themselves


class CollectiveFailed(UsisError, RuntimeError):
    """A collective of this process failed: another process of the run ended or stopped answering.
    Under :func:`launch` the launcher reports the cause instead; under torchrun it is the survivors' line.
    ``rank``: this process's; ``reason``: gloo's words; ``waited``: the timeout in seconds."""

    def __init__(self, message: str, rank: int | None = None, reason: str = "", waited: float | None = None):
        super().__init__(message)
        self.rank, self.reason, self.waited = rank, reason, waited

    def __reduce__(self):
        return type(self), (str(self), self.rank, self.reason, self.waited)

    @property
    def timed_out(self) -> bool:
        return _timed_out(self.reason)

    def with_hint(self, hint: str) -> CollectiveFailed:
        return CollectiveFailed(f"{self}\n{hint}" if hint else str(self), self.rank, self.reason, self.waited)


class WorkerDied(UsisError, RuntimeError):
    """A worker of :func:`launch` died (a signal, or an exit without a word) or hung; the others were stopped.
    ``rank`` and ``exitcode`` (negative: the signal number) say which and how."""

    def __init__(self, message: str, rank: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.rank, self.exitcode = rank, exitcode

    def __reduce__(self):
        return type(self), (str(self), self.rank, self.exitcode)


class Dist:
    """The process group of a run as the trainer sees it; with ``world_size == 1`` every call is a no-op.

    A collective that fails (another process died, or none answered for ``train.dist_timeout`` seconds)
    raises :class:`CollectiveFailed` (one line for the CLI) instead of a RuntimeError from deep in gloo."""

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
        self._wait_for_main()  # rank 0 may have set up its evaluator first (a minute, the first time)
        with _collective("broadcast", self.rank):
            for module in modules:
                if module is not None:
                    for t in list(module.parameters()) + list(module.buffers()):
                        dist.broadcast(t.data, src=0)

    @torch.no_grad()
    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace every existing ``.grad`` by its mean over the ranks (one all-reduce of a flat buffer)."""
        self.start_averaging(params).wait()

    @torch.no_grad()
    def start_averaging(self, params: Iterable[nn.Parameter]) -> PendingAverage:
        """:meth:`average_gradients` started in the background: the all-reduce runs while this process
        goes on with work that neither reads nor writes these gradients; ``.wait()`` (before anything
        reads them) finishes it. Other collectives may be issued meanwhile (every rank issues the same
        ones in the same order)."""
        if not self.enabled:
            return PendingAverage()
        with_grad = [p for p in params if p.grad is not None]
        grads = [p.grad for p in with_grad]
        if not grads:
            return PendingAverage()
        if _shm is not None:
            pending = _shm.start(with_grad, grads)
            if pending is not None:
                return pending
        flat = torch.cat([_in_memory_order(g) for g in grads])
        with _collective("all_reduce", self.rank):
            work = dist.all_reduce(flat, async_op=True)
        return PendingAverage(with_grad, grads, flat, work, self.rank, self.world_size)

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the ranks (so that every rank takes the same branch)."""
        if not self.enabled:
            return [bool(f) for f in flags]
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=self._device())
        with _collective("all_reduce", self.rank):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects). The others wait for it up to
        :data:`SOLO_WAIT_S` (it is what they receive after rank 0 evaluated or saved alone)."""
        if not self.enabled:
            return obj
        self._wait_for_main()
        box = [obj]
        with _collective("broadcast", self.rank):
            dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        with _collective("all_gather", self.rank):
            dist.all_gather_object(out, obj)
        return out

    def _wait_for_main(self) -> None:
        """Meet every rank in the patient group (:data:`SOLO_WAIT_S`); a no-op where none was made."""
        if _patient_group is not None:
            with _collective("barrier", self.rank, _patience_s):
                dist.barrier(group=_patient_group)

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class PendingAverage:
    """A gradient average in flight (:meth:`Dist.start_averaging`); ``wait()`` makes the means the ``.grad``
    of the parameters. Nothing pending (one process, or no gradients): ``wait()`` does nothing."""

    def __init__(self, params=(), grads=(), flat=None, work=None, rank: int = 0, world_size: int = 1):
        self.params, self.grads, self.flat, self.work = list(params), list(grads), flat, work
        self.rank, self.world_size = rank, world_size
        self.pending = bool(self.grads)

    def _sum(self) -> torch.Tensor:
        """The flat sum of every rank's gradients, once all of them have arrived."""
        with _collective("all_reduce", self.rank):
            self.work.wait()
        return self.flat

    @torch.no_grad()
    def wait(self) -> None:
        if not self.pending:
            return
        self.pending = False
        mean = self._sum().div_(self.world_size)
        offset = 0
        for p, g in zip(self.params, self.grads, strict=True):
            n = g.numel()
            view = _shaped_like(mean[offset:offset + n], g)
            if view is not None:  # the flat mean's own memory becomes the gradient: no copy (one op fewer
                p.grad = view     # per tensor, ~20 us each on a CPU: 2-3 ms per set in the synthetic preset)
            else:  # another layout: the parameter's gradient keeps it
                g.copy_(mean[offset:offset + n].view(g.shape))
            offset += n


def _in_memory_order(g: torch.Tensor) -> torch.Tensor:
    """``g``'s values as a 1-D tensor in the order of its memory: a view for a contiguous or a channels-last
    gradient (``reshape(-1)`` would copy the latter into NCHW order). Every rank's gradients have the same
    layouts (the networks' memory format is the run's), so the flat sums add up the same elements."""
    return in_memory_order(g).reshape(-1)


def _shaped_like(flat: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """``flat`` (from :func:`_in_memory_order`) as a tensor of ``g``'s shape and layout; None for a layout
    that cannot be viewed so."""
    return from_memory_order(flat, g) if g.is_contiguous() or _is_channels_last(g) else None


class _SharedMemoryAverage:
    """Gradient averages through shared memory, for the processes of one :func:`launch` on a CPU.

    gloo's all-reduce goes through the loopback TCP stack: in the synthetic preset's 2 x 1 step it took ~7 ms
    per call on top of the wait for the other rank, ~14 % of the step. Here each rank writes its flat
    gradients into its own slot of a buffer in ``/dev/shm`` and then its generation number; ``wait()``
    waits until every rank has written the same generation and sums the slots in rank order (for two
    ranks ``a + b``, the same bits as gloo's sum). One buffer per parameter set (its own generations), two
    halves used in turn: a rank writes generation ``k + 2`` into the half of ``k`` only after its wait for
    ``k + 1``, i.e. after every other rank wrote ``k + 1``, which each did after reading ``k``.

    The counters are plain stores, ordered after the data by x86-64's memory model (total store order): the
    path is used on x86-64 only, elsewhere gloo. It is set up (the first time a parameter set is averaged)
    with gloo collectives, so that every rank takes the same path: where ``/dev/shm`` lacks the room
    (``posix_fallocate`` fails, as in a container's 64 MB default) the set goes through gloo. A rank that
    stops answering is reported as gloo's would be: after ``train.dist_timeout`` (or at once when its
    process is gone) as a :class:`CollectiveFailed`.
    """

    def __init__(self, tag: str, rank: int, world: int):
        self.tag, self.rank, self.world = tag, rank, world
        self.sets: dict[tuple, Any] = {}  # parameter-set key -> (data, gens, pids) views, or None (gloo)
        self.gen: dict[tuple, int] = {}

    @staticmethod
    def available() -> bool:
        return platform.machine().lower() in ("x86_64", "amd64") and Path("/dev/shm").is_dir()

    def _map(self, path: Path, nbytes: int, create: bool):
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
        try:
            if create:
                os.posix_fallocate(fd, 0, nbytes)  # the room now, or an OSError (never a SIGBUS later)
            elif os.fstat(fd).st_size < nbytes:
                raise OSError(f"{path} is smaller than {nbytes} bytes")
            mm = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        return np.frombuffer(mm, dtype=np.uint8)

    def _setup(self, numel: int):
        """Rank 0 creates the buffer, the others map it; None (gloo for this set) unless all of them could."""
        path = Path("/dev/shm") / f"{self.tag}-{len(self.sets)}"
        ctl_bytes = 8 * 2 * self.world  # generations, then pids, int64
        nbytes = ctl_bytes + 4 * 2 * self.world * numel
        buf, ok = None, True
        for phase in (0, 1):  # 0: rank 0 creates; 1: the others map
            if (phase == 0) == (self.rank == 0):
                try:
                    buf = self._map(path, nbytes, create=phase == 0)
                except OSError:
                    ok = False
            flag = torch.tensor([int(ok)], dtype=torch.int32)
            with _collective("all_reduce", self.rank):
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if not flag.item() or phase == 1:  # mapped everywhere (or failed): the name is no longer needed
                if self.rank == 0:
                    path.unlink(missing_ok=True)
                if not flag.item():
                    return None
        t = torch.from_numpy(buf)
        ctl = t[:ctl_bytes].view(torch.int64)
        gens, pids = ctl[: self.world].numpy(), ctl[self.world:].numpy()
        pids[self.rank] = os.getpid()
        data = t[ctl_bytes:].view(torch.float32).view(2, self.world, numel)
        return data, gens, pids

    def start(self, params: list[nn.Parameter], grads: list[torch.Tensor]) -> PendingAverage | None:
        if any(g.dtype != torch.float32 or g.device.type != "cpu" for g in grads):
            return None
        key = tuple(id(p) for p in params) + (sum(g.numel() for g in grads),)  # the same parameter set
        if key not in self.sets:
            self.sets[key] = self._setup(key[-1])
            self.gen[key] = 0
        entry = self.sets[key]
        if entry is None:
            return None
        data, gens, pids = entry
        gen = self.gen[key] = self.gen[key] + 1
        torch.cat([_in_memory_order(g) for g in grads], out=data[gen % 2, self.rank])
        gens[self.rank] = gen  # after the data (x86-64: stores are seen in program order)
        return _SharedPending(self, params, grads, data[gen % 2], gens, pids, gen)


class _SharedPending(PendingAverage):
    """An average in flight through :class:`_SharedMemoryAverage`: this rank's slot of generation ``gen``
    is written; the sum waits for the other ranks' slots."""

    def __init__(self, owner: _SharedMemoryAverage, params, grads, slots, gens, pids, gen: int):
        super().__init__(params, grads, rank=owner.rank, world_size=owner.world)
        self.slots, self.gens, self.pids, self.gen = slots, gens, pids, gen

    def _wait_for_others(self) -> None:
        deadline = time.monotonic() + _timeout_s
        spins, next_check = 0, time.monotonic() + 1.0
        while int(self.gens.min()) < self.gen:
            spins += 1
            if spins < 2000:
                continue
            time.sleep(0.0001)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 1.0
                for q, pid in enumerate(self.pids.tolist()):
                    if q != self.rank and int(self.gens[q]) < self.gen and pid and not _pid_alive(int(pid)):
                        self._fail(f"rank {q} (pid {pid}) is gone")
            if now >= deadline:
                self._fail(f"timed out after {_timeout_s:g} s waiting for the other ranks' gradients")

    def _fail(self, reason: str) -> None:
        with _collective("all_reduce", self.rank):
            raise RuntimeError(reason)

    def _sum(self) -> torch.Tensor:
        self._wait_for_others()
        acc = torch.add(self.slots[0], self.slots[1])
        for q in range(2, self.world_size):  # in rank order, the same on every rank
            acc.add_(self.slots[q])
        return acc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_shm: _SharedMemoryAverage | None = None  # this worker's shared-memory averages (launch on a CPU), if any


class _collective:
    """``with _collective(op, rank):`` turns a failed collective into :class:`CollectiveFailed`."""

    def __init__(self, op: str, rank: int, timeout_s: float | None = None):
        self.op, self.rank, self.timeout_s = op, rank, timeout_s

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, RuntimeError) or isinstance(exc, UsisError):
            return False
        global _lost
        _lost = True
        waited = self.timeout_s if self.timeout_s is not None else _timeout_s
        reason = _gloo_reason(exc)
        setting = " (train.dist_timeout)" if self.timeout_s is None else ""
        why = (f"no answer from the other processes for {waited:g} s{setting}: one of them hung or its machine is "
               "gone" if _timed_out(reason) else "another process of the run ended")
        raise CollectiveFailed(f"rank {self.rank} (pid {os.getpid()}): a collective ({self.op}) failed: {reason}; "
                               f"{why} (its launcher, e.g. torchrun, reports which)", self.rank, reason, waited) from None


def _timed_out(reason: str) -> bool:
    return "timed out" in reason.lower() or "timeout" in reason.lower()


def _gloo_reason(exc: BaseException) -> str:
    """The useful part of a c10d / gloo error: no source path, no 'GLHF'."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text)
    return text.split(". This is typically")[0].rstrip(". ")


_timeout_s = DEFAULT_TIMEOUT_S  # this process's train.dist_timeout (for the messages)
_patient_group = None  # a gloo group with the long timeout: the waits for rank 0's solo work
_patience_s = SOLO_WAIT_S  # its timeout
_lost = False  # a collective of this process failed: it is on its way out with its message
from_environment_used = False  # this process joined a torchrun process group (usis.cli.entry exits fast)


def check_timeout(timeout_s: float | None) -> float:
    """``train.dist_timeout`` in seconds (``None``: :data:`DEFAULT_TIMEOUT_S`); a ConfigError if not > 0."""
    value = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    if not value > 0:
        raise ConfigError(f"train.dist_timeout={timeout_s}: the seconds a collective may wait for the other "
                          f"processes must be > 0 (default {DEFAULT_TIMEOUT_S:g})")
    return value


def _init_group(backend: str, timeout_s: float | None, **kwargs) -> None:
    """``init_process_group`` with the run's collective timeout, plus the patient group (every rank at once)."""
    global _timeout_s, _patient_group, _patience_s
    _timeout_s = check_timeout(timeout_s)
    _patience_s = max(SOLO_WAIT_S, _timeout_s)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=_timeout_s), **kwargs)
    _patient_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=_patience_s))


def from_environment(timeout_s: float | None = None) -> Dist:
    """The process group of a ``torchrun`` launch (initialised here if needed), or a single process.
    ``timeout_s``: ``train.dist_timeout`` (see :func:`launch`)."""
    global from_environment_used
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    from_environment_used = True
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if not dist.is_initialized():
        _name_process(rank)
        _thread_locks_for_tqdm()
        signal.signal(signal.SIGTERM, _sigterm)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        _init_group(backend, timeout_s)
    return Dist(rank, world, local)


def _sigterm(signum, frame) -> None:
    """A torchrun worker's SIGTERM outside the training loop (whose own handler stops it cleanly): the
    default (end now), except after a failed collective: torchrun's agent sends it to the survivors when a
    process died, and this one is already on its way out, with its one line and the resume command."""
    if not _lost:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


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


def _prctl(option: int, arg) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, arg, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the launching process dies (no orphans training on)."""
    _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _name_process(rank: int) -> None:
    """Linux: call this process ``usis-rank-R`` (ps, top, and the kernel's out-of-memory report name it)."""
    _prctl(15, ctypes.c_char_p(f"usis-rank-{rank}".encode()))  # PR_SET_NAME


def _thread_locks_for_tqdm() -> None:
    """tqdm's default lock holds a multiprocessing RLock, a named semaphore: a worker killed with it (kill -9,
    the out-of-memory killer) leaves the resource tracker a 'leaked semaphore objects' warning. The workers
    never share a progress bar (rank 0 alone draws one): a thread lock is all they need."""
    tqdm.set_lock(threading.RLock())


def _worker(rank: int, world: int, port: int, use_cuda: bool, fn: Callable[..., Any], args: tuple, results,
            timeout_s: float | None, shm_tag: str | None = None) -> None:
    _die_with_parent()
    _name_process(rank)
    _thread_locks_for_tqdm()
    install_warning_format()  # this worker's warnings read as the CLI's: usis: warning: ...
    # The terminal's Ctrl-C reaches every process of the group once; the trainer's own handler (installed
    # in fit) turns it into a clean stop. Until then a Ctrl-C ends this worker like any Python program.
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(rank)
    try:
        _init_group(backend, timeout_s, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        global _shm
        if shm_tag and _SharedMemoryAverage.available():
            _shm = _SharedMemoryAverage(shm_tag, rank, world)
        out = fn(Dist(rank, world, rank), *args)
        if rank == 0:  # plain pickle: tensors by value, not as shared memory of a process about to exit
            results.put(pickle.dumps(("result", rank, out)))  # a SimpleQueue writes to the pipe before put returns
        shutdown()
    except UsisError as e:  # one message, for the launcher to print (or to set aside for a root cause)
        results.put(_pickled_error(rank, e))
        exit_now(2)
    except BaseException:  # a bug: torch's spawn wrapper hands its traceback to the launcher
        if dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the other ranks may never get there
        raise
    exit_now(0)


def _pickled_error(rank: int, e: UsisError) -> bytes:
    try:
        data = pickle.dumps(("error", rank, e))
        pickle.loads(data)  # an exception whose class cannot be rebuilt from its pickle travels as its message
        return data
    except Exception:  # noqa: BLE001
        return pickle.dumps(("error", rank, UsisError(str(e))))


def shutdown() -> None:
    """End this process's part in the process group: wait until every rank got here (none tears down its
    connections while another still talks), then destroy the group. A no-op without one."""
    if dist.is_available() and dist.is_initialized():
        try:
            with _collective("barrier", dist.get_rank()):
                dist.barrier()
        finally:
            dist.destroy_process_group()


def exit_now(code: int) -> None:
    """Leave a finished worker process without the interpreter's finalisation.

    With gloo on torch 2.14 (CPU), about one worker exit in thirty aborted with ``terminate called
    without an active exception`` (SIGABRT) after all its work and the group's destruction were done:
    a c10d/gloo thread met the C++ teardown of the exiting interpreter (faulthandler showed no Python
    frame left, so it was past the ``atexit`` handlers). The handlers still run here, while everything
    is alive (multiprocessing's finalizers among them); then the process ends with the worker's exit code.
    Every file is closed and the result is in the pipe by then: nothing is lost.
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
           timeout_s: float | None = None, hint: Callable[[], str] | None = None) -> Any:
    """Run ``fn(Dist, *args)`` in ``nproc`` new processes joined in one process group; returns rank 0's result.
    ``timeout_s``: how long a collective may wait for the other ranks (``train.dist_timeout``; default
    :data:`DEFAULT_TIMEOUT_S`).

    ``fn`` and ``args`` must be picklable (module-level function, plain data): the workers are started
    with ``spawn``. SIGTERM to this process is passed on to the workers (which save and stop); a
    terminal's Ctrl-C reaches them directly, so this process only waits for them.

    When a worker fails, the others get :data:`GRACE_S` seconds to end by themselves (they do at their next
    collective), then are killed; then this raises, once: the :class:`~usis.errors.UsisError` a worker
    raised (a full disk, ...), :class:`WorkerDied` for a worker killed by a signal or hung (its rank, the
    signal, what usually causes it, then ``hint()``: what to do next), or torch's ``ProcessRaisedException``
    with the traceback of a worker's bug.
    """
    if use_cuda and nproc > torch.cuda.device_count():
        raise RuntimeError(f"train.nproc={nproc} but this machine has {torch.cuda.device_count()} GPU(s): "
                           f"use at most one process per GPU (--set train.nproc={torch.cuda.device_count()})")
    timeout_s = check_timeout(timeout_s)
    results = mp.get_context("spawn").SimpleQueue()
    shm_tag = None if use_cuda else f"usis-{os.getpid()}-{os.urandom(6).hex()}"
    ctx = mp.start_processes(_worker, args=(nproc, free_port(), use_cuda, fn, args, results, timeout_s, shm_tag),
                             nprocs=nproc, join=False, start_method="spawn")
    records: list[tuple[str, int, Any]] = []
    reader = threading.Thread(target=_read_records, args=(results, records), daemon=True)
    reader.start()  # read while they run: a result bigger than the pipe's buffer must not block its writer

    def forward(signum, frame):
        for p in ctx.processes:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
           signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: None)}
    try:
        failed, stopped = _watch(ctx.processes)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    results.put(None)  # the reader's end
    reader.join(timeout=5)  # stuck only on a message cut short by a kill
    if failed:
        raise _failure(ctx, failed, stopped, records, hint)
    return next((obj for kind, _, obj in list(records) if kind == "result"), None)


def _read_records(results, records: list) -> None:
    while True:
        try:
            data = results.get()
            if data is None:
                return
            records.append(pickle.loads(data))
        except Exception:  # noqa: BLE001 - a message cut short by a killed writer: the exit codes still tell
            return


def _watch(processes: list) -> tuple[list[int], list[int]]:
    """Wait for every worker; once one fails, give the others :data:`GRACE_S` seconds, then SIGKILL them.
    Returns the ranks that failed (in the order seen) and those this killed."""
    alive = {p.sentinel: rank for rank, p in enumerate(processes)}
    failed: list[int] = []
    stopped: list[int] = []
    first_failure = None
    while alive:
        left = None if first_failure is None else max(0.0, first_failure + GRACE_S - time.monotonic())
        for sentinel in wait_for(list(alive), timeout=left):
            rank = alive.pop(sentinel)
            processes[rank].join()
            if processes[rank].exitcode != 0:
                failed.append(rank)
                first_failure = first_failure or time.monotonic()
        if first_failure is not None and alive and time.monotonic() >= first_failure + GRACE_S:
            for rank in alive.values():  # a survivor that did not notice (busy alone) or cannot (hung, stopped)
                processes[rank].kill()
                stopped.append(rank)
            for rank in alive.values():
                processes[rank].join(timeout=10)
            alive = {}
    return failed, stopped


_SIGNAL_CAUSES = {  # what usually sends it; {pid} and {rank}: the process's
    "SIGKILL": "the usual cause is running out of memory: the kernel's out-of-memory killer (`dmesg` then says "
               "'Killed process {pid} (usis-rank-{rank})'); a smaller train.batch_size or fewer processes need less",
    "SIGSEGV": "a crash in native code (torch, a driver, a library)",
    "SIGBUS": "a crash in native code, or a file it had mapped changed or a disk filled (/dev/shm too)",
    "SIGABRT": "an abort in native code (torch, a driver, a library)",
}


def _failure(ctx, failed: list[int], stopped: list[int], records: list,
             hint: Callable[[], str] | None) -> BaseException:
    """The one exception that says why the run ended (its root cause, not the processes that lost it)."""
    errors = {rank: exc for kind, rank, exc in list(records) if kind == "error"}
    traces = {rank: path for rank, path in enumerate(ctx.error_files) if os.path.exists(path)}

    def weight(rank: int) -> int:  # its own error first, then a silent death, then a lost peer
        if rank in traces or (rank in errors and not isinstance(errors[rank], CollectiveFailed)):
            return 0
        return 1 if rank not in errors else 2

    cause = min(failed, key=lambda r: (weight(r), failed.index(r)))
    for path in traces.values():
        trace = Path(path).read_bytes()
        Path(path).unlink(missing_ok=True)
        if path == traces.get(cause):
            return mp.ProcessRaisedException(
                f"\n\n-- Process {cause} terminated with the following error:\n{pickle.loads(trace)}", cause,
                ctx.processes[cause].pid)
    if cause in errors and not isinstance(errors[cause], CollectiveFailed):
        return errors[cause]
    others = [r for r in range(len(ctx.processes)) if r != cause]
    if cause in errors:  # every failure was a lost peer: a process that hung (this launcher ended it) or none
        lost = errors[cause]
        code = None
        if stopped and lost.timed_out:
            cause = stopped[0]
            pids = ", ".join(str(ctx.processes[r].pid) for r in stopped)
            what = (f"training process {_ranks(stopped)} (pid {pids}) stopped answering (hung, or stopped with "
                    f"SIGSTOP): rank {lost.rank} waited {lost.waited:g} s for it in a collective (train.dist_timeout: "
                    f"{lost.reason}); it was ended")
        else:
            what = str(lost) + (f"; {_ranks(stopped)}, still running, ended with it" if stopped else "")
    else:
        p = ctx.processes[cause]
        code = p.exitcode
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = _SIGNAL_CAUSES.get(name)
            what = f"training process rank {cause} (pid {p.pid}) was killed by {name}"
            if why:
                what += ": " + why.format(pid=p.pid, rank=cause)
        else:
            what = f"training process rank {cause} (pid {p.pid}) exited with status {code} without a message"
        if others:
            what += f"; {_ranks(others)} stopped with it"
    text = hint() if hint is not None else ""
    return WorkerDied(f"{what}\n{text}" if text else what, cause, code)


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in sorted(ranks))


def resume_hint(out_dir: str | os.PathLike) -> str:
    """What to do after a run died: resume from its last checkpoint (naming its step), or start again."""
    path = checkpoint_path(out_dir)
    if not path.is_file():
        return f"no checkpoint was saved yet ({path}): start the run again with the same command"
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
    except Exception:  # noqa: BLE001 - only for the message: `usis train --resume` says what is wrong with it
        step = None
    at = f" (step {step})" if isinstance(step, int) else ""
    return f"resume from the last checkpoint{at} with:\n  usis train --out {out_dir} --resume"
