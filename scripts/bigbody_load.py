"""Large-body load: many clients each send a 39 MB JSON body at once; lossd's peak memory against the README's
formula.

Starts `python -m service` with its defaults on a free loopback port, builds one mse request over 1M float32
values written as JSON numbers (about 39 MB), and lets `--clients` clients (160 by default) send it at the same
moment, each over its own connection, `--rounds` times. Bodies beyond `LOSSD_MAX_INFLIGHT_BYTES` are refused
with 503 before they are read. The resident memory of the server and its worker processes is sampled every
20 ms; the peak is compared with the formula of the README's Limits section:

    350 MB + 2 x LOSSD_MAX_INFLIGHT_BYTES + LOSSD_MAX_CONCURRENCY x (work of one request) + 150 MB a worker

Every 200 is checked against torch. Exits non-zero on a wrong answer, a status other than 200 and 503, or a peak
above the formula.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.config import Settings  # noqa: E402

MB = 2**20


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def start(port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    env |= {"LOSSD_PORT": str(port), "LOSSD_DEVICE": "cpu", "LOSSD_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the service did not start")


async def send_all(url: str, body: bytes, clients: int, expected: float) -> tuple[Counter[int], int]:
    statuses: Counter[int] = Counter()
    wrong = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one() -> None:
            nonlocal wrong
            try:
                response = await client.post(url, content=body, headers={"content-type": "application/json"})
            except httpx.TransportError:
                statuses[0] += 1  # the server closed the connection while the body was on its way
                return
            statuses[response.status_code] += 1
            if response.status_code == 200 and response.json()["loss"] != expected:
                wrong += 1

        await asyncio.gather(*(one() for _ in range(clients)))
    return statuses, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n", type=int, default=1_000_000, help="elements of each tensor")
    args = parser.parse_args()
    settings = Settings()
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal(args.n).astype(np.float32) for _ in range(2))
    body = orjson.dumps(
        {"input": x.astype(np.float64), "target": y.astype(np.float64)}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    expected = F.mse_loss(torch.from_numpy(x), torch.from_numpy(y)).item()
    proc = start(port)
    peak, idle = 0, tree_rss(proc.pid)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    totals: Counter[int] = Counter()
    wrong = 0
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}/v1/losses/mse"
    try:
        for _ in range(args.rounds):
            statuses, bad = asyncio.run(send_all(url, body, args.clients, expected))
            totals += statuses
            wrong += bad
        after = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=300)
        if after.status_code != 200 or after.json()["loss"] != expected:
            raise SystemExit(f"the request after the load failed: {after.text[:200]}")
    finally:
        stop.set()
        sampler.join()
        proc.terminate()
        proc.wait(timeout=60)
    work = (2 * args.n + 2 * args.n) * 4  # mse without gradients: both tensors, the broadcast result and the loss
    formula = 350 * MB + 2 * settings.max_inflight_bytes + settings.max_concurrency * (work + 150 * MB)
    took = time.monotonic() - started
    print(f"body: {len(body) / MB:.1f} MiB, {args.clients} clients x {args.rounds} rounds in {took:.1f} s")
    print(f"answers by status: {dict(sorted(totals.items()))} (0: connection closed by the server), wrong: {wrong}")
    print(f"server RSS: idle {idle / MB:.0f} MiB, peak {peak / MB:.0f} MiB; the formula gives {formula / MB:.0f} MiB")
    failed = wrong or set(totals) - {200, 503} or peak > formula or not totals[200]
    if failed:
        raise SystemExit("FAILED")
    print("OK: peak memory within the formula, every answer correct or refused with 503")


if __name__ == "__main__":
    main()
