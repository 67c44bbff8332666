"""The Open Inference Protocol's REST routes (KServe v2 / Triton). Routes only do HTTP things.

Errors follow the protocol: `{"error": "<message>"}` with 400 for a bad request (the message is the v1
API's, word for word), 404 for an unknown model or version, 413, 415 and 503 as in v1; the routes raise
domain errors and `service.api.errors` renders them in this format for every path under /v2.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service import oip
from service.api.deps import AppState, StateDep, require_json
from service.codec import compress
from service.losses.registry import LossSpec

router = APIRouter(prefix="/v2", tags=["v2"])


def _model(state: AppState, name: str, version: str | None) -> LossSpec:
    return oip.model(state.plane.registry, name, version)


@router.get("", operation_id="v2-server-metadata")
async def server_metadata() -> dict[str, Any]:
    """Server metadata: name, version, extensions."""
    return oip.server_metadata()


@router.get("/health/live", operation_id="v2-server-live")
async def server_live() -> dict[str, bool]:
    """The server is alive."""
    return {"live": True}


@router.get("/health/ready", operation_id="v2-server-ready")
async def server_ready(state: StateDep) -> JSONResponse:
    """The server is ready: registry loaded, device usable."""
    ready = await state.not_ready() is None
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/models/{name}", operation_id="v2-model-metadata")
@router.get("/models/{name}/versions/{version}", operation_id="v2-model-version-metadata")
async def model_metadata(state: StateDep, name: str, version: str | None = None) -> Response:
    """A loss as a model: its inputs (torch's argument names) and outputs (loss, grad_<argument>)."""
    return JSONResponse(oip.model_metadata(_model(state, name, version)))


@router.get("/models/{name}/ready", operation_id="v2-model-ready")
@router.get("/models/{name}/versions/{version}/ready", operation_id="v2-model-version-ready")
async def model_ready(state: StateDep, name: str, version: str | None = None) -> Response:
    """Every registered loss is ready as soon as the server is."""
    return JSONResponse({"name": _model(state, name, version).name, "ready": True})


INFER_DOCS: dict[str, Any] = {
    "responses": {
        200: {
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }
        },
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
}


@router.post("/models/{name}/infer", operation_id="v2-model-infer", **INFER_DOCS)
@router.post("/models/{name}/versions/{version}/infer", operation_id="v2-model-version-infer", **INFER_DOCS)
async def infer(request: Request, state: StateDep, name: str, version: str | None = None) -> Response:
    """Compute a loss (and the requested gradients) from JSON or binary tensors."""
    spec = _model(state, name, version)
    request.scope["lossd"] |= {"loss": spec.name, "route": "/v2/models/{name}/infer"}
    require_json(request.headers.get("content-type"), binary=True)
    body = await request.body()
    declared = request.headers.get("inference-header-content-length")
    job = partial(oip.infer, state.plane, spec, header_length=declared)
    encoding = request.headers.get("content-encoding")
    json_length = int(declared) if declared is not None and declared.isdigit() else None
    out, header_length = await state.compute(body, encoding, job, request.scope["lossd"]["hold"], json_length)
    out, encoding = compress(out, request.headers.get("accept-encoding")) if len(out) >= 1024 else (out, None)
    headers = {"Content-Encoding": encoding} if encoding else {}
    if header_length is None:
        return Response(out, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(header_length)
    return Response(out, media_type="application/octet-stream", headers=headers)
