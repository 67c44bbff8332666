"""Start the real service (`python -m service`) on a free loopback port, and stop it afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests import wire

ROOT = Path(__file__).resolve().parents[2]

PIDS: dict[str, int] = {}
"""The process id of each running test server, by URL."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(output: IO[bytes] | None = None, **env: str) -> tuple[str, subprocess.Popen[bytes]]:
    """`python -m service` on a free loopback port, ready to answer; its stdout and stderr go to `output`
    when given."""
    port = free_port()
    settings = {
        "LOSSD_HOST": "127.0.0.1",
        "LOSSD_PORT": str(port),
        "LOSSD_DEVICE": wire.DEVICE,
        "LOSSD_LOG_LEVEL": "warning",
    }
    argv = [sys.executable, "-m", "service"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=os.environ | settings | env, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "the service exited during start-up"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the service did not become ready in 60 s"
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    url, proc = start_server()
    PIDS[url] = proc.pid
    try:
        yield url
    finally:
        stop_server(proc)
