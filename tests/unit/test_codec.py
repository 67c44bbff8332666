"""The codec: every wire form and dtype round-trips exactly; bad payloads fail with a precise `loc`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from service import codec
from service.errors import InvalidTensor, MalformedBody
from service.losses.registry import TensorKind
from tests import wire

ALL_DTYPES = list(codec.DTYPES.values())


def _sample(dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.tensor([[0.5, -1.25, 3.0], [1e-3, 2.0, -0.0]]).to(dtype)
    return torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_b64_round_trip_every_dtype(dtype: torch.dtype) -> None:
    t = _sample(dtype)
    decoded = codec.decode_tensor(codec.encode_tensor(t, "base64"), "input")
    assert decoded.typed
    assert decoded.tensor.dtype == dtype
    assert torch.equal(decoded.tensor, t)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_flat_round_trip_every_dtype(dtype: torch.dtype) -> None:
    t = _sample(dtype)
    decoded = codec.decode_tensor(
        wire.flat(t.float() if dtype == torch.bfloat16 else t) | {"dtype": codec.dtype_name(t)}, "x"
    )
    assert decoded.tensor.dtype == dtype
    assert torch.equal(decoded.tensor, t)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_json_encoding_is_exact(dtype: torch.dtype) -> None:
    """JSON output holds each value exactly (float32 values are written as their exact float64)."""
    t = _sample(dtype)
    encoded = codec.loads(codec.dumps({"t": codec.encode_tensor(t)}))["t"]
    assert torch.equal(torch.tensor(encoded, dtype=torch.float64), t.double())


def test_nested_is_untyped_and_keeps_int_or_float() -> None:
    ints = codec.decode_tensor([[1, 2], [3, 4]], "target")
    floats = codec.decode_tensor([[1.5, 2], [3, 4]], "input")
    assert not ints.typed
    assert ints.tensor.dtype == torch.int64
    assert not floats.typed
    assert floats.tensor.dtype == torch.float64
    assert floats.tensor.tolist() == [[1.5, 2.0], [3.0, 4.0]]


def test_booleans_read_as_numbers_like_torch_tensor() -> None:
    for value in ([1, True, 0.5], [True, False], True):
        assert torch.equal(codec.decode_tensor(value, "x").tensor.double(), torch.tensor(value).double())


def test_scalar_and_empty() -> None:
    assert codec.decode_tensor(2.5, "x").tensor.shape == ()
    assert codec.decode_tensor([], "x").tensor.shape == (0,)
    assert codec.decode_tensor([[], []], "x").tensor.shape == (2, 0)
    empty = codec.decode_tensor({"b64": "", "shape": [0, 3], "dtype": "float32"}, "x")
    assert empty.tensor.shape == (0, 3)


def test_non_finite_tokens_both_ways() -> None:
    decoded = codec.decode_tensor([1.0, "NaN", "Infinity", "-Infinity"], "x").tensor
    assert decoded[0] == 1.0
    assert math.isnan(decoded[1])
    assert decoded[2] == math.inf
    assert decoded[3] == -math.inf
    encoded = codec.loads(codec.dumps(codec.encode_tensor(decoded.float())))
    assert encoded == [1.0, "NaN", "Infinity", "-Infinity"]
    assert codec.encode_tensor(torch.tensor(math.nan)) == "NaN"
    assert codec.decode_tensor("-Infinity", "x").tensor.item() == -math.inf


def test_matches_numpy_reading() -> None:
    data = np.random.default_rng(0).standard_normal((4, 3, 2)).tolist()
    assert np.array_equal(codec.decode_tensor(data, "x").tensor.numpy(), np.array(data))


def test_strict_json() -> None:
    with pytest.raises(MalformedBody):
        codec.loads(b'{"input": [NaN]}')
    with pytest.raises(MalformedBody):
        codec.loads(b'{"input": [1, 2')


def _loc(value: Any, kind: TensorKind = TensorKind.FLOAT) -> tuple[Any, ...]:
    with pytest.raises(InvalidTensor) as info:
        codec.decode_tensor(value, "input", kind)
    return info.value.errors[0].loc


@pytest.mark.parametrize(
    ("value", "loc"),
    [
        ([[1, 2], [3]], ("input", 1)),
        ([[1, 2], [3, [4]]], ("input", 1, 1)),
        ([[1, 2], 3], ("input", 1)),
        ([1, "x"], ("input", 1)),
        ([1, None], ("input", 1)),
        ([[1.0], [{}]], ("input", 1, 0)),
        ([1, 2**70], ("input", 1)),
        (None, ("input",)),
        ("nan", ("input",)),
        ({"values": [1]}, ("input",)),
        ({"data": [1, 2, 3], "shape": [2, 2]}, ("input", "shape")),
        ({"data": [[1, 2]], "shape": [2]}, ("input", "data")),
        ({"data": [1, 2], "shape": [-2]}, ("input", "shape")),
        ({"b64": "", "shape": [0, 2**40, 2**40], "dtype": "float32"}, ("input", "shape")),
        ({"data": [], "shape": [2**62, 0]}, ("input", "shape")),
        ({"data": [1, 2], "dtype": "float128"}, ("input", "dtype")),
        ({"data": [1.5], "dtype": "int64"}, ("input", "data", 0)),
        ({"data": [300], "dtype": "uint8"}, ("input", "data", 0)),
        ({"data": [1], "extra": 1}, ("input", "extra")),
        ({"b64": "not base64!!", "dtype": "float32"}, ("input", "b64")),
        ({"b64": "AAAA", "dtype": "float32"}, ("input", "b64")),
        ({"b64": "AAAAAAAAAAA=", "shape": [3], "dtype": "float32"}, ("input", "b64")),
        ([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], ("input",)),
    ],
)
def test_bad_payloads_name_the_place(value: Any, loc: tuple[Any, ...]) -> None:
    assert _loc(value) == loc


def test_b64_default_dtype_by_kind() -> None:
    raw = wire.b64(torch.tensor([1, 2], dtype=torch.int64))
    del raw["dtype"]
    assert codec.decode_tensor(raw, "target", TensorKind.INDEX).tensor.tolist() == [1, 2]
    assert _loc(raw, TensorKind.INDEX_OR_PROBABILITY) == ("input", "dtype")


BIG = codec.SIMD_MIN_BYTES // 3  # elements enough for a body past the fast-path threshold


def _fast_and_slow(body: bytes) -> tuple[Any, Any]:
    assert len(body) >= codec.SIMD_MIN_BYTES
    return codec.loads(body), orjson_loads(body)


def orjson_loads(body: bytes) -> Any:
    import orjson

    return orjson.loads(body)


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).standard_normal(BIG),
        np.random.default_rng(2).integers(-(2**40), 2**40, BIG),
        np.random.default_rng(3).standard_normal(BIG).astype(np.float32),
    ],
    ids=["float64", "int64", "float32"],
)
def test_large_flat_arrays_read_fast_and_exactly(values: np.ndarray) -> None:
    import orjson

    body = orjson.dumps(
        {"input": values, "target": {"data": values, "shape": [len(values)]}, "beta": 0.5},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    fast, slow = _fast_and_slow(body)
    assert isinstance(fast["input"], np.ndarray)  # the fast path ran
    assert fast["beta"] == 0.5
    assert fast["target"]["shape"] == [len(values)]
    for got, want in ((fast["input"], slow["input"]), (fast["target"]["data"], slow["target"]["data"])):
        assert torch.equal(codec.decode_tensor(got, "x").tensor, codec.decode_tensor(want, "x").tensor)


def test_large_nested_or_ragged_arrays_take_the_exact_path() -> None:
    import orjson

    rows = np.random.default_rng(4).standard_normal((BIG // 4, 4)).tolist()
    fast, _ = _fast_and_slow(orjson.dumps({"input": rows}))
    assert codec.decode_tensor(fast["input"], "input").tensor.shape == (BIG // 4, 4)
    ragged = [*rows[:-1], rows[-1][:3]]
    fast, _ = _fast_and_slow(orjson.dumps({"input": ragged}))
    assert _loc(fast["input"]) == ("input", len(ragged) - 1)
    mixed = [1.0] * BIG + [[2.0]]  # flat but for one element: simdjson alone would flatten it away
    fast, _ = _fast_and_slow(orjson.dumps({"input": mixed}))
    assert _loc(fast["input"]) == ("input", BIG)


def test_large_arrays_with_tokens_or_brackets_in_strings() -> None:
    import orjson

    values = [0.5] * BIG
    fast, _ = _fast_and_slow(orjson.dumps({"input": [*values, "NaN"], "note": "[not an array]"}))
    decoded = codec.decode_tensor(fast["input"], "input").tensor
    assert decoded.shape == (BIG + 1,)
    assert math.isnan(decoded[-1])


def test_large_bodies_with_numbers_simdjson_cannot_hold() -> None:
    body = b'{"input": [' + b"0.5," * 2000 + b'123456789012345678901234567890], "x": 1}'
    assert len(body) >= codec.SIMD_MIN_BYTES
    decoded = codec.decode_tensor(codec.loads(body)["input"], "input").tensor
    assert decoded[-1].item() == 1.2345678901234568e29  # as orjson reads it
