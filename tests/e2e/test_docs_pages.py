"""/docs (Swagger UI) and /redoc (ReDoc) render in headless Chromium with no internet: every host name but
127.0.0.1 fails to resolve, and the pages' scripts, style sheet and icon come from lossd itself. With API keys set
the pages and the OpenAPI document stay public (a browser sends no key with a page), and the rest does not."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.chromium import dump_dom
from tests.e2e.conftest import start_server, stop_server

KEY = "docs-key"


@dataclass(frozen=True)
class Lossd:
    url: str
    log: Path
    """lossd's output: its access log names every asset the browser asked for."""
    key: str | None


@pytest.fixture(scope="module", params=["open", "keyed"])
def lossd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lossd]:
    """lossd without API keys (`open`) and with one (`keyed`)."""
    log = tmp_path_factory.mktemp("lossd") / "lossd.log"
    keys = {"LOSSD_API_KEYS": KEY} if request.param == "keyed" else {}
    with log.open("wb") as output:
        url, proc = start_server(output=output, LOSSD_LOG_LEVEL="info", **keys)
        try:
            yield Lossd(url, log, keys.get("LOSSD_API_KEYS"))
        finally:
            stop_server(proc)


@pytest.fixture(scope="module")
def operations(lossd: Lossd) -> list[tuple[str, str]]:
    """(method, path) of every operation in the OpenAPI document."""
    paths = httpx.get(f"{lossd.url}/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, item in paths.items() for method in item]


def _assets_asked(log: Path) -> set[str]:
    """The /docs/assets/ paths in lossd's access log so far."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("{") and '"lossd.access"' in line]
    return {path for line in lines if (path := json.loads(line)["path"]).startswith("/docs/assets/")}


def test_swagger_ui_renders_every_operation_offline(
    lossd: Lossd, operations: list[tuple[str, str]], tmp_path: Path
) -> None:
    url, log = lossd.url, lossd.log
    dom = dump_dom(f"{url}/docs", tmp_path, offline=True)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= _assets_asked(log)
    assert "<title>lossd - Swagger UI</title>" in dom
    shown = {
        (m.group(1), html.unescape(re.sub(r"<[^>]+>|\u200b", "", m.group(2))))
        for m in re.finditer(r'opblock-summary-method">(\w+)</span>.*?data-path="([^"]*)"', dom, re.DOTALL)
    }
    assert shown, f"Swagger UI rendered no operation: {dom[-3000:]}"
    assert set(operations) <= shown, f"missing from the page: {sorted(set(operations) - shown)}"


def test_redoc_renders_offline(lossd: Lossd, operations: list[tuple[str, str]], tmp_path: Path) -> None:
    url, log = lossd.url, lossd.log
    dom = dump_dom(f"{url}/redoc", tmp_path, offline=True)
    assert "/docs/assets/redoc.standalone.js" in _assets_asked(log)
    assert "<title>lossd - ReDoc</title>" in dom
    info = httpx.get(f"{url}/openapi.json").json()["info"]
    assert html.escape(info["title"]) in dom
    for _, path in operations:
        assert html.escape(path) in dom, f"{path} is not on the ReDoc page"


def test_the_assets_come_from_lossd(lossd: Lossd) -> None:
    url = lossd.url
    page = httpx.get(f"{url}/docs").text + httpx.get(f"{url}/redoc").text
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert links, page
    assert all(link.startswith("/docs/assets/") for link in links), links
    for link in links:
        response = httpx.get(f"{url}{link}")
        assert response.status_code == 200, link
        assert len(response.content) > 1000, link
    missing = httpx.get(f"{url}/docs/assets/..%2Fconsts.py")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_pages_hold_the_browser_to_lossd(lossd: Lossd) -> None:
    url = lossd.url
    for page in ("/docs", "/redoc"):
        policy = httpx.get(f"{url}{page}").headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "https:" not in policy


def test_documents_need_no_key_and_declare_the_bearer_scheme(lossd: Lossd) -> None:
    url = lossd.url
    for path in ("/docs", "/redoc", "/docs/assets/swagger-ui.css", "/openapi.json"):
        assert httpx.get(f"{url}{path}").status_code == 200, path
    document = httpx.get(f"{url}/openapi.json").json()
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["apiKey"]["description"],
    }
    assert document["paths"]["/v1/losses/{name}"]["post"]["security"] == [{"apiKey": []}, {}]
    assert "security" not in document["paths"]["/healthz"]["get"]
    catalog = httpx.get(f"{url}/v1/losses")
    if lossd.key:  # the API itself needs the key
        assert catalog.status_code == 401
        assert catalog.headers["content-type"] == "application/problem+json"
        assert httpx.get(f"{url}/v1/losses", headers={"authorization": f"Bearer {lossd.key}"}).status_code == 200
    else:
        assert catalog.status_code == 200
