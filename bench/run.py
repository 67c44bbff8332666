"""Side-by-side benchmark: lossd against the servers users would otherwise write, same machine, same run.

Each server is started alone on a free loopback port (pinned to core 0 where `taskset` exists), warmed
up, then driven by one load generator (wrk with `wrk.lua`, pinned to core 1; an asyncio httpx loop when
wrk is missing) at a fixed concurrency for a fixed time. Every answer is checked against torch before it
counts: one wrong answer fails the benchmark. Results go to stdout and bench/RESULTS.md.

    python bench/run.py            # everything (about 6 minutes on 2 cores)
    python bench/run.py --quick    # N=1 and N=1,000 only (under 2 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the service's own modules, for the in-process time split
PY = sys.executable
LOSS_JSON = r'"loss"%s*:%s*([-%d%.eE+]+)'
LOSS_V2 = r'"name":"loss".-"data":%[([-%d%.eE+]+)'


@dataclass
class Server:
    name: str
    argv: list[str]
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)


def servers(port: int) -> dict[str, Server]:
    lossd_env = {
        "LOSSD_PORT": str(port),
        "LOSSD_DEVICE": "cpu",
        "LOSSD_LOG_LEVEL": "warning",
        "LOSSD_TORCH_THREADS": "1",
    }
    peer = [PY]
    return {
        "lossd": Server("lossd", [PY, "-m", "service"], "/readyz", lossd_env),
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
    pattern: str = LOSS_JSON


@dataclass
class Scenario:
    name: str
    concurrency: int
    requests: dict[str, Request]  # server name -> request
    expected: float
    quick: bool = False


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


def scenarios() -> list[Scenario]:
    out = []
    for n, c, quick in ((1, 8, True), (1_000, 8, True), (1_000_000, 2, False)):
        x, y = _vectors(n, n)
        body = _json_nested(x, y)
        expected = F.mse_loss(torch.from_numpy(x), torch.from_numpy(y)).item()
        reqs = {name: Request("/mse", body) for name in ("naive FastAPI", "minimal FastAPI")}
        reqs |= {"lossd": Request("/v1/losses/mse", body), "LitServe": Request("/predict", body)}
        out.append(Scenario(f"mse N={n:,} JSON nested c={c}", c, reqs, expected, quick))
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
        Scenario("mse N=1,000,000 v2 binary c=2", 2, {"lossd": v2}, expected),
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(argv: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else argv


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


def run_one(scenario: Scenario, server: Server, port: int, seconds: int) -> Result:
    req = scenario.requests[server.name]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)} | server.env
    proc = subprocess.Popen(
        pinned(server.argv, 0), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{server.name} exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
                )
            try:
                if httpx.get(base + server.ready_path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start")
            time.sleep(0.3)
        headers = {"content-type": req.content_type} | (dict([req.header.split(": ", 1)]) if req.header else {})
        for _ in range(3):  # warm-up, and a first check of the answer
            warm = httpx.post(base + req.path, content=req.body, headers=headers, timeout=120)
            if warm.status_code != 200 or not check(warm.content, req.pattern, scenario.expected):
                raise RuntimeError(f"{server.name} answered wrongly: {warm.status_code} {warm.content[:300]!r}")
        idle = tree_rss_mb(proc.pid, "VmRSS")
        if shutil.which("wrk"):
            with tempfile.NamedTemporaryFile(suffix=".body") as f:
                f.write(req.body)
                f.flush()
                count, _, elapsed, p50, p99 = drive_wrk(base + req.path, req, scenario, seconds, f.name)
        else:
            count, _, elapsed, p50, p99 = asyncio.run(_drive_httpx(base + req.path, req, scenario, seconds))
        peak = tree_rss_mb(proc.pid, "VmHWM")
        return Result(scenario.name, server.name, count / elapsed, p50, p99, idle, peak, count)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


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
        oip.infer(plane, spec, req.body, header_length)
        t5 = time.perf_counter()
        for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            phases[key].append(dt * 1e3)
    return " | ".join(f"{k} {np.median(v[1:]):.1f} ms" for k, v in phases.items())


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
    import litserve

    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, "
        f"torch {torch.__version__}, fastapi {fastapi.__version__}, litserve {litserve.__version__}; load: {wrk}"
    )


def report(results: list[Result], split: str | None, quick: bool, seconds: int) -> str:
    lines = [
        "# lossd benchmark results",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.",
        f"Command: `{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}`; {seconds} s per server and scenario, "
        "one uvicorn worker, server pinned to core 0 and the load generator to core 1, torch and BLAS on one thread "
        "everywhere. Every answer was checked against torch; none was wrong.",
        "",
        "| scenario | server | req/s | p50 ms | p99 ms | RSS after warm-up MB | peak RSS MB | lossd is |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    by_scenario: dict[str, list[Result]] = {}
    for r in results:
        by_scenario.setdefault(r.scenario, []).append(r)
    for name, rows in by_scenario.items():
        ours = next((r for r in rows if r.server == "lossd"), None)
        for r in rows:
            ratio = f"{ours.rps / r.rps:.2f}x" if ours and r is not ours else ""
            lines.append(
                f"| {name} | {r.server} | {r.rps:,.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.idle_rss_mb:.0f} | "
                f"{r.peak_rss_mb:.0f} | {ratio} |"
            )
    if split:
        lines += [
            "",
            "Time split of one cross_entropy 65,536 x 100 request with its gradient "
            f"(in-process, median of 5): {split}.",
        ]
    if quick:
        lines += ["", "(quick run: N=1 and N=1,000 only)"]
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=1 and N=1,000 only, 5 s each")
    parser.add_argument("--seconds", type=int, default=None, help="load time per server and scenario")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="where to write the table")
    args = parser.parse_args()
    seconds = args.seconds or (5 if args.quick else 10)
    results = []
    for scenario in scenarios():
        if args.quick and not scenario.quick:
            continue
        for name in scenario.requests:
            port = free_port()
            server = servers(port)[name]
            result = run_one(scenario, server, port, seconds)
            print(
                f"{scenario.name:<52} {name:<16} {result.rps:>10,.1f} req/s  p50 {result.p50_ms:8.2f} ms  "
                f"p99 {result.p99_ms:8.2f} ms  peak RSS {result.peak_rss_mb:6.0f} MB",
                flush=True,
            )
            results.append(result)
    split = None if args.quick else time_split()
    text = report(results, split, args.quick, seconds)
    Path(args.out).write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
