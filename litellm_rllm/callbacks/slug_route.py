"""The `/meta/{slug}/...` route the plugin adds to LiteLLM's own app, from a YAML entry alone.

LiteLLM imports our callbacks during its startup, after the middleware stack is built, so a
middleware can't be added. A route can: `SlugRoute` sits first in the router and claims only
requests that carry a slug (`/meta/{slug}/...` path prefix or the slug header). It validates
the slug (bad -> 400 `rllm_invalid_slug`, exactly the SPEC's body), rewrites the path to the
one without the prefix, moves the slug into the header, and hands the request back to the
router, so every LiteLLM route, its auth and its hooks work as without the prefix.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Optional

from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from ..slug import SlugError, split_path

log = logging.getLogger("litellm_rllm")

_HANDLED = "litellm_rllm.slug_checked"
META_PREFIX = "/meta/"


class SlugRoute(BaseRoute):
    """Claims requests with a slug, checks it, strips the prefix and re-dispatches."""

    def __init__(self, router: Any, header: str, check: Callable[[str], Any]) -> None:
        self.router = router
        self.header = header.lower().encode("latin-1")
        self.check = check
        self.rejected = 0

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope.get(_HANDLED):
            return Match.NONE, {}
        path: str = scope["path"]
        if path.startswith(META_PREFIX) or path == "/meta":
            return Match.FULL, {}
        for name, _ in scope["headers"]:
            if name == self.header:
                return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        from starlette.routing import NoMatchFound

        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = dict(scope)
        scope[_HANDLED] = True
        path_slug, rest = split_path(scope["path"])
        header_slugs = [v.decode("latin-1") for k, v in scope["headers"] if k == self.header]
        try:
            slug = _one_slug(path_slug, header_slugs)
            self.check(slug)
        except SlugError as exc:
            self.rejected += 1
            await _send_json(send, exc.status_code, exc.to_response())
            return
        if path_slug is not None:
            scope["path"] = rest
            scope["raw_path"] = rest.encode("utf-8")
        headers = [(k, v) for k, v in scope["headers"] if k != self.header]
        headers.append((self.header, slug.encode("latin-1")))
        scope["headers"] = headers
        await self.router(scope, receive, send)


def _one_slug(path_slug: Optional[str], header_slugs: list[str]) -> str:
    distinct = set(header_slugs)
    if path_slug is not None:
        distinct.add(path_slug)
    if len(distinct) > 1:
        raise SlugError("the request carries two different slugs (URL path and header); send one")
    if not distinct or not next(iter(distinct)):
        raise SlugError("empty slug: expected /meta/rllm1:<base64url-json>/...")
    return next(iter(distinct))


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _dispatcher(app: Any) -> Any:
    """Where a rewritten request goes: LiteLLM's router, behind its lazy-feature loader.

    LiteLLM loads some routers (e.g. `/v1/messages`) on the first request whose path needs
    them; its middleware saw `/meta/...`, so the rewritten path must pass that loader too.
    """
    try:
        from litellm.proxy._lazy_features import LazyFeatureMiddleware

        return LazyFeatureMiddleware(app.router, fastapi_app=app)
    except Exception:  # a LiteLLM without lazy features: the router has every route
        return app.router


def install_slug_route(header: str, check: Callable[[str], Any]) -> Optional[SlugRoute]:
    """Put `SlugRoute` first in LiteLLM's router; idempotent across reloads and repeated imports."""
    try:
        from litellm.proxy.proxy_server import app
    except Exception:  # not running inside the proxy (e.g. the SDK alone)
        return None
    routes = app.router.routes
    for route in routes:
        if isinstance(route, SlugRoute) or type(route).__name__ == "SlugRoute":
            return route  # type: ignore[return-value]
    route = SlugRoute(_dispatcher(app), header, check)
    routes.insert(0, route)
    log.info("litellm-rllm: /meta/{slug}/... and the %s header are served", header)
    return route
