"""One pure-ASGI middleware for what every request goes through: request id, API key, body limit,
metrics and the one JSON log line. Pure ASGI because it sits on the hot path of every request."""

from __future__ import annotations

import hmac
import itertools
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import problems, v1, v2
from service.api.deps import AppState
from service.errors import LossdError, PayloadTooLarge, Unauthorized

log = logging.getLogger("lossd.access")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
"""Routes that answer without an API key: orchestrators probe them."""

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_PROCESS = uuid.uuid4().hex[:16]
_SEQUENCE = itertools.count()
"""Generated ids: 16 random hex digits per process, then a counter (32 hex digits, unique across replicas)."""


class Gateway:
    def __init__(self, app: ASGIApp, state: AppState):
        self.app = app
        self.state = state
        self.keys = [key.encode() for key in state.api_keys]
        self._static: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v for k, v in scope["headers"] if k in _WANTED}
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if given and _REQUEST_ID.match(given) else f"{_PROCESS}{next(_SEQUENCE):016x}"
        info: dict[str, Any] = {"request_id": request_id, "status": 500, "bytes_in": 0, "bytes_out": 0}
        scope["lossd"] = info
        metrics = self.state.metrics
        limit = self.state.settings.max_body_bytes
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                info["bytes_out"] += len(message.get("body", b""))
            await send(message)

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                info["bytes_in"] += len(message.get("body", b""))
                if info["bytes_in"] > limit:
                    raise PayloadTooLarge(
                        f"the request body exceeds the limit of {limit} bytes", limit=limit, actual=info["bytes_in"]
                    )
            return message

        metrics.in_flight += 1
        try:
            refusal = self._refusal(scope["path"], headers, limit)
            if refusal is not None:
                metrics.rejections.labels(reason=refusal.slug).inc()
                await _respond(refusal, scope, receive, send_with_id)
            elif scope["method"] == "POST" and scope["path"].startswith(_LOSSES) and "/" not in scope["path"][11:]:
                await self._compute_loss(scope, counted_receive, send_with_id)
            else:
                await self.app(scope, counted_receive, send_with_id)
        finally:
            metrics.in_flight -= 1
            self._record(scope, info, time.perf_counter() - start)

    async def _compute_loss(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/losses/{name}, straight to its endpoint: routing and the framework's middleware
        cost more than a small loss itself. Errors become problems here as the app's handlers would
        make them; anything unexpected still reaches the app's 500 handler."""
        try:
            response = await v1.compute_loss(Request(scope, receive), scope["path"][11:], self.state)
        except LossdError as exc:
            response = problems.error_response(exc)
        except ClientDisconnect:
            return
        await response(scope, receive, send)

    def _refusal(self, path: str, headers: dict[bytes, bytes], limit: int) -> LossdError | None:
        """Why a request is refused before it is read: no valid key, or a declared body over the limit."""
        if self.keys and path not in PUBLIC_PATHS:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            # compare with every key, in constant time, so timing tells nothing about which part matched
            matched = [hmac.compare_digest(token.strip(), key) for key in self.keys]
            if scheme.lower() != b"bearer" or not any(matched):
                return Unauthorized("a valid API key is required: send `Authorization: Bearer <key>`")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return PayloadTooLarge(
                f"the request body of {int(declared)} bytes exceeds the limit of {limit} bytes",
                limit=limit,
                actual=int(declared),
            )
        return None

    def _record(self, scope: Scope, info: dict[str, Any], seconds: float) -> None:
        template = info.get("route") or self._template(scope)
        loss = info.get("loss", "")
        self.state.metrics.record(template, loss, info["status"], seconds, info["bytes_in"])
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request",
                extra={
                    "request_id": info["request_id"],
                    "method": scope["method"],
                    "route": template,
                    "path": scope["path"],
                    "loss": loss or None,
                    "status": info["status"],
                    "duration_ms": round(seconds * 1e3, 3),
                    "bytes_in": info["bytes_in"],
                    "bytes_out": info["bytes_out"],
                },
            )

    def _template(self, scope: Scope) -> str:
        """The route a path matched, as a template, for bounded metric labels ("unmatched" for the rest)."""
        route = getattr(scope.get("route"), "path", None)
        if route:
            return str(route)
        if self._static is None:
            app = scope.get("app")
            self._static = frozenset(getattr(r, "path", "") for r in getattr(app, "routes", []))
        return str(scope["path"]) if scope["path"] in self._static else "unmatched"


_LOSSES = "/v1/losses/"
_WANTED = frozenset({b"x-request-id", b"authorization", b"content-length"})


async def _respond(exc: LossdError, scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse in the protocol of the path: {"error"} under /v2, a problem document elsewhere."""
    response = v2.error(exc) if scope["path"].startswith("/v2") else problems.error_response(exc)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="lossd"'
    await response(scope, receive, send)
