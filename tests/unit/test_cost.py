"""The cost model's shape arithmetic against torch's, and the default model's predictions."""

from __future__ import annotations

import itertools

import torch

from service.losses import REGISTRY
from service.losses.registry import broadcast_shapes

SHAPES = [(), (1,), (3,), (2, 1), (1, 3), (2, 3), (4, 1, 3), (0,), (0, 3), (1, 0), (5, 4, 1, 1)]


def test_broadcast_shapes_is_torchs() -> None:
    for a, b in itertools.product(SHAPES, SHAPES):
        try:
            expected: tuple[int, ...] | None = tuple(torch.broadcast_shapes(a, b))  # type: ignore[no-untyped-call]
        except RuntimeError:
            expected = None
        assert broadcast_shapes(a, b) == expected, (a, b)


def test_the_default_model_counts_the_broadcast_and_the_gradients() -> None:
    mse = REGISTRY.get("mse")
    params = mse.params()
    same = mse.cost({"input": (100, 10), "target": (100, 10)}, params, grads=0)
    assert (same.elements, same.largest, same.largest_name) == (4000, 1000, "input")
    wide = mse.cost({"input": (8000, 1), "target": (8000,)}, params, grads=2)
    assert wide.largest == 8000 * 8000
    assert (wide.largest_name, wide.largest_loc) == ("target broadcast with input", ("target",))
    assert wide.elements == 16000 + 4 * 8000 * 8000


def test_arguments_that_do_not_broadcast_cost_their_own_size() -> None:
    """Class indices of (N,) against logits (N, 1) are not a broadcast: no N x N intermediate."""
    ce = REGISTRY.get("cross_entropy")
    cost = ce.cost({"input": (10000, 1), "target": (10000,)}, ce.params(), grads=1)
    assert cost.largest == 10000
    assert cost.elements == 20000 + 3 * 10000
