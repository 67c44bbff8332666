"""Connection-level limits against the real service over raw sockets: each attack, on a small scale, is cut off
(503 beyond `LOSSD_MAX_CONNECTIONS` busy ones, 408 after `LOSSD_READ_TIMEOUT_S`, 431 beyond `LOSSD_MAX_HEADER_BYTES`,
idle connections closed after `LOSSD_KEEP_ALIVE_S`), and a normal request is then answered exactly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import select
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import torch
import torch.nn.functional as F
import uvicorn

from service.config import Settings
from service.server import uvicorn_options
from tests.e2e.conftest import ROOT, free_port, start_server, stop_server
from tests.wait import wait_until

MAX_CONNECTIONS = 20
READ_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 1.0
MAX_HEADER_BYTES = 8192
LIMITS = {
    "LOSSD_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "LOSSD_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
    "LOSSD_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
    "LOSSD_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
}
PROMPT_S = 5.0
"""Generous bound for what should take milliseconds (the test machine is small and busy)."""

MSE = {"input": [1.0, 2.0], "target": [1.5, 2.5]}
MSE_BODY = json.dumps(MSE).encode()
HEAD_START = b"POST /v1/losses/mse HTTP/1.1\r\nHost: lossd\r\n"


@contextlib.contextmanager
def _serving(**env: str) -> Iterator[tuple[str, int]]:
    """The service with `env`'s settings: (host, port)."""
    url, proc = start_server(**env)
    try:
        split = urlsplit(url)
        assert split.hostname is not None
        assert split.port is not None
        yield split.hostname, split.port
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def limited() -> Iterator[tuple[str, int]]:
    """The service with small connection limits: (host, port)."""
    with _serving(**LIMITS) as address:
        yield address


def _mse_request(extra_headers: bytes = b"") -> bytes:
    return (
        HEAD_START + extra_headers + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(MSE_BODY)
        + MSE_BODY
    )  # fmt: skip


def _assert_mse(answer: dict[str, Any]) -> None:
    expected = F.mse_loss(torch.tensor(MSE["input"]), torch.tensor(MSE["target"]))
    assert answer["loss"] == expected.item(), (answer, expected)  # exactly torch's value


def _normal_request_works(address: tuple[str, int]) -> None:
    host, port = address
    response = httpx.post(f"http://{host}:{port}/v1/losses/mse", json=MSE, timeout=30)
    assert response.status_code == 200, response.text
    _assert_mse(response.json())


def _parse_response(buffer: bytes) -> tuple[int, dict[bytes, bytes], bytes, bytes] | None:
    """The first response in `buffer` (status, headers with lower-case names, body, the bytes after it), or
    None while it is incomplete."""
    head, found, rest = buffer.partition(b"\r\n\r\n")
    if not found:
        return None
    status_line, *lines = head.split(b"\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines)}
    length = int(headers[b"content-length"])
    if len(rest) < length:
        return None
    return int(status_line.split(b" ")[1]), headers, rest[:length], rest[length:]


def _read_response(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes, bytes]:
    """One response off `sock` (see `_parse_response`)."""
    buffer = b""
    while (response := _parse_response(buffer)) is None:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a whole response: {buffer!r}"
        buffer += chunk
    return response


def _closed(sock: socket.socket, timeout: float = PROMPT_S) -> bool:
    """Whether the server closes `sock` (end of stream or reset) within `timeout`, sending nothing more."""
    sock.settimeout(timeout)
    try:
        rest = sock.recv(65536)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    assert rest == b"", rest
    return True


def _assert_problem(status: int, headers: dict[bytes, bytes], body: bytes, expected: int, slug: str) -> None:
    assert status == expected, body
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"connection"] == b"close"
    problem = json.loads(body)
    assert (problem["type"], problem["status"]) == (f"/problems/{slug}", expected), problem
    assert problem["title"]
    assert problem["detail"]


def _trickle(sock: socket.socket, data: bytes, every_s: float = 0.1) -> float:
    """Send `data` a byte at a time, one every `every_s`, until the server answers (or hangs up): the
    seconds from the first byte to the answer. The whole of `data` takes longer than the read deadline."""
    assert len(data) * every_s > 3
    start = time.monotonic()
    for i in range(len(data)):
        sock.sendall(data[i : i + 1])
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            return time.monotonic() - start
    pytest.fail("the server waited for the whole slow request")


def _open_on_the_server(port: int) -> int:
    """The connections the server on `port` still holds (its sockets established, or closed by the client and
    not yet by the server), as the kernel lists them; 0 where it lists none (not Linux)."""
    tcp = Path("/proc/net/tcp")
    if not tcp.exists():
        return 0
    held = 0
    for line in tcp.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if int(local.rsplit(":", 1)[1], 16) == port and state in ("01", "08"):  # ESTABLISHED, CLOSE_WAIT
            held += 1
    return held


def test_connections_beyond_the_limit_are_refused_or_take_silent_ones_places(limited: tuple[str, int]) -> None:
    """Twice the limit of silent connections: each one past the limit takes the place of the oldest silent one (that
    one is closed without a word: it never sent a byte), or, should none be open yet on the server's side, gets a
    503 and is closed at once; the others are closed by the server after `LOSSD_KEEP_ALIVE_S`; then requests are
    served."""
    # connections of earlier tests, closed on the client's side, are closed on the server's
    wait_until(lambda: _open_on_the_server(limited[1]) == 0, PROMPT_S, "earlier tests' connections closed")
    start = time.monotonic()
    socks = [socket.create_connection(limited, timeout=PROMPT_S) for _ in range(2 * MAX_CONNECTIONS)]
    received: dict[socket.socket, bytes] = dict.fromkeys(socks, b"")
    closed_after: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while len(closed_after) < len(socks) and time.monotonic() - start < 3 * PROMPT_S:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                received[sock] += chunk
                if not chunk:
                    closed_after[sock] = time.monotonic() - start
                    selector.unregister(sock)
    try:
        assert len(closed_after) == len(socks), "some connections were never closed by the server"
        refused = [sock for sock in socks if received[sock]]
        for sock in refused:
            assert closed_after[sock] < PROMPT_S
            response = _parse_response(received[sock])
            assert response is not None, received[sock]
            status, headers, body, rest = response
            assert rest == b""
            _assert_problem(status, headers, body, 503, "overloaded")
            assert headers[b"retry-after"] == b"1"
        idle = sorted(closed_after[sock] for sock in socks if not received[sock])  # evicted, then timed out
        held = [t for t in idle if t >= KEEP_ALIVE_S * 0.8]
        assert MAX_CONNECTIONS - 2 <= len(held) <= MAX_CONNECTIONS  # (an earlier test's may not be seen closed yet)
        assert len(refused) + len(idle) - len(held) >= MAX_CONNECTIONS  # each one past the limit: refused, or evicted
        assert all(t < KEEP_ALIVE_S + PROMPT_S for t in held)
    finally:
        for sock in socks:
            sock.close()
    host, port = limited
    assert httpx.get(f"http://{host}:{port}/healthz", timeout=PROMPT_S).status_code == 200
    _normal_request_works(limited)


def test_a_client_between_requests_keeps_its_connection_against_silent_ones(limited: tuple[str, int]) -> None:
    """Connections that never send a whole request make room for one another, however young, not a keep-alive
    client between two requests (for a second): an attack that opened unused connections a hundred times a second
    closed such clients' connections when any connection idle a tenth of a second could be closed."""
    wait_until(lambda: _open_on_the_server(limited[1]) == 0, PROMPT_S, "earlier tests' connections closed")
    with socket.create_connection(limited, timeout=PROMPT_S) as client:
        client.sendall(_mse_request())
        status, _, _, _ = _read_response(client)
        assert status == 200
        time.sleep(0.3)  # not a wait: the client idles between two requests (the point)
        silent = [socket.create_connection(limited, timeout=PROMPT_S) for _ in range(MAX_CONNECTIONS + 5)]
        try:
            time.sleep(0.3)  # not a wait: the silent connections reach the server before the next request
            client.sendall(_mse_request())
            status, _, body, _ = _read_response(client)
            assert status == 200, body
        finally:
            for sock in silent:
                sock.close()


def test_a_connection_past_the_limit_of_busy_ones_is_refused() -> None:
    """When every connection of the limit is being answered (none waits on its client), a new one gets a 503 with
    Retry-After and is closed at once; the others get their answers."""
    settings = Settings(max_connections=3, read_timeout_s=30, keep_alive_s=30)
    arrived: list[int] = []
    with _in_process(settings, delay_s=5.0, arrived=arrived) as address:
        busy = [socket.create_connection(address, timeout=10 * PROMPT_S) for _ in range(3)]
        try:
            for sock in busy:
                sock.sendall(_mse_request())
            wait_until(lambda: len(arrived) == 3, PROMPT_S, "the three requests being answered")
            extra = socket.create_connection(address, timeout=PROMPT_S)
            try:
                status, headers, body, rest = _read_response(extra)
                assert rest == b""
                _assert_problem(status, headers, body, 503, "overloaded")
                assert headers[b"retry-after"] == b"1"
                assert _closed(extra)
            finally:
                extra.close()
            for sock in busy:
                status, _, body, _ = _read_response(sock)
                assert (status, body) == (200, b"ok")
        finally:
            for sock in busy:
                sock.close()


def _assert_cut_off(sock: socket.socket, elapsed: float) -> None:
    """A 408 problem about `LOSSD_READ_TIMEOUT_S` after the first byte, then the connection closed."""
    status, headers, body, rest = _read_response(sock)
    _assert_problem(status, headers, body, 408, "request-timeout")
    assert rest == b""
    assert _closed(sock)
    assert READ_TIMEOUT_S * 0.8 <= elapsed < READ_TIMEOUT_S + PROMPT_S


def test_slow_head_gets_408(limited: tuple[str, int]) -> None:
    """Slowloris: a request head sent a byte at a time is cut off `LOSSD_READ_TIMEOUT_S` after its first byte."""
    with socket.create_connection(limited, timeout=PROMPT_S) as sock:
        elapsed = _trickle(sock, _mse_request(b"X-Slow: " + b"s" * 40 + b"\r\n"))
        _assert_cut_off(sock, elapsed)
    _normal_request_works(limited)


def test_slow_body_gets_408(limited: tuple[str, int]) -> None:
    """A body sent slower than the deadline (less than its Content-Length, then a byte at a time): 408."""
    with socket.create_connection(limited, timeout=PROMPT_S) as sock:
        request = _mse_request()
        head_end = request.index(b"\r\n\r\n") + 4
        sock.sendall(request[: head_end + 5])
        elapsed = _trickle(sock, request[head_end + 5 :] * 2)
        _assert_cut_off(sock, elapsed)
    _normal_request_works(limited)


def _padded_request(head_bytes: int) -> bytes:
    """The mse request with an `X-Pad` header that makes its head (request line to blank line) `head_bytes`."""
    base = _mse_request(b"X-Pad: \r\n")
    pad = head_bytes - (base.index(b"\r\n\r\n") + 4)
    request = _mse_request(b"X-Pad: " + b"p" * pad + b"\r\n")
    assert request.index(b"\r\n\r\n") + 4 == head_bytes
    return request


def test_huge_header_gets_431_at_once(limited: tuple[str, int]) -> None:
    """A 1 MB header value: 431 before the server reads it (a 128 MB one used to take 18 s of CPU)."""
    request = _mse_request(b"X-Huge: " + b"h" * 2**20 + b"\r\n")
    with socket.create_connection(limited, timeout=PROMPT_S) as sock:
        start = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server stopped reading: its
            sock.sendall(request)  # answer is still there to read
        status, headers, body, _ = _read_response(sock)
        elapsed = time.monotonic() - start
        _assert_problem(status, headers, body, 431, "headers-too-large")
        assert _closed(sock)
    assert elapsed < PROMPT_S
    _normal_request_works(limited)


def test_header_size_limit_is_exact(limited: tuple[str, int]) -> None:
    """A head of exactly `LOSSD_MAX_HEADER_BYTES` is served; one byte more gets 431."""
    with socket.create_connection(limited, timeout=PROMPT_S) as sock:
        sock.sendall(_padded_request(MAX_HEADER_BYTES))
        status, _, body, _ = _read_response(sock)
        assert status == 200, body
        _assert_mse(json.loads(body))
    with socket.create_connection(limited, timeout=PROMPT_S) as sock:
        sock.sendall(_padded_request(MAX_HEADER_BYTES + 1))
        status, headers, body, _ = _read_response(sock)
        _assert_problem(status, headers, body, 431, "headers-too-large")
        assert _closed(sock)


def test_pipelined_requests_longer_than_the_limit(limited: tuple[str, int]) -> None:
    """Many requests in one write, together far longer than `LOSSD_MAX_HEADER_BYTES`: each head is within
    it, so every one is answered."""
    count = 4 * MAX_HEADER_BYTES // len(_mse_request())
    with socket.create_connection(limited, timeout=PROMPT_S) as sock:
        sock.sendall(_mse_request() * count)
        buffer, answered = b"", 0
        while answered < count:
            response = _parse_response(buffer)
            if response is None:
                chunk = sock.recv(65536)
                assert chunk, f"the connection closed after {answered} of {count} answers"
                buffer += chunk
                continue
            status, _, body, buffer = response
            assert status == 200, body
            _assert_mse(json.loads(body))
            answered += 1


def _chunked_request(trailer: bytes) -> bytes:
    body = b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(MSE_BODY), MSE_BODY, trailer)
    return HEAD_START + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + body


def test_huge_trailer_gets_431(limited: tuple[str, int]) -> None:
    """Trailer fields are headers too: a chunked body's 1 MB trailer gets 431; a small one is served."""
    with socket.create_connection(limited, timeout=PROMPT_S) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(_chunked_request(b"X-Huge: " + b"h" * 2**20 + b"\r\n"))
        status, headers, body, _ = _read_response(sock)
        _assert_problem(status, headers, body, 431, "headers-too-large")
        assert _closed(sock)
    with socket.create_connection(limited, timeout=PROMPT_S) as sock:
        sock.sendall(_chunked_request(b"X-Small: 1\r\n"))
        status, _, body, _ = _read_response(sock)
        assert status == 200, body
        _assert_mse(json.loads(body))


def test_idle_keep_alive_is_closed(limited: tuple[str, int]) -> None:
    """A keep-alive connection is served while it is used, and closed after `LOSSD_KEEP_ALIVE_S` idle."""
    with socket.create_connection(limited, timeout=PROMPT_S) as sock:
        start = time.monotonic()
        while time.monotonic() - start < 1.3 * KEEP_ALIVE_S:  # in use for longer than the idle limit
            sock.sendall(_mse_request())
            status, _, body, rest = _read_response(sock)
            assert (status, rest) == (200, b""), body
            _assert_mse(json.loads(body))
            time.sleep(KEEP_ALIVE_S / 4)  # not a wait: the client's pace, well within the idle limit
        idle_from = time.monotonic()
        assert _closed(sock, KEEP_ALIVE_S + PROMPT_S)
        assert time.monotonic() - idle_from >= KEEP_ALIVE_S * 0.6  # a quarter of it was idle already
    _normal_request_works(limited)


@contextlib.contextmanager
def _in_process(
    settings: Settings, delay_s: float = 0.0, arrived: list[int] | None = None
) -> Iterator[tuple[str, int]]:
    """A uvicorn server in a thread of this process, with lossd's options for `settings` and an app that reads
    the body (noting it in `arrived`), waits `delay_s` and answers `ok`: (host, port). For what needs no torch,
    only other settings."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        if arrived is not None:
            arrived.append(1)
        await asyncio.sleep(delay_s)  # not a wait: an app that takes `delay_s` to answer
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", **uvicorn_options(settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:

        def started() -> bool:
            assert thread.is_alive(), "the server exited during start-up"
            return bool(server.started)

        wait_until(started, 30, "the in-process server started")
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _ok(sock: socket.socket) -> None:
    sock.sendall(_mse_request())
    status, _, body, rest = _read_response(sock)
    assert (status, body, rest) == (200, b"ok", b"")


def test_read_deadline_spares_a_request_being_computed() -> None:
    """A request whose body has all arrived is not timed by the read deadline, however long the app takes."""
    settings = Settings(read_timeout_s=0.3, keep_alive_s=0.3, log_level="warning")
    with _in_process(settings, delay_s=1.0) as address, socket.create_connection(address, timeout=PROMPT_S) as sock:
        _ok(sock)


def test_idle_deadline_is_kept_under_a_long_read_deadline() -> None:
    """Idle connections close after `keep_alive_s` however long `read_timeout_s` is, also after a request that
    took longer than `keep_alive_s` to arrive."""
    settings = Settings(read_timeout_s=30, keep_alive_s=0.3, log_level="warning")
    with _in_process(settings) as address, socket.create_connection(address, timeout=PROMPT_S) as sock:
        request = _mse_request()
        sock.sendall(request[:20])
        time.sleep(0.5)  # not a wait: the request takes longer than keep_alive_s to arrive, which is the point
        sock.sendall(request[20:])
        status, _, body, _ = _read_response(sock)
        assert (status, body) == (200, b"ok")
        idle_from = time.monotonic()
        assert _closed(sock, PROMPT_S)
        assert 0.2 <= time.monotonic() - idle_from < PROMPT_S / 2


def test_read_deadline_is_kept_under_a_long_idle_deadline() -> None:
    """A slow head gets its 408 after `read_timeout_s` however long `keep_alive_s` is (a request before)."""
    settings = Settings(read_timeout_s=0.3, keep_alive_s=30, log_level="warning")
    with _in_process(settings) as address, socket.create_connection(address, timeout=PROMPT_S) as sock:
        _ok(sock)
        assert _trickle(sock, _mse_request(), every_s=0.05) < PROMPT_S / 2
        status, headers, body, _ = _read_response(sock)
        _assert_problem(status, headers, body, 408, "request-timeout")


@pytest.mark.parametrize(("soft", "hard", "expected"), [(512, 4096, 856), (512, 700, 700), (2048, 4096, 2048)])
def test_open_files_limit_fits_the_connections(soft: int, hard: int, expected: int) -> None:
    """`serve` raises a low soft limit on open files to fit LOSSD_MAX_CONNECTIONS=600 (plus headroom), up to
    the hard limit (with a warning short of it), and never lowers it."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < hard:
        pytest.skip("this process's hard limit on open files is lower than the case needs")
    code = (
        "import resource; from service.config import Settings; from service.server import ensure_file_limit; "
        "ensure_file_limit(Settings(max_connections=600)); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == expected
    assert ("LOSSD_MAX_CONNECTIONS=600" in run.stderr) == (expected < 856), run.stderr


def test_slow_senders_at_the_limit_give_way_to_new_clients() -> None:
    """Connections held open by a client that sends slowly (long read and keep-alive deadlines here) fill the
    limit; a new client still gets its answer: the connection that waited longest on its client is closed (408)
    to make room (it has never sent a whole request: however young)."""
    url, proc = start_server(LOSSD_MAX_CONNECTIONS="10", LOSSD_READ_TIMEOUT_S="30", LOSSD_KEEP_ALIVE_S="30")
    split = urlsplit(url)
    assert split.hostname is not None
    assert split.port is not None
    address = (split.hostname, split.port)
    slow = [socket.create_connection(address, timeout=PROMPT_S) for _ in range(10)]
    try:
        for sock in slow:
            sock.sendall(HEAD_START)  # a request head that never ends
        for _ in range(3):  # each new client takes the place of the oldest slow sender
            response = httpx.post(f"{url}/v1/losses/mse", json=MSE, timeout=PROMPT_S)
            assert response.status_code == 200, response.text
            expected = F.mse_loss(torch.tensor(MSE["input"]), torch.tensor(MSE["target"]))
            assert response.json()["loss"] == expected.item()
        evicted = []
        for sock in slow:
            sock.settimeout(0.2)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if data:
                evicted.append(data)
        assert evicted, "no slow sender was closed to make room"
        assert all(data.startswith(b"HTTP/1.1 408") for data in evicted), evicted[0][:200]
    finally:
        for sock in slow:
            sock.close()
        stop_server(proc)


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"GARBAGE\r\n\r\n", "Invalid method encountered"),
        (HEAD_START + b"Content-Length: abc\r\n\r\n", "Invalid character in Content-Length"),
        (
            HEAD_START + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding can't be present with Content-Length",
        ),
        (HEAD_START + b"X-Bad: a\x01b\r\n\r\n", "Invalid header value char"),
    ],
    ids=["request-line", "content-length", "length-and-chunked", "header-value"],
)
def test_bytes_that_are_not_http_get_a_problem(limited: tuple[str, int], request_bytes: bytes, reason: str) -> None:
    """Bytes that are not an HTTP/1.1 request get a 400 problem document (with the parser's reason) and the
    connection closes: no plain-text error, whatever part of the request is wrong."""
    with socket.create_connection(limited, timeout=PROMPT_S) as sock:
        sock.sendall(request_bytes)
        status, headers, body, _ = _read_response(sock)
        _assert_problem(status, headers, body, 400, "malformed-request")
        assert json.loads(body)["detail"] == f"the request is not valid HTTP/1.1: {reason}"
        assert _closed(sock)
    _normal_request_works(limited)


# --- clients that do not read their answers ------------------------------------------------------------------------

WRITE_TIMEOUT_S = 2.0
BIG_ANSWER = json.dumps({"input": [[0.5]] * 1000, "target": [[0.25] * 1000], "reduction": "none"}).encode()
"""A 13 kB request whose answer, broadcast to 1000 x 1000, is 7 MB of JSON."""
BIG_ANSWER_BYTES = 7 * 10**6


def _unread_answer(address: tuple[str, int], small_buffer: bool = True) -> socket.socket:
    """A connection that asks for `BIG_ANSWER` and reads nothing yet (its receive buffer as small as may be)."""
    sock = socket.socket()
    if small_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(PROMPT_S)
    sock.connect(address)
    head = HEAD_START + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BIG_ANSWER)
    sock.sendall(head + BIG_ANSWER)
    return sock


def _drain(sock: socket.socket) -> int:
    """Read what the server sent until it closed (or reset) the connection: the bytes read."""
    total = 0
    sock.settimeout(PROMPT_S)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    return total


@pytest.fixture(scope="module")
def unread_limits() -> Iterator[tuple[str, int]]:
    """The service with a short write timeout and an in-flight bound smaller than one `BIG_ANSWER`."""
    env = {"LOSSD_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S), "LOSSD_MAX_INFLIGHT_BYTES": str(4 * 2**20)}
    with _serving(**env, LOSSD_MAX_BODY_BYTES="65536") as address:
        yield address


def test_an_unread_answer_gives_way_when_room_is_wanted() -> None:
    """An answer its client does not read counts against LOSSD_MAX_INFLIGHT_BYTES: the next request gets a 503
    saying so (instead of answers piling up in memory), and such refusals cut off the connection once its client
    has taken nothing for 2 s, so that the requests after them are served, long before LOSSD_WRITE_TIMEOUT_S
    (60 s here) would cut it off."""
    env = {"LOSSD_WRITE_TIMEOUT_S": "60", "LOSSD_MAX_INFLIGHT_BYTES": str(4 * 2**20)}
    with _serving(**env, LOSSD_MAX_BODY_BYTES="65536") as address:
        _relief(address)


def _relief(address: tuple[str, int]) -> None:
    host, port = address
    sock = _unread_answer(address)
    try:
        refused: list[dict[str, Any]] = []

        def refused_for_unread_answers() -> bool:
            response = httpx.post(f"http://{host}:{port}/v1/losses/mse", json=MSE, timeout=PROMPT_S)
            if response.status_code == 503:
                refused.append(response.json())
            return bool(refused)

        wait_until(refused_for_unread_answers, 3 * PROMPT_S, "a request refused while the answer is unread")
        assert refused[0]["type"] == "/problems/overloaded"
        assert "answers not yet read by their clients" in refused[0]["detail"]
        wait_until(lambda: _serves(address), 3 * PROMPT_S, "served again, the stalled answer cut off for room")
        assert _drain(sock) < BIG_ANSWER_BYTES  # cut off: most of the answer was dropped, never sent
    finally:
        sock.close()
    _normal_request_works(address)


def test_an_unread_answer_is_cut_off_at_the_write_timeout(unread_limits: tuple[str, int]) -> None:
    """With no request wanting its room, an answer its client does not read is cut off when LOSSD_WRITE_TIMEOUT_S
    passes without the client reading."""
    port = unread_limits[1]
    wait_until(lambda: _open_on_the_server(port) == 0, PROMPT_S, "earlier tests' connections closed")
    sock = _unread_answer(unread_limits)
    try:
        started = time.monotonic()
        wait_until(lambda: _open_on_the_server(port) == 0, WRITE_TIMEOUT_S + 3 * PROMPT_S, "the connection cut")
        assert time.monotonic() - started >= WRITE_TIMEOUT_S * 0.8
        assert _drain(sock) < BIG_ANSWER_BYTES
    finally:
        sock.close()
    _normal_request_works(unread_limits)


def _serves(address: tuple[str, int]) -> bool:
    host, port = address
    response = httpx.post(f"http://{host}:{port}/v1/losses/mse", json=MSE, timeout=PROMPT_S)
    if response.status_code == 200:
        _assert_mse(response.json())
    return response.status_code == 200


def test_a_client_that_reads_slowly_gets_its_whole_answer(unread_limits: tuple[str, int]) -> None:
    """Reading some of the answer within every LOSSD_WRITE_TIMEOUT_S keeps the connection: the whole answer
    arrives, exactly torch's, even when taking it takes several times the timeout."""
    sock = _unread_answer(unread_limits, small_buffer=False)
    try:
        buffer = b""
        started = time.monotonic()
        while (response := _parse_response(buffer)) is None:
            time.sleep(WRITE_TIMEOUT_S / 3)
            chunk = sock.recv(1 << 20)
            assert chunk, "the connection was cut while the client was reading"
            buffer += chunk
        status, _, body, _ = response
        assert status == 200
        assert time.monotonic() - started > 2 * WRITE_TIMEOUT_S
        loss = json.loads(body)["loss"]
        expected = F.mse_loss(torch.full((1000, 1), 0.5), torch.full((1, 1000), 0.25), reduction="none")
        assert torch.equal(torch.tensor(loss), expected)
    finally:
        sock.close()


def test_connections_not_reading_their_answers_give_way_to_new_clients() -> None:
    """Every connection of the limit holds an answer its client does not read: a new client still gets in, as
    the connection that has waited longest on its client is cut for it."""
    socks: list[socket.socket] = []
    with _serving(LOSSD_MAX_CONNECTIONS="4") as address:
        try:
            wait_until(lambda: _open_on_the_server(address[1]) == 0, PROMPT_S, "the start-up check's connection closed")
            socks = [_unread_answer(address) for _ in range(4)]
            wait_until(lambda: _serves(address), 3 * PROMPT_S, "a new client served at the connection limit")
            cut = [sock for sock in socks if _drain(sock) < BIG_ANSWER_BYTES]
            assert cut, "no connection was cut for the new client"
        finally:
            for sock in socks:
                sock.close()
