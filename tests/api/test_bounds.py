"""Bounded cost, in-process: memory a computation may build, response size, worker memory caps, and the
settings that could never admit a request."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.config import Settings
from service.isolation import WorkerPool
from tests import wire

SMALL = {"input": [1.0, 2.0, 4.0], "target": [1.5, 2.5, 3.0]}


def _still_correct(client: TestClient) -> None:
    response = client.post("/v1/losses/mse", json=SMALL)
    assert response.status_code == 200, response.text
    wire.assert_same(response.json()["loss"], F.mse_loss(torch.tensor(SMALL["input"]), torch.tensor(SMALL["target"])))


def test_work_beyond_the_memory_limit_is_refused_before_it_runs(make_client: Callable[..., TestClient]) -> None:
    """(4000, 1) against (4000,) broadcasts to 16M elements: 64 MB each for the result and its gradient."""
    client = make_client(max_work_bytes=32 * 2**20)
    body = {"input": [[1.0]] * 4000, "target": [0.5] * 4000, "return_grad": True}
    response = client.post("/v1/losses/mse", json=body)
    assert response.status_code == 413, response.text
    problem = response.json()
    assert problem["limit"] == 32 * 2**20
    assert problem["actual"] > problem["limit"]
    assert "LOSSD_MAX_WORK_BYTES" in problem["detail"]
    assert problem["errors"][0]["loc"][:2] == ["body", "target"]
    _still_correct(client)


def test_a_response_beyond_its_limit_is_refused_before_computing(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_response_bytes=1024 * 1024)
    x = [float(i) for i in range(50_000)]  # up to 25 bytes a number: 1.25 MB
    response = client.post("/v1/losses/mse", json={"input": x, "target": x, "reduction": "none"})
    assert response.status_code == 413, response.text[:300]
    assert "LOSSD_MAX_RESPONSE_BYTES" in response.json()["detail"]
    entries = {"tensors": {"input": x[:8000], "target": x[:8000]}, "losses": [{"name": "mse", "return_grad": True}] * 6}
    summed = client.post("/v1/evaluate", json=entries)  # each entry fits, all six together do not
    assert summed.status_code == 413, summed.text
    assert summed.json()["actual"] > 1024 * 1024
    _still_correct(client)


def test_a_worker_past_its_memory_cap_is_killed_and_answered_503(make_client: Callable[..., TestClient]) -> None:
    """A computation that grows past its worker's cap (here 16 MiB, below what the loss really needs: the
    cap is the backstop for a cost model that is wrong) is killed, answered 503; the next ones work."""
    if wire.DEVICE != "cpu":  # the cap watches the worker's host memory, and CUDA's kernels load lazily into it
        pytest.skip("on CUDA a loss's tensors live in GPU memory: the host-memory cap is tested on the CPU")
    client = make_client(isolate_work_bytes=0, inline_max_elements=0)  # every computation in a worker
    state = client.app.state.lossd  # type: ignore[attr-defined]
    state.workers.close()
    state.workers = WorkerPool(2, state.plane.device, 16 * 2**20)
    rows = 6500  # (6500, 1) against (6500,): 42M elements, 169 MB a tensor, about a second of work
    body = {"input": [[1.0]] * rows, "target": [i / rows for i in range(rows)], "return_grad": True}
    response = client.post("/v1/losses/mse", json=body)
    assert response.status_code == 503, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    assert "cap" in response.json()["detail"]
    _still_correct(client)  # in a new worker
    assert state.workers.started == 2
    state.workers.close()


def test_isolated_results_equal_torch(make_client: Callable[..., TestClient]) -> None:
    """Everything through the worker processes: values and gradients exactly torch's, dtypes kept."""
    client = make_client(isolate_work_bytes=0, inline_max_elements=0)
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (64,), generator=generator)
    body = {
        "input": {"data": logits.flatten().tolist(), "shape": [64, 10], "dtype": "float64"},
        "target": labels.tolist(),
        "label_smoothing": 0.1,
        "return_grad": True,
    }
    response = client.post("/v1/losses/cross_entropy", json=body)
    assert response.status_code == 200, response.text[:300]
    leaf = logits.clone().requires_grad_(True)
    expected = F.cross_entropy(leaf, labels, label_smoothing=0.1)
    expected.backward()
    wire.assert_same(response.json()["loss"], expected.detach())
    wire.assert_same(response.json()["grad"]["input"], leaf.grad)
    assert response.json()["dtype"] == "float64"
    bad = client.post("/v1/losses/cross_entropy", json=body | {"target": [10] * 64})
    assert bad.status_code == 422, bad.text  # a domain error raised in the worker keeps its status and loc
    assert bad.json()["errors"][0]["loc"][:2] == ["body", "target"]
    assert client.app.state.lossd.workers.started >= 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_concurrency": 1, "max_queue": 0}, "LOSSD_MAX_CONCURRENCY + LOSSD_MAX_QUEUE must be at least 2"),
        ({"max_inflight_bytes": 2048, "max_body_bytes": 4096}, "LOSSD_MAX_INFLIGHT_BYTES (2048) is below"),
        ({"worker_memory_bytes": 2**20, "max_work_bytes": 2**21}, "LOSSD_WORKER_MEMORY_BYTES (1048576) is below"),
    ],
)
def test_settings_that_could_never_admit_are_refused(settings: dict[str, int], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings(**settings)


def test_gradient_requests_are_admitted_with_the_smallest_settings(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_concurrency=1, max_queue=1, inline_max_elements=0)
    response = client.post("/v1/losses/mse", json=SMALL | {"return_grad": True})
    assert response.status_code == 200, response.text
    _still_correct(client)


def test_what_reading_a_body_builds_counts_against_the_inflight_bound(make_client: Callable[..., TestClient]) -> None:
    """A small gzip body that inflates to 100,000 empty JSON arrays (Python lists once parsed): its inflated
    size and its arrays count against LOSSD_MAX_INFLIGHT_BYTES, so it is refused before it is parsed."""
    client = make_client(max_body_bytes=2**20, max_inflight_bytes=2 * 2**20)
    hostile = gzip.compress(b'{"input": [' + b"[]," * 100_000 + b'[]], "target": [1.0]}')
    response = client.post(
        "/v1/losses/mse", content=hostile, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert response.status_code == 413, response.text[:300]
    assert "LOSSD_MAX_INFLIGHT_BYTES" in response.json()["detail"]
    assert response.json()["actual"] > 100_000 * 64
    fine = gzip.compress(json.dumps(SMALL).encode() + b" " * 100_000)
    response = client.post(
        "/v1/losses/mse", content=fine, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert response.status_code == 200, response.text[:300]
    wire.assert_same(response.json()["loss"], F.mse_loss(torch.tensor(SMALL["input"]), torch.tensor(SMALL["target"])))
    edge = client.app.middleware_stack  # type: ignore[attr-defined]
    while not hasattr(edge, "inflight"):
        edge = edge.app
    assert edge.inflight.held == 0  # every share given back


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_a_small_ctc_body_that_would_build_gigabytes_is_refused(client: TestClient, encoding: str | None) -> None:
    """ctc with T=20,000 and S=10,000 (a few hundred KB, a few KB gzipped): torch's alpha and beta tables are
    T x (2S+1) each, 3.2 GB with the gradient. The cost model predicts them and the request is refused before
    torch runs, naming the table; plain or compressed, it makes no difference."""
    t, s = 20_000, 10_000
    body = {
        "log_probs": {"data": [-0.6931] * (t * 2), "shape": [t, 1, 2]},
        "targets": [[1] * s],
        "input_lengths": [t],
        "target_lengths": [s],
        "return_grad": True,
    }
    content = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if encoding:
        content, headers = gzip.compress(content), headers | {"content-encoding": encoding}
    response = client.post("/v1/losses/ctc", content=content, headers=headers)
    assert response.status_code == 413, response.text[:300]
    problem = response.json()
    assert "alpha" in problem["detail"]
    assert problem["actual"] >= t * (2 * s + 1)  # the table alone passes the per-tensor limit
    assert problem["limit"] == 2**26
    _still_correct(client)
