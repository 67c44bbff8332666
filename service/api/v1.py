"""The v1 REST API: the loss catalog, `POST /v1/losses/{name}` and `/v1/evaluate`. Routes only do HTTP
things: they read the body bytes, hand them to the data plane through the app's scheduler and return the
bytes they get back; errors are domain exceptions rendered by `service.api.errors`.

`POST /v1/losses/{name}` is one route that serves every loss (by name or alias). It is a plain Starlette
route, first in the app (`loss_route`): FastAPI's parameter injection and response handling cost more than a small loss
(35 us of 190 per request, measured), and the route needs neither. Its OpenAPI operations, one per loss
with that loss's request model plus the generic one, come from the registry in `openapi_paths`.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.api.deps import AppState, StateDep, header_values, json_content, read_body, require_json, send_json
from service.api.errors import problem_body
from service.losses.registry import Registry

LOSS_ROUTE = "/v1/losses/{name}"
"""The route template every loss computation is counted under (metrics, access log)."""


def _json_body(schema: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": json_content(schema)}}


def _json_200(schema: str) -> dict[int | str, Any]:
    return {200: {"content": json_content(schema)}}


class LossEndpoint:
    """`POST /v1/losses/{name}` as a plain ASGI app: no Request or Response objects on the busiest route.
    Errors propagate as domain exceptions to the app's error handlers, like every other route's."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /v1/losses/{name}`: the loss `name` in any case, or one of its aliases (torch's functional name,
        its `torch.nn` class name). An unknown name is a 404 naming close matches."""
        state: AppState = scope["app"].state.lossd
        spec = state.plane.registry.get(scope["path_params"]["name"])
        headers = header_values(scope, b"content-type", b"content-encoding")
        require_json(headers[0])
        scope["lossd"] |= {"loss": spec.name, "route": LOSS_ROUTE}
        body = await read_body(receive)
        out = await state.compute(body, headers[1], partial(state.plane.loss, spec), scope["lossd"]["hold"])
        await send_json(send, out)


def loss_route() -> Route:
    """`POST /v1/losses/{name}`, to be mounted first in the app: it is the busiest route, and a route inside an
    included router is matched twice (8 us a request here)."""
    return Route(LOSS_ROUTE, LossEndpoint(), methods=["POST"])


def build_router() -> APIRouter:
    """The catalog routes and /v1/evaluate."""
    router = APIRouter(prefix="/v1", tags=["v1"])

    @router.get("/losses", operation_id="losses-list")
    async def list_losses(state: StateDep) -> dict[str, list[dict[str, Any]]]:
        """Every loss: tensor arguments, parameter schema, reductions."""
        return {"losses": list(state.catalog.values())}

    @router.get("/losses/{name}", operation_id="losses-get")
    async def get_loss(name: str, state: StateDep) -> dict[str, Any]:
        """One loss's catalog entry (aliases resolve to it)."""
        return state.catalog[state.plane.registry.get(name).name]

    @router.post(
        "/evaluate",
        operation_id="losses-evaluate",
        response_class=Response,
        responses=_json_200("EvaluateResponse"),
        openapi_extra=_json_body("EvaluateRequest"),
    )
    async def evaluate(request: Request) -> Response:
        """Many losses over one set of tensors; each result, or its own problem, in request order."""
        state: AppState = request.app.state.lossd
        require_json(request.headers.get("content-type"))
        body = await request.body()
        job = partial(state.plane.evaluate, describe=problem_body)
        out = await state.compute(body, request.headers.get("content-encoding"), job, request.scope["lossd"]["hold"])
        return Response(out, media_type="application/json")

    return router


def openapi_paths(registry: Registry, models: dict[str, type]) -> dict[str, Any]:
    """The OpenAPI path items of `POST /v1/losses/{name}`: the route itself, and each loss at its own path
    with its own request model, summary and notes (the same route serves them)."""
    ok = {"description": "Successful Response"} | _json_200("LossResponse")[200]

    def operation(operation_id: str, summary: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "tags": ["v1"],
            "operationId": operation_id,
            "summary": summary,
            "description": description,
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {"200": ok},
        }

    generic = operation(
        "losses-compute",
        "Compute a loss by any of its names",
        str(inspect.getdoc(LossEndpoint.__call__)).split(": ", 1)[1],
        {"oneOf": [{"$ref": f"#/components/schemas/{model.__name__}"} for model in models.values()]},
    )
    generic["parameters"] = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths = {LOSS_ROUTE: {"post": generic}}
    for spec in registry:
        description = f"{spec.description}\n\nSame as `{spec.torch_ref}`.".strip()
        schema = {"$ref": f"#/components/schemas/{models[spec.name].__name__}"}
        paths[f"/v1/losses/{spec.name}"] = {"post": operation(f"losses-{spec.name}", spec.summary, description, schema)}
    return paths
