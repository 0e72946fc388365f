"""`/rllm/*`: the trainer's HTTP side (flush barrier, read-back, stats), on LiteLLM's own app
and behind its own key check.

Admins (the master key, proxy-admin keys) see everything; a team key reads only its own team's
traces. Reads share the plugin's one read connection and run off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Iterator, Optional

from starlette.requests import Request

from .flush_report import bad_param, check_since, completeness, flush_answer
from .slug_route import SlugRoute

if TYPE_CHECKING:
    from ..trace import Trace
    from .plugin import Plugin

log = logging.getLogger("litellm_rllm")


ADMIN_ROLES = frozenset({"proxy_admin"})


def _is_admin(user: Any) -> bool:
    role = getattr(user, "user_role", None)
    return getattr(role, "value", role) in ADMIN_ROLES


def _team_scope(user: Any) -> Optional[str]:
    """None for an admin (everything), else the caller's team; a key of no team may not read."""
    from fastapi import HTTPException

    if _is_admin(user):
        return None
    team = getattr(user, "team_id", None)
    if not team:
        raise HTTPException(status_code=403, detail="only admin keys and team keys can read traces")
    return str(team)


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


def team_traces(traces: Iterator["Trace"], team: Optional[str], limit: Optional[int]) -> list["Trace"]:
    """The first `limit` traces the caller may see: every one for an admin (`team` None), else
    those whose caller was of `team`. The filter runs before the limit, so a team key gets as
    many rows as exist for it."""
    out: list["Trace"] = []
    for trace in traces:
        if team is not None and (trace.caller or {}).get("team_id") != team:
            continue
        out.append(trace)
        if limit is not None and len(out) >= limit:
            break
    return out


def install_rllm_routes(plugin: "Plugin") -> bool:
    """Add `POST /rllm/flush`, `GET /rllm/sessions/{id}/traces` and `GET /rllm/stats`; idempotent."""
    try:
        from fastapi import APIRouter, Depends, HTTPException, Query
        from fastapi.responses import JSONResponse
        from litellm.proxy.proxy_server import app
    except Exception:
        return False
    if any(getattr(r, "path", None) == "/rllm/flush" for r in app.router.routes):
        return True

    router = APIRouter()

    @router.post("/rllm/flush", tags=["litellm-rllm"])
    async def rllm_flush(timeout: float = Query(60.0, gt=0, le=600), user: Any = Depends(_caller)) -> Any:
        """Returns once every call that finished before this request is handled: 200 when all
        are in the store, 503 while some wait in the spool or in memory, 409 once any was lost
        since the last flush (see flush_report)."""
        _require_admin(user)
        writer = plugin.writer
        status, body = flush_answer(writer, await writer.aflush(timeout), timeout)
        return JSONResponse(status_code=status, content=body, headers={"Retry-After": "1"} if status == 503 else None)

    @router.get("/rllm/sessions/{session}/traces", tags=["litellm-rllm"])
    async def rllm_session_traces(session: str, since: Optional[str] = None, limit: Optional[int] = Query(None, gt=0),
                                  user: Any = Depends(_caller)) -> Any:
        """The session's traces (nested sessions included) in `seq` order, after a flush;
        `complete: false, pending: N` while N of them wait outside the store."""
        problem = check_since(since)
        if problem:
            return bad_param("since", problem)
        team = _team_scope(user)
        flushed = await plugin.writer.aflush(60.0)
        fields, headers = completeness(plugin.writer, session, flushed)

        def read() -> list[dict[str, Any]]:
            rows = team_traces(plugin.reader.iter_traces(session=session, since=since), team, limit)
            return [t.model_dump(mode="json") for t in rows]

        try:
            traces = await asyncio.to_thread(read)
        except Exception as exc:
            log.error("litellm-rllm: reading session %s failed: %s: %.200s", session, type(exc).__name__, exc)
            detail = ("the trace store's file is missing (deleted?); the writer recreates it with the next trace"
                      if isinstance(exc, FileNotFoundError) else "the trace store is unreachable; retry later")
            raise HTTPException(status_code=503, detail=detail) from None
        return JSONResponse({"session": session, "count": len(traces), **fields, "traces": traces}, headers=headers)

    @router.get("/rllm/stats", tags=["litellm-rllm"])
    async def rllm_stats(user: Any = Depends(_caller)) -> Any:
        _require_admin(user)
        return plugin.stats()

    position = 1 if app.router.routes and isinstance(app.router.routes[0], SlugRoute) else 0
    for route in router.routes:
        app.router.routes.insert(position, route)
    return True
