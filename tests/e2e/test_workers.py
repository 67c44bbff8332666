"""`LOSSD_WORKERS=2`: gunicorn over two uvicorn workers. Every scrape counts both workers, and SIGTERM drains
the request in flight, refuses new connections, and exits with status 0."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from service.api.metrics import Metrics
from tests import wire
from tests.e2e.conftest import start_server, stop_server
from tests.wait import wait_until

BODY = {"input": [[0.5, 1.0], [2.0, 3.0]], "target": [[0.0, 1.0], [2.0, 2.5]]}
EXPECTED = F.mse_loss(torch.tensor(BODY["input"]), torch.tensor(BODY["target"]))
READY_AFTER_SIGTERM_S = 0.25
"""The longest /readyz may still answer 200 after SIGTERM: the time the signal takes to reach the workers."""
MSE_COUNTER = ("lossd_requests_total", "mse")


def _metrics_dir(tmp_path: Path) -> Path:
    """The server's multiprocess metrics directory (made under its TMPDIR, which is `tmp_path`)."""
    (path,) = tmp_path.glob("lossd-metrics-*")
    return path


def _served_by_worker(metrics_dir: Path) -> dict[int, float]:
    """The `POST /v1/losses/mse` requests each worker process counted, read from its own counter file."""
    served = {}
    for path in metrics_dir.glob("counter_*.db"):
        samples = [s for m in MultiProcessCollector.merge([str(path)]) for s in m.samples]
        served[int(path.stem.removeprefix("counter_"))] = sum(
            s.value for s in samples if (s.name, s.labels.get("loss")) == MSE_COUNTER
        )
    return served


def _busy_workers(metrics_dir: Path) -> int:
    return sum(1 for count in _served_by_worker(metrics_dir).values() if count > 0)


def _workers(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _scrape(url: str) -> dict[tuple[str, str], float]:
    """/metrics as {(sample name, loss label): value}, summed over the other labels."""
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for s in family.samples:
            key = (s.name, s.labels.get("loss", ""))
            values[key] = values.get(key, 0.0) + s.value
    return values


def _readiness(host: str, port: int) -> int | None:
    """GET /readyz on a new connection: the status; 0 if the connection was closed without an answer (a
    connection still queued when the socket closed); None if it was refused. A hang fails."""
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except ConnectionRefusedError:
        return None
    with sock:
        try:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: lossd\r\n\r\n")
            head = sock.recv(64)
        except ConnectionResetError:
            return 0
    return int(head.split(b" ")[1]) if head else 0


def _post_mse(url: str) -> None:
    response = httpx.post(f"{url}/v1/losses/mse", json=BODY, timeout=30)  # a fresh connection each time
    assert response.status_code == 200, response.text
    wire.assert_same(response.json()["loss"], EXPECTED)


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m service` with two workers, its temporary files (the metrics directory) in `tmp_path`."""
    url, proc = start_server(LOSSD_WORKERS="2", LOSSD_DRAIN_TIMEOUT_S="20", TMPDIR=str(tmp_path))
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            stop_server(proc)


def test_every_scrape_counts_every_worker(two_workers: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    url, proc = two_workers
    metrics_dir = _metrics_dir(tmp_path)
    sent = 0
    with ThreadPoolExecutor(4) as pool:
        # 200 requests, then more until both workers have answered some (the kernel picks the worker)
        while sent < 200 or (_busy_workers(metrics_dir) < 2 and sent < 2000):
            list(pool.map(lambda _: _post_mse(url), range(50)))
            sent += 50
    served = _served_by_worker(metrics_dir)
    assert set(served) == _workers(proc.pid), served  # the two workers, each with its own counts
    assert all(count > 0 for count in served.values()), served
    assert sum(served.values()) == sent

    totals = []
    for _ in range(5):  # whichever worker answers the scrape, it reports both
        scraped = _scrape(url)
        assert scraped[MSE_COUNTER] == sent
        assert scraped[("lossd_requests_in_flight", "")] == 1  # this scrape, summed over the live workers
        assert scraped[("lossd_gc_pause_seconds_count", "")] > 0  # the workers collected garbage meanwhile
        totals.append(sum(v for (name, _), v in scraped.items() if name == "lossd_requests_total"))
    assert totals == sorted(totals)
    assert totals[0] >= sent

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not metrics_dir.exists(), "the metrics directory outlived the server"


def test_sigterm_drains_and_refuses_new_connections(
    two_workers: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, proc = two_workers
    metrics_dir = _metrics_dir(tmp_path)
    # a request that takes about a second here: a 59 MB body (just under the 64 MiB limit) and gradients
    x = np.random.default_rng(0).standard_normal(2_500_000).astype(np.float32)
    body = orjson.dumps(
        {"input": x.astype(np.float64), "target": np.zeros(len(x)), "return_grad": ["input"]}
        | {"output_encoding": "base64"},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    answers: list[tuple[httpx.Response, float]] = []

    def send() -> None:
        headers = {"content-type": "application/json"}
        response = httpx.post(f"{url}/v1/losses/mse", content=body, headers=headers, timeout=60)
        answers.append((response, time.monotonic()))

    sender = threading.Thread(target=send)
    sender.start()
    # the big request and this scrape
    wait_until(lambda: _scrape(url)[("lossd_requests_in_flight", "")] >= 2, 30, "the big request in flight")
    assert not answers, "the request ended before SIGTERM: make it bigger"
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    host, port = url.removeprefix("http://").split(":")
    probes: list[tuple[float, int]] = []  # (seconds after SIGTERM, status)
    while (status := _readiness(host, int(port))) is not None:  # until the workers close the socket
        probes.append((time.monotonic() - signalled, status))
        assert probes[-1][0] < 5, "new connections were still accepted 5 s after SIGTERM"
    refused = time.monotonic()
    # not ready at once, in every worker: no 200 once SIGTERM has had time to arrive, none after a 503
    ready = [seconds for seconds, status in probes if status == 200]
    assert not ready or ready[-1] < READY_AFTER_SIGTERM_S, probes
    draining = [seconds for seconds, status in probes if status == 503]
    assert not ready or not draining or ready[-1] < draining[0], probes

    sender.join(timeout=60)
    assert answers, "the request in flight got no answer"
    (response, answered) = answers[0]
    assert refused < answered  # refused while the request in flight was still draining
    assert response.status_code == 200, response.text
    xt = torch.from_numpy(x).requires_grad_()
    expected = F.mse_loss(xt, torch.zeros(len(x)))
    expected.backward()
    wire.assert_same(response.json()["loss"], expected)
    assert xt.grad is not None
    wire.assert_same(response.json()["grad"]["input"], xt.grad)
    assert proc.wait(timeout=20) == 0  # within LOSSD_DRAIN_TIMEOUT_S
    assert not metrics_dir.exists(), "the metrics directory outlived the server"


def test_gc_pauses_are_timed_by_generation() -> None:
    """`watch_gc` times every collection into lossd_gc_pause_seconds until the function it returns is called."""

    def counts(metrics: Metrics) -> dict[str, float]:
        (family,) = [
            f
            for f in text_string_to_metric_families(metrics.exposition().decode())
            if f.name == "lossd_gc_pause_seconds"
        ]
        return {s.labels["generation"]: s.value for s in family.samples if s.name.endswith("_count")}

    metrics = Metrics("cpu")
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # the tests' own process is one process
    unwatch = metrics.watch_gc()
    before = counts(metrics)
    for generation in (0, 1, 2):
        gc.collect(generation)
    unwatch()
    after = counts(metrics)
    for generation in ("0", "1", "2"):
        assert after[generation] >= before[generation] + 1
    gc.collect()
    assert counts(metrics) == after
