"""`service.rpc.wire`: a ModelInferRequest read with its raw contents left in place is the message protobuf
reads, field for field, and its raw contents are the same bytes."""

from __future__ import annotations

import random
from typing import Any

import pytest
from google.protobuf.message import DecodeError

from service.config import MAX_DIMS
from service.errors import InvalidRequest, MalformedBody, PayloadTooLarge
from service.rpc import grpc_service_pb2 as pb
from service.rpc import wire


def request(raw: list[bytes], *, typed: bool = False) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="cross_entropy", model_version="1", id="batch-7")
    message.parameters["label_smoothing"].double_param = 0.1
    message.parameters["ignore_index"].int64_param = -100
    message.parameters["sequence_id"].string_param = "ab" * 16
    for i in range(len(raw) or 2):
        tensor = message.inputs.add(name=f"t{i}", datatype="FP32", shape=[3, 300])
        if typed:
            tensor.contents.fp32_contents.extend(float(x) for x in range(900))
    message.outputs.add(name="loss")
    message.raw_input_contents.extend(raw)
    return message


def assert_read_as_protobuf(data: bytes) -> None:
    expected = pb.ModelInferRequest.FromString(data)
    got, raw = wire.parse(data)
    assert [bytes(r) for r in raw] == list(expected.raw_input_contents)
    expected.ClearField("raw_input_contents")
    assert got == expected
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    "raw",
    [[], [b""], [b"\x00" * 12, b"\xff" * 3600], [bytes(range(256)) * 70_000, b"x"]],
    ids=["none", "empty", "two", "large"],
)
def test_same_message_and_bytes_as_protobuf(raw: list[bytes]) -> None:
    assert_read_as_protobuf(request(raw).SerializeToString())
    assert_read_as_protobuf(request(raw, typed=True).SerializeToString())


def test_raw_contents_are_views_of_the_message_not_copies() -> None:
    data = request([b"a" * 1000, b"b" * 2000]).SerializeToString()
    _, raw = wire.parse(data)
    assert [r.obj is data for r in raw] == [True, True]
    assert [r.nbytes for r in raw] == [1000, 2000]


def test_fields_in_any_order_repeated_and_unknown() -> None:
    """protobuf's semantics hold whatever the order: fields split by raw contents, a scalar sent twice (the last
    wins), fields this proto does not know (kept as unknown fields)."""
    rng = random.Random(5)
    parts = [
        pb.ModelInferRequest(model_name="mse").SerializeToString(),
        pb.ModelInferRequest(raw_input_contents=[b"first" * 9]).SerializeToString(),
        pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="input")]).SerializeToString(),
        pb.ModelInferRequest(raw_input_contents=[b"second"]).SerializeToString(),
        pb.ModelInferRequest(model_name="l1", id="x").SerializeToString(),
        b"\xa0\x06\x96\x01",  # field 100, varint 150
        b"\xa9\x06" + b"\x01" * 8,  # field 101, fixed64
        b"\xb5\x06" + b"\x02" * 4,  # field 102, fixed32
        b"\xba\x06\x03abc",  # field 103, bytes
    ]
    assert_read_as_protobuf(b"".join(parts))
    for _ in range(20):
        rng.shuffle(parts)
        assert_read_as_protobuf(b"".join(parts))


@pytest.mark.parametrize(
    "data",
    [
        request([b"abc"]).SerializeToString()[:-1],  # a raw content cut short
        request([]).SerializeToString()[:-1],  # another field cut short
        b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a length past 64 bits
        b"\x3a",  # a tag and no length
        b"\xa9\x06\x01\x01",  # fixed64 cut short
        b"\xab\x06",  # a group (wire type 3)
        b"\x0a\x02\xff\xfe",  # model_name that is not UTF-8
    ],
    ids=["raw-truncated", "field-truncated", "varint-overflow", "no-length", "fixed64-truncated", "group", "utf8"],
)
def test_malformed_messages_are_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(data)
    with pytest.raises(MalformedBody, match="the message is not a ModelInferRequest"):
        wire.parse(data)


def test_more_top_level_fields_than_any_loss_takes() -> None:
    """A message of a million tiny fields is refused after MAX_FIELDS of them, not walked to its end."""
    many = pb.ModelInferRequest(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor()] * 1_000_000)
    data = many.SerializeToString()
    with pytest.raises(InvalidRequest, match=f"more than {wire.MAX_FIELDS} top-level fields"):
        wire.parse(data)
    at_limit = pb.ModelInferRequest(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor()] * wire.MAX_FIELDS)
    assert_read_as_protobuf(at_limit.SerializeToString())


def _contents_request(field: str, values: list[Any]) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="mse")
    getattr(message.inputs.add(name="input", datatype="FP32", shape=[len(values)]).contents, field).extend(values)
    message.raw_input_contents.append(b"\0" * 4096)  # raw bytes cost nothing more: they are read in place
    return message


@pytest.mark.parametrize(
    ("field", "values", "itemsize"),
    [
        ("int64_contents", [0] * 5000 + [-1, 2**62], 8),  # 1 byte on the wire for a zero, 10 for -1
        ("uint64_contents", [1, 300, 2**64 - 1], 8),
        ("int_contents", [0, -5, 2**31 - 1], 4),
        ("uint_contents", [0, 127, 128], 4),
        ("bool_contents", [True, False] * 7, 1),
        ("fp32_contents", [0.5] * 1000, 4),
        ("fp64_contents", [0.25] * 100, 8),
    ],
)
def test_parse_cost_counts_what_parsing_typed_contents_builds(field: str, values: list[Any], itemsize: int) -> None:
    """Each element of typed contents costs its size twice (protobuf's array, numpy's) and 8 bytes (a tensor of
    the widest dtype), whatever it took on the wire: packed varints are counted, not parsed."""
    data = _contents_request(field, values).SerializeToString()
    assert wire.parse_cost(data) == len(values) * (2 * itemsize + 8)
    held: list[int] = []
    message, raw = wire.parse(data, held.append)
    assert held == [wire.parse_cost(data)]
    assert list(getattr(message.inputs[0].contents, field)) == values
    assert [bytes(r) for r in raw] == [b"\0" * 4096]


def test_a_refused_cost_stops_the_parse() -> None:
    data = _contents_request("int64_contents", [0] * 100_000).SerializeToString()
    refused = PayloadTooLarge("no room")

    def hold(nbytes: int) -> None:
        assert nbytes == 100_000 * 24  # 100 kB on the wire, 2.4 MB once parsed
        raise refused

    with pytest.raises(PayloadTooLarge) as caught:
        wire.parse(data, hold)
    assert caught.value is refused


def test_unpacked_contents_beyond_the_field_limit_are_refused() -> None:
    """protobuf packs a repeated number field; unpacked (accepted by every parser), each number is a field of its
    own, which the cost walk would visit one by one."""
    unpacked = b"".join(bytes([0x18, 0x07]) for _ in range(wire.MAX_FIELDS + 1))  # field 3, varint: 7, each
    assert pb.InferTensorContents.FromString(unpacked).int64_contents == [7] * (wire.MAX_FIELDS + 1)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="INT64", shape=[wire.MAX_FIELDS + 1])
    body = tensor.SerializeToString() + bytes([0x2A]) + _varint(len(unpacked)) + unpacked  # field 5: contents
    data = bytes([0x0A, 3]) + b"mse" + bytes([0x2A]) + _varint(len(body)) + body  # model_name, inputs
    assert len(pb.ModelInferRequest.FromString(data).inputs[0].contents.int64_contents) == wire.MAX_FIELDS + 1
    with pytest.raises(InvalidRequest, match="protobuf packs a repeated number field"):
        wire.parse(data, lambda nbytes: None)


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def test_a_shape_of_more_dimensions_than_any_tensor_may_have_is_refused_before_parsing() -> None:
    """A shape is a packed field too: 15M zeros took seconds to read and to quote in the error."""
    fits = pb.ModelInferRequest(model_name="mse")
    fits.inputs.add(name="input", datatype="FP32", shape=[1] * MAX_DIMS)
    assert wire.parse_cost(fits.SerializeToString()) == 0
    too_many = pb.ModelInferRequest(model_name="mse")
    too_many.inputs.add(name="input", datatype="FP32", shape=[0] * 100_000)
    with pytest.raises(InvalidRequest, match=r"shape has 100000 dimensions, more than any tensor may \(64\)"):
        wire.parse(too_many.SerializeToString(), lambda nbytes: None)
