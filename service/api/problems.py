"""One table from domain errors to HTTP, and the handlers that answer RFC 9457 problem documents.

Every error response of lossd is `application/problem+json` with `type`, `title`, `status`, `detail`
and `errors` (a list of `{"loc", "msg"}`). `type` is a relative URI, `/problems/<slug>`, which the
service itself documents. Unexpected exceptions become a 500 problem without internals; the trace
goes to the log.
"""

from __future__ import annotations

import logging
from typing import Any

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
    DeviceFailure,
    DtypeMismatch,
    ErrorDetail,
    InvalidRequest,
    InvalidTensor,
    LossdError,
    MalformedBody,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ResourceExhausted,
    ShapeMismatch,
    TorchRejected,
    Unauthorized,
    UnknownLoss,
    UnsupportedMediaType,
    ValueOutOfRange,
)

log = logging.getLogger("lossd")

PROBLEM_JSON = "application/problem+json"

STATUS: dict[type[LossdError], tuple[int, str]] = {
    MalformedBody: (400, "body"),
    UnsupportedMediaType: (415, "header"),
    NotFound: (404, "path"),
    UnknownLoss: (404, "path"),
    InvalidRequest: (422, "body"),
    InvalidTensor: (422, "body"),
    DtypeMismatch: (422, "body"),
    ShapeMismatch: (422, "body"),
    ValueOutOfRange: (422, "body"),
    TorchRejected: (422, "body"),
    PayloadTooLarge: (413, "body"),
    ResourceExhausted: (503, "body"),
    Unauthorized: (401, "header"),
    Overloaded: (503, "body"),
    ComputeTimeout: (504, "body"),
    DeviceFailure: (503, "body"),
}
"""Status code of each domain error, and where its `loc` points (the first element of every loc)."""

assert set(STATUS) == set(ALL_ERRORS), "every domain error needs a status"


def problem(status: int, slug: str, title: str, detail: str, errors: list[dict[str, Any]]) -> Response:
    """An RFC 9457 response."""
    body = {"type": f"/problems/{slug}", "title": title, "status": status, "detail": detail, "errors": errors}
    return Response(codec.dumps(body), status_code=status, media_type=PROBLEM_JSON)


def problem_body(exc: LossdError) -> dict[str, Any]:
    """The RFC 9457 document for a domain error (also one failed entry of /v1/evaluate)."""
    status, where = STATUS[type(exc)]
    body = {"type": f"/problems/{exc.slug}", "title": exc.title, "status": status, "detail": exc.detail}
    body["errors"] = [_detail(where, d) for d in exc.errors]
    if exc.limit is not None:  # RFC 9457 extension members: the limit, and what the request asked for
        body |= {"limit": exc.limit} | ({"actual": exc.actual} if exc.actual is not None else {})
    return body


def error_response(exc: LossdError) -> Response:
    """The problem response for a domain error."""
    body = problem_body(exc)
    response = Response(codec.dumps(body), status_code=body["status"], media_type=PROBLEM_JSON)
    if isinstance(exc, Overloaded):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _detail(where: str, d: ErrorDetail) -> dict[str, Any]:
    return {"loc": [where, *d.loc], "msg": d.msg}


async def _lossd_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, LossdError)
    return error_response(exc)


async def _request_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e["loc"]), "msg": str(e["msg"])} for e in exc.errors()]
    return problem(422, InvalidRequest.slug, InvalidRequest.title, "the request is not valid", errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
    response = problem(exc.status_code, slug, title, str(exc.detail), [])
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:  # every method of every route at this path, not just the first route's
        response.headers["Allow"] = ", ".join(sorted(_methods_at(request)))
    return response


def _methods_at(request: Request) -> set[str]:
    methods: set[str] = set()
    scope = {**request.scope, "method": "GET"}  # a method that matches nothing reveals the path's routes
    for route in request.app.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ()) - {"HEAD"}
    return methods


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before sending its whole body: nobody is left to answer, nothing went wrong here."""
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> Response:
    request_id = request.scope.get("lossd", {}).get("request_id", "")
    log.error(
        "unexpected error on %s %s", request.method, request.url.path, exc_info=exc, extra={"request_id": request_id}
    )
    detail = f"the server failed to handle this request; quote request id {request_id}"
    response = problem(500, "internal-error", "Internal server error", detail, [])
    response.headers["X-Request-ID"] = request_id
    return response


def install(app: FastAPI) -> None:
    """Register every problem handler on `app`."""
    app.add_exception_handler(LossdError, _lossd_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


def describe(slug: str) -> dict[str, Any] | None:
    """What a problem type means, for `GET /problems/{slug}`."""
    for cls, (status, where) in STATUS.items():
        if cls.slug == slug:
            return {
                "type": f"/problems/{slug}",
                "title": cls.title,
                "status": status,
                "description": cls.__doc__,
                "loc_root": where,
            }
    return None
