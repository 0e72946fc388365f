"""`/rllm/*`: the trainer's HTTP side (flush barrier, read-back, stats; rewards, finishes, the
change feed, policy versions and pauses in `trainer_api.py`), on LiteLLM's own app and behind
its own key check.

Admins (the master key, proxy-admin keys) see everything; a team key reads only its own team's
traces. Sessions are namespaced by team (`sessions.py`): a team key's session routes find its
team's session; an admin names the team with `?team=` (none: sessions of callers without a
team). Reads share the plugin's one read connection and run off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Iterator, Optional

from starlette.requests import Request

from ..trainer.schema import TrainerInputError
from .flush_report import bad_param, check_since, completeness, flush_answer
from .slug_route import SlugRoute
from .trainer_api import bad_request, install_trainer_routes, read_filters, session_extras, session_namespace

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
    """Add `POST /rllm/flush`, `GET /rllm/sessions`, `GET|DELETE /rllm/sessions/{id}/...`,
    `GET /rllm/stats`, the viewer (`GET /rllm/ui`) and `/metrics`; idempotent."""
    try:
        from fastapi import APIRouter, Depends, HTTPException, Query
        from fastapi.responses import JSONResponse, Response
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
                                  min_policy_version: Optional[str] = None, max_staleness: Optional[str] = None,
                                  team: Optional[str] = None, user: Any = Depends(_caller)) -> Any:
        """The session's traces (its id, name or any uid: nested sessions included) in call
        order (`seq` within a session key, `order` across them), after a flush, with its
        `rewards` and `finished`; `min_policy_version` / `max_staleness` filter by version;
        `complete: false, pending: N` while N of them wait outside the store."""
        problem = check_since(since)
        if problem:
            return bad_param("since", problem)
        scope = _team_scope(user)
        namespace = session_namespace(scope, team)
        team = scope
        try:
            lo, stale = read_filters(min_policy_version, max_staleness)
        except TrainerInputError as exc:
            return bad_request(exc)
        flushed = await plugin.writer.aflush(60.0)
        fields, headers = completeness(plugin.writer, session, flushed)

        def read() -> tuple[int, int, bytes, dict[str, Any]]:
            from ..training import attach_lineage

            rows = attach_lineage(team_traces(plugin.reader.iter_traces(
                session=session, since=since, min_policy_version=lo, max_staleness=stale, team=namespace), team, limit))
            # each trace straight to JSON bytes (pydantic's serializer): a 32,000-token trace with
            # top logprobs as a dict through FastAPI's encoder took seconds
            cached = sum(t.cached_tokens or 0 for t in rows)  # prefix-cache hits, summed
            body = b",".join(t.model_dump_json().encode() for t in rows)
            return len(rows), cached, body, session_extras(plugin, session, team, namespace)

        try:
            count, cached, body, extras = await asyncio.to_thread(read)
        except Exception as exc:
            log.error("litellm-rllm: reading session %s failed: %s: %.200s", session, type(exc).__name__, exc)
            detail = ("the trace store's file is missing (deleted?); the writer recreates it with the next trace"
                      if isinstance(exc, FileNotFoundError) else "the trace store is unreachable; retry later")
            raise HTTPException(status_code=503, detail=detail) from None
        head = json.dumps({"session": session, "team": namespace, "count": count, "cached_tokens": cached,
                           **extras, **fields})
        return Response(content=head[:-1].encode() + b', "traces": [' + body + b"]}", media_type="application/json",
                        headers=headers)

    @router.get("/rllm/sessions/{session}/trajectories", tags=["litellm-rllm"])
    async def rllm_session_trajectories(session: str, view: str = "merged", since: Optional[str] = None,
                                        include_orphans: bool = False, team: Optional[str] = None,
                                        user: Any = Depends(_caller)) -> Any:
        """The session's training rows: `view=merged` (one per chain of calls extending each
        other: input_ids, loss_mask, logprobs, spans) or `per-call`; orphans left out unless
        asked, and counted. Same scope and namespace as the traces route."""
        if view not in ("merged", "per-call"):
            raise HTTPException(status_code=400, detail=f"view: must be merged or per-call, not {view!r}")
        scope = _team_scope(user)
        namespace = session_namespace(scope, team)
        team = scope
        await plugin.writer.aflush(60.0)

        def read() -> dict[str, Any]:
            from .. import training

            traces = team_traces(plugin.reader.iter_traces(session=session, since=since, team=namespace), team, None)
            by_key: dict[str, list[Any]] = {}
            for trace in traces:
                by_key.setdefault(trace.session_key(), []).append(trace)
            with_rewards = (t for batch in by_key.values() for t in plugin.reader.with_rewards(batch))
            rows = training.trajectories(with_rewards, view=view, include_orphans=include_orphans)  # type: ignore[arg-type]
            out = [row.to_dict() for row in rows]
            return {"session": session, "team": namespace, "view": view, "count": len(out), "rows": out,
                    "skipped_orphans": rows.skipped_orphans, "skipped_without_ids": rows.skipped_without_ids}

        try:
            return await asyncio.to_thread(read)
        except Exception as exc:
            log.error("litellm-rllm: trajectories of session %s failed: %s", session, type(exc).__name__)
            raise HTTPException(status_code=503, detail="the trace store is unreachable; retry later") from None

    @router.delete("/rllm/sessions/{session}", tags=["litellm-rllm"])
    async def rllm_delete_session(session: str, team: Optional[str] = None, user: Any = Depends(_caller)) -> Any:
        """Delete a session's traces (nested sessions included; same namespace as the traces
        route): an admin key, or a team key whose team owns every one of them (else 403 and
        nothing is deleted)."""
        scope = _team_scope(user)
        namespace = session_namespace(scope, team)
        team = scope
        await plugin.writer.aflush(60.0)  # a call that finished before this request goes too

        def delete() -> Optional[int]:
            if team is not None and any((t.caller or {}).get("team_id") != team
                                        for t in plugin.reader.iter_traces(session=session, team=namespace)):
                return None
            return plugin.reader.delete(session=session, team=namespace)

        try:
            deleted = await asyncio.to_thread(delete)
        except Exception as exc:
            log.error("litellm-rllm: deleting session %s failed: %s", session, type(exc).__name__)
            raise HTTPException(status_code=503, detail="the trace store is unreachable; retry later") from None
        if deleted is None:
            raise HTTPException(status_code=403, detail="the session holds traces of another team")
        return {"session": session, "team": namespace, "deleted": deleted}

    @router.get("/rllm/sessions", tags=["litellm-rllm"])
    async def rllm_sessions(request: Request, user: Any = Depends(_caller)) -> Any:
        """Sessions, most recently active first, paged by keyset (the viewer's list):
        `?limit=&cursor=&q=&model=&status=&since=&until=&meta=key:value&session=&team=` ->
        `{"sessions": [...], "next": cursor|null, "total": n|null}`, each with its `team`
        namespace. Same scope as the traces route: admins see every session (`team=`: one
        team's), a team key its team's sessions; `session=` is one session in that namespace."""
        from ..sessions import qualify
        from ..store.listing import SessionQuery, SessionQueryError

        scope = _team_scope(user)
        args = request.query_params
        namespace = session_namespace(scope, args.get("team"))
        team = namespace
        unknown = sorted(set(args) - {"limit", "cursor", "q", "model", "status", "since", "until", "meta", "session",
                                      "team"})
        try:
            if unknown:
                raise SessionQueryError(unknown[0], "unknown parameter")
            query = SessionQuery.parse(limit=args.get("limit"), cursor=args.get("cursor"), q=args.get("q"),
                                       model=args.get("model"), status=args.get("status"), since=args.get("since"),
                                       until=args.get("until"), meta=args.getlist("meta"), team=team,
                                       session=qualify(namespace, args["session"]) if args.get("session") else None)
        except SessionQueryError as exc:
            return JSONResponse(status_code=400, content={"error": {
                "message": str(exc), "type": "invalid_request_error", "param": exc.field,
                "code": "rllm_invalid_query"}})
        await plugin.writer.aflush(10.0)  # recent calls listed; a slow store still answers

        try:
            return await asyncio.to_thread(lambda: plugin.reader.session_page(query).model_dump(mode="json"))
        except Exception as exc:
            log.error("litellm-rllm: listing sessions failed: %s", type(exc).__name__)
            raise HTTPException(status_code=503, detail="the trace store is unreachable; retry later") from None

    @router.get("/rllm/stats", tags=["litellm-rllm"])
    async def rllm_stats(user: Any = Depends(_caller)) -> Any:
        _require_admin(user)
        return plugin.stats()

    from ..ui import ui_router

    router.include_router(ui_router())

    install_trainer_routes(router, plugin, _caller, _team_scope, _require_admin)
    position = 1 if app.router.routes and isinstance(app.router.routes[0], SlugRoute) else 0
    for route in router.routes:
        app.router.routes.insert(position, route)
    if plugin.settings.metrics:
        from .metrics import install_metrics

        install_metrics(plugin, app)
    return True
