"""The cost model's shape arithmetic against torch's, the default model's predictions, and the models of the
losses that build far more than their inputs (ctc, linear_cross_entropy)."""

from __future__ import annotations

import itertools

import torch

from service.config import Settings
from service.losses import REGISTRY, classification
from service.losses.registry import broadcast_cost, broadcast_shapes

SHAPES = [(), (1,), (3,), (2, 1), (1, 3), (2, 3), (4, 1, 3), (0,), (0, 3), (1, 0), (5, 4, 1, 1)]


def test_broadcast_shapes_is_torchs() -> None:
    for a, b in itertools.product(SHAPES, SHAPES):
        try:
            expected: tuple[int, ...] | None = tuple(torch.broadcast_shapes(a, b))  # type: ignore[no-untyped-call]
        except RuntimeError:
            expected = None
        assert broadcast_shapes(a, b) == expected, (a, b)


def test_the_default_model_counts_the_broadcast_and_the_gradients() -> None:
    """`broadcast_cost` on mse's arguments (mse declares its own, larger counts: `elementwise(3, 4)`)."""
    mse = REGISTRY.get("mse")
    params = mse.params()
    same = broadcast_cost(mse, {"input": (100, 10), "target": (100, 10)}, params, 0)
    assert (same.elements, same.largest, same.largest_name) == (4000, 1000, "input")
    wide = broadcast_cost(mse, {"input": (8000, 1), "target": (8000,)}, params, 2)
    assert wide.largest == 8000 * 8000
    assert (wide.largest_name, wide.largest_loc) == ("target broadcast with input", ("target",))
    assert wide.elements == 16000 + 4 * 8000 * 8000


def test_arguments_that_do_not_broadcast_cost_their_own_size() -> None:
    """Class indices of (N,) against logits (N, 1) are not a broadcast: no N x N intermediate."""
    ce = REGISTRY.get("cross_entropy")
    cost = ce.cost({"input": (10000, 1), "target": (10000,)}, ce.params(), grads=1)
    assert cost.largest == 10000
    # cross_entropy's model: the inputs; with a gradient, 3 logits-sized tensors, the gradient, 4 per sample
    assert cost.elements == 20000 + (3 + 1) * 10000 + 4 * 10000


WORK_BYTES = Settings().max_work_bytes


def test_ctc_counts_its_alpha_table() -> None:
    """T=20000, S=10000 in a 150 KB body: torch's T x N x (2S+1) alpha table alone is 1.6 GB in float32."""
    ctc = REGISTRY.get("ctc")
    shapes = {"log_probs": (20000, 1, 2), "targets": (1, 10000), "input_lengths": (1,), "target_lengths": (1,)}
    cost = ctc.cost(shapes, ctc.params(), 0)
    assert cost.largest == 20000 * 20001
    assert cost.largest_loc == ("targets",)
    assert "alpha table" in cost.largest_name
    assert cost.elements * 4 > WORK_BYTES
    assert ctc.cost(shapes, ctc.params(), 1).elements > 2 * 20000 * 20001  # and the beta table


def test_concatenated_ctc_targets_count_as_one_long_target() -> None:
    ctc = REGISTRY.get("ctc")
    shapes = {"log_probs": (50, 4, 6), "targets": (40,), "input_lengths": (4,), "target_lengths": (4,)}
    assert ctc.cost(shapes, ctc.params(), 0).largest == 50 * 4 * 81
    assert "padded" in ctc.cost(shapes, ctc.params(), 0).largest_name


def test_linear_cross_entropy_counts_its_logits() -> None:
    """N = C = 20000 in a 260 KB body: the N x C logits are 1.6 GB in float32; chunks of them are not."""
    lce = REGISTRY.get("linear_cross_entropy")
    shapes = {"input": (20000, 1), "linear_weight": (20000, 1), "target": (20000,)}
    cost = lce.cost(shapes, lce.params(), 2)
    assert cost.largest == 20000 * 20000
    assert cost.elements * 4 > WORK_BYTES
    chunked = lce.cost(shapes, lce.params(options={"batch_chunk_size": 64}), 2)
    assert chunked.largest == 64 * 20000
    assert chunked.elements * 4 < WORK_BYTES


def test_chunk_rows_are_torchs() -> None:
    """As many rows as torch's chunking picks: exactly with a chunk size or method, "auto" as its largest pick."""
    for n, h, c in itertools.product((1, 7, 512), (1, 3, 64), (1, 5, 1000)):
        for options in ({}, {"batch_chunk_size": 4}, {"chunking_method": None}, {"chunking_method": "aspect_ratio:3"}):
            ours = classification.chunk_rows(classification.ChunkingOptions(**options), n, h, c)  # type: ignore[arg-type]
            for dtype in (torch.float32, torch.bfloat16):
                torchs = options_adjusted(options, n, h, c, dtype)
                assert ours >= torchs, (n, h, c, options, dtype)
                if dtype == torch.bfloat16 or options:
                    assert ours == torchs, (n, h, c, options, dtype)


def options_adjusted(options: dict[str, object], n: int, h: int, c: int, dtype: torch.dtype) -> int:
    adjusted = torch.nn.LinearCrossEntropyOptions(**options)._adjust(  # type: ignore[arg-type]
        num_batches=n, in_features=h, num_classes=c, dtype=dtype, device=torch.device("cpu")
    )
    return int(adjusted.batch_chunk_size)


def test_index_arguments_count_twice() -> None:
    """An int64 index takes the bytes of two float32 elements."""
    nll = REGISTRY.get("nll")
    assert broadcast_cost(nll, {"input": (10, 3), "target": (10,)}, nll.params(), 0).elements == 30 + 20 + 2 * 30
