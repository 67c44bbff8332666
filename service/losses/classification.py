"""Classification losses over logits with a class dimension: cross_entropy and softmax focal loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from service.losses import checks
from service.losses.registry import REGISTRY, LossParams, TensorArg, TensorKind

LOGITS = TensorArg(
    "input",
    "(C), (N, C) or (N, C, d1, ..., dK): unnormalized logits, class dimension 1 (0 when 1-D)",
    grad=True,
    doc="Logits.",
)
CLASS_WEIGHT = TensorArg("weight", "(C)", required=False, doc="A manual rescaling weight per class.")


def num_classes(input: Tensor) -> int:
    """C, the size of the class dimension of logits of shape (C) or (N, C, ...)."""
    return int(input.shape[0] if input.ndim == 1 else input.shape[1])


class CrossEntropyParams(LossParams):
    ignore_index: int = Field(
        -100, description="Class-index targets equal to this are ignored and do not count towards the mean."
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, le=1.0, description="Amount of smoothing: targets become (1 - s) one-hot + s / C."
    )


def check_cross_entropy(t: Mapping[str, Tensor], p: CrossEntropyParams) -> Sequence[str]:
    """Target shape matches input; weight has C entries; class indices in [0, C) or ignore_index."""
    logits, target = t["input"], t["target"]
    probabilities = checks.class_targets(logits, target, allow_probabilities=True)
    c = num_classes(logits)
    checks.class_weight(t.get("weight"), c)
    if not probabilities:
        checks.class_indices_in_range(target, c, p.ignore_index)
    return []


@REGISTRY.loss(
    "cross_entropy",
    tensors=(
        LOGITS,
        TensorArg(
            "target",
            "(), (N) or (N, d1, ..., dK) class indices in [0, C); or class probabilities of input's shape",
            kind=TensorKind.INDEX_OR_PROBABILITY,
            doc="Integer class indices, or floating class probabilities (read as such when the shape is input's).",
        ),
        CLASS_WEIGHT,
    ),
    params=CrossEntropyParams,
    check=check_cross_entropy,
    torch_ref="torch.nn.functional.cross_entropy",
)
def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None, p: CrossEntropyParams) -> Tensor:
    """Cross entropy between logits and class indices or class probabilities.

    With class indices and `mean`, the sum is divided by the total weight of the non-ignored targets
    (their count when no weight is given), exactly as torch does.
    """
    return F.cross_entropy(
        input,
        target,
        weight=weight,
        ignore_index=p.ignore_index,
        reduction=p.reduction,
        label_smoothing=p.label_smoothing,
    )


class FocalParams(LossParams):
    gamma: float = Field(2.0, ge=0.0, description="Focusing parameter: (1 - p_t)^gamma down-weights easy examples.")
    ignore_index: int = Field(-100, description="Targets equal to this contribute 0 and do not count towards the mean.")


def check_focal(t: Mapping[str, Tensor], p: FocalParams) -> Sequence[str]:
    """Class-index targets of input's shape minus C, in [0, C) or ignore_index; alpha () or (C)."""
    logits, target, alpha = t["input"], t["target"], t.get("alpha")
    checks.class_targets(logits, target, allow_probabilities=False)
    c = num_classes(logits)
    if alpha is not None and alpha.ndim != 0:
        checks.class_weight(alpha, c, name="alpha")
    checks.class_indices_in_range(target, c, p.ignore_index)
    return []


@REGISTRY.loss(
    "focal",
    tensors=(
        LOGITS,
        TensorArg(
            "target",
            "(), (N) or (N, d1, ..., dK) class indices in [0, C)",
            kind=TensorKind.INDEX,
            doc="Integer class indices.",
        ),
        TensorArg(
            "alpha",
            "() or (C)",
            required=False,
            doc="Class balancing: one factor for every class, or one per class (alpha_t). Omitted: 1.",
        ),
    ),
    params=FocalParams,
    check=check_focal,
    torch_ref="-alpha_t * (1 - p_t)^gamma * log(p_t), p_t = softmax(input)[target] (Lin et al., 2017)",
)
def focal(input: Tensor, target: Tensor, alpha: Tensor | None, p: FocalParams) -> Tensor:
    """Multi-class softmax focal loss: -alpha_t (1 - p_t)^gamma log(p_t), p_t = softmax(input)[target].

    log(p_t) comes from log_softmax over the class dimension. Ignored targets contribute 0; `mean`
    divides the sum by the number of non-ignored targets (not by the sum of alpha_t), so with
    gamma = 0 and no alpha it equals cross_entropy exactly. (1 - p_t) is computed as -expm1(log p_t)
    and kept at least the dtype's smallest normal number, so gradients stay finite when 0 < gamma < 1
    and p_t rounds to 1.
    """
    if input.ndim == 1:  # (C) logits with a () target: one sample without a batch dimension
        loss = focal(input.unsqueeze(0), target.unsqueeze(0), alpha, p)
        return loss.squeeze(0) if p.reduction == "none" else loss
    valid = target != p.ignore_index
    safe_target = torch.where(valid, target, 0)
    log_pt = F.log_softmax(input, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    loss = -one_minus_pt.pow(p.gamma) * log_pt
    if alpha is not None:
        loss = loss * (alpha if alpha.ndim == 0 else alpha[safe_target])
    loss = torch.where(valid, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if p.reduction == "none":
        return loss
    if p.reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()
