"""Reading a running server's /metrics (one worker process): what tests poll for instead of sleeping."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def metric(url: str, name: str, headers: dict[str, str] | None = None, **labels: str) -> float:
    """The sum of `name`'s samples with `labels` (of every label value not given) on the server at `url`."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def in_flight(url: str, headers: dict[str, str] | None = None) -> int:
    """Requests the server is answering (HTTP; gRPC calls count as computing), besides the scrape that asks."""
    return int(metric(url, "lossd_requests_in_flight", headers)) - 1


def computing(url: str, headers: dict[str, str] | None = None) -> int:
    """Computations running in worker threads (HTTP and gRPC alike), including abandoned ones not yet ended."""
    return int(metric(url, "lossd_requests_computing", headers))
