"""Production behaviour in-process: request ids, limits, admission (queue, timeout), API keys, CORS,
device failure, unexpected errors, metrics and the access log."""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.losses import REGISTRY
from tests import wire
from tests.wait import wait_until, wait_until_async

X = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]
GOOD = {"input": X, "target": [0, 2]}


def _expected() -> torch.Tensor:
    return F.cross_entropy(torch.tensor(X), torch.tensor([0, 2]))


@pytest.fixture
def slow_l1() -> Iterator[float]:
    """l1 that sleeps first, so requests pile up."""
    spec = REGISTRY.get("l1")
    original = spec.fn
    delay = 0.4

    def slow(*args: Any, **kwargs: Any) -> torch.Tensor:
        time.sleep(delay)  # not a wait: a computation that takes `delay`, so that requests pile up
        return original(*args, **kwargs)

    object.__setattr__(spec, "fn", slow)
    yield delay
    object.__setattr__(spec, "fn", original)


def test_request_ids(client: TestClient) -> None:
    response = client.post("/v1/losses/cross_entropy", json=GOOD, headers={"X-Request-ID": "job-42.step:7"})
    assert response.headers["x-request-id"] == "job-42.step:7"
    generated = client.post("/v1/losses/cross_entropy", json=GOOD).headers["x-request-id"]
    assert len(generated) == 32
    hostile = client.post("/v1/losses/cross_entropy", json=GOOD, headers={"X-Request-ID": "a b!" * 50})
    assert len(hostile.headers["x-request-id"]) == 32  # refused as an id: a fresh one instead
    assert client.get("/healthz").headers["x-request-id"]


def test_body_limit_declared_and_streamed(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_body_bytes=4096)
    big = orjson.dumps({"input": [0.5] * 2000, "target": [0.5] * 2000})
    response = client.post("/v1/losses/mse", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    problem = response.json()
    assert problem["type"] == "/problems/payload-too-large"
    assert problem["limit"] == 4096
    assert problem["actual"] == len(big)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    streamed = client.post("/v1/losses/mse", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert streamed.json()["limit"] == 4096
    bomb = gzip.compress(b"[" + b"0," * 10_000 + b"0]")
    inflated = client.post(
        "/v1/losses/mse", content=bomb, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert inflated.status_code == 413
    ok = client.post("/v1/losses/cross_entropy", json=GOOD)
    wire.assert_same(ok.json()["loss"], _expected())


def test_gzip_bodies_are_read_by_v1(client: TestClient) -> None:
    body = gzip.compress(orjson.dumps(GOOD))
    response = client.post(
        "/v1/losses/cross_entropy",
        content=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    wire.assert_same(response.json()["loss"], _expected())


def test_element_and_shape_limits(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_tensor_elements=1000, max_dims=3, max_evaluate_entries=2)
    too_many = client.post("/v1/losses/mse", json={"input": [0.5] * 1001, "target": [0.5] * 1001})
    assert too_many.status_code == 413
    assert too_many.json()["limit"] == 1000
    assert too_many.json()["actual"] == 1001
    claimed = client.post(
        "/v1/losses/mse", json={"input": {"b64": "", "shape": [0, 10**6], "dtype": "float32"}, "target": [1.0]}
    )
    assert claimed.status_code == 200  # no element at all
    declared = client.post("/v1/losses/mse", json={"input": {"data": [], "shape": [10**7]}, "target": [1.0]})
    assert declared.status_code == 413
    broadcast = client.post("/v1/losses/mse", json={"input": [[0.5]] * 100, "target": [0.5] * 100})
    assert broadcast.status_code == 413  # (100, 1) with (100,) would broadcast to 10,000 elements
    deep = client.post("/v1/losses/mse", json={"input": [[[[0.5]]]], "target": [0.5]})
    assert deep.status_code == 422
    assert deep.json()["limit"] == 3
    entries = client.post(
        "/v1/evaluate", json={"tensors": {"input": [1.0], "target": [1.0]}, "losses": [{"name": "mse"}] * 3}
    )
    assert entries.status_code == 413
    assert entries.json()["actual"] == 3


def _concurrently(client: TestClient, count: int, body: dict[str, Any]) -> list[Any]:
    results: list[Any] = [None] * count

    def post(i: int) -> None:
        results[i] = client.post("/v1/losses/l1", json=body)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_overload_is_refused_at_once_and_recovers(make_client: Callable[..., TestClient], slow_l1: float) -> None:
    client = make_client(inline_max_bytes=0, max_concurrency=1, max_queue=1)
    body = {"input": [1.0, 2.0], "target": [0.0, 0.0]}
    responses = _concurrently(client, 6, body)
    statuses = sorted(r.status_code for r in responses)
    assert 503 in statuses
    assert 200 in statuses
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert r.json()["type"] == "/problems/overloaded"
        else:
            assert r.json()["loss"] == 1.5
    again = client.post("/v1/losses/l1", json=body)
    assert again.status_code == 200
    metrics = client.get("/metrics").text
    assert 'lossd_rejections_total{reason="overloaded"}' in metrics


def test_gradient_requests_weigh_double(make_client: Callable[..., TestClient], slow_l1: float) -> None:
    client = make_client(inline_max_bytes=0, max_concurrency=1, max_queue=1)
    responses = _concurrently(client, 2, {"input": [1.0], "target": [0.0], "return_grad": True})
    assert sorted(r.status_code for r in responses) == [200, 503]


def test_timeout_keeps_the_slot_until_the_thread_ends(make_client: Callable[..., TestClient], slow_l1: float) -> None:
    """A 504 answers at the timeout; the abandoned computation keeps its place in the admission count until its
    thread ends (it still computes: freeing its place early would let clients pile up threads past the limits)."""
    client = make_client(inline_max_bytes=0, max_concurrency=1, max_queue=1, request_timeout_s=slow_l1 / 2)
    state = client.app.state.lossd  # type: ignore[attr-defined]
    response = client.post("/v1/losses/l1", json={"input": [1.0], "target": [0.0]})
    assert response.status_code == 504
    assert response.json()["type"] == "/problems/timeout"
    assert state.pending == 1  # the thread still computes
    busy = client.post("/v1/losses/l1", json={"input": [1.0], "target": [0.0], "return_grad": True})
    assert busy.status_code == 503, busy.text  # weight 2 on top of the 1 still computing passes the limit of 2
    wait_until(lambda: not state.pending, 10, "the abandoned computation's thread ended")
    ok = client.post("/v1/losses/cross_entropy", json=GOOD)
    assert ok.status_code == 200, ok.text
    wire.assert_same(ok.json()["loss"], _expected())


def test_api_keys(make_client: Callable[..., TestClient], tmp_path: Any, caplog: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("first-key\nsecond-key\n")
    for setting in ("first-key,second-key", str(keys)):
        client = make_client(api_keys=setting)
        with caplog.at_level(logging.INFO, logger="lossd"):
            denied = client.post("/v1/losses/cross_entropy", json=GOOD)
            wrong = client.post("/v1/losses/cross_entropy", json=GOOD, headers={"Authorization": "Bearer nope"})
            allowed = client.post("/v1/losses/cross_entropy", json=GOOD, headers={"Authorization": "Bearer second-key"})
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Bearer")
        assert denied.json()["type"] == "/problems/unauthorized"
        assert wrong.status_code == 401
        assert allowed.status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v1/losses").status_code == 401
        v2 = client.get("/v2/models/mse")
        assert v2.status_code == 401
        assert "error" in v2.json()
        assert "second-key" not in caplog.text


def test_cors_is_off_by_default_and_configurable(client: TestClient, make_client: Callable[..., TestClient]) -> None:
    preflight = {"Origin": "https://eval.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/losses/mse", headers=preflight).headers
    cors = make_client(cors_origins="https://eval.example", api_keys="k1", max_body_bytes=4096)
    allowed = cors.options("/v1/losses/mse", headers=preflight | {"Access-Control-Request-Headers": "authorization"})
    assert allowed.status_code == 200  # a preflight never carries the key, and never needs it
    assert allowed.headers["access-control-allow-origin"] == "https://eval.example"
    origin = {"Origin": "https://eval.example"}
    key = {"Authorization": "Bearer k1"}
    answers = {
        200: cors.post("/v1/losses/cross_entropy", json=GOOD, headers=origin | key),
        401: cors.post("/v1/losses/cross_entropy", json=GOOD, headers=origin),
        404: cors.post("/v1/losses/nope", json=GOOD, headers=origin | key),
        413: cors.post("/v1/losses/mse", content=b"[" * 5000, headers=origin | key),
        422: cors.post("/v1/losses/cross_entropy", json={"input": X}, headers=origin | key),
        400: cors.post("/v2/models/mse/infer", json={"inputs": []}, headers=origin | key),
    }
    for status, response in answers.items():
        assert response.status_code == status, response.text
        assert response.headers["access-control-allow-origin"] == "https://eval.example", status
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


def test_two_apps_in_one_process_keep_their_own_limits(make_client: Callable[..., TestClient]) -> None:
    small = make_client(max_tensor_elements=100, max_dims=2, max_evaluate_entries=1, max_concurrency=1, max_queue=1)
    large = make_client()
    body = {"input": [0.5] * 1000, "target": [0.25] * 1000}
    deep = {"input": [[[0.5]]], "target": [[[0.25]]]}
    entries = {"tensors": body, "losses": [{"name": "mse"}, {"name": "l1"}]}
    assert small.post("/v1/losses/mse", json=body).status_code == 413
    assert small.post("/v1/losses/mse", json=deep).status_code == 422
    assert small.post("/v1/evaluate", json=entries).status_code == 413
    for response in (large.post("/v1/losses/mse", json=body), large.post("/v1/losses/mse", json=deep)):
        assert response.status_code == 200, response.text
    wire.assert_same(large.post("/v1/losses/mse", json=body).json()["loss"], F.mse_loss(*_tensors(body)))
    assert [r["status"] for r in large.post("/v1/evaluate", json=entries).json()["results"]] == [200, 200]
    assert small.post("/v1/losses/mse", json=body).status_code == 413  # unchanged by the other app
    small_state, large_state = (c.app.state.lossd for c in (small, large))  # type: ignore[attr-defined]
    assert small_state.limiter is not large_state.limiter
    assert small_state.threads is not large_state.threads
    assert small_state.metrics.registry is not large_state.metrics.registry


def _tensors(body: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(body["input"], dtype=torch.float32), torch.tensor(body["target"], dtype=torch.float32)


def test_device_failure_stops_the_process(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    state = client.app.state.lossd  # type: ignore[attr-defined]
    exits: list[bool] = []
    state.request_exit = lambda: exits.append(True)
    spec = REGISTRY.get("l1")
    original = spec.fn

    def broken(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise torch.AcceleratorError("CUDA error: device-side assert triggered")

    object.__setattr__(spec, "fn", broken)
    try:
        response = client.post("/v1/losses/l1", json={"input": [1.0], "target": [0.0]})
    finally:
        object.__setattr__(spec, "fn", original)
    assert response.status_code == 503
    assert response.json()["type"] == "/problems/device-failure"
    assert client.get("/readyz").status_code == 503
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/healthz").status_code == 200  # alive, on its way out
    wait_until(lambda: exits, 5, "the server asking to exit")  # 0.5 s later, once the answers are out
    assert exits == [True]


def test_unexpected_errors_leak_nothing(make_client: Callable[..., TestClient], caplog: Any) -> None:
    client = make_client()
    spec = REGISTRY.get("l1")
    original = spec.fn

    def bug(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise KeyError("/secret/path/in/the/trace")

    object.__setattr__(spec, "fn", bug)
    try:
        with caplog.at_level(logging.ERROR, logger="lossd"):
            response = client.post(
                "/v1/losses/l1", json={"input": [1.0], "target": [0.0]}, headers={"X-Request-ID": "r1"}
            )
    finally:
        object.__setattr__(spec, "fn", original)
    assert response.status_code == 500
    assert response.json()["type"] == "/problems/internal-error"
    assert "secret" not in response.text
    assert "r1" in response.json()["detail"]
    assert "/secret/path" in caplog.text  # the trace goes to the log


def test_metrics_and_access_log(make_client: Callable[..., TestClient]) -> None:
    client = make_client(log_level="info")
    access_log = client.app.state.lossd.access_log  # type: ignore[attr-defined]
    lines: list[bytes] = []
    access_log.sink = lines.append
    client.post("/v1/losses/cross_entropy", json=GOOD, headers={"X-Request-ID": "m-1"})
    client.post("/v1/losses/CrossEntropyLoss", json={"input": [[1.0]]}, headers={"X-Request-ID": "m-2"})
    access_log.flush()
    records = {r["request_id"]: r for r in map(orjson.loads, b"".join(lines).splitlines())}
    record = records["m-1"]
    assert record["logger"] == "lossd.access"
    assert record["level"] == "info"
    assert record["time"]
    assert record["route"] == "/v1/losses/{name}"
    assert record["loss"] == "cross_entropy"
    assert record["status"] == 200
    assert record["bytes_in"] > 0
    assert record["bytes_out"] > 0
    assert records["m-2"]["status"] == 422
    assert records["m-2"]["loss"] == "cross_entropy"
    assert make_client(log_level="warning").app.state.lossd.access_log is None  # type: ignore[attr-defined]
    assert make_client(access_log=False).app.state.lossd.access_log is None  # type: ignore[attr-defined]
    text = client.get("/metrics").text
    for name in (
        'lossd_requests_total{loss="cross_entropy",route="/v1/losses/{name}",status="200"}',
        "lossd_request_duration_seconds_bucket",
        "lossd_request_body_bytes_bucket",
        'lossd_elements_total{loss="cross_entropy"}',
        "lossd_requests_in_flight",
        "lossd_requests_queued",
        "lossd_device_info",
    ):
        assert name in text, name


def test_sigterm_turns_readiness_off() -> None:
    """The lifespan wraps SIGTERM: readiness is 503 from the signal on, while uvicorn drains."""
    import asyncio
    import signal

    import httpx

    app = create_app(Settings(device=wire.DEVICE, log_level="warning"))
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # stands in for uvicorn's handler

    async def scenario() -> tuple[int, int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://lossd") as client:
                before = (await client.get("/readyz")).status_code
                signal.raise_signal(signal.SIGTERM)
                return before, (await client.get("/readyz")).status_code

    try:
        assert asyncio.run(scenario()) == (200, 503)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_cancelled_request_cancels_its_work_and_keeps_its_place_until_it_ends(
    make_client: Callable[..., TestClient],
) -> None:
    """A request the client abandons (a gRPC cancel, a passed deadline: the handler's task is cancelled) cancels
    its computation (a worker process is killed), and its place in the queue count comes back only when the
    computation has ended, so cancelled work cannot pile up past the limits."""
    client = make_client(max_concurrency=1, max_queue=1)
    state = client.app.state.lossd  # type: ignore[attr-defined]
    started, returns = threading.Event(), threading.Event()
    outcome: list[str] = []

    def work(cancel: Any) -> None:  # stands in for a computation in a worker process, which `cancel` kills
        started.set()
        wait_until(lambda: cancel.cancelled, 10, "the cancel")  # else no outcome: told below
        outcome.append("killed")
        returns.wait(10)  # the killed worker's thread returns once the test has seen it still counted

    async def scenario() -> tuple[int, int]:
        task = asyncio.ensure_future(state._in_thread(work, weight=2))
        await wait_until_async(started.is_set, 10, "the computation started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held = state.pending  # cancelled, but its thread still runs
        returns.set()
        await wait_until_async(lambda: not state.pending, 10, "the place given back once the thread returned")
        return held, state.pending

    held, after = client.portal.call(scenario)  # type: ignore[union-attr]
    assert held == 2
    assert after == 0
    assert outcome == ["killed"]
