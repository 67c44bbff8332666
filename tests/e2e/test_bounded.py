"""Bounded cost, against the real server: a timeout stops the work (its worker process is killed), body
bytes are admitted before they are read, a drain that runs out answers 503, hang-ups count as 499, and
settings that could never admit a request are refused at start-up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import torch.nn.functional as F

from tests import wire
from tests.e2e.conftest import ROOT, start_server, stop_server
from tests.e2e.metrics import computing, in_flight, metric
from tests.e2e.test_scheduling import BROADCAST
from tests.wait import wait_until

SMALL = {"input": [1.0, 2.0, 4.0], "target": [1.5, 2.5, 3.0]}


def _expected_small() -> float:
    return F.mse_loss(torch.tensor(SMALL["input"]), torch.tensor(SMALL["target"])).item()


def _still_correct(url: str) -> None:
    response = httpx.post(f"{url}/v1/losses/mse", json=SMALL, timeout=30)
    assert response.status_code == 200, response.text
    wire.assert_same(response.json()["loss"], F.mse_loss(torch.tensor(SMALL["input"]), torch.tensor(SMALL["target"])))


def _children() -> dict[int, list[int]]:
    """Every process's children, by the parent's pid."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _live_workers(pid: int) -> list[int]:
    """The worker processes of the server `pid` (children of its fork server, two levels below it) that have not
    exited: neither gone nor a zombie."""
    children = _children()
    live = []
    for worker in (w for server in children.get(pid, []) for w in children.get(server, [])):
        try:
            state = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.append(worker)
    return live


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by `pid` and every process below it."""
    children = _children()
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@pytest.fixture(scope="module")
def short_timeout() -> Iterator[tuple[str, int]]:
    url, proc = start_server(LOSSD_REQUEST_TIMEOUT_S="0.5", LOSSD_MAX_CONCURRENCY="2", LOSSD_DRAIN_TIMEOUT_S="1")
    try:
        yield url, proc.pid
    finally:
        stop_server(proc)


def test_a_timeout_stops_the_work_and_frees_its_slot(short_timeout: tuple[str, int]) -> None:
    """Two waves of expensive requests, each past the timeout: every one gets its 504, the computations stop
    (the process tree goes idle: nothing keeps computing in the background), and the server answers."""
    url, pid = short_timeout
    for _wave in range(2):
        answers: list[httpx.Response] = []

        def post(into: list[httpx.Response] = answers) -> None:
            into.append(httpx.post(f"{url}/v1/losses/mse", json=BROADCAST, timeout=60))

        posts = [threading.Thread(target=post) for _ in range(2)]
        for post in posts:
            post.start()
        for post in posts:
            post.join()
        assert [a.status_code for a in answers] == [504, 504], [a.text for a in answers]
        assert answers[0].headers["content-type"] == "application/problem+json"
        # every worker was computing a request that timed out: each was killed (workers start on demand only)
        wait_until(lambda: not _live_workers(pid), 5, "the workers of the timed-out requests killed")
    before = _tree_cpu_seconds(pid)
    time.sleep(1.0)  # not a wait: the window in which the CPU used is measured
    used = _tree_cpu_seconds(pid) - before
    # a computation left running would use about a second of CPU in that second (two, with two of them)
    assert used < 0.5, f"{used:.2f} s of CPU used in the second after the timeouts: the work did not stop"
    assert computing(url) == 0
    _still_correct(url)


def test_work_that_is_long_but_small_is_stopped_too(short_timeout: tuple[str, int]) -> None:
    """multilabel_margin takes N x C x C steps in little memory (C=32,768: seconds of CPU for a 400 KB body):
    its cost model counts the steps, so it runs in a worker process and the timeout stops it."""
    url, pid = short_timeout
    classes = 32_768
    body = {"input": [0.5] * classes, "target": list(range(classes))}
    response = httpx.post(f"{url}/v1/losses/multilabel_margin", json=body, timeout=60)
    assert response.status_code == 504, response.text[:300]
    wait_until(lambda: not _live_workers(pid), 5, "the worker of the timed-out request killed")
    before = _tree_cpu_seconds(pid)
    time.sleep(1.0)  # not a wait: the window in which the CPU used is measured
    used = _tree_cpu_seconds(pid) - before
    assert used < 0.5, f"{used:.2f} s of CPU used in the second after the timeout: the work did not stop"
    small = {"input": [[0.1, 0.2, 0.4, 0.8]], "target": [[3, 0, -1, 1]]}
    answer = httpx.post(f"{url}/v1/losses/multilabel_margin", json=small, timeout=30)
    assert answer.status_code == 200, answer.text
    expected = F.multilabel_margin_loss(torch.tensor(small["input"]), torch.tensor(small["target"]))
    wire.assert_same(answer.json()["loss"], expected)


def test_body_bytes_are_admitted_before_they_are_read() -> None:
    """With 1 MiB of body bytes allowed in flight, a client that holds 900 KB (sending slowly) leaves no room
    for a second 500 KB body: its request is refused at once, before its body is sent."""
    url, proc = start_server(LOSSD_MAX_BODY_BYTES="1048576", LOSSD_MAX_INFLIGHT_BYTES="1048576")
    host, port = url.removeprefix("http://").split(":")
    try:
        holder = socket.create_connection((host, int(port)))
        holder.sendall(
            b"POST /v1/losses/mse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 900000\r\n\r\n" + b" " * 1000
        )
        wait_until(lambda: in_flight(url) == 1, 10, "the server reading the held request: 900,000 bytes held")
        second = socket.create_connection((host, int(port)))
        second.settimeout(5)
        started = time.monotonic()
        second.sendall(
            b"POST /v1/losses/mse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500000\r\n\r\n"
        )
        head = second.recv(65536)
        while not head.endswith(b"}"):  # the problem document may follow the head in a packet of its own
            more = second.recv(65536)
            if not more:
                break
            head += more
        assert head.startswith(b"HTTP/1.1 503"), head[:200]
        assert b"retry-after: 1" in head.lower()
        assert b"LOSSD_MAX_INFLIGHT_BYTES" in head
        assert time.monotonic() - started < 2
        second.close()
        holder.close()  # its bytes are given back
        wait_until(lambda: in_flight(url) == 0, 10, "the held request ended, its bytes given back")
        _still_correct(url)
        padded = httpx.post(
            f"{url}/v1/losses/mse",
            content=httpx.Request("POST", url, json=SMALL).content + b" " * 500_000,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert padded.status_code == 200, padded.text
        wire.assert_same(padded.json()["loss"], torch.tensor(_expected_small()))
    finally:
        stop_server(proc)


def test_hang_ups_count_as_499(short_timeout: tuple[str, int]) -> None:
    url, _ = short_timeout
    host, port = url.removeprefix("http://").split(":")
    before = metric(url, "lossd_requests_total", route="/v1/losses/{name}", status="499")
    for path in (b"/v1/losses/mse", b"/v1/evaluate", b"/v2/models/mse/infer"):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            s.sendall(b'Content-Length: 1000\r\n\r\n{"input": [1.0')
            wait_until(lambda: in_flight(url) == 1, 10, f"the server reading the request to {path.decode()}")
        # hung up: the request ends, and is counted as it ends
        wait_until(lambda: in_flight(url) == 0, 10, f"the request to {path.decode()} ended")
    assert metric(url, "lossd_requests_total", route="/v1/losses/{name}", status="499") == before + 1
    assert metric(url, "lossd_requests_total", status="500") == 0
    _still_correct(url)


def test_a_drain_that_runs_out_answers_503() -> None:
    """SIGTERM with a request computing past LOSSD_DRAIN_TIMEOUT_S (0 here: the drain runs out at once): it
    gets a 503 problem, not a bare 500, and the process exits 0 soon after."""
    url, proc = start_server(LOSSD_DRAIN_TIMEOUT_S="0")
    answer: dict[str, httpx.Response] = {}

    def post() -> None:
        answer["r"] = httpx.post(f"{url}/v1/losses/mse", json=BROADCAST, timeout=60)

    thread = threading.Thread(target=post)
    thread.start()
    wait_until(lambda: computing(url) == 1, 30, "the computation (over a second) begun")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - started
    thread.join(timeout=30)
    assert code == 0
    # about 0.3 s here: the 503, then the worker killed at shutdown
    assert elapsed < 5, f"exited {elapsed:.1f} s after SIGTERM with no drain time"
    response = answer["r"]
    assert response.status_code == 503, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    assert "shutting down" in response.json()["detail"]


def test_settings_that_admit_nothing_are_refused_at_start() -> None:
    env = os.environ | {"LOSSD_MAX_CONCURRENCY": "1", "LOSSD_MAX_QUEUE": "0", "LOSSD_PORT": "0"}
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert run.returncode != 0
    assert b"LOSSD_MAX_CONCURRENCY + LOSSD_MAX_QUEUE must be at least 2" in run.stderr
