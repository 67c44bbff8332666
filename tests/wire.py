"""Independent wire helpers for tests: tensors to request JSON and response JSON back to tensors."""

from __future__ import annotations

import base64
import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

DEVICE = os.environ.get("LOSSD_TEST_DEVICE", "cpu")
"""Where the service under test computes (`LOSSD_TEST_DEVICE=cuda` runs the suites against CUDA)."""

SUMMED = {"rtol": 1e-13, "atol": 0.0} if DEVICE == "cpu" else {"rtol": 1e-6, "atol": 1e-6}
"""The tolerance for a value lossd adds up itself rather than torch: a session's dataset and group values, and
the statistics S and W behind them, are float64 sums of torch's per-element terms, batch by batch, in lossd's
order and grouping, where torch (or a test) reduces the same terms in another. On the CPU, measured within a few
ulps (1.5e-15 relative at most over 600 samples in batches added in random orders); a real difference (a term
lost or counted twice, a float32 sum) is many orders larger. On CUDA the terms themselves come from other
kernels than the test's: float32's precision."""
TOKENS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
NAMES = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.int8: "int8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.uint8: "uint8",
}


def b64(t: Tensor) -> dict[str, Any]:
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return {"b64": base64.b64encode(raw).decode(), "shape": list(t.shape), "dtype": NAMES[t.dtype]}


def flat(t: Tensor) -> dict[str, Any]:
    return {"data": t.reshape(-1).tolist(), "shape": list(t.shape), "dtype": NAMES[t.dtype]}


def to_tensor(value: Any) -> Tensor:
    """A response tensor (number, nested arrays with non-finite tokens, or base64 object) as float64."""
    if isinstance(value, dict):
        dtype = {v: k for k, v in NAMES.items()}[value["dtype"]]
        raw = bytearray(base64.b64decode(value["b64"]))
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return t.reshape(value["shape"]).to(torch.float64)

    def fix(v: Any) -> Any:
        if isinstance(v, list):
            return [fix(x) for x in v]
        return TOKENS[v] if isinstance(v, str) else v

    return torch.from_numpy(np.array(fix(value), dtype=np.float64))


_BITS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def assert_exact(actual: Tensor, expected: Tensor, what: str = "value") -> None:
    """`actual` is `expected` bit for bit: the same dtype, shape and bits (so -0.0 is not 0.0), NaN equal to NaN
    whatever its payload (the JSON token "NaN" has none)."""
    expected = expected.detach()
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, torch's {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {list(actual.shape)}, torch's {list(expected.shape)}"
    nan = actual.isnan() if actual.is_floating_point() else torch.zeros_like(actual, dtype=torch.bool)
    bits = _BITS[actual.element_size()]
    same = (actual.view(bits) == expected.view(bits)) | (nan & expected.isnan())
    if not bool(same.all()):
        where = [tuple(i) for i in (~same).nonzero().tolist()[:5]]
        diffs = ", ".join(f"{list(i)}: {actual[i].item()!r} != torch's {expected[i].item()!r}" for i in where)
        raise AssertionError(f"{what} differs from torch's in {int((~same).sum())} element(s): {diffs}")


def assert_within(actual: Tensor, expected: Tensor, what: str, rtol: float, atol: float) -> None:
    """`actual` is `expected` within `atol + rtol * |expected|`, NaN equal to NaN: for what is not computed the same
    way (say why where it is used)."""
    torch.testing.assert_close(
        actual, expected.detach(), rtol=rtol, atol=atol, equal_nan=True, msg=lambda message: f"{what}: {message}"
    )


def assert_same(got: Any, expected: Tensor) -> None:
    """A response value equals torch's CPU result: bit for bit on CPU (NaN equal to NaN), within the tolerance of
    expected's dtype elsewhere."""
    actual = to_tensor(got)
    if DEVICE == "cpu":
        assert_exact(actual, expected.detach().double())
    else:  # CUDA kernels may sum in another order: compare within the tolerance of expected's dtype
        torch.testing.assert_close(actual.to(expected.dtype), expected.detach(), equal_nan=True)
