"""Build the FastAPI application: settings in, app out. No globals beyond the default settings."""

from __future__ import annotations

import logging
from typing import Any

from anyio import CapacityLimiter
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.routing import BaseRoute

from service import __version__, oip, schemas
from service.api import health, problems, v1, v2
from service.api.deps import AppState
from service.compute import resolve_device
from service.config import Settings
from service.dataplane import DataPlane
from service.losses import REGISTRY
from service.runtime import tune_process

DESCRIPTION = (
    "PyTorch loss functions over HTTP: send tensors as JSON, get torch's exact loss values and gradients back. "
    "Errors are RFC 9457 problem documents."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The lossd application for `settings` (read from `LOSSD_*` environment variables by default)."""
    settings = settings or Settings()
    logging.getLogger("lossd").setLevel(settings.log_level.upper() if settings.log_level != "trace" else "DEBUG")
    tune_process(settings.torch_threads, settings.malloc_arenas)
    plane = DataPlane(REGISTRY, resolve_device(settings.device))
    app = FastAPI(title="lossd", version=__version__, description=DESCRIPTION)
    app.state.lossd = AppState(
        settings=settings,
        plane=plane,
        limiter=CapacityLimiter(settings.max_concurrency),
        catalog={spec.name: schemas.catalog_entry(spec) for spec in REGISTRY},
    )
    problems.install(app)
    app.include_router(v1.build_router(REGISTRY, plane.models))  # the busiest routes first: matched in order
    app.include_router(v2.router)
    app.include_router(health.router)
    documented = v1.documented_routes(REGISTRY, plane.models)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, plane, documented)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def build_openapi(app: FastAPI, plane: DataPlane, documented: list[BaseRoute]) -> dict[str, Any]:
    """FastAPI's document with one operation per loss, plus the request models they reference."""
    routes = [*app.routes, *documented]
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
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
