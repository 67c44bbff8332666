"""Prometheus metrics of one app, in a registry of its own (several apps may live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = tuple(float(4**i) for i in range(4, 15))  # 256 B .. 256 MiB


class Metrics:
    """Everything /metrics exposes. Label sets are bounded: routes are templates, losses are registry names."""

    def __init__(self, device: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lossd_requests", "Requests answered", ["route", "loss", "status"], registry=r)
        self.latency = Histogram(
            "lossd_request_duration_seconds", "Time to answer", ["route", "loss"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.body_bytes = Histogram(
            "lossd_request_body_bytes", "Request body sizes", ["route"], buckets=SIZE_BUCKETS, registry=r
        )
        self.elements = Counter("lossd_elements", "Tensor elements computed on", ["loss"], registry=r)
        # plain counters, read by the gauges only when scraped: nothing to lock on the request path
        self.in_flight = 0
        self.queued = 0
        self.computing = 0
        gauges = {
            "lossd_requests_in_flight": ("Requests being answered", lambda: self.in_flight),
            "lossd_requests_queued": ("Requests waiting for a compute slot (weighted)", lambda: self.queued),
            "lossd_requests_computing": ("Requests computing in worker threads", lambda: self.computing),
        }
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, registry=r).set_function(read)
        self.rejections = Counter("lossd_rejections", "Requests refused before computing", ["reason"], registry=r)
        self.device = Gauge("lossd_device_info", "The compute device", ["device"], registry=r)
        self.device.labels(device=device).set(1)

        self._children: dict[tuple[str, ...], Any] = {}

    def record(self, route: str, loss: str, status: int, seconds: float, bytes_in: int) -> None:
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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
