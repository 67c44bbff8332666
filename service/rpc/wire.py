"""A `ModelInferRequest` read from its bytes with its `raw_input_contents` left where they arrived.

protobuf's parser copies each bytes field into the message, and reading the field copies it again into a Python
`bytes`: two copies of every raw tensor (about 0.9 ms each for 8 MB here) before lossd makes its own. The top
level of the message is walked here instead (a handful of fields in any real request: model name, id,
parameters, inputs, outputs, raw contents); each raw content becomes a view of the received bytes, and the rest
of the message, small, is parsed by protobuf as usual.

Typed `contents` are parsed by protobuf, but first counted where they lie (`parse_cost`): a packed integer takes a
byte on the wire and 24 once read, and the in-flight bound must see that before it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from service.config import MAX_DIMS
from service.errors import InvalidRequest, MalformedBody
from service.rpc import grpc_service_pb2 as pb

RAW_INPUT_CONTENTS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
MAX_FIELDS = 1024
"""Top-level fields a request may have: every input, output, parameter and raw content is one; no loss takes
anywhere near this many."""

TOO_MANY_FIELDS = f"the request has more than {MAX_FIELDS} top-level fields (inputs, outputs, parameters, raw contents)"
TOO_MANY_CONTENTS = (
    f"an input's typed contents have more than {MAX_FIELDS} fields: protobuf packs a repeated number field into one "
    "field (unpacked, each number is one); send them packed, or as raw_input_contents"
)

_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5


def _varint(data: bytes | memoryview, at: int) -> tuple[int, int]:
    """The varint at `at` and the offset after it."""
    value = shift = 0
    while shift < 64:
        if at >= len(data):
            raise DecodeError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise DecodeError("varint over 64 bits")


INPUTS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["inputs"].number
CONTENTS = pb.ModelInferRequest.InferInputTensor.DESCRIPTOR.fields_by_name["contents"].number
SHAPE = pb.ModelInferRequest.InferInputTensor.DESCRIPTOR.fields_by_name["shape"].number
_ITEMSIZE = {
    FieldDescriptor.TYPE_BOOL: 1,
    FieldDescriptor.TYPE_INT32: 4,
    FieldDescriptor.TYPE_UINT32: 4,
    FieldDescriptor.TYPE_FLOAT: 4,
}
_COST = {
    field.number: 1 if field.type == field.TYPE_BYTES else 2 * _ITEMSIZE.get(field.type, 8) + 8
    for field in pb.InferTensorContents.DESCRIPTOR.fields
}
"""What each element of a typed contents field builds once read, by field number: its size in protobuf's array and
in numpy's, and 8 bytes in a tensor of the widest dtype (bytes_contents: its bytes, once; lossd reads none)."""
_BYTES = pb.InferTensorContents.DESCRIPTOR.fields_by_name["bytes_contents"].number
_WIDTH = {
    field.number: _ITEMSIZE.get(field.type, 8)
    for field in pb.InferTensorContents.DESCRIPTOR.fields
    if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE)
}
"""Typed contents fields of fixed-size elements (fp32, fp64) and their size; the others are varints or bytes."""


def _fields(data: memoryview, too_many: str) -> list[tuple[int, memoryview | None, memoryview]]:
    """The fields of a message: (number, payload of a length-delimited one else None, the whole field); past
    `MAX_FIELDS`, the error `too_many`."""
    out: list[tuple[int, memoryview | None, memoryview]] = []
    at = 0
    while at < len(data):
        if len(out) == MAX_FIELDS:
            raise InvalidRequest(too_many)
        start = at
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        payload = None
        if wire == _LENGTH_DELIMITED:
            length, at = _varint(data, at)
            payload = data[at : at + length]
            at += length
        elif wire == _VARINT:
            _, at = _varint(data, at)
        elif wire in (_FIXED64, _FIXED32):
            at += 8 if wire == _FIXED64 else 4
        else:  # groups (3, 4): these messages have none
            raise DecodeError(f"wire type {wire}")
        if at > len(data):
            raise DecodeError("truncated field")
        out.append((number, payload, data[start:at]))
    return out


def _varints(packed: memoryview) -> int:
    """The numbers in a packed varint field: one ends at each byte below 0x80."""
    return int(np.count_nonzero(np.frombuffer(packed, dtype=np.uint8) < 0x80))


def parse_cost(data: bytes) -> int:
    """What parsing the message's typed contents builds, in bytes, from its wire form without parsing it."""
    return _cost(_fields(memoryview(data), TOO_MANY_FIELDS))


def _cost(fields: list[tuple[int, memoryview | None, memoryview]]) -> int:
    """`parse_cost` of a message's top-level `fields` (`_COST` an element). A packed integer takes as little as one
    byte on the wire (a zero) and 24 once read: 16 MB of zeros would build hundreds of MB before the in-flight bound
    could refuse them. A shape of more than `MAX_DIMS` dimensions (a shape of 15M packed zeros took seconds to read
    and quote) is refused here, before it is read."""
    cost = 0
    for number, payload, _ in fields:
        if number != INPUTS or payload is None:
            continue
        for inner, contents, _ in _fields(payload, f"an input has more than {MAX_FIELDS} fields"):
            if contents is None:
                continue
            if inner == SHAPE and (dims := _varints(contents)) > MAX_DIMS:
                raise InvalidRequest(
                    f"an input's shape has {dims} dimensions, more than any tensor may ({MAX_DIMS})", loc=("inputs",)
                )
            if inner != CONTENTS:
                continue
            for field, values, _ in _fields(contents, TOO_MANY_CONTENTS):
                if values is None:  # one element, not packed
                    elements = 1
                elif field in _WIDTH:
                    elements = len(values) // _WIDTH[field]
                elif field == _BYTES:
                    elements = len(values)
                else:
                    elements = _varints(values)
                cost += elements * _COST.get(field, 24)
    return cost


def parse(data: bytes, hold: Callable[[int], None] | None = None) -> tuple[Any, list[memoryview]]:
    """The `ModelInferRequest` in `data` without its raw contents, and those as views of `data` (the top level
    walked once); `hold` is given what parsing its typed contents will build (`parse_cost`) first, and may refuse
    it."""
    try:
        fields = _fields(memoryview(data), TOO_MANY_FIELDS)
        if hold is not None:
            hold(_cost(fields))
        raw: list[memoryview] = []
        rest: list[memoryview] = []
        for number, payload, field in fields:
            if number == RAW_INPUT_CONTENTS and payload is not None:
                raw.append(payload)
            else:
                rest.append(field)
        return pb.ModelInferRequest.FromString(b"".join(rest) if raw else data), raw
    except DecodeError:
        raise MalformedBody("the message is not a ModelInferRequest") from None
