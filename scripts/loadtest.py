"""Bounded load test of a running lossd (loopback only): mixed losses, sizes and bad requests from
concurrent clients, each good answer sampled against torch. Stops by itself after --requests or
--seconds, whichever comes first.

    python scripts/loadtest.py --url http://127.0.0.1:8000 --requests 20000 --seconds 120 --clients 16
Prints throughput, p50/p99, counts by status, wrong answers, and the server's RSS before and after
(with --pid). Exits non-zero on any 5xx or wrong answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import torch.nn.functional as F

LOOPBACK = ("127.", "localhost", "[::1]")


@dataclass
class Report:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    wrong: int = 0
    checked: int = 0
    elapsed: float = 0.0
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None

    def summary(self) -> dict[str, Any]:
        ms = np.array(self.latencies) * 1e3 if self.latencies else np.array([0.0])
        return {
            "requests": sum(self.statuses.values()),
            "throughput_rps": round(sum(self.statuses.values()) / max(self.elapsed, 1e-9), 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "by_status": dict(sorted(self.statuses.items())),
            "server_errors": sum(n for s, n in self.statuses.items() if s >= 500 and s != 503),
            "wrong_answers": self.wrong,
            "checked_answers": self.checked,
            "rss_before_mb": self.rss_before_mb,
            "rss_after_mb": self.rss_after_mb,
        }


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def make_request(rng: random.Random) -> tuple[str, dict[str, Any], Any]:
    """A request and how to check its answer: a torch callable giving the expected loss, or None for bad ones."""
    kind = rng.choice(["mse", "mse", "cross_entropy", "smooth_l1", "focal_bad", "ragged", "unknown", "ctc"])
    n = rng.choice([1, 10, 1000, 20000])
    if kind in ("mse", "smooth_l1"):
        x, y = torch.randn(n), torch.randn(n)
        fn = F.mse_loss if kind == "mse" else F.smooth_l1_loss
        return f"/v1/losses/{kind}", {"input": x.tolist(), "target": y.tolist()}, lambda: fn(x, y)
    if kind == "cross_entropy":
        logits, labels = torch.randn(min(n, 500), 7), torch.randint(0, 7, (min(n, 500),))
        body = {"input": logits.tolist(), "target": labels.tolist(), "return_grad": True}
        return "/v1/losses/cross_entropy", body, lambda: F.cross_entropy(logits, labels)
    if kind == "ctc":
        lp = torch.randn(12, 2, 5).log_softmax(2)
        body = {
            "log_probs": lp.tolist(),
            "targets": [[1, 2, 3], [4, 4, 1]],
            "input_lengths": [12, 10],
            "target_lengths": [3, 3],
        }
        return (
            "/v1/losses/ctc",
            body,
            lambda: F.ctc_loss(lp, torch.tensor([[1, 2, 3], [4, 4, 1]]), torch.tensor([12, 10]), torch.tensor([3, 3])),
        )
    if kind == "focal_bad":
        return "/v1/losses/focal", {"input": [[1.0, 2.0]], "target": [9]}, None
    if kind == "ragged":
        return "/v1/losses/mse", {"input": [[1.0], [2.0, 3.0]], "target": [1.0]}, None
    return "/v1/losses/no_such_loss", {"input": [1.0]}, None


async def client_loop(
    client: httpx.AsyncClient, rng: random.Random, report: Report, deadline: float, budget: list[int], sample: float
) -> None:
    while budget[0] > 0 and time.perf_counter() < deadline:
        budget[0] -= 1
        path, body, expected = make_request(rng)
        start = time.perf_counter()
        try:
            response = await client.post(path, json=body)
        except httpx.TransportError:
            report.statuses[0] += 1
            continue
        report.latencies.append(time.perf_counter() - start)
        report.statuses[response.status_code] += 1
        if expected is None:
            if response.status_code < 400 or response.status_code >= 500:
                report.wrong += 1
        elif response.status_code == 200 and rng.random() < sample:
            report.checked += 1
            if not torch.isclose(
                torch.tensor(float(response.json()["loss"]), dtype=torch.float64),
                expected().double(),
                rtol=1e-5,
                atol=1e-6,
            ):
                report.wrong += 1


async def run(
    url: str, requests: int, seconds: float, clients: int, sample: float, pid: int | None, seed: int
) -> Report:
    report = Report(rss_before_mb=rss_mb(pid))
    budget = [requests]
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(
            *(client_loop(client, random.Random(seed + i), report, deadline, budget, sample) for i in range(clients))
        )
    report.elapsed = time.perf_counter() - start
    report.rss_after_mb = rss_mb(pid)
    return report


def spawn() -> tuple[str, subprocess.Popen[bytes]]:
    """Start the service on a free loopback port and wait until it is ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {
        "LOSSD_HOST": "127.0.0.1",
        "LOSSD_PORT": str(port),
        "LOSSD_DEVICE": "cpu",
        "LOSSD_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=Path(__file__).resolve().parents[1], env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return url, proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("the service did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sample", type=float, default=0.2, help="share of good answers checked against torch")
    parser.add_argument("--pid", type=int, default=None, help="server pid, for RSS before and after")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spawn", action="store_true", help="start `python -m service` on a free loopback port")
    args = parser.parse_args()
    server = spawn() if args.spawn else None
    url, pid = (server[0], server[1].pid) if server else (args.url, args.pid)
    if not any(part in url for part in LOOPBACK):
        sys.exit("the load test only targets loopback addresses")
    try:
        report = asyncio.run(run(url, args.requests, args.seconds, args.clients, args.sample, pid, args.seed))
    finally:
        if server:
            server[1].terminate()
            server[1].wait(timeout=30)
    summary = report.summary()
    print(json.dumps(summary, indent=2))
    sys.exit(1 if summary["server_errors"] or summary["wrong_answers"] else 0)


if __name__ == "__main__":
    main()
