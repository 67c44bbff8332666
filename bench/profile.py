"""Where lossd's time goes: pyinstrument profiles of the request lifecycle at N=1,000 and N=1,000,000.

Profiles `DataPlane.loss` in-process (decode, validate, compute, encode; HTTP excluded) on the
benchmark's mse payloads, and writes bench/profile-n1000.txt and bench/profile-n1m.txt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import orjson
import torch
from pyinstrument import Profiler

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from service.dataplane import DataPlane  # noqa: E402
from service.losses import REGISTRY  # noqa: E402
from service.losses.registry import LossSpec  # noqa: E402


def answer(plane: DataPlane, spec: LossSpec, body: bytes) -> bytes:
    """One request, whole: `DataPlane.loss` reads and validates it into a job, which computes and encodes."""
    return plane.loss(spec, body).run()


def main() -> None:
    torch.set_num_threads(1)
    plane = DataPlane(REGISTRY, torch.device("cpu"))
    spec = REGISTRY.get("mse")
    for n, repeats, name in ((1_000, 3_000, "profile-n1000.txt"), (1_000_000, 10, "profile-n1m.txt")):
        rng = np.random.default_rng(n)
        x, y = (rng.standard_normal(n).astype(np.float32).astype(np.float64) for _ in range(2))
        body = orjson.dumps({"input": x, "target": y}, option=orjson.OPT_SERIALIZE_NUMPY)
        answer(plane, spec, body)  # warm-up
        profiler = Profiler(interval=0.0001)
        profiler.start()
        for _ in range(repeats):
            answer(plane, spec, body)
        profiler.stop()
        text = profiler.output_text(unicode=False, color=False)
        header = f"mse, N={n:,} float32 values as JSON ({len(body):,} bytes), {repeats} requests, in-process\n"
        (HERE / name).write_text(header + text)
        print(f"wrote bench/{name}")


if __name__ == "__main__":
    main()
