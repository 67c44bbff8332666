"""`service.rpc.wire`: a ModelInferRequest read with its raw contents left in place is the message protobuf
reads, field for field, and its raw contents are the same bytes."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from service.errors import InvalidRequest, MalformedBody
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
