"""Work is scheduled by its cost, not its body size: a small body that broadcasts to tens of millions
of elements runs in a worker thread, under the timeout, and the event loop keeps answering meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F

from tests import wire
from tests.e2e.conftest import start_server, stop_server

ROWS = 6500
BROADCAST = {"input": [[1.0]] * ROWS, "target": [1.0 + i / ROWS for i in range(ROWS)], "return_grad": True}
"""40 KB of JSON: (6500, 1) against (6500,) broadcasts to 42M elements (about 1 s of compute here, with the
gradients; the cost model predicts just under the default LOSSD_MAX_WORK_BYTES of 1 GiB)."""


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    started = [start_server(), start_server(LOSSD_REQUEST_TIMEOUT_S="0.2")]
    try:
        yield {"default": started[0][0], "short timeout": started[1][0]}
    finally:
        for _, proc in started:
            stop_server(proc)


def _post_while_polling(url: str, body: dict[str, Any]) -> tuple[httpx.Response, list[float]]:
    """POST `body` to mse in the background; meanwhile the seconds each /healthz took."""
    answer: dict[str, httpx.Response] = {}

    def post() -> None:
        answer["response"] = httpx.post(f"{url}/v1/losses/mse", json=body, timeout=120)

    thread = threading.Thread(target=post)
    thread.start()
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as client:
        while thread.is_alive():
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)  # not a wait: the pace of the probes that watch the loop while the request computes
    thread.join()
    return answer["response"], latencies


def test_a_small_body_that_broadcasts_does_not_stall_the_loop(servers: dict[str, str]) -> None:
    response, latencies = _post_while_polling(servers["default"], BROADCAST)
    assert response.status_code == 200, response.text
    assert len(latencies) >= 5, "the computation ended before the loop could be watched"
    assert max(latencies) < 0.1, f"/healthz took up to {max(latencies) * 1e3:.0f} ms during the computation"
    input = torch.tensor(BROADCAST["input"], dtype=torch.float32, requires_grad=True)
    target = torch.tensor(BROADCAST["target"], dtype=torch.float32, requires_grad=True)
    expected = F.mse_loss(input, target)
    grad_input, grad_target = torch.autograd.grad(expected, [input, target])
    body = response.json()
    wire.assert_same(body["loss"], expected)
    wire.assert_same(body["grad"]["input"], grad_input)
    wire.assert_same(body["grad"]["target"], grad_target)


def test_expensive_work_gets_the_timeout(servers: dict[str, str]) -> None:
    url = servers["short timeout"]
    response, latencies = _post_while_polling(url, BROADCAST)
    assert response.status_code == 504, response.text
    assert response.json()["type"] == "/problems/timeout"
    assert max(latencies, default=0) < 0.1
    small = {"input": [[0.5, 1.5]], "target": [[1.0, 1.0]]}
    after = httpx.post(f"{url}/v1/losses/mse", json=small, timeout=30)
    assert after.status_code == 200, after.text
    wire.assert_same(after.json()["loss"], F.mse_loss(torch.tensor([[0.5, 1.5]]), torch.tensor([[1.0, 1.0]])))
