"""Pre-validation helpers shared by the loss families. They run on CPU tensors before torch does.

Each raises a domain error whose `loc` names the argument (and, for elementwise checks, the first
offending index) and whose message states what was expected and what was received. Catching these
here matters most on CUDA: an out-of-range class index reaching a CUDA kernel is a device-side assert
that poisons the process's CUDA context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from service.errors import DtypeMismatch, ShapeMismatch, ValueOutOfRange


def shape_of(t: Tensor) -> list[int]:
    """A tensor's shape as a plain list, the way messages and responses print it."""
    return list(t.shape)


def first_index(mask: Tensor) -> tuple[int, ...]:
    """Index of the first True element of a boolean tensor (row-major)."""
    flat = int(torch.nonzero(mask.reshape(-1))[0, 0])
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), mask.shape)) if mask.ndim else ()


def broadcastable(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """Require `t` to broadcast against `ref`, as torch's elementwise operations need. (The size of the
    result is the cost model's to bound: see `registry.broadcast_cost`.)"""
    try:
        torch.broadcast_shapes(t.shape, ref.shape)  # type: ignore[no-untyped-call]
    except RuntimeError:
        raise ShapeMismatch(
            f"{name} of shape {shape_of(t)} cannot be broadcast with {ref_name} of shape {shape_of(ref)}",
            loc=(name,),
        ) from None


def ndim_in(name: str, t: Tensor, allowed: tuple[int, ...], shapes: str) -> None:
    """Require `t` to have one of the `allowed` numbers of dimensions; `shapes` says them in torch's words."""
    if t.ndim not in allowed:
        raise ShapeMismatch(f"{name} must have shape {shapes}, got {shape_of(t)}", loc=(name,))


def same_ndim_broadcastable(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """As torch requires of pairs and triplets: as many dimensions as `ref`, and broadcastable with it."""
    if t.ndim != ref.ndim:
        raise ShapeMismatch(
            f"{name} must have as many dimensions as {ref_name} ({ref.ndim}), got shape {shape_of(t)}", loc=(name,)
        )
    broadcastable(name, t, ref_name, ref)


def broadcast_target(input: Tensor, target: Tensor, target_name: str = "target") -> list[str]:
    """Accept `target` if it broadcasts against `input`, as torch does; warn when shapes differ.

    Torch's elementwise losses broadcast a differently shaped target with a UserWarning. lossd follows
    torch (the numbers are torch's) and passes the warning on to the client in the response.
    """
    if input.shape == target.shape:
        return []
    broadcastable(target_name, target, "input", input)
    return [
        f"Using a target size ({target.shape}) that is different to the input size ({input.shape}). "
        "This will likely lead to incorrect results due to broadcasting. "
        "Please ensure they have the same size."
    ]


def same_shape(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """Require `t` to have exactly `ref`'s shape."""
    if t.shape != ref.shape:
        raise ShapeMismatch(f"{name} must have the shape of {ref_name} {shape_of(ref)}, got {shape_of(t)}", loc=(name,))


def class_weight(weight: Tensor | None, num_classes: int, name: str = "weight") -> None:
    """A per-class tensor must be 1-D with one value per class."""
    if weight is not None and weight.shape != (num_classes,):
        raise ShapeMismatch(
            f"{name} must have shape [{num_classes}] (one value per class, C={num_classes}), got {shape_of(weight)}",
            loc=(name,),
        )


def class_targets(input: Tensor, target: Tensor, *, allow_probabilities: bool) -> bool:
    """Check `target` against logits `input` of shape (C), (N, C) or (N, C, d1, ...).

    Returns True when `target` holds class probabilities (floating, input's shape), False for class
    indices (shape of input without its class dimension).
    """
    if input.ndim == 0:
        raise ShapeMismatch("input must have a class dimension: (C), (N, C) or (N, C, d1, ...), got []", loc=("input",))
    index_shape = input.shape[1:0] if input.ndim == 1 else input.shape[:1] + input.shape[2:]
    if target.is_floating_point():
        if not allow_probabilities:
            raise DtypeMismatch(
                f"target must hold integer class indices, got dtype {dtype_name(target)}", loc=("target",)
            )
        if target.shape != input.shape:
            raise ShapeMismatch(
                f"class-probability target (floating dtype) must have input's shape {shape_of(input)}, got "
                f"{shape_of(target)}; class indices of shape {list(index_shape)} must be integers",
                loc=("target",),
            )
        return True
    if target.shape != index_shape:
        extra = f" or class probabilities of shape {shape_of(input)}" if allow_probabilities else ""
        raise ShapeMismatch(
            f"target must hold class indices of shape {list(index_shape)}{extra} for input of shape "
            f"{shape_of(input)}, got {shape_of(target)}",
            loc=("target",),
        )
    return False


def class_indices_in_range(
    target: Tensor, num_classes: int, ignore_index: int | None, name: str = "target", where: Tensor | None = None
) -> None:
    """Every class index must lie in [0, C), except entries equal to `ignore_index` (and outside `where`)."""
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if where is not None:
        bad &= where
    if bool(bad.any()):
        at = first_index(bad)
        ignored = f" (or ignore_index={ignore_index})" if ignore_index is not None else ""
        raise ValueOutOfRange(
            f"class index {int(target[at])} at {name}{list(at)} is out of range: "
            f"expected 0 <= index < {num_classes}{ignored}",
            loc=(name, *at),
        )


def values_where(name: str, t: Tensor, bad: Tensor, expected: str) -> None:
    """Fail at the first element where `bad` holds, saying what was expected there."""
    if bool(bad.any()):
        at = first_index(bad)
        raise ValueOutOfRange(f"{name}{list(at)} is {t[at].item()}; expected {expected}", loc=(name, *at))


def signs(name: str, t: Tensor) -> None:
    """Targets that torch reads as +1/-1 labels must be exactly 1 or -1."""
    values_where(name, t, (t != 1) & (t != -1), "1 or -1")


def sign_target(t: Mapping[str, Tensor], p: object) -> Sequence[str]:
    """A whole `check` for losses whose target holds +1/-1 labels broadcastable with `input`."""
    broadcastable("target", t["target"], "input", t["input"])
    signs("target", t["target"])
    return []


def unit_interval(name: str, t: Tensor) -> None:
    """Probabilities: every value in [0, 1] (NaN is not)."""
    values_where(name, t, ~((t >= 0) & (t <= 1)), "a value in [0, 1]")


def non_negative(name: str, t: Tensor) -> None:
    """Every value >= 0 (NaN passes, as in torch's own check)."""
    values_where(name, t, t < 0, "a non-negative value")


def dtype_name(t: Tensor) -> str:
    """Torch dtype without the `torch.` prefix: `float32`, `int64`, ..."""
    return str(t.dtype).removeprefix("torch.")
