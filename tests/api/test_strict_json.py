"""One meaning for every body: repeated JSON keys and damaged compressed bodies are refused, at every size
and on every route, and the next request is answered exactly as before."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from service import codec

JSON = {"content-type": "application/json"}
PROBLEM = "application/problem+json"


def _padded(body: bytes) -> bytes:
    """The same document past the size where lossd reads bodies another way."""
    return body[:-1] + b" " * codec.SIMD_MIN_BYTES + body[-1:]


def _problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"/problems/{slug}"
    assert problem["status"] == status
    return problem


def _repeated(response: Any, loc: list[Any]) -> None:
    problem = _problem(response, 422, "invalid-request")
    assert [e["loc"] for e in problem["errors"]] == [["body", *loc]]
    assert f"{loc[-1]!r} appears more than once" in problem["detail"]


def _next_request_is_exact(client: TestClient) -> None:
    response = client.post("/v1/losses/mse", json={"input": [1.0, 2.0], "target": [1.5, 2.5]})
    assert response.status_code == 200, response.text
    expected = F.mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.5]))
    assert response.json()["loss"] == expected.item()  # no tolerance


@pytest.mark.parametrize("size", ["small", "padded"])
def test_v1_refuses_repeated_keys_at_every_size(client: TestClient, size: str) -> None:
    """orjson kept the last `input` (9.0) and simdjson the first (1.0): neither answers now."""
    body = b'{"input": [3.0], "input": [1.0], "target": [0.0]}'
    body = _padded(body) if size == "padded" else body
    _repeated(client.post("/v1/losses/mse", content=body, headers=JSON), ["input"])
    _next_request_is_exact(client)


def test_v1_refuses_repeated_keys_in_large_tensor_bodies(client: TestClient) -> None:
    values = np.random.default_rng(0).standard_normal(2000)
    body = orjson.dumps(
        {"input": values, "target": {"data": values, "dtype": "float32"}}, option=orjson.OPT_SERIALIZE_NUMPY
    ).replace(b'"dtype":"float32"', b'"dtype":"float32","dtype":"float64"')
    assert len(body) >= codec.SIMD_MIN_BYTES
    _repeated(client.post("/v1/losses/mse", content=body, headers=JSON), ["target", "dtype"])
    top = orjson.dumps({"reduction": "sum", "input": values, "target": values}, option=orjson.OPT_SERIALIZE_NUMPY)
    top = top.replace(b'"reduction":"sum"', b'"reduction":"sum","reduction":"mean"')
    _repeated(client.post("/v1/losses/mse", content=top, headers=JSON), ["reduction"])
    _next_request_is_exact(client)


def test_v1_reads_strings_holding_colons(client: TestClient) -> None:
    """A ':' in a string is no repeated key (lossd counts ':' to know when to look closer)."""
    for body in (
        b'{"input": [1.0, 2.0], "target": [1.5, 2.5], "reduction": "mean:x"}',
        b'{"input": [1.0, 2.0], "target": [1.5, 2.5], "reduction": "\\u003a"}',
    ):
        response = client.post("/v1/losses/mse", content=body, headers=JSON)
        problem = _problem(response, 422, "invalid-request")  # no such reduction: refused for that
        assert "more than once" not in problem["detail"]
    _next_request_is_exact(client)


@pytest.mark.parametrize("size", ["small", "padded"])
@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (
            b'{"tensors": {"x": [1.0], "y": [2.0]}, "losses": [{"name": "mse", "tensors": '
            b'{"input": "x", "input": "y", "target": "y"}}]}',
            ["losses", 0, "tensors", "input"],
        ),
        (
            b'{"tensors": {"input": [1.0], "target": [2.0]}, "losses": [{"name": "mse"}, '
            b'{"name": "l1", "reduction": "sum", "reduction": "mean"}]}',
            ["losses", 1, "reduction"],
        ),
        (
            b'{"tensors": {"input": [1.0], "input": [3.0], "target": [2.0]}, "losses": [{"name": "mse"}]}',
            ["tensors", "input"],
        ),
    ],
    ids=["entry-tensors", "entry", "shared-tensors"],
)
def test_evaluate_refuses_repeated_keys(client: TestClient, body: bytes, loc: list[Any], size: str) -> None:
    body = _padded(body) if size == "padded" else body
    _repeated(client.post("/v1/evaluate", content=body, headers=JSON), loc)
    _next_request_is_exact(client)


V2_INPUTS = (
    b'"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}, '
    b'{"name": "target", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]}]'
)


@pytest.mark.parametrize("size", ["small", "padded"])
@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"inputs": [{"name": "input", "name": "target", "shape": [1], "datatype": "FP32", "data": [1.0]}]}', "name"),
        (b'{"parameters": {"reduction": "sum", "reduction": "mean"}, ' + V2_INPUTS + b"}", "reduction"),
        (b'{"id": "a", "id": "b", ' + V2_INPUTS + b"}", "id"),
    ],
    ids=["input", "parameters", "id"],
)
def test_v2_json_refuses_repeated_keys(client: TestClient, body: bytes, key: str, size: str) -> None:
    """The Open Inference Protocol answers its own error document: 400 for every 422."""
    body = _padded(body) if size == "padded" else body
    response = client.post("/v2/models/mse/infer", content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert f"{key!r} appears more than once" in response.json()["error"]
    _next_request_is_exact(client)


def test_v2_binary_header_refuses_repeated_keys(client: TestClient) -> None:
    blob = np.array([1.0, 2.0], dtype=np.float32).tobytes()
    header = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    ).replace(b'"shape":[2]', b'"shape":[2],"shape":[1]')
    response = client.post(
        "/v2/models/mse/infer",
        content=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 400, response.text
    assert "'shape' appears more than once in the object at body.inputs[0]" in response.json()["error"]
    _next_request_is_exact(client)


GOOD = orjson.dumps({"input": [1.0, 2.0], "target": [1.5, 2.5]})


@pytest.mark.parametrize(
    ("encoding", "body", "says"),
    [
        ("gzip", gzip.compress(GOOD) + b"junk", "after the end"),
        ("gzip", gzip.compress(GOOD) + b"\0\0\0\0", "after the end"),
        ("gzip", gzip.compress(GOOD)[:-4], "truncated"),
        ("gzip", gzip.compress(GOOD)[:12], "truncated"),
        ("gzip", gzip.compress(GOOD) + gzip.compress(b" ")[:-1], "truncated"),
        ("deflate", zlib.compress(GOOD) + b"junk", "after the end"),
        ("deflate", zlib.compress(GOOD) + zlib.compress(b" "), "after the end"),
        ("deflate", zlib.compress(GOOD)[:-2], "truncated"),
    ],
    ids=[
        "gzip-junk",
        "gzip-zeros",
        "gzip-truncated",
        "gzip-header-only",
        "gzip-second-truncated",
        "deflate-junk",
        "deflate-two-streams",
        "deflate-truncated",
    ],
)
def test_damaged_compressed_bodies_are_refused(client: TestClient, encoding: str, body: bytes, says: str) -> None:
    response = client.post("/v1/losses/mse", content=body, headers=JSON | {"content-encoding": encoding})
    problem = _problem(response, 400, "malformed-body")
    assert says in problem["detail"]
    assert encoding in problem["detail"]
    v2 = client.post("/v2/models/mse/infer", content=body, headers=JSON | {"content-encoding": encoding})
    assert v2.status_code == 400
    assert says in v2.json()["error"]
    _next_request_is_exact(client)


def test_gzip_bodies_of_several_members_are_read_whole(client: TestClient) -> None:
    """RFC 1952 2.2: a gzip body may be a series of members; lossd reads them all (up to 64)."""
    members = gzip.compress(GOOD[:9]) + gzip.compress(GOOD[9:20]) + gzip.compress(GOOD[20:])
    response = client.post("/v1/losses/mse", content=members, headers=JSON | {"content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.json()["loss"] == F.mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.5])).item()
    many = gzip.compress(GOOD) + gzip.compress(b" ") * 64
    _problem(
        client.post("/v1/losses/mse", content=many, headers=JSON | {"content-encoding": "gzip"}), 400, "malformed-body"
    )
    _next_request_is_exact(client)


def test_repeated_keys_inside_a_gzip_body(client: TestClient) -> None:
    body = gzip.compress(b'{"input": [3.0], "input": [1.0], "target": [0.0]}')
    response = client.post("/v1/losses/mse", content=body, headers=JSON | {"content-encoding": "gzip"})
    _repeated(response, ["input"])
    _next_request_is_exact(client)
