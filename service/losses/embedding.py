"""Ranking and embedding losses over pairs and triplets: margin_ranking, hinge_embedding,
cosine_embedding, triplet_margin, triplet_margin_with_distance."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

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
    TensorArg,
    broadcast_result,
    elementwise,
    grad_elements,
    input_elements,
    loss_elements,
    peak_elements,
)

SIGNS = "values 1 or -1"


class MarginRankingParams(LossParams):
    margin: float = Field(0.0, description="Margin: how far apart the pair must be before the loss is 0.")


def check_margin_ranking(t: Mapping[str, Tensor], p: MarginRankingParams) -> Sequence[str]:
    """input1, input2 and target of one dimensionality, broadcastable, target +1/-1."""
    for name in ("input2", "target"):
        checks.same_ndim_broadcastable(name, t[name], "input1", t["input1"])
    checks.signs("target", t["target"])
    return []


@REGISTRY.loss(
    "margin_ranking",
    tensors=(
        TensorArg("input1", "(N) or ()", grad=True, doc="Scores of the first items."),
        TensorArg("input2", "same shape as input1", grad=True, broadcast=True, doc="Scores of the second items."),
        TensorArg(
            "target", f"same shape as input1, {SIGNS}", broadcast=True, doc="1: input1 should rank higher; -1: input2."
        ),
    ),
    params=MarginRankingParams,
    check=check_margin_ranking,
    torch_ref="torch.nn.functional.margin_ranking_loss",
    aliases=("MarginRankingLoss",),
    cost=elementwise(value=5, backward=4),  # the arguments expanded to one shape, the loss: 4 and 2.25 measured
)
def margin_ranking(input1: Tensor, input2: Tensor, target: Tensor, p: MarginRankingParams) -> Tensor:
    """max(0, -target * (input1 - input2) + margin)."""
    return F.margin_ranking_loss(input1, input2, target, margin=p.margin, reduction=p.reduction)


class HingeEmbeddingParams(LossParams):
    margin: float = Field(1.0, description="Margin for the dissimilar (-1) pairs.")


@REGISTRY.loss(
    "hinge_embedding",
    tensors=(
        TensorArg("input", "(*): distances", grad=True, doc="Distances (e.g. L1 pairwise distance)."),
        TensorArg(
            "target", f"same shape as input, {SIGNS}", broadcast=True, doc="1: similar pair; -1: dissimilar pair."
        ),
    ),
    params=HingeEmbeddingParams,
    check=checks.sign_target,
    torch_ref="torch.nn.functional.hinge_embedding_loss",
    aliases=("HingeEmbeddingLoss",),
    cost=elementwise(value=6, backward=7),  # zeros, margin - input, two where()s, their sum: 5 and 5.5 measured
)
def hinge_embedding(input: Tensor, target: Tensor, p: HingeEmbeddingParams) -> Tensor:
    """input where target is 1, max(0, margin - input) where target is -1."""
    return F.hinge_embedding_loss(input, target, margin=p.margin, reduction=p.reduction)


class CosineEmbeddingParams(LossParams):
    margin: float = Field(
        0.0, ge=-1.0, le=1.0, description="Margin for dissimilar pairs, in [-1, 1] (0 to 0.5 suggested)."
    )


def check_cosine_embedding(t: Mapping[str, Tensor], p: CosineEmbeddingParams) -> Sequence[str]:
    """input1, input2 of one shape (N, D) or (D); target (N) or () of +1/-1."""
    input1, input2, target = t["input1"], t["input2"], t["target"]
    checks.ndim_in("input1", input1, (1, 2), "(N, D) or (D)")
    checks.same_shape("input2", input2, "input1", input1)
    if target.shape != input1.shape[:-1]:
        raise ShapeMismatch(
            f"target must have shape {list(input1.shape[:-1])} for inputs of shape {checks.shape_of(input1)}, "
            f"got {checks.shape_of(target)}",
            loc=("target",),
        )
    checks.signs("target", target)
    return []


def rows_cost(
    spec: LossSpec, shapes: Shapes, p: LossParams, grads: int, *, value: int, backward: int, per_row: int
) -> Cost:
    """A loss over the last dimension of its first argument broadcast with the `TensorArg.broadcast` ones, one
    loss per row: `value` tensors of the broadcast size and `per_row` per row held at once without
    gradients; `backward` and one per gradient of the broadcast size, and `per_row` per row, with them."""
    result, widest, name = broadcast_result(spec, shapes)
    rowwise = [spec.tensors[0], *(arg for arg in spec.tensors if arg.broadcast)]
    width = max((shape[-1] for arg in rowwise if len(shape := shapes.get(arg.name, ()))), default=1)
    rows = result // width if width else 0
    loss = loss_elements(p, rows)
    elements = peak_elements(
        input_elements(spec, shapes),
        value * result + per_row * rows,
        (backward + grads) * result + per_row * rows,
        grads,
        loss,
    )
    return Cost(elements, loss + grad_elements(spec, shapes, grads), result, name, (widest,))


def cosine_embedding_cost(spec: LossSpec, shapes: Shapes, p: CosineEmbeddingParams, grads: int) -> Cost:
    """The products input1 * input2, input1², input2² one at a time, then a dozen tensors per pair (norms,
    cosine, where()s). Measured: 1 input-sized tensor and 7 per pair without gradients; 4 with the two
    gradients (included) and 3 per pair."""
    return rows_cost(spec, shapes, p, grads, value=2, backward=3, per_row=12)


@REGISTRY.loss(
    "cosine_embedding",
    tensors=(
        TensorArg("input1", "(N, D) or (D)", grad=True, doc="First embeddings."),
        TensorArg("input2", "same shape as input1", grad=True, doc="Second embeddings."),
        TensorArg("target", f"(N) or (), {SIGNS}", doc="1: similar pair; -1: dissimilar pair."),
    ),
    params=CosineEmbeddingParams,
    check=check_cosine_embedding,
    torch_ref="torch.nn.functional.cosine_embedding_loss",
    aliases=("CosineEmbeddingLoss",),
    cost=cosine_embedding_cost,
)
def cosine_embedding(input1: Tensor, input2: Tensor, target: Tensor, p: CosineEmbeddingParams) -> Tensor:
    """1 - cos(input1, input2) for similar pairs, max(0, cos(input1, input2) - margin) for dissimilar ones."""
    return F.cosine_embedding_loss(input1, input2, target, margin=p.margin, reduction=p.reduction)


TRIPLET = (
    TensorArg("anchor", "(N, D) or (D)", grad=True, doc="Anchor embeddings."),
    TensorArg(
        "positive", "same shape as anchor", grad=True, broadcast=True, doc="Embeddings of the same class as the anchor."
    ),
    TensorArg("negative", "same shape as anchor", grad=True, broadcast=True, doc="Embeddings of another class."),
)


def check_triplet(t: Mapping[str, Tensor], p: LossParams) -> Sequence[str]:
    """anchor, positive and negative of one dimensionality, broadcastable."""
    for name in ("positive", "negative"):
        checks.same_ndim_broadcastable(name, t[name], "anchor", t["anchor"])
    return []


class TripletMarginParams(LossParams):
    margin: float = Field(1.0, gt=0, description="Required gap between the positive and negative distances.")
    p: float = Field(2.0, ge=0, description="Norm degree of the pairwise distance.")
    eps: float = Field(1e-6, ge=0, description="Added to the differences, for numerical stability.")
    swap: bool = Field(False, description="Use the positive-negative distance when smaller (Balntas et al.).")


def triplet_margin_cost(spec: LossSpec, shapes: Shapes, p: TripletMarginParams, grads: int) -> Cost:
    """Each pairwise distance builds the difference (and + eps) at the broadcast size; with gradients each
    keeps one for the norm's backward, which builds its own (more for p other than 1 and 2). Measured with
    three gradients: 2 tensors of the broadcast size, 4.3 with p=0.5 and swap, and a few per row."""
    return rows_cost(spec, shapes, p, grads, value=3, backward=5, per_row=8)


@REGISTRY.loss(
    "triplet_margin",
    tensors=TRIPLET,
    params=TripletMarginParams,
    check=check_triplet,
    torch_ref="torch.nn.functional.triplet_margin_loss",
    aliases=("TripletMarginLoss",),
    cost=triplet_margin_cost,
)
def triplet_margin(anchor: Tensor, positive: Tensor, negative: Tensor, p: TripletMarginParams) -> Tensor:
    """max(d(a, p) - d(a, n) + margin, 0) with d the p-norm pairwise distance."""
    return F.triplet_margin_loss(
        anchor, positive, negative, margin=p.margin, p=p.p, eps=p.eps, swap=p.swap, reduction=p.reduction
    )


def _cosine_distance(x: Tensor, y: Tensor) -> Tensor:
    return 1.0 - F.cosine_similarity(x, y)


DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "pairwise_distance": F.pairwise_distance,
    "cosine": _cosine_distance,
}
"""The distance functions a client may name (no user code runs): torch's default, and 1 - cosine similarity."""


class TripletWithDistanceParams(LossParams):
    distance_function: Literal["pairwise_distance", "cosine"] | None = Field(
        None, description="pairwise_distance (torch's default when null) or cosine (1 - cosine similarity)."
    )
    margin: float = Field(1.0, gt=0, description="Required gap between the positive and negative distances.")
    swap: bool = Field(False, description="Use the positive-negative distance when smaller (Balntas et al.).")


def triplet_with_distance_cost(spec: LossSpec, shapes: Shapes, p: TripletWithDistanceParams, grads: int) -> Cost:
    """pairwise_distance as in `triplet_margin_cost`. cosine: each similarity divides both arguments by their
    norms and multiplies them, at the broadcast size; with gradients it keeps both quotients. Measured:
    3 tensors of the broadcast size without gradients; 5, or 7 with swap's third distance, with them."""
    if p.distance_function == "cosine":
        return rows_cost(spec, shapes, p, grads, value=4, backward=9 if p.swap else 7, per_row=8)
    return rows_cost(spec, shapes, p, grads, value=3, backward=4, per_row=8)


@REGISTRY.loss(
    "triplet_margin_with_distance",
    tensors=TRIPLET,
    params=TripletWithDistanceParams,
    check=check_triplet,
    torch_ref="torch.nn.functional.triplet_margin_with_distance_loss",
    aliases=("TripletMarginWithDistanceLoss",),
    cost=triplet_with_distance_cost,
)
def triplet_margin_with_distance(
    anchor: Tensor, positive: Tensor, negative: Tensor, p: TripletWithDistanceParams
) -> Tensor:
    """max(d(a, p) - d(a, n) + margin, 0) with a named distance function d."""
    return F.triplet_margin_with_distance_loss(
        anchor,
        positive,
        negative,
        distance_function=DISTANCES[p.distance_function] if p.distance_function else None,
        margin=p.margin,
        swap=p.swap,
        reduction=p.reduction,
    )
