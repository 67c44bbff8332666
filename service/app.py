"""Build the FastAPI application: settings in, app out. No globals beyond the default settings."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import FrameType
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.responses import Response

from service import __version__, oip, schemas
from service.api import docs, errors, health, sessions, v1, v2
from service.api.deps import AppState
from service.api.edge import AccessLog, Edge, needs_key
from service.api.metrics import Metrics
from service.compute import resolve_device
from service.config import Settings
from service.dataplane import DataPlane
from service.errors import LossdError
from service.isolation import WorkerPool
from service.limits import Limits
from service.losses import REGISTRY
from service.runtime import configure_logging, tune_process

log = logging.getLogger("lossd")

DESCRIPTION = (
    "PyTorch loss functions over HTTP: send tensors as JSON, get torch's exact loss values and gradients back. "
    "Errors are RFC 9457 problem documents."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The lossd application for `settings` (read from `LOSSD_*` environment variables by default)."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    tune_process(settings.torch_threads, settings.malloc_arenas)
    limits = Limits(
        max_tensor_elements=settings.max_tensor_elements,
        max_request_elements=settings.max_request_elements,
        max_dims=settings.max_dims,
        max_evaluate_entries=settings.max_evaluate_entries,
        max_work_bytes=settings.max_work_bytes,
        max_response_bytes=settings.max_response_bytes,
    )
    device = resolve_device(settings.device)
    metrics = Metrics(str(device))
    plane = DataPlane(REGISTRY, device, limits, on_elements=metrics.computed)
    logs_requests = settings.access_log and settings.log_level in ("info", "debug", "trace")
    state = AppState(
        settings=settings,
        plane=plane,
        catalog={spec.name: schemas.catalog_entry(spec) for spec in REGISTRY},
        metrics=metrics,
        access_log=AccessLog() if logs_requests else None,
        workers=WorkerPool(settings.max_concurrency, device, settings.worker_memory_cap, settings.torch_threads),
    )
    app = FastAPI(
        title="lossd",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan(state),
        openapi_url=None,  # served by `docs.router`, after the busy routes
        docs_url=None,
        redoc_url=None,
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.lossd = state
    app.router.redirect_slashes = False  # a 307 to a URL built from the Host header: answer 404 instead
    errors.install(app)
    app.router.routes += [v1.loss_route(), sessions.batch_route()]
    app.include_router(v1.build_router())
    app.include_router(sessions.router)
    app.include_router(v2.router)
    app.include_router(health.router)
    app.include_router(docs.router)
    app.add_middleware(
        Edge,
        keys=state.api_keys,
        max_body_bytes=settings.max_body_bytes,
        inflight=state.inflight,
        metrics=metrics,
        access_log=state.access_log,
    )
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # added last, so outermost: preflights need no key, and every answer carries its headers
        app.add_middleware(
            Cors,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=[
                "X-Request-ID",
                "Inference-Header-Content-Length",
                "Retry-After",
                "WWW-Authenticate",
                "Location",
            ],
            max_age=600,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, plane)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _lifespan(state: AppState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up and shutdown of one app.

    - The gRPC server (`LOSSD_GRPC_PORT`) starts on the app's event loop, after the worker processes.
    - Readiness turns off as soon as SIGTERM arrives; the server then drains: HTTP as uvicorn drains it, gRPC
      refuses new calls at once and gives the calls in flight `LOSSD_DRAIN_TIMEOUT_S`.
    - Everything built at start-up (torch, the registry, the app: some 200,000 objects) moves to the
      garbage collector's permanent generation, so that full collections no longer walk it: they took
      70-90 ms each, which was lossd's tail latency.
    - Garbage collection pauses are measured (`lossd_gc_pause_seconds`).
    - The access log is flushed at shutdown.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        grpc_servers: list[Any] = []
        grpc_stopped: list[Awaitable[None]] = []

        def drain_grpc() -> None:  # refuse new calls at once; calls in flight get the drain timeout
            if grpc_servers and not grpc_stopped:
                grpc_stopped.append(asyncio.ensure_future(grpc_servers[0].stop(state.settings.drain_timeout_s)))

        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)
            loop = asyncio.get_running_loop()

            def on_sigterm(sig: int, frame: FrameType | None) -> None:
                state.draining = True
                loop.call_soon_threadsafe(drain_grpc)
                if callable(previous):
                    previous(sig, frame)

            signal.signal(signal.SIGTERM, on_sigterm)
        if state.workers is not None:  # the fork server and a first worker, before the server takes requests
            await anyio.to_thread.run_sync(_warm, state.workers)
        if state.settings.grpc_port:
            from service.rpc import server as rpc  # grpc only where it is used

            grpc_servers.append(await rpc.start(state))
        gc.collect()
        gc.freeze()
        unwatch = state.metrics.watch_gc()
        try:
            yield
        finally:
            drain_grpc()
            for stopped in grpc_stopped:
                await stopped
            unwatch()
            if state.workers is not None:
                state.workers.close()
            await state.sessions.close()
            if state.access_log is not None:
                state.access_log.flush()

    return lifespan


def _warm(workers: WorkerPool) -> None:
    try:
        workers.warm()
    except LossdError as exc:  # closed before it was warm
        log.debug("worker processes not warmed: %s", exc)
    except Exception:
        log.exception("could not start a worker process; large computations will retry when they come")


def _document_errors(document: dict[str, Any]) -> None:
    """Every operation documents the errors it may answer, from the one error table, in its protocol's
    format (FastAPI's own 422 for path parameters is lossd's table entry too)."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = {500, 503} | ({401} if needs_key(path) else set())
            if needs_key(path):  # a key when the server has keys, none when it has none
                operation["security"] = [{"apiKey": []}, {}]
            if method == "post":
                statuses |= {400, 413, 415, 422, 504}
            if "{" in path:
                statuses |= {404}
            if path.startswith("/v1/sessions"):
                statuses |= {409, 413, 429} if method == "post" else set()
            responses = operation.setdefault("responses", {})
            for status in [s for s in responses if s[0] in "45"]:
                del responses[status]
            responses |= errors.openapi_responses(path, statuses)
    schemas_ = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas_.pop(unused, None)


class Cors(CORSMiddleware):
    """Starlette's CORS, whose refusal of a preflight is a problem document, as every other error is."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")  # "origin, method, headers"
        return errors.render(errors.CorsRefused(f"CORS preflight refused; not allowed: {refused}"))


def build_openapi(app: FastAPI, plane: DataPlane) -> dict[str, Any]:
    """FastAPI's document, one operation per loss, errors from the table, and the request models."""
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path, item in (v1.openapi_paths(plane.registry, plane.models) | sessions.openapi_paths()).items():
        document["paths"].setdefault(path, {}).update(item)
    _document_errors(document)
    document.setdefault("components", {})["securitySchemes"] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "One of LOSSD_API_KEYS, when the server is configured with keys; none is needed otherwise.",
        }
    }
    components = document["components"].setdefault("schemas", {})
    components.update(schemas.EXTRA_SCHEMAS)
    models: list[type[BaseModel]] = [
        *plane.models.values(),
        schemas.LossResponse,
        schemas.Problem,
        schemas.EvaluateRequest,
        schemas.EvaluateResponse,
        schemas.SessionCreate,
        schemas.SessionCreated,
        schemas.BatchRequest,
        schemas.BatchResponse,
        schemas.SessionView,
        oip.InferenceRequest,
        oip.InferenceResponse,
        oip.V2Error,
    ]
    for model in models:
        schema = schemas.openapi_schema(model)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return document
