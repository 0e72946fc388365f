"""Routes the plugin adds to LiteLLM's own app, from the YAML `callbacks:` entry alone.

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

from starlette.requests import Request
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


# ---------------------------------------------------------------------------------------
# /rllm/*: the flush barrier and remote read-back, behind LiteLLM's own auth (admin only).
# ---------------------------------------------------------------------------------------

ADMIN_ROLES = frozenset({"proxy_admin"})


def _is_admin(user: Any) -> bool:
    role = getattr(user, "user_role", None)
    return getattr(role, "value", role) in ADMIN_ROLES


def _require_admin(user: Any) -> None:
    from fastapi import HTTPException

    if not _is_admin(user):
        raise HTTPException(status_code=403, detail="litellm-rllm routes need the master key or a proxy admin key")


async def _caller(request: Request) -> Any:
    """LiteLLM's own key check for our routes, with a 401 for a missing or unusable key.

    (Without its database, LiteLLM answers a missing key with a 500 and a wrong one with a
    400 "No connected db."; a client of these routes needs to see that it is unauthorized.)"""
    import inspect

    from fastapi import HTTPException
    from litellm.proxy.auth.user_api_key_auth import user_api_key_auth

    creds = request.headers.get("authorization") or request.headers.get("x-api-key")
    if not creds:
        raise HTTPException(status_code=401, detail="missing key: send Authorization: Bearer <master or admin key>")
    kwargs: dict[str, Any] = {"request": request, "api_key": creds}
    for name in inspect.signature(user_api_key_auth).parameters:
        kwargs.setdefault(name, None)
    try:
        return await user_api_key_auth(**kwargs)
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            raise
    except Exception:
        pass
    raise HTTPException(status_code=401, detail="invalid key")


def install_rllm_routes() -> bool:
    """Add `POST /rllm/flush`, `GET /rllm/sessions/{id}/traces`, `GET /rllm/stats`,
    `GET /rllm/sessions` and the viewer (`GET /rllm/ui`); idempotent."""
    try:
        from fastapi import APIRouter, Depends, HTTPException, Query
        from fastapi.responses import JSONResponse
        from litellm.proxy.proxy_server import app
    except Exception:
        return False
    if any(getattr(r, "path", None) == "/rllm/flush" for r in app.router.routes):
        return True

    from . import pipeline, runtime

    router = APIRouter()

    @router.post("/rllm/flush", tags=["litellm-rllm"])
    async def rllm_flush(timeout: float = Query(60.0, gt=0, le=600), user: Any = Depends(_caller)) -> Any:
        """Returns once every call that finished before this request is durable.

        200 `{"flushed": true}`: everything is in the store. 503 `{"flushed": false,
        "durable": true, "spooled": N}`: the store is unreachable, N traces wait in the local
        spool (fsynced, replayed when the store is back); retry later."""
        _require_admin(user)
        writer = runtime.writer()
        if not await writer.aflush(timeout):
            raise HTTPException(status_code=504, detail=f"traces not durable within {timeout}s")
        stats = writer.stats()
        pending = int(stats.get("spool_pending", 0) or 0)
        if pending:
            return JSONResponse(status_code=503, content={"flushed": False, "durable": True, "spooled": pending,
                                                          "writer": stats})
        return {"flushed": True, "spooled": 0, "writer": stats}

    @router.get("/rllm/sessions/{session}/traces", tags=["litellm-rllm"])
    async def rllm_session_traces(session: str, since: Optional[str] = None, limit: Optional[int] = Query(None, gt=0),
                                  user: Any = Depends(_caller)) -> Any:
        """The session's traces (nested sessions included) in `seq` order, after a flush."""
        import asyncio

        # Admins see everything; another key sees only its own team's traces, never other teams'.
        team = None
        if not _is_admin(user):
            team = getattr(user, "team_id", None)
            if not team:
                raise HTTPException(status_code=403, detail="only admin keys and team keys can read traces")
        writer = runtime.writer()
        await writer.aflush(60.0)

        def read() -> list[dict[str, Any]]:
            from .. import store

            st = store.open(runtime.settings().store)
            try:
                rows = st.traces(session=session, since=since, limit=limit)
            finally:
                st.close()
            if team is not None:
                rows = [t for t in rows if (t.caller or {}).get("team_id") == team]
            return [t.model_dump(mode="json") for t in rows]

        try:
            traces = await asyncio.to_thread(read)
        except Exception as exc:
            log.error("litellm-rllm: reading session %s failed: %s", session, type(exc).__name__)
            raise HTTPException(status_code=503, detail="the trace store is unreachable; retry later") from None
        return {"session": session, "count": len(traces), "traces": traces}

    @router.get("/rllm/stats", tags=["litellm-rllm"])
    async def rllm_stats(user: Any = Depends(_caller)) -> Any:
        _require_admin(user)
        return {"writer": runtime.writer().stats(), "capture": dict(pipeline.counters),
                "in_flight": len(runtime.calls)}

    @router.get("/rllm/sessions", tags=["litellm-rllm"])
    async def rllm_sessions(request: Request, user: Any = Depends(_caller)) -> Any:
        """Sessions, most recently active first, paged by keyset (the viewer's list):
        `?limit=&cursor=&q=&model=&status=&since=&until=&meta=key:value&session=` ->
        `{"sessions": [...], "next": cursor|null, "total": n|null}`. Same scope as the
        traces route: admins see every session, a team key the sessions its team's calls
        are in (summarised over those calls only)."""
        import asyncio

        from ..store.listing import SessionQuery, SessionQueryError

        team = None
        if not _is_admin(user):
            team = getattr(user, "team_id", None)
            if not team:
                raise HTTPException(status_code=403, detail="only admin keys and team keys can read traces")
        args = request.query_params
        unknown = sorted(set(args) - {"limit", "cursor", "q", "model", "status", "since", "until", "meta", "session"})
        try:
            if unknown:
                raise SessionQueryError(unknown[0], "unknown parameter")
            query = SessionQuery.parse(limit=args.get("limit"), cursor=args.get("cursor"), q=args.get("q"),
                                       model=args.get("model"), status=args.get("status"), since=args.get("since"),
                                       until=args.get("until"), meta=args.getlist("meta"), team=team,
                                       session=args.get("session"))
        except SessionQueryError as exc:
            return JSONResponse(status_code=400, content={"error": {
                "message": str(exc), "type": "invalid_request_error", "param": exc.field,
                "code": "rllm_invalid_query"}})
        await runtime.writer().aflush(10.0)  # recent calls listed; a slow store still answers

        def read() -> dict[str, Any]:
            from .. import store

            st = store.open(runtime.settings().store)
            try:
                return st.session_page(query).model_dump(mode="json")
            finally:
                st.close()

        try:
            return await asyncio.to_thread(read)
        except Exception as exc:
            log.error("litellm-rllm: listing sessions failed: %s", type(exc).__name__)
            raise HTTPException(status_code=503, detail="the trace store is unreachable; retry later") from None

    from ..ui import ui_router

    router.include_router(ui_router())

    position = 1 if app.router.routes and isinstance(app.router.routes[0], SlugRoute) else 0
    for route in router.routes:
        app.router.routes.insert(position, route)
    return True
