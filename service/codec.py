"""Wire <-> tensor: every tensor encoding lossd reads or writes, in one place.

Reads a tensor given as
  - a JSON number, or a nested JSON array of numbers (rectangular): untyped;
  - `{"data": [flat numbers], "shape": [...], "dtype": "float32"}`: untyped unless `dtype` is given;
  - `{"b64": "<base64 of little-endian row-major bytes>", "shape": [...], "dtype": "float32"}`: typed.
Non-finite values travel as the strings "NaN", "Infinity" and "-Infinity", both ways, so every body is
strict JSON. JSON booleans read as 1 and 0, as `torch.tensor` and numpy read Python booleans.
Number arrays become tensors in one numpy call; Python only walks the data again to say exactly where
a bad payload went wrong.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any, Literal

import numpy as np
import orjson
import torch
from torch import Tensor

from service.compute import RawTensor
from service.errors import InvalidTensor, Loc, MalformedBody
from service.losses.registry import TensorKind

Encoding = Literal["json", "base64"]

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
}
"""Wire dtype names, as torch spells them without the `torch.` prefix."""

DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()} | {torch.bool: "bool"}

NON_FINITE: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

MAX_DIMS = 32
"""Deepest nesting read as a tensor (numpy's own limit is 64; no loss needs more)."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DEFAULT_TYPED: dict[TensorKind, torch.dtype] = {TensorKind.FLOAT: torch.float32, TensorKind.INDEX: torch.int64}


def loads(body: bytes) -> Any:
    """Parse a request body as strict JSON (NaN/Infinity literals are not JSON)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"request body is not valid JSON: {exc}") from None


def dumps(value: Any) -> bytes:
    """Serialize a response; numpy arrays from `encode_tensor` are written by orjson without Python loops."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


# --- decoding -------------------------------------------------------------------------------------


def decode_tensor(value: Any, name: str, kind: TensorKind = TensorKind.FLOAT) -> RawTensor:
    """Read one tensor argument in any wire form. `kind` picks the default dtype of base64 payloads."""
    if isinstance(value, dict):
        if "b64" in value:
            return _decode_b64(value, name, kind)
        if "data" in value:
            return _decode_flat(value, name)
        raise InvalidTensor(
            f"{name}: a tensor object needs 'data' (flat numbers) or 'b64' (base64 bytes), with 'shape' and 'dtype'",
            loc=(name,),
        )
    return RawTensor(_nested_to_tensor(value, (name,)), typed=False)


def _decode_flat(obj: dict[str, Any], name: str) -> RawTensor:
    _only_keys(obj, name, {"data", "shape", "dtype"})
    data = obj["data"]
    if not isinstance(data, list):
        raise InvalidTensor(f"{name}.data must be a flat JSON array of numbers", loc=(name, "data"))
    flat = _nested_to_tensor(data, (name, "data"))
    if flat.ndim != 1:
        raise InvalidTensor(f"{name}.data must be a flat array; put the dimensions in 'shape'", loc=(name, "data"))
    shape = _shape(obj, name, default=list(flat.shape))
    if math.prod(shape) != flat.numel():
        raise InvalidTensor(
            f"{name}: shape {shape} holds {math.prod(shape)} elements but data has {flat.numel()}", loc=(name, "shape")
        )
    tensor = flat.reshape(shape)
    if "dtype" not in obj:
        return RawTensor(tensor, typed=False)
    dtype = _dtype(obj, name)
    return RawTensor(_cast(tensor, dtype, (name, "data")), typed=True)


def _decode_b64(obj: dict[str, Any], name: str, kind: TensorKind) -> RawTensor:
    _only_keys(obj, name, {"b64", "shape", "dtype"})
    if "dtype" in obj:
        dtype = _dtype(obj, name)
    elif kind in _DEFAULT_TYPED:
        dtype = _DEFAULT_TYPED[kind]
    else:
        raise InvalidTensor(
            f"{name}: base64 data needs a 'dtype' (integer for class indices, floating for probabilities)",
            loc=(name, "dtype"),
        )
    text = obj["b64"]
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        raise InvalidTensor(f"{name}.b64 is not a valid base64 string", loc=(name, "b64"))
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) % itemsize:
        raise InvalidTensor(
            f"{name}: {len(raw)} bytes is not a whole number of {DTYPE_NAMES[dtype]} elements ({itemsize} bytes each)",
            loc=(name, "b64"),
        )
    shape = _shape(obj, name, default=[len(raw) // itemsize])
    if math.prod(shape) * itemsize != len(raw):
        raise InvalidTensor(
            f"{name}: shape {shape} of {DTYPE_NAMES[dtype]} needs {math.prod(shape) * itemsize} bytes, got {len(raw)}",
            loc=(name, "b64"),
        )
    if not raw:
        return RawTensor(torch.empty(shape, dtype=dtype), typed=True)
    return RawTensor(torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape), typed=True)


def _only_keys(obj: dict[str, Any], name: str, allowed: set[str]) -> None:
    for key in obj:
        if key not in allowed:
            raise InvalidTensor(f"{name}: unknown tensor field {key!r}; expected {sorted(allowed)}", loc=(name, key))


def _dtype(obj: dict[str, Any], name: str) -> torch.dtype:
    dtype = DTYPES.get(obj["dtype"]) if isinstance(obj["dtype"], str) else None
    if dtype is None:
        raise InvalidTensor(
            f"{name}: unknown dtype {obj['dtype']!r}; expected one of {list(DTYPES)}", loc=(name, "dtype")
        )
    return dtype


def _shape(obj: dict[str, Any], name: str, default: list[int]) -> list[int]:
    shape = obj.get("shape", default)
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or math.prod(max(d, 1) for d in shape) >= 2**62  # torch's strides must fit in int64
    ):
        raise InvalidTensor(
            f"{name}.shape must be a list of at most {MAX_DIMS} non-negative integers whose product fits in "
            f"64 bits, got {shape!r}",
            loc=(name, "shape"),
        )
    return shape


def _cast(t: Tensor, dtype: torch.dtype, loc: Loc) -> Tensor:
    """Convert JSON-read values to a declared dtype, refusing values that dtype cannot hold."""
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        bad = (t < info.min) | (t > info.max)
        if t.is_floating_point():
            bad |= ~torch.isfinite(t) | (t != t.trunc())
        if bool(bad.any()):
            where = tuple(int(i) for i in torch.nonzero(bad.reshape(-1))[0])
            raise InvalidTensor(
                f"value {t.reshape(-1)[where].item()} at index {where[0]} is not a {DTYPE_NAMES[dtype]}",
                loc=(*loc, *where),
            )
    return t.to(dtype)


def _nested_to_tensor(value: Any, loc: Loc) -> Tensor:
    """A number or rectangular nested array of numbers -> float64/int64 tensor, in one numpy call."""
    if not isinstance(value, int | float | str | list):
        raise InvalidTensor(
            f"{_dotted(loc)}: expected a number or an array of numbers, got {_describe(value)}", loc=loc
        )
    try:
        array = np.array(value)
    except (ValueError, OverflowError):
        array = None
    if array is not None and array.dtype.kind == "b":
        array = array.astype(np.int64)
    if array is None or array.dtype.kind not in "fi" or array.ndim > MAX_DIMS:
        array = _slow_path(value, loc)
    return torch.from_numpy(array)


def _slow_path(value: Any, loc: Loc) -> np.ndarray:
    """Arrays numpy could not read directly: non-finite tokens, or a bad payload to locate exactly."""
    shape = _leading_shape(value, loc)
    problem = _first_problem(value, shape, loc)
    if problem is not None:
        where, msg = problem
        raise InvalidTensor(f"{_dotted(where)}: {msg}", loc=where)
    return np.array(_replace_tokens(value), dtype=np.float64)


def _leading_shape(value: Any, loc: Loc) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) > MAX_DIMS:
            raise InvalidTensor(f"{_dotted(loc)}: more than {MAX_DIMS} nested dimensions", loc=loc)
        if not value:
            break
        value = value[0]
    return shape


def _first_problem(value: Any, shape: list[int], loc: Loc) -> tuple[Loc, str] | None:
    """Where a nested payload first departs from a rectangular array of numbers, and how."""
    if not shape:
        if isinstance(value, str):
            if value in NON_FINITE:
                return None
            return loc, f"expected a number, got the string {value!r} (only NaN, Infinity, -Infinity are)"
        if not isinstance(value, int | float):
            return loc, f"expected a number, got {_describe(value)}"
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            return loc, f"integer {value} does not fit in 64 bits"
        return None
    if not isinstance(value, list) or len(value) != shape[0]:
        got = f"an array of {len(value)}" if isinstance(value, list) else _describe(value)
        return loc, f"ragged array: expected an array of {shape[0]} like its siblings, got {got}"
    for i, item in enumerate(value):
        problem = _first_problem(item, shape[1:], (*loc, i))
        if problem is not None:
            return problem
    return None


def _replace_tokens(value: Any) -> Any:
    if isinstance(value, list):
        return [_replace_tokens(v) for v in value]
    return NON_FINITE[value] if isinstance(value, str) else value


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


def _dotted(loc: Loc) -> str:
    head, *rest = loc
    return str(head) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)


# --- encoding -------------------------------------------------------------------------------------


def encode_tensor(t: Tensor, encoding: Encoding = "json") -> Any:
    """A tensor as a JSON value: a number or nested arrays (exact float64 text), or a base64 object."""
    if encoding == "base64":
        return {
            "b64": base64.b64encode(tensor_bytes(t)).decode("ascii"),
            "shape": list(t.shape),
            "dtype": dtype_name(t),
        }
    array = t.to(torch.float64 if t.is_floating_point() else torch.int64).numpy()
    if t.is_floating_point() and not np.isfinite(array).all():
        return _with_tokens(array)
    return array.item() if array.ndim == 0 else np.ascontiguousarray(array)


def tensor_bytes(t: Tensor) -> bytes:
    """Little-endian row-major bytes of `t` in its own dtype."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def dtype_name(t: Tensor) -> str:
    """The wire name of a tensor's dtype."""
    return DTYPE_NAMES.get(t.dtype, str(t.dtype).removeprefix("torch."))


def _with_tokens(array: np.ndarray) -> Any:
    out = array.astype(object)
    out[np.isnan(array)] = "NaN"
    out[np.isposinf(array)] = "Infinity"
    out[np.isneginf(array)] = "-Infinity"
    return out.item() if array.ndim == 0 else out.tolist()
