"""Side-by-side benchmark: lossd against the servers users would otherwise write, same machine, same run.

Each server is started alone on a free loopback port (pinned to core 0 where `taskset` exists), warmed
up, then driven by one load generator (wrk with `wrk.lua`, pinned to core 1; an asyncio httpx loop when
wrk is missing) at a fixed concurrency for a fixed time. Every answer is checked against torch before it
counts: one wrong answer fails the benchmark. Results go to stdout and bench/RESULTS.md.

lossd runs with its defaults as users get them (log level info, the JSON access log on), except
LOSSD_DEVICE=cpu and LOSSD_TORCH_THREADS=1, because every peer computes on the CPU with torch on one
thread; LOSSD_* variables of the calling environment are not passed on. "lossd (log off)" is the same
server with LOSSD_ACCESS_LOG=false, to measure what the access log costs. Every server's stdout and
stderr go to a temporary file (one JSON line per request from lossd), never to a pipe nobody reads.
After each lossd run, /metrics is scraped before and after the load: the difference of
`lossd_gc_pause_seconds` gives the garbage collector's pauses during the measured window.

The results are followed by a "targets" table (tail latency against the minimal FastAPI endpoint, cost of
the access log), measured apart: the servers of each target run in alternation, three rounds each, and the
medians count. A "garbage collection" table follows.

lossd also serves gRPC (`inference.GRPCInferenceService`): the "lossd gRPC" rows send ModelInfer with the same
tensors, typed contents at N=1 and N=1,000 and raw contents at N=1M, from bench/grpc_load.py (grpc.aio, pinned
to core 1 like wrk, every answer checked). Every other lossd server runs with LOSSD_GRPC_PORT=0. The "gRPC
targets" compare them with lossd's HTTP rows, in the targets' alternating rounds.

    python bench/run.py            # everything (about 10 minutes on 2 cores)
    python bench/run.py --quick    # N=1 and N=1,000 only (about 8 minutes)
    python bench/run.py --seconds 2 --rounds 1 --out /tmp/smoke.md \\
        --only 'gRPC|^mse N=1 JSON nested c=8 / lossd$|^mse N=1,000,000 v2 binary c=2 / lossd$'
                                   # a smoke run: the gRPC rows and targets only, 2 s each, one round
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import grpc_load  # bench/grpc_load.py, beside this script
import httpx
import numpy as np
import orjson
import torch
import torch.nn.functional as F
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the service's own modules, for the in-process time split
PY = sys.executable
LOSS_JSON = r'"loss"%s*:%s*([-%d%.eE+]+)'
LOSS_V2 = r'"name":"loss".-"data":%[([-%d%.eE+]+)'


LOSSD = "lossd"
LOSSD_LOG_OFF = "lossd (log off)"
LOSSD_GRPC = "lossd gRPC"
MINIMAL = "minimal FastAPI"
GC_METRIC = "lossd_gc_pause_seconds"  # histogram, label `generation` (service/api/metrics.py)
TAIL_TARGET = 1.5  # lossd's p99 at most 1.5x the minimal FastAPI endpoint's, at N=1 and N=1,000
LOG_TARGET = 0.95  # lossd with its access log at least 0.95x the req/s of lossd without it, at N=1,000
V2_1M = "mse N=1,000,000 v2 binary c=2"
GRPC_WARMUP_S = 0.5
"""Load before the measured window of a gRPC row (channels connected, first calls made, answers checked)."""
GRPC_BUSY = 0.9
"""A gRPC row whose load generator used more than this share of its core is reported: it may have set the pace."""


@dataclass
class Server:
    name: str
    argv: list[str]
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    metrics_path: str | None = None  # a Prometheus endpoint with lossd's metrics
    grpc_port: int | None = None  # where the load goes, over gRPC (bench/grpc_load.py), instead of HTTP


def servers(port: int) -> dict[str, Server]:
    # lossd's defaults, but on the CPU with torch on one thread, as every peer runs (fairness); gRPC off but
    # for the gRPC server (its default port, 8001, could clash)
    lossd_env = {
        "LOSSD_PORT": str(port),
        "LOSSD_GRPC_PORT": "0",
        "LOSSD_DEVICE": "cpu",
        "LOSSD_TORCH_THREADS": "1",
    }
    grpc_port = free_port(port)
    peer = [PY]
    return {
        LOSSD: Server(LOSSD, [PY, "-m", "service"], "/readyz", lossd_env, "/metrics"),
        LOSSD_GRPC: Server(
            LOSSD_GRPC,
            [PY, "-m", "service"],
            "/readyz",  # ready once the gRPC server has started too
            lossd_env | {"LOSSD_GRPC_PORT": str(grpc_port)},
            "/metrics",
            grpc_port,
        ),
        LOSSD_LOG_OFF: Server(
            LOSSD_LOG_OFF, [PY, "-m", "service"], "/readyz", lossd_env | {"LOSSD_ACCESS_LOG": "false"}, "/metrics"
        ),
        "naive FastAPI": Server("naive FastAPI", [*peer, str(HERE / "peers/naive_fastapi.py"), str(port)], "/docs"),
        "LitServe": Server("LitServe", [*peer, str(HERE / "peers/litserve_server.py"), str(port)], "/health"),
        "minimal FastAPI": Server(
            "minimal FastAPI", [*peer, str(HERE / "peers/minimal_fastapi.py"), str(port)], "/docs"
        ),
    }


@dataclass
class Request:
    path: str
    body: bytes
    content_type: str = "application/json"
    header: str = ""  # one extra "Name: value"
    pattern: str = LOSS_JSON  # (gRPC: unused, bench/grpc_load.py reads the loss from the answer)
    setup: Callable[[str], str] | None = None
    """Prepares the server (given its base URL) and returns the path to load, instead of `path`."""


@dataclass
class Scenario:
    name: str
    concurrency: int
    requests: dict[str, Request]  # server name -> request
    expected: float
    quick: bool = False


@dataclass
class GcPauses:
    """Garbage collections of one generation during a measured run (from `lossd_gc_pause_seconds`)."""

    collections: int
    total_s: float
    max_le_s: float | None  # the smallest bucket bound that holds every pause (None: none, or beyond the last)


@dataclass
class Result:
    scenario: str
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    idle_rss_mb: float
    peak_rss_mb: float
    requests: int
    seconds: float = 0.0
    gc: dict[str, GcPauses] | None = None  # generation -> pauses, for servers with metrics ({}: not read)
    log_lines: int | None = None  # access log lines written during the run, for lossd
    generator_cpu: float | None = None  # cores the gRPC load generator used (1.0: it set the pace)


def _vectors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)


def _json_nested(x: np.ndarray, y: np.ndarray) -> bytes:
    # float32 values written as their float64 text, as most JSON clients do (39 MB at N=1M)
    return orjson.dumps(
        {"input": x.astype(np.float64), "target": y.astype(np.float64)}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def _v2_binary(inputs: list[tuple[str, np.ndarray, str]], outputs: list[dict[str, Any]], **extra: Any) -> Request:
    blobs = [a.tobytes() for _, a, _ in inputs]
    header = orjson.dumps(
        {
            "inputs": [
                {"name": n, "shape": list(a.shape), "datatype": d, "parameters": {"binary_data_size": len(b)}}
                for (n, a, d), b in zip(inputs, blobs, strict=True)
            ],
            "outputs": outputs,
            **extra,
        }
    )
    return Request(
        "",
        header + b"".join(blobs),
        "application/octet-stream",
        f"Inference-Header-Content-Length: {len(header)}",
        LOSS_V2,
    )


def _grpc(x: np.ndarray, y: np.ndarray, raw: bool) -> Request:
    """mse as a ModelInfer call for bench/grpc_load.py: `path` is the method, `body` the serialized message."""
    body = grpc_load.infer_request("mse", {"input": x, "target": y}, raw)
    return Request(grpc_load.PATH, body, "application/grpc", pattern="")


def json_nested_name(n: int, concurrency: int) -> str:
    return f"mse N={n:,} JSON nested c={concurrency}"


def grpc_name(n: int, concurrency: int, contents: str) -> str:
    return f"mse N={n:,} gRPC {contents} c={concurrency}"


def scenarios() -> list[Scenario]:
    out = []
    for n, c, quick in ((1, 8, True), (1_000, 8, True), (1_000_000, 2, False)):
        x, y = _vectors(n, n)
        body = _json_nested(x, y)
        expected = F.mse_loss(torch.from_numpy(x), torch.from_numpy(y)).item()
        reqs = {name: Request("/mse", body) for name in ("naive FastAPI", MINIMAL)}
        reqs |= {LOSSD: Request("/v1/losses/mse", body), LOSSD_LOG_OFF: Request("/v1/losses/mse", body)}
        reqs |= {"LitServe": Request("/predict", body)}
        if n == 1_000_000:  # the access log's cost is measured where requests are many
            del reqs[LOSSD_LOG_OFF]
        out.append(Scenario(json_nested_name(n, c), c, reqs, expected, quick))
        if n < 1_000_000:  # the same tensors as typed contents (fp32_contents)
            out.append(Scenario(grpc_name(n, c, "typed"), c, {LOSSD_GRPC: _grpc(x, y, raw=False)}, expected, quick))
    x, y = _vectors(1_000_000, 7)
    expected = F.mse_loss(torch.from_numpy(x), torch.from_numpy(y)).item()
    flat = orjson.dumps(
        {
            "input": {"data": x.astype(np.float64), "shape": [len(x)]},
            "target": {"data": y.astype(np.float64), "shape": [len(y)]},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    b64 = orjson.dumps(
        {
            "input": {"b64": base64.b64encode(x.tobytes()).decode(), "shape": [len(x)], "dtype": "float32"},
            "target": {"b64": base64.b64encode(y.tobytes()).decode(), "shape": [len(y)], "dtype": "float32"},
        }
    )
    v2 = _v2_binary([("input", x, "FP32"), ("target", y, "FP32")], [{"name": "loss"}])
    v2.path = "/v2/models/mse/infer"
    out += [
        Scenario("mse N=1,000,000 JSON flat data c=2", 2, {"lossd": Request("/v1/losses/mse", flat)}, expected),
        Scenario("mse N=1,000,000 base64 c=2", 2, {"lossd": Request("/v1/losses/mse", b64)}, expected),
        Scenario(V2_1M, 2, {LOSSD: v2}, expected),
        Scenario(grpc_name(1_000_000, 2, "raw"), 2, {LOSSD_GRPC: _grpc(x, y, raw=True)}, expected),
        Scenario(
            "mse N=1,000,000 raw float32 body c=2",
            2,
            {"minimal FastAPI": Request("/mse_raw", x.tobytes() + y.tobytes(), "application/octet-stream")},
            expected,
        ),
    ]
    logits = np.random.default_rng(9).standard_normal((65_536, 100)).astype(np.float32)
    labels = np.random.default_rng(10).integers(0, 100, 65_536)
    ce = _v2_binary(
        [("input", logits, "FP32"), ("target", labels, "INT64")],
        [
            {"name": "loss", "parameters": {"binary_data": False}},
            {"name": "grad_input", "parameters": {"binary_data": True}},
        ],
    )
    ce.path = "/v2/models/cross_entropy/infer"
    expected = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    out.append(Scenario("cross_entropy 65,536x100 + gradient, v2 binary c=2", 2, {"lossd": ce}, expected))
    return out


SESSION_LOSSES = [{"name": "mse"}, {"name": "l1"}, {"name": "smooth_l1", "beta": 0.5}]
EVALUATE = "lossd /v1/evaluate"
SESSION = "lossd session, in process"
SESSION_REDIS = "lossd session, Redis"
SESSION_TARGETS = {SESSION: 0.90, SESSION_REDIS: 0.75}
"""Batches/s into a session at least this share of /v1/evaluate's req/s on the same tensors."""
SESSION_ROUNDS = 5  # as TARGET_ROUNDS: three left a single slow round (0.65x to 0.88x) deciding the median
SESSION_SLICES = 5
"""Slices of each request kind in a round: a server's evaluate and batch runs interleave, so that a slow spell of
this shared machine (single 10 s rounds ranged from 0.6x to 1.3x) falls on both."""


def _create_session(base: str) -> str:
    answer = httpx.post(base + "/v1/sessions", json={"losses": SESSION_LOSSES}, timeout=30)
    answer.raise_for_status()
    return f"/v1/sessions/{answer.json()['id']}/batches"


def session_scenario() -> Scenario:
    """N=1,000, three losses: /v1/evaluate against batches into a session (each request a new batch id, which
    wrk.lua writes in place of @ID@), with sessions in the process and in Redis."""
    x, y = _vectors(1_000, 11)
    tensors = {"input": x.astype(np.float64), "target": y.astype(np.float64)}
    evaluate = orjson.dumps({"tensors": tensors, "losses": SESSION_LOSSES}, option=orjson.OPT_SERIALIZE_NUMPY)
    batch = orjson.dumps({"batch_id": "@ID@", "tensors": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)
    expected = F.mse_loss(torch.from_numpy(x), torch.from_numpy(y)).item()
    requests = {EVALUATE: Request("/v1/evaluate", evaluate)}
    requests |= {name: Request("", batch, setup=_create_session) for name in (SESSION, SESSION_REDIS)}
    return Scenario("3 losses N=1,000 JSON nested c=8", 8, requests, expected)


def session_runs(seconds: int, only: Callable[[str], Any]) -> dict[str, list[tuple[Result, Result]]]:
    """Each session store against /v1/evaluate, `SESSION_ROUNDS` rounds, the stores alternating. A round is one
    server, loaded with /v1/evaluate and with batches into a session in `SESSION_SLICES` alternating slices
    (`seconds` in all for each). Redis on loopback, started here (a fresh database per round) and pinned to core
    1 with the load generator: it stands for a Redis on another machine, and core 0 stays the server's alone, as
    in every other row. Returns, per store, each round's (evaluate, session) results."""
    scenario = session_scenario()
    stores = list(SESSION_TARGETS)
    runs: dict[str, list[tuple[Result, Result]]] = {}
    if not any(only(f"{scenario.name} / {name}") for name in scenario.requests):  # the table needs all of them
        return runs
    sys.path.insert(0, str(ROOT))
    from tests.redis_server import RedisServer

    slice_s = max(1, seconds // SESSION_SLICES)
    for round_ in range(SESSION_ROUNDS):
        for name in stores if round_ % 2 == 0 else reversed(stores):
            port = free_port()
            server = servers(port)[LOSSD]
            with tempfile.TemporaryDirectory(prefix="lossd-bench-redis-") as directory:
                redis = RedisServer(Path(directory)) if name == SESSION_REDIS else None
                try:
                    if redis is not None:
                        redis.start()
                        pin(redis.process, 1)  # with the load generator: core 0 is the server's alone
                        server = replace(server, env=server.env | {"LOSSD_REDIS_URL": redis.url})
                    got = run_interleaved(
                        scenario, replace(server, name=name), port, [EVALUATE, name], SESSION_SLICES, slice_s
                    )
                finally:
                    if redis is not None:
                        redis.stop()
            evaluate, session = got[EVALUATE], got[name]
            runs.setdefault(name, []).append((evaluate, session))
            print(
                f"session round {round_ + 1}: {name:<28} {session.rps:>10,.1f} batches/s against "
                f"{evaluate.rps:,.1f} /v1/evaluate req/s: {session.rps / evaluate.rps:.2f}x",
                flush=True,
            )
    return runs


def session_table(runs: dict[str, list[tuple[Result, Result]]]) -> list[str]:
    """Batches/s into a session against /v1/evaluate's req/s on the same tensors, per round and the median."""
    if not runs:
        return []
    scenario = session_scenario()
    lines = [
        "",
        "## Sessions",
        "",
        f"{scenario.name}: {', '.join(e['name'] for e in SESSION_LOSSES)} over the same 1,000-element tensors, as "
        "`/v1/evaluate` requests and as batches into a session (a new batch id each), lossd with its defaults; "
        f"Redis on loopback, pinned to the load generator's core. {SESSION_ROUNDS} rounds per store, the stores "
        f"alternating; a round is one server loaded with both in {SESSION_SLICES} alternating slices each, and "
        "gives a ratio. The table shows the median of those ratios.",
        "",
        "| server | req/s (median) | p99 ms (median) | batches/s over /v1/evaluate's req/s | target | met |",
        "|---|---:|---:|---|---|---|",
    ]
    base = [evaluate for rounds in runs.values() for evaluate, _ in rounds]
    lines.append(
        f"| {EVALUATE} | {_median([r.rps for r in base]):,.1f} | {_median([r.p99_ms for r in base]):.2f} | | | |"
    )
    for name, target in SESSION_TARGETS.items():
        ratios = [session.rps / evaluate.rps for evaluate, session in runs[name]]
        ours = [session for _, session in runs[name]]
        ratio = _median(ratios)
        lines.append(
            f"| {name} | {_median([r.rps for r in ours]):,.1f} | {_median([r.p99_ms for r in ours]):.2f} | "
            f"{ratio:.2f}x (rounds {', '.join(f'{x:.2f}' for x in ratios)}) | at least {target}x | "
            f"{'met' if ratio >= target else 'not met'} |"
        )
    return lines


def free_port(*taken: int) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


def pinned(argv: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else argv


def pin(process: subprocess.Popen[bytes] | None, core: int) -> None:
    """Move a running process (and its threads) to one core, where `pinned` would have started it."""
    if process is not None and pinned(["true"], core) != ["true"]:
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(process.pid)], check=True, capture_output=True)


def tree_rss_mb(pid: int, field_name: str) -> float:
    """Sum of a /proc status field (VmRSS, VmHWM) over a process and its children, in MB."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(rf"{field_name}:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            pids += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, AttributeError):
            continue
    return total / 1024


def check(body: bytes, pattern: str, expected: float) -> bool:
    lua_to_re = (
        pattern.replace("%s", r"\s").replace("%[", r"\[").replace("%d", r"\d").replace("%.", r"\.").replace(".-", ".*?")
    )
    match = re.search(lua_to_re.encode(), body, re.S)
    return match is not None and math.isclose(float(match.group(1)), expected, rel_tol=1e-4, abs_tol=1e-6)


def drive_wrk(
    url: str, req: Request, scenario: Scenario, seconds: int, body_file: str
) -> tuple[int, int, float, float, float]:
    env = os.environ | {
        "BENCH_BODY": body_file,
        "BENCH_TYPE": req.content_type,
        "BENCH_HEADER": req.header,
        "BENCH_PATTERN": req.pattern,
        "BENCH_EXPECTED": repr(scenario.expected),
        "BENCH_TOLERANCE": repr(abs(scenario.expected) * 1e-4 + 1e-6),
    }
    argv = [
        "wrk",
        "-t1",
        f"-c{scenario.concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "60s",
        "-s",
        str(HERE / "wrk.lua"),
        url,
    ]
    run = subprocess.run(pinned(argv, 1), env=env, capture_output=True, text=True, timeout=seconds + 120)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{run.stdout}\n{run.stderr}")
    v = {k: int(x) for k, x in (kv.split("=") for kv in line.split()[1:])}
    if v["wrong"] or v["errors"]:
        raise RuntimeError(f"{v['wrong']} wrong answers, {v['errors']} errors: {line}")
    return v["requests"], v["wrong"], v["duration_us"] / 1e6, v["p50_us"] / 1e3, v["p99_us"] / 1e3


class GrpcLoad:
    """bench/grpc_load.py for one run, pinned like wrk. Started, it warms up (its first answers are checked: it
    exits on a wrong one) and waits; `finish` measures, as `drive_wrk` does, and gives the generator's CPU use."""

    def __init__(self, address: str, scenario: Scenario, seconds: int, body_file: str):
        argv = [PY, str(HERE / "grpc_load.py"), address, "--request", body_file, "--expected", repr(scenario.expected)]
        argv += ["--seconds", str(seconds), "--concurrency", str(scenario.concurrency)]
        argv += ["--warmup", str(GRPC_WARMUP_S), "--hold"]
        self.timeout = seconds + 180
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(
            pinned(argv, 1), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "warm":
            out, err = self._end("")
            raise RuntimeError(f"grpc_load.py did not warm up ({self.proc.returncode}):\n{out}\n{err}")

    def finish(self) -> tuple[int, int, float, float, float, float]:
        out, err = self._end("go\n")
        line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("{")), None)
        v = json.loads(line) if line else {}
        if v.get("wrong") or v.get("errors"):
            raise RuntimeError(f"{v['wrong']} wrong answers, {v['errors']} errors: {line}")
        if self.proc.returncode or not v:
            raise RuntimeError(f"grpc_load.py failed ({self.proc.returncode}):\n{out}\n{err}")
        if v["client_cpu"] > GRPC_BUSY:
            print(
                f"warning: the gRPC load generator used {v['client_cpu']:.2f} of its core: it may have set the pace",
                file=sys.stderr,
                flush=True,
            )
        return v["requests"], v["wrong"], v["seconds"], v["p50_ms"], v["p99_ms"], v["client_cpu"]

    def _end(self, stdin: str) -> tuple[str, str]:
        """Its stdout and stderr, once it has ended."""
        try:
            out, _ = self.proc.communicate(stdin, timeout=self.timeout)
            self.stderr.seek(0)
            return out, self.stderr.read().decode(errors="replace")
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


async def _drive_httpx(
    url: str, req: Request, scenario: Scenario, seconds: int
) -> tuple[int, int, float, float, float]:
    headers = {"content-type": req.content_type} | (dict([req.header.split(": ", 1)]) if req.header else {})
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            response = await client.post(url, content=req.body, headers=headers)
            if response.status_code != 200 or not check(response.content, req.pattern, scenario.expected):
                raise RuntimeError(f"wrong answer: {response.status_code} {response.content[:200]!r}")
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(scenario.concurrency)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return len(latencies), 0, elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def gc_pauses(base: str, path: str) -> dict[str, tuple[float, float, dict[float, float]]] | None:
    """`lossd_gc_pause_seconds` as scraped now: generation -> (count, sum, cumulative bucket counts by bound).

    None, with a warning, when it cannot be read: the run's other figures still count."""
    try:
        response = httpx.get(base + path, timeout=30)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"warning: {base + path}: {exc!r}", file=sys.stderr, flush=True)
        return None
    out: dict[str, tuple[float, float, dict[float, float]]] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != GC_METRIC:
            continue
        for sample in family.samples:
            count, total, buckets = out.setdefault(sample.labels.get("generation", "?"), (0.0, 0.0, {}))
            if sample.name == GC_METRIC + "_count":
                count = sample.value
            elif sample.name == GC_METRIC + "_sum":
                total = sample.value
            elif sample.name == GC_METRIC + "_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            out[sample.labels.get("generation", "?")] = (count, total, buckets)
    if not out:
        print(f"warning: {base + path} has no {GC_METRIC}:\n{response.text[:1000]}", file=sys.stderr, flush=True)
        return None
    return out


def gc_during(before: dict[str, Any], after: dict[str, Any]) -> dict[str, GcPauses]:
    """The pauses between two scrapes, per generation."""
    result = {}
    for generation, (count, total, buckets) in sorted(after.items()):
        count0, total0, buckets0 = before.get(generation, (0.0, 0.0, {}))
        collections = round(count - count0)
        bounds = sorted(b for b in buckets if math.isfinite(b))
        max_le = next((b for b in bounds if buckets[b] - buckets0.get(b, 0.0) >= collections), None)
        result[generation] = GcPauses(collections, total - total0, max_le if collections else None)
    return result


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to whatever is left of it after 20 s.

    The group, not the process: LitServe's workers (its API server, inference worker and multiprocessing
    manager) outlive their parent's SIGTERM, and left alone they kept running on the server's core."""

    def signal_group(sig: int) -> bool:
        try:
            os.killpg(proc.pid, sig)
            return True
        except ProcessLookupError:  # nothing left in the group
            return False

    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        proc.poll()  # reaps the server itself; its orphaned children are reaped by init
        if not signal_group(0):
            return
        time.sleep(0.05)
    signal_group(signal.SIGKILL)
    proc.wait()


@dataclass
class Started:
    """A server started by `started`: its process, base URL and output."""

    proc: subprocess.Popen[bytes]
    base: str
    log_path: str

    def output_tail(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(self.log_path) - 3000))
            return f.read().decode(errors="replace")

    def log_size(self) -> int:
        return os.path.getsize(self.log_path)

    def access_lines(self, since: int) -> int:
        """Access log lines written after offset `since` of the output."""
        time.sleep(0.2)  # the access log is written in batches every 50 ms
        with open(self.log_path, "rb") as reader:
            reader.seek(since)
            return sum(1 for line in reader if b'"logger":"lossd.access"' in line)


@contextlib.contextmanager
def started(server: Server, port: int) -> Iterator[Started]:
    """`server` running on core 0 with its defaults, ready; stopped (its whole process group) on exit."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}  # lossd's defaults, really
    env = inherited | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)} | server.env
    # the server's output goes to a file: lossd writes one access log line per request on stderr, and a
    # pipe that nobody reads would fill and block the server
    # (opened for appending, and read through a file of its own: the server shares the writing file's offset)
    # The file is in memory where the machine has /dev/shm, as a container runtime's pipe is: the disk's
    # write-back would otherwise run on the server's core and be charged to the access log.
    memory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, log_path = tempfile.mkstemp(prefix="lossd-bench-", suffix=".log", dir=memory)
    os.close(fd)
    log = open(log_path, "ab")  # noqa: SIM115 (closed in the finally clause)
    # in a session of its own, so that stop() ends every process the server started
    proc = subprocess.Popen(pinned(server.argv, 0), cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    running = Started(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited:\n{running.output_tail()}")
            try:
                if httpx.get(running.base + server.ready_path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start:\n{running.output_tail()}")
            time.sleep(0.3)
        yield running
    finally:
        stop(proc)
        log.close()
        os.unlink(log_path)


def warm_up(base: str, req: Request, scenario: Scenario, server_name: str) -> str:
    """Prepare the server for `req` (its `setup`), send it three times checking the answer; returns the path to load."""
    headers = {"content-type": req.content_type} | (dict([req.header.split(": ", 1)]) if req.header else {})
    path = req.setup(base) if req.setup else req.path
    for _ in range(3):  # warm-up, and a first check of the answer
        warm = httpx.post(base + path, content=req.body, headers=headers, timeout=120)
        if warm.status_code != 200 or not check(warm.content, req.pattern, scenario.expected):
            raise RuntimeError(f"{server_name} answered wrongly: {warm.status_code} {warm.content[:300]!r}")
    return path


def drive_http(
    url: str, req: Request, scenario: Scenario, seconds: int, body_file: str
) -> tuple[int, float, float, float]:
    """`seconds` of load over HTTP: wrk where installed, else httpx. Returns requests, elapsed s, p50 and p99 ms."""
    if shutil.which("wrk"):
        count, _, elapsed, p50, p99 = drive_wrk(url, req, scenario, seconds, body_file)
    else:
        count, _, elapsed, p50, p99 = asyncio.run(_drive_httpx(url, req, scenario, seconds))
    return count, elapsed, p50, p99


def body_file(req: Request) -> IO[bytes]:
    """`req`'s body in a temporary file, for wrk or bench/grpc_load.py."""
    f = tempfile.NamedTemporaryFile(suffix=".body")  # noqa: SIM115 (the caller closes it)
    f.write(req.body)
    f.flush()
    return f


def run_one(scenario: Scenario, server: Server, port: int, seconds: int) -> Result:
    req = scenario.requests[server.name]
    load: GrpcLoad | None = None
    with started(server, port) as running, body_file(req) as body:
        try:
            if server.grpc_port:  # warmed up by the generator, which then waits
                load = GrpcLoad(f"127.0.0.1:{server.grpc_port}", scenario, seconds, body.name)
            else:
                path = warm_up(running.base, req, scenario, server.name)
            idle = tree_rss_mb(running.proc.pid, "VmRSS")
            gc_before = gc_pauses(running.base, server.metrics_path) if server.metrics_path else None
            log_start = running.log_size()
            generator_cpu = None
            if load is not None:
                count, _, elapsed, p50, p99, generator_cpu = load.finish()
            else:
                count, elapsed, p50, p99 = drive_http(running.base + path, req, scenario, seconds, body.name)
            peak = tree_rss_mb(running.proc.pid, "VmHWM")
            gc = None
            log_lines = None
            if server.metrics_path:
                gc_after = gc_pauses(running.base, server.metrics_path)
                gc = gc_during(gc_before, gc_after) if gc_before is not None and gc_after is not None else {}
                log_lines = running.access_lines(log_start)
            return Result(
                scenario.name,
                server.name,
                count / elapsed,
                p50,
                p99,
                idle,
                peak,
                count,
                elapsed,
                gc,
                log_lines,
                generator_cpu,
            )
        finally:
            if load is not None:
                load.close()


def run_interleaved(
    scenario: Scenario, server: Server, port: int, names: list[str], slices: int, seconds: int
) -> dict[str, Result]:
    """The requests `names` of `scenario` on one server, in `slices` alternating slices of `seconds` each (the
    order reversed every other slice): a slow spell of the machine falls on all of them alike. One result each,
    over all its slices (p50 and p99: the median of the slices')."""
    with started(server, port) as running, contextlib.ExitStack() as files:
        bodies = {name: files.enter_context(body_file(scenario.requests[name])) for name in names}
        paths = {name: warm_up(running.base, scenario.requests[name], scenario, name) for name in names}
        idle = tree_rss_mb(running.proc.pid, "VmRSS")
        done: dict[str, list[tuple[int, float, float, float]]] = {name: [] for name in names}
        for i in range(slices):
            for name in names if i % 2 == 0 else reversed(names):
                url = running.base + paths[name]
                done[name].append(drive_http(url, scenario.requests[name], scenario, seconds, bodies[name].name))
        peak = tree_rss_mb(running.proc.pid, "VmHWM")
    out = {}
    for name, parts in done.items():
        count, elapsed = sum(p[0] for p in parts), sum(p[1] for p in parts)
        p50, p99 = _median([p[2] for p in parts]), _median([p[3] for p in parts])
        out[name] = Result(scenario.name, name, count / elapsed, p50, p99, idle, peak, count, elapsed)
    return out


def time_split() -> str:
    """In-process split of one cross_entropy 65,536 x 100 v2 binary request with its gradient."""
    from service import codec, compute, oip
    from service.dataplane import DataPlane
    from service.losses import REGISTRY
    from service.runtime import tune_process

    tune_process(torch_threads=1, malloc_arenas=2)  # as the server is tuned
    scenario = next(s for s in scenarios() if s.name.startswith("cross_entropy"))
    req = scenario.requests["lossd"]
    header_length = req.header.split(": ")[1]
    plane = DataPlane(REGISTRY, torch.device("cpu"))
    spec = REGISTRY.get("cross_entropy")
    phases: dict[str, list[float]] = {"decode": [], "validate": [], "compute": [], "encode": [], "whole request": []}
    for _ in range(6):
        t0 = time.perf_counter()
        head, binary = codec.split_binary(req.body, header_length)
        meta = orjson.loads(head)["inputs"]
        size = meta[0]["parameters"]["binary_data_size"]
        raw = {
            "input": codec.decode_v2("input", "FP32", meta[0]["shape"], None, binary[:size]),
            "target": codec.decode_v2("target", "INT64", meta[1]["shape"], None, binary[size:]),
        }
        t1 = time.perf_counter()
        params = plane.validate(plane.models[spec.name], {"return_grad": ["input"], "input": True, "target": True})
        tensors = compute.prepare(spec, raw)
        assert spec.check is not None
        spec.check(tensors, params)
        t2 = time.perf_counter()
        leaf = tensors["input"].detach().requires_grad_(True)
        loss = spec(tensors | {"input": leaf}, params)
        (grad,) = torch.autograd.grad(loss, [leaf])
        t3 = time.perf_counter()
        out = [codec.encode_v2("loss", loss.detach(), False), codec.encode_v2("grad_input", grad, True)]
        framed = bytearray(codec.dumps({"outputs": [o for o, _ in out]}))
        for _, blob in out:
            framed += blob
        t4 = time.perf_counter()
        oip.infer(plane, spec, req.body, header_length).run()  # read and validated, then computed and encoded
        t5 = time.perf_counter()
        for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            phases[key].append(dt * 1e3)
    return " | ".join(f"{k} {np.median(v[1:]):.1f} ms" for k, v in phases.items())


def isolation_overhead() -> list[str]:
    """What a worker process costs a computation: mse with its gradient, computed in this process and in a
    (warm) worker process, median of repeated runs; the difference is the copies through shared memory and
    the round trip."""
    from service.dataplane import DataPlane
    from service.isolation import Task, WorkerPool
    from service.losses import REGISTRY

    plane = DataPlane(REGISTRY, torch.device("cpu"))
    spec = REGISTRY.get("mse")
    params = plane.validate(plane.models["mse"], {"input": True, "target": True, "return_grad": True})
    pool = WorkerPool(1, torch.device("cpu"), 8 * 2**30, torch_threads=1)
    lines = [
        "",
        "## Worker process overhead",
        "",
        "mse with its gradient, in-process against in a warm worker process (median; the worker adds the copies "
        "through shared memory and one round trip). Only computations predicted to build more than "
        "`LOSSD_ISOLATE_WORK_BYTES` (64 MiB) go to a worker.",
        "",
        "| N | in-process | worker process | overhead |",
        "|---|---|---|---|",
    ]
    try:
        pool.warm()
        for n, repeats in ((1, 200), (1_000, 200), (1_000_000, 20)):
            x, y = (torch.from_numpy(v) for v in _vectors(n, n))
            task = Task(spec, {"input": x, "target": y}, params, ["input", "target"])
            timings: dict[str, list[float]] = {"here": [], "worker": []}
            for _ in range(repeats):
                for where, run in (("here", plane.run_here), ("worker", pool.execute)):
                    start = time.perf_counter()
                    run(task)
                    timings[where].append(time.perf_counter() - start)
            here, worker = (float(np.median(timings[k])) * 1e3 for k in ("here", "worker"))
            lines.append(f"| {n:,} | {here:.3f} ms | {worker:.3f} ms | {worker - here:+.3f} ms |")
    finally:
        pool.close()
    return lines


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    wrk = (
        subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
        if shutil.which("wrk")
        else "httpx (wrk not installed)"
    )
    import fastapi
    import grpc
    import litserve

    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, fastapi {fastapi.__version__}, "
        f"litserve {litserve.__version__}, grpcio {grpc.__version__}; load: {wrk}, gRPC: bench/grpc_load.py"
    )


TARGET_ROUNDS = 5
"""The targets compare servers measured in alternation, this many rounds each: one 10 s run on a shared
2-core machine moves by more than the 5% the access log target allows, and a slow spell of the machine
hits both servers of a round. Each round gives a ratio; a target is judged on the median of those ratios."""


GRPC_TARGETS = [
    (grpc_name(1, 8, "typed"), json_nested_name(1, 8), 1.3),
    (grpc_name(1_000_000, 2, "raw"), V2_1M, 0.9),
]
"""(gRPC scenario, HTTP scenario, target): lossd gRPC's req/s at least `target` times lossd's over HTTP."""


def target_runs(
    seconds: int, quick: bool, rounds: int, only: Callable[[str], Any]
) -> dict[tuple[str, str], list[Result]]:
    """Each target's runs (scenario, server) in alternation (A B, B A, A B, ...), `rounds` rounds each; the runs
    whose "scenario / server" `only` refuses are left out."""
    by_name = {s.name: s for s in scenarios() if s.quick or not quick}
    runs: dict[tuple[str, str], list[Result]] = {}
    n1, n1000 = json_nested_name(1, 8), json_nested_name(1_000, 8)
    plan = [
        [(n1, MINIMAL), (n1, LOSSD), (GRPC_TARGETS[0][0], LOSSD_GRPC)],  # tail latency; gRPC at N=1
        [(n1000, MINIMAL), (n1000, LOSSD), (n1000, LOSSD_LOG_OFF)],  # tail latency; access log
        [(V2_1M, LOSSD), (GRPC_TARGETS[1][0], LOSSD_GRPC)],  # gRPC raw at N=1M
    ]
    plan = [[key for key in group if key[0] in by_name and only(" / ".join(key))] for group in plan]
    for round_ in range(rounds):
        for group in plan:
            for scenario_name, name in group if round_ % 2 == 0 else reversed(group):  # none always runs first
                port = free_port()
                result = run_one(by_name[scenario_name], servers(port)[name], port, seconds)
                runs.setdefault((scenario_name, name), []).append(result)
                print(
                    f"target round {round_ + 1}: {scenario_name:<34} {name:<16} {result.rps:>10,.1f} req/s  "
                    f"p99 {result.p99_ms:8.2f} ms",
                    flush=True,
                )
    return runs


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _rps_ratio(ours: list[Result], base: list[Result]) -> tuple[float, str]:
    """The median of the rounds' req/s ratios (ours over base), and each round's req/s ("ours/base, ...")."""
    pairs = list(zip(ours, base, strict=True))
    return _median([x.rps / y.rps for x, y in pairs]), ", ".join(f"{x.rps:,.0f}/{y.rps:,.0f}" for x, y in pairs)


def targets(runs: dict[tuple[str, str], list[Result]], rounds: int) -> list[str]:
    """The targets table: for each target, the median of the rounds' ratios, its target and whether it is
    met, with every round's values."""
    lines = [
        "",
        "## Targets",
        "",
        f"Measured apart from the table above: the servers of each target in alternation, {rounds} rounds "
        "each. Each round gives a ratio; the table shows the median of those ratios, then each round's values.",
        "",
        "| what | measured | target | met |",
        "|---|---|---|---|",
    ]
    for n in (1, 1_000):
        name = json_nested_name(n, 8)
        ours, minimal = runs.get((name, LOSSD)), runs.get((name, MINIMAL))
        what = f"tail latency, {name}: lossd's p99 / the minimal FastAPI endpoint's p99"
        if not ours or not minimal:
            lines.append(f"| {what} | not measured | at most {TAIL_TARGET}x | |")
            continue
        ratio = _median([x.p99_ms / y.p99_ms for x, y in zip(ours, minimal, strict=True)])
        each = ", ".join(f"{x.p99_ms:.2f}/{y.p99_ms:.2f} ms" for x, y in zip(ours, minimal, strict=True))
        lines.append(
            f"| {what} | {ratio:.2f}x (rounds {each}) | at most {TAIL_TARGET}x | "
            f"{'met' if ratio <= TAIL_TARGET else 'not met'} |"
        )
    name = json_nested_name(1_000, 8)
    on, off = runs.get((name, LOSSD)), runs.get((name, LOSSD_LOG_OFF))
    what = f"access log cost, {name}: lossd's req/s / lossd (log off)'s req/s"
    if not on or not off:
        lines.append(f"| {what} | not measured | at least {LOG_TARGET}x | |")
    else:
        ratio, each = _rps_ratio(on, off)
        cost = (1 - ratio) * 100
        said = f"a cost of {cost:.1f}%" if cost >= 0 else f"no cost: the runs with the log were {-cost:.1f}% faster"
        lines.append(
            f"| {what} | {ratio:.2f}x ({said}; rounds {each} req/s) | "
            f"at least {LOG_TARGET}x | {'met' if ratio >= LOG_TARGET else 'not met'} |"
        )
    return lines


def grpc_targets(runs: dict[tuple[str, str], list[Result]], rounds: int) -> list[str]:
    """lossd over gRPC against lossd over HTTP on the same tensors, from the targets' rounds."""
    lines = [
        "",
        "## gRPC targets",
        "",
        "lossd's req/s over gRPC (ModelInfer from bench/grpc_load.py: grpc.aio on uvloop, one process pinned to "
        "core 1 as wrk is, the request serialized once, every answer checked) over its req/s over HTTP (wrk) on "
        f"the same tensors at the same concurrency; measured with the targets above, in alternation, {rounds} "
        "rounds. Each round gives a ratio; the table shows their median, then each round's req/s (gRPC/HTTP) and "
        "the most CPU the gRPC load generator used (1.0 would mean it, not lossd, set the pace).",
        "",
        "| what | measured | target | met |",
        "|---|---|---|---|",
    ]
    for grpc_scenario, http_scenario, target in GRPC_TARGETS:
        ours, base = runs.get((grpc_scenario, LOSSD_GRPC)), runs.get((http_scenario, LOSSD))
        what = f"{grpc_scenario} / {http_scenario}: lossd gRPC's req/s / lossd's req/s"
        if not ours or not base:
            lines.append(f"| {what} | not measured | at least {target}x | |")
            continue
        ratio, each = _rps_ratio(ours, base)
        busy = max(r.generator_cpu or 0.0 for r in ours)
        lines.append(
            f"| {what} | {ratio:.2f}x (rounds {each} req/s; generator at most {busy:.2f} of its core) | "
            f"at least {target}x | {'met' if ratio >= target else 'not met'} |"
        )
    return lines


def gc_table(results: list[Result]) -> list[str]:
    """Garbage collection pauses during each lossd run, per generation, and the access log lines written."""
    runs = [r for r in results if r.gc is not None]
    if not runs:
        return []
    lines = [
        "",
        "## Garbage collection",
        "",
        f"From `{GC_METRIC}` on lossd's /metrics, scraped after the warm-up and after the load (the difference: "
        "the measured window only). The longest pause is known to its histogram bucket: the smallest bucket "
        "bound that holds every pause.",
        "",
        "| scenario | server | generation | collections | per 1,000 requests | total pause ms | share of the run "
        "| mean pause ms | longest pause |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        assert r.gc is not None
        if not r.gc:
            lines.append(f"| {r.scenario} | {r.server} | | {GC_METRIC} could not be read | | | | | |")
        for generation, g in r.gc.items():
            per_k = g.collections / r.requests * 1000 if r.requests else 0.0
            share = g.total_s / r.seconds * 100 if r.seconds else 0.0
            mean = f"{g.total_s / g.collections * 1e3:.3f}" if g.collections else ""
            if not g.collections:
                longest = ""
            elif g.max_le_s is None:
                longest = "over the last bucket"
            else:
                longest = f"at most {g.max_le_s * 1e3:g} ms"
            lines.append(
                f"| {r.scenario} | {r.server} | {generation} | {g.collections:,} | {per_k:.2f} | "
                f"{g.total_s * 1e3:.1f} | {share:.2f}% | {mean} | {longest} |"
            )
    logged = [f"{r.scenario}, {r.server}: {r.log_lines:,} lines for {r.requests:,} requests" for r in runs]
    lines += ["", "Access log lines written during the measured runs: " + "; ".join(logged) + "."]
    return lines


def report(
    results: list[Result],
    runs: dict[tuple[str, str], list[Result]],
    split: str | None,
    quick: bool,
    seconds: int,
    sessions: dict[str, list[tuple[Result, Result]]],
    rounds: int = TARGET_ROUNDS,
    only: str | None = None,
) -> str:
    lines = [
        "# lossd benchmark results",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.",
        f"Command: `{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}`; {seconds} s per server and scenario, "
        "one uvicorn worker, server pinned to core 0 and the load generator to core 1, torch and BLAS on one thread "
        "everywhere. Every answer was checked against torch; none was wrong.",
        "",
        "lossd runs with its defaults as users get them (log level info, one JSON access log line per request on "
        "stderr, which the benchmark writes to a file), except `LOSSD_DEVICE=cpu` and `LOSSD_TORCH_THREADS=1`, "
        'because every peer computes on the CPU with torch on one thread. "lossd (log off)" is the same server '
        'with `LOSSD_ACCESS_LOG=false`. "lossd gRPC" is the same server called over gRPC (ModelInfer, typed '
        "contents or raw contents) by bench/grpc_load.py, pinned to core 1 as wrk is; the other lossd servers run "
        "with `LOSSD_GRPC_PORT=0`. The \"lossd is\" column is lossd's req/s over each row's.",
        "",
        "| scenario | server | req/s | p50 ms | p99 ms | RSS after warm-up MB | peak RSS MB | lossd is |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    by_scenario: dict[str, list[Result]] = {}
    for r in results:
        by_scenario.setdefault(r.scenario, []).append(r)
    for name, rows in by_scenario.items():
        ours = next((r for r in rows if r.server == LOSSD), None)
        for r in rows:
            ratio = f"{ours.rps / r.rps:.2f}x" if ours and r is not ours else ""
            lines.append(
                f"| {name} | {r.server} | {r.rps:,.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.idle_rss_mb:.0f} | "
                f"{r.peak_rss_mb:.0f} | {ratio} |"
            )
    busy = [f"{r.scenario} {r.generator_cpu:.2f}" for r in results if r.generator_cpu is not None]
    if busy:
        lines += ["", "CPU the gRPC load generator used, in cores (1.0: it set the pace): " + ", ".join(busy) + "."]
    lines += targets(runs, rounds)
    lines += grpc_targets(runs, rounds)
    lines += session_table(sessions)
    lines += gc_table(results)
    if split:
        lines += [
            "",
            "Time split of one cross_entropy 65,536 x 100 request with its gradient "
            f"(in-process, median of 5): {split}.",
        ]
    if only is None:
        lines += isolation_overhead()
    if quick:
        lines += ["", "(quick run: N=1 and N=1,000 only)"]
    if only is not None:
        lines += ["", f"(partial run: only the runs whose scenario / server matches `{only}`)"]
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=1 and N=1,000 only, 5 s each")
    parser.add_argument("--seconds", type=int, default=None, help="load time per server and scenario")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="where to write the table")
    parser.add_argument("--rounds", type=int, default=TARGET_ROUNDS, help="rounds of the targets")
    parser.add_argument(
        "--only",
        metavar="REGEX",
        help='only the runs whose "scenario / server" matches (e.g. gRPC); no time split or worker overhead',
    )
    args = parser.parse_args()
    seconds = args.seconds or (5 if args.quick else 10)
    only = re.compile(args.only).search if args.only else lambda key: True
    results = []
    for scenario in scenarios():
        if args.quick and not scenario.quick:
            continue
        for name in scenario.requests:
            if not only(f"{scenario.name} / {name}"):
                continue
            port = free_port()
            server = servers(port)[name]
            result = run_one(scenario, server, port, seconds)
            print(
                f"{scenario.name:<52} {name:<16} {result.rps:>10,.1f} req/s  p50 {result.p50_ms:8.2f} ms  "
                f"p99 {result.p99_ms:8.2f} ms  peak RSS {result.peak_rss_mb:6.0f} MB"
                + (f"  generator {result.generator_cpu:.2f} cores" if result.generator_cpu is not None else ""),
                flush=True,
            )
            results.append(result)
            if result.log_lines is not None:
                expect_log = name in (LOSSD, LOSSD_GRPC)
                if (expect_log and result.log_lines < 0.9 * result.requests) or (not expect_log and result.log_lines):
                    print(
                        f"warning: {name} wrote {result.log_lines:,} access log lines for {result.requests:,} requests",
                        file=sys.stderr,
                        flush=True,
                    )
    runs = target_runs(seconds, args.quick, args.rounds, only)
    sessions = session_runs(seconds, only)
    split = None if args.quick or args.only else time_split()
    text = report(results, runs, split, args.quick, seconds, sessions, args.rounds, args.only)
    Path(args.out).write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
