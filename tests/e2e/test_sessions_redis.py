"""Sessions shared through a real Redis by two real lossd processes: concurrent clients, a replica killed
mid-stream, a Redis outage and a Redis restart. The dataset values equal torch's on the whole dataset."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F

from tests import wire
from tests.e2e.conftest import start_server, stop_server
from tests.redis_server import RedisServer

CLASSES = 5
LOSSES = [
    {"name": "cross_entropy", "ignore_index": 1, "label_smoothing": 0.1, "tensors": {"weight": "class_weight"}},
    {"name": "mse", "tensors": {"input": "prediction", "target": "truth"}},
    {"name": "kl_div", "reduction": "batchmean", "tensors": {"input": "log_q", "target": "p"}},
]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Dataset:
    """Random float64 data for the three losses, cut into batches of random sizes."""

    def __init__(self, samples: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.logits = torch.randn(samples, CLASSES, generator=g, dtype=torch.float64)
        self.labels = torch.randint(0, CLASSES, (samples,), generator=g)
        self.class_weight = torch.rand(CLASSES, generator=g, dtype=torch.float64) + 0.1
        self.prediction = torch.randn(samples, 3, generator=g, dtype=torch.float64)
        self.truth = torch.randn(samples, 3, generator=g, dtype=torch.float64)
        self.log_q = torch.randn(samples, 4, generator=g, dtype=torch.float64).log_softmax(1)
        self.p = torch.randn(samples, 4, generator=g, dtype=torch.float64).softmax(1)
        cuts = sorted(torch.randperm(samples - 1, generator=g)[: samples // 6].add(1).tolist())
        self.bounds = list(zip([0, *cuts], [*cuts, samples], strict=True))

    def batch(self, i: int) -> dict[str, Any]:
        a, b = self.bounds[i]
        tensors = {
            "input": wire.flat(self.logits[a:b]),
            "target": self.labels[a:b].tolist(),
            "class_weight": wire.flat(self.class_weight),
            "prediction": wire.flat(self.prediction[a:b]),
            "truth": wire.flat(self.truth[a:b]),
            "log_q": wire.flat(self.log_q[a:b]),
            "p": wire.flat(self.p[a:b]),
        }
        return {"batch_id": f"batch-{i}", "tensors": tensors}

    def torch_values(self, upto: int | None = None) -> list[float]:
        """torch on the concatenation of the first `upto` batches (all by default)."""
        end = self.bounds[(upto or len(self.bounds)) - 1][1]
        ce = F.cross_entropy(
            self.logits[:end], self.labels[:end], weight=self.class_weight, ignore_index=1, label_smoothing=0.1
        )
        mse = F.mse_loss(self.prediction[:end], self.truth[:end])
        kl = F.kl_div(self.log_q[:end], self.p[:end], reduction="batchmean")
        return [ce.item(), mse.item(), kl.item()]


def _assert_values(session: dict[str, Any], expected: list[float]) -> None:
    """The dataset values lossd adds up, batch by batch in whatever order the clients' batches arrive: torch's on
    the whole up to the order of float64 additions (wire.SUMMED)."""
    got = [r["loss"] for r in session["results"]]
    for value, want in zip(got, expected, strict=True):
        assert value == pytest.approx(want, rel=wire.SUMMED["rtol"], abs=wire.SUMMED["atol"]), (got, expected)


def _create(url: str) -> str:
    answer = httpx.post(f"{url}/v1/sessions", json={"losses": LOSSES, "ttl_s": 600}, timeout=30)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def test_two_replicas_concurrent_clients_and_a_killed_replica(redis: RedisServer) -> None:
    """8 clients alternate their batches between two replicas; one replica is SIGKILLed mid-stream and the
    clients retry the batches it had (same batch id) on the other. Nothing is lost or counted twice."""
    data = Dataset(samples=600, seed=3)
    replica_a, proc_a = start_server(LOSSD_REDIS_URL=redis.url)
    replica_b, proc_b = start_server(LOSSD_REDIS_URL=redis.url)
    try:
        session = _create(replica_a)
        done, failures, duplicates, retried = [0], [], [0], [0]
        lock = threading.Lock()
        half = threading.Event()

        def client(k: int) -> None:
            with httpx.Client(timeout=30) as http:
                for i in range(k, len(data.bounds), 8):
                    body = data.batch(i)
                    url = (replica_a, replica_b)[i % 2]
                    try:
                        answer = http.post(f"{url}/v1/sessions/{session}/batches", json=body)
                    except httpx.TransportError:  # the replica died: the same batch on the other one
                        with lock:
                            retried[0] += 1
                        answer = http.post(f"{replica_a}/v1/sessions/{session}/batches", json=body)
                    if answer.status_code != 200:
                        failures.append(answer.text)
                        continue
                    with lock:
                        duplicates[0] += answer.json()["duplicate"]
                        done[0] += 1
                        if done[0] == len(data.bounds) // 3:
                            half.set()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        assert half.wait(60)
        os.kill(proc_b.pid, signal.SIGKILL)
        for t in threads:
            t.join(120)
        assert not failures, failures[:3]
        assert done[0] == len(data.bounds)
        assert retried[0] >= 1  # the kill did cut requests off
        view = httpx.get(f"{replica_a}/v1/sessions/{session}", timeout=30).json()
        assert view["batches"] == len(data.bounds)
        _assert_values(view, data.torch_values())
        # every batch sent again is a duplicate: the values do not move
        again = httpx.post(f"{replica_a}/v1/sessions/{session}/batches", json=data.batch(0), timeout=30).json()
        assert again["duplicate"] is True
        _assert_values(httpx.get(f"{replica_a}/v1/sessions/{session}", timeout=30).json(), data.torch_values())
    finally:
        stop_server(proc_a)
        if proc_b.poll() is None:
            stop_server(proc_b)


def test_redis_outage_and_restart(redis: RedisServer) -> None:
    """While Redis is down: /readyz is 503 and a batch gets a 503 with Retry-After, nothing applied. After a
    restart (appendonly), the session is still there and the retried batch counts once."""
    data = Dataset(samples=60, seed=5)
    url, proc = start_server(LOSSD_REDIS_URL=redis.url)
    try:
        session = _create(url)
        for i in range(3):
            assert httpx.post(f"{url}/v1/sessions/{session}/batches", json=data.batch(i), timeout=30).status_code == 200
        redis.stop()
        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 503, ready.text
        assert "redis" in ready.json()["detail"].lower(), ready.text
        down = httpx.post(f"{url}/v1/sessions/{session}/batches", json=data.batch(3), timeout=30)
        assert down.status_code == 503, down.text
        assert down.headers["retry-after"] == "1"
        assert down.json()["type"] == "/problems/store-unavailable"
        assert "password" not in down.text
        redis.start()
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
        view = httpx.get(f"{url}/v1/sessions/{session}", timeout=30).json()
        assert view["batches"] == 3
        _assert_values(view, data.torch_values(upto=3))
        for i in range(3, len(data.bounds)):  # the batch refused during the outage, then the rest
            answer = httpx.post(f"{url}/v1/sessions/{session}/batches", json=data.batch(i), timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.json()["duplicate"] is False
        _assert_values(httpx.get(f"{url}/v1/sessions/{session}", timeout=30).json(), data.torch_values())
    finally:
        stop_server(proc)
