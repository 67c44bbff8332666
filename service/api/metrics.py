"""Prometheus metrics of one app, in a registry of its own (several apps may live in one process)."""

from __future__ import annotations

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
        self.response_bytes = Histogram(
            "lossd_response_body_bytes", "Response body sizes", ["route"], buckets=SIZE_BUCKETS, registry=r
        )
        self.elements = Counter("lossd_elements", "Tensor elements computed on", ["loss"], registry=r)
        self.in_flight = Gauge("lossd_requests_in_flight", "Requests being answered", registry=r)
        self.queued = Gauge("lossd_requests_queued", "Requests waiting for a compute slot (weighted)", registry=r)
        self.computing = Gauge("lossd_requests_computing", "Requests computing in worker threads", registry=r)
        self.rejections = Counter("lossd_rejections", "Requests refused before computing", ["reason"], registry=r)
        self.device = Gauge("lossd_device_info", "The compute device", ["device"], registry=r)
        self.device.labels(device=device).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
