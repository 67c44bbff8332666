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


def assert_same(got: Any, expected: Tensor) -> None:
    """A response value equals torch's CPU result: bit for bit on CPU, within dtype tolerance elsewhere."""
    actual = to_tensor(got)
    if DEVICE == "cpu":
        assert torch.equal(actual, expected.detach().double()), (actual, expected)
    else:  # CUDA kernels may sum in another order: compare within the tolerance of expected's dtype
        torch.testing.assert_close(actual.to(expected.dtype), expected.detach())
