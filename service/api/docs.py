"""The API's own documents: the OpenAPI document and its Swagger UI and ReDoc pages.

The pages work without internet: their scripts, style sheet and icon come from the `fastapi-offline` package and
are served here, under `/docs/assets/`; ReDoc is asked for no web fonts, and a Content-Security-Policy keeps the
pages from loading anything from elsewhere (ReDoc's bundle links a logo on its maker's site). They need no API key
(`edge.needs_key`): a browser sends none with a page. Mounted after every other route, so that matching the busy
routes never walks past these.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from service.api.edge import DOCUMENT_ASSETS
from service.errors import NotFound

router = APIRouter(include_in_schema=False)

ASSETS = Path(str(files("fastapi_offline") / "static"))
ASSET_NAMES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"})
ASSETS_URL = DOCUMENT_ASSETS.rstrip("/")
POLICY = {
    "content-security-policy": "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'self'"
}
"""The pages' scripts and styles are inline or lossd's own; ReDoc runs a worker from a blob."""


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
    )
    page.headers.update(POLICY)
    return page


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    page.headers.update(POLICY)
    return page


@router.get(ASSETS_URL + "/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSET_NAMES:
        raise NotFound(f"no such documentation asset: {name[:100]!r}")
    return FileResponse(ASSETS / name, headers={"cache-control": "public, max-age=86400"})
