"""The loss registry: one declaration per loss, from which the catalog, request models and tests derive.

A loss is declared once with `@REGISTRY.loss(...)` on its compute function. The declaration holds
everything the rest of the service needs to know: torch's argument names, each tensor's kind and
shape rule, which arguments are differentiable, the pydantic parameter model (its fields are torch's
keyword arguments, with torch's defaults and bounds), an optional pre-validation `check` that runs
on the CPU copies of the tensors before torch sees them, a cost model that predicts, from shapes
alone, what the call will build (the service schedules and bounds work by it), and the rule by which
its mean and sum decompose into sufficient statistics that add up over batches (`StatsRule`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from service.errors import UnknownLoss, close_matches

Reduction = Literal["none", "mean", "sum"]


class TensorKind(StrEnum):
    """What numbers a tensor argument holds, which decides how untyped JSON numbers are read."""

    FLOAT = "float"
    """Real values; read as the dtype of the first float argument that declares one, else float32."""
    INDEX = "index"
    """Integers (class indices, lengths), read as int64 (int32/uint8/... are converted, as torch wants int64)."""
    INDEX_OR_PROBABILITY = "index_or_probability"
    """Class indices, or class probabilities (then read like FLOAT): see `TensorArg.probability_shape`."""


@dataclass(frozen=True)
class TensorArg:
    """One tensor argument of a loss, named exactly as torch names it."""

    name: str
    shape: str = "(*)"
    """The shape rule in the words of torch's `Shape:` docs."""
    kind: TensorKind = TensorKind.FLOAT
    grad: bool = False
    """Whether torch differentiates the loss with respect to this argument."""
    required: bool = True
    broadcast: bool = False
    """Broadcast against the loss's first tensor argument, as torch's elementwise operations do."""
    doc: str = ""
    probability_shape: Callable[[Mapping[str, Tensor]], Sequence[int]] | None = None
    """INDEX_OR_PROBABILITY only: the shape class probabilities have, from the arguments read before this
    one. Untyped numbers of exactly that shape are probabilities; any other shape holds class indices."""


class LossParams(BaseModel):
    """Base of every loss's parameter model: torch's keyword arguments, `reduction` first."""

    # strict: JSON types as declared (no "0.5" for a float, no 0 for false); a float still takes an integer
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    reduction: Reduction = Field("mean", description="How per-element losses are reduced: none, mean or sum.")

    @field_validator("*", mode="after")
    @classmethod
    def _fits_int64(cls, value: Any) -> Any:
        """torch takes integer arguments as int64 (`ignore_index`, `blank`, `p`): a larger one would be refused by
        torch's argument parser ("Overflow when unpacking long long"), without naming the parameter."""
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise ValueError(f"{value} does not fit in 64 bits (torch takes integer parameters as int64)")
        return value


Check = Callable[[Mapping[str, Tensor], Any], Sequence[str]]
"""Pre-validation: raises a `LossdError` naming the offending argument, returns warnings to report."""

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class Cost:
    """What one call will build, predicted from the shapes of its tensors before torch runs."""

    elements: int
    """Tensor elements the call holds at its peak: inputs, intermediates, the loss and gradients."""
    output: int = 1
    """Elements the call returns: the loss (one, unless `reduction="none"`) and the gradients."""
    largest: int = 0
    """Elements of the largest single tensor torch builds (a broadcast result, say)."""
    largest_name: str = ""
    """What that tensor is, in words (for the 413 that refuses it)."""
    largest_loc: tuple[str, ...] = ()
    """The argument that makes it so large."""
    operations: int = 0
    """Elementary steps the call takes, for a loss whose time grows faster than its memory
    (multilabel_margin: N x C x C); 0: about one per element held. Schedules the call, with `elements`."""

    @property
    def effort(self) -> int:
        """The larger of the elements held and the operations taken: what decides where the call runs."""
        return max(self.elements, self.operations)


CostModel = Callable[["LossSpec", Shapes, Any, int], Cost]
"""`(spec, shapes of the given tensors, parameters, number of gradients asked for) -> Cost`."""


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape `a` and `b` broadcast to, as torch's rules give it, or None when they do not broadcast.
    (`torch.broadcast_shapes` says the same at twenty times the cost.)"""
    if len(a) < len(b):
        a, b = b, a
    b = (1,) * (len(a) - len(b)) + b
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return tuple(out)


def broadcast_result(spec: LossSpec, shapes: Shapes) -> tuple[int, str, str]:
    """The loss's first argument broadcast with each `TensorArg.broadcast` one: its elements, the argument
    that widens it most, and the result in words. Shapes that do not broadcast are skipped: the check
    refuses them before torch runs."""
    first = spec.tensors[0].name
    out = tuple(shapes.get(first, ()))
    widest = first
    for arg in spec.tensors:
        if arg.broadcast and arg.name in shapes:
            wider = broadcast_shapes(out, tuple(shapes[arg.name]))
            if wider is None:
                continue
            if math.prod(wider) > math.prod(out):
                widest = arg.name
            out = wider
    return math.prod(out), widest, first if widest == first else f"{widest} broadcast with {first}"


def input_elements(spec: LossSpec, shapes: Shapes) -> int:
    """The given arguments' elements, in units of the floating dtype the work bytes are counted in: an int64
    index (`TensorKind.INDEX`, 8 bytes) counts as two (exact for float32, one too many for float64)."""
    total = 0
    for arg in spec.tensors:
        shape = shapes.get(arg.name)
        if shape is not None:
            total += math.prod(shape) * (2 if arg.kind is TensorKind.INDEX else 1)
    return total


def grad_elements(spec: LossSpec, shapes: Shapes, grads: int) -> int:
    """Elements of `grads` gradients: those of the largest differentiable arguments given (which ones the
    client asked for, the model is not told)."""
    if not grads:
        return 0
    sizes = sorted((math.prod(shapes[a.name]) for a in spec.tensors if a.grad and a.name in shapes), reverse=True)
    return sum(sizes[:grads])


def peak_elements(inputs: int, value: int, backward: int, grads: int, loss: int) -> int:
    """Elements held at a call's peak: the inputs, and what the loss holds at once without gradients
    (`value`) or, when gradients are asked for, what the forward pass saves for the backward pass plus what
    the backward pass holds at once, the gradients included (`backward`). A loss of more than one element
    also has the upstream gradient `ones_like(loss)` the service differentiates with."""
    if not grads:
        return inputs + value
    return inputs + backward + (loss if loss > 1 else 0)


def elementwise_cost(spec: LossSpec, shapes: Shapes, params: Any, grads: int, *, value: int, backward: int) -> Cost:
    """A loss built of elementwise operations over the broadcast result R (`broadcast_result`): torch holds
    `value` tensors of R's size at once computing it, and `backward` of them, plus one per gradient (the
    backward pass builds each at R's size before summing it down to its argument's), computing gradients."""
    result, widest, name = broadcast_result(spec, shapes)
    loss = loss_elements(params, result)
    elements = peak_elements(input_elements(spec, shapes), value * result, (backward + grads) * result, grads, loss)
    return Cost(elements, loss + grad_elements(spec, shapes, grads), result, name, (widest,))


def elementwise(value: int, backward: int) -> CostModel:
    """`elementwise_cost` with these counts, as a loss's `cost`: `value` tensors of the broadcast result's
    size held at once without gradients, `backward` with them (besides one per gradient). A declaration
    notes the counts tests/unit/test_cost_bounds.py measured ("measured 2 and 3") and adds a margin."""

    def model(spec: LossSpec, shapes: Shapes, params: Any, grads: int) -> Cost:
        return elementwise_cost(spec, shapes, params, grads, value=value, backward=backward)

    return model


def broadcast_cost(spec: LossSpec, shapes: Shapes, params: Any, grads: int) -> Cost:
    """The default model: the arguments, two tensors of their broadcast result's size (`TensorArg.broadcast`),
    and with gradients two more and one per gradient. Losses that build more declare their own `cost`
    (tests/unit/test_cost_bounds.py measures every loss against its model)."""
    return elementwise_cost(spec, shapes, params, grads, value=2, backward=2)


@dataclass(frozen=True)
class Terms:
    """A loss's terms as its reduction combines them: `sum` gives S = values.sum() and a mean gives
    S / W, where W = weight.sum() (`weight` None: every counted term weighs 1). `counted` marks the terms
    that entered (None: all); ignored targets are left out. Tensors whose dim 0 is the batch dimension of
    the per-element loss (for groups); `weight` may have another shape (per sample, say) with that dim 0."""

    values: Tensor
    weight: Tensor | None = None
    counted: Tensor | None = None


@dataclass(frozen=True)
class StatsRule:
    """How a loss's `mean` and `sum` decompose into sufficient statistics (sum S, weight W, count n) that add
    up over batches: `terms(tensors, params, per_element)` gets the loss's tensors, its parameters (with the
    reduction asked for) and its `reduction="none"` result."""

    doc: str
    terms: Callable[[Mapping[str, Tensor], Any, Tensor], Terms]
    nan_without_weight: bool = False
    """torch's mean is NaN whenever W is 0 (cross_entropy's label smoothing adds to S what is still divided
    by the weight of the targets: 0 / 0 in torch's terms)."""
    reduces_elements: Callable[[Mapping[str, Tensor], Any], bool] = lambda tensors, params: False
    """Whether torch's `mean` and `sum` of this call are the mean and sum of its `reduction="none"` result, bit
    for bit (torch reduces the per-element losses it computed): then one call gives both the loss and its
    statistics. tests/unit/test_stats.py holds every loss that says so to it."""


@dataclass
class Totals:
    """Sums of one loss's sufficient statistics: float64 `sum` and `weight`, the `count` of terms."""

    sum: float = 0.0
    weight: float = 0.0
    count: int = 0

    def add(self, other: Totals) -> None:
        self.sum += other.sum
        self.weight += other.weight
        self.count += other.count

    def loss(self, reduction: str, rule: StatsRule | None = None) -> float:
        """The dataset's loss: S for `sum`, S / W for a mean. A zero W divides as torch does: as IEEE floats do
        (NaN for 0 / 0), or NaN whatever S is for a rule that says so."""
        if reduction == "sum":
            return self.sum
        if self.weight != 0:
            return self.sum / self.weight
        if self.sum == 0 or math.isnan(self.sum) or (rule is not None and rule.nan_without_weight):
            return math.nan
        return math.copysign(math.inf, self.sum)


@dataclass
class LossTotals:
    """One loss's totals, over everything and per group label (labels are decimal strings)."""

    total: Totals = field(default_factory=Totals)
    groups: dict[str, Totals] = field(default_factory=dict)

    def add(self, other: LossTotals) -> None:
        self.total.add(other.total)
        for label, totals in other.groups.items():
            self.groups.setdefault(label, Totals()).add(totals)


MEAN_OF_ELEMENTS = StatsRule(
    "S = the sum of the per-element losses (reduction 'none'), W = n = their number.",
    lambda tensors, params, per_element: Terms(per_element),
    reduces_elements=lambda tensors, params: True,
)
"""The rule of a loss whose mean is the plain mean of its `reduction="none"` result."""

MEAN_OF_ELEMENTS_SUMMED_APART = replace(MEAN_OF_ELEMENTS, reduces_elements=lambda tensors, params: False)
"""`MEAN_OF_ELEMENTS` for a loss whose torch kernel sums its terms in a loop of its own (multi_margin,
multilabel_margin): another order than a vectorized sum of its `reduction="none"` result, so the loss itself
comes from torch's own call (a rounding apart from about 40 terms)."""


def _class_weighted(tensors: Mapping[str, Tensor], params: Any, per_element: Tensor) -> Terms:
    target, weight = tensors["target"], tensors.get("weight")
    if target.is_floating_point():  # class probabilities: a plain mean over the samples
        return Terms(per_element)
    counted = target != (-100 if params.ignore_index is None else params.ignore_index)  # None: -100, as torch
    if weight is None:
        return Terms(per_element, counted=counted)
    return Terms(per_element, weight[torch.where(counted, target, 0)] * counted, counted)


CLASS_WEIGHTED = StatsRule(
    "With class indices: S = the sum of the per-element losses, W = the summed class weight of the targets "
    "not ignored (their number without weight), n = their number. With class probabilities: a plain mean.",
    _class_weighted,
    nan_without_weight=True,
)
"""cross_entropy, nll_loss and linear_cross_entropy: torch's `mean` divides by the weight of the counted targets."""


def loss_elements(params: Any, elements: int) -> int:
    """Elements of the loss a call returns: `elements` per-element losses for `reduction="none"`, else one."""
    return elements if getattr(params, "reduction", "mean") == "none" else 1


@dataclass(frozen=True)
class LossSpec:
    """Everything known about one loss. Built by `Registry.loss`, never by hand."""

    name: str
    summary: str
    description: str
    torch_ref: str
    tensors: tuple[TensorArg, ...]
    params: type[LossParams]
    fn: Callable[..., Tensor]
    check: Check | None = None
    aliases: tuple[str, ...] = ()
    cost_model: CostModel = broadcast_cost
    stats: StatsRule = MEAN_OF_ELEMENTS
    legacy_reduction: bool = False
    """torch's function takes the deprecated `size_average` and `reduce` (`takes_legacy_reduction`): a request
    sending either is told the `reduction` they stand for (`legacy_reduction`)."""

    def cost(self, shapes: Shapes, params: Any, grads: int = 0) -> Cost:
        """What a call with tensors of `shapes` will build (see `CostModel`)."""
        return self.cost_model(self, shapes, params, grads)

    @property
    def differentiable(self) -> tuple[str, ...]:
        """Names of the tensor arguments torch can differentiate the loss with respect to."""
        return tuple(t.name for t in self.tensors if t.grad)

    @property
    def reductions(self) -> tuple[str, ...]:
        """The reductions this loss accepts, from its parameter model."""
        return tuple(get_args(self.params.model_fields["reduction"].annotation))

    def tensor(self, name: str) -> TensorArg:
        """The declaration of tensor argument `name` (KeyError if it has none)."""
        for arg in self.tensors:
            if arg.name == name:
                return arg
        raise KeyError(name)

    def __call__(self, tensors: Mapping[str, Tensor], params: LossParams) -> Tensor:
        """Run the loss: tensors by torch name (absent optional ones are None), then the parameters."""
        kwargs = {arg.name: tensors.get(arg.name) for arg in self.tensors}
        return self.fn(**kwargs, p=params)


LEGACY_REDUCTION_ARGS = ("size_average", "reduce")
"""torch's deprecated arguments that stand for a `reduction` (most `*_loss` functions still take them)."""


def takes_legacy_reduction(torch_ref: str) -> bool:
    """Whether the `torch.nn.functional` function `torch_ref` takes `size_average` and `reduce`."""
    module, _, name = torch_ref.rpartition(".")
    fn = getattr(torch.nn.functional, name, None) if module == "torch.nn.functional" else None
    return fn is not None and set(LEGACY_REDUCTION_ARGS) <= set(inspect.signature(fn).parameters)


def legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str = "mean") -> str:
    """The reduction torch computes when given `size_average` and `reduce` (None: not given) besides `reduction`:
    torch's own `legacy_get_string` (reduce false: 'none'; else size_average false: 'sum'; else 'mean') when
    either is given; `reduction` as it is when neither is."""
    if size_average is None and reduce is None:
        return reduction
    return torch.nn._reduction.legacy_get_string(size_average, reduce, emit_warning=False)


@dataclass
class Registry:
    """Losses by name. Refuses duplicates; unknown names raise `UnknownLoss` with close matches.

    Lookup is case-insensitive and also accepts each loss's aliases (torch's functional name and its
    `torch.nn` class name), so users of either torch API find their loss.
    """

    _specs: dict[str, LossSpec] = field(default_factory=dict)
    _index: dict[str, LossSpec] = field(default_factory=dict)

    def add(self, spec: LossSpec) -> None:
        """Register `spec`; a name or alias already taken is a programming error."""
        keys = {key.lower() for key in (spec.name, *spec.aliases)}
        for key in keys:
            if key in self._index:
                raise ValueError(f"loss name {key!r} is registered twice")
        self._specs[spec.name] = spec
        self._index.update(dict.fromkeys(keys, spec))

    def loss(
        self,
        name: str,
        *,
        tensors: Sequence[TensorArg],
        params: type[LossParams] = LossParams,
        check: Check | None = None,
        torch_ref: str,
        aliases: Sequence[str] = (),
        cost: CostModel = broadcast_cost,
        stats: StatsRule = MEAN_OF_ELEMENTS,
    ) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
        """Decorator declaring a loss. The function's docstring gives the summary (first line) and notes.

        `torch_ref` names what the loss equals; when it is a `torch.nn.functional` function whose name
        differs from `name`, that name becomes an alias too.
        """
        functional = torch_ref.removeprefix("torch.nn.functional.")
        if functional != torch_ref and functional != name:
            aliases = (functional, *aliases)

        def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
            doc = inspect.cleandoc(fn.__doc__ or name)
            summary, _, description = doc.partition("\n")
            self.add(
                LossSpec(
                    name=name,
                    summary=summary.strip(),
                    description=description.strip(),
                    torch_ref=torch_ref,
                    tensors=tuple(tensors),
                    params=params,
                    fn=fn,
                    check=check,
                    aliases=tuple(aliases),
                    cost_model=cost,
                    stats=stats,
                    legacy_reduction=takes_legacy_reduction(torch_ref),
                )
            )
            return fn

        return register

    def get(self, name: str) -> LossSpec:
        """The loss called `name` or one of its aliases, in any case."""
        spec = self._index.get(name.lower())
        if spec is None:
            close = close_matches(name.lower(), self._index)
            raise UnknownLoss(name, list(dict.fromkeys(self._index[key].name for key in close))[:3])
        return spec

    def __iter__(self) -> Iterator[LossSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)


REGISTRY = Registry()
"""The service's registry; the family modules in this package declare their losses into it."""
