"""The v1 REST API: the loss catalog, `POST /v1/losses/{name}` and `/v1/evaluate`. Routes only do HTTP
things: they read the body bytes, hand them to the data plane (in a worker thread when large) and return
the bytes they get back; errors are domain exceptions turned into problems by `service.api.problems`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import BaseRoute, Route

from service.api import problems
from service.api.deps import AppState, StateDep, gradient_weight, require_json
from service.codec import decompress
from service.losses.registry import LossSpec, Registry


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _problem("The body is not valid JSON."),
    404: _problem("No such loss; `detail` lists close matches."),
    415: _problem("The body is not declared as JSON."),
    422: _problem("A field, tensor or value breaks the loss's rules; `errors[].loc` says where."),
    503: _problem("Overloaded (Retry-After), out of memory, or the device failed."),
}
LOSS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/LossResponse"}}}},
    **{status: response for status, response in PROBLEM_RESPONSES.items() if status != 404},
}


def build_router() -> APIRouter:
    """The catalog routes, /v1/evaluate, and the one route that computes every loss."""
    router = APIRouter(prefix="/v1", tags=["v1"])

    @router.get("/losses", operation_id="losses-list")
    async def list_losses(state: StateDep) -> dict[str, list[dict[str, Any]]]:
        """Every loss: tensor arguments, parameter schema, reductions."""
        return {"losses": list(state.catalog.values())}

    @router.get(
        "/losses/{name}",
        operation_id="losses-get",
        responses={404: PROBLEM_RESPONSES[404]},
    )
    async def get_loss(name: str, state: StateDep) -> dict[str, Any]:
        """One loss's catalog entry (aliases resolve to it)."""
        return state.catalog[state.plane.registry.get(name).name]

    @router.post(
        "/evaluate",
        operation_id="losses-evaluate",
        response_class=Response,
        responses={
            200: {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/EvaluateResponse"}}}},
            **{status: response for status, response in PROBLEM_RESPONSES.items() if status != 404},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EvaluateRequest"}}},
            }
        },
    )
    async def evaluate(request: Request, state: StateDep) -> Response:
        """Many losses over one set of tensors; each result, or its own problem, in request order."""
        require_json(request)
        body, inflate = await _read(request, state)
        out = await state.offload(
            inflate,
            partial(state.plane.evaluate, describe=problems.problem_body),
            size=len(body),
            weight=gradient_weight(body),
        )
        return Response(out, media_type="application/json")

    async def route(request: Request) -> Response:
        return await compute_loss(request, request.path_params["name"], request.app.state.lossd)

    router.routes.append(Route("/v1/losses/{name}", route, methods=["POST"], include_in_schema=False))
    return router


async def compute_loss(request: Request, name: str, state: AppState) -> Response:
    """Compute the loss `name` (or alias); an unknown name is a 404 naming close matches.

    The hot path: the gateway middleware calls this directly for `POST /v1/losses/{name}`, without
    routing or dependency injection (the route above serves the same path otherwise); each loss's
    own documented operation comes from `documented_routes`.
    """
    return await _evaluate(state.plane.registry.get(name), request, state)


def documented_routes(registry: Registry, models: dict[str, type]) -> list[BaseRoute]:
    """One OpenAPI operation per loss, each with its own request model. Never mounted: the single
    `POST /v1/losses/{name}` route serves these paths, with exactly this behaviour."""
    router = APIRouter(prefix="/v1", tags=["v1"])
    for spec in registry:
        router.add_api_route(
            f"/losses/{spec.name}",
            _documented,
            methods=["POST"],
            operation_id=f"losses-{spec.name}",
            summary=spec.summary,
            description=f"{spec.description}\n\nSame as `{spec.torch_ref}`.".strip(),
            response_class=Response,
            responses=LOSS_RESPONSES,
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{models[spec.name].__name__}"}}
                    },
                }
            },
        )

    return list(router.routes)


async def _documented(request: Request) -> Response:
    """Stands in for `compute_loss` in the documented operations, which are never mounted."""
    raise NotImplementedError


async def _evaluate(spec: LossSpec, request: Request, state: StateDep) -> Response:
    require_json(request)
    request.scope["lossd"] |= {"loss": spec.name, "route": "/v1/losses/{name}"}
    body, inflate = await _read(request, state)
    out = await state.offload(inflate, partial(state.plane.loss, spec), size=len(body), weight=gradient_weight(body))
    return Response(out, media_type="application/json")


async def _read(request: Request, state: AppState) -> tuple[bytes, Callable[[Callable[[bytes], bytes]], bytes]]:
    """The body, and a function that hands it, inflated, to `fn` (called in the worker thread: inflating a
    large gzip body is CPU work too), never beyond LOSSD_MAX_BODY_BYTES."""
    body = await request.body()
    encoding = request.headers.get("content-encoding")
    limit = state.settings.max_body_bytes

    def inflate(fn: Callable[[bytes], bytes]) -> bytes:
        return fn(decompress(body, encoding, limit))

    return body, inflate
