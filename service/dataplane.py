"""The request lifecycle without HTTP: decode the body, validate, compute, encode the response.

The REST routers call these functions from a worker thread with the raw body bytes; they return the
response bytes or raise a domain error. Keeping this free of FastAPI lets every protocol share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from service import codec, compute, schemas
from service.errors import InvalidRequest, MalformedBody
from service.losses.registry import LossParams, LossSpec, Registry


@dataclass
class DataPlane:
    """The registry, one request model per loss, and the device losses run on."""

    registry: Registry
    device: torch.device
    models: dict[str, type[LossParams]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.models = {spec.name: schemas.request_model(spec) for spec in self.registry}

    def loss(self, spec: LossSpec, body: bytes) -> bytes:
        """Evaluate one `POST /v1/losses/{name}` body; returns the JSON response body."""
        payload = codec.loads(body)
        if not isinstance(payload, dict):
            raise MalformedBody(f"the request body must be a JSON object, got {type(payload).__name__}")
        try:
            request = self.models[spec.name].model_validate(payload)
        except ValidationError as exc:
            raise schemas.invalid_request(exc) from None
        assert isinstance(request, schemas.RequestOptions)
        raw = {
            arg.name: codec.decode_tensor(value, arg.name, arg.kind)
            for arg in spec.tensors
            if (value := getattr(request, arg.name)) is not None
        }
        tensors = compute.prepare(spec, raw)
        grad_wrt = _grad_wrt(spec, request.return_grad, tensors)
        result = compute.compute(spec, tensors, request, grad_wrt, self.device)
        return codec.dumps(encode_result(result, request.output_encoding))

    def ready(self) -> bool:
        """True when the registry is loaded and the device runs a tiny computation."""
        return len(self.registry) > 0 and float(torch.ones(2, device=self.device).sum().item()) == 2.0


def _grad_wrt(spec: LossSpec, return_grad: bool | list[str], tensors: dict[str, Any]) -> list[str]:
    """Names to differentiate: all differentiable arguments given, or the listed ones (each given)."""
    if return_grad is True:
        return [name for name in spec.differentiable if name in tensors]
    if return_grad is False:
        return []
    for i, name in enumerate(return_grad):
        if name not in tensors:
            raise InvalidRequest(f"return_grad names {name!r}, which the request does not give", loc=("return_grad", i))
    return list(dict.fromkeys(return_grad))


def encode_result(result: compute.LossResult, encoding: codec.Encoding) -> dict[str, Any]:
    """The v1 response body: loss, shape, dtype, grad (when asked), device, warnings (when any)."""
    body: dict[str, Any] = {
        "loss": codec.encode_tensor(result.loss, encoding),
        "shape": list(result.loss.shape),
        "dtype": codec.dtype_name(result.loss),
    }
    if result.grads:
        body["grad"] = {name: codec.encode_tensor(g, encoding) for name, g in result.grads.items()}
    body["device"] = result.device
    if result.warnings:
        body["warnings"] = result.warnings
    return body
