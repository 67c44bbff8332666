"""A short, bounded version of `make loadtest` against the real server: mixed losses, sizes and bad
requests from concurrent clients; no 5xx, no wrong answer, and memory that does not keep growing."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.e2e.conftest import PIDS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import loadtest


def test_short_load(server: str) -> None:
    pid = PIDS[server]
    asyncio.run(loadtest.run(server, requests=200, seconds=30, clients=8, sample=1.0, pid=pid, seed=1))  # warm-up
    report = asyncio.run(loadtest.run(server, requests=600, seconds=60, clients=8, sample=0.5, pid=pid, seed=2))
    summary = report.summary()
    assert summary["requests"] >= 100, summary
    assert summary["server_errors"] == 0, summary
    assert summary["by_status"].get(503, 0) == 0, summary  # 8 clients fit in the default queue
    assert summary["wrong_answers"] == 0, summary
    assert summary["checked_answers"] > 0, summary
    assert {200, 404, 422} <= set(summary["by_status"]), summary
    assert summary["rss_after_mb"] - summary["rss_before_mb"] < 100, summary  # MB, after warm-up
