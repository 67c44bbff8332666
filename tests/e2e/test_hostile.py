"""Hostile payloads over a real socket: each gets its specific 4xx, and the server then answers a
normal request correctly."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest
import torch
import torch.nn.functional as F

from tests import wire

X = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]
JSON = "application/json"


def _raw(server: str, request: bytes, timeout: float = 10) -> bytes:
    """Send bytes as they are (no client-side fixing) and read the answer's first bytes."""
    url = urlsplit(server)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _still_answers(server: str) -> None:
    response = httpx.post(f"{server}/v1/losses/cross_entropy", json={"input": X, "target": [0, 2]})
    assert response.status_code == 200
    wire.assert_same(response.json()["loss"], F.cross_entropy(torch.tensor(X), torch.tensor([0, 2])))


HOSTILE: list[tuple[str, bytes, dict[str, str], int, str]] = [
    # (id, body, headers, status, problem type)
    ("nan-literal", b'{"input": [NaN], "target": [1.0]}', {}, 400, "malformed-body"),
    ("infinity-literal", b'{"input": [Infinity], "target": [1.0]}', {}, 400, "malformed-body"),
    ("non-utf8", b'{"input": [1.0], "target": "\xff\xfe"}', {}, 400, "malformed-body"),
    (
        "wrong-content-type",
        b'{"input": [1.0], "target": [1.0]}',
        {"content-type": "text/csv"},
        415,
        "unsupported-media-type",
    ),
    (
        "deep-nesting",
        b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b', "target": [1.0]}',
        {},
        400,
        "malformed-body",
    ),
    (
        "shallow-but-too-deep",
        b'{"input": ' + b"[" * 40 + b"1" + b"]" * 40 + b', "target": [1.0]}',
        {},
        422,
        "invalid-tensor",
    ),
    (
        "ten-million-claim",
        b'{"input": {"data": [1.0], "shape": [10000000]}, "target": [1.0]}',
        {},
        422,
        "invalid-tensor",
    ),
    (
        "huge-integers",
        b'{"input": [1e400, 123456789012345678901234567890], "target": [1.0, 2.0]}',
        {},
        400,
        "malformed-body",
    ),
    ("negative-shape", b'{"input": {"data": [1.0], "shape": [-1]}, "target": [1.0]}', {}, 422, "invalid-tensor"),
    (
        "shape-data-mismatch",
        b'{"input": {"data": [1.0, 2.0, 3.0], "shape": [2, 2]}, "target": [1.0]}',
        {},
        422,
        "invalid-tensor",
    ),
    (
        "base64-garbage",
        b'{"input": {"b64": "!!!not-base64!!!", "dtype": "float32"}, "target": [1.0]}',
        {},
        422,
        "invalid-tensor",
    ),
    (
        "base64-odd-length",
        b'{"input": {"b64": "AAAAAAA=", "dtype": "float32"}, "target": [1.0]}',
        {},
        422,
        "invalid-tensor",
    ),
    ("not-an-object", b"[1, 2, 3]", {}, 400, "malformed-body"),
    ("empty-body", b"", {}, 400, "malformed-body"),
    ("strings-as-numbers", b'{"input": ["1.0"], "target": [1.0]}', {}, 422, "invalid-tensor"),
    ("null-tensor", b'{"input": null, "target": [1.0]}', {}, 422, "invalid-request"),
    ("object-in-array", b'{"input": [{"a": 1}], "target": [1.0]}', {}, 422, "invalid-tensor"),
    (
        "duplicate-keys",
        b'{"input": [1.0], "input": [2.0, 3.0], "target": [1.0, 1.0], "target": [5.0]}',
        {},
        422,
        "invalid-request",
    ),
    ("unknown-dtype", b'{"input": {"data": [1.0], "dtype": "complex64"}, "target": [1.0]}', {}, 422, "invalid-tensor"),
    ("gzip-garbage", b"this is not gzip", {"content-encoding": "gzip"}, 400, "malformed-body"),
    ("unknown-encoding", b"{}", {"content-encoding": "br"}, 415, "unsupported-media-type"),
]


@pytest.mark.parametrize(("body", "headers", "status", "slug"), [pytest.param(*h[1:], id=h[0]) for h in HOSTILE])
def test_hostile_body(server: str, body: bytes, headers: dict[str, str], status: int, slug: str) -> None:
    response = httpx.post(f"{server}/v1/losses/mse", content=body, headers={"content-type": JSON} | headers, timeout=30)
    assert response.status_code == status, response.text
    if slug:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == f"/problems/{slug}"
    _still_answers(server)


def test_duplicate_keys_are_refused_at_every_size(server: str) -> None:
    """One JSON meaning: a repeated key is a 422 naming it, for a small body and for one padded past the size
    where the other parser takes over (they used to keep different copies of the key: 10.0 against 0.5)."""
    body = b'{"input": [1.0], "input": [2.0, 4.0], "target": [0.0, 0.0]}'
    for padded in (body, body[:-1] + b" " * 200_000 + b"}"):
        response = httpx.post(f"{server}/v1/losses/mse", content=padded, headers={"content-type": JSON})
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", "input"]
    _still_answers(server)


def test_huge_integers(server: str) -> None:
    """JSON numbers beyond 64 bits are read as the nearest float64: fine as values, not as class indices."""
    body = b'{"input": [[1.0, 2.0]], "target": [123456789012345678901234567890]}'
    response = httpx.post(f"{server}/v1/losses/cross_entropy", content=body, headers={"content-type": JSON})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "target", 0]
    _still_answers(server)


def test_gigabyte_content_length_claim(server: str) -> None:
    head = f"POST /v1/losses/mse HTTP/1.1\r\nHost: x\r\nContent-Type: {JSON}\r\nContent-Length: 1000000000\r\n\r\n"
    answer = _raw(server, head.encode() + b'{"input": [1.0]')
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"limit":67108864' in answer
    _still_answers(server)


def test_truncated_body(server: str) -> None:
    head = f"POST /v1/losses/mse HTTP/1.1\r\nHost: x\r\nContent-Type: {JSON}\r\nContent-Length: 100\r\n\r\n"
    _raw(server, head.encode() + b'{"input": [1.0], "tar', timeout=5)  # the server waits, then gives up
    _still_answers(server)


def test_chunked_body_over_the_limit(server: str) -> None:
    chunk = b"[" + b"0," * 1_000_000 + b"0]"  # about 2 MB, sent many times without a Content-Length

    def stream() -> object:
        yield b'{"input": ['
        for _ in range(40):
            yield chunk[1:-1] + b","
        yield b'0], "target": [1.0]}'

    response = httpx.post(f"{server}/v1/losses/mse", content=stream(), headers={"content-type": JSON}, timeout=60)
    assert response.status_code == 413
    assert response.json()["limit"] == 67108864
    _still_answers(server)
