"""A `ModelInferRequest` read from its bytes with its `raw_input_contents` left where they arrived.

protobuf's parser copies each bytes field into the message, and reading the field copies it again into a Python
`bytes`: two copies of every raw tensor (about 0.9 ms each for 8 MB here) before lossd makes its own. The top
level of the message is walked here instead (a handful of fields in any real request: model name, id,
parameters, inputs, outputs, raw contents); each raw content becomes a view of the received bytes, and the rest
of the message, small, is parsed by protobuf as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

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
_FIXED_FIELDS = {
    field.number
    for field in pb.InferTensorContents.DESCRIPTOR.fields
    if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE)
}
"""Typed contents fields of fixed-size elements (fp32, fp64); the others are varints (bytes_contents: strings)."""


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
_SIZES = {FieldDescriptor.TYPE_BOOL: 1, FieldDescriptor.TYPE_INT32: 4, FieldDescriptor.TYPE_UINT32: 4}
_ITEMSIZE = {
    f.number: _SIZES.get(f.type, 4 if f.type == f.TYPE_FLOAT else 8) for f in pb.InferTensorContents.DESCRIPTOR.fields
}
"""Bytes each element of a typed contents field takes once parsed (protobuf's array, by field number)."""


def _fields(data: memoryview, too_many: str) -> list[tuple[int, memoryview | None]]:
    """The fields of a message: (number, payload of a length-delimited one, else None); past `MAX_FIELDS`, the
    error `too_many`."""
    out: list[tuple[int, memoryview | None]] = []
    at = 0
    while at < len(data):
        if len(out) == MAX_FIELDS:
            raise InvalidRequest(too_many)
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == _LENGTH_DELIMITED:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise DecodeError("truncated field")
            out.append((number, data[at : at + length]))
            at += length
            continue
        if wire == _VARINT:
            _, at = _varint(data, at)
        elif wire in (_FIXED64, _FIXED32):
            at += 8 if wire == _FIXED64 else 4
        else:
            raise DecodeError(f"wire type {wire}")
        out.append((number, None))
    return out


def parse_cost(data: bytes) -> int:
    """What parsing the message's typed contents builds, in bytes, from its wire form without parsing it: each
    element in protobuf's array, in numpy's and in a tensor of 8-byte elements. A packed integer costs as little as
    one byte on the wire (a zero) and 8 in each array: 16 MB of zeros would build hundreds of MB before the
    in-flight bound could refuse it."""
    cost = 0
    for number, payload in _fields(memoryview(data), TOO_MANY_FIELDS):
        if number != INPUTS or payload is None:
            continue
        for inner, contents in _fields(payload, f"an input has more than {MAX_FIELDS} fields"):
            if inner != CONTENTS or contents is None:
                continue
            for field, values in _fields(contents, TOO_MANY_CONTENTS):
                itemsize = _ITEMSIZE.get(field, 8)
                if values is None:  # one element, not packed
                    elements = 1
                elif field in _FIXED_FIELDS:
                    elements = len(values) // itemsize
                else:  # packed varints: one ends at each byte below 0x80 (bytes_contents: its bytes)
                    elements = int(np.count_nonzero(np.frombuffer(values, dtype=np.uint8) < 0x80))
                cost += elements * (2 * itemsize + 8)
    return cost


def split(data: bytes) -> tuple[bytes, list[memoryview]]:
    """The message's bytes without its raw contents (`data` itself when it has none), and each raw content as a
    view of `data`, in order."""
    view = memoryview(data)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    at = fields = 0
    while at < len(data):
        fields += 1
        if fields > MAX_FIELDS:
            raise InvalidRequest(TOO_MANY_FIELDS)
        start = at
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == _LENGTH_DELIMITED:
            length, at = _varint(data, at)
            end = at + length
            if end > len(data):
                raise DecodeError("truncated field")
            if number == RAW_INPUT_CONTENTS:
                raw.append(view[at:end])
                at = end
                continue
            at = end
        elif wire == _VARINT:
            _, at = _varint(data, at)
        elif wire in (_FIXED64, _FIXED32):
            at += 8 if wire == _FIXED64 else 4
            if at > len(data):
                raise DecodeError("truncated field")
        else:  # groups (3, 4): a ModelInferRequest has none
            raise DecodeError(f"wire type {wire}")
        rest.append(view[start:at])
    return (b"".join(rest) if raw else data), raw


def parse(data: bytes, hold: Callable[[int], None] | None = None) -> tuple[Any, list[memoryview]]:
    """The `ModelInferRequest` in `data` without its raw contents, and those as views of `data`; `hold` is given what
    parsing its typed contents will build (`parse_cost`) first, and may refuse it."""
    try:
        if hold is not None:
            hold(parse_cost(data))
        message, raw = split(data)
        return pb.ModelInferRequest.FromString(message), raw
    except DecodeError:
        raise MalformedBody("the message is not a ModelInferRequest") from None
