"""Divergences and likelihoods: kl_div, poisson_nll, gaussian_nll."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from service.errors import ShapeMismatch
from service.losses import checks
from service.losses.registry import (
    REGISTRY,
    Cost,
    LossParams,
    LossSpec,
    Shapes,
    StatsRule,
    TensorArg,
    Terms,
    elementwise,
    elementwise_cost,
)

KL_MEAN_WARNING = (
    "reduction: 'mean' divides the total loss by both the batch size and the support size."
    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
    "'mean' will be changed to behave the same as 'batchmean' in the next major release."
)
"""Torch's own warning for kl_div with reduction 'mean', returned to the client with the result."""


class KlDivParams(LossParams):
    reduction: Literal["none", "batchmean", "sum", "mean"] = Field(  # type: ignore[assignment]  # one more than others
        "mean", description="none, batchmean (sum / batch size: the KL divergence), sum, or mean (over every element)."
    )
    log_target: bool = Field(False, description="Whether target holds log-probabilities rather than probabilities.")


def check_kl_div(t: Mapping[str, Tensor], p: KlDivParams) -> Sequence[str]:
    """Target broadcastable with input; torch's warning for `mean`."""
    checks.broadcastable("target", t["target"], "input", t["input"])
    return [KL_MEAN_WARNING] if p.reduction == "mean" else []


def _kl_div_terms(t: Mapping[str, Tensor], p: KlDivParams, per_element: Tensor) -> Terms:
    if p.reduction != "batchmean" or per_element.ndim == 0 or per_element.shape[0] == 0:
        return Terms(per_element)  # (an empty batch: nothing to weigh)
    # torch divides the sum by input.size(0): one unit of weight per sample (per row of the result)
    rows = per_element.shape[0]
    each = t["input"].shape[0] / rows
    return Terms(per_element, torch.full((rows,), each, dtype=torch.float64, device=per_element.device))


KL_DIV_STATS = StatsRule(
    "mean: S = the sum of the per-element terms, W = n = their number. batchmean: W = the batch size "
    "(input's dim 0), n = the number of terms.",
    _kl_div_terms,
    reduces_elements=lambda tensors, params: params.reduction != "batchmean",
)


@REGISTRY.loss(
    "kl_div",
    tensors=(
        TensorArg("input", "(*), log-probabilities", grad=True, doc="Log-probabilities (e.g. log_softmax output)."),
        TensorArg(
            "target",
            "(*), same shape as input",
            grad=True,
            broadcast=True,
            doc="Probabilities, or log-probabilities with log_target.",
        ),
    ),
    params=KlDivParams,
    check=check_kl_div,
    torch_ref="torch.nn.functional.kl_div",
    cost=elementwise(value=4, backward=5),  # log(target) - input, product, where(): 3 and 3.75 measured
    aliases=("KLDivLoss", "kl_div_loss"),
    stats=KL_DIV_STATS,
)
def kl_div(input: Tensor, target: Tensor, p: KlDivParams) -> Tensor:
    """Kullback-Leibler divergence: target * (log target - input), pointwise."""
    return F.kl_div(input, target, reduction=p.reduction, log_target=p.log_target)


class PoissonNllParams(LossParams):
    log_input: bool = Field(True, description="true: input is log(rate), loss exp(input) - target*input.")
    full: bool = Field(
        False, description="Add the Stirling approximation term target*log(target) - target + 0.5 log(2 pi target)."
    )
    eps: float = Field(1e-8, gt=0, description="Added to input when log_input is false, to avoid log(0).")


def poisson_nll_cost(spec: LossSpec, shapes: Shapes, p: PoissonNllParams, grads: int) -> Cost:
    """exp(input) - target * input: measured 3 and 2 (see `elementwise`); the Stirling term (full), built on
    target's shape (at most the broadcast one) and added, makes it 8 and 8."""
    if p.full:
        return elementwise_cost(spec, shapes, p, grads, value=9, backward=10)
    return elementwise_cost(spec, shapes, p, grads, value=4, backward=4)


def check_broadcast_target(t: Mapping[str, Tensor], p: LossParams) -> Sequence[str]:
    """Target broadcastable with input."""
    checks.broadcastable("target", t["target"], "input", t["input"])
    return []


@REGISTRY.loss(
    "poisson_nll",
    tensors=(
        TensorArg("input", "(*)", grad=True, doc="Expected counts (log-rates when log_input)."),
        TensorArg("target", "(*), same shape as input", grad=True, broadcast=True, doc="Observed counts."),
    ),
    params=PoissonNllParams,
    check=check_broadcast_target,
    torch_ref="torch.nn.functional.poisson_nll_loss",
    cost=poisson_nll_cost,
    aliases=("PoissonNLLLoss",),
)
def poisson_nll(input: Tensor, target: Tensor, p: PoissonNllParams) -> Tensor:
    """Negative log likelihood of a Poisson-distributed target."""
    return F.poisson_nll_loss(input, target, log_input=p.log_input, full=p.full, eps=p.eps, reduction=p.reduction)


class GaussianNllParams(LossParams):
    full: bool = Field(False, description="Add the constant 0.5 log(2 pi).")
    eps: float = Field(1e-6, gt=0, description="var is clamped to at least eps, for stability.")


def check_gaussian_nll(t: Mapping[str, Tensor], p: GaussianNllParams) -> Sequence[str]:
    """var non-negative, and of a shape torch accepts (input's, one dimension short, or one dimension 1)."""
    input, var = t["input"], t["var"]
    checks.broadcastable("target", t["target"], "input", input)
    checks.non_negative("var", var)
    if var.ndim == 0 or var.shape == input.shape or var.shape == input.shape[:-1]:
        return []
    if var.ndim == input.ndim and sum(v for i, v in zip(input.shape, var.shape, strict=True) if i != v) == 1:
        return []
    raise ShapeMismatch(
        f"var of shape {checks.shape_of(var)} does not fit input of shape {checks.shape_of(input)}: expected a "
        "number, input's shape, input's shape without its last dimension, or input's shape with one dimension 1",
        loc=("var",),
    )


@REGISTRY.loss(
    "gaussian_nll",
    tensors=(
        TensorArg("input", "(N, *) or (*)", grad=True, doc="Expected values (means)."),
        TensorArg("target", "(N, *) or (*), same shape as input", grad=True, broadcast=True, doc="Samples."),
        TensorArg(
            "var",
            "a number, input's shape, input's shape without the last dimension, or with one dimension of size 1",
            grad=True,
            doc="Variances, non-negative.",
        ),
    ),
    params=GaussianNllParams,
    check=check_gaussian_nll,
    torch_ref="torch.nn.functional.gaussian_nll_loss",
    cost=elementwise(value=5, backward=7),  # var's copy, log(var), (input - target)**2 / var: 4 and 5 measured
    aliases=("GaussianNLLLoss",),
)
def gaussian_nll(input: Tensor, target: Tensor, var: Tensor, p: GaussianNllParams) -> Tensor:
    """Negative log likelihood of target under a Gaussian with mean input and variance var.

    A single number for var is the same variance for every element, as torch's float var; its gradient is the sum
    over the elements.
    """
    # torch takes a 0-d var itself for an input of at most one dimension (one dimension short of it); for a larger
    # one it refuses a 0-d tensor and takes a float as `var * ones_like(input)`: here `expand_as`, differentiable
    if var.ndim == 0 and input.ndim > 1:
        var = var.expand_as(input)
    return F.gaussian_nll_loss(input, target, var, full=p.full, eps=p.eps, reduction=p.reduction)
