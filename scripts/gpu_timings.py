"""CPU vs CUDA time of the compute step (pre-validation, loss, gradients) for large tensors."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch

from service import compute
from service.losses import REGISTRY


def _time(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # warm-up (CUDA context, kernels, allocator)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    n, c = 65_536, 1_000
    cases = {
        "mse 10M, grads": ("mse", {"input": torch.randn(10_000_000), "target": torch.randn(10_000_000)}),
        f"cross_entropy {n}x{c}, grads": (
            "cross_entropy",
            {"input": torch.randn(n, c), "target": torch.randint(0, c, (n,))},
        ),
        f"focal {n}x{c}, grads": ("focal", {"input": torch.randn(n, c), "target": torch.randint(0, c, (n,))}),
    }
    cuda = torch.device("cuda")
    print(f"{'case':<36}{'cpu ms':>10}{'cuda ms':>10}{'cuda, resident ms':>20}")
    for label, (name, tensors) in cases.items():
        spec = REGISTRY.get(name)
        params = spec.params()
        resident = {k: v.to(cuda) for k, v in tensors.items()}
        times = [
            _time(functools.partial(compute.compute, spec, t, params, ["input"], d)) * 1e3
            for t, d in ((tensors, torch.device("cpu")), (tensors, cuda), (resident, cuda))
        ]
        print(f"{label:<36}{times[0]:>10.1f}{times[1]:>10.1f}{times[2]:>20.1f}")
    print("cuda: host tensors copied to the GPU and results back, as the service does; resident: already on the GPU")


if __name__ == "__main__":
    main()
