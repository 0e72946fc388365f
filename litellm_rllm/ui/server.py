"""``GET /rllm/ui`` and ``GET /rllm/ui/assets/{name}``: the viewer's files, nothing else.

Why this shape: the page is shown to people debugging runs whose data a model, a user or a
tool wrote, so the browser is told to run only our own script files (``script-src 'self'``,
no inline script, no ``eval``), load nothing from elsewhere, and not guess content types.
The files are read once from the package and served from memory; only names in ``ASSETS``
exist (no path from the URL reaches the file system). The page itself carries no data and
needs no key: the key is entered in the page and sent by its script to the JSON routes.
Imports FastAPI / Starlette only (no LiteLLM), so it can be mounted on any app.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from typing import Optional

from fastapi import APIRouter, Header, HTTPException
from starlette.responses import Response

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
ASSETS = {
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
}
_INDEX = "index.html"


@lru_cache(maxsize=None)
def _read(name: str) -> tuple[bytes, str]:
    body = resources.files("litellm_rllm.ui").joinpath("static", name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def _headers(etag: str, media_type: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",  # revalidate: an upgraded plugin serves its new files
        "ETag": etag,
        "Content-Type": media_type,
    }


def _serve(name: str, media_type: str, if_none_match: Optional[str]) -> Response:
    body, etag = _read(name)
    headers = _headers(etag, media_type)
    if if_none_match == etag:
        return Response(status_code=304, headers=headers)
    return Response(content=body, headers=headers)


def ui_router() -> APIRouter:
    """The viewer's routes, to include in the proxy's app."""
    router = APIRouter()

    async def index(if_none_match: Optional[str] = Header(None)) -> Response:
        return _serve(_INDEX, "text/html; charset=utf-8", if_none_match)

    async def asset(name: str, if_none_match: Optional[str] = Header(None)) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail="no such viewer asset")
        return _serve(name, media_type, if_none_match)

    for path in ("/rllm/ui", "/rllm/ui/"):
        router.add_api_route(path, index, methods=["GET"], include_in_schema=False)
    router.add_api_route("/rllm/ui/assets/{name}", asset, methods=["GET"], include_in_schema=False)
    return router


__all__ = ["ASSETS", "CSP", "ui_router"]
