"""Sequence losses: connectionist temporal classification (ctc)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from service.errors import InvalidRequest, ShapeMismatch
from service.losses import checks
from service.losses.registry import (
    REGISTRY,
    Cost,
    LossParams,
    LossSpec,
    Shapes,
    StatsRule,
    TensorArg,
    TensorKind,
    Terms,
    grad_elements,
    input_elements,
    loss_elements,
    peak_elements,
)


class CtcParams(LossParams):
    blank: int = Field(0, ge=0, description="Index of the blank label, in [0, C).")
    zero_infinity: bool = Field(
        False, description="Replace infinite losses (impossible alignments) and their gradients by 0."
    )


def check_ctc(t: Mapping[str, Tensor], p: CtcParams) -> Sequence[str]:
    """Lengths consistent with the tensors, used labels in [0, C) and not blank (checked before any kernel)."""
    log_probs, targets = t["log_probs"], t["targets"]
    input_lengths, target_lengths = t["input_lengths"], t["target_lengths"]
    checks.ndim_in("log_probs", log_probs, (2, 3), "(T, N, C) or (T, C)")
    steps, classes = int(log_probs.shape[0]), int(log_probs.shape[-1])
    batched = log_probs.ndim == 3
    lengths_shape = [int(log_probs.shape[1])] if batched else []
    for name in ("input_lengths", "target_lengths"):
        if list(t[name].shape) != lengths_shape:
            raise ShapeMismatch(
                f"{name} must have shape {lengths_shape} (one length per sequence), got {checks.shape_of(t[name])}",
                loc=(name,),
            )
    if p.blank >= classes:
        raise InvalidRequest(f"blank must be in [0, C={classes}), got {p.blank}", loc=("blank",))
    checks.values_where(
        "input_lengths", input_lengths, (input_lengths < 0) | (input_lengths > steps), f"a length in [0, T={steps}]"
    )
    checks.non_negative("target_lengths", target_lengths)
    if batched and targets.ndim == 1:  # concatenated targets
        total = int(target_lengths.sum())
        if targets.numel() != total:
            raise ShapeMismatch(
                f"concatenated targets must hold sum(target_lengths) = {total} labels, got {targets.numel()}",
                loc=("targets",),
            )
        used = torch.ones_like(targets, dtype=torch.bool)
    elif targets.ndim == (2 if batched else 1) and (not batched or targets.shape[0] == log_probs.shape[1]):
        width = int(targets.shape[-1])
        checks.values_where(
            "target_lengths", target_lengths, target_lengths > width, f"at most {width}, the padded targets' length"
        )
        used = torch.arange(width) < target_lengths.unsqueeze(-1)
    else:
        expected = "(N, S) padded or (sum(target_lengths)) concatenated" if batched else "(S)"
        raise ShapeMismatch(f"targets must have shape {expected}, got {checks.shape_of(targets)}", loc=("targets",))
    checks.class_indices_in_range(targets, classes, None, name="targets", where=used)
    checks.values_where("targets", targets, used & (targets == p.blank), f"a label other than blank ({p.blank})")
    return []


def ctc_cost(spec: LossSpec, shapes: Shapes, p: CtcParams, grads: int) -> Cost:
    """torch's alpha table, TxNx(2S+1) for T = log_probs' length and S the longest target; with gradients
    the beta table of that size too and the TxNxC gradient; one more log_probs-sized tensor as a margin
    (measured: the tables and the gradient exactly, as RSS shows too). S is the padded targets' width, or
    for concatenated targets (their lengths unknown before the check reads them) all of them."""
    log_probs, targets = tuple(shapes["log_probs"]), tuple(shapes["targets"])
    steps, classes = (log_probs[0], log_probs[-1]) if log_probs else (0, 0)
    batch = log_probs[1] if len(log_probs) == 3 else 1
    concatenated = len(log_probs) == 3 and len(targets) == 1
    longest = math.prod(targets) if concatenated else (targets[-1] if targets else 0)
    alpha = steps * batch * (2 * longest + 1)
    scores = steps * batch * classes
    loss = loss_elements(p, batch)
    value = alpha + scores + 8 * batch
    backward = 2 * alpha + (1 + grads) * scores + 8 * batch
    elements = peak_elements(input_elements(spec, shapes), value, backward, grads, loss)
    if alpha > scores:
        name = "log_probs (the TxNx(2S+1) alpha table"
        name += ", S = every concatenated target: padded (N, S) targets bound it)" if concatenated else ")"
        largest, loc = alpha, ("targets",) if 2 * longest + 1 > classes else ("log_probs",)
    else:
        largest, name, loc = scores, "log_probs", ("log_probs",)
    return Cost(elements, loss + grad_elements(spec, shapes, grads), largest, name, loc)


def _ctc_terms(t: Mapping[str, Tensor], p: CtcParams, per_sample: Tensor) -> Terms:
    if p.reduction == "sum":
        return Terms(per_sample)
    # torch's mean: each sample's loss divided by its target length (at least 1), in the loss's dtype
    lengths = t["target_lengths"].to(per_sample.device, per_sample.dtype).clamp_min(1)
    return Terms(per_sample / lengths)


CTC_STATS = StatsRule(
    "mean: S = the sum over samples of loss / target length (at least 1), W = n = the number of samples. "
    "sum: S = the sum of the per-sample losses.",
    _ctc_terms,
)


@REGISTRY.loss(
    "ctc",
    tensors=(
        TensorArg(
            "log_probs", "(T, N, C) or (T, C): log-probabilities over time", grad=True, doc="log_softmax output."
        ),
        TensorArg(
            "targets",
            "(N, S) padded, (sum(target_lengths)) concatenated, or (S) unbatched: labels in [0, C), not blank",
            kind=TensorKind.INDEX,
            doc="Target label sequences.",
        ),
        TensorArg("input_lengths", "(N) or (): each in [0, T]", kind=TensorKind.INDEX, doc="Length of each input."),
        TensorArg("target_lengths", "(N) or ()", kind=TensorKind.INDEX, doc="Length of each target."),
    ),
    params=CtcParams,
    check=check_ctc,
    torch_ref="torch.nn.functional.ctc_loss",
    aliases=("CTCLoss",),
    cost=ctc_cost,
    stats=CTC_STATS,
)
def ctc(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor, p: CtcParams) -> Tensor:
    """Negative log likelihood of the targets summed over all alignments; `mean` divides by target lengths."""
    return F.ctc_loss(
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        blank=p.blank,
        reduction=p.reduction,
        zero_infinity=p.zero_infinity,
    )
