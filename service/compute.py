"""Run one loss: read tensors by their declared kinds, pre-validate on CPU, compute, differentiate.

Pure torch: tensors in, a `LossResult` out, domain errors raised. The API layer calls `compute` from
a worker thread; nothing here touches the event loop or HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from service.errors import (
    DeviceFailure,
    DtypeMismatch,
    InvalidTensor,
    Loc,
    ResourceExhausted,
    SettingError,
    ShapeMismatch,
    TorchRejected,
    dotted,
)
from service.losses import checks
from service.losses.registry import LossParams, LossSpec, LossTotals, TensorArg, TensorKind, Terms, Totals

_MAX_EXACT_INDEX = 2.0**53
"""Larger float-valued class indices cannot be told apart from their neighbours."""


@dataclass(frozen=True)
class RawTensor:
    """A decoded tensor on the CPU, and whether the client declared its dtype.

    Untyped tensors (JSON numbers without a `dtype`) arrive as float64 or int64 and take the dtype the
    argument's kind calls for; typed ones keep theirs, and a kind mismatch is an error.
    """

    tensor: Tensor
    typed: bool
    flat: bool = False
    """Read from a flat `data` array: an element is at `(name, "data", flat index)` in the request, not at its
    index in nested arrays."""


@dataclass
class LossResult:
    """The loss (and gradients) on the CPU, plus warnings torch would have printed."""

    loss: Tensor
    grads: dict[str, Tensor] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    device: str = "cpu"
    stats: LossTotals | None = None
    """The sufficient statistics of the loss (and per group label), when asked for."""


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingError("LOSSD_DEVICE", f"{name}, but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SettingError("LOSSD_DEVICE", f"{name}, but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    return device


@functools.cache
def narrows(source: torch.dtype, target: torch.dtype) -> bool:
    """Whether converting numbers of dtype `source` to `target` can make a finite one infinite: `target` is
    floating and its range smaller than `source`'s (float64 to float32, float16 or bfloat16; int64 to float16)."""
    if not target.is_floating_point or source == torch.bool:
        return False
    largest = torch.finfo(source).max if source.is_floating_point else torch.iinfo(source).max
    return largest > torch.finfo(target).max


def refuse_overflow(source: Tensor, converted: Tensor, loc: Loc, *, flat: bool = True, note: str = "") -> Tensor:
    """`converted` (`source` converted to a floating dtype by torch), unless the conversion made a finite number
    infinite (IEEE rounding: past the largest value by half a step or more; 65519 rounds to float16's 65504, 65520
    to infinity): that is an InvalidTensor at the first such element, led by its place in the request (`dotted`:
    `input.data[1]: value 70000 exceeds ...`), saying the dtype's largest value (and `note`, where the dtype came
    from). Costs one reduction over `converted` (`_all_finite`) only when the conversion `narrows`, and a second
    pass only when it holds an infinity or NaN; never a Python loop. "Infinity" sent as such stays infinite.

    `loc`: where `source`'s numbers are in the request; the element is at its flat index in it (`flat`, a `data`
    array), else at its index in nested arrays."""
    if not narrows(source.dtype, converted.dtype) or _all_finite(converted):
        return converted  # the common case: one reduction at most, nothing else
    bad = torch.isinf(converted) & torch.isfinite(source)
    if not bool(bad.any()):
        return converted
    index = int(torch.nonzero(bad.reshape(-1))[0, 0])
    place = (*loc, *((index,) if flat else checks.first_index(bad)))
    value, largest = source.reshape(-1)[index].item(), torch.finfo(converted.dtype).max
    raise InvalidTensor(
        f"{dotted(place)}: value {value} exceeds the range of {checks.dtype_name(converted)} (max {largest:.8g}){note}",
        loc=place,
    )


def _all_finite(t: Tensor) -> bool:
    """Whether floating `t` holds no infinity nor NaN: its least and greatest elements are finite. One reduction,
    nothing allocated: on one thread, 0.3 ms for a million float32 elements (`isinf(t).any()`: 2 ms) and 2.5 us for
    one (6 us)."""
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return math.isfinite(low.item()) and math.isfinite(high.item())


Cast = Callable[[Tensor, torch.dtype], Tensor]
"""How a tensor is converted to a dtype; /v1/evaluate passes a caching one so each conversion happens once."""


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype)


PIN_MIN_ELEMENTS = 1 << 16
"""Tensors this large travel between host and GPU through pinned (page-locked) memory."""


def host_cast(device: torch.device) -> Cast:
    """How decoded tensors get their dtype on the host, for `device`. For CUDA, large conversions write into
    pinned memory (from torch's caching host allocator), from which the copy to the GPU runs asynchronously
    at full speed: the conversion copies the data anyway, so pinning costs no extra copy."""
    if device.type != "cuda":
        return _cast

    def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
        if t.dtype == dtype or t.numel() < PIN_MIN_ELEMENTS:
            return t.to(dtype)
        return torch.empty(t.shape, dtype=dtype, pin_memory=True).copy_(t)

    return cast


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`; from pinned memory without waiting (the stream orders the copy before any kernel)."""
    if t.device == device:
        return t
    return t.to(device, non_blocking=device.type == "cuda" and t.is_pinned())


def to_host(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Results on the host. From CUDA, large ones are copied into pinned memory without waiting, then the
    stream is synchronized once: a pageable copy back is several times slower."""
    out = [t.detach() for t in tensors]
    on_gpu = [i for i, t in enumerate(out) if t.is_cuda]
    if not on_gpu:
        return out
    for i in on_gpu:
        if out[i].numel() >= PIN_MIN_ELEMENTS:
            host = torch.empty(out[i].shape, dtype=out[i].dtype, pin_memory=True)
            out[i] = host.copy_(out[i], non_blocking=True)
    torch.cuda.current_stream(tensors[on_gpu[0]].device).synchronize()
    return [t.cpu() for t in out]


def _as_indices(name: str, raw: RawTensor, cast: Cast) -> Tensor:
    t = raw.tensor
    if t.dtype == torch.bool:  # 0/1 labels, as torch's .long() reads them
        return cast(t, torch.int64)
    if t.is_floating_point():
        if raw.typed:
            raise DtypeMismatch(
                f"{name} holds class indices and needs an integer dtype (int64, int32, uint8), "
                f"got {checks.dtype_name(t)}",
                loc=(name,),
            )
        bad = ~torch.isfinite(t) | (t != t.trunc()) | (t.abs() >= _MAX_EXACT_INDEX)
        if bool(bad.any()):
            where = checks.first_index(bad)
            value = t[where].item()
            if not math.isfinite(value) or value != int(value):
                why = "which must be integers"
            elif abs(value) >= 2.0**63:
                why = "which must fit int64"
            else:  # an integer read as a float (written with a fraction or exponent, or next to one that was)
                why = "and a number read as a float is an exact integer only up to 2^53"
            raise DtypeMismatch(
                f"{name} holds class indices, {why}; got {value} at {name}{list(where)}", loc=(name, *where)
            )
    return cast(t, torch.int64)


def prepare_indices(name: str, raw: RawTensor) -> Tensor:
    """An integer tensor that is not a loss argument (session group labels), read like class indices."""
    return _as_indices(name, raw, _cast)


DEFAULT_FLOAT = torch.float32
"""The dtype of untyped floating arguments when no floating argument declares one."""


@dataclass(frozen=True)
class FloatDtype:
    """The dtype untyped floating arguments take: that of the first floating argument declaring one (`source`),
    else `DEFAULT_FLOAT`."""

    dtype: torch.dtype = DEFAULT_FLOAT
    source: str | None = None

    def note(self, name: str) -> str:
        """Where argument `name`'s dtype came from, to end a message about it."""
        if self.source is None:
            return ", the default dtype of untyped numbers"
        return f", the dtype `{name}` takes from `{self.source}`"


def _as_floats(name: str, raw: RawTensor, float_dtype: FloatDtype, cast: Cast) -> Tensor:
    t = raw.tensor
    if raw.typed and t.dtype != torch.bool:  # booleans (0/1 labels) take the float dtype like untyped numbers
        if not t.is_floating_point():
            raise DtypeMismatch(
                f"{name} needs a floating dtype (float16, bfloat16, float32, float64), got {checks.dtype_name(t)}",
                loc=(name,),
            )
        return t
    # a finite number the client sent never silently becomes infinite in the dtype lossd reads it as
    loc = (name, "data") if raw.flat else (name,)
    return refuse_overflow(t, cast(t, float_dtype.dtype), loc, flat=raw.flat, note=float_dtype.note(name))


def prepare(spec: LossSpec, raw: Mapping[str, RawTensor], cast: Cast = _cast) -> dict[str, Tensor]:
    """Give every decoded tensor the dtype its argument's kind calls for (see `TensorKind`): untyped floating
    numbers take the first declared floating dtype, else float32, and may not overflow it."""
    source = next(
        (a.name for a in spec.tensors if a.kind is TensorKind.FLOAT and (r := raw.get(a.name)) and r.typed), None
    )
    float_dtype = FloatDtype(raw[source].tensor.dtype, source) if source is not None else FloatDtype()
    out: dict[str, Tensor] = {}
    for arg in spec.tensors:
        r = raw.get(arg.name)
        if r is None:
            continue
        out[arg.name] = _coerce(arg, r, float_dtype, out, cast)
    return out


def _coerce(arg: TensorArg, r: RawTensor, float_dtype: FloatDtype, done: Mapping[str, Tensor], cast: Cast) -> Tensor:
    if arg.kind is TensorKind.FLOAT:
        return _as_floats(arg.name, r, float_dtype, cast)
    if arg.kind is TensorKind.INDEX_OR_PROBABILITY:
        if r.typed:
            reads_as_probabilities = r.tensor.is_floating_point()
        else:
            shape = arg.probability_shape(done) if arg.probability_shape else None
            reads_as_probabilities = shape is not None and tuple(r.tensor.shape) == tuple(shape)
        if reads_as_probabilities:
            return _as_floats(arg.name, r, float_dtype, cast)
    return _as_indices(arg.name, r, cast)


def compute(
    spec: LossSpec,
    tensors: Mapping[str, Tensor],
    params: LossParams,
    grad_wrt: Sequence[str] = (),
    device: torch.device | None = None,
    place: Callable[[Tensor], Tensor] | None = None,
    stats: bool = False,
    groups: Tensor | None = None,
) -> LossResult:
    """Pre-validate `tensors` (CPU), run the loss on `device`, and differentiate w.r.t. `grad_wrt`.

    Gradients of a non-scalar loss (`reduction="none"`) are taken with an upstream gradient of ones,
    i.e. they are the gradients of the sum of the per-element losses. `place` moves a tensor to the
    device (/v1/evaluate passes a caching one, so shared tensors are copied once). With `stats`, the
    result also holds the loss's sufficient statistics (`sufficient_stats`), per label of `groups` too.
    """
    device = device or torch.device("cpu")
    found = list(spec.check(tensors, params)) if spec.check else []
    try:
        on_device = {name: place(t) if place else to_device(t, device) for name, t in tensors.items()}
        totals = None
        if not grad_wrt and stats:  # one call for both, where torch reduces its per-element result itself
            per_element = spec(on_device, with_reduction(params, "none"))
            value = _reduced(spec, on_device, params, per_element)
            totals = sufficient_stats(spec, on_device, params, groups, per_element)
            loss, *host_grads = to_host([value])
        elif not grad_wrt:  # no tensor requires grad, so torch records no graph: no grad mode to switch
            loss, *host_grads = to_host([spec(on_device, params)])
        else:
            leaves = [on_device[name].detach().requires_grad_(True) for name in grad_wrt]
            on_device.update(zip(grad_wrt, leaves, strict=True))
            with torch.enable_grad():
                loss = spec(on_device, params)
                grads: Sequence[Tensor | None] = [None] * len(leaves)
                if loss.requires_grad:
                    grads = torch.autograd.grad(loss, leaves, grad_outputs=torch.ones_like(loss), allow_unused=True)
            filled = [
                grad if grad is not None else torch.zeros_like(leaf) for leaf, grad in zip(leaves, grads, strict=True)
            ]
            loss, *host_grads = to_host([loss, *filled])
            totals = sufficient_stats(spec, on_device, params, groups) if stats else None
    except torch.OutOfMemoryError as exc:
        raise ResourceExhausted(f"not enough memory on {device} for this request") from exc
    except torch.AcceleratorError as exc:  # not the client's doing, and the CUDA context is lost for good
        raise DeviceFailure(f"the device {device} failed: {exc}") from exc
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise TorchRejected(f"torch rejected the inputs: {exc}") from exc
    grads_by_name = dict(zip(grad_wrt, host_grads, strict=True))
    return LossResult(loss=loss, grads=grads_by_name, warnings=found, device=str(device), stats=totals)


def _reduced(spec: LossSpec, tensors: Mapping[str, Tensor], params: LossParams, per_element: Tensor) -> Tensor:
    """torch's loss with `params`' reduction: from its per-element result where torch itself reduces that
    (`StatsRule.reduces_elements`), else from another call."""
    if params.reduction == "none":
        return per_element
    if params.reduction in ("mean", "sum") and spec.stats.reduces_elements(tensors, params):
        return per_element.mean() if params.reduction == "mean" else per_element.sum()
    return spec(tensors, params)


def sufficient_stats(
    spec: LossSpec,
    tensors: Mapping[str, Tensor],
    params: LossParams,
    groups: Tensor | None = None,
    per_element: Tensor | None = None,
) -> LossTotals:
    """The loss's sufficient statistics by its declared rule (`StatsRule`): from its `reduction="none"`
    result, S, W and n in float64, such that the loss is S / W for its mean and S for its sum; they add up
    over batches. With `groups` (one integer label per sample, along dim 0 of the per-element loss), the
    same per label. Stats for `reduction="none"` are those of the mean. `per_element`: the `reduction="none"`
    result, when the caller has it."""
    # a `per_element` given comes from a call without a graph (no tensor requires grad): no grad mode to switch
    with torch.no_grad() if per_element is None else contextlib.nullcontext():
        if per_element is None:
            per_element = spec(tensors, with_reduction(params, "none"))
        rule_params = with_reduction(params, "mean") if params.reduction == "none" else params
        terms = spec.stats.terms(tensors, rule_params, per_element)
        values = terms.values.double()
        if terms.counted is None and terms.weight is None:  # W = n = the number of terms: no tensors to build
            n = values.numel()
            out = LossTotals(Totals(values.sum().item(), float(n), n))
        else:
            count = terms.counted.sum().double() if terms.counted is not None else values.new_tensor(values.numel())
            weight = terms.weight.double().sum() if terms.weight is not None else count
            s, w, c = torch.stack([values.sum(), weight, count]).tolist()
            out = LossTotals(Totals(s, w, int(c)))
        if groups is not None:
            out.groups = _group_totals(terms, values, groups)
    return out


class _Reduction:
    """A loss's parameters with another `reduction`, the rest read through (a pydantic copy costs 15 us)."""

    __slots__ = ("_params", "reduction")

    def __init__(self, params: LossParams, reduction: str):
        self._params = params
        self.reduction = reduction

    def __getattr__(self, name: str) -> Any:
        return getattr(self._params, name)


def with_reduction(params: LossParams, reduction: str) -> LossParams:
    """`params` with `reduction` in place of its own, for the loss's function and cost model."""
    return cast(LossParams, _Reduction(params, reduction))


def _group_totals(terms: Terms, values: Tensor, groups: Tensor) -> dict[str, Totals]:
    """Totals per group label: each sample's terms (along dim 0) summed into its label's."""
    samples = values.shape[0] if values.ndim else None
    weight, counted = terms.weight, terms.counted
    if samples is None or tuple(groups.shape) != (samples,):
        expected = f"({samples},): one integer label per sample" if samples is not None else "absent"
        raise ShapeMismatch(
            f"groups must be {expected} (along dim 0 of the per-element loss, of shape {list(values.shape)}); "
            f"got shape {list(groups.shape)}",
            loc=("groups",),
        )
    for name, t in (("weight", weight), ("counted terms", counted)):
        if t is not None and (t.ndim == 0 or t.shape[0] != samples):
            raise ShapeMismatch(
                f"groups cannot split this loss: its {name} of shape {list(t.shape)} do not run along the "
                f"per-element loss's dim 0 ({samples} samples)",
                loc=("groups",),
            )
    if samples == 0:  # an empty batch adds nothing to any group
        return {}
    labels, inverse = torch.unique(groups.to(values.device), return_inverse=True)

    def per_label(x: Tensor) -> Tensor:
        rows = x.double().reshape(samples, -1).sum(1)
        return torch.zeros(len(labels), dtype=torch.float64, device=x.device).index_add_(0, inverse, rows)

    each = values[0].numel()
    n = per_label(counted) if counted is not None else per_label(torch.full((samples,), each, device=values.device))
    w = per_label(weight) if weight is not None else n
    rows = torch.stack([per_label(values), w, n], dim=1).tolist()
    return {str(label): Totals(s, w_, int(c)) for label, (s, w_, c) in zip(labels.tolist(), rows, strict=True)}
