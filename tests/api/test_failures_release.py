"""A request that fails gives its memory back when it ends: nothing of it (its body, its tensors) is left in a
reference cycle, which only the garbage collector's next full pass would free (under a stream of failing large
requests that pass rarely comes: memory grew by hundreds of MB). Over HTTP and over gRPC (whose call state keeps
the abort, in a cycle), with the request read and computed in a worker thread."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.rpc import grpc_service_pb2 as pb
from tests import wire

Client = Callable[..., TestClient]
N = 300_000  # 1.2 MB of float32 scores, 2.4 MB of labels: read and computed in a worker thread
BIG = 1_000_000
"""Bytes: anything this large left in a cycle is the request's."""


def _nbytes(o: Any) -> int:
    if isinstance(o, bytes | bytearray):
        return len(o)
    if isinstance(o, memoryview):
        return o.nbytes
    if isinstance(o, torch.Tensor):
        return o.numel() * o.element_size()
    if isinstance(o, np.ndarray):
        return int(o.nbytes)
    if isinstance(o, list):
        return len(o) * 8
    return 0


def _left_in_cycles(request: Callable[[], None]) -> list[str]:
    """The large objects that `request` leaves in unreachable reference cycles."""
    gc.collect()  # what was garbage before
    request()
    return _cycles_now()


def _cycles_now() -> list[str]:
    """The large objects in unreachable reference cycles now."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        # bytes and arrays are not tracked by the collector: they are found as what the cycles' objects hold
        held = [*gc.garbage, *(r for o in gc.garbage for r in gc.get_referents(o))]
        return [f"{type(o).__name__} of {n} bytes" for o in held if (n := _nbytes(o)) >= BIG]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _labels() -> np.ndarray:
    labels = np.zeros(N, dtype=np.int64)
    labels[-1] = 9  # out of range for 4 classes: refused by the check, in the thread
    return labels


def test_http() -> None:
    """The app called as its server calls it (an ASGI call in an event loop: a test client would leave its own
    cycles, holding the body it sent)."""
    scores = {"data": np.zeros(N * 4, dtype=np.float32).tolist(), "shape": [N, 4], "dtype": "float32"}
    bodies = {
        "bad class index": {"input": scores, "target": {"data": _labels().tolist(), "shape": [N], "dtype": "int64"}},
        "missing target": {"input": scores},
    }
    app = create_app(Settings(device=wire.DEVICE, log_level="warning"))

    async def call(body: bytes) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/losses/cross_entropy",
            "raw_path": b"/v1/losses/cross_entropy",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        return statuses[0]

    async def run() -> None:
        async with app.router.lifespan_context(app):
            for what, body in bodies.items():
                raw = orjson.dumps(body)
                gc.collect()  # what was garbage before
                assert await call(raw) == 422, what
                assert _cycles_now() == [], what

    asyncio.run(run())


def test_grpc(make_client: Client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make_client(grpc_port=port)
    message = pb.ModelInferRequest(model_name="cross_entropy")
    message.inputs.add(name="input", datatype="FP32", shape=[N, 4])
    message.raw_input_contents.append(np.zeros(N * 4, dtype=np.float32).tobytes())
    message.inputs.add(name="target", datatype="INT64", shape=[N])
    message.raw_input_contents.append(_labels().tobytes())
    missing = pb.ModelInferRequest(model_name="cross_entropy", inputs=message.inputs[:1])
    missing.raw_input_contents.append(message.raw_input_contents[0])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        for what, request in {"bad class index": message, "missing target": missing}.items():

            def infer(request: Any = request) -> None:
                with pytest.raises(grpc.RpcError) as refused:
                    call(request, timeout=30)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value

            assert _left_in_cycles(infer) == [], what
