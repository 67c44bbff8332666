"""The edge: one pure-ASGI middleware for what every request goes through on its way to its route.

Request id, API key, the body limit (declared and while reading), metrics, the access log, and the
500 for anything unexpected. It never answers a request itself except to refuse it before it is read,
and it never dispatches to an endpoint: routing is the router's. CORS sits outside it (see
`service.app`), so refusals and errors of an allowed origin carry CORS headers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import InternalError, NotReady, protocol_of, render
from service.api.metrics import Metrics
from service.errors import LossdError, Overloaded, PayloadTooLarge, Unauthorized
from service.server.protocol import STALLED_ANSWER

log = logging.getLogger("lossd")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
"""Routes that answer without an API key: orchestrators probe them."""
DOCUMENT_PATHS = frozenset({"/openapi.json", "/docs", "/redoc"})
DOCUMENT_ASSETS = "/docs/assets/"
"""The API's own documents and their pages' assets: public too, so that a browser, which sends no key with a page,
can show them. They describe the API (as the committed openapi/openapi.json does) and hold no data."""


def needs_key(path: str) -> bool:
    """Whether a request for `path` needs an API key (when keys are set)."""
    return not (path in PUBLIC_PATHS or path in DOCUMENT_PATHS or path.startswith(DOCUMENT_ASSETS))


REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
"""A request id a client may give (`X-Request-ID`, or gRPC's `x-request-id` metadata): otherwise one is made."""
_WANTED = frozenset({b"x-request-id", b"authorization", b"content-length"})


class Edge:
    """Ids, keys, limits, metrics and the access log for every HTTP request of one app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: list[str],
        max_body_bytes: int,
        inflight: InflightBytes,
        metrics: Metrics,
        access_log: AccessLog | None,
    ):
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.limit = max_body_bytes
        self.metrics = metrics
        self.access_log = access_log
        self.ids = RequestIds()
        self.inflight = inflight
        self._static: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v for k, v in scope["headers"] if k in _WANTED}
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else self.ids.next()
        info: dict[str, Any] = {"request_id": request_id, "status": 0, "bytes_in": 0, "bytes_out": 0}
        scope["lossd"] = info
        limit = self.limit
        start = time.perf_counter()

        share = self.inflight.share()  # this request's bytes of the in-flight bound

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                info["bytes_out"] += len(body)
                if len(body) >= HELD_ANSWER_BYTES and not message.get("more_body"):
                    # held until it has left the server's buffers: the send of the body's (empty) end waits for the
                    # bytes before it to drain to the kernel (or for the connection to be cut, LOSSD_WRITE_TIMEOUT_S,
                    # or sooner when room is wanted and the client has stalled: lossd's server says how)
                    share.hold(len(body), scope.get("extensions", {}).get(STALLED_ANSWER, {}).get("drop"))
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        info["hold"] = share.take  # what reading the body will build besides its bytes (see `InflightBytes`)

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                info["bytes_in"] += len(message.get("body", b""))
                if info["bytes_in"] > limit:
                    raise PayloadTooLarge(
                        f"the request body exceeds the limit of {limit} bytes", limit=limit, actual=info["bytes_in"]
                    )
                if info["bytes_in"] > share.body:  # a chunked body (or one longer than declared) counts as it comes
                    share.take(info["bytes_in"] - share.body)
                    share.body = info["bytes_in"]
            return message

        self.metrics.in_flight += 1
        try:
            refusal = self._refusal(scope["path"], headers)
            if refusal is None and (declared := _declared(headers)):
                refusal = share.admit(declared)
            if refusal is not None:
                self.metrics.rejections.labels(reason=refusal.slug).inc()
                await render(refusal, protocol_of(scope["path"]))(scope, receive, send_with_id)
            else:
                await self.app(scope, counted_receive, send_with_id)
        except asyncio.CancelledError:  # the server stops waiting for this request (the drain timed out)
            if not info["status"]:
                gone = NotReady("the server is shutting down and stopped this request; retry on another replica")
                with contextlib.suppress(Exception):
                    await render(gone, protocol_of(scope["path"]))(scope, receive, send_with_id)
            raise
        except Exception as exc:  # the route's handlers render every expected error: this is a bug
            log.error(
                "unexpected error on %s %s",
                scope["method"],
                scope["path"],
                exc_info=exc,
                extra={"request_id": request_id},
            )
            if info["status"]:
                raise  # the response has begun: the server can only cut the connection
            detail = f"the server failed to handle this request; quote request id {request_id}"
            await render(InternalError(detail), protocol_of(scope["path"]))(scope, receive, send_with_id)
        finally:
            share.close()
            self.metrics.in_flight -= 1
            self._record(scope, info, time.perf_counter() - start)

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> LossdError | None:
        """Why a request is refused before it is read: no valid key, or a declared body over the limit."""
        if self.keys and needs_key(path) and not valid_key(self.keys, headers.get(b"authorization", b"")):
            return Unauthorized("a valid API key is required: send `Authorization: Bearer <key>`")
        declared = _declared(headers)
        if declared > self.limit:
            return PayloadTooLarge(
                f"the request body of {declared} bytes exceeds the limit of {self.limit} bytes",
                limit=self.limit,
                actual=declared,
            )
        return None

    def _record(self, scope: Scope, info: dict[str, Any], seconds: float) -> None:
        route = info.get("route") or self._template(scope)
        status = info["status"] or 499  # no response started: the client went away first
        record(self.metrics, self.access_log, info, scope["method"], route, scope["path"], status, seconds)

    def _template(self, scope: Scope) -> str:
        """The route a path matched, as a template, for bounded metric labels ("unmatched" for the rest)."""
        route = getattr(scope.get("route"), "path", None)
        if route:
            return str(route)
        if self._static is None:
            app = scope.get("app")
            self._static = frozenset(getattr(r, "path", "") for r in getattr(app, "routes", []))
        return str(scope["path"]) if scope["path"] in self._static else "unmatched"


def record(
    metrics: Metrics,
    access_log: AccessLog | None,
    info: dict[str, Any],
    method: str,
    route: str,
    path: str,
    status: int | str,
    seconds: float,
) -> None:
    """One answered request (HTTP, or a gRPC call) in the metrics and the access log; `info` holds its
    `request_id`, `loss` (if any), `bytes_in` and `bytes_out`."""
    loss = info.get("loss", "")
    metrics.record(route, loss, status, seconds, info["bytes_in"])
    if access_log is not None:
        access_log.write(
            {
                "request_id": info["request_id"],
                "method": method,
                "route": route,
                "path": path,
                "loss": loss or None,
                "status": status,
                "duration_ms": round(seconds * 1e3, 3),
                "bytes_in": info["bytes_in"],
                "bytes_out": info["bytes_out"],
            }
        )


def valid_key(keys: list[bytes], authorization: bytes) -> bool:
    """`authorization` is `Bearer <key>` with one of `keys` (HTTP's header, or gRPC's metadata)."""
    scheme, _, token = authorization.partition(b" ")
    # compare with every key, in constant time, so timing tells nothing about which part matched
    matched = [hmac.compare_digest(token.strip(), key) for key in keys]
    return scheme.lower() == b"bearer" and any(matched)


def _declared(headers: dict[bytes, bytes]) -> int:
    """The body size a request declares (0 without a valid Content-Length)."""
    declared = headers.get(b"content-length")
    return int(declared) if declared is not None and declared.isdigit() else 0


HELD_ANSWER_BYTES = 1 << 20
"""An answer at least this large counts in the in-flight bound until it has left the server's buffers for the
kernel's (smaller ones go there at once; the kernel holds a few MB per connection, outside the bound)."""


class InflightBytes:
    """The memory that request bodies hold at once, bounded. Each request takes its `share`: its declared
    `Content-Length` when it arrives (a body that would pass the bound is refused, 503 with Retry-After,
    before it is read), a chunked body as it comes, and then what reading it builds besides its bytes (an
    inflated gzip body, the Python lists of nested JSON arrays), taken by the worker thread that reads it;
    and a large answer, until it has left the server's buffers (clients that do not read what they asked for
    cannot pile answers up in memory: the requests that come meanwhile get a 503 until the answers drain, are cut
    off for room (below), or LOSSD_WRITE_TIMEOUT_S cuts them off). A share is given back when its request is
    answered (and its answer has drained); a thread abandoned at a timeout takes nothing after.

    A request refused for want of room makes room for the next: each held answer whose client has stalled (its
    `drop` says whether, and cuts it off) is dropped. Else a few answers nobody reads would refuse every request
    until the write timeout, and again after it for as long as they are asked for anew."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()
        self._answers: dict[InflightShare, Callable[[], bool]] = {}
        """Shares holding an answer, and how to drop it if its client has stalled (True when it did)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._relieving = False

    def share(self) -> InflightShare:
        return InflightShare(self)

    def _press(self) -> None:
        """A request refused for want of room (under the lock, in any thread): drop stalled answers, on the loop."""
        if self._answers and self._loop is not None and not self._relieving:
            self._relieving = True
            self._loop.call_soon_threadsafe(self._relieve)

    def _relieve(self) -> None:
        with self._lock:
            self._relieving = False
            drops = list(self._answers.values())
        for drop in drops:
            drop()

    def _refusal(self, nbytes: int, held: int) -> LossdError:
        if nbytes > self.limit:
            return PayloadTooLarge(
                f"reading this request would hold about {nbytes} bytes (its body, inflated, and what parsing it "
                f"builds); the limit for all requests together is {self.limit} (LOSSD_MAX_INFLIGHT_BYTES): send "
                "tensors as flat data or base64 (over gRPC, as raw_input_contents)",
                limit=self.limit,
                actual=nbytes,
            )
        return Overloaded(
            f"{held} bytes of request bodies being received or processed, and of answers not yet read by their "
            f"clients, are held; {nbytes} more would pass the limit of {self.limit} (LOSSD_MAX_INFLIGHT_BYTES): "
            "retry shortly",
            limit=self.limit,
            actual=held + nbytes,
        )


class InflightShare:
    """One request's bytes of the in-flight bound (taken from any thread, under the bound's lock)."""

    def __init__(self, bound: InflightBytes):
        self.bound = bound
        self.bytes = 0
        self.body = 0
        """Of `bytes`, those of the body as received (declared, or counted as it came)."""
        self.closed = False

    def admit(self, declared: int) -> LossdError | None:
        """Take a declared body's bytes, or say why not."""
        refusal = self._take(declared)
        if refusal is None:
            self.body = declared
        return refusal

    def take(self, nbytes: int) -> None:
        """Take `nbytes` more; raises the refusal past the bound. Nothing once the request is answered."""
        refusal = self._take(nbytes)
        if refusal is not None:
            raise refusal

    def hold(self, nbytes: int, drop: Callable[[], bool] | None = None) -> None:
        """Take `nbytes` whatever the bound (an answer already made): the requests after it see them held. On the
        event loop; `drop` cuts the answer off if its client has stalled, should room be wanted."""
        bound = self.bound
        with bound._lock:
            if not self.closed:
                bound.held += nbytes
                self.bytes += nbytes
                if drop is not None:
                    bound._answers[self] = drop
                    bound._loop = asyncio.get_running_loop()

    def _take(self, nbytes: int) -> LossdError | None:
        bound = self.bound
        with bound._lock:
            if self.closed or nbytes <= 0:
                return None
            held = bound.held
            if held + nbytes <= bound.limit:
                bound.held += nbytes
                self.bytes += nbytes
                return None
            if nbytes <= bound.limit:  # it would fit, with room made
                bound._press()
        return bound._refusal(nbytes, held)

    def close(self) -> None:
        with self.bound._lock:
            self.closed = True
            self.bound.held -= self.bytes
            self.bytes = 0
            self.bound._answers.pop(self, None)


class RequestIds:
    """Generated request ids: 16 random hex digits per app, then a counter (unique across replicas)."""

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count:016x}"


class AccessLog:
    """One JSON line per request, as cheap as a line can be: serialized by orjson, buffered, and written
    in batches (every `interval` seconds, or at 64 KiB) rather than through `logging`'s machinery,
    which cost a fifth of lossd's throughput on small requests. Lines match lossd's other log lines:
    `time`, `level`, `logger`, `message`, then the request's fields. `sink` receives each batch."""

    BATCH_BYTES = 1 << 16

    def __init__(self, sink: Callable[[bytes], None] | None = None, interval: float = 0.05):
        self.sink = sink or write_stderr
        self.interval = interval
        self._buffer = bytearray()
        self._second = -1
        self._stamp = b""
        self._scheduled = False

    def write(self, fields: dict[str, Any]) -> None:
        now = int(time.time())
        if now != self._second:  # the timestamp changes once a second: format it once a second
            self._second = now
            self._stamp = time.strftime('{"time":"%Y-%m-%dT%H:%M:%S",', time.localtime(now)).encode()
        self._buffer += self._stamp
        self._buffer += b'"level":"info","logger":"lossd.access","message":"request",'
        self._buffer += orjson.dumps(fields)[1:]
        self._buffer += b"\n"
        if len(self._buffer) >= self.BATCH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_later(self.interval, self.flush)
            except RuntimeError:  # no event loop (a synchronous caller): write at once
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            with contextlib.suppress(OSError, ValueError):  # a closed or broken stderr must not fail requests
                self.sink(data)


def write_stderr(data: bytes) -> None:
    """Write all of `data` to file descriptor 2 (a pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(2, view) :]
