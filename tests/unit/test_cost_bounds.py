"""Every loss's cost model against what torch really allocates.

For each loss in the registry, on a few representative shapes, with and without gradients, the call the
service makes (`compute.compute`: the checks, the loss, its gradients) runs under torch's profiler with
`profile_memory=True`, which records every CPU allocation and free in order; their running sum gives the
call's peak. The inputs were allocated before the call and are held throughout, so

    measured = bytes of the inputs + the peak the call adds

and the model must bound it: `measured <= cost.elements * element size` (the service multiplies the
elements by the element size of the request's floating dtype to get the work bytes it admits or refuses).
It must not over-predict wildly either, or it refuses requests that would fit:
`cost.elements * element size <= FACTOR * measured`. Workloads run in float32, the first of each loss
in float64 too; half precision is not covered (some CPU kernels compute it in float32).

The profiler sees torch's allocations only, not the allocator's fragmentation or Python's objects: RSS
runs higher than `measured`, by a margin the service's worker memory limit (twice the work bytes by
default) leaves room for.

A new loss fails `test_every_loss_has_workloads` until it is given workloads here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from service import compute
from service.losses import REGISTRY
from service.losses.registry import LossSpec
from tests import cases as parity_cases

FACTOR = 8
"""How far above the measured peak a prediction may lie. The models are simple sums of the tensors torch
builds, counted at their largest (every intermediate alive at once, the gradients of the largest tensors,
a margin); torch frees some early, so they over-predict: mostly by under 2.5x, at most 4.5x (poisson_nll's
Stirling term counted at the broadcast size; ctc's concatenated targets counted as one long target)."""

SLACK_BYTES = 4096
"""Allocations no shape bounds: scalars (the loss, `mean`'s divisor, `ones_like` of it), lengths, offsets."""

Make = Callable[[torch.dtype], dict[str, Tensor]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread while measuring: the test workers share the cores, where OpenMP's spinning
    threads cost twice the time they save. (The peaks are the same with two.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Workload:
    id: str
    make: Make
    params: dict[str, Any] = field(default_factory=dict)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, dtype: torch.dtype, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=dtype)


def rand(*shape: int, dtype: torch.dtype, seed: int = 0) -> Tensor:
    return torch.rand(shape, generator=_gen(seed), dtype=dtype)


def randint(high: int, *shape: int, seed: int = 0) -> Tensor:
    return torch.randint(0, high, shape, generator=_gen(seed))


def signs(*shape: int, dtype: torch.dtype, seed: int = 0) -> Tensor:
    return torch.where(rand(*shape, dtype=dtype, seed=seed) > 0.5, 1.0, -1.0).to(dtype)


def _pair(shape_a: Sequence[int], shape_b: Sequence[int], extra: Sequence[str] = ()) -> Make:
    """input and target of the given shapes, plus extra tensors of input's shape (weight, var...)."""

    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        t = {"input": randn(*shape_a, dtype=dtype, seed=1), "target": randn(*shape_b, dtype=dtype, seed=2)}
        for i, name in enumerate(extra):
            t[name] = rand(*shape_a, dtype=dtype, seed=3 + i) + 0.1
        return t

    return make


def _elementwise(weight: bool) -> list[Workload]:
    out = [
        Workload("same-shape", _pair((256, 512), (256, 512))),
        Workload("row-target", _pair((256, 512), (512,))),
        Workload("outer-broadcast", _pair((512, 1), (512,))),
        Workload("none", _pair((256, 512), (256, 512)), {"reduction": "none"}),
    ]
    if weight:
        out.append(Workload("weight", _pair((256, 512), (256, 512), ["weight"])))
    return out


def _logits(*shape: int, probabilities: bool = False, weight: bool = False) -> Make:
    """Logits (N, C, d...), class indices (N, d...) or probabilities; a class weight."""

    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        c = shape[1] if len(shape) > 1 else shape[0]
        index_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
        t = {"input": randn(*shape, dtype=dtype, seed=1)}
        if probabilities:
            t["target"] = randn(*shape, dtype=dtype, seed=2).softmax(1 if len(shape) > 1 else 0)
        else:
            t["target"] = randint(c, *index_shape, seed=2)
        if weight:
            t["weight"] = rand(c, dtype=dtype) + 0.1
        return t

    return make


def _log_probs(*shape: int, weight: bool = False) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        t = _logits(*shape, weight=weight)(dtype)
        t["input"] = t["input"].log_softmax(1)
        return t

    return make


def _binary(shape: Sequence[int], *extra: tuple[str, Sequence[int]], unit: bool = False) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        x = rand(*shape, dtype=dtype, seed=1) * 0.98 + 0.01 if unit else randn(*shape, dtype=dtype, seed=1)
        t = {"input": x, "target": rand(*shape, dtype=dtype, seed=2).round()}
        for i, (name, s) in enumerate(extra):
            t[name] = rand(*s, dtype=dtype, seed=3 + i) + 0.5
        return t

    return make


def _signs(shape_a: Sequence[int], shape_b: Sequence[int]) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        return {"input": rand(*shape_a, dtype=dtype, seed=1) * 2, "target": signs(*shape_b, dtype=dtype)}

    return make


def _multilabel(n: int, c: int) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        target = torch.argsort(torch.rand(n, c, generator=_gen(2)), dim=1)
        target[:, c // 2] = -1  # half of each row is padding
        return {"input": randn(n, c, dtype=dtype, seed=1), "target": target}

    return make


def _triplet(anchor: Sequence[int], positive: Sequence[int], negative: Sequence[int]) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        return {
            "anchor": randn(*anchor, dtype=dtype, seed=1),
            "positive": randn(*positive, dtype=dtype, seed=2),
            "negative": randn(*negative, dtype=dtype, seed=3),
        }

    return make


def _pairs(shape: Sequence[int], target: Sequence[int], second: Sequence[int] | None = None) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        return {
            "input1": randn(*shape, dtype=dtype, seed=1),
            "input2": randn(*(second or shape), dtype=dtype, seed=2),
            "target": signs(*target, dtype=dtype, seed=3),
        }

    return make


def _linear(n: int, h: int, c: int, *, probabilities: bool = False, bias: bool = False, k: int = 0) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        classes = (c, k) if k else (c,)
        t = {
            "input": randn(n, h, dtype=dtype, seed=1) / h**0.5,
            "linear_weight": randn(*classes, h, dtype=dtype, seed=2),
        }
        if probabilities:
            t["target"] = randn(n, *classes, dtype=dtype, seed=3).softmax(1)
        else:
            t["target"] = randint(c, n, *classes[1:], seed=3)
        if bias:
            t["linear_bias"] = randn(*classes, dtype=dtype, seed=4)
        return t

    return make


def _ctc(t: int, n: int, c: int, s: int, layout: str) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        log_probs = randn(t, n, c, dtype=dtype, seed=1).log_softmax(2)
        labels = randint(c - 1, n, s, seed=2) + 1
        if layout == "unbatched":
            return {
                "log_probs": log_probs[:, 0],
                "targets": labels[0],
                "input_lengths": torch.tensor(t),
                "target_lengths": torch.tensor(s),
            }
        lengths = torch.full((n,), s)
        return {
            "log_probs": log_probs,
            "targets": labels.reshape(-1) if layout == "concatenated" else labels,
            "input_lengths": torch.full((n,), t),
            "target_lengths": lengths,
        }

    return make


def _gaussian(shape: Sequence[int], var: Sequence[int]) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        return {
            "input": randn(*shape, dtype=dtype, seed=1),
            "target": randn(*shape, dtype=dtype, seed=2),
            "var": rand(*var, dtype=dtype, seed=3) + 0.1,
        }

    return make


def _counts(shape: Sequence[int], target: Sequence[int] | None = None) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        return {
            "input": rand(*shape, dtype=dtype, seed=1) * 3,
            "target": randint(6, *(target or shape), seed=2).to(dtype),
        }

    return make


def _kl(shape: Sequence[int], target: Sequence[int]) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        return {
            "input": randn(*shape, dtype=dtype, seed=1).log_softmax(-1),
            "target": randn(*target, dtype=dtype, seed=2).softmax(-1),
        }

    return make


def _focal(*shape: int, alpha: bool = False) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        t = _logits(*shape)(dtype)
        if alpha:
            t["alpha"] = rand(shape[1], dtype=dtype)
        return t

    return make


def _sigmoid_focal(*shape: int) -> Make:
    def make(dtype: torch.dtype) -> dict[str, Tensor]:
        return {"inputs": randn(*shape, dtype=dtype, seed=1), "targets": rand(*shape, dtype=dtype, seed=2).round()}

    return make


WORKLOADS: dict[str, list[Workload]] = {
    "l1": _elementwise(weight=True),
    "mse": _elementwise(weight=True),
    "smooth_l1": [*_elementwise(weight=False), Workload("beta=0", _pair((256, 512), (256, 512)), {"beta": 0.0})],
    "huber": _elementwise(weight=True),
    "cross_entropy": [
        Workload("indices", _logits(512, 256)),
        Workload("spatial", _logits(4, 16, 32, 64)),
        Workload("few-classes", _logits(32768, 4)),
        Workload("single", _logits(32768)),
        Workload("weight+smoothing", _logits(512, 256, weight=True), {"label_smoothing": 0.1}),
        Workload("spatial+smoothing", _logits(4, 16, 32, 64), {"label_smoothing": 0.1, "reduction": "none"}),
        Workload("probabilities", _logits(512, 256, probabilities=True)),
        Workload(
            "probabilities+smoothing+weight",
            _logits(512, 256, probabilities=True, weight=True),
            {"label_smoothing": 0.2},
        ),
        Workload("spatial-probabilities", _logits(4, 16, 32, 64, probabilities=True), {"reduction": "none"}),
    ],
    "nll": [
        Workload("indices", _log_probs(512, 256)),
        Workload("spatial", _log_probs(4, 16, 32, 64)),
        Workload("spatial+weight", _log_probs(4, 16, 32, 64, weight=True), {"reduction": "none"}),
        Workload("few-classes", _log_probs(32768, 4)),
    ],
    "linear_cross_entropy": [
        Workload("indices", _linear(256, 64, 1024)),
        Workload("bias+smoothing", _linear(256, 64, 1024, bias=True), {"label_smoothing": 0.1}),
        Workload("probabilities", _linear(256, 64, 1024, probabilities=True)),
        Workload("wide-features", _linear(64, 4096, 256)),
        Workload("k-dim", _linear(128, 32, 64, k=16, bias=True), {"reduction": "none"}),
        Workload("chunked", _linear(256, 64, 1024), {"options": {"batch_chunk_size": 64}}),
        Workload("chunked-auto", _linear(256, 256, 1024, bias=True), {"options": {}, "reduction": "none"}),
        Workload("chunked-accurate", _linear(256, 256, 1024), {"options": {"acc_policy": "accurate"}}),
    ],
    "binary_cross_entropy": [
        Workload("probabilities", _binary((256, 512), unit=True)),
        Workload("weight", _binary((256, 512), ("weight", (512,)), unit=True)),
        Workload("none", _binary((256, 512), ("weight", (256, 512)), unit=True), {"reduction": "none"}),
    ],
    "binary_cross_entropy_with_logits": [
        Workload("logits", _binary((256, 512))),
        Workload("weight+pos-weight", _binary((256, 512), ("weight", (512,)), ("pos_weight", (512,)))),
        Workload("full-weights", _binary((256, 512), ("weight", (256, 512)), ("pos_weight", (256, 512)))),
    ],
    "soft_margin": [
        Workload("scores", _signs((256, 512), (256, 512))),
        Workload("row-target", _signs((256, 512), (512,)), {"reduction": "none"}),
    ],
    "hinge_embedding": [
        Workload("distances", _signs((256, 512), (256, 512))),
        Workload("row-target", _signs((256, 512), (512,)), {"reduction": "none"}),
    ],
    "multilabel_margin": [
        Workload("padded", _multilabel(256, 256)),
        Workload("many-samples", _multilabel(8192, 16), {"reduction": "none"}),
        Workload("single", _multilabel(1, 4096)),  # torch's kernel is O(C²) per sample: keep C small
    ],
    "multilabel_soft_margin": [
        Workload("labels", _binary((256, 512))),
        Workload("weight", _binary((256, 512), ("weight", (512,))), {"reduction": "none"}),
    ],
    "multi_margin": [
        Workload("indices", _logits(512, 256)),
        Workload("p=2+weight", _logits(512, 256, weight=True), {"p": 2, "margin": 0.5}),
        Workload("few-classes", _logits(32768, 4), {"reduction": "none"}),
    ],
    "margin_ranking": [
        Workload("pairs", _pairs((131072,), (131072,))),
        Workload("outer", _pairs((512, 1), (1, 1), (1, 512))),
        Workload("none", _pairs((131072,), (131072,)), {"reduction": "none", "margin": 0.5}),
    ],
    "cosine_embedding": [
        Workload("pairs", _pairs((512, 256), (512,))),
        Workload("long-pairs", _pairs((8, 16384), (8,)), {"margin": 0.2}),
        Workload("many-short-pairs", _pairs((32768, 4), (32768,)), {"reduction": "none"}),
        Workload("single", _pairs((32768,), ())),
    ],
    "triplet_margin": [
        Workload("triplets", _triplet((512, 256), (512, 256), (512, 256))),
        Workload("p=1+swap", _triplet((512, 256), (512, 256), (512, 256)), {"p": 1.0, "swap": True}),
        Workload("broadcast-anchor", _triplet((1, 256), (512, 256), (512, 256))),
        Workload("outer", _triplet((256, 1, 64), (1, 64, 64), (1, 64, 64)), {"swap": True}),
        Workload("p=3", _triplet((512, 256), (512, 256), (512, 256)), {"p": 3.0, "eps": 0.0}),
        Workload("p=0.5", _triplet((512, 256), (512, 256), (512, 256)), {"p": 0.5, "swap": True}),
        Workload("many-short", _triplet((32768, 4), (32768, 4), (32768, 4)), {"reduction": "none"}),
    ],
    "triplet_margin_with_distance": [
        Workload("default", _triplet((512, 256), (512, 256), (512, 256))),
        Workload(
            "cosine+swap",
            _triplet((512, 256), (512, 256), (512, 256)),
            {"distance_function": "cosine", "swap": True},
        ),
        Workload("outer", _triplet((256, 1, 64), (1, 64, 64), (1, 64, 64)), {"distance_function": "cosine"}),
        Workload(
            "outer+cosine+swap",
            _triplet((256, 1, 64), (1, 64, 64), (1, 64, 64)),
            {"distance_function": "cosine", "swap": True, "reduction": "none"},
        ),
        Workload(
            "many-short", _triplet((32768, 4), (32768, 4), (32768, 4)), {"distance_function": "pairwise_distance"}
        ),
    ],
    "focal": [
        Workload("indices", _focal(512, 256)),
        Workload("alpha+gamma", _focal(512, 256, alpha=True), {"gamma": 0.5}),
        Workload("spatial", _focal(4, 16, 32, 64), {"reduction": "none"}),
        Workload("few-classes", _focal(32768, 4)),
        Workload("single", _focal(32768)),
    ],
    "sigmoid_focal": [
        Workload("defaults", _sigmoid_focal(256, 512)),
        Workload("mean+no-alpha", _sigmoid_focal(256, 512), {"reduction": "mean", "alpha": -1.0}),
    ],
    "kl_div": [
        Workload("probabilities", _kl((256, 512), (256, 512))),
        Workload("log-target", _kl((256, 512), (256, 512)), {"log_target": True, "reduction": "batchmean"}),
        Workload("row-target", _kl((256, 512), (512,)), {"reduction": "none"}),
        Workload("outer", _kl((512, 1), (512,)), {"reduction": "sum"}),
    ],
    "poisson_nll": [
        Workload("log-input", _counts((256, 512))),
        Workload("rates+full", _counts((256, 512)), {"log_input": False, "full": True}),
        Workload("full", _counts((256, 512)), {"full": True, "reduction": "none"}),
        Workload("outer+full", _counts((512, 1), (512,)), {"full": True, "reduction": "none"}),
    ],
    "gaussian_nll": [
        Workload("heteroscedastic", _gaussian((256, 512), (256, 512))),
        Workload("var-one-dim-short", _gaussian((256, 512), (256,))),
        Workload("var-last-dim-1", _gaussian((256, 512), (256, 1)), {"full": True, "reduction": "none"}),
        Workload("scalar-var", _gaussian((256, 512), ())),
    ],
    "ctc": [
        Workload("padded", _ctc(200, 4, 20, 50, "padded")),
        Workload("long-targets", _ctc(400, 2, 8, 300, "padded"), {"reduction": "sum"}),
        Workload("concatenated", _ctc(200, 4, 20, 50, "concatenated"), {"reduction": "none"}),
        Workload("unbatched", _ctc(300, 1, 20, 100, "unbatched")),
        Workload("many-classes", _ctc(100, 8, 2000, 10, "padded"), {"zero_infinity": True}),
    ],
}


def measure(fn: Callable[[], object]) -> int:
    """Peak bytes allocated on the CPU while `fn` runs, above what was allocated before: the running sum
    of the profiler's allocation (positive) and free (negative) events, in the order they happened."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if e.name() == "[memory]"
    )
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


@dataclass(frozen=True)
class Outcome:
    measured: int
    """Bytes: the inputs', and the most the call allocated above them at once."""
    predicted: int
    """Bytes: the model's elements times the floating dtype's element size."""
    inputs: int

    def __str__(self) -> str:
        return f"measured {self.measured} bytes (inputs {self.inputs}), predicted {self.predicted}"


def run(spec: LossSpec, tensors: dict[str, Tensor], params: dict[str, Any], grads: bool) -> Outcome:
    """Measure the service's call of `spec` on `tensors`, with gradients of every differentiable floating
    argument (as `return_grad: true` asks) or none, and predict it."""
    request = spec.params.model_validate(params)
    grad_wrt = [n for n in spec.differentiable if n in tensors and tensors[n].is_floating_point()] if grads else []
    inputs = sum(t.numel() * t.element_size() for t in tensors.values())
    peak = measure(lambda: compute.compute(spec, tensors, request, grad_wrt))
    cost = spec.cost({name: tuple(t.shape) for name, t in tensors.items()}, request, len(grad_wrt))
    size = next((t.element_size() for t in tensors.values() if t.is_floating_point()), 4)
    return Outcome(inputs + peak, cost.elements * size, inputs)


def _gradients(spec: LossSpec) -> tuple[bool, ...]:
    return (False, True) if spec.differentiable else (False,)


BOUNDS = [
    pytest.param(
        spec.name, workload, dtype, grads, id=f"{spec.name}-{workload.id}-{dtype}-{'grad' if grads else 'value'}"
    )
    for spec in REGISTRY
    for i, workload in enumerate(WORKLOADS.get(spec.name, ()))
    for dtype in (("float32", "float64") if i == 0 else ("float32",))
    for grads in _gradients(spec)
]


def test_every_loss_has_workloads() -> None:
    missing = [spec.name for spec in REGISTRY if not WORKLOADS.get(spec.name)]
    assert not missing, f"give these losses workloads in WORKLOADS: {missing}"


@pytest.mark.parametrize(("name", "workload", "dtype", "grads"), BOUNDS)
def test_the_model_bounds_the_peak(name: str, workload: Workload, dtype: str, grads: bool) -> None:
    spec = REGISTRY.get(name)
    out = run(spec, workload.make(getattr(torch, dtype)), workload.params, grads)
    assert out.measured <= out.predicted + SLACK_BYTES, f"{name} {workload.id}: under-predicted: {out}"
    assert out.predicted <= FACTOR * out.measured, f"{name} {workload.id}: over {FACTOR}x: {out}"


PARITY = [
    pytest.param(name, case, grads, id=f"{name}-{case.id}-{'grad' if grads else 'value'}")
    for name, cases in parity_cases.CASES.items()
    for case in cases
    for grads in _gradients(REGISTRY.get(name))
]


@pytest.mark.parametrize(("name", "case", "grads"), PARITY)
def test_the_model_bounds_every_parity_case(name: str, case: parity_cases.Case, grads: bool) -> None:
    """The parity suite's small cases reach the parameter branches the workloads leave out; at their size
    only the upper bound means anything (scalars dominate, within `SLACK_BYTES`)."""
    out = run(REGISTRY.get(name), case.tensors, case.params, grads)
    assert out.measured <= out.predicted + SLACK_BYTES, f"{name} {case.id}: under-predicted: {out}"
