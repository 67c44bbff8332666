"""The loss registry: one declaration per loss, from which the catalog, request models and tests derive.

A loss is declared once with `@REGISTRY.loss(...)` on its compute function. The declaration holds
everything the rest of the service needs to know: torch's argument names, each tensor's kind and
shape rule, which arguments are differentiable, the pydantic parameter model (its fields are torch's
keyword arguments, with torch's defaults and bounds) and an optional pre-validation `check` that runs
on the CPU copies of the tensors before torch sees them.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from service.errors import UnknownLoss

Reduction = Literal["none", "mean", "sum"]


class TensorKind(StrEnum):
    """What numbers a tensor argument holds, which decides how untyped JSON numbers are read."""

    FLOAT = "float"
    """Real values; read as the dtype of the first float argument that declares one, else float32."""
    INDEX = "index"
    """Class indices; integers, read as int64 (int32/uint8/... are converted, as torch wants int64)."""
    INDEX_OR_PROBABILITY = "index_or_probability"
    """Class indices, or class probabilities with the shape of `input` (then read like FLOAT)."""


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
    doc: str = ""


class LossParams(BaseModel):
    """Base of every loss's parameter model: torch's keyword arguments, `reduction` first."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    reduction: Reduction = Field("mean", description="How per-element losses are reduced: none, mean or sum.")


Check = Callable[[Mapping[str, Tensor], Any], Sequence[str]]
"""Pre-validation: raises a `LossdError` naming the offending argument, returns warnings to report."""


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


@dataclass
class Registry:
    """Losses by name. Refuses duplicates; unknown names raise `UnknownLoss` with close matches."""

    _specs: dict[str, LossSpec] = field(default_factory=dict)

    def add(self, spec: LossSpec) -> None:
        """Register `spec`; a name or alias already taken is a programming error."""
        for key in (spec.name, *spec.aliases):
            if key in self._specs or any(key in s.aliases for s in self._specs.values()):
                raise ValueError(f"loss name {key!r} is registered twice")
        self._specs[spec.name] = spec

    def loss(
        self,
        name: str,
        *,
        tensors: Sequence[TensorArg],
        params: type[LossParams] = LossParams,
        check: Check | None = None,
        torch_ref: str,
        aliases: Sequence[str] = (),
    ) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
        """Decorator declaring a loss. The function's docstring gives the summary (first line) and notes."""

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
                )
            )
            return fn

        return register

    def get(self, name: str) -> LossSpec:
        """The loss called `name` (or one of its aliases)."""
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        for spec in self._specs.values():
            if name in spec.aliases:
                return spec
        raise UnknownLoss(name, difflib.get_close_matches(name, list(self._specs), n=3, cutoff=0.5))

    def __iter__(self) -> Iterator[LossSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)


REGISTRY = Registry()
"""The service's registry; the family modules in this package declare their losses into it."""
