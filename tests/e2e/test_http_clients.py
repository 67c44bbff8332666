"""Standard HTTP clients with their default settings against the real service; answers equal torch's.

curl's `--http2` and Java's `HttpClient` (by default) offer an upgrade to HTTP/2 (`Upgrade: h2c`) with a
POST and its body. lossd declines the offer and must answer that very request, body read, over HTTP/1.1,
and keep serving the connection.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests import wire

ROOT = Path(__file__).resolve().parents[2]
JAVA_CLIENT = ROOT / "examples" / "java" / "LossdClient.java"

MSE = {"input": [1.0, 2.5], "target": [0.0, 0.0]}
EVALUATE = {
    "tensors": {"input": [[0.5, 1.5], [-3.0, 0.25]], "target": [[1, 2], [-2, 0]]},
    "losses": [{"name": "mse"}, {"name": "l1", "reduction": "sum"}],
}
V2_INFER = {
    "inputs": [
        {"name": "input", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
        {"name": "target", "shape": [2], "datatype": "FP32", "data": [0.0, 0.5]},
    ]
}
H2C_OFFER = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


def _curl() -> str:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not on PATH: install curl (Debian: apt-get install curl) to run these tests")
    return curl


def _curl_http2(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` with `curl --http2` (which offers the upgrade): the answer, over HTTP/1.1."""
    command = [_curl(), "-sS", "-v", "--http2", "-X", "POST", url, "-H", "content-type: application/json"]
    run = subprocess.run(
        [*command, "-d", json.dumps(body), "-w", "\n%{http_code} %{http_version}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    answer, _, trailer = run.stdout.rpartition("\n")
    assert trailer == "200 1.1", (trailer, answer)
    assert "Upgrade: h2c" in run.stderr  # the request did offer the upgrade
    answer_json: dict[str, Any] = json.loads(answer)
    return answer_json


def _f32(value: Any) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def test_curl_http2_v1_loss(server: str) -> None:
    answer = _curl_http2(f"{server}/v1/losses/mse", MSE)
    wire.assert_same(answer["loss"], F.mse_loss(_f32(MSE["input"]), _f32(MSE["target"])))


def test_curl_http2_v1_evaluate(server: str) -> None:
    answer = _curl_http2(f"{server}/v1/evaluate", EVALUATE)
    x, y = _f32(EVALUATE["tensors"]["input"]), _f32(EVALUATE["tensors"]["target"])
    mse, l1 = answer["results"]
    assert (mse["name"], mse["status"], l1["name"], l1["status"]) == ("mse", 200, "l1", 200)
    wire.assert_same(mse["loss"], F.mse_loss(x, y))
    wire.assert_same(l1["loss"], F.l1_loss(x, y, reduction="sum"))


def test_curl_http2_v2_infer(server: str) -> None:
    answer = _curl_http2(f"{server}/v2/models/mse/infer", V2_INFER)
    x, y = (_f32(tensor["data"]) for tensor in V2_INFER["inputs"])
    (loss,) = answer["outputs"]
    assert (loss["name"], loss["datatype"], loss["shape"]) == ("loss", "FP32", [])
    wire.assert_same(loss["data"][0], F.mse_loss(x, y))


def test_curl_http2_keep_alive(server: str) -> None:
    """Two requests in one curl run: the second goes over the same connection, answered as well."""
    other = {"input": [3.0, -1.0], "target": [0.5, 0.5]}
    url = f"{server}/v1/losses/mse"
    each = ["--http2", "-H", "content-type: application/json", "-w", "\n%{num_connects}\n"]
    run = subprocess.run(
        [_curl(), "-sS", "-v", *each, "-d", json.dumps(MSE), url, "--next", *each, "-d", json.dumps(other), url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    first, first_connects, second, second_connects = run.stdout.splitlines()
    assert (first_connects, second_connects) == ("1", "0")  # the connection was kept and reused
    assert "Upgrade: h2c" in run.stderr
    wire.assert_same(json.loads(first)["loss"], F.mse_loss(_f32(MSE["input"]), _f32(MSE["target"])))
    wire.assert_same(json.loads(second)["loss"], F.mse_loss(_f32(other["input"]), _f32(other["target"])))


def _post(path: str, body: bytes, extra_headers: bytes = b"") -> bytes:
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: lossd\r\n" + extra_headers
        + b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


def _read_responses(sock: socket.socket, count: int) -> list[tuple[bytes, dict[str, Any]]]:
    """`count` HTTP/1.1 responses (status line and JSON body), read off one connection."""
    buffer, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed after {len(answers)} of {count} responses"
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(headers[b"content-length"])
        while len(buffer) < length:
            chunk = sock.recv(65536)
            assert chunk, "the connection closed inside a response body"
            buffer += chunk
        answers.append((lines[0], json.loads(buffer[:length])))
        buffer = buffer[length:]
    return answers


def test_pipelined_upgrade_offers(server: str) -> None:
    """Requests sent in one write, some offering h2c or another protocol, split at odd places: all answered."""
    bodies = [{"input": [float(i), 2.0], "target": [0.0, float(-i)]} for i in range(4)]
    offers = [H2C_OFFER, b"", b"Connection: keep-alive, Upgrade\r\nUpgrade: lossd-test/1\r\n", H2C_OFFER]
    stream = b"".join(_post("/v1/losses/mse", json.dumps(b).encode(), o) for b, o in zip(bodies, offers, strict=True))
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        first_body = stream.index(b"\r\n\r\n") + 4
        for part in (stream[:60], stream[60 : first_body + 5], stream[first_body + 5 :]):  # heads and bodies split
            sock.sendall(part)
        answers = _read_responses(sock, len(bodies))
    for (status, answer), body in zip(answers, bodies, strict=True):
        assert status == b"HTTP/1.1 200 OK", answer
        wire.assert_same(answer["loss"], F.mse_loss(_f32(body["input"]), _f32(body["target"])))


def test_upgrade_offer_with_expect_continue(server: str) -> None:
    """The body follows only after `100 Continue`, which the declined offer's request still gets."""
    body = json.dumps(MSE).encode()
    request = _post("/v1/losses/mse", body, H2C_OFFER + b"Expect: 100-continue\r\n")
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request[: -len(body)])
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(1024)
            assert chunk, "the connection closed before 100 Continue"
            interim += chunk
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        ((status, answer),) = _read_responses(sock, 1)
    assert status == b"HTTP/1.1 200 OK", answer
    wire.assert_same(answer["loss"], F.mse_loss(_f32(MSE["input"]), _f32(MSE["target"])))


@pytest.fixture(scope="module")
def java_printed(server: str) -> dict[str, dict[str, Any]]:
    """examples/java/LossdClient.java's output, one JVM for all its calls (the JVM takes seconds to start)."""
    java = shutil.which("java")
    if java is None:
        pytest.fail("java is not on PATH: a JDK 11+ (Debian: apt-get install openjdk-17-jdk-headless) runs this test")
    run = subprocess.run([java, str(JAVA_CLIENT), server], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    return {line["case"]: line for line in lines}


def test_java_client_ran_every_call(java_printed: dict[str, dict[str, Any]]) -> None:
    assert sorted(java_printed) == ["v1-evaluate", "v1-mse", "v2-infer"]
    for line in java_printed.values():
        assert (line["status"], line["version"]) == (200, "HTTP_1_1")


def test_java_client_v1_loss(java_printed: dict[str, dict[str, Any]]) -> None:
    line = java_printed["v1-mse"]
    x = _f32(line["request"]["input"]).requires_grad_()
    y = _f32(line["request"]["target"]).requires_grad_()
    expected = F.mse_loss(x, y)
    expected.backward()
    wire.assert_same(line["response"]["loss"], expected)
    assert x.grad is not None
    assert y.grad is not None
    wire.assert_same(line["response"]["grad"]["input"], x.grad)
    wire.assert_same(line["response"]["grad"]["target"], y.grad)


def test_java_client_v1_evaluate(java_printed: dict[str, dict[str, Any]]) -> None:
    line = java_printed["v1-evaluate"]
    x, y = _f32(line["request"]["tensors"]["input"]), _f32(line["request"]["tensors"]["target"])
    mse, l1, smooth_l1 = line["response"]["results"]
    assert [r["status"] for r in (mse, l1, smooth_l1)] == [200, 200, 200]
    wire.assert_same(mse["loss"], F.mse_loss(x, y))
    wire.assert_same(l1["loss"], F.l1_loss(x, y, reduction="sum"))
    wire.assert_same(smooth_l1["loss"], F.smooth_l1_loss(x, y, beta=0.5))


def test_java_client_v2_infer(java_printed: dict[str, dict[str, Any]]) -> None:
    line = java_printed["v2-infer"]
    x, y = (_f32(tensor["data"]) for tensor in line["request"]["inputs"])
    assert line["response"]["id"] == "java-1"
    (loss,) = line["response"]["outputs"]
    assert (loss["name"], loss["datatype"], loss["shape"]) == ("loss", "FP32", [])
    wire.assert_same(loss["data"][0], F.mse_loss(x, y))
