"""Regression losses: elementwise distances between `input` and `target` (l1, mse, smooth_l1, huber)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from service.losses import checks
from service.losses.registry import REGISTRY, LossParams, StatsRule, TensorArg, Terms, elementwise

ELEMENTWISE = (
    TensorArg("input", "(*), any number of dimensions", grad=True, doc="Predictions."),
    TensorArg(
        "target",
        "(*), same shape as input (a broadcastable shape is accepted with torch's warning)",
        grad=True,
        broadcast=True,
        doc="Ground truth.",
    ),
)
WEIGHT = TensorArg(
    "weight", "(*), same shape as input", required=False, doc="Per-element weights; `mean` divides by their sum."
)


def _weighted_terms(t: Mapping[str, Tensor], p: LossParams, per_element: Tensor) -> Terms:
    weight = t.get("weight")
    return Terms(per_element) if weight is None else Terms(per_element, weight)


WEIGHTED_MEAN = StatsRule(
    "S = the sum of the per-element losses (weighted), W = the sum of `weight` (n without it), n = their number.",
    _weighted_terms,
    reduces_elements=lambda tensors, params: tensors.get("weight") is None,
)
"""l1 and mse: with `weight`, torch's `mean` divides the weighted sum by the sum of the weights."""


def check_elementwise(t: Mapping[str, Tensor], p: LossParams) -> Sequence[str]:
    """Target broadcastable to input (torch warns when shapes differ); weight of input's shape."""
    warnings = checks.broadcast_target(t["input"], t["target"])
    if t.get("weight") is not None:
        checks.same_shape("weight", t["weight"], "input", t["input"])
    return warnings


@REGISTRY.loss(
    "l1",
    tensors=(*ELEMENTWISE, WEIGHT),
    check=check_elementwise,
    torch_ref="torch.nn.functional.l1_loss",
    cost=elementwise(value=3, backward=3),  # |input - target| (and its sign, backward), weighted: 2 and 2 measured
    aliases=("L1Loss",),
    stats=WEIGHTED_MEAN,
)
def l1(input: Tensor, target: Tensor, weight: Tensor | None, p: LossParams) -> Tensor:
    """Mean absolute error: |input - target|, optionally weighted per element."""
    return F.l1_loss(input, target, reduction=p.reduction, weight=weight)  # type: ignore[call-arg]  # stubs lag


@REGISTRY.loss(
    "mse",
    tensors=(*ELEMENTWISE, WEIGHT),
    check=check_elementwise,
    torch_ref="torch.nn.functional.mse_loss",
    cost=elementwise(value=3, backward=4),  # measured 2 and 3 (weighted)
    aliases=("MSELoss",),
    stats=WEIGHTED_MEAN,
)
def mse(input: Tensor, target: Tensor, weight: Tensor | None, p: LossParams) -> Tensor:
    """Mean squared error: (input - target)^2, optionally weighted per element."""
    return F.mse_loss(input, target, reduction=p.reduction, weight=weight)  # type: ignore[call-arg]  # stubs lag


class SmoothL1Params(LossParams):
    beta: float = Field(1.0, ge=0, description="Where the loss turns from quadratic to linear; 0 makes it exactly l1.")


@REGISTRY.loss(
    "smooth_l1",
    tensors=ELEMENTWISE,
    params=SmoothL1Params,
    check=check_elementwise,
    torch_ref="torch.nn.functional.smooth_l1_loss",
    cost=elementwise(value=3, backward=3),  # measured 2 and 2 (beta=0: l1's)
    aliases=("SmoothL1Loss",),
)
def smooth_l1(input: Tensor, target: Tensor, p: SmoothL1Params) -> Tensor:
    """Smooth L1: 0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta, with x = input - target."""
    return F.smooth_l1_loss(input, target, reduction=p.reduction, beta=p.beta)


class HuberParams(LossParams):
    delta: float = Field(1.0, gt=0, description="Where the loss turns from quadratic to linear.")


@REGISTRY.loss(
    "huber",
    tensors=(
        *ELEMENTWISE,
        TensorArg(
            "weight",
            "(*), same shape as input",
            required=False,
            doc="Per-element weights (`mean` is their plain mean).",
        ),
    ),
    params=HuberParams,
    check=check_elementwise,
    torch_ref="torch.nn.functional.huber_loss",
    cost=elementwise(value=3, backward=3),  # measured 2 and 1 (weighted)
    aliases=("HuberLoss",),
)
def huber(input: Tensor, target: Tensor, weight: Tensor | None, p: HuberParams) -> Tensor:
    """Huber: 0.5 x^2 where |x| < delta, else delta (|x| - 0.5 delta), with x = input - target."""
    return F.huber_loss(input, target, reduction=p.reduction, delta=p.delta, weight=weight)  # type: ignore[call-arg]
