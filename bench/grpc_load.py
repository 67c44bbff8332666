"""gRPC load generator for lossd's benchmark: `ModelInfer` calls at a fixed concurrency for a fixed time.

One process, one event loop (uvloop where installed): `concurrency` coroutines, each sending one call after
the other, spread round-robin over `channels` channels (each its own HTTP/2 connection). The request is
serialized once: the calls go through a generic `unary_unary` stub that sends those bytes as they are and
hands back the answer's bytes, so the generator spends its time on gRPC, not on protobuf. Every `check_every`-th
answer of each coroutine (every answer by default) is parsed and its loss compared with the expected value.

A warm-up (connections, first calls) runs before the measured window and is not counted. With `--hold` the
generator then prints `warm` and waits for a line on stdin before it measures (bench/run.py reads the server's
memory and metrics in between). The result is one JSON line: requests, seconds, req/s, p50 and p99 latency in
ms, errors (calls that failed), wrong (answers that did not match), checked, and the generator's own CPU use
(`client_cpu`, in cores: near 1.0 means the generator, not the server, set the pace).

    python bench/grpc_load.py 127.0.0.1:8001 --seconds 10 --concurrency 8 --n 1 --contents typed
    python bench/grpc_load.py 127.0.0.1:8001 --request body.bin --expected 2.0771 --concurrency 2

Run it pinned like wrk (bench/run.py does: `taskset -c 1`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the service's generated stubs
from service.rpc import grpc_service_pb2 as pb

PATH = "/inference.GRPCInferenceService/ModelInfer"
CHANNELS = 2
"""Channels for the calls by default. At N=1, c=8, against a bare grpc.aio server, 1, 2 and 4 channels cost the
generator the same 125-150 µs of CPU a call, within the noise of a shared 2-core machine (bench/NOTES.md)."""
OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),  # a connection per channel, not one shared by channels alike
]
DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}


def infer_request(model: str, inputs: dict[str, np.ndarray], raw: bool) -> bytes:
    """A serialized `ModelInferRequest`: each input's values in `raw_input_contents` (its little-endian bytes)
    when `raw`, else in its typed `contents` (`fp32_contents` for float32, `fp64_contents` for float64)."""
    request = pb.ModelInferRequest(model_name=model)
    for name, values in inputs.items():
        datatype = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64"}[values.dtype]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(values.shape))
        flat = values.reshape(-1)
        if raw:
            request.raw_input_contents.append(flat.astype(values.dtype.newbyteorder("<")).tobytes())
        elif datatype == "FP32":
            tensor.contents.fp32_contents.extend(flat)
        else:
            tensor.contents.fp64_contents.extend(flat)
    return bytes(request.SerializeToString())


def loss_of(answer: bytes) -> float:
    """The loss in a serialized `ModelInferResponse`: its first output, from `raw_output_contents`."""
    response = pb.ModelInferResponse.FromString(answer)
    dtype = np.dtype(DTYPES[response.outputs[0].datatype]).newbyteorder("<")
    return float(np.frombuffer(response.raw_output_contents[0], dtype=dtype)[0])


def matches(value: float, expected: float) -> bool:
    """As bench/run.py's `check` compares the HTTP answers."""
    return math.isclose(value, expected, rel_tol=1e-4, abs_tol=1e-6)


class Load:
    """The calls of one run, shared by its coroutines."""

    def __init__(self, target: str, body: bytes, expected: float, channels: int, check_every: int, timeout: float):
        self.channels = [grpc.aio.insecure_channel(target, options=OPTIONS) for _ in range(channels)]
        # no serializers: the request goes out as the bytes given, the answer comes back as bytes
        self.stubs = [channel.unary_unary(PATH) for channel in self.channels]
        self.body = body
        self.expected = expected
        self.check_every = check_every
        self.timeout = timeout
        self.latencies: list[float] = []
        self.errors = 0
        self.wrong = 0
        self.checked = 0
        self.first_problem = ""

    async def worker(self, stub: Any, until: float, record: bool) -> None:
        body, timeout, latencies = self.body, self.timeout, self.latencies
        n = 0
        clock = time.perf_counter
        start = clock()
        while start < until:
            try:
                answer = await stub(body, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                self.errors += 1
                self.first_problem = self.first_problem or f"{exc.code().name}: {exc.details()}"
                start = clock()
                continue
            end = clock()
            if record:
                latencies.append(end - start)
            n += 1
            if n % self.check_every == 0 or not record:
                self._check(answer)
            start = end

    def _check(self, answer: bytes) -> None:
        self.checked += 1
        try:
            value = loss_of(answer)
        except Exception as exc:  # an answer without a readable loss is a wrong answer
            value, problem = math.nan, f"unreadable answer: {exc!r}"
        else:
            problem = f"loss {value!r}, expected {self.expected!r}"
        if not matches(value, self.expected):
            self.wrong += 1
            self.first_problem = self.first_problem or problem

    async def phase(self, seconds: float, concurrency: int, record: bool) -> float:
        """`concurrency` coroutines calling for `seconds`; the time until the last call in flight ended."""
        start = time.perf_counter()
        until = start + seconds
        await asyncio.gather(*(self.worker(self.stubs[i % len(self.stubs)], until, record) for i in range(concurrency)))
        return time.perf_counter() - start

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def run(args: argparse.Namespace, body: bytes, expected: float) -> dict[str, Any]:
    load = Load(args.target, body, expected, args.channels, args.check_every, args.timeout)
    try:
        for channel in load.channels:
            await asyncio.wait_for(channel.channel_ready(), args.timeout)
        if args.warmup > 0:
            await load.phase(args.warmup, args.concurrency, record=False)
            if load.errors or load.wrong:
                raise SystemExit(f"warm-up: {load.errors} errors, {load.wrong} wrong answers; {load.first_problem}")
        if args.hold:
            print("warm", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cpu = time.process_time()
        elapsed = await load.phase(args.seconds, args.concurrency, record=True)
        cpu = time.process_time() - cpu
    finally:
        await load.close()
    ms = np.array(load.latencies or [math.nan]) * 1e3
    return {
        "requests": len(load.latencies),
        "seconds": round(elapsed, 4),
        "rps": round(len(load.latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "errors": load.errors,
        "wrong": load.wrong,
        "checked": load.checked,
        "first_problem": load.first_problem,
        "client_cpu": round(cpu / elapsed, 3),
        "client_cpu_us_per_request": round(cpu / max(len(load.latencies), 1) * 1e6, 1),
        "concurrency": args.concurrency,
        "channels": args.channels,
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
    }


def scenario_request(model: str, n: int, contents: str, seed: int) -> tuple[bytes, float]:
    """`input` and `target` of `n` float32 standard normal values, and their mse in float64 (the loss is
    float32 from lossd: `matches` allows for that)."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    if model != "mse":
        raise SystemExit("--n builds mse requests only; give --request and --expected for another model")
    expected = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return infer_request(model, {"input": x, "target": y}, contents == "raw"), expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="host:port of the gRPC server")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the measured time")
    parser.add_argument("--channels", type=int, default=CHANNELS, help="channels (connections) the calls share")
    parser.add_argument("--check-every", type=int, default=1, help="check every k-th answer of each coroutine")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of each call, seconds")
    parser.add_argument("--hold", action="store_true", help="after the warm-up, print `warm`, wait for stdin")
    parser.add_argument("--no-uvloop", action="store_true", help="asyncio's own event loop")
    source = parser.add_argument_group("the request: a file, or a scenario")
    source.add_argument("--request", help="file holding a serialized ModelInferRequest")
    source.add_argument("--expected", type=float, help="the loss every answer must hold (with --request)")
    source.add_argument("--model", default="mse")
    source.add_argument("--n", type=int, default=1, help="elements of input and target")
    source.add_argument("--contents", choices=("typed", "raw"), default="typed")
    source.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.request:
        if args.expected is None:
            parser.error("--request needs --expected")
        body, expected = Path(args.request).read_bytes(), args.expected
    else:
        body, expected = scenario_request(args.model, args.n, args.contents, args.seed)
        if args.expected is not None:
            expected = args.expected
    if args.concurrency < 1 or args.channels < 1 or args.check_every < 1:
        parser.error("--concurrency, --channels and --check-every must be at least 1")
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner: Any = asyncio.run if uvloop is None or args.no_uvloop else uvloop.run
    result = runner(run(args, body, expected))
    print(json.dumps(result), flush=True)
    if result["errors"] or result["wrong"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
