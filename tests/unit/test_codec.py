"""The codec: every wire form and dtype round-trips exactly; bad payloads fail with a precise `loc`."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from service import codec
from service.errors import InvalidRequest, InvalidTensor, MalformedBody, PayloadTooLarge
from service.losses.registry import TensorKind
from service.rpc import grpc_service_pb2 as pb
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


def test_an_integer_past_its_dtype_is_named_by_its_place() -> None:
    """The message leads with the element's place, as over the v2 protocol and gRPC the message is all a client
    sees: `data` in JSON (a flat index, however nested the array), `contents` in gRPC's typed contents."""
    with pytest.raises(InvalidTensor) as info:
        codec.decode_tensor({"data": [1, 300], "dtype": "int8"}, "target")
    assert info.value.errors[0].loc == ("target", "data", 1)
    assert info.value.detail == "target.data[1]: value 300 does not fit int8 (integers -128 to 127)"
    with pytest.raises(InvalidTensor) as info:
        codec.decode_v2("target", "UINT8", [2, 2], [[0, 1], [-1, 2]], None)
    assert info.value.errors[0].loc == ("target", "data", 2)
    assert info.value.detail == "target.data[2]: value -1 does not fit uint8 (integers 0 to 255)"
    with pytest.raises(InvalidTensor) as info:
        codec.decode_v2_contents("target", "INT8", [2], pb.InferTensorContents(int_contents=[0, 300]))
    assert info.value.errors[0].loc == ("target", "contents", 1)
    assert info.value.detail == "target.contents[1]: value 300 does not fit int8 (integers -128 to 127)"


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


# --- one meaning for every body: repeated keys are refused by every parser, at every size ------------

LARGE = codec.SIMD_MIN_BYTES


def _padded(body: bytes) -> bytes:
    """The same document past the fast-path threshold: whitespace before its last bracket."""
    return body[:-1] + b" " * LARGE + body[-1:]


def _repeated_loc(body: bytes) -> tuple[Any, ...]:
    with pytest.raises(InvalidRequest) as info:
        codec.loads(body)
    error = info.value
    assert error.errors[0].loc[-1] in error.detail, error.detail  # the detail names the key
    assert "more than once" in error.detail
    return error.errors[0].loc


REPEATED: list[tuple[bytes, tuple[Any, ...]]] = [
    (b'{"input": [3.0], "input": [1.0], "target": [0.0]}', ("input",)),
    (b'{"input": [[0.1]], "target": [[0.3]], "target": [[0.2]]}', ("target",)),
    (b'{"input": {"data": [1.0], "data": [2.0], "shape": [1]}, "target": [0.0]}', ("input", "data")),
    (b'{"input": [1.0], "\\u0069nput": [2.0], "target": [0.0]}', ("input",)),  # the same key once decoded
    (b'{"id": "a:b", "input": [1.0], "id": "c:d"}', ("id",)),  # strings holding ':' too
    (b'{"note": "\\u003a", "input": [1.0], "input": [2.0]}', ("input",)),  # an escape that writes a ':'
    (b'{"input": [1.0, {"a": 1, "a": 2}]}', ("input", 1, "a")),  # an object inside an array of numbers
    (b'{"input": [1.0], "b": 123456789012345678901234567890, "input": [2]}', ("input",)),  # past 64 bits
    # /v1/evaluate: in an entry, in an entry's renames, among the shared tensors
    (b'{"tensors": {"x": [1.0]}, "losses": [{"name": "mse"}, {"name": "l1", "name": "mse"}]}', ("losses", 1, "name")),
    (
        b'{"tensors": {"x": [1.0]}, "losses": [{"name": "mse", "tensors": {"input": "x", "input": "x"}}]}',
        ("losses", 0, "tensors", "input"),
    ),
    (b'{"tensors": {"x": [1.0], "x": [2.0]}, "losses": [{"name": "mse"}]}', ("tensors", "x")),
    # the Open Inference Protocol's JSON: inputs, their parameters, the request's parameters
    (
        b'{"inputs": [{"name": "input", "name": "target", "shape": [1], "datatype": "FP32", "data": [1.0]}]}',
        ("inputs", 0, "name"),
    ),
    (
        b'{"inputs": [{"name": "input", "parameters": {"binary_data_size": 4, "binary_data_size": 8}}]}',
        ("inputs", 0, "parameters", "binary_data_size"),
    ),
    (b'{"parameters": {"reduction": "sum", "reduction": "mean"}, "inputs": []}', ("parameters", "reduction")),
    (b'[{"a": 1}, {"a": 1, "a": 1}]', (1, "a")),
    (b'{"a": {"b": {"c": [[{"d": 1, "d": 2}]]}}}', ("a", "b", "c", 0, 0, "d")),
]


@pytest.mark.parametrize("size", ["small", "padded"])
@pytest.mark.parametrize(("body", "loc"), REPEATED)
def test_repeated_keys_are_refused_at_every_size(body: bytes, loc: tuple[Any, ...], size: str) -> None:
    """orjson keeps the last of two values and simdjson the first: neither may decide what a body means."""
    body = _padded(body) if size == "padded" else body
    assert (len(body) >= LARGE) == (size == "padded")
    assert _repeated_loc(body) == loc


@pytest.mark.parametrize(("body", "loc"), REPEATED)
def test_both_exact_looks_name_the_same_place(body: bytes, loc: tuple[Any, ...]) -> None:
    if b"1234567890123456789012345" not in body:  # simdjson cannot read numbers past 64 bits
        assert codec._repeated_key_simdjson(body) == loc
    assert codec._repeated_key_json(body) == loc


ACCEPTED = [
    b'{"input": [1.0], "target": [2.0]}',
    b'{"id": "a:b", "input": [1.0], "note": {"at": "12:00:00", "k:e:y": ["x:y", 1]}}',
    b'{"id": "\\u003a", "input": [1.0], "target": [2.0]}',
    b'{"input": [1.0, {"a": 1, "b": 2}], "s": ":"}',
    b'{"big": 123456789012345678901234567890, "s": ":", "t": [{"a": 1}]}',
    b'{"input": "NaN", "u": "\\u00e9:"}',
    b'[1, "a:b", {"c": ":"}]',
]


@pytest.mark.parametrize("size", ["small", "padded"])
@pytest.mark.parametrize("body", ACCEPTED)
def test_bodies_without_repeats_read_as_orjson_reads_them(body: bytes, size: str) -> None:
    body = _padded(body) if size == "padded" else body
    assert codec.loads(body) == orjson.loads(body)
    if b"1234567890123456789012345" not in body:  # simdjson cannot read numbers past 64 bits
        assert codec._repeated_key_simdjson(body) is None
    assert codec._repeated_key_json(body) is None
    assert codec.loads(b'"a:b"') == "a:b"


@pytest.fixture
def fast_path(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the simdjson fast path returned, call by call."""
    returned: list[Any] = []
    read = codec._loads_flat_arrays

    def spy(body: bytes) -> Any:
        returned.append(read(body))
        return returned[-1]

    monkeypatch.setattr(codec, "_loads_flat_arrays", spy)
    return returned


def _big(**fields: Any) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_SERIALIZE_NUMPY)


def test_repeated_keys_are_refused_on_the_fast_path(fast_path: list[Any]) -> None:
    values = np.random.default_rng(5).standard_normal(BIG)
    body = _big(input=values, target={"data": values, "dtype": "float32"}).replace(
        b'"dtype":"float32"', b'"dtype":"float32","dtype":"float64"'
    )
    assert _repeated_loc(body) == ("target", "dtype")
    assert fast_path[0] is not None  # simdjson read it (keeping the first dtype): the check ran after
    fast_path.clear()
    top = _big(beta=0.5, input=values).replace(b'"beta":0.5', b'"beta":0.5,"beta":2.0')
    assert _repeated_loc(top) == ("beta",)
    assert fast_path[0] is not None


def test_large_bodies_with_colons_in_strings_stay_on_the_fast_path(fast_path: list[Any]) -> None:
    values = np.random.default_rng(6).standard_normal(BIG)
    for note in ("12:00:00", "\\u003a"):  # counted exactly; an escape is looked at exactly
        body = _big(id="x", input=values).replace(b'"id":"x"', b'"id":"' + note.encode() + b'"')
        read = codec.loads(body)
        assert isinstance(read["input"], np.ndarray)
        assert read["id"] == orjson.loads(body)["id"]
    assert all(r is not None for r in fast_path)


def test_large_bodies_of_many_objects_are_looked_at_by_the_standard_library() -> None:
    entries = [{"name": "mse", "reduction": "sum"}] * 2000
    body = orjson.dumps({"note": "a:b", "losses": [*entries, {"name": "l1"}]}).replace(
        b'{"name":"l1"}', b'{"name":"l1","name":"mse"}'
    )
    assert body.count(b"{") * 256 > len(body)
    assert _repeated_loc(body) == ("losses", 2000, "name")


def test_wide_objects_stay_linear() -> None:
    """simdjson finds a field by reading the keys in turn: wide objects are read by orjson."""
    wide = {f"k{i}": i for i in range(20_000)}
    body = _big(input=np.zeros(BIG), **wide)
    assert codec.loads(body)["k19999"] == 19_999
    repeated = body[:-1] + b',"k5":6}'
    assert _repeated_loc(repeated) == ("k5",)
    assert codec._repeated_key_json(repeated) == ("k5",)
    with pytest.raises(codec._Unreadable):
        codec._repeated_key_simdjson(repeated)


def test_nesting_deeper_than_python_recurses() -> None:
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    value = codec.loads(deep)
    for _ in range(1000):
        value = value["a"]
    assert value == 1
    repeated = b'{"a":' * 1000 + b'{"b": 1, "b": 2}' + b"}" * 1000
    assert _repeated_loc(repeated) == ("a",) * 1000 + ("b",)
    arrays = b"[" * 1000 + b'{"b": 1, "b": 2}' + b"]" * 1000
    assert _repeated_loc(arrays) == (0,) * 1000 + ("b",)


def test_tensor_arrays_are_not_walked() -> None:
    """Counting keys skips arrays by their first element: a million numbers cost nothing extra."""
    assert codec._object_keys({"input": [[0.5] * 1000] * 1000, "target": [0.5] * 1_000_000, "x": {"y": []}}) == 4
    assert codec._object_keys([{"a": 1}, [{"b": 1, "c": 2}], [1.0, {"hidden": 1}]]) == 3  # the hidden one: skipped
    assert codec._holds(b":" * 10, b":", 10)
    assert not codec._holds(b"x" * 100_000 + b":", b":", 0)
    assert codec._holds(b"x" * 100_000 + b":" + b"y" * 100_000, b":", 1)
    assert not codec._holds(b"x" * 100_000 + b"::", b":", 1)


# --- content encodings ----------------------------------------------------------------------------

DOC = b'{"input": [1.0, 2.0], "target": [1.5, 2.5]}'
PACK: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "deflate": zlib.compress}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_bytes_after_the_compressed_data_are_refused(encoding: str) -> None:
    packed = PACK[encoding](DOC)
    assert codec.decompress(packed, encoding, 1 << 20) == DOC
    for junk in (b"x", b"\0", b"\0" * 8, b"<html>", b"\x1f"):
        with pytest.raises(MalformedBody, match="after the end"):
            codec.decompress(packed + junk, encoding, 1 << 20)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_truncated_streams_are_refused(encoding: str) -> None:
    packed = PACK[encoding](DOC)
    for cut in (b"", packed[:5], packed[:-1], packed[: len(packed) // 2]):
        with pytest.raises(MalformedBody):
            codec.decompress(cut, encoding, 1 << 20)


def test_gzip_members_are_joined() -> None:
    """RFC 1952 2.2: a gzip file is a series of members; each is read, and the contents joined."""
    halves = gzip.compress(DOC[:10]) + gzip.compress(DOC[10:])
    assert codec.decompress(halves, "gzip", 1 << 20) == DOC == gzip.decompress(halves)
    big = os.urandom(3 << 20)  # a second member read in several pieces
    assert codec.decompress(gzip.compress(b"[") + gzip.compress(big), "gzip", 4 << 20) == b"[" + big
    with pytest.raises(MalformedBody, match="truncated"):
        codec.decompress(halves + gzip.compress(b" ")[:-2], "gzip", 1 << 20)
    with pytest.raises(MalformedBody, match="cannot be decompressed"):
        codec.decompress(halves + b"\x1f\x8bnot a member", "gzip", 1 << 20)
    member = gzip.compress(b" ")
    assert codec.decompress(member * codec._GZIP_MEMBERS, "gzip", 1 << 20) == b" " * codec._GZIP_MEMBERS
    with pytest.raises(MalformedBody, match="members"):
        codec.decompress(member * (codec._GZIP_MEMBERS + 1), "gzip", 1 << 20)


def test_deflate_has_one_stream() -> None:
    with pytest.raises(MalformedBody, match="after the end"):
        codec.decompress(zlib.compress(DOC) + zlib.compress(DOC), "deflate", 1 << 20)


def test_the_decompression_limit_holds_across_members() -> None:
    two = gzip.compress(b"x" * 6) + gzip.compress(b"y" * 6)
    assert codec.decompress(two, "gzip", 12) == b"x" * 6 + b"y" * 6
    with pytest.raises(PayloadTooLarge) as info:
        codec.decompress(two, "gzip", 11)
    assert info.value.limit == 11
    bomb = gzip.compress(b"\0" * (8 << 20))
    with pytest.raises(PayloadTooLarge):
        codec.decompress(bomb, "gzip", 1 << 20)
    assert codec.decompress(DOC, None, 10) == DOC  # identity: the body limit applies elsewhere


def test_arrays_longer_than_simdjson_counts_are_read_whole() -> None:
    """simdjson counts an array's elements in 24 bits; past 2^24 - 1 its list conversion returned too few items
    and then aborted the process (heap corruption). Such arrays are read in full, or refused, never cut short."""
    n = (1 << 24) + 1
    for body in (
        b'{"input": [' + b"0," * (n - 1) + b'{}], "target": [1.0]}',  # not all numbers: read by orjson
        b'{"input": [' + b"0," * (n - 1) + b'0], "target": [1.0]}',  # all numbers: simdjson's buffer
    ):
        value = codec.loads(body)
        assert len(value["input"]) == n
    with pytest.raises(InvalidTensor):
        codec.decode_tensor(codec.loads(b'{"input": [' + b"0," * (n - 1) + b"{}]}")["input"], "input")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_a_number_past_a_float_dtype_is_found_among_many(dtype: torch.dtype) -> None:
    """One value past the dtype's range among a million is found and located, in every JSON form that declares
    a dtype; torch's conversion of the same value is infinite, and of the values before it finite."""
    values = np.linspace(-1.0, 1.0, 1_000_000)
    values[876_543] = torch.finfo(dtype).max * 4
    assert torch.from_numpy(values).to(dtype).isinf().nonzero().flatten().tolist() == [876_543]
    name = wire.NAMES[dtype]
    with pytest.raises(InvalidTensor) as info:
        codec.decode_tensor({"data": values.tolist(), "dtype": name}, "input")
    assert info.value.errors[0].loc == ("input", "data", 876_543)
    message = (
        f"input.data[876543]: value {values[876_543]} exceeds the range of {name} (max {torch.finfo(dtype).max:.8g})"
    )
    assert info.value.detail == message
    datatype = {torch.float16: "FP16", torch.bfloat16: "BF16", torch.float32: "FP32"}[dtype]
    with pytest.raises(InvalidTensor) as info:
        codec.decode_v2("input", datatype, [1000, 1000], values.reshape(1000, 1000).tolist(), None)
    assert info.value.errors[0].loc == ("input", "data", 876_543)
    assert info.value.detail == message  # the place in the flat `data`, however nested the array
    values[876_543] = torch.finfo(dtype).max
    decoded = codec.decode_tensor({"data": values.tolist(), "dtype": name}, "input").tensor
    assert torch.equal(decoded, torch.from_numpy(values).to(dtype))
