"""Prometheus metrics of one app, in a registry of its own (several apps may live in one process).

One process (the default): the metrics live in this object's registry, and the levels (`in_flight`,
`queued`, `computing`) are plain ints that the request path changes with `+=` and `-=`, read only when
scraped: no lock and no shared memory on the request path.

Several worker processes (`PROMETHEUS_MULTIPROC_DIR` set before prometheus_client was imported, as
`service.server.workers` does): every worker writes its counts to its own files in that directory, the
levels are `livesum` gauges (the sum over the live workers), and `exposition()` merges every worker's files,
so any worker's `/metrics` reports the whole server. One app per worker process, then.
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = tuple(float(4**i) for i in range(4, 15))  # 256 B .. 256 MiB
GC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The multiprocess directory in use, or None in one process. Fails where it is set too late to work."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(f"{MULTIPROC_ENV} was set after prometheus_client was imported: metrics would not be shared")
    return path


class Metrics:
    """Everything /metrics exposes. Label sets are bounded: routes are templates, losses are registry names.

    `Metrics(device)` is a `SharedMetrics` when the process is one of several workers (see the module).
    """

    SHARED: ClassVar[bool] = False
    """Counted in prometheus_client's multiprocess files, for all the workers."""

    in_flight: int
    """Requests being answered."""
    queued: int
    """Requests waiting for a compute slot (weighted)."""
    computing: int
    """Requests computing in worker threads."""

    def __new__(cls, device: str) -> Metrics:
        if cls is Metrics and multiprocess_dir() is not None:
            return super().__new__(SharedMetrics)
        return super().__new__(cls)

    def __init__(self, device: str):
        self.registry = CollectorRegistry()
        r = None if self.SHARED else self.registry  # shared: the collector reads every worker's files instead
        self.requests = Counter("lossd_requests", "Requests answered", ["route", "loss", "status"], registry=r)
        self.latency = Histogram(
            "lossd_request_duration_seconds", "Time to answer", ["route", "loss"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.body_bytes = Histogram(
            "lossd_request_body_bytes", "Request body sizes", ["route"], buckets=SIZE_BUCKETS, registry=r
        )
        self.elements = Counter("lossd_elements", "Tensor elements computed on", ["loss"], registry=r)
        self.rejections = Counter("lossd_rejections", "Requests refused before computing", ["reason"], registry=r)
        self.gc_pause = Histogram(
            "lossd_gc_pause_seconds",
            "Pauses of Python's garbage collector, by generation",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=r,
        )
        self._gc_children = {generation: self.gc_pause.labels(generation=str(generation)) for generation in (0, 1, 2)}
        self.device = Gauge(
            "lossd_device_info", "The compute device", ["device"], registry=r, multiprocess_mode="livemax"
        )
        self.device.labels(device=device).set(1)
        self._levels()
        self._children: dict[tuple[str, ...], Any] = {}

    def _levels(self) -> None:
        """The levels as plain ints, exposed through gauges that read them when scraped."""
        self.in_flight = 0
        self.queued = 0
        self.computing = 0
        gauges = {
            "lossd_requests_in_flight": ("Requests being answered", lambda: self.in_flight),
            "lossd_requests_queued": ("Requests waiting for a compute slot (weighted)", lambda: self.queued),
            "lossd_requests_computing": ("Requests computing in worker threads", lambda: self.computing),
        }
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, registry=self.registry).set_function(read)

    def record(self, route: str, loss: str, status: int | str, seconds: float, bytes_in: int) -> None:
        """Count one answered request. Label children are cached: `labels()` costs more than the update."""
        children = self._children.get((route, loss, str(status)))
        if children is None:
            children = (
                self.requests.labels(route=route, loss=loss, status=str(status)),
                self.latency.labels(route=route, loss=loss),
                self.body_bytes.labels(route=route),
            )
            self._children[(route, loss, str(status))] = children
        count, latency, body_bytes = children
        count.inc()
        latency.observe(seconds)
        if bytes_in:
            body_bytes.observe(bytes_in)

    def computed(self, loss: str, elements: int) -> None:
        """Count the tensor elements one loss computed on."""
        child = self._children.get((loss,))
        if child is None:
            child = self._children[(loss,)] = self.elements.labels(loss=loss)
        child.inc(elements)

    def watch_gc(self) -> Callable[[], None]:
        """Time every garbage collection into `lossd_gc_pause_seconds`; returns the function that stops it."""
        started = 0.0

        def on_gc(phase: str, info: dict[str, int]) -> None:
            nonlocal started
            if phase == "start":
                started = time.perf_counter()
            else:
                self._gc_paused(info["generation"], time.perf_counter() - started)

        gc.callbacks.append(on_gc)

        def unwatch() -> None:
            if on_gc in gc.callbacks:
                gc.callbacks.remove(on_gc)

        return unwatch

    def _gc_paused(self, generation: int, seconds: float) -> None:
        """Called by the collector, in whichever thread it runs: one pause."""
        self._gc_children[generation].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class SharedMetrics(Metrics):
    """The metrics of one of several worker processes, counted in prometheus_client's multiprocess files."""

    SHARED = True

    _GC_BACKLOG = 4096
    """Pauses kept until the next flush; beyond, the oldest are dropped."""

    def __init__(self, device: str):
        path = multiprocess_dir()
        assert path is not None
        self._gc_pending: deque[tuple[int, float]] = deque(maxlen=self._GC_BACKLOG)
        super().__init__(device)
        MultiProcessCollector(self.registry, path=path)  # type: ignore[no-untyped-call]

    def _levels(self) -> None:
        """The levels as `livesum` gauges: each worker's value, summed over the workers alive."""

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, registry=None, multiprocess_mode="livesum")

        self._in_flight, self._queued, self._computing = 0, 0, 0
        self._in_flight_gauge = gauge("lossd_requests_in_flight", "Requests being answered")
        self._queued_gauge = gauge("lossd_requests_queued", "Requests waiting for a compute slot (weighted)")
        self._computing_gauge = gauge("lossd_requests_computing", "Requests computing in worker threads")
        for g in (self._in_flight_gauge, self._queued_gauge, self._computing_gauge):
            g.set(0)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._in_flight = value
        self._in_flight_gauge.set(value)

    @property
    def queued(self) -> int:
        return self._queued

    @queued.setter
    def queued(self, value: int) -> None:
        self._queued = value
        self._queued_gauge.set(value)

    @property
    def computing(self) -> int:
        return self._computing

    @computing.setter
    def computing(self, value: int) -> None:
        self._computing = value
        self._computing_gauge.set(value)

    def record(self, route: str, loss: str, status: int | str, seconds: float, bytes_in: int) -> None:
        if self._gc_pending:
            self._flush_gc()
        super().record(route, loss, status, seconds, bytes_in)

    def _gc_paused(self, generation: int, seconds: float) -> None:
        # Not observed here: the collector may run while this thread holds prometheus_client's one
        # multiprocess lock (not reentrant), and observing would take it again. Flushed by record/exposition.
        self._gc_pending.append((generation, seconds))

    def _flush_gc(self) -> None:
        pending = self._gc_pending
        while pending:
            generation, seconds = pending.popleft()
            self._gc_children[generation].observe(seconds)

    def exposition(self) -> bytes:
        self._flush_gc()
        return super().exposition()
