"""A `ModelInferRequest` read from its bytes with its `raw_input_contents` left where they arrived.

protobuf's parser copies each bytes field into the message, and reading the field copies it again into a Python
`bytes`: two copies of every raw tensor (about 0.9 ms each for 8 MB here) before lossd makes its own. The top
level of the message is walked here instead (a handful of fields in any real request: model name, id,
parameters, inputs, outputs, raw contents); each raw content becomes a view of the received bytes, and the rest
of the message, small, is parsed by protobuf as usual.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from service.errors import InvalidRequest, MalformedBody
from service.rpc import grpc_service_pb2 as pb

RAW_INPUT_CONTENTS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
MAX_FIELDS = 1024
"""Top-level fields a request may have: every input, output, parameter and raw content is one; no loss takes
anywhere near this many."""

_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5


def _varint(data: bytes, at: int) -> tuple[int, int]:
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
            raise InvalidRequest(
                f"the request has more than {MAX_FIELDS} top-level fields (inputs, outputs, parameters, raw contents)"
            )
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


def parse(data: bytes) -> tuple[Any, list[memoryview]]:
    """The `ModelInferRequest` in `data` without its raw contents, and those as views of `data`."""
    try:
        message, raw = split(data)
        return pb.ModelInferRequest.FromString(message), raw
    except DecodeError:
        raise MalformedBody("the message is not a ModelInferRequest") from None
