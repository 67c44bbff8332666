"""Per-app state, scheduling and admission of compute, and the dependency aliases routes use to reach
the state."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import Depends, Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from service.api.edge import AccessLog, InflightBytes
from service.api.metrics import Metrics
from service.codec import decompress, parse_overhead
from service.config import Settings
from service.dataplane import DataPlane, Job
from service.errors import ComputeTimeout, DeviceFailure, Overloaded, UnsupportedMediaType
from service.isolation import Cancel, WorkerPool
from service.sessions.state import SessionLimits
from service.sessions.store import MemoryStore, Store

T = TypeVar("T")
log = logging.getLogger("lossd")


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class AppState:
    """What every request needs: settings, the data plane, metrics, and the admission bookkeeping."""

    settings: Settings
    plane: DataPlane
    catalog: dict[str, dict[str, Any]]
    metrics: Metrics
    limiter: CapacityLimiter = field(init=False)
    """Admission: requests computing at once."""
    threads: CapacityLimiter = field(init=False)
    """Worker threads of this app (anyio's default pool is process-wide, shared by every app)."""
    pending: int = 0
    """Requests admitted to the threads and not finished, weighted (a gradient request counts twice)."""
    failed: bool = False
    """The device failed: not ready, and the process is on its way out."""
    draining: bool = False
    """SIGTERM received: not ready, finishing in-flight requests."""
    request_exit: Callable[[], None] = _terminate_self
    access_log: AccessLog | None = None
    """Where each request's JSON line goes (None: not logged)."""
    workers: WorkerPool | None = None
    """The worker processes of large computations (None: everything computes in this process)."""
    sessions: Store = field(init=False)
    """Where dataset sessions live: in this process, or in Redis (`LOSSD_REDIS_URL`)."""
    inflight: InflightBytes = field(init=False)
    """The bound on request bytes held at once, shared by HTTP and gRPC."""

    def __post_init__(self) -> None:
        settings = self.settings
        self.limiter = CapacityLimiter(settings.max_concurrency)
        self.threads = CapacityLimiter(settings.max_concurrency)
        self.inflight = InflightBytes(settings.max_inflight_bytes)
        limits = SessionLimits(settings.sessions_max, settings.session_max_batches, settings.session_max_groups)
        if settings.redis_url:
            from service.sessions.redis import RedisStore  # the redis client only where it is used

            self.sessions = RedisStore(settings.redis_url, limits, settings.redis_prefix)
        else:  # several worker processes would each hold their own sessions, and a batch could miss its session
            refuse = "sessions need LOSSD_REDIS_URL when LOSSD_WORKERS > 1" if settings.workers > 1 else None
            self.sessions = MemoryStore(limits, refuse=refuse)

    @cached_property
    def api_keys(self) -> list[str]:
        """The configured API keys (`Settings.read_api_keys`), read once: HTTP and gRPC check the same ones."""
        return self.settings.read_api_keys()

    async def not_ready(self) -> str | None:
        """Why the server is not ready (device failed, draining, device unusable), or None when it is."""
        if self.failed:
            return "the compute device failed"
        if self.draining:
            return "the server is shutting down"
        store = await self.sessions.not_ready()
        if store is not None:
            return store
        try:
            usable = self.plane.ready()  # a two-element sum: cheaper than the hop to a thread
        except Exception as exc:  # any device failure means not ready, whatever its type
            log.error("readiness check failed: %s", exc)
            usable = False
        return None if usable else "the compute device is not usable"

    async def compute(
        self,
        body: bytes,
        content_encoding: str | None,
        job: Callable[[bytes], Job[T]],
        hold: Callable[[int], None] | None = None,
        json_length: int | None = None,
    ) -> T:
        """Decode, validate and compute a request body where its cost says it belongs (see `schedule`).

        A compressed body is inflated in a worker thread, which first `hold`s what reading it will build
        besides its bytes (its inflated size, the lists of nested JSON arrays) against the app's in-flight
        bound: past it, 503 or 413. Only the first `json_length` bytes are JSON when binary tensor data
        follows (the Open Inference Protocol).
        """
        settings = self.settings
        weight = gradient_weight(body)
        if content_encoding is None or content_encoding.strip().lower() == "identity":
            return await self.schedule(partial(job, body), len(body), weight)

        def inflate_and_run(cancel: Cancel) -> T:
            data = decompress(body, content_encoding, settings.max_body_bytes)
            if hold is not None:
                text = data if json_length is None else memoryview(data)[:json_length]
                hold(len(data) - len(body) + parse_overhead(text))
            return self._run(job(data), cancel)

        return await self._guarded(self._in_thread(inflate_and_run, weight=weight))

    async def schedule(self, read: Callable[[], Job[T]], size: int, weight: int = 1, timeout: float | None = None) -> T:
        """Read a request of `size` bytes (`read` validates it and plans its job) and compute it, where its
        cost says it belongs.

        A small request is read right here (its size bounds that work); the job it gives runs here too when
        its predicted cost (elements after broadcasting, gradients included) is at most
        `inline_max_elements`, which takes less time than the hop to a thread and back. All other work runs
        in a worker thread, admitted under the concurrency, queue and time limits: at most `max_concurrency`
        at a time; when `max_queue` more already wait (`weight` 2 for a request that may ask for gradients),
        the request is refused at once (503 with Retry-After) rather than piling up; after
        `request_timeout_s` (or `timeout`, a client's deadline, when shorter) the request gets a 504.
        A computation predicted to build more than `isolate_work_bytes` runs in a worker process, which
        the timeout (or the client's leaving) kills: its CPU and memory come back at once. Smaller ones finish in
        their thread, which keeps the request's place in the queue count until it ends.
        """
        if size < self.settings.inline_max_bytes:
            ready = read()
            if ready.cost <= self.settings.inline_max_elements:
                return self._guarded_now(ready)
            return await self._guarded(self._in_thread(partial(self._run, ready), weight=weight, timeout=timeout))
        return await self._guarded(
            self._in_thread(lambda cancel: self._run(read(), cancel), weight=weight, timeout=timeout)
        )

    def _guarded_now(self, job: Job[T]) -> T:
        try:
            return job.run()
        except DeviceFailure:
            self.fail()
            raise

    async def _guarded(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except DeviceFailure:
            self.fail()
            raise

    def _run(self, job: Job[T], cancel: Cancel) -> T:
        """Run a job in this thread, its computations in a worker process when they are large."""
        if self.workers is not None and job.work_bytes > self.settings.isolate_work_bytes:
            return job.run(partial(self.workers.execute, cancel=cancel))
        return job.run()

    async def _in_thread(self, fn: Callable[[Cancel], T], *, weight: int, timeout: float | None = None) -> T:
        settings, metrics = self.settings, self.metrics
        limit = settings.request_timeout_s if timeout is None else min(timeout, settings.request_timeout_s)
        if self.pending + weight > settings.max_concurrency + settings.max_queue:
            metrics.rejections.labels(reason="overloaded").inc()
            raise Overloaded(
                f"{self.pending} requests are computing or waiting; try again shortly",
                limit=settings.max_concurrency + settings.max_queue,
                actual=self.pending + weight,
            )
        self.pending += weight
        metrics.queued += weight
        queued = True
        cancel = Cancel()
        slot = _Slot(partial(self._release, weight), asyncio.get_running_loop())

        def body(cancel: Cancel) -> T:
            joined = slot.join()
            try:
                return fn(cancel)
            finally:
                if joined:
                    slot.thread_done()

        try:
            with anyio.fail_after(limit):
                async with self.limiter:
                    metrics.queued -= weight
                    queued = False
                    metrics.computing += 1
                    try:
                        return await anyio.to_thread.run_sync(
                            body, cancel, abandon_on_cancel=True, limiter=self.threads
                        )
                    finally:
                        metrics.computing -= 1
        except TimeoutError:
            cancel.cancel()  # a worker process computing it is killed; a thread finishes in the background
            metrics.rejections.labels(reason="timeout").inc()
            raise ComputeTimeout(f"the request took longer than {limit:g} s", limit=math.ceil(limit)) from None
        except asyncio.CancelledError:  # the client went away (a gRPC cancel, a passed deadline): as a timeout
            cancel.cancel()
            raise
        finally:
            if queued:
                metrics.queued -= weight
            slot.request_done()

    def _release(self, weight: int) -> None:
        self.pending -= weight

    def fail(self) -> None:
        """The device is broken: report not ready at once, and stop the process so it is restarted."""
        if not self.failed:
            self.failed = True
            log.critical("the compute device failed; stopping this process so that it is restarted")
            asyncio.get_running_loop().call_later(0.5, self.request_exit)


class _Slot:
    """A request's place in the admission count (`pending`), given back when both the request is answered and
    its thread (if one started) has ended: a thread abandoned at a timeout or a cancellation still computes, and
    keeps its place until it is done."""

    def __init__(self, release: Callable[[], None], loop: asyncio.AbstractEventLoop):
        self._release = release
        self._loop = loop
        self._owners = 1
        self._lock = threading.Lock()

    def join(self) -> bool:
        """The thread starts: it holds the place too, unless the request has already given it back."""
        with self._lock:
            if self._owners == 0:
                return False
            self._owners += 1
            return True

    def thread_done(self) -> None:  # in the worker thread
        if self._drop():
            self._loop.call_soon_threadsafe(self._release)

    def request_done(self) -> None:  # on the event loop
        if self._drop():
            self._release()

    def _drop(self) -> bool:
        with self._lock:
            self._owners -= 1
            return self._owners == 0


async def get_state(request: Request) -> AppState:  # async: FastAPI would run a plain def in a thread
    state: AppState = request.app.state.lossd
    return state


StateDep = Annotated[AppState, Depends(get_state)]


BINARY_TYPES = ("application/octet-stream", "application/vnd.sagemaker-triton.binary+json")
"""Content types of bodies with binary tensor data (the Open Inference Protocol's extension)."""


def require_json(content_type: str | None, *, binary: bool = False) -> None:
    """Refuse bodies declared as anything but JSON, or JSON with binary data where `binary` allows it
    (a missing content type is read as JSON)."""
    if content_type is None:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json") or (binary and media_type in BINARY_TYPES):
        return
    expected = "application/json or application/octet-stream" if binary else "application/json"
    raise UnsupportedMediaType(
        f"expected content-type {expected}, got {media_type!r} (curl: -H 'content-type: application/json')",
        loc=("content-type",),
    )


def header_values(scope: Scope, *names: bytes) -> list[str | None]:
    """The first value of each of the headers `names` (lower case) in an ASGI scope, or None."""
    found: list[str | None] = [None] * len(names)
    for key, value in scope["headers"]:
        if key in names:
            i = names.index(key)
            if found[i] is None:
                found[i] = value.decode("latin-1")
    return found


async def read_body(receive: Receive) -> bytes:
    """The whole request body (the edge has bounded it); a client that hangs up raises `ClientDisconnect`."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def json_content(schema: str) -> dict[str, Any]:
    """An OpenAPI `content` entry: JSON of the component schema `schema`."""
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


async def send_json(send: Send, body: bytes) -> None:
    """A complete `200 application/json` response."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def gradient_weight(body: bytes) -> int:
    """2 for a request that may ask for gradients (they hold about twice the memory), else 1.

    Looks only at the first and last 4 KiB, where the small fields of a body sit (an estimate for
    admission, which must not cost a scan of a large body).
    """
    edge = 4096
    found = body.find(b'"return_grad"', 0, edge) >= 0 or body.find(b'"grad_', 0, edge) >= 0
    return 2 if found or body.find(b'"return_grad"', max(len(body) - edge, 0)) >= 0 else 1
