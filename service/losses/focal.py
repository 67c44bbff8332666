"""Focal losses: the multi-class softmax focal loss and torchvision's sigmoid focal loss.

Neither is in torch.nn.functional; each is written out from its published formula. (1 - p_t) is kept at
least the dtype's smallest normal number, so that gradients stay finite when 0 < gamma < 1 and p_t
rounds to 1 (the textbook formula gives 0 * inf = NaN there); the loss value is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from service.losses import checks
from service.losses.classification import LOGITS, class_sizes, num_classes
from service.losses.registry import (
    REGISTRY,
    Cost,
    LossParams,
    LossSpec,
    Reduction,
    Shapes,
    StatsRule,
    TensorArg,
    TensorKind,
    Terms,
    elementwise,
    grad_elements,
    input_elements,
    loss_elements,
    peak_elements,
)


def _focal_factor(one_minus_pt: Tensor, gamma: float) -> Tensor:
    """(1 - p_t)^gamma with a finite derivative everywhere (see the module docstring)."""
    return one_minus_pt.clamp_min(torch.finfo(one_minus_pt.dtype).tiny).pow(gamma)


def _reduce(loss: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


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


def focal_cost(spec: LossSpec, shapes: Shapes, p: FocalParams, grads: int) -> Cost:
    """log_softmax's copy of the logits, then a dozen tensors per sample (the gathered log p_t, the focal
    factor, the masks). Measured: one logits-sized tensor and 3 per sample without gradients; 3 with one
    (the gradient included) and 2 per sample."""
    scores, samples = class_sizes(tuple(shapes["input"]))
    loss = loss_elements(p, samples)
    value = 2 * scores + 8 * samples
    backward = (3 + grads) * scores + 12 * samples
    elements = peak_elements(input_elements(spec, shapes), value, backward, grads, loss)
    return Cost(elements, loss + grad_elements(spec, shapes, grads), scores, "input (its log_softmax)", ("input",))


FOCAL_STATS = StatsRule(
    "S = the sum of the per-element losses, W = n = the number of targets not ignored.",
    lambda t, p, per_element: Terms(per_element, counted=t["target"] != p.ignore_index),
)


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
    aliases=("focal_loss", "FocalLoss"),
    cost=focal_cost,
    stats=FOCAL_STATS,
)
def focal(input: Tensor, target: Tensor, alpha: Tensor | None, p: FocalParams) -> Tensor:
    """Multi-class softmax focal loss: -alpha_t (1 - p_t)^gamma log(p_t), p_t = softmax(input)[target].

    log(p_t) comes from log_softmax over the class dimension. Ignored targets contribute 0; `mean`
    divides the sum by the number of non-ignored targets (not by the sum of alpha_t), so with
    gamma = 0 and no alpha it equals cross_entropy exactly.
    """
    if input.ndim == 1:  # (C) logits with a () target: one sample without a batch dimension
        loss = focal(input.unsqueeze(0), target.unsqueeze(0), alpha, p)
        return loss.squeeze(0) if p.reduction == "none" else loss
    valid = target != p.ignore_index
    safe_target = torch.where(valid, target, 0)
    log_pt = F.log_softmax(input, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
    loss = -_focal_factor(-torch.expm1(log_pt), p.gamma) * log_pt
    if alpha is not None:
        loss = loss * (alpha if alpha.ndim == 0 else alpha[safe_target])
    loss = torch.where(valid, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if p.reduction == "mean":
        return loss.sum() / valid.sum()
    return _reduce(loss, p.reduction)


class SigmoidFocalParams(LossParams):
    reduction: Reduction = Field("none", description="none (torchvision's default), mean or sum.")
    alpha: float = Field(0.25, description="Weight of positives, 1 - alpha of negatives; negative: no weighting.")
    gamma: float = Field(2.0, ge=0.0, description="Focusing parameter.")


def check_sigmoid_focal(t: Mapping[str, Tensor], p: SigmoidFocalParams) -> Sequence[str]:
    """Targets of the inputs' shape."""
    checks.same_shape("targets", t["targets"], "inputs", t["inputs"])
    return []


@REGISTRY.loss(
    "sigmoid_focal",
    tensors=(
        TensorArg("inputs", "(*): logits", grad=True, doc="Logits, one per binary decision."),
        TensorArg("targets", "(*), same shape as inputs: 0 or 1", doc="Binary labels (0 negative, 1 positive)."),
    ),
    params=SigmoidFocalParams,
    check=check_sigmoid_focal,
    torch_ref="torchvision.ops.sigmoid_focal_loss",
    aliases=("sigmoid_focal_loss",),
    cost=elementwise(value=8, backward=10),  # prob, ce, p_t's four terms, the factor, alpha_t: 7 and 9 measured
)
def sigmoid_focal(inputs: Tensor, targets: Tensor, p: SigmoidFocalParams) -> Tensor:
    """torchvision's sigmoid focal loss: BCE-with-logits * (1 - p_t)^gamma, times alpha_t when alpha >= 0.

    p_t = sigmoid(x) t + (1 - sigmoid(x)) (1 - t), alpha_t = alpha t + (1 - alpha) (1 - t); argument
    names, defaults (reduction 'none') and formula are torchvision.ops.sigmoid_focal_loss's.
    """
    prob = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * _focal_factor(1 - p_t, p.gamma)
    if p.alpha >= 0:
        loss = (p.alpha * targets + (1 - p.alpha) * (1 - targets)) * loss
    return _reduce(loss, p.reduction)
