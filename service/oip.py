"""The Open Inference Protocol (KServe v2, Triton) without HTTP: every loss is a model.

A loss's tensor arguments are the model's inputs (torch's names), its parameters travel in the
request-level `parameters`, and its outputs are `loss` and `grad_<argument>` for each differentiable
argument; asking for a `grad_*` output is how a v2 client asks for a gradient. Requests and responses
may carry tensors as JSON or as binary data after the JSON header (Triton's binary tensor data
extension). Validation and compute are the data plane's, shared with v1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from service import __version__, codec
from service.compute import LossResult, RawTensor
from service.dataplane import Batch, DataPlane, Job
from service.errors import InvalidRequest, InvalidTensor, NotFound
from service.limits import Limits
from service.losses.registry import LossSpec, Registry, TensorKind

VERSION = "1"
"""Every loss is a model with one version."""

RESERVED_PARAMETERS = frozenset(
    {"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end", "content_type"}
    | {"headers"}
)
"""Request parameters of the protocol itself (Triton's; MLServer's codecs send `content_type` and `headers`),
which are not loss parameters (the HTTP route refuses the sequence parameters: see `SEQUENCE_PARAMETERS`)."""

SEQUENCE_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end"})
"""Triton's sequence parameters: over gRPC a `sequence_id` makes the request a batch of that session; the HTTP route
refuses them rather than compute a lone request the client meant to accumulate."""

V1_OPTIONS = {
    "return_grad": "ask for gradients as outputs (grad_<input>)",
    "output_encoding": "each output's binary_data parameter (or the request's binary_data_output) picks its encoding",
    "return_stats": "a session's batches (sequence_id) accumulate statistics",
}
"""Options of the v1 API that the protocol expresses otherwise: refused as parameters, with what to do instead."""

_METADATA_DATATYPE = {
    TensorKind.FLOAT: "FP32",
    TensorKind.INDEX: "INT64",
    TensorKind.INDEX_OR_PROBABILITY: "INT64",
}


class RequestInput(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """`$inference_request` of the protocol. Loss parameters go in `parameters`; `outputs` picks `loss` and
    `grad_<argument>` outputs (default: `loss`). With the binary extension, the body is this JSON object
    (`Inference-Header-Content-Length` bytes long) followed by the inputs' binary data."""

    model_config = ConfigDict(strict=True)

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    """`$inference_response` of the protocol; binary outputs follow the JSON when any was asked for."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class V2Error(BaseModel):
    """The protocol's error body."""

    error: str


def server_metadata() -> dict[str, Any]:
    """`GET /v2`."""
    return {"name": "lossd", "version": __version__, "extensions": ["binary_tensor_data"]}


def output_names(spec: LossSpec) -> list[str]:
    return ["loss", *(f"grad_{name}" for name in spec.differentiable)]


def model(registry: Registry, name: str, version: str | None = None, field: str = "model_name") -> LossSpec:
    """The loss that model `name` (a loss's name or alias; the request's `field`) is, at `version` (none or empty:
    its only one)."""
    if not name:  # gRPC's default for a field not set
        raise InvalidRequest(f"{field} is empty: name a loss (its name or alias)", loc=(field,))
    spec = registry.get(name)
    if version and version != VERSION:
        raise NotFound(f"model {name!r} has no version {version!r}; its only version is {VERSION}", loc=("version",))
    return spec


def output_tensors(result: LossResult) -> dict[str, Tensor]:
    """A result's tensors by output name: `loss`, and `grad_<argument>` for each gradient."""
    return {"loss": result.loss} | {f"grad_{name}": grad for name, grad in result.grads.items()}


def batch_tensors(batch: Batch) -> dict[str, Tensor]:
    """A session batch's answer as outputs: `loss` (float64, one per loss of the session, in its order) and `stats`
    (its sum, weight and count per loss, shape [losses, 3]), as the HTTP route's `results` give them."""
    stats = [[s.total.sum, s.total.weight, float(s.total.count)] for s in batch.stats]
    return {
        "loss": torch.tensor(batch.losses, dtype=torch.float64),
        "stats": torch.tensor(stats, dtype=torch.float64).reshape(-1, 3),
    }


@dataclass(frozen=True)
class RawOutput:
    """One output as Triton's binary forms carry it: its metadata, and its little-endian bytes."""

    name: str
    datatype: str
    shape: list[int]
    data: bytes


def raw_outputs(tensors: dict[str, Tensor], names: list[str]) -> list[RawOutput]:
    """The outputs `names` of `tensors`, in that order, as raw bytes."""
    return [
        RawOutput(name, codec.V2_NAMES[t.dtype], list(t.shape), bytes(codec.tensor_bytes(t)))
        for name in names
        for t in (tensors[name],)
    ]


def model_metadata(spec: LossSpec) -> dict[str, Any]:
    """`GET /v2/models/{loss}`: inputs named as torch names them; -1 marks a dimension of any size.

    The rank is free too (shape [-1]); the v1 catalog gives each argument's shape rule in words.
    Class-index inputs are INT64 (INT32, INT16, INT8, UINT8 and BOOL are converted), float inputs FP32
    (FP16, BF16 and FP64 are computed in their own dtype).
    """
    return {
        "name": spec.name,
        "versions": [VERSION],
        "platform": "pytorch",
        "inputs": [
            {"name": arg.name, "datatype": _METADATA_DATATYPE[arg.kind], "shape": [-1], "optional": not arg.required}
            for arg in spec.tensors
        ],
        "outputs": [{"name": name, "datatype": "FP32", "shape": [-1]} for name in output_names(spec)],
    }


Answer = tuple[bytes | memoryview, int | None]
"""The response body, and its JSON header's length when binary data follows."""


def infer(plane: DataPlane, spec: LossSpec, body: bytes, header_length: str | None) -> Job[Answer]:
    """Read a `POST /v2/models/{loss}/infer` body; the job returns the response body and header length."""
    header, binary = codec.split_binary(body, header_length)
    payload = codec.loads(header)
    if not isinstance(payload, dict):
        raise InvalidRequest("the inference request must be a JSON object")
    request = plane.validate(InferenceRequest, payload)
    assert isinstance(request, InferenceRequest)
    parameters = dict(request.parameters or {})
    check_parameters(parameters)
    sequence = sorted(parameters.keys() & SEQUENCE_PARAMETERS)
    if sequence:
        raise InvalidRequest(
            f"{sequence[0]}: this route computes single requests; a session's batches go to "
            "POST /v1/sessions/{id}/batches, or over gRPC (ModelInfer or ModelStreamInfer with a sequence_id)",
            loc=(sequence[0],),
        )
    binary_default = _flag(parameters, "binary_data_output", False, ("parameters",))
    outputs = request.outputs or [RequestOutput(name="loss")]
    binary_outputs = [  # each output's binary_data: a boolean
        _flag(output.parameters or {}, "binary_data", binary_default, ("outputs", i, "parameters"))
        for i, output in enumerate(outputs)
    ]
    raw = _inputs(spec, request.inputs, binary, plane.limits)
    names = [output.name for output in outputs]
    job = plan(plane, spec, parameters, raw, names, "binary" if all(binary_outputs) else "json")
    return job.then(partial(_answer, spec, request, names, binary_outputs))


def check_parameters(parameters: Mapping[str, Any]) -> None:
    """Refuse the v1 API's options among a request's parameters (before its inputs are read), saying what the
    protocol does instead."""
    for name, instead in V1_OPTIONS.items():
        if name in parameters:
            raise InvalidRequest(f"{name} is not a parameter of the inference protocol: {instead}", loc=(name,))


def _flag(parameters: dict[str, Any], name: str, default: bool, loc: tuple[str | int, ...]) -> bool:
    """A boolean parameter of the binary extension, `default` when absent; anything but a boolean is refused
    rather than read as false."""
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false, got {value!r}", loc=(*loc, name))
    return value


def plan(
    plane: DataPlane,
    spec: LossSpec,
    parameters: dict[str, Any],
    raw: dict[str, RawTensor],
    outputs: list[str],
    output_encoding: str,
) -> Job[LossResult]:
    """The protocol's core, over HTTP and gRPC: the inputs a model needs, the outputs it has (a `grad_*` output
    asks for that gradient), the loss parameters among the request's `parameters`; then the data plane's job."""
    for arg in spec.tensors:
        if arg.name in parameters:  # else the tensor field would take it, and nothing would read it
            raise InvalidRequest(
                f"{arg.name} is an input of model {spec.name}: send it among the inputs, not the parameters",
                loc=("parameters", arg.name),
            )
        if arg.required and arg.name not in raw:
            raise InvalidRequest(f"model {spec.name} needs input {arg.name!r}", loc=("inputs",))
    wanted = _wanted_outputs(spec, outputs)
    for name in wanted:
        if name.startswith("grad_") and name[5:] not in raw:
            raise InvalidRequest(f"output {name!r} needs input {name[5:]!r}, which the request does not give")
    fields = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS and not k.startswith("triton_")}
    fields |= {"return_grad": [name[5:] for name in wanted if name != "loss"]} | dict.fromkeys(raw, True)
    # the inputs and the outputs asked for stand for the tensor fields and return_grad: no parameters to suggest
    hidden = {arg.name for arg in spec.tensors} | {"return_grad"}
    params = plane.validate(plane.models[spec.name], fields, spec, hide=hidden)
    return plane.plan(spec, params, raw, output_encoding=output_encoding)


def _answer(
    spec: LossSpec, request: InferenceRequest, names: list[str], binary_outputs: list[bool], result: LossResult
) -> Answer:
    tensors = output_tensors(result)
    response: dict[str, Any] = {"model_name": spec.name, "model_version": VERSION}
    if request.id is not None:
        response["id"] = request.id
    if result.warnings:
        response["parameters"] = {"warnings": " ".join(result.warnings)}
    response["outputs"] = []
    blobs: list[memoryview | bytes] = []
    for name, binary_output in zip(names, binary_outputs, strict=True):
        encoded, blob = codec.encode_v2(name, tensors[name], binary_output)
        response["outputs"].append(encoded)
        blobs.append(blob)
    head = codec.dumps(response)
    if not any(len(blob) for blob in blobs):
        return head, None
    framed = bytearray(head)  # one copy of each tensor's bytes, straight into the response
    for blob in blobs:
        framed += blob
    return memoryview(framed), len(head)


def _wanted_outputs(spec: LossSpec, names: list[str]) -> list[str]:
    known = output_names(spec)
    for i, name in enumerate(names):
        if name not in known:
            raise InvalidRequest(
                f"model {spec.name} has no output {name!r}; its outputs are {', '.join(known)}", loc=("outputs", i)
            )
        if names.index(name) != i:
            raise InvalidRequest(f"output {name!r} is requested twice", loc=("outputs", i))
    return names


def check_input(spec: LossSpec, raw: dict[str, RawTensor], name: str, i: int) -> None:
    """The model has an input `name` (the `i`th of the request), and the request has not given it yet."""
    if name not in {arg.name for arg in spec.tensors}:
        inputs = ", ".join(arg.name for arg in spec.tensors)
        raise InvalidRequest(f"model {spec.name} has no input {name!r}; its inputs are {inputs}", loc=("inputs", i))
    check_distinct(raw, name, i)


def check_distinct(raw: dict[str, RawTensor], name: str, i: int) -> None:
    """The request has not given input `name` (its `i`th) before."""
    if name in raw:
        raise InvalidRequest(f"input {name!r} is given twice", loc=("inputs", i))


def _inputs(spec: LossSpec, inputs: list[RequestInput], binary: memoryview, limits: Limits) -> dict[str, RawTensor]:
    """Each input read from its JSON data or its slice of the binary data, in request order."""
    raw: dict[str, RawTensor] = {}
    offset = 0
    for i, item in enumerate(inputs):
        check_input(spec, raw, item.name, i)
        size = (item.parameters or {}).get("binary_data_size")
        chunk = None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidTensor(
                    f"{item.name}: binary_data_size must be a non-negative integer (bytes), got {size!r}",
                    loc=(item.name, "binary_data_size"),
                )
            if item.data is not None:
                raise InvalidTensor(
                    f"{item.name}: give its values in data or as binary data (binary_data_size), not both",
                    loc=(item.name, "data"),
                )
            if offset + size > len(binary):
                raise InvalidTensor(
                    f"{item.name}: binary_data_size {size!r} does not fit the {len(binary) - offset} bytes of binary "
                    "data left after the JSON header",
                    loc=(item.name, "binary_data_size"),
                )
            chunk, offset = binary[offset : offset + size], offset + size
        raw[item.name] = codec.decode_v2(item.name, item.datatype, item.shape, item.data, chunk, limits)
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return raw
