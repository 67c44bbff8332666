"""lossd's HTTP/1.1 connection protocol: uvicorn's httptools (llhttp) protocol plus lossd's connection rules.

Every byte a client sends passes through `LossdHttpProtocol` before any request reaches the app, so rules
that are about connections rather than requests live here (and only here): which upgrades are honoured,
how many connections a worker holds, how large a request head may be, and how long a client may take to
send a request or keep an idle connection. `protocol_for(settings)` is the class with the settings' limits.

Upgrade offers. A client may offer to switch protocols with `Connection: Upgrade` and `Upgrade: <protocol>`.
curl's `--http2` and Java's `java.net.http.HttpClient` (with its default settings) offer `Upgrade: h2c`
(HTTP/2 over cleartext) on their first request, a POST with its body included. lossd speaks no HTTP/2 and no
WebSocket, so it declines every such offer, as RFC 9110 (section 7.8) and RFC 9113 (section 3.1) allow: the
request is answered over HTTP/1.1 as if the offer had not been made, and the client carries on with
HTTP/1.1. uvicorn's own protocol cannot do that: httptools tells llhttp to skip the body of any request that
offers an upgrade, and uvicorn hands the app an empty body (a 400) and drops the body's bytes. Here the
request head is held back from the app, rebuilt without the upgrade headers, and parsed again, with the
bytes after it, by a fresh parser: the app sees one ordinary request with its body, and keep-alive and
pipelined requests that follow on the connection work as usual. A WebSocket upgrade still goes to uvicorn's
WebSocket protocol when a WebSocket library is installed (lossd has no WebSocket route).

Limits (each a `LOSSD_*` setting; the refusals are RFC 9457 problem documents, sent with `connection: close`):

- `max_connections`: open connections per worker process (uvicorn's `server_state.connections`, so every
  connection of this server counts). At the limit, a new connection takes the place of one that waits on its
  client (`LossdHttpProtocol._evict_slowest`); when none may be closed, it is answered `503` (`Retry-After: 1`)
  at once, without reading anything, and closed.
- `max_header_bytes`: the request line and headers together, counted as the bytes arrive, before llhttp or
  httptools buffer them: beyond it, `431` and the connection is closed, nothing more read. Also bounds a
  chunked body's trailer section. The count is exact except for the head of a pipelined request that
  begins in the same read as the end of the request before it: that read's share is not counted (at most
  one read, 256 kB with uvloop).
- `read_timeout_s`: a request's head and body must have arrived within this many seconds of its first byte,
  else `408` (or, when its response has already begun, the connection is just closed). Time during which
  the server itself holds the request back (reading paused while the app has not taken the body, a
  `100-continue` not yet sent, an earlier pipelined request still being answered) does not count: the clock
  starts again. A request whose body has arrived is never timed here (the app's own timeout covers it).
- `keep_alive_s`: a connection with no request in progress and no response pending is closed after this many
  idle seconds, both between requests and after it is opened: a connection that never sends a byte is
  closed after `keep_alive_s` (not `read_timeout_s`), like an idle keep-alive connection.
- `write_timeout_s`: while a response's bytes wait in the server for the client to read them, the client must
  take some of them every `write_timeout_s` (nginx's `send_timeout`), else the connection is aborted and those
  bytes dropped. A connection whose client is not reading counts as waiting on its client: at the connection
  limit it may be closed for a new one. (The bytes themselves count against `LOSSD_MAX_INFLIGHT_BYTES` until
  they drain, and a request refused for want of room there cuts off the connections whose clients have taken
  nothing for `STALLED_S`: see `service.api.edge`.)

The deadlines cost no timer per request: each connection has one timer, which, when it fires, compares the
connection's phase and the time that phase began (two attributes that the parser callbacks set) with the
deadline that applies, then closes the connection or sets itself for that deadline, or for the shorter
of the two limits from now if that is sooner (the phase may change meanwhile). A busy keep-alive
connection's timer fires about once every `min(keep_alive_s, read_timeout_s)`. uvicorn's own keep-alive
timer (armed and cancelled around every request) is not used.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import sys
import termios
from collections.abc import Iterable
from typing import Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.api.errors import MalformedRequest, problem_body
from service.config import Settings
from service.errors import HeadersTooLarge, LossdError, Overloaded, RequestTimeout

DECLINED_UPGRADE_HEADERS = frozenset({b"upgrade", b"http2-settings"})
"""Headers (and `Connection` tokens) that only make sense if the upgrade is accepted: left out of the replay."""

IDLE, HEAD, BODY, CLOSED = 0, 1, 2, 3
"""A connection's phases, as its parser sees them: no request in progress (waiting for one, or all of the
latest one has arrived); a request head arriving; a request body arriving; closed or handed over, so that
nothing it receives is read any more."""

STALLED_ANSWER = "lossd.stalled_answer"
"""The scope extension by which this server lets the app's edge (`service.api.edge`) cut off a connection whose
client has stalled on its answer: `{"drop": () -> bool}`, True when it did. (Defined here, not in the edge: this
module is imported before `LOSSD_WORKERS` processes set up prometheus_client, which the edge's imports load.)"""
EVICT_AFTER_S = 1.0
"""At the connection limit, a connection that has served a request and has waited this long on its client may be
closed for a new one (one that has never sent a whole request may be at once)."""
STALLED_S = 2.0
"""When room is wanted in the in-flight bound, a client that has taken none of its answer for this long has stalled,
and its connection is cut off."""
_SLACK_S = 0.001
"""A deadline within this of the loop's clock (which has millisecond resolution under uvloop) has passed."""


def _problem(exc: LossdError) -> bytes:
    """A complete response after the status line and the server's default headers: the error's RFC 9457
    document from the one error table (`service.api.errors`), and `connection: close`."""
    body = problem_body(exc)
    payload = json.dumps(body, separators=(",", ":")).encode()
    retry = b"retry-after: %d\r\n" % exc.retry_after if isinstance(exc, Overloaded) else b""
    return b"".join(
        [
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(payload),
            retry,
            b"connection: close\r\n\r\n",
            payload,
        ]
    )


class _CountingTransport:
    """The connection's transport, counting the bytes written to it (the write timeout's measure of progress);
    everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport
        self.written = 0
        # what uvicorn calls on every request, bound once (`__getattr__` finds the rest)
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info
        self.get_write_buffer_size = transport.get_write_buffer_size
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading
        self.close = transport.close
        self.abort = transport.abort

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)
        self._transport.write(data)

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        lines = list(lines)
        self.written += sum(len(line) for line in lines)
        self._transport.writelines(lines)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _kernel_unsent(transport: asyncio.Transport) -> int:
    """Bytes in the kernel's send queue of the connection's socket, not yet acknowledged by the client (Linux's
    SIOCOUTQ; 0 where it is not available). With the transport's own buffer, what the client has not read: the
    kernel's queue (megabytes) moves with every read of the client, the transport's only when it empties."""
    sock = transport.get_extra_info("socket")
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except (AttributeError, OSError, ValueError):
        return 0
    return int.from_bytes(out, sys.byteorder, signed=True)


def _field_default(name: str) -> Any:
    return Settings.model_fields[name].default


class LossdHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering a request that offers an upgrade lossd declines over HTTP/1.1,
    and bounding each connection's count, head size and read and idle time (`protocol_for` sets the limits;
    this class has the settings' defaults)."""

    max_connections: ClassVar[int] = _field_default("max_connections")
    read_timeout_s: ClassVar[float] = _field_default("read_timeout_s")
    keep_alive_s: ClassVar[float] = _field_default("keep_alive_s")
    write_timeout_s: ClassVar[float] = _field_default("write_timeout_s")
    max_header_bytes: ClassVar[int] = _field_default("max_header_bytes")

    _declined_head: bytes | None = None
    """The head of the current request, rebuilt without its upgrade offer, while that offer is declined."""

    _phase: int = IDLE
    _since: float = 0.0
    """When the phase began: the first byte of the request arriving, or when the connection fell idle."""
    _head_left: int = 0
    """Bytes the request head arriving (or the next one) may still take; in a body, what its trailers may."""
    _heads: int = 0
    """Request heads parsed on this connection (tells whether a read finished one)."""
    _requests: int = 0
    """Requests that have arrived whole on this connection."""
    _spoke: bool = False
    """Whether the client has sent any byte."""
    _extensions: dict[str, dict[object, object]]
    _chunk_open: bool = False
    """Between a chunk's header and the chunk's end: its data, or after the last chunk, the trailers."""
    _body_seen: bool = False
    """Body data arrived in the read being parsed (for chunked bodies)."""
    _timer: asyncio.TimerHandle | None = None
    _out: _CountingTransport
    _lost: bool = False
    _unread: int = 0
    """Bytes sent on the connection that the client had not taken when last seen (0: it owed nothing)."""
    _taken: int = 0
    """Bytes the client had taken (the kernel had them acknowledged) when it last took some."""
    _unread_since: float = 0.0
    """When the client last took some of what it was sent (or began to owe it)."""

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._out = _CountingTransport(transport)
        transport = cast(asyncio.Transport, self._out)
        if len(self.connections) >= self.max_connections and not self._evict_slowest():
            self.transport = transport
            self._phase = CLOSED
            self.logger.debug("Connection refused: %d connections open.", len(self.connections))
            detail = (
                f"this server process holds its limit of {self.max_connections} connections "
                "(LOSSD_MAX_CONNECTIONS); retry shortly"
            )
            self._write_and_close(503, _problem(Overloaded(detail, limit=self.max_connections)))
            return
        super().connection_made(transport)
        self._extensions = {STALLED_ANSWER: {"drop": self._drop_stalled}}  # every request's scope, made once
        self._head_left = self.max_header_bytes
        self._since = now = self.loop.time()
        self._timer = self.loop.call_at(now + self._period(), self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stop()
        super().connection_lost(exc)

    def _stop(self) -> None:
        """Read nothing more, and time nothing more but the client's taking what it was sent (closing, or handed to
        another protocol): until the connection is gone, `_watch_writes` cuts it when the client stops reading."""
        self._phase = CLOSED
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if self._lost else self.loop.call_at(self.loop.time() + self._period(), self._watch_writes)

    def _watch_writes(self) -> None:
        """The timer once reading has stopped: the write timeout still holds, until all is taken and the
        connection closes."""
        self._timer = None
        if self._lost:
            return
        now = self.loop.time()
        if self._client_not_reading(now):
            self._drop_unread()
            return
        if self._unread or not self.transport.is_closing():
            self._timer = self.loop.call_at(now + self._period(), self._watch_writes)

    def _drop_stalled(self) -> bool:
        """Cut the connection off if its client has taken none of what it owes for `STALLED_S`: room is wanted in the
        in-flight bound (the edge asks, through the scope's `STALLED_ANSWER` extension). True when it did."""
        if self._lost:
            return False
        now = self.loop.time()
        self._client_not_reading(now)
        if not self._unread or now - self._unread_since < STALLED_S:
            return False
        self._drop_unread()
        return True

    def _drop_unread(self) -> None:
        """Abort the connection, dropping what its client has not read (`close()` would wait for that client,
        holding the bytes); nothing more is read or timed."""
        self.logger.debug("Connection aborted: its client is not reading what it was sent.")
        self._lost = True  # connection_lost follows: no timer for what remains
        self._stop()
        self.transport.abort()

    # Reading

    def data_received(self, data: bytes | memoryview) -> None:
        self._spoke = True
        phase = self._phase
        if phase == BODY:
            if self._chunk_open:
                self._feed_chunked(data)
            else:
                self._feed(data)
        elif phase == CLOSED:
            return
        elif len(data) <= self._head_left:  # a request head (or the start of one), within its budget
            heads = self._heads
            self._feed(data)
            if self._heads == heads and self._phase == HEAD:  # the same head, still arriving: all of it counts
                self._head_left -= len(data)
        else:
            self._feed_head_over_budget(data)

    def _feed_head_over_budget(self, data: bytes | memoryview) -> None:
        """Feed a head's remaining budget at a time; a head that does not end within it gets 431, and nothing
        more is read."""
        view = memoryview(data)
        while len(view) > self._head_left and self._phase in (IDLE, HEAD):
            left, heads = self._head_left, self._heads
            self._feed(view[:left])  # httptools reads any buffer
            if self._phase == CLOSED:
                return
            if self._heads == heads:
                self._refuse_head()
                return
            view = view[left:]
        if view:
            self.data_received(view)  # a body, or a head within its budget

    def _feed_chunked(self, data: bytes | memoryview) -> None:
        """A read inside a chunk or after the last one: bytes that bring no body data are trailer fields (or
        chunk extensions), which httptools buffers like headers, so they count against `max_header_bytes`."""
        self._body_seen = False
        self._feed(data)
        if self._phase == BODY and self._chunk_open and not self._body_seen:
            self._head_left -= len(data)
            if self._head_left < 0:
                self._refuse_head()
        else:
            self._head_left = self.max_header_bytes

    def _feed(self, data: bytes | memoryview) -> None:
        """Parse `data`, declining upgrade offers (see the module's docstring)."""
        replayed = -1  # length of the head replayed last, in `data`
        while True:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                self._bad_request(f"the request is not valid HTTP/1.1: {exc}")
            except httptools.HttpParserUpgrade as upgrade:
                head, stop = self._declined_head, upgrade.args[0]
                if head is None:  # a WebSocket upgrade (or a CONNECT): uvicorn's own handling
                    if self._should_upgrade():
                        self._stop()  # the WebSocket protocol takes the connection over
                        self.handle_websocket_upgrade()
                    else:
                        self._unsupported_upgrade_warning()
                elif stop <= replayed:  # the replayed head offers an upgrade again: never loop on it
                    self._bad_request("the request offers an upgrade again once it has been declined")
                else:  # llhttp stopped after the head: parse the head again without the offer, and the rest
                    self._declined_head = None
                    data = head + data[stop:]
                    replayed = len(head)
                    self.parser = self._new_parser()
                    continue
            return

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = HEAD
        self._since = self.loop.time()
        self.scope["extensions"] = self._extensions

    def on_headers_complete(self) -> None:
        self._phase = BODY
        self._heads += 1
        self._head_left = self.max_header_bytes  # the next head's budget (and this body's trailers')
        parser = self.parser
        if parser.should_upgrade():
            method = parser.get_method()
            if method != b"CONNECT" and not self._should_upgrade():
                # Not handed to the app yet: llhttp is about to skip the body. data_received replays it.
                self._declined_head = self._head_without_upgrade(method, parser.get_http_version())
                return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_seen = True  # also when uvicorn drops it (the response is complete): not trailers
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._chunk_open = True

    def on_chunk_complete(self) -> None:
        self._chunk_open = False

    def on_message_complete(self) -> None:
        self._phase = IDLE
        self._requests += 1
        if self._declined_head is not None:
            return  # the request's replay will complete it
        super().on_message_complete()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:  # answered before its body had all arrived: idle from now
            self._since = self.loop.time()

    def on_response_complete(self) -> None:
        # uvicorn's, without its keep-alive timer: `_check_deadline` closes idle connections
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            if self._phase == BODY and not self.pipeline:  # its body, held back until now, may be read
                self._since = self.loop.time()
        elif self._phase == IDLE:
            self._since = self.loop.time()

    # Deadlines

    def _check_deadline(self) -> None:
        """The connection's timer: close the connection if its phase has outlived its deadline, else fire again
        at that deadline or after `_period()`, whichever is first: the phase may change meanwhile (without
        telling the timer), and the next phase's deadline is at least `_period()` after it begins, so the
        timer always fires again before it, and from then on at it."""
        self._timer = None
        phase = self._phase
        if phase == CLOSED:
            return
        now = self.loop.time()
        if self._client_not_reading(now):
            self._drop_unread()
            return
        if self._unread:  # the client is taking a response: idle (and read) clocks wait until it has
            self._since = now
            self._timer = self.loop.call_at(now + self._period(), self._check_deadline)
            return
        if self.transport.is_closing():
            return
        cycle = self.cycle
        pending = bool(self.pipeline) or (cycle is not None and not cycle.response_complete)
        if phase == IDLE:
            if pending:  # the server is answering: nothing of the client's to time
                due = math.inf
            else:
                due = self._since + self.keep_alive_s
                if due <= now + _SLACK_S:
                    self.logger.debug("Idle connection closed after %s s.", self.keep_alive_s)
                    self._stop()
                    self.transport.close()
                    return
        elif (
            self.flow.read_paused
            or (pending and (phase == HEAD or self.pipeline))
            or (phase == BODY and cycle is not None and cycle.waiting_for_100_continue)
        ):  # the server holds this request back: its clock starts again
            self._since = now
            due = math.inf
        else:
            due = self._since + self.read_timeout_s
            if due <= now + _SLACK_S:
                self._read_timed_out()
                return
        self._timer = self.loop.call_at(min(due, now + self._period()), self._check_deadline)

    def _client_not_reading(self, now: float) -> bool:
        """Update what the client owes; True when it has taken none of it for `write_timeout_s`. Progress is bytes
        taken (written less those still in the transport's buffer or unacknowledged in the kernel's), so a client
        that reads one answer while the next is written is seen reading."""
        unread = self.transport.get_write_buffer_size() + _kernel_unsent(self.transport)
        taken = self._out.written - unread
        if unread == 0 or not self._unread or taken > self._taken:  # owes nothing, newly owes, or took some
            self._unread, self._taken, self._unread_since = unread, taken, now
            return False
        self._unread = unread
        return now - self._unread_since >= self.write_timeout_s - _SLACK_S

    def _evict_slowest(self) -> bool:
        """At the connection limit, make room by closing a connection that waits on its client: first one that has
        never sent a whole request, however young (a silent one first, then the oldest), else the one that has
        waited longest, over `EVICT_AFTER_S`, idle, still sending a request, or not reading its answer. Connections
        being answered are never closed. So clients that hold connections open without sending cannot lock others
        out, however often they open them anew, and cannot make room for themselves at the expense of clients
        between two requests. False when no connection qualifies."""
        now = self.loop.time()
        victim: LossdHttpProtocol | None = None
        best = (2, True, math.inf)
        for other in self.connections:
            if not isinstance(other, LossdHttpProtocol):
                continue
            since = other._waiting_on_client(now)
            if since is None or (other._requests and since > now - EVICT_AFTER_S):
                continue
            key = (0, other._spoke, since) if other._requests == 0 else (1, True, since)
            if key < best:
                victim, best = other, key
        if victim is None:
            return False
        self.logger.debug("Connection limit reached: closing the connection that waited longest on its client.")
        if victim._unread:  # a response it does not read
            victim._drop_unread()
        elif victim._phase == IDLE:
            victim._stop()
            victim.transport.close()
        else:
            detail = (
                f"the request was still arriving when the server, at its limit of {self.max_connections} "
                "connections (LOSSD_MAX_CONNECTIONS), needed the connection that waited longest on its client"
            )
            victim._read_timed_out(detail)
        return True

    def _waiting_on_client(self, now: float) -> float | None:
        """Since when the connection has waited on its client: to read a response it has read none of since
        then, or idle or sending a request with nothing of the server's own in progress; None when it has not."""
        if self._lost:
            return None
        self._client_not_reading(now)
        if self._unread:
            return self._unread_since
        if self._phase == CLOSED or self.transport.is_closing() or self.flow.read_paused:
            return None
        cycle = self.cycle
        if self._phase == BODY:
            waiting = cycle is not None and not cycle.response_started and not cycle.waiting_for_100_continue
        else:
            waiting = not self.pipeline and (cycle is None or cycle.response_complete)
        return self._since if waiting else None

    def _period(self) -> float:
        """The longest the timer waits: the shortest deadline of a phase."""
        return min(self.keep_alive_s, self.read_timeout_s, self.write_timeout_s)

    def _read_timed_out(self, detail: str | None = None) -> None:
        """408, and close: the request (head or body) has not all arrived within `read_timeout_s` (or
        `detail` says why else it was cut off)."""
        cycle = self.cycle if self._phase == BODY else None
        self.logger.debug("Request not received within %s s: connection closed.", self.read_timeout_s)
        if cycle is not None and cycle.response_started:
            self._stop()
            self.transport.close()  # the app has begun answering: it can only be cut short
            return
        if cycle is not None:
            cycle.disconnected = True  # the app, waiting for the body, sees the client gone; its answer is dropped
            cycle.message_event.set()
        part = "body" if self._phase == BODY else "header"
        limit = f"{self.read_timeout_s:g} s"
        detail = detail or f"the request was not received within {limit} of its first byte (LOSSD_READ_TIMEOUT_S)"
        self._write_and_close(408, _problem(RequestTimeout(detail, loc=(part,))))

    # Refusals

    def _refuse_head(self) -> None:
        """431, reading nothing more: the request head (or a body's trailers) outgrew `max_header_bytes`."""
        self.logger.debug("Request head larger than %d bytes: connection closed.", self.max_header_bytes)
        cycle = self.cycle
        if self._phase == BODY and self.pipeline:  # a queued request's trailers: nothing can be answered in turn
            self._stop()
            self.transport.close()
            return
        if self._phase == HEAD and cycle is not None and (self.pipeline or not cycle.response_complete):
            # an earlier request is still being answered: let its answer finish, then close
            self._stop()
            cycle.keep_alive = False
            self.transport.pause_reading()
            return
        if self._phase == BODY and cycle is not None:
            if cycle.response_started:
                self._stop()
                self.transport.close()
                return
            cycle.disconnected = True
            cycle.message_event.set()
        detail = (
            f"the request line and headers (or trailers) exceed the limit of {self.max_header_bytes} bytes "
            "(LOSSD_MAX_HEADER_BYTES)"
        )
        self._write_and_close(431, _problem(HeadersTooLarge(detail, limit=self.max_header_bytes)))

    def _write_and_close(self, status: int, rest: bytes) -> None:
        """Write a complete response that closes the connection (`rest` from `_problem`), and close it."""
        self._stop()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content.append(rest)
        self.transport.write(b"".join(content))
        self.transport.close()

    def _bad_request(self, detail: str) -> None:
        """400, reading nothing more: bytes that are not an HTTP/1.1 request, as a problem document."""
        self.logger.warning("Invalid HTTP request received: %s", detail)
        self._write_and_close(400, _problem(MalformedRequest(detail, loc=("request",))))

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn sets its own
        return parser

    def _head_without_upgrade(self, method: bytes, http_version: str) -> bytes:
        """The request line and headers just parsed, less the upgrade offer."""
        out = [method, b" ", self.url, b" HTTP/", http_version.encode("ascii"), b"\r\n"]
        for name, value in self.headers:
            if name in DECLINED_UPGRADE_HEADERS:
                continue
            if name == b"connection":
                tokens = [t.strip() for t in value.split(b",")]
                kept = [t for t in tokens if t and t.lower() not in DECLINED_UPGRADE_HEADERS]
                if not kept:
                    continue
                value = b", ".join(kept)
            out += [name, b": ", value, b"\r\n"]
        out.append(b"\r\n")
        return b"".join(out)


def protocol_for(settings: Settings) -> type[LossdHttpProtocol]:
    """`LossdHttpProtocol` with the connection limits of `settings` (uvicorn's `http` option)."""

    class Configured(LossdHttpProtocol):
        max_connections = settings.max_connections
        read_timeout_s = settings.read_timeout_s
        keep_alive_s = settings.keep_alive_s
        write_timeout_s = settings.write_timeout_s
        max_header_bytes = settings.max_header_bytes

    Configured.__name__ = Configured.__qualname__ = LossdHttpProtocol.__name__
    return Configured
