"""Classification losses: cross entropy and its relatives, binary, multi-class and multi-label margins."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from service.errors import InvalidRequest, ShapeMismatch
from service.losses import checks
from service.losses.registry import (
    CLASS_WEIGHTED,
    MEAN_OF_ELEMENTS_SUMMED_APART,
    REGISTRY,
    Cost,
    LossParams,
    LossSpec,
    Shapes,
    TensorArg,
    TensorKind,
    broadcast_result,
    elementwise,
    grad_elements,
    input_elements,
    loss_elements,
    peak_elements,
)

LOGITS = TensorArg(
    "input",
    "(C), (N, C) or (N, C, d1, ..., dK): unnormalized logits, class dimension 1 (0 when 1-D)",
    grad=True,
    doc="Logits.",
)
CLASS_WEIGHT = TensorArg("weight", "(C)", required=False, doc="A manual rescaling weight per class.")
CLASS_INDICES = TensorArg(
    "target",
    "(), (N) or (N, d1, ..., dK): class indices in [0, C)",
    kind=TensorKind.INDEX,
    doc="Integer class indices.",
)


def num_classes(input: Tensor) -> int:
    """C, the size of the class dimension of logits of shape (C) or (N, C, ...)."""
    return int(input.shape[0] if input.ndim == 1 else input.shape[1])


def class_sizes(shape: Sequence[int]) -> tuple[int, int]:
    """(scores, samples) of logits of shape (C), (N, C) or (N, C, d1, ..., dK): all their elements, and the
    elements without the class dimension (one loss each)."""
    samples = math.prod(shape[:1]) * math.prod(shape[2:]) if len(shape) > 1 else 1
    return math.prod(shape), samples


def check_class_indices(t: Mapping[str, Tensor], ignore_index: int | None) -> None:
    """Index targets for (C)/(N, C, ...) scores: shape, weight length, every index in [0, C)."""
    logits, target = t["input"], t["target"]
    checks.class_targets(logits, target, allow_probabilities=False)
    c = num_classes(logits)
    checks.class_weight(t.get("weight"), c)
    checks.class_indices_in_range(target, c, ignore_index)


class CrossEntropyParams(LossParams):
    ignore_index: int = Field(
        -100, description="Class-index targets equal to this are ignored and do not count towards the mean."
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, le=1.0, description="Amount of smoothing: targets become (1 - s) one-hot + s / C."
    )


def check_cross_entropy(t: Mapping[str, Tensor], p: CrossEntropyParams) -> Sequence[str]:
    """Target shape matches input; weight has C entries; class indices in [0, C) or ignore_index."""
    if checks.class_targets(t["input"], t["target"], allow_probabilities=True):
        checks.class_weight(t.get("weight"), num_classes(t["input"]))
    else:
        check_class_indices(t, p.ignore_index)
    return []


def cross_entropy_cost(spec: LossSpec, shapes: Shapes, p: CrossEntropyParams, grads: int) -> Cost:
    """log_softmax's copy of the logits (and, with label smoothing or class probabilities, the products with
    them) and a few tensors per sample. Measured, in logits-sized tensors: class indices 2 without gradients,
    3 with one (the gradient included); class probabilities 4 and 5 (two gradients)."""
    shape = tuple(shapes["input"])
    scores, samples = class_sizes(shape)
    probabilities = tuple(shapes.get("target", ())) == shape
    value = (5 if probabilities else 3) * scores + 4 * samples
    backward = (4 if probabilities else 3) * scores + grads * scores + 4 * samples
    loss = loss_elements(p, samples)
    elements = peak_elements(input_elements(spec, shapes), value, backward, grads, loss)
    return Cost(elements, loss + grad_elements(spec, shapes, grads), scores, "input (its log_softmax)", ("input",))


@REGISTRY.loss(
    "cross_entropy",
    tensors=(
        LOGITS,
        TensorArg(
            "target",
            "(), (N) or (N, d1, ..., dK) class indices in [0, C); or class probabilities of input's shape",
            kind=TensorKind.INDEX_OR_PROBABILITY,
            grad=True,
            doc="Integer class indices, or class probabilities (differentiable).",
            probability_shape=lambda t: t["input"].shape,
        ),
        CLASS_WEIGHT,
    ),
    params=CrossEntropyParams,
    check=check_cross_entropy,
    torch_ref="torch.nn.functional.cross_entropy",
    aliases=("CrossEntropyLoss", "cross_entropy_loss"),
    cost=cross_entropy_cost,
    stats=CLASS_WEIGHTED,
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


class NllParams(LossParams):
    ignore_index: int = Field(-100, description="Targets equal to this are ignored and do not count towards the mean.")


def check_nll(t: Mapping[str, Tensor], p: NllParams) -> Sequence[str]:
    """Index targets of input's shape without C, in [0, C) or ignore_index; weight (C)."""
    check_class_indices(t, p.ignore_index)
    return []


@REGISTRY.loss(
    "nll",
    tensors=(
        TensorArg(
            "input",
            "(C), (N, C) or (N, C, d1, ..., dK): log-probabilities, class dimension 1 (0 when 1-D)",
            grad=True,
            doc="Log-probabilities (e.g. log_softmax output).",
        ),
        CLASS_INDICES,
        CLASS_WEIGHT,
    ),
    params=NllParams,
    check=check_nll,
    torch_ref="torch.nn.functional.nll_loss",
    aliases=("NLLLoss",),
    stats=CLASS_WEIGHTED,
)
def nll(input: Tensor, target: Tensor, weight: Tensor | None, p: NllParams) -> Tensor:
    """Negative log likelihood: -input[target], weighted per class."""
    return F.nll_loss(input, target, weight=weight, ignore_index=p.ignore_index, reduction=p.reduction)


class ChunkingOptions(BaseModel):
    """torch.nn.LinearCrossEntropyOptions: compute in batch chunks, never materializing (N, C) logits."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    batch_chunk_size: int | None = Field(None, ge=1, description="Rows per chunk; null lets torch choose.")
    chunking_method: str | None = Field("auto", description="torch's chunking method name ('auto' picks one).")
    acc_policy: Literal["accurate", "balanced", "compact", "auto"] = Field("auto", description="Accumulation policy.")
    acc_dtype: Literal["float16", "bfloat16", "float32", "float64"] | None = Field(
        None, description="Accumulation dtype; null lets torch choose."
    )
    allow_retain_graph: bool = Field(False, description="Passed to torch as is.")

    def to_torch(self) -> torch.nn.LinearCrossEntropyOptions:
        acc_dtype = getattr(torch, self.acc_dtype) if self.acc_dtype else None
        return torch.nn.LinearCrossEntropyOptions(
            allow_retain_graph=self.allow_retain_graph,
            batch_chunk_size=self.batch_chunk_size,
            chunking_method=self.chunking_method,
            acc_policy=self.acc_policy,
            acc_dtype=acc_dtype,
        )


class LinearCrossEntropyParams(LossParams):
    ignore_index: int | None = Field(
        None, description="Ignored class-index target; null means -100 for indices (none allowed for probabilities)."
    )
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0, description="Amount of label smoothing.")
    options: ChunkingOptions | None = Field(None, description="Chunked computation; null is torch's reference path.")


def _logits_shape(t: Mapping[str, Tensor]) -> tuple[int, ...]:
    """(*batch, C, d1, ..., dK) for input (*batch, H) and linear_weight (C, d1, ..., dK, H)."""
    return (*t["input"].shape[:-1], *t["linear_weight"].shape[:-1])


def chunk_rows(options: ChunkingOptions, rows: int, features: int, classes: int) -> int:
    """Rows per chunk of the chunked path, as torch 2.13's `LinearCrossEntropyOptions._adjust` picks them.
    "auto" is taken as its pick for half precision on a CPU ("aspect_ratio"), the largest of its picks."""
    method, size = options.chunking_method, options.batch_chunk_size
    if method == "auto":
        method = None if size is not None else "aspect_ratio"
    chunk = rows if size is None else min(size, rows)
    name, _, factor = (method or "").partition(":")
    factor = factor or "1"
    if name == "aspect_ratio" and factor.isdigit() and int(factor) > 0 and features > 0 and classes > 0:
        target = -(-rows // -(-classes // features))  # ceil(rows / ceil(classes / features))
        chunk = min((1 << (target - 1).bit_length()) // int(factor), rows)
    return max(1, chunk)


def linear_cross_entropy_cost(spec: LossSpec, shapes: Shapes, p: LinearCrossEntropyParams, grads: int) -> Cost:
    """The logits input @ linear_weight.T, then cross_entropy's tensors on them (`cross_entropy_cost`) and,
    with gradients, the logits' gradient. The chunked path (options, without label smoothing, class
    probabilities or a K-dimensional weight, as torch takes it) holds two chunks of logits at most, and
    with gradients the input's and weight's gradient buffers (twice, for the scratch some policies keep)."""
    input, weight = tuple(shapes["input"]), tuple(shapes["linear_weight"])
    rows = math.prod(input[:-1])
    features = input[-1] if input else 0
    classes = weight[0] if weight else 0
    samples = rows * math.prod(weight[1:-1])
    logits_shape = (*input[:-1], *weight[:-1])
    logits = math.prod(logits_shape)
    probabilities = tuple(shapes.get("target", ())) == logits_shape
    loss = loss_elements(p, samples)
    gradients = grad_elements(spec, shapes, grads)
    if p.options is not None and p.label_smoothing == 0 and not probabilities and len(weight) <= 2:
        chunk = chunk_rows(p.options, rows, features, classes)
        block = chunk * classes
        value = 2 * block + 4 * rows
        backward = 2 * block + 2 * (rows * features + classes * features + classes) + 4 * rows
        largest, name = block, f"a {chunk}x{classes} chunk of the logits input @ linear_weight.T"
    else:
        value = (6 if probabilities else 4) * logits + 4 * samples
        backward = (6 if probabilities else 5) * logits + gradients + 4 * samples
        largest, name = logits, "the logits input @ linear_weight.T"
    elements = peak_elements(input_elements(spec, shapes), value, backward, grads, loss)
    loc = ("linear_weight",) if classes >= rows else ("input",)
    return Cost(elements, loss + gradients, largest, name, loc)


def check_linear_cross_entropy(t: Mapping[str, Tensor], p: LinearCrossEntropyParams) -> Sequence[str]:
    """Input (H) or (N, H), linear_weight (C, ..., H), bias (C, ...), then cross_entropy's target rules."""
    input, linear_weight, target = t["input"], t["linear_weight"], t["target"]
    checks.ndim_in("input", input, (1, 2), "(H) or (N, H)")
    if linear_weight.ndim < 2 or linear_weight.shape[-1] != input.shape[-1]:
        raise ShapeMismatch(
            f"linear_weight must have shape (C, ..., H) with H={input.shape[-1]} (input's last dimension), "
            f"got {checks.shape_of(linear_weight)}",
            loc=("linear_weight",),
        )
    if linear_weight.ndim > 2 and input.ndim == 1:
        raise ShapeMismatch("a K-dimensional linear_weight needs batched input (N, H)", loc=("input",))
    bias = t.get("linear_bias")
    if bias is not None and bias.shape != linear_weight.shape[:-1]:
        raise ShapeMismatch(
            f"linear_bias must have shape {list(linear_weight.shape[:-1])}, got {checks.shape_of(bias)}",
            loc=("linear_bias",),
        )
    logits = torch.empty(_logits_shape(t), device="meta")
    c = int(linear_weight.shape[0])
    if checks.class_targets(logits, target, allow_probabilities=True):
        if p.ignore_index is not None:
            raise InvalidRequest(
                "ignore_index cannot be given when target holds class probabilities", loc=("ignore_index",)
            )
    else:
        checks.class_indices_in_range(target, c, -100 if p.ignore_index is None else p.ignore_index)
    checks.class_weight(t.get("weight"), c)
    return _options_ignored(t, p)


def _options_ignored(t: Mapping[str, Tensor], p: LinearCrossEntropyParams) -> list[str]:
    """torch's warning (in its words) when `options` ask for the chunked path and torch takes its reference path
    instead: for label smoothing, class probabilities or a K-dimensional weight."""
    out_features = tuple(t["linear_weight"].shape[1:-1])
    target, bias = t["target"], t.get("linear_bias")
    if p.options is None or not (out_features or p.label_smoothing != 0.0 or target.dtype != torch.int64):
        return []
    return [
        "linear_cross_entropy: ``options`` ignored; chunked path needs reduction in {'mean','sum','none'}, "
        f"label_smoothing == 0, target.dtype == int64, out_features == (). Got reduction={p.reduction!r}, "
        f"label_smoothing={p.label_smoothing}, target.dtype={target.dtype}, out_features={out_features}, "
        f"tracing=False, linear_bias.shape={tuple(bias.shape) if bias is not None else None}."
    ]


@REGISTRY.loss(
    "linear_cross_entropy",
    tensors=(
        TensorArg("input", "(H) or (N, H): features (in_features H)", grad=True, doc="Inputs of the linear layer."),
        TensorArg("linear_weight", "(C, H) or (C, d1, ..., dK, H)", grad=True, doc="Weight of the linear layer."),
        TensorArg(
            "target",
            "class indices of shape (), (N) or (N, d1, ..., dK) in [0, C); or class probabilities of the logits' shape",
            kind=TensorKind.INDEX_OR_PROBABILITY,
            grad=True,
            doc="Integer class indices, or class probabilities (differentiable).",
            probability_shape=_logits_shape,
        ),
        TensorArg("linear_bias", "(C) or (C, d1, ..., dK)", grad=True, required=False, doc="Bias of the linear layer."),
        CLASS_WEIGHT,
    ),
    params=LinearCrossEntropyParams,
    check=check_linear_cross_entropy,
    torch_ref="torch.nn.functional.linear_cross_entropy",
    aliases=("LinearCrossEntropyLoss",),
    cost=linear_cross_entropy_cost,
    stats=CLASS_WEIGHTED,
)
def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    linear_bias: Tensor | None,
    weight: Tensor | None,
    p: LinearCrossEntropyParams,
) -> Tensor:
    """Cross entropy of the logits input @ linear_weight.T + linear_bias, optionally in chunks."""
    return F.linear_cross_entropy(
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        weight=weight,
        reduction=p.reduction,
        ignore_index=p.ignore_index,
        label_smoothing=p.label_smoothing,
        options=p.options.to_torch() if p.options else None,
    )


def check_binary(t: Mapping[str, Tensor], p: LossParams) -> Sequence[str]:
    """Target of input's shape; weight (and pos_weight) broadcastable to it."""
    checks.same_shape("target", t["target"], "input", t["input"])
    for name in ("weight", "pos_weight"):
        if t.get(name) is not None:
            checks.broadcastable(name, t[name], "input", t["input"])
    return []


def check_binary_cross_entropy(t: Mapping[str, Tensor], p: LossParams) -> Sequence[str]:
    """Probabilities in [0, 1] for both input and target (a CUDA kernel asserts on input otherwise)."""
    check_binary(t, p)
    checks.unit_interval("input", t["input"])
    checks.unit_interval("target", t["target"])
    return []


BINARY_WEIGHT = TensorArg(
    "weight", "broadcastable to input", required=False, broadcast=True, doc="Rescaling weight per element."
)


@REGISTRY.loss(
    "binary_cross_entropy",
    tensors=(
        TensorArg("input", "(*): probabilities in [0, 1]", grad=True, doc="Probabilities (e.g. sigmoid output)."),
        TensorArg("target", "(*), same shape as input, in [0, 1]", grad=True, doc="Target probabilities."),
        BINARY_WEIGHT,
    ),
    check=check_binary_cross_entropy,
    torch_ref="torch.nn.functional.binary_cross_entropy",
    aliases=("BCELoss", "bce", "binary_cross_entropy_loss"),
    cost=elementwise(value=2, backward=3),  # measured 1 and 1
)
def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None, p: LossParams) -> Tensor:
    """Binary cross entropy between probabilities: -(t log x + (1 - t) log(1 - x)), log clamped at -100."""
    return F.binary_cross_entropy(input, target, weight=weight, reduction=p.reduction)


@REGISTRY.loss(
    "binary_cross_entropy_with_logits",
    tensors=(
        TensorArg("input", "(*): logits", grad=True, doc="Logits."),
        TensorArg("target", "(*), same shape as input", grad=True, doc="Target probabilities."),
        BINARY_WEIGHT,
        TensorArg(
            "pos_weight",
            "broadcastable to input, usually (C) for input (N, C)",
            required=False,
            broadcast=True,
            doc="Weight of positive examples, per class.",
        ),
    ),
    check=check_binary,
    torch_ref="torch.nn.functional.binary_cross_entropy_with_logits",
    aliases=("BCEWithLogitsLoss", "bce_with_logits"),
    cost=elementwise(value=4, backward=4),  # max_val, log_weight (pos_weight), the loss: 3 and 3 measured
)
def binary_cross_entropy_with_logits(
    input: Tensor, target: Tensor, weight: Tensor | None, pos_weight: Tensor | None, p: LossParams
) -> Tensor:
    """Sigmoid and binary cross entropy in one numerically stable step."""
    return F.binary_cross_entropy_with_logits(
        input, target, weight=weight, reduction=p.reduction, pos_weight=pos_weight
    )


@REGISTRY.loss(
    "soft_margin",
    tensors=(
        TensorArg("input", "(*)", grad=True, doc="Scores."),
        TensorArg("target", "(*), same shape as input, values 1 or -1", broadcast=True, doc="Labels, 1 or -1."),
    ),
    check=checks.sign_target,
    torch_ref="torch.nn.functional.soft_margin_loss",
    aliases=("SoftMarginLoss",),
    cost=elementwise(value=2, backward=4),  # backward: exp(-target * input), its quotient: 1 and 3 measured
)
def soft_margin(input: Tensor, target: Tensor, p: LossParams) -> Tensor:
    """Two-class logistic loss: log(1 + exp(-target * input))."""
    return F.soft_margin_loss(input, target, reduction=p.reduction)


def check_multilabel_margin(t: Mapping[str, Tensor], p: LossParams) -> Sequence[str]:
    """Target of input's shape; in each row, the indices before the first -1 lie in [0, C)."""
    input, target = t["input"], t["target"]
    checks.ndim_in("input", input, (1, 2), "(C) or (N, C)")
    checks.same_shape("target", target, "input", input)
    before_padding = (target == -1).cumsum(-1) == 0
    checks.class_indices_in_range(target, int(input.shape[-1]), None, where=before_padding)
    return []


def multilabel_margin_cost(spec: LossSpec, shapes: Shapes, p: LossParams, grads: int) -> Cost:
    """The check's masks over target (its int64 cumsum among them), then torch's is_target of input's size:
    measured 4.25 input-sized tensors with or without the gradient. Time is another matter: torch's kernel
    compares every target class of a row with every class, N x C x C steps (C=65,536 took 16 s here), and
    as many again for the gradient."""
    shape = tuple(shapes["input"])
    scores, samples = math.prod(shape), shape[0] if len(shape) == 2 else 1  # (C) or (N, C)
    classes = shape[-1] if shape else 1
    loss = loss_elements(p, samples)
    value = 5 * scores + 4 * samples
    elements = peak_elements(input_elements(spec, shapes), value, value + grads * scores, grads, loss)
    operations = scores * classes * (2 if grads else 1)
    output = loss + grad_elements(spec, shapes, grads)
    return Cost(elements, output, scores, "input", ("input",), operations=operations)


@REGISTRY.loss(
    "multilabel_margin",
    tensors=(
        TensorArg("input", "(C) or (N, C)", grad=True, doc="Scores."),
        TensorArg(
            "target",
            "same shape as input: class indices in [0, C), padded with -1 (entries after the first -1 are ignored)",
            kind=TensorKind.INDEX,
            doc="The target classes of each sample, then -1 padding.",
        ),
    ),
    check=check_multilabel_margin,
    torch_ref="torch.nn.functional.multilabel_margin_loss",
    aliases=("MultiLabelMarginLoss",),
    cost=multilabel_margin_cost,
    stats=MEAN_OF_ELEMENTS_SUMMED_APART,
)
def multilabel_margin(input: Tensor, target: Tensor, p: LossParams) -> Tensor:
    """Multi-class multi-label hinge loss between scores and the set of target classes."""
    if _empty_batch(input, p):
        return _reduce(F.multilabel_margin_loss(input, target, reduction="none"), p)
    return F.multilabel_margin_loss(input, target, reduction=p.reduction)


def _empty_batch(input: Tensor, p: LossParams) -> bool:
    """An (N, C) input of no samples to be reduced: torch's multi_margin and multilabel_margin kernels then leave
    their result uninitialized (whatever the memory held: a heap address, say)."""
    return input.ndim == 2 and input.shape[0] == 0 and p.reduction != "none"


def _reduce(per_element: Tensor, p: LossParams) -> Tensor:
    """torch's reduction of an empty per-element result, as of every other loss: 0 for the sum, NaN for the mean."""
    return per_element.sum() if p.reduction == "sum" else per_element.mean()


def check_multilabel_soft_margin(t: Mapping[str, Tensor], p: LossParams) -> Sequence[str]:
    """Input (N, C) or (C), target of its shape, weight broadcastable (usually (C))."""
    checks.same_shape("target", t["target"], "input", t["input"])
    if t.get("weight") is not None:
        checks.broadcastable("weight", t["weight"], "input", t["input"])
    return []


def multilabel_soft_margin_cost(spec: LossSpec, shapes: Shapes, p: LossParams, grads: int) -> Cost:
    """Two logsigmoids, their products with target and 1 - target, the weight's product, the class mean:
    measured 5 tensors of the broadcast size without gradients, 7 with one (the gradient included)."""
    result, widest, name = broadcast_result(spec, shapes)
    shape = tuple(shapes["input"])
    samples = result // shape[-1] if len(shape) > 1 and shape[-1] else 1
    loss = loss_elements(p, samples)
    value = 6 * result + 4 * samples
    backward = (7 + grads) * result + 4 * samples
    elements = peak_elements(input_elements(spec, shapes), value, backward, grads, loss)
    return Cost(elements, loss + grad_elements(spec, shapes, grads), result, name, (widest,))


@REGISTRY.loss(
    "multilabel_soft_margin",
    tensors=(
        TensorArg("input", "(N, C) or (C)", grad=True, doc="Logits per class."),
        TensorArg("target", "same shape as input, 1 (class present) or 0", doc="Labels, 0 or 1 per class."),
        TensorArg("weight", "(C), broadcastable to input", required=False, broadcast=True, doc="Weight per class."),
    ),
    check=check_multilabel_soft_margin,
    torch_ref="torch.nn.functional.multilabel_soft_margin_loss",
    aliases=("MultiLabelSoftMarginLoss",),
    cost=multilabel_soft_margin_cost,
)
def multilabel_soft_margin(input: Tensor, target: Tensor, weight: Tensor | None, p: LossParams) -> Tensor:
    """Multi-label one-versus-all logistic loss, averaged over classes."""
    return F.multilabel_soft_margin_loss(input, target, weight=weight, reduction=p.reduction)


class MultiMarginParams(LossParams):
    p: Literal[1, 2] = Field(1, description="Exponent of the hinge: 1 or 2.")
    margin: float = Field(1.0, description="Margin of the hinge.")


def check_multi_margin(t: Mapping[str, Tensor], p: MultiMarginParams) -> Sequence[str]:
    """Input (C) or (N, C), target () or (N) class indices in [0, C), weight (C)."""
    checks.ndim_in("input", t["input"], (1, 2), "(C) or (N, C)")
    check_class_indices(t, None)
    return []


@REGISTRY.loss(
    "multi_margin",
    tensors=(
        TensorArg("input", "(C) or (N, C)", grad=True, doc="Scores."),
        TensorArg("target", "() or (N): class indices in [0, C)", kind=TensorKind.INDEX, doc="Integer class indices."),
        CLASS_WEIGHT,
    ),
    params=MultiMarginParams,
    check=check_multi_margin,
    torch_ref="torch.nn.functional.multi_margin_loss",
    aliases=("MultiMarginLoss",),
    stats=MEAN_OF_ELEMENTS_SUMMED_APART,
)
def multi_margin(input: Tensor, target: Tensor, weight: Tensor | None, p: MultiMarginParams) -> Tensor:
    """Multi-class hinge loss: sum over wrong classes of max(0, margin - x[target] + x[i])^p / C."""
    if _empty_batch(input, p):
        return _reduce(F.multi_margin_loss(input, target, p=p.p, margin=p.margin, weight=weight, reduction="none"), p)
    return F.multi_margin_loss(input, target, p=p.p, margin=p.margin, weight=weight, reduction=p.reduction)
