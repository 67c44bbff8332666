"""Run one loss: read tensors by their declared kinds, pre-validate on CPU, compute, differentiate.

Pure torch: tensors in, a `LossResult` out, domain errors raised. The API layer calls `compute` from
a worker thread; nothing here touches the event loop or HTTP.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from service.errors import DeviceFailure, DtypeMismatch, ResourceExhausted, TorchRejected
from service.losses import checks
from service.losses.registry import LossParams, LossSpec, TensorArg, TensorKind

# Torch warns (once per call site) when a target's shape differs from input's. lossd checks that itself
# and returns the warning to the client with the result, so the process log need not repeat it.
warnings.filterwarnings("ignore", message="Using a target size", category=UserWarning)
warnings.filterwarnings("ignore", message="reduction: 'mean' divides the total loss", category=UserWarning)

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


@dataclass
class LossResult:
    """The loss (and gradients) on the CPU, plus warnings torch would have printed."""

    loss: Tensor
    grads: dict[str, Tensor] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    device: str = "cpu"


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"LOSSD_DEVICE={name} but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"LOSSD_DEVICE={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    return device


Cast = Callable[[Tensor, torch.dtype], Tensor]
"""How a tensor is converted to a dtype; /v1/evaluate passes a caching one so each conversion happens once."""


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype)


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
            raise DtypeMismatch(
                f"{name} holds class indices, which must be integers; got {t[where].item()} at {name}{list(where)}",
                loc=(name, *where),
            )
    return cast(t, torch.int64)


def _as_floats(name: str, raw: RawTensor, dtype: torch.dtype, cast: Cast) -> Tensor:
    t = raw.tensor
    if raw.typed and t.dtype != torch.bool:  # booleans (0/1 labels) take the float dtype like untyped numbers
        if not t.is_floating_point():
            raise DtypeMismatch(
                f"{name} needs a floating dtype (float16, bfloat16, float32, float64), got {checks.dtype_name(t)}",
                loc=(name,),
            )
        return t
    return cast(t, dtype)


def prepare(spec: LossSpec, raw: Mapping[str, RawTensor], cast: Cast = _cast) -> dict[str, Tensor]:
    """Give every decoded tensor the dtype its argument's kind calls for (see `TensorKind`)."""
    float_dtype = next(
        (r.tensor.dtype for a in spec.tensors if a.kind is TensorKind.FLOAT and (r := raw.get(a.name)) and r.typed),
        torch.float32,
    )
    out: dict[str, Tensor] = {}
    for arg in spec.tensors:
        r = raw.get(arg.name)
        if r is None:
            continue
        out[arg.name] = _coerce(arg, r, float_dtype, out, cast)
    return out


def _coerce(arg: TensorArg, r: RawTensor, float_dtype: torch.dtype, done: Mapping[str, Tensor], cast: Cast) -> Tensor:
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
) -> LossResult:
    """Pre-validate `tensors` (CPU), run the loss on `device`, and differentiate w.r.t. `grad_wrt`.

    Gradients of a non-scalar loss (`reduction="none"`) are taken with an upstream gradient of ones,
    i.e. they are the gradients of the sum of the per-element losses. `place` moves a tensor to the
    device (/v1/evaluate passes a caching one, so shared tensors are copied once).
    """
    device = device or torch.device("cpu")
    found = list(spec.check(tensors, params)) if spec.check else []
    on_device = {name: place(t) if place else t if t.device == device else t.to(device) for name, t in tensors.items()}
    leaves = [on_device[name].detach().requires_grad_(True) for name in grad_wrt]
    on_device.update(zip(grad_wrt, leaves, strict=True))
    try:
        with torch.set_grad_enabled(bool(leaves)):
            loss = spec(on_device, params)
            grads: Sequence[Tensor | None] = ()
            if leaves and loss.requires_grad:
                grads = torch.autograd.grad(loss, leaves, grad_outputs=torch.ones_like(loss), allow_unused=True)
    except torch.OutOfMemoryError as exc:
        raise ResourceExhausted(f"not enough memory on {device} for this request") from exc
    except torch.AcceleratorError as exc:  # not the client's doing, and the CUDA context is lost for good
        raise DeviceFailure(f"the device {device} failed: {exc}") from exc
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise TorchRejected(f"torch rejected the inputs: {exc}") from exc
    result = LossResult(loss=loss.detach().cpu(), warnings=found, device=str(device))
    for name, leaf, grad in zip(grad_wrt, leaves, list(grads) or [None] * len(leaves), strict=True):
        result.grads[name] = (grad if grad is not None else torch.zeros_like(leaf)).detach().cpu()
    return result
