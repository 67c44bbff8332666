"""Worker processes for expensive computations: stopped for real on timeout, capped in memory.

A thread cannot be interrupted: a computation that outlives its request's timeout would keep its CPU and
memory until torch returns. So a computation the cost model predicts to be large runs in a worker process
instead, as Triton's Python backend and TorchServe isolate theirs:

- The tensors travel through shared memory: each worker has an input arena (an anonymous `memfd`, passed
  to it once and grown when needed) into which the server copies the tensors; the worker computes on
  views of it, writes the loss and gradients into an output arena of its own, and the server copies
  them out. No pickling of tensor data, and no `/dev/shm` (64 MiB by default in a container).
- On timeout the server kills the worker (SIGKILL): its CPU and memory come back at once. A new worker
  takes its place on the next demand.
- A watchdog thread reads the resident size of every busy worker every few milliseconds; one that grows
  past its cap (`LOSSD_WORKER_MEMORY_BYTES` beyond what it held idle) is killed and its request answered 503,
  before the kernel's OOM killer would take the whole server.
- Workers are forked from multiprocessing's fork server, which has imported torch and the registry once:
  a new worker starts in milliseconds, not seconds.

Pure compute plumbing: a `Task` in, a `LossResult` out, domain errors raised. No HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import torch
from torch import Tensor

from service import compute
from service.errors import ComputeTimeout, LossdError, ResourceExhausted
from service.losses.registry import LossParams, LossSpec

log = logging.getLogger("lossd")

ALIGN = 64
"""Byte alignment of each tensor in an arena."""
KEEP_ARENA_BYTES = 64 * 2**20
"""Arenas larger than this are given back after the request that needed them."""
WATCH_INTERVAL_S = 0.005
"""How often the watchdog reads the busy workers' memory."""
_PAGE = os.sysconf("SC_PAGE_SIZE")
_GROUPS = "\0groups"
"""The inbox name of a task's group labels (no tensor argument has a NUL in its name)."""


@dataclass(slots=True)
class Task:
    """One loss computation, ready to run in this process or in a worker process."""

    spec: LossSpec
    tensors: Mapping[str, Tensor]
    """On the host, with the dtypes the loss takes."""
    params: LossParams
    grad_wrt: Sequence[str] = ()
    place: Callable[[Tensor], Tensor] | None = None
    """How a tensor reaches the device in this process (/v1/evaluate caches shared tensors); workers place
    their own."""
    stats: bool = False
    """Whether the result holds the loss's sufficient statistics."""
    groups: Tensor | None = None
    """Group labels of the samples, for per-group statistics."""

    def run_here(self, device: torch.device) -> compute.LossResult:
        return compute.compute(
            self.spec, self.tensors, self.params, self.grad_wrt, device, self.place, self.stats, self.groups
        )

    def loss_params(self) -> dict[str, Any]:
        """The loss's own parameters (not the request's tensors or options), to rebuild them in a worker."""
        return {name: getattr(self.params, name) for name in self.spec.params.model_fields}


class Cancel:
    """A request's hold on the worker computing it: `cancel()` (on timeout) kills that worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cancelled = False
        self._worker: _Worker | None = None

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._worker is not None:
                self._worker.kill("timeout")

    def check(self) -> None:
        """Raise if the request timed out: it gets no worker any more."""
        if self.cancelled:
            raise ComputeTimeout("the request timed out before it could compute")

    def _attach(self, worker: _Worker) -> None:
        with self._lock:
            self.check()
            self._worker = worker

    def _release(self) -> None:
        with self._lock:
            self._worker = None


class WorkerPool:
    """Up to `size` worker processes computing on `device`, started on demand and replaced when killed."""

    def __init__(self, size: int, device: torch.device, memory_cap: int, torch_threads: int = 0):
        self.size = size
        self.device = device
        self.memory_cap = memory_cap
        self.torch_threads = torch_threads
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._count = 0
        self._cond = threading.Condition()
        self._closed = False
        self._watchdog: threading.Thread | None = None
        self.started = 0
        """Workers started since the pool was made (replacements included)."""

    def warm(self) -> None:
        """Start one worker now (and with it the fork server), so the first large request does not wait."""
        worker = self._borrow()
        self._give_back(worker)

    def execute(self, task: Task, cancel: Cancel | None = None) -> compute.LossResult:
        """Run `task` in a worker process; blocks the calling thread until it answers or is killed."""
        cancel = cancel or Cancel()
        cancel.check()  # timed out while it was read and planned: no worker to start for it
        worker = self._borrow()
        try:
            cancel._attach(worker)
            return worker.run(task)
        finally:
            cancel._release()
            self._give_back(worker)

    def close(self) -> None:
        """Kill every worker (at shutdown)."""
        with self._cond:
            self._closed = True
            idle, busy = list(self._idle), list(self._busy)
            self._idle.clear()
            self._cond.notify_all()
        for worker in idle + busy:
            worker.kill("shutdown")
        for worker in idle:
            worker.reap()

    def _borrow(self) -> _Worker:
        worker: _Worker | None
        with self._cond:
            while True:
                if self._closed:
                    raise ResourceExhausted("the server is shutting down")
                if self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        break
                    self._count -= 1
                    continue
                if self._count < self.size:
                    self._count += 1
                    worker = None
                    break
                self._cond.wait()
        if worker is None:
            try:
                worker = _Worker(self.device, self.torch_threads)
            except BaseException:
                with self._cond:
                    self._count -= 1
                    self._cond.notify_all()
                raise
            self.started += 1
        with self._cond:
            self._busy.add(worker)
            self._cond.notify_all()  # wakes the watchdog
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="lossd-worker-watchdog", daemon=True)
                self._watchdog.start()
        return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._cond:
            self._busy.discard(worker)
            keep = worker.alive() and not self._closed
            if keep:
                self._idle.append(worker)
            else:
                self._count -= 1
            self._cond.notify_all()
        if not keep:
            worker.kill("closed")
            worker.reap()

    def _watch(self) -> None:
        """Kill any busy worker whose memory passed its cap. Sleeps while no worker is busy: a thread that
        wakes up costs the event loop the GIL."""
        while True:
            with self._cond:
                while not self._busy and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                busy = list(self._busy)
            for worker in busy:
                grown = worker.rss() - worker.baseline
                if grown > self.memory_cap:
                    log.warning(
                        "worker process %d passed its memory cap (%d bytes over its idle size, cap %d): killed",
                        worker.pid,
                        grown,
                        self.memory_cap,
                    )
                    worker.kill("memory", cap=self.memory_cap)
            time.sleep(WATCH_INTERVAL_S)


def _context() -> multiprocessing.context.ForkServerContext:
    """multiprocessing's fork server (one per process, started with the first worker), preloaded with torch
    and the registry so that each worker forks ready to compute."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["service.isolation", "service.losses"])
    return context


class _Arena:
    """Shared memory: an anonymous memfd, mapped here; its descriptor can be sent to another process."""

    def __init__(self, size: int, fd: int | None = None):
        self.size = size
        if fd is None:
            fd = os.memfd_create("lossd-arena", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
        self.fd = fd
        self.map = mmap.mmap(fd, size)

    @staticmethod
    def sized(needed: int) -> int:
        return max(1 << 20, 1 << math.ceil(math.log2(max(needed, 1))))

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def write(self, tensors: Sequence[Tensor]) -> list[tuple[str, tuple[int, ...], int]]:
        """Copy `tensors` in, one after the other; returns each one's (dtype, shape, offset)."""
        metas = []
        offset = 0
        for t in tensors:
            t = t.detach()
            if t.numel():
                view = torch.frombuffer(self.map, dtype=t.dtype, count=t.numel(), offset=offset)
                view.copy_(t.reshape(-1))
            metas.append((str(t.dtype).removeprefix("torch."), tuple(t.shape), offset))
            offset += _aligned(t.numel() * t.element_size())
        return metas

    def view(self, dtype_name: str, shape: tuple[int, ...], offset: int) -> Tensor:
        dtype = getattr(torch, dtype_name)
        count = math.prod(shape)
        if not count:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self.map, dtype=dtype, count=count, offset=offset).view(shape)


def _aligned(nbytes: int) -> int:
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


def _needed(tensors: Sequence[Tensor]) -> int:
    return sum(_aligned(t.numel() * t.element_size()) for t in tensors)


@dataclass(eq=False)
class _Worker:
    """One worker process, seen from the server."""

    device: torch.device
    torch_threads: int
    process: Any = field(init=False)
    conn: Connection = field(init=False)
    pid: int = field(init=False)
    baseline: int = field(init=False)
    killed: str | None = None
    cap: int = 0
    inbox: _Arena | None = None
    outbox: _Arena | None = None

    def __post_init__(self) -> None:
        context = _context()
        ours, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(theirs, str(self.device), self.torch_threads), name="lossd-worker", daemon=True
        )
        self.process.start()
        theirs.close()
        self.conn = ours
        self.pid = int(self.process.pid)
        if self.conn.recv() != "ready":
            raise ResourceExhausted("a worker process failed to start")
        self.baseline = self.rss()

    def alive(self) -> bool:
        return self.killed is None and self.process.is_alive()

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            return 0

    def kill(self, reason: str, cap: int = 0) -> None:
        """Stop the process at once (from any thread; never waits). The first reason given sticks."""
        if self.killed is None:
            self.killed, self.cap = reason, cap
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def reap(self) -> None:
        """Collect a stopped process and close its connection (by the thread that used it)."""
        self.process.join(timeout=5)
        self.conn.close()

    def run(self, task: Task) -> compute.LossResult:
        inputs = {**task.tensors, **({_GROUPS: task.groups} if task.groups is not None else {})}
        tensors = [t.contiguous() for t in inputs.values()]
        try:
            needed = _needed(tensors)
            if self.inbox is None or self.inbox.size < needed:
                self.inbox = _Arena(_Arena.sized(needed))
                self.conn.send(("inbox", self.inbox.size))
                send_handle(self.conn, self.inbox.fd, self.pid)
                self.inbox.close_fd()
            metas = dict(zip(inputs, self.inbox.write(tensors), strict=True))
            self.conn.send(("run", task.spec.name, task.loss_params(), list(task.grad_wrt), task.stats, metas))
            while True:
                reply = self.conn.recv()
                if reply[0] == "outbox":
                    self.outbox = _Arena(reply[1], recv_handle(self.conn))
                    self.outbox.close_fd()
                    continue
                break
        except (EOFError, OSError) as exc:
            raise self._lost() from exc
        finally:
            if self.inbox is not None and self.inbox.size > KEEP_ARENA_BYTES:
                self._drop("inbox")
        if reply[0] == "error":
            raise reply[1]
        _, loss_meta, grad_metas, warnings, device, stats = reply
        assert self.outbox is not None
        loss = self.outbox.view(*loss_meta).clone()
        grads = {name: self.outbox.view(*meta).clone() for name, meta in grad_metas.items()}
        if self.outbox.size > KEEP_ARENA_BYTES:
            self._drop("outbox")
        return compute.LossResult(loss=loss, grads=grads, warnings=warnings, device=device, stats=stats)

    def _drop(self, which: str) -> None:
        """Give back a large arena: both sides unmap it, and its memory returns to the system."""
        setattr(self, which, None)
        with contextlib.suppress(OSError):
            self.conn.send(("drop", which))

    def _lost(self) -> LossdError:
        """Why the worker stopped answering, as the error its request gets."""
        self.kill("crashed")
        if self.killed == "timeout":
            return ComputeTimeout("the computation was stopped at the request timeout")
        if self.killed == "memory":
            return ResourceExhausted(f"the computation needed more than {self.cap} bytes of memory, its worker's cap")
        return ResourceExhausted(f"the worker process computing this request stopped ({self.killed}); retry")


def _serve(conn: Connection, device_name: str, torch_threads: int) -> None:
    """A worker process's loop: tensors arrive in the inbox, results leave through the outbox."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from service import runtime
    from service.losses import REGISTRY

    runtime.tune_process(torch_threads, 0)
    device = torch.device(device_name)
    float(torch.ones(2, device=device).sum().item())  # torch's lazy start-up, before the first request
    parent = os.getppid()
    boxes: dict[str, _Arena | None] = {"inbox": None, "outbox": None}
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "inbox":
            inbox = boxes["inbox"] = _Arena(message[1], recv_handle(conn))
            inbox.close_fd()
        elif kind == "drop":
            boxes[message[1]] = None
        elif kind == "run":
            _, name, params, grad_wrt, stats, metas = message
            try:
                reply = _compute(REGISTRY.get(name), params, grad_wrt, stats, metas, boxes, device, conn, parent)
            except LossdError as exc:
                reply = ("error", exc)
            except Exception as exc:  # a bug: reported as a failed computation, the worker lives on
                log.exception("worker computation failed")
                reply = ("error", ResourceExhausted(f"the computation failed in its worker process: {exc}"))
            try:
                conn.send(reply)
            except OSError:  # the server is gone (it stopped, or gave up on this request)
                return


def _compute(
    spec: LossSpec,
    params: dict[str, Any],
    grad_wrt: list[str],
    stats: bool,
    metas: dict[str, tuple[str, tuple[int, ...], int]],
    boxes: dict[str, _Arena | None],
    device: torch.device,
    conn: Connection,
    parent: int,
) -> tuple[Any, ...]:
    inbox = boxes["inbox"]
    assert inbox is not None
    tensors = {name: inbox.view(*meta) for name, meta in metas.items()}
    groups = tensors.pop(_GROUPS, None)
    p = spec.params.model_construct(**params)
    result = compute.compute(spec, tensors, p, grad_wrt, device, stats=stats, groups=groups)
    del tensors, groups
    outputs = [result.loss, *result.grads.values()]
    needed = _needed(outputs)
    outbox = boxes["outbox"]
    if outbox is None or outbox.size < needed:
        outbox = boxes["outbox"] = _Arena(_Arena.sized(needed))
        conn.send(("outbox", outbox.size))
        send_handle(conn, outbox.fd, parent)
        outbox.close_fd()
    loss_meta, *grad_metas = outbox.write(outputs)
    grad_meta = dict(zip(result.grads, grad_metas, strict=True))
    return ("ok", loss_meta, grad_meta, result.warnings, result.device, result.stats)
