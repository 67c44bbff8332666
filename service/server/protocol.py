"""lossd's HTTP/1.1 connection protocol: uvicorn's httptools (llhttp) protocol plus lossd's connection rules.

Every byte a client sends passes through `LossdHttpProtocol` before any request reaches the app, so rules
that are about connections rather than requests live here (and only here): which upgrades are honoured,
and, later, limits such as the size of a request head or how long a client may take to send it.

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
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DECLINED_UPGRADE_HEADERS = frozenset({b"upgrade", b"http2-settings"})
"""Headers (and `Connection` tokens) that only make sense if the upgrade is accepted: left out of the replay."""


class LossdHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering a request that offers an upgrade lossd declines over HTTP/1.1."""

    _declined_head: bytes | None = None
    """The head of the current request, rebuilt without its upgrade offer, while that offer is declined."""

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        replayed = -1  # length of the head replayed last, in `data`
        while True:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self._bad_request("Invalid HTTP request received.")
            except httptools.HttpParserUpgrade as upgrade:
                head, stop = self._declined_head, upgrade.args[0]
                if head is None:  # a WebSocket upgrade (or a CONNECT): uvicorn's own handling
                    if self._should_upgrade():
                        self.handle_websocket_upgrade()
                    else:
                        self._unsupported_upgrade_warning()
                elif stop <= replayed:  # the replayed head offers an upgrade again: never loop on it
                    self._bad_request("Invalid upgrade request received.")
                else:  # llhttp stopped after the head: parse the head again without the offer, and the rest
                    self._declined_head = None
                    data = head + data[stop:]
                    replayed = len(head)
                    self.parser = self._new_parser()
                    continue
            return

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser.should_upgrade():
            method = parser.get_method()
            if method != b"CONNECT" and not self._should_upgrade():
                # Not handed to the app yet: llhttp is about to skip the body. data_received replays it.
                self._declined_head = self._head_without_upgrade(method, parser.get_http_version())
                return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._declined_head is not None:
            return  # the request's replay will complete it
        super().on_message_complete()

    def _bad_request(self, msg: str) -> None:
        self.logger.warning(msg)
        self.send_400_response(msg)

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
