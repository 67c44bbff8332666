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

import binascii
import gzip
import json
import math
import zlib
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import orjson
import pybase64  # SIMD base64: about 7 times the standard library's speed
import simdjson
import torch
from torch import Tensor

from service import compute
from service.compute import RawTensor
from service.errors import (
    InvalidRequest,
    InvalidTensor,
    Loc,
    MalformedBody,
    PayloadTooLarge,
    UnsupportedMediaType,
    dotted,
)
from service.limits import DEFAULTS, Limits
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

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DEFAULT_TYPED: dict[TensorKind, torch.dtype] = {TensorKind.FLOAT: torch.float32, TensorKind.INDEX: torch.int64}


SIMD_MIN_BYTES = 1 << 12
"""Bodies this large are parsed with simdjson, whose arrays of numbers become numpy arrays in C."""


def loads(body: bytes) -> Any:
    """Parse a request body as strict JSON (NaN/Infinity literals are not JSON, nor are repeated keys).

    Large bodies take a fast path: simdjson parses them, and every array of plain numbers among the
    top-level values (and inside top-level objects) is copied into a numpy array without creating a
    Python float per element. The fast path only applies when each such array is flat, which the
    count of '[' in the body proves: any nesting, or a '[' anywhere else, adds one. Otherwise, and
    for arrays holding anything but numbers, the body is read like a small one. Bodies made of a few
    long strings (base64 tensors) go to orjson directly: it reads strings faster.

    An object that repeats a key is refused (`InvalidRequest`, naming the key and its object) whatever
    the size of the body: parsers disagree on which value wins (orjson keeps the last, simdjson the
    first), so a body must not depend on it. See `_check_keys` for how that costs next to nothing.
    """
    head = body[:4096]
    first = head.find(b"[")
    # arrays of numbers, not base64 text; and not nested ("[[" at the first array), which only orjson reads whole
    if len(body) >= SIMD_MIN_BYTES and head.count(b",") >= 64 and head[first + 1 : first + 2] != b"[":
        fast = _loads_flat_arrays(body)
        if fast is not None:
            _check_keys(body, fast)
            return fast
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"request body is not valid JSON: {exc}") from None
    _check_keys(body, value)
    return value


def _check_keys(body: bytes, value: Any) -> None:
    """Refuse a body some object of which repeats a key; `value` is the body as parsed.

    Every key of the body is followed by exactly one ':' outside strings, so the body holds at least as
    many ':' as keys, and the parsed objects at most as many keys as the body: a repeated key is dropped.
    The two counts are equal only when no key repeats (and no string holds a ':'): then the body is
    accepted at once. Counting skips arrays of numbers (tensors) without walking their elements; an
    object it skips only makes the count smaller, which sends the body on to be looked at closer.
    When strings hold ':', counting those too settles it, unless an escape (\\u003a) could write one.
    Only what remains, repeated keys above all, is looked for exactly (`_repeated_key`).
    """
    try:
        if _holds(body, b":", _object_keys(value if type(value) is dict else (value,))):
            return
    except RecursionError:  # objects nested deeper than Python recurses: the next count does not recurse
        pass
    if b"\\u003a" not in body and b"\\u003A" not in body and _holds(body, b":", _keys_and_colons(value)):
        return
    repeated = _repeated_key(body)
    if repeated is not None:
        *where, key = repeated
        place = f"the object at {dotted(('body', *where))}" if where else "the top-level object"
        raise InvalidRequest(
            f"the key {key!r} appears more than once in {place}; a JSON object must not repeat a key",
            loc=repeated,
        )


def _object_keys(node: Any) -> int:
    """How many keys the objects of a parsed object or array hold, except objects inside arrays whose
    first element (or its first element...) is no object: tensors, whose numbers are never walked."""
    count = 0
    if type(node) is dict:
        count = len(node)
        node = node.values()
    for value in node:
        kind = type(value)
        if kind is list:
            if value:
                first = value[0]
                while type(first) is list and first:
                    first = first[0]
                if type(first) is dict:
                    count += _object_keys(value)
        elif kind is dict:
            count += _object_keys(value)
    return count


def _keys_and_colons(value: Any) -> int:
    """`_object_keys`, plus the ':' in the keys and strings of the objects counted (and of arrays walked),
    without recursion."""
    count = value.count(":") if type(value) is str else 0
    stack: list[Any] = [value] if type(value) is dict or (type(value) is list and value) else []
    while stack:
        node = stack.pop()
        items: Iterable[Any]
        if type(node) is dict:
            count += len(node) + "".join(node).count(":")
            items = node.values()
        else:  # a list, not empty
            first = node[0]
            while type(first) is list and first:
                first = first[0]
            if type(first) is not dict:
                continue
            items = node
        for item in items:
            kind = type(item)
            if kind is str:
                count += item.count(":")
            elif kind is dict or (kind is list and item):
                stack.append(item)
    return count


def _holds(body: bytes, char: bytes, count: int) -> bool:
    """Whether `body` holds `char` exactly `count` times. `bytes.count` reads about 3 GB/s; when the body
    holds more than a few hundred bytes per expected `char`, finding one after the other (memchr) crosses
    tensors of millions of numbers between them at memory speed, about 20 GB/s."""
    if len(body) <= 512 * (count + 1):
        return body.count(char) == count
    find = body.find
    at = -1
    for _ in range(count):
        at = find(char, at + 1)
        if at < 0:
            return False
    return find(char, at + 1) < 0


_Where = tuple[Any, str | int] | None
"""A place in a document as a link to its parent's place, then its key or index (None: the document)."""


def _loc(where: _Where) -> Loc:
    path: list[str | int] = []
    while where is not None:
        where, key = where
        path.append(key)
    return tuple(reversed(path))


def _repeated_key(body: bytes) -> Loc | None:
    """The path to the first repeated key of a valid JSON body (its object's path, then the key), or None.

    Two exact ways, each linear in the body: simdjson costs a few µs an object but skips arrays of numbers
    in C, the standard library under one an object but about a µs a number. A body with few objects for
    its size (tensors) takes the first, one with many objects the second, and either the other when it
    cannot read the body (numbers past 64 bits or wide objects for simdjson, nesting deeper than Python
    recurses for the standard library).
    """
    looks = (_repeated_key_simdjson, _repeated_key_json)
    for look in looks if body.count(b"{") * 256 <= len(body) else reversed(looks):
        try:
            return look(body)
        except _Unreadable:
            continue
    raise MalformedBody("the request body nests too deeply to be read whole")


class _Unreadable(Exception):
    """One way of looking for repeated keys cannot read this body."""


_SIMDJSON_KEYS = 256
"""The most keys of an object read from simdjson by key: it finds a field by reading the keys in turn, so
wider objects go to orjson (in `loads`) or to the standard library (in `_repeated_key`)."""


def _repeated_key_simdjson(body: bytes) -> Loc | None:
    """`_repeated_key` with simdjson, which lists every key of an object, repeats included. Only objects are
    walked: an array that is the value of a key is skipped in C when its minified text holds no '{' (arrays
    of numbers); the elements of one that does are walked, arrays among them too (not minified again)."""
    try:
        root = simdjson.Parser().parse(body)
    except (ValueError, RuntimeError):  # numbers past 64 bits, which orjson reads and simdjson does not
        raise _Unreadable from None
    containers = (simdjson.Object, simdjson.Array)
    # (value, where, whole): `where` links to its parent's, a loc is only built for the key to name
    stack: list[tuple[Any, _Where, bool]] = [(root, None, True)] if isinstance(root, containers) else []
    while stack:
        node, where, whole = stack.pop()
        children: list[tuple[Any, _Where, bool]]
        if isinstance(node, simdjson.Object):
            keys = _simdjson_keys(node)
            seen: set[str] = set()
            for key in keys:
                if key in seen:
                    return _loc((where, key))
                seen.add(key)
            children = [(child, (where, key), True) for key in keys if isinstance(child := node[key], containers)]
        elif whole and b"{" not in node.mini:
            continue
        else:
            children = [(child, (where, i), False) for i, child in enumerate(node) if isinstance(child, containers)]
        stack += reversed(children)
    return None


def _repeated_key_json(body: bytes) -> Loc | None:
    """`_repeated_key` with the standard library, which hands each object's pairs to a hook, repeats included.
    Once an object repeats a key, each object read after it looks for it among its values (and in the arrays
    among them), to name the place from the inside out; the first that holds it is looked for in turn."""
    path: list[str | int] = []  # inside out
    holder: Any = None  # the object found last on the way out

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal holder
        obj = dict(items)
        if holder is None:
            if len(obj) < len(items):
                seen: set[str] = set()
                for key, _ in items:
                    if key in seen:
                        path.append(key)
                        holder = obj
                        break
                    seen.add(key)
            return obj
        for key, value in items:
            inside = () if value is holder else _index_in(value, holder) if type(value) is list else None
            if inside is not None:
                path.extend((*reversed(inside), key))
                holder = obj
                break
        return obj

    try:
        root = json.loads(body, object_pairs_hook=pairs)
    except RecursionError:
        raise _Unreadable from None
    if holder is None:
        return None
    if holder is not root:  # the body is an array that holds it
        path.extend(reversed(_index_in(root, holder) or ()))
    return tuple(reversed(path))


def _index_in(items: list[Any], target: Any) -> Loc | None:
    """The indices that lead to `target` (by identity) through `items` and the arrays in it, or None."""
    stack: list[tuple[list[Any], _Where]] = [(items, None)]
    while stack:
        array, where = stack.pop()
        for i, item in enumerate(array):
            if item is target:
                return _loc((where, i))
            if type(item) is list:
                stack.append((item, (where, i)))
    return None


def _loads_flat_arrays(body: bytes) -> dict[str, Any] | None:
    try:
        document = simdjson.Parser().parse(body)
    except (ValueError, RuntimeError):  # invalid JSON, or numbers simdjson cannot hold (64-bit overflow)
        return None  # let orjson read it, or say precisely what is wrong
    if not isinstance(document, simdjson.Object):
        return None
    arrays = 0

    def value(item: Any) -> Any:
        nonlocal arrays
        if isinstance(item, simdjson.Array):
            read = _numbers(item) if len(item) >= 64 else item.as_list()
            arrays += _count_lists(read) if isinstance(read, list) else 1
            return read
        if isinstance(item, simdjson.Object):  # items() would build Python lists: index by key instead
            return {k: value(item[k]) for k in _simdjson_keys(item)}
        return item

    try:
        out = {key: value(document[key]) for key in _simdjson_keys(document)}
    except (RecursionError, RuntimeError, ValueError, _Unreadable):
        return None
    return out if arrays and _holds(body, b"[", arrays) else None


def _simdjson_keys(obj: Any) -> list[str]:
    """A simdjson object's keys, unless it has too many to index by key (each lookup reads them in turn)."""
    keys = list(obj.keys())
    if len(keys) > _SIMDJSON_KEYS:
        raise _Unreadable
    return keys


def _count_lists(value: Any) -> int:
    return 1 + sum(_count_lists(v) for v in value if isinstance(v, list)) if isinstance(value, list) else 0


_SIMDJSON_MAX_LEN = (1 << 24) - 1
"""simdjson's DOM counts an array's elements in 24 bits: `len()` stops at this, and pysimdjson's `as_list()` on
a longer array returns too few items and then corrupts the heap (the process aborts). Such arrays are read
by their buffer only, or the body goes to orjson."""


def _numbers(array: Any) -> Any:
    """A flat simdjson array of numbers as int64 or float64 numpy; anything else as Python lists."""
    first = array[0]  # all integers can only start with one; trying int64 first costs an exception
    kinds = (("i", np.int64), ("d", np.float64)) if type(first) is int else (("d", np.float64),)
    for kind, dtype in kinds:
        try:
            return np.frombuffer(array.as_buffer(of_type=kind), dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            continue
    if len(array) >= _SIMDJSON_MAX_LEN:
        raise _Unreadable
    return array.as_list()


ARRAY_BYTES = 64
"""What one JSON array may cost once parsed into Python lists (a list object and a reference to it)."""


def parse_overhead(body: bytes | memoryview) -> int:
    """The most memory parsing `body` may build besides its bytes: `ARRAY_BYTES` per JSON array (nested
    arrays become Python lists; `[[],[],...]` builds 22M of them from 64 MB). Counted in 4 MiB chunks by
    numpy, which lets other threads (the event loop) run between them."""
    data = np.frombuffer(body, dtype=np.uint8)
    step = 1 << 22
    arrays = sum(int(np.count_nonzero(data[i : i + step] == 0x5B)) for i in range(0, len(data), step))
    return arrays * ARRAY_BYTES


def dumps(value: Any) -> bytes:
    """Serialize a response; numpy arrays from `encode_tensor` are written by orjson without Python loops."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


# --- decoding -------------------------------------------------------------------------------------


def decode_tensor(value: Any, name: str, kind: TensorKind = TensorKind.FLOAT, limits: Limits = DEFAULTS) -> RawTensor:
    """Read one tensor argument in any wire form, within `limits`. `kind` picks the default dtype of
    base64 payloads."""
    if isinstance(value, dict):
        if "b64" in value:
            return _decode_b64(value, name, kind, limits)
        if "data" in value:
            return _decode_flat(value, name, limits)
        raise InvalidTensor(
            f"{name}: a tensor object needs 'data' (flat numbers) or 'b64' (base64 bytes), with 'shape' and 'dtype'",
            loc=(name,),
        )
    return RawTensor(_nested_to_tensor(value, (name,), limits.max_dims), typed=False)


def _decode_flat(obj: dict[str, Any], name: str, limits: Limits) -> RawTensor:
    _only_keys(obj, name, {"data", "shape", "dtype"})
    data = obj["data"]
    if not isinstance(data, list | np.ndarray):
        raise InvalidTensor(f"{name}.data must be a flat JSON array of numbers", loc=(name, "data"))
    flat = _nested_to_tensor(data, (name, "data"), limits.max_dims)
    if flat.ndim != 1:
        raise InvalidTensor(f"{name}.data must be a flat array; put the dimensions in 'shape'", loc=(name, "data"))
    tensor = _reshape(flat, _shape(obj.get("shape", list(flat.shape)), name, limits), name)
    if "dtype" not in obj:
        return RawTensor(tensor, typed=False, flat=True)
    return RawTensor(_cast(tensor, _dtype(obj["dtype"], name), (name, "data")), typed=True)


def _reshape(flat: Tensor, shape: list[int], name: str) -> Tensor:
    if math.prod(shape) != flat.numel():
        raise InvalidTensor(
            f"{name}: shape {shape} holds {math.prod(shape)} elements but data has {flat.numel()}", loc=(name, "shape")
        )
    return flat.reshape(shape)


def _decode_b64(obj: dict[str, Any], name: str, kind: TensorKind, limits: Limits) -> RawTensor:
    _only_keys(obj, name, {"b64", "shape", "dtype"})
    if "dtype" in obj:
        dtype = _dtype(obj["dtype"], name)
    elif kind in _DEFAULT_TYPED:
        dtype = _DEFAULT_TYPED[kind]
    else:
        raise InvalidTensor(
            f"{name}: base64 data needs a 'dtype' (integer for class indices, floating for probabilities)",
            loc=(name, "dtype"),
        )
    text = obj["b64"]
    try:
        raw = pybase64.b64decode(text, validate=True) if isinstance(text, str) else None
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
    shape = _shape(obj.get("shape", [len(raw) // itemsize]), name, limits)
    return RawTensor(from_bytes(raw, dtype, shape, (name, "b64")), typed=True)


def from_bytes(raw: bytes | memoryview, dtype: torch.dtype, shape: list[int], loc: Loc) -> Tensor:
    """Little-endian row-major bytes as a tensor of `shape`, without a per-element loop."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if math.prod(shape) * itemsize != len(raw):
        raise InvalidTensor(
            f"{dotted(loc)}: shape {shape} of {DTYPE_NAMES[dtype]} needs {math.prod(shape) * itemsize} bytes, "
            f"got {len(raw)}",
            loc=loc,
        )
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


def _only_keys(obj: dict[str, Any], name: str, allowed: set[str]) -> None:
    for key in obj:
        if key not in allowed:
            raise InvalidTensor(f"{name}: unknown tensor field {key!r}; expected {sorted(allowed)}", loc=(name, key))


def _dtype(value: Any, name: str) -> torch.dtype:
    dtype = DTYPES.get(value) if isinstance(value, str) else None
    if dtype is None:
        raise InvalidTensor(f"{name}: unknown dtype {value!r}; expected one of {list(DTYPES)}", loc=(name, "dtype"))
    return dtype


def _shape(shape: Any, name: str, limits: Limits) -> list[int]:
    if (
        not isinstance(shape, list)
        or len(shape) > limits.max_dims
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or math.prod(max(d, 1) for d in shape) >= 2**62  # torch's strides must fit in int64
    ):
        raise InvalidTensor(
            f"{name}.shape must be a list of at most {limits.max_dims} non-negative integers whose "
            f"product fits in 64 bits, got {shape!r}",
            loc=(name, "shape"),
        )
    limits.tensor(name, shape)
    return shape


def _cast(t: Tensor, dtype: torch.dtype, loc: Loc) -> Tensor:
    """Convert JSON-read values to a declared dtype, refusing values that dtype cannot hold: integers out of its
    range, and finite numbers that torch's conversion to a floating dtype makes infinite (`compute.refuse_overflow`,
    the same check untyped numbers get in the dtype they take)."""
    if dtype.is_floating_point:
        return compute.refuse_overflow(t, t.to(dtype), loc)
    low, high = (0, 1) if dtype == torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    if t.is_floating_point():  # high + 1 (a power of two) is exact as a float; high itself may round up to it
        bad = (t < low) | (t >= high + 1) | ~torch.isfinite(t) | (t != t.trunc())
    else:
        bad = (t < low) | (t > high)
    if bool(bad.any()):
        where = tuple(int(i) for i in torch.nonzero(bad.reshape(-1))[0])
        place = (*loc, *where)
        raise InvalidTensor(
            f"{dotted(place)}: value {t.reshape(-1)[where].item()} does not fit {DTYPE_NAMES[dtype]} "
            f"(integers {low} to {high})",
            loc=place,
        )
    return t.to(dtype)


def _nested_to_tensor(value: Any, loc: Loc, max_dims: int) -> Tensor:
    """A number or rectangular nested array of numbers -> float64/int64 tensor, in one numpy call."""
    if isinstance(value, np.ndarray):  # a flat array the fast JSON path already read
        return torch.from_numpy(value.copy() if not value.flags.writeable else value)
    if not isinstance(value, int | float | str | list):
        raise InvalidTensor(f"{dotted(loc)}: expected a number or an array of numbers, got {_describe(value)}", loc=loc)
    try:
        array = np.array(value)
    except (ValueError, OverflowError):
        array = None
    if array is not None and array.dtype.kind == "b":
        array = array.astype(np.int64)
    if array is None or array.dtype.kind not in "fi" or array.ndim > max_dims:
        array = _slow_path(value, loc, max_dims)
    return torch.from_numpy(array)


def _slow_path(value: Any, loc: Loc, max_dims: int) -> np.ndarray:
    """Arrays numpy could not read directly: non-finite tokens, or a bad payload to locate exactly."""
    shape = _leading_shape(value, loc, max_dims)
    problem = _first_problem(value, shape, loc)
    if problem is not None:
        where, msg = problem
        raise InvalidTensor(f"{dotted(where)}: {msg}", loc=where)
    return np.array(_replace_tokens(value), dtype=np.float64)


def _leading_shape(value: Any, loc: Loc, max_dims: int) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) > max_dims:
            raise InvalidTensor(
                f"{dotted(loc)}: more than {max_dims} nested dimensions",
                loc=loc,
                limit=max_dims,
                actual=len(shape),
            )
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


# --- encoding -------------------------------------------------------------------------------------


def number(value: float) -> float | str:
    """A float as a JSON value: itself, or "NaN", "Infinity", "-Infinity"."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def encode_tensor(t: Tensor, encoding: Encoding = "json") -> Any:
    """A tensor as a JSON value: a number or nested arrays (exact float64 text), or a base64 object."""
    if encoding == "base64":
        return {
            "b64": pybase64.b64encode(tensor_bytes(t)).decode("ascii"),
            "shape": list(t.shape),
            "dtype": dtype_name(t),
        }
    if t.ndim == 0:  # a reduced loss: .item() is the exact value as a Python float (or int)
        value = t.item()
        return number(value) if isinstance(value, float) else value
    array = t.to(torch.float64 if t.is_floating_point() else torch.int64).numpy()
    if t.is_floating_point() and not np.isfinite(array).all():
        return _with_tokens(array)
    return array.item() if array.ndim == 0 else np.ascontiguousarray(array)


def tensor_bytes(t: Tensor) -> memoryview:
    """Little-endian row-major bytes of `t` in its own dtype: a view, copied only where `t` is not contiguous."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data


def dtype_name(t: Tensor) -> str:
    """The wire name of a tensor's dtype."""
    return DTYPE_NAMES.get(t.dtype, str(t.dtype).removeprefix("torch."))


def _with_tokens(array: np.ndarray) -> Any:
    out = array.astype(object)
    out[np.isnan(array)] = "NaN"
    out[np.isposinf(array)] = "Infinity"
    out[np.isneginf(array)] = "-Infinity"
    return out.item() if array.ndim == 0 else out.tolist()


# --- the Open Inference Protocol (KServe v2 / Triton) ----------------------------------------------

V2_DATATYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
"""The protocol's datatypes lossd reads and writes (BYTES, strings, has no place in a loss)."""

V2_NAMES: dict[torch.dtype, str] = {v: k for k, v in V2_DATATYPES.items()}


def decode_v2(
    name: str,
    datatype: str,
    shape: Any,
    data: Any,
    raw: bytes | memoryview | None,
    limits: Limits = DEFAULTS,
    raw_field: str = "binary_data_size",
) -> RawTensor:
    """One v2 input: JSON `data` (row-major, flat or nested) or its binary bytes, of `datatype` and `shape`;
    `raw_field` names where the bytes came from, in errors."""
    dtype = _v2_dtype(name, datatype)
    dims = _shape(shape, name, limits)
    if raw is not None:
        return RawTensor(from_bytes(raw, dtype, dims, (name, raw_field)), typed=True)
    if data is None:
        raise InvalidTensor(f"{name}: needs 'data', or binary data with a 'binary_data_size' parameter", loc=(name,))
    flat = _nested_to_tensor(data, (name, "data"), limits.max_dims).reshape(-1)
    return RawTensor(_cast(_reshape(flat, dims, name), dtype, (name, "data")), typed=True)


V2_CONTENTS: dict[str, tuple[str, type[np.generic]]] = {
    "BOOL": ("bool_contents", np.bool_),
    "UINT8": ("uint_contents", np.int64),  # uint32 values, read as int64: torch compares no uint32 tensors
    "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}
"""The gRPC typed-contents field of each datatype, and the type of its values (FP16 and BF16 have none: they
travel as raw bytes)."""

_CONTENTS_FIELDS = (*dict.fromkeys(f for f, _ in V2_CONTENTS.values()), "uint64_contents", "bytes_contents")


def decode_v2_contents(
    name: str, datatype: str, shape: list[int], contents: Any, limits: Limits = DEFAULTS
) -> RawTensor:
    """One gRPC input from its typed `contents` (an `InferTensorContents`): the repeated field of its datatype,
    read in one numpy call; values its datatype cannot hold are refused, as in JSON."""
    dtype = _v2_dtype(name, datatype)
    dims = _shape(shape, name, limits)
    if datatype not in V2_CONTENTS:
        raise InvalidTensor(
            f"{name}: {datatype} has no typed contents field; send its bytes in raw_input_contents",
            loc=(name, "contents"),
        )
    field, value_type = V2_CONTENTS[datatype]
    for other in _CONTENTS_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise InvalidTensor(
                f"{name}: the values of a {datatype} tensor go in contents.{field}, not contents.{other}",
                loc=(name, "contents", other),
            )
    values = getattr(contents, field)
    flat = torch.from_numpy(np.fromiter(values, dtype=value_type, count=len(values)))
    return RawTensor(_cast(_reshape(flat, dims, name), dtype, (name, "contents")), typed=True)


def _v2_dtype(name: str, datatype: str) -> torch.dtype:
    dtype = V2_DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidTensor(
            f"{name}: unsupported datatype {datatype!r}; expected one of {list(V2_DATATYPES)}", loc=(name, "datatype")
        )
    return dtype


def encode_v2(name: str, t: Tensor, binary: bool) -> tuple[dict[str, Any], memoryview | bytes]:
    """One v2 output: its JSON object, and its bytes when it travels as binary data (else b"")."""
    out: dict[str, Any] = {"name": name, "datatype": V2_NAMES[t.dtype], "shape": list(t.shape)}
    if binary:
        raw = tensor_bytes(t)
        out["parameters"] = {"binary_data_size": len(raw)}
        return out, raw
    data = encode_tensor(t.reshape(-1))
    out["data"] = data if isinstance(data, list | np.ndarray) else [data]
    return out, b""


def split_binary(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """A body with the binary extension: the JSON header (Inference-Header-Content-Length bytes), then data."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise MalformedBody(
            f"Inference-Header-Content-Length must be a byte count of at most the body's {len(body)}, "
            f"got {header_length!r}"
        )
    size = int(header_length)
    return body[:size], memoryview(body)[size:]


# --- content encodings -----------------------------------------------------------------------------

CONTENT_ENCODINGS = ("gzip", "deflate", "identity")


_GZIP_MEMBERS = 64
"""The most gzip members one body may hold. Each costs zlib a fresh state (about 4 µs): a bound keeps a
body of millions of empty 20-byte members from costing seconds. Clients send one."""


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A request body without its Content-Encoding (gzip, deflate), never inflated beyond `limit` bytes.

    The body must be whole compressed data and nothing else: a truncated stream, or any byte after its
    end (zero padding included), is a malformed body. A gzip body may hold several members one after
    another, as RFC 1952 (2.2) allows and `gzip.decompress` reads, up to `_GZIP_MEMBERS`: their contents
    are joined, within `limit` together. A deflate body (HTTP's "deflate": one zlib stream, RFC 1950)
    has no members to follow it.
    """
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in CONTENT_ENCODINGS:
        raise UnsupportedMediaType(
            f"unsupported content-encoding {encoding!r}; expected gzip, deflate or identity", loc=("content-encoding",)
        )
    wbits = 16 + zlib.MAX_WBITS if name == "gzip" else zlib.MAX_WBITS
    view = memoryview(body)
    parts: list[bytes] = []
    size = at = 0
    step = len(body)  # the first stream whole; later members in growing pieces, as zlib copies what is left over
    for _ in range(_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits)
        while not inflater.eof:
            if at == len(body):
                raise MalformedBody(f"the {name} body is truncated")
            piece = view[at : at + step]
            try:
                out = inflater.decompress(piece, limit + 1 - size)  # never 0 (no limit): size <= limit here
            except zlib.error as exc:
                raise MalformedBody(f"the {name} body cannot be decompressed: {exc}") from None
            size += len(out)
            if size > limit:
                raise PayloadTooLarge(f"the decompressed body exceeds the limit of {limit} bytes", limit=limit)
            parts.append(out)
            at += len(piece) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
            step *= 2
        if at == len(body):
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if name != "gzip" or body[at : at + 2] != b"\x1f\x8b":
            raise MalformedBody(f"the {name} body has {len(body) - at} bytes after the end of its compressed data")
        step = 1 << 16
    raise MalformedBody(f"the gzip body holds more than {_GZIP_MEMBERS} members, the most lossd reads")


def compress(body: bytes | memoryview, accept_encoding: str | None) -> tuple[bytes | memoryview, str | None]:
    """`body` compressed with the first of gzip or deflate that `accept_encoding` allows (or as is)."""
    accepted = {part.split(";")[0].strip().lower() for part in (accept_encoding or "").split(",")}
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=1), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None
