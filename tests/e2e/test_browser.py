"""CORS in a real browser: a page served from another loopback origin calls lossd with `fetch()` in headless
Chromium, and reads both answers and problem documents; plain httpx checks the CORS headers of every kind of
answer. Two server configurations: without API keys, and with one (the browser's preflight carries no key).

Needs `chromium` on PATH (`make install-dev` installs it as root on Debian); the test fails without it."""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import torch
import torch.nn.functional as F

from tests import wire
from tests.e2e.chromium import dump_dom
from tests.e2e.conftest import start_server, stop_server

KEY = "secret-key"
MAX_BODY = 2048
"""LOSSD_MAX_BODY_BYTES of the servers under test: small, so that a 413 costs a few kilobytes."""

INPUT = [1.0, 2.0, 3.0]
TARGET = [1.0, 2.0, 5.0]
MSE = {"input": INPUT, "target": TARGET}
V2_INPUT = {"name": "input", "shape": [3], "datatype": "FP32", "data": INPUT}

CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "mse": ("/v1/losses/mse", MSE),
    "mse-422": ("/v1/losses/mse", {"input": INPUT, "target": [1.0, 2.0]}),
    "mse-422-missing": ("/v1/losses/mse", {"input": INPUT}),
    "evaluate": ("/v1/evaluate", {"tensors": MSE, "losses": [{"name": "mse"}]}),
    "evaluate-422": ("/v1/evaluate", {"tensors": MSE}),
    "v2": (
        "/v2/models/mse/infer",
        {"inputs": [V2_INPUT, {"name": "target", "shape": [3], "datatype": "FP32", "data": TARGET}]},
    ),
    "v2-400": ("/v2/models/mse/infer", {"inputs": [V2_INPUT]}),
}
"""What the page POSTs, by name: each with `content-type: application/json`, so each is preflighted."""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>lossd CORS</title></head>
<body><pre id="out">pending</pre>
<script>
const params = new URLSearchParams(location.search);
const api = params.get("api");
const key = params.get("key");
const calls = JSON.parse(params.get("calls"));

async function call([path, body]) {
  const headers = {"content-type": "application/json"};
  if (key) headers["authorization"] = "Bearer " + key;
  try {
    const res = await fetch(api + path, {method: "POST", headers, body: JSON.stringify(body)});
    const text = await res.text();
    let parsed;
    try { parsed = JSON.parse(text); } catch (e) { parsed = {unparsed: text}; }
    return {
      status: res.status,
      contentType: res.headers.get("content-type"),
      requestId: res.headers.get("x-request-id"),
      body: parsed,
    };
  } catch (e) {
    return {error: e.name + ": " + e.message};
  }
}

(async () => {
  const results = {};
  for (const [name, c] of Object.entries(calls)) results[name] = await call(c);
  const out = document.getElementById("out");
  out.textContent = JSON.stringify({origin: location.origin, results});
  out.dataset.done = "done";
})();
</script>
</body></html>
"""


@dataclass(frozen=True)
class Lossd:
    url: str
    origin: str
    """The page's origin, the one LOSSD_CORS_ORIGINS allows."""
    key: str | None

    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"} if self.key else {}


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/cors.html":
            self.send_error(404)
            return
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """The page's own origin: a loopback port that is not lossd's."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(scope="module", params=["open", "keyed"])
def lossd(request: pytest.FixtureRequest, page_origin: str) -> Iterator[Lossd]:
    """lossd allowing the page's origin by CORS: without API keys (`open`), or with `secret-key` (`keyed`)."""
    key = KEY if request.param == "keyed" else None
    env = {"LOSSD_CORS_ORIGINS": page_origin, "LOSSD_MAX_BODY_BYTES": str(MAX_BODY)}
    if key:
        env["LOSSD_API_KEYS"] = key
    url, proc = start_server(**env)
    try:
        yield Lossd(url, page_origin, key)
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser(lossd: Lossd, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every call of CALLS as the page saw it, from one headless Chromium run per server configuration."""
    query = {"api": lossd.url, "calls": json.dumps(CALLS)}
    if lossd.key:
        query["key"] = lossd.key
    page = f"{lossd.origin}/cors.html?{urlencode(query)}"
    dom = dump_dom(page, tmp_path_factory.mktemp("chromium"))
    found = re.search(r'<pre id="out"[^>]*\bdata-done="done"[^>]*>(.*?)</pre>', dom, re.DOTALL)
    assert found, f"the page did not finish; chromium printed: {dom[-2000:]}"
    out = json.loads(html.unescape(found.group(1)))
    assert out["origin"] == lossd.origin
    assert out["origin"] != lossd.url.rstrip("/"), "the page must be cross-origin to lossd"
    results: dict[str, dict[str, Any]] = out["results"]
    assert sorted(results) == sorted(CALLS)
    return results


EXPECTED = F.mse_loss(torch.tensor(INPUT), torch.tensor(TARGET))


def _read(browser: dict[str, dict[str, Any]], name: str, status: int) -> dict[str, Any]:
    """The page's result for `name`: fetched (no `TypeError: Failed to fetch`) with `status`."""
    result = browser[name]
    assert "error" not in result, f"{name}: the browser refused the response: {result['error']}"
    assert result["status"] == status, result
    return result


def test_browser_reads_a_loss(browser: dict[str, dict[str, Any]]) -> None:
    result = _read(browser, "mse", 200)
    wire.assert_same(result["body"]["loss"], EXPECTED)
    assert result["body"]["shape"] == []
    assert result["requestId"], "X-Request-ID is exposed to the page"


@pytest.mark.parametrize("name", ["mse-422", "mse-422-missing"])
def test_browser_reads_a_loss_problem(browser: dict[str, dict[str, Any]], name: str) -> None:
    result = _read(browser, name, 422)
    assert result["contentType"] == "application/problem+json"
    problem = {"mse-422": "/problems/shape-mismatch", "mse-422-missing": "/problems/invalid-request"}[name]
    assert result["body"]["type"] == problem
    assert result["body"]["status"] == 422
    assert result["requestId"], "X-Request-ID is exposed to the page"


def test_browser_reads_an_evaluation(browser: dict[str, dict[str, Any]]) -> None:
    result = _read(browser, "evaluate", 200)
    [entry] = result["body"]["results"]
    assert entry["name"] == "mse"
    assert entry["status"] == 200
    wire.assert_same(entry["loss"], EXPECTED)


def test_browser_reads_an_evaluation_problem(browser: dict[str, dict[str, Any]]) -> None:
    result = _read(browser, "evaluate-422", 422)
    assert result["contentType"] == "application/problem+json"
    assert result["body"]["type"] == "/problems/invalid-request"
    assert result["body"]["status"] == 422


def test_browser_reads_a_v2_inference(browser: dict[str, dict[str, Any]]) -> None:
    result = _read(browser, "v2", 200)
    [output] = result["body"]["outputs"]
    assert output["name"] == "loss"
    assert output["datatype"] == "FP32"
    assert output["shape"] == []
    wire.assert_same(output["data"][0], EXPECTED)


def test_browser_reads_a_v2_error(browser: dict[str, dict[str, Any]]) -> None:
    result = _read(browser, "v2-400", 400)
    assert "target" in result["body"]["error"]


# plain httpx: the CORS headers of every kind of answer, and the preflight


def _too_large() -> bytes:
    body = json.dumps({"input": [0.5] * 1000, "target": [0.5] * 1000}).encode()
    assert len(body) > MAX_BODY
    return body


@pytest.mark.parametrize(
    "case",
    ["ok", "no-key", "no-key-v2", "unknown-loss", "too-large", "too-large-chunked", "invalid", "v2-invalid"],
)
def test_answers_carry_cors_headers(lossd: Lossd, case: str) -> None:
    headers = {"origin": lossd.origin, "content-type": "application/json"}
    path, content, expected = "/v1/losses/mse", json.dumps(MSE).encode(), 200
    if case not in ("no-key", "no-key-v2"):
        headers |= lossd.auth()
    elif lossd.key:
        expected = 401
    if case == "no-key-v2":
        path, content = CALLS["v2"][0], json.dumps(CALLS["v2"][1]).encode()
    elif case == "unknown-loss":
        path, expected = "/v1/losses/nope", 404
    elif case in ("too-large", "too-large-chunked"):
        content, expected = _too_large(), 413
    elif case == "invalid":
        content, expected = json.dumps(CALLS["mse-422"][1]).encode(), 422
    elif case == "v2-invalid":
        path, content, expected = CALLS["v2-400"][0], json.dumps(CALLS["v2-400"][1]).encode(), 400
    body: bytes | Iterator[bytes] = content
    if case == "too-large-chunked":  # no Content-Length: the limit is found while reading
        body = iter([content[:1000], content[1000:]])
    response = httpx.post(f"{lossd.url}{path}", content=body, headers=headers)
    assert response.status_code == expected, response.text
    seen = f"{case}: a {response.status_code} with headers {', '.join(response.headers)}"
    assert response.headers.get("access-control-allow-origin") == lossd.origin, seen
    assert "x-request-id" in response.headers.get("access-control-expose-headers", "").lower(), seen


@pytest.mark.parametrize("path", ["/v1/losses/mse", "/v1/evaluate", "/v2/models/mse/infer"])
def test_preflight_needs_no_key(lossd: Lossd, path: str) -> None:
    response = httpx.options(
        f"{lossd.url}{path}",
        headers={
            "origin": lossd.origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers.get("access-control-allow-origin") == lossd.origin
    assert "POST" in response.headers.get("access-control-allow-methods", "")
    allowed = response.headers.get("access-control-allow-headers", "").lower()
    assert "authorization" in allowed
    assert "content-type" in allowed


def test_preflight_from_another_origin_is_not_allowed(lossd: Lossd) -> None:
    response = httpx.options(
        f"{lossd.url}/v1/losses/mse",
        headers={
            "origin": "http://evil.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type",
        },
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers
    assert response.headers["content-type"] == "application/problem+json"  # an error like every other
    problem = response.json()
    assert problem["type"] == "/problems/cors-refused"
    assert problem["detail"] == "CORS preflight refused; not allowed: origin"
