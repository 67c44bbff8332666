"""Dataset sessions (`/v1/sessions`): exact dataset-level losses accumulated over batches.

A thin adapter: the data plane validates the loss definitions and computes each batch with its sufficient
statistics (`DataPlane.session_losses`, `DataPlane.batch`); the app's session store (in this process, or
Redis) holds the sums and applies each batch atomically with its batch-id check.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service import codec
from service.api.deps import AppState, header_values, json_content, read_body, require_json, send_json
from service.dataplane import Batch
from service.sessions.state import export, result_json
from service.sessions.store import feed

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(codec.dumps(body), status, headers=headers, media_type="application/json")


def _timestamp(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@router.post(
    "",
    operation_id="sessions-create",
    status_code=201,
    response_class=Response,
    responses={201: {"description": "The session", "content": json_content("SessionCreated")}},
    openapi_extra={"requestBody": {"required": True, "content": json_content("SessionCreate")}},
)
async def create_session(request: Request) -> Response:
    """A new session of losses (entries as in /v1/evaluate; reduction mean, sum or batchmean), or one that merges
    states exported from other sessions (`from_states`). Answers 201 with `Location: /v1/sessions/{id}`."""
    state: AppState = request.app.state.lossd
    require_json(request.headers.get("content-type"))
    body = await request.body()
    read = partial(state.plane.new_session, max_ttl_s=state.settings.session_max_ttl_s, limits=state.sessions.limits)
    new = await state.compute(body, request.headers.get("content-encoding"), read, request.scope["lossd"]["hold"])
    record = await state.sessions.create(new.losses, new.ttl_s, new.merged)
    created = {"id": record.id, "losses": record.losses, "expires_at": _timestamp(record.expires_at)}
    return _json(created, 201, {"Location": f"/v1/sessions/{record.id}"})


BATCH_ROUTE = "/v1/sessions/{session_id}/batches"


class BatchEndpoint:
    """`POST /v1/sessions/{id}/batches` as a plain ASGI app, as the loss route is: the busiest session route
    skips FastAPI's parameter injection (50 us a batch). Errors propagate to the app's error handlers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Compute every loss of the session on one batch and add its statistics to the session, atomically
        with its `batch_id`: a batch id applied before with the same content is not applied again
        (`duplicate`: true), with other content it is a 409. One failing loss rejects the whole batch and
        changes nothing. The answer holds this batch's own values."""
        state: AppState = scope["app"].state.lossd
        session_id = scope["path_params"]["session_id"]
        content_type, content_encoding = header_values(scope, b"content-type", b"content-encoding")
        require_json(content_type)
        scope["lossd"]["route"] = BATCH_ROUTE

        async def compute(losses: list[dict[str, Any]]) -> Batch:
            body = await read_body(receive)  # read once the session is known to exist
            return await state.compute(
                body, content_encoding, partial(state.plane.batch, losses), scope["lossd"]["hold"]
            )

        losses, batch, applied = await feed(state.sessions, session_id, compute)
        results = [
            result_json(definition, stats, loss) | ({"warnings": warnings} if warnings else {})
            for definition, stats, loss, warnings in zip(losses, batch.stats, batch.losses, batch.warnings, strict=True)
        ]
        await send_json(send, codec.dumps({"batch_id": batch.batch_id, "duplicate": not applied, "results": results}))


def batch_route() -> Route:
    """`POST /v1/sessions/{id}/batches`, to be mounted before the routers (see `service.api.v1.loss_route`)."""
    return Route(BATCH_ROUTE, BatchEndpoint(), methods=["POST"])


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI path item of the batch route, which is not a FastAPI route."""
    doc = str(inspect.getdoc(BatchEndpoint.__call__))
    operation = {
        "tags": ["sessions"],
        "operationId": "sessions-batch",
        "summary": "Add a batch to a session",
        "description": doc,
        "parameters": [{"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": json_content("BatchRequest")},
        "responses": {"200": {"description": "This batch's own values", "content": json_content("BatchResponse")}},
    }
    return {BATCH_ROUTE: {"post": operation}}


@router.get(
    "/{session_id}",
    operation_id="sessions-get",
    response_class=Response,
    responses={200: {"description": "The dataset values", "content": json_content("SessionView")}},
)
async def get_session(session_id: str, request: Request) -> Response:
    """The loss of the whole dataset so far, per loss (and per group label when groups were sent)."""
    state: AppState = request.app.state.lossd
    record = await state.sessions.get(session_id)
    return _json(
        {
            "id": record.id,
            "batches": record.batches,
            "expires_at": _timestamp(record.expires_at),
            "results": record.results(),
        }
    )


@router.get("/{session_id}/state", operation_id="sessions-state")
async def get_state(session_id: str, request: Request) -> Response:
    """The session's versioned state (losses, sums, applied batch ids), which `from_states` reads back."""
    state: AppState = request.app.state.lossd
    record, batches = await state.sessions.export(session_id)
    return _json(export(record, batches))


@router.delete("/{session_id}", operation_id="sessions-delete", status_code=204, response_class=Response)
async def delete_session(session_id: str, request: Request) -> Response:
    """Forget the session."""
    state: AppState = request.app.state.lossd
    await state.sessions.delete(session_id)
    return Response(status_code=204)
