"""One table from errors to HTTP, and the one renderer that writes them in each protocol's format.

Every error lossd answers is a `LossdError` (the domain's, plus the two below that only HTTP can cause).
`STATUS` gives each its status code and where its `loc` points. `render` writes it as an RFC 9457
problem document (`application/problem+json`: `type`, `title`, `status`, `detail`, `errors` with
`loc`/`msg`, and `limit`/`actual` for limits) or, under `/v2`, as the Open Inference Protocol's
`{"error": "<message>"}` (the same message; the protocol's 400 stands for every 422). The app's
exception handlers, the edge middleware and the OpenAPI document all use this module.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from service import codec
from service.errors import (
    ALL_ERRORS,
    ComputeTimeout,
    Conflict,
    DeviceFailure,
    DtypeMismatch,
    ErrorDetail,
    HeadersTooLarge,
    InvalidRequest,
    InvalidTensor,
    LossdError,
    MalformedBody,
    NotConfigured,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ResourceExhausted,
    SessionFull,
    SessionNotFound,
    ShapeMismatch,
    StoreUnavailable,
    TooManySessions,
    TorchRejected,
    Unauthorized,
    UnknownLoss,
    UnsupportedMediaType,
    ValueOutOfRange,
)

log = logging.getLogger("lossd")

PROBLEM_JSON = "application/problem+json"
Protocol = Literal["problem", "v2"]


class MethodNotAllowed(LossdError):
    """The path exists, but not with this method; `Allow` lists the methods it has."""

    slug = "method-not-allowed"
    title = "Method not allowed"

    def __init__(self, detail: str, allow: set[str]):
        super().__init__(detail)
        self.allow = allow


class InternalError(LossdError):
    """An unexpected failure of the server; `detail` quotes the request id to report."""

    slug = "internal-error"
    title = "Internal server error"


class CorsRefused(LossdError):
    """A CORS preflight that `LOSSD_CORS_ORIGINS` does not allow (its origin, method or headers)."""

    slug = "cors-refused"
    title = "CORS preflight refused"


class MalformedRequest(LossdError):
    """Bytes that are not an HTTP/1.1 request (a bad request line, header or framing); the connection closes."""

    slug = "malformed-request"
    title = "Malformed HTTP request"


class NotReady(LossdError):
    """The server is not ready: starting, shutting down, or its device is unusable."""

    slug = "not-ready"
    title = "Not ready"


STATUS: dict[type[LossdError], tuple[int, str, str]] = {
    MalformedRequest: (400, "request", "Not an HTTP/1.1 request (its request line, headers or framing)."),
    MalformedBody: (400, "body", "The body is not valid JSON (or not a JSON object)."),
    CorsRefused: (400, "header", "A CORS preflight whose origin, method or headers LOSSD_CORS_ORIGINS does not allow."),
    Unauthorized: (401, "header", "No valid API key (only when LOSSD_API_KEYS is set)."),
    NotFound: (404, "path", "No such route, model or model version."),
    UnknownLoss: (404, "path", "No such loss; `detail` lists close matches."),
    SessionNotFound: (404, "path", "No such session: never created, deleted, or expired."),
    MethodNotAllowed: (405, "method", "The path does not take this method; `Allow` lists those it takes."),
    RequestTimeout: (408, "request", "The request was not received within LOSSD_READ_TIMEOUT_S of its first byte."),
    PayloadTooLarge: (413, "body", "The body, a tensor or the request exceeds a configured limit (`limit`, `actual`)."),
    SessionFull: (413, "body", "The session holds as many batches or groups as it may (`limit`, `actual`)."),
    Conflict: (409, "body", "A batch id already applied with other content, or states with other losses."),
    UnsupportedMediaType: (415, "header", "The body's content type or encoding is not one lossd reads."),
    HeadersTooLarge: (431, "header", "The request line and headers exceed LOSSD_MAX_HEADER_BYTES."),
    InvalidRequest: (422, "body", "A field breaks the request's schema; `errors[].loc` says where."),
    InvalidTensor: (422, "body", "A tensor cannot be read (ragged, not numbers, bad base64, shape and data differ)."),
    DtypeMismatch: (422, "body", "A tensor's dtype does not suit its argument."),
    ShapeMismatch: (422, "body", "A tensor's shape breaks the loss's shape rule."),
    ValueOutOfRange: (422, "body", "A tensor holds a value the loss does not accept (a class index >= C, ...)."),
    TorchRejected: (422, "body", "torch refused the inputs after lossd's checks; `detail` is torch's message."),
    TooManySessions: (429, "server", "The server holds as many sessions as LOSSD_SESSIONS_MAX allows."),
    NotConfigured: (
        501,
        "server",
        "The server is not configured for this (sessions with LOSSD_WORKERS > 1 need Redis).",
    ),
    InternalError: (500, "server", "An unexpected error; `detail` quotes the request id."),
    Overloaded: (503, "server", "Overloaded: retry after `Retry-After` seconds."),
    ResourceExhausted: (503, "server", "Not enough memory for this request."),
    DeviceFailure: (503, "server", "The compute device failed; the process restarts."),
    NotReady: (503, "server", "Not ready: starting, shutting down, or the device is unusable."),
    StoreUnavailable: (503, "server", "The session store (Redis) is unreachable: retry with the same batch id."),
    ComputeTimeout: (504, "server", "The request took longer than LOSSD_REQUEST_TIMEOUT_S."),
}
"""Status code of each error, where its `loc` points (the first element of every loc), and what it
means in the OpenAPI document."""

assert set(ALL_ERRORS) <= set(STATUS), "every domain error needs a status"


GRPC_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    431: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""The gRPC status code (its name) of each status of the table; the queue and memory are limits too."""


def grpc_code(exc: LossdError) -> str:
    """The gRPC status code (its name) of an error: the table's status, in gRPC's terms."""
    if isinstance(exc, Overloaded | ResourceExhausted):  # the queue, the in-flight bytes, memory: limits
        return "RESOURCE_EXHAUSTED"
    return GRPC_CODES[STATUS[type(exc)][0]]


def status_of(exc: LossdError, protocol: Protocol = "problem") -> int:
    status = STATUS[type(exc)][0]
    return 400 if protocol == "v2" and status == 422 else status


def protocol_of(path: str) -> Protocol:
    """Errors under /v2 are the Open Inference Protocol's; every other path answers problems."""
    return "v2" if path.startswith("/v2") else "problem"


def problem_body(exc: LossdError) -> dict[str, Any]:
    """The RFC 9457 document for an error (also one failed entry of /v1/evaluate)."""
    status, where, _ = STATUS[type(exc)]
    body = {"type": f"/problems/{exc.slug}", "title": exc.title, "status": status, "detail": exc.detail}
    body["errors"] = [_detail(where, d) for d in exc.errors]
    if exc.limit is not None:  # RFC 9457 extension members: the limit, and what the request asked for
        body |= {"limit": exc.limit} | ({"actual": exc.actual} if exc.actual is not None else {})
    return body


def render(exc: LossdError, protocol: Protocol = "problem") -> Response:
    """The response for an error, in `protocol`'s format, with the headers its status calls for."""
    if protocol == "v2":
        response = Response(codec.dumps({"error": exc.detail}), status_of(exc, "v2"), media_type="application/json")
    else:
        body = problem_body(exc)
        response = Response(codec.dumps(body), body["status"], media_type=PROBLEM_JSON)
    if isinstance(exc, Overloaded | StoreUnavailable):
        response.headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="lossd"'
    elif isinstance(exc, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(sorted(exc.allow))
    return response


def _detail(where: str, d: ErrorDetail) -> dict[str, Any]:
    return {"loc": [where, *d.loc], "msg": d.msg}


def as_lossd_error(request: Request, exc: Exception) -> LossdError:
    """FastAPI's and Starlette's own exceptions as the errors of the table."""
    if isinstance(exc, LossdError):
        return exc
    if isinstance(exc, RequestValidationError):
        errors = [ErrorDetail(tuple(e["loc"])[1:], str(e["msg"])) for e in exc.errors()]
        return InvalidRequest("the request is not valid", errors=errors)
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}", _methods_at(request))
    if isinstance(exc, HTTPException) and exc.status_code == 404:
        return NotFound(str(exc.detail) if exc.detail != "Not Found" else f"no route {request.url.path}")
    raise exc  # anything else is unexpected: the edge answers it with a 500


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _methods_at(request: Request) -> set[str]:
    """The methods some route serves at this path, included routers' routes too."""
    return {
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in request.app.routes)
    }


async def _handle(request: Request, exc: Exception) -> Response:
    return render(as_lossd_error(request, exc), protocol_of(request.url.path))


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before sending its whole body: nobody is left to answer (499, nginx's code)."""
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=499)


def install(app: FastAPI) -> None:
    """Register the handlers that render the table's errors (the edge answers anything unexpected)."""
    for cls in (LossdError, RequestValidationError, HTTPException):
        app.add_exception_handler(cls, _handle)
    app.add_exception_handler(ClientDisconnect, _client_gone)


def describe(slug: str) -> dict[str, Any] | None:
    """What a problem type means, for `GET /problems/{slug}`."""
    for cls, (status, where, _) in STATUS.items():
        if cls.slug == slug:
            return {
                "type": f"/problems/{slug}",
                "title": cls.title,
                "status": status,
                "description": cls.__doc__,
                "loc_root": where,
            }
    return None


def openapi_responses(path: str, statuses: set[int]) -> dict[str, Any]:
    """The documented error responses of an operation at `path`, from the table."""
    v2 = protocol_of(path) == "v2"
    content = {
        "application/json" if v2 else PROBLEM_JSON: {
            "schema": {"$ref": "#/components/schemas/V2Error" if v2 else "#/components/schemas/Problem"}
        }
    }
    described: dict[int, list[str]] = {}
    for status, _, meaning in STATUS.values():
        status = 400 if v2 and status == 422 else status
        if status in statuses and meaning not in described.setdefault(status, []):
            described[status].append(meaning)
    return {
        str(status): {"description": " ".join(meanings), "content": content}
        for status, meanings in sorted(described.items())
    }
