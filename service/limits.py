"""Size limits on what one request may ask of the process, set once at start-up from the settings.

The codec and the checks consult them while reading tensors and before computing, so a request can
neither allocate more than its body allows nor make torch broadcast into an enormous intermediate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import PayloadTooLarge


@dataclass
class Limits:
    max_tensor_elements: int = 1 << 26
    """Elements in any one tensor: an argument, a broadcast result, a gradient."""
    max_request_elements: int = 1 << 27
    """Elements in all the tensors of one request together."""
    max_dims: int = 32
    """Dimensions (JSON nesting depth) of a tensor."""
    max_evaluate_entries: int = 64
    """Losses in one /v1/evaluate request."""


current = Limits()
"""The process's limits; `configure` replaces them at start-up."""


def configure(limits: Limits) -> None:
    global current
    current = limits


def tensor_elements(name: str, shape: Sequence[int]) -> None:
    """Refuse a tensor of `shape` larger than the per-tensor limit (413, with limit and actual)."""
    count = math.prod(shape)
    if count > current.max_tensor_elements:
        raise PayloadTooLarge(
            f"{name} would hold {count} elements; the limit is {current.max_tensor_elements} per tensor",
            loc=(name,),
            limit=current.max_tensor_elements,
            actual=count,
        )


def request_elements(counts: Sequence[int]) -> None:
    """Refuse a request whose tensors together exceed the per-request limit."""
    total = sum(counts)
    if total > current.max_request_elements:
        raise PayloadTooLarge(
            f"the request's tensors hold {total} elements; the limit is {current.max_request_elements}",
            limit=current.max_request_elements,
            actual=total,
        )
