"""CPU vs CUDA time of the service's compute step for large tensors, from decoded host tensors to results
back on the host: dtype conversion, pre-validation, loss, gradients and the copies between host and GPU.

`cuda, pageable` is the plain way (convert, `.to(device)`, `.cpu()`), kept here as the reference the
service's way (`cuda`: conversions into pinned memory, asynchronous copies, one synchronization) must beat.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch

from service import compute
from service.compute import RawTensor
from service.losses import REGISTRY
from service.losses.registry import LossSpec


def _time(fn: Callable[[], object], repeats: int = 7) -> float:
    fn()  # warm-up (CUDA context, kernels, caching allocators)
    fn()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def service_path(spec: LossSpec, raw: dict[str, RawTensor], device: torch.device) -> compute.LossResult:
    tensors = compute.prepare(spec, raw, compute.host_cast(device))
    return compute.compute(spec, tensors, spec.params(), ["input"], device)


def pageable_path(spec: LossSpec, raw: dict[str, RawTensor], device: torch.device) -> list[torch.Tensor]:
    tensors = {k: v.to(device) for k, v in compute.prepare(spec, raw).items()}
    leaf = tensors["input"].detach().requires_grad_(True)
    loss = spec({**tensors, "input": leaf}, spec.params())
    (grad,) = torch.autograd.grad(loss, [leaf], grad_outputs=torch.ones_like(loss))
    return [loss.detach().cpu(), grad.cpu()]


def main() -> None:
    n, c = 65_536, 1_000
    cases = {  # as the codec hands them over: JSON numbers arrive as float64 and int64
        "mse 10M, grads": (
            "mse",
            {"input": torch.randn(10_000_000).double(), "target": torch.randn(10_000_000).double()},
        ),
        f"cross_entropy {n}x{c}, grads": (
            "cross_entropy",
            {"input": torch.randn(n, c).double(), "target": torch.randint(0, c, (n,))},
        ),
        f"focal {n}x{c}, grads": ("focal", {"input": torch.randn(n, c).double(), "target": torch.randint(0, c, (n,))}),
    }
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    print(f"{'case':<36}{'cpu ms':>10}{'cuda ms':>10}{'cuda, pageable ms':>20}")
    for label, (name, host) in cases.items():
        spec = REGISTRY.get(name)
        raw = {k: RawTensor(v, typed=False) for k, v in host.items()}
        times = [
            _time(functools.partial(service_path, spec, raw, cpu)),
            _time(functools.partial(service_path, spec, raw, cuda)),
            _time(functools.partial(pageable_path, spec, raw, cuda)),
        ]
        ms = [t * 1e3 for t in times]
        print(f"{label:<36}{ms[0]:>10.1f}{ms[1]:>10.1f}{ms[2]:>20.1f}")
    print("each: float64/int64 host tensors in, loss and input gradient on the host out; best of 7")


if __name__ == "__main__":
    main()
