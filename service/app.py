"""Build the FastAPI application: settings in, app out. No globals beyond the default settings."""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import FrameType
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.routing import BaseRoute

from service import __version__, limits, oip, schemas
from service.api import health, problems, v1, v2
from service.api.deps import AppState
from service.api.metrics import Metrics
from service.api.middleware import Gateway
from service.compute import resolve_device
from service.config import Settings
from service.dataplane import DataPlane
from service.losses import REGISTRY
from service.runtime import configure_logging, tune_process

DESCRIPTION = (
    "PyTorch loss functions over HTTP: send tensors as JSON, get torch's exact loss values and gradients back. "
    "Errors are RFC 9457 problem documents."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The lossd application for `settings` (read from `LOSSD_*` environment variables by default)."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    tune_process(settings.torch_threads, settings.malloc_arenas)
    limits.configure(
        limits.Limits(
            max_tensor_elements=settings.max_tensor_elements,
            max_request_elements=settings.max_request_elements,
            max_dims=settings.max_dims,
            max_evaluate_entries=settings.max_evaluate_entries,
        )
    )
    device = resolve_device(settings.device)
    metrics = Metrics(str(device))
    plane = DataPlane(REGISTRY, device, on_elements=metrics.computed)
    state = AppState(
        settings=settings,
        plane=plane,
        catalog={spec.name: schemas.catalog_entry(spec) for spec in REGISTRY},
        metrics=metrics,
    )
    app = FastAPI(title="lossd", version=__version__, description=DESCRIPTION, lifespan=_drain_on_sigterm(state))
    app.state.lossd = state
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Inference-Header-Content-Length"],
        )
    app.add_middleware(Gateway, state=state)  # outermost: ids, keys, limits, metrics and logs for all
    problems.install(app)
    app.include_router(v1.build_router())  # the busiest routes first: routes are matched in order
    app.include_router(v2.router)
    app.include_router(health.router)
    documented = v1.documented_routes(REGISTRY, plane.models)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, plane, documented)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _drain_on_sigterm(state: AppState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that turns readiness off as soon as SIGTERM arrives, then lets uvicorn drain."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(sig: int, frame: FrameType | None) -> None:
                state.draining = True
                if callable(previous):
                    previous(sig, frame)

            signal.signal(signal.SIGTERM, on_sigterm)
        yield

    return lifespan


_ERROR_STATUSES = {
    "401": "No valid API key (only when LOSSD_API_KEYS is set).",
    "413": "The body, a tensor or the request exceeds a configured limit (`limit`, `actual`).",
    "500": "An unexpected error; `detail` quotes the request id.",
    "503": "Not ready, overloaded (Retry-After), out of memory, or the device failed.",
}


def _document_errors(document: dict[str, Any]) -> None:
    """Every operation documents the errors any request may get, in its protocol's error format."""
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    v2_error = {"application/json": {"schema": {"$ref": "#/components/schemas/V2Error"}}}
    for path, operations in document["paths"].items():
        content = v2_error if path.startswith("/v2") else problem
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses and "HTTPValidationError" in str(responses["422"]):
                responses["422"] = {"description": "A field breaks the request's schema.", "content": content}
            if "{" in path:
                responses.setdefault("404", {"description": "Not found.", "content": content})
            for status, description in _ERROR_STATUSES.items():
                responses.setdefault(status, {"description": description, "content": content})


def build_openapi(app: FastAPI, plane: DataPlane, documented: list[BaseRoute]) -> dict[str, Any]:
    """FastAPI's document with one operation per loss, plus the request models they reference."""
    routes = [*app.routes, *documented]
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
    _document_errors(document)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(schemas.EXTRA_SCHEMAS)
    models: list[type[BaseModel]] = [
        *plane.models.values(),
        schemas.LossResponse,
        schemas.Problem,
        schemas.EvaluateRequest,
        schemas.EvaluateResponse,
        oip.InferenceRequest,
        oip.InferenceResponse,
        oip.V2Error,
    ]
    for model in models:
        schema = schemas.openapi_schema(model)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return document
