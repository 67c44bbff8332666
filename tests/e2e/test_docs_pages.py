"""/docs (Swagger UI) and /redoc (ReDoc) render in headless Chromium with no internet: every host name but
127.0.0.1 fails to resolve, and the pages' scripts, style sheet and icon come from lossd itself."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.chromium import dump_dom
from tests.e2e.conftest import start_server, stop_server


@pytest.fixture(scope="module")
def lossd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """lossd's URL and the file it logs to (its access log names every asset the browser asked for)."""
    log = tmp_path_factory.mktemp("lossd") / "lossd.log"
    with log.open("wb") as output:
        url, proc = start_server(output=output, LOSSD_LOG_LEVEL="info")
        try:
            yield url, log
        finally:
            stop_server(proc)


@pytest.fixture(scope="module")
def operations(lossd: tuple[str, Path]) -> list[tuple[str, str]]:
    """(method, path) of every operation in the OpenAPI document."""
    paths = httpx.get(f"{lossd[0]}/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, item in paths.items() for method in item]


def _assets_asked(log: Path) -> set[str]:
    """The /docs/assets/ paths in lossd's access log so far."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("{") and '"lossd.access"' in line]
    return {path for line in lines if (path := json.loads(line)["path"]).startswith("/docs/assets/")}


def test_swagger_ui_renders_every_operation_offline(
    lossd: tuple[str, Path], operations: list[tuple[str, str]], tmp_path: Path
) -> None:
    url, log = lossd
    dom = dump_dom(f"{url}/docs", tmp_path, offline=True)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= _assets_asked(log)
    assert "<title>lossd - Swagger UI</title>" in dom
    shown = {
        (m.group(1), html.unescape(re.sub(r"<[^>]+>|\u200b", "", m.group(2))))
        for m in re.finditer(r'opblock-summary-method">(\w+)</span>.*?data-path="([^"]*)"', dom, re.DOTALL)
    }
    assert shown, f"Swagger UI rendered no operation: {dom[-3000:]}"
    assert set(operations) <= shown, f"missing from the page: {sorted(set(operations) - shown)}"


def test_redoc_renders_offline(lossd: tuple[str, Path], operations: list[tuple[str, str]], tmp_path: Path) -> None:
    url, log = lossd
    dom = dump_dom(f"{url}/redoc", tmp_path, offline=True)
    assert "/docs/assets/redoc.standalone.js" in _assets_asked(log)
    assert "<title>lossd - ReDoc</title>" in dom
    info = httpx.get(f"{url}/openapi.json").json()["info"]
    assert html.escape(info["title"]) in dom
    for _, path in operations:
        assert html.escape(path) in dom, f"{path} is not on the ReDoc page"


def test_the_assets_come_from_lossd(lossd: tuple[str, Path]) -> None:
    url, _ = lossd
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
