"""The trainer's routes (`docs/trainer.md`), added to `/rllm/*` by `install_rllm_routes`:

    POST /rllm/sessions/{id}/reward    a reward for the session or one trace (Idempotency-Key)
    POST /rllm/sessions/{id}/finish    the episode is over (optional final reward, metadata)
    GET  /rllm/changes                 the change feed, long-polled
    POST /rllm/policy-version          announce a model group's weights version (admin)
    GET  /rllm/policy-version          the versions this proxy stamps with
    POST /rllm/pause, /rllm/resume     hold or reject a model group's calls (admin)
    GET  /rllm/pause                   pauses, in-flight calls per group, drained or not (admin)

Auth as the read routes: admin keys do everything; a team key reads its team's items and
writes rewards / finishes only for sessions whose stored traces are all its team's. Bad input
is a 400 naming the field; store reads and writes run off the event loop, and big answers are
encoded there too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..sessions import qualify
from ..trainer.schema import (
    ChangePage,
    IdempotencyConflict,
    SessionRewards,
    TrainerInputError,
    parse_finish_body,
    parse_idempotency_key,
    parse_model,
    parse_pause_body,
    parse_policy_version_body,
    parse_resume_body,
    parse_reward_body,
    parse_session,
)
from ..trainer.versions import parse_filters

if TYPE_CHECKING:
    from .plugin import Plugin

log = logging.getLogger("litellm_rllm")

MAX_LIMIT = 1000
MAX_WAIT_S = 300.0
ORDER_WAIT_S = 10.0  # a reward waits this long at most for the proxy's writer (then is stored anyway)


def bad_request(exc: TrainerInputError) -> JSONResponse:
    return JSONResponse(status_code=400, content={"error": {
        "message": str(exc), "type": "invalid_request_error", "param": exc.field, "code": "rllm_invalid_request"}})


def _unavailable(what: str, exc: BaseException) -> JSONResponse:
    log.error("litellm-rllm: %s failed: %s: %s", what, type(exc).__name__, exc)
    return JSONResponse(status_code=503, headers={"Retry-After": "1"},
                        content={"error": {"message": "the trace store is unreachable; retry later",
                                           "type": "service_unavailable", "code": "rllm_store_unavailable"}})


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise TrainerInputError("body", "not valid JSON") from None


def _query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise TrainerInputError(name, "must be an integer") from None
    if not lo <= value <= hi:
        raise TrainerInputError(name, f"must be from {lo} to {hi}")
    return value


def _query_float(request: Request, name: str, default: float, lo: float, hi: float) -> float:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise TrainerInputError(name, "must be a number of seconds") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise TrainerInputError(name, f"must be from {lo:g} to {hi:g}")
    return value


def _query_bool(request: Request, name: str) -> bool:
    text = (request.query_params.get(name) or "").lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise TrainerInputError(name, "must be true or false")


def _visible(team: Optional[str], item_team: Optional[str]) -> bool:
    return team is None or item_team == team


def session_namespace(scope: Optional[str], requested: Optional[str]) -> Optional[str]:
    """The team namespace a request's session lives in (`sessions.py`): a team key's own team
    (naming another team: 403); for an admin, `?team=` (none: sessions of callers without a team)."""
    from fastapi import HTTPException

    requested = requested or None
    if scope is not None:
        if requested not in (None, scope):
            raise HTTPException(status_code=403, detail="a team key reads and writes only its own team's sessions")
        return scope
    return requested


def session_extras(plugin: "Plugin", session: str, team: Optional[str],
                   namespace: Optional[str] = None) -> dict[str, Any]:
    """`rewards` and `finished` of a session (in `namespace`) for the traces route (call off the loop)."""
    try:
        parse_session(session)
    except TrainerInputError:
        return {"rewards": [], "finished": None}
    found: SessionRewards = plugin.reader.rewards(session, team=namespace)
    rewards = [r.model_dump(mode="json", exclude={"duplicate"}) for r in found.rewards if _visible(team, r.team_id)]
    finish = found.finish if found.finish is not None and _visible(team, found.finish.team_id) else None
    return {"rewards": rewards, "finished": None if finish is None else finish.model_dump(mode="json",
                                                                                          exclude={"duplicate"})}


def read_filters(min_policy_version: Optional[str], max_staleness: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """The traces route's policy filters (raises `TrainerInputError`)."""
    return parse_filters(min_policy_version or None, max_staleness or None)


def install_trainer_routes(router: Any, plugin: "Plugin", caller: Callable[..., Any],
                           team_scope: Callable[[Any], Optional[str]], require_admin: Callable[[Any], None]) -> None:
    """Add the trainer's routes to `router` (the `/rllm/*` router of `rllm_api.py`)."""
    from fastapi import Depends, HTTPException

    async def authed_body(request: Request) -> tuple[Any, Any]:
        """The caller and the JSON body. The body's syntax is checked first: LiteLLM's key
        check parses the body too and turns a broken one into an auth failure."""
        body = await _json_body(request)
        if body is not None and not isinstance(body, dict):
            raise TrainerInputError("body", "must be a JSON object")
        return await caller(request), body

    def check_team_may_write(session: str, team: Optional[str], trace_id: Optional[str],
                             namespace: Optional[str] = None) -> None:
        """A team key writes only for sessions whose stored traces are all its team's (its own
        namespace: they are, unless stored before namespaces); a `trace_id` that is stored must
        belong to the session (its id, a uid or its name, in the same namespace)."""
        reader = plugin.reader
        if team is not None:
            for trace in reader.iter_traces(session=session, team=namespace):
                if (trace.caller or {}).get("team_id") != team:
                    raise HTTPException(status_code=403, detail=f"session {session!r} has traces of another team")
        if trace_id is not None:
            trace = reader.get(trace_id)
            if trace is not None and qualify(namespace, session) not in trace.lookup_keys():
                raise TrainerInputError("trace_id", f"trace {trace_id!r} belongs to session {trace.session_id!r}, "
                                                    f"not {session!r}")

    @router.post("/rllm/sessions/{session}/reward", tags=["litellm-rllm"])
    async def rllm_reward(session: str, request: Request) -> Any:
        """Store a reward: `{"reward": 1.0 | {"name": 1.0, ...}, "trace_id"?: ..., "metadata"?: {...}}`.
        A retried POST with the same `Idempotency-Key` header returns the first reward (200,
        `"duplicate": true`) instead of adding one (201); the same key with another body: 409."""
        try:
            user, body = await authed_body(request)
            team = team_scope(user)
            namespace = session_namespace(team, request.query_params.get("team"))
            parse_session(session, "session")
            value, trace_id, metadata = parse_reward_body(body)
            key = parse_idempotency_key(request.headers.get("idempotency-key"))
        except TrainerInputError as exc:
            return bad_request(exc)

        def write() -> Any:
            check_team_may_write(session, team, trace_id, namespace)
            return plugin.reader.add_reward(session, value, trace_id=trace_id, metadata=metadata,
                                            idempotency_key=key, team_id=team, team=namespace)

        await _after_own_traces()
        return await _store_write("storing a reward", write)

    @router.post("/rllm/sessions/{session}/finish", tags=["litellm-rllm"])
    async def rllm_finish(session: str, request: Request) -> Any:
        """The episode is over: `{"reward"?: number | {...}, "metadata"?: {...}}` (body optional).
        201 the first time; 200 `"duplicate": true` for the same body again; 409 for another."""
        try:
            user, body = await authed_body(request)
            team = team_scope(user)
            namespace = session_namespace(team, request.query_params.get("team"))
            parse_session(session, "session")
            value, metadata = parse_finish_body(body)
            parse_idempotency_key(request.headers.get("idempotency-key"))
        except TrainerInputError as exc:
            return bad_request(exc)

        def write() -> Any:
            check_team_may_write(session, team, None, namespace)
            return plugin.reader.finish(session, value, metadata=metadata, team_id=team, team=namespace)

        await _after_own_traces()
        return await _store_write("storing a finish", write)

    async def _after_own_traces() -> None:
        """Wait (at most `ORDER_WAIT_S`) until this proxy's writer has handled every call that
        finished before the request, so a reward or finish posted to the proxy that served the
        session's calls comes after their traces in the feed (and the team check sees them).
        Calls another proxy served: flush that proxy first (docs/trainer.md)."""
        await plugin.writer.aflush(ORDER_WAIT_S)

    async def _store_write(what: str, fn: Callable[[], Any]) -> Any:
        try:
            result = await asyncio.to_thread(fn)
        except TrainerInputError as exc:
            return bad_request(exc)
        except IdempotencyConflict as exc:
            return JSONResponse(status_code=409, content={"error": {
                "message": str(exc), "type": "conflict", "code": "rllm_idempotency_conflict"}})
        except HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - the store, not the request
            return _unavailable(what, exc)
        return JSONResponse(status_code=200 if result.duplicate else 201, content=result.model_dump(mode="json"))

    @router.get("/rllm/changes", tags=["litellm-rllm"])
    async def rllm_changes(request: Request, user: Any = Depends(caller)) -> Any:
        """Traces, rewards and finishes in store-wide commit order after `after` (a cursor from
        a previous answer's `next`; 0 = the beginning, `now` = the current end). Waits up to
        `wait` seconds for something to arrive. Filters: `session` (in the caller's team's
        namespace, or an admin's `team`), `model`, `finished=true` (only `finish` items, each
        with the episode's `traces` and `rewards`)."""
        team = team_scope(user)
        q = request.query_params
        namespace = session_namespace(team, q.get("team"))
        try:
            after_text = q.get("after") or "0"
            after = -1 if after_text == "now" else _query_int(request, "after", 0, 0, 2**63 - 1)
            limit = _query_int(request, "limit", 100, 1, MAX_LIMIT)
            wait = _query_float(request, "wait", 0.0, 0.0, MAX_WAIT_S)
            finished = _query_bool(request, "finished")
            session = parse_session(q["session"], "session") if q.get("session") else None
            model = parse_model(q["model"]) if q.get("model") else None
        except TrainerInputError as exc:
            return bad_request(exc)
        live = plugin.live
        reader = plugin.reader

        def read(cursor: int) -> tuple[Optional[bytes], int]:
            if cursor < 0:
                return None, reader.feed_head()
            page: ChangePage = reader.changes(cursor, limit, session=session, finished=finished, model=model,
                                              team=namespace)
            items = []
            for item in page.items:
                if not _visible(team, item.team_id()):
                    continue
                if team is not None and item.episode_traces is not None:
                    item.episode_traces = [t for t in item.episode_traces if _visible(team, (t.caller or {}).get("team_id"))]
                    item.episode_rewards = [r for r in item.episode_rewards or () if _visible(team, r.team_id)]
                items.append(item.to_json())
            if not items:
                return None, page.next
            return json.dumps({"items": items, "next": page.next}, separators=(",", ":")).encode(), page.next

        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        cursor = after
        live.followers += 1
        live.poke()
        try:
            while True:
                seen = live.feed.generation
                try:
                    body, cursor = await asyncio.to_thread(read, cursor)
                except Exception as exc:  # noqa: BLE001
                    return _unavailable("reading the change feed", exc)
                if body is not None:
                    return Response(content=body, media_type="application/json")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return {"items": [], "next": cursor}
                await live.feed.wait(seen, remaining)
        finally:
            live.followers -= 1

    @router.post("/rllm/policy-version", tags=["litellm-rllm"])
    async def rllm_set_policy_version(request: Request) -> Any:
        """Announce a model group's weights version: `{"model": "policy" | "*", "version": 12}`.
        This proxy stamps calls with it at once, every proxy on the store within a second."""
        try:
            user, body = await authed_body(request)
            require_admin(user)
            model, version = parse_policy_version_body(body)
        except TrainerInputError as exc:
            return bad_request(exc)
        try:
            await asyncio.to_thread(plugin.reader.set_policy_version, model, version)
        except Exception as exc:  # noqa: BLE001
            return _unavailable("storing a policy version", exc)
        plugin.live.apply_version(model, version)
        return {"model": model, "version": version, "versions": dict(plugin.live.versions)}

    @router.get("/rllm/policy-version", tags=["litellm-rllm"])
    async def rllm_policy_versions(user: Any = Depends(caller)) -> Any:
        """The versions this proxy stamps calls with (its cached view of the store)."""
        live = plugin.live
        return {"versions": dict(live.versions), "proxy_id": live.proxy_id, "state_age_s": live.stats()["state_age_s"]}

    @router.post("/rllm/pause", tags=["litellm-rllm"])
    async def rllm_pause(request: Request) -> Any:
        """Pause a model group for a weight sync: `{"model": "policy" | "*", "mode": "hold" | "reject"}`.
        New calls wait (hold) or get 429 (reject); calls already upstream finish. Poll
        `GET /rllm/pause` until the group is `drained`."""
        try:
            user, body = await authed_body(request)
            require_admin(user)
            model, mode = parse_pause_body(body)
        except TrainerInputError as exc:
            return bad_request(exc)

        def write() -> Any:
            pause = plugin.reader.set_pause(model, mode)
            return pause, plugin.reader.pauses()

        try:
            pause, pauses = await asyncio.to_thread(write)
        except Exception as exc:  # noqa: BLE001
            return _unavailable("storing a pause", exc)
        plugin.live.apply_pauses(pauses)
        return {"model": model, "mode": pause.mode, "since": pause.since.isoformat()}

    @router.post("/rllm/resume", tags=["litellm-rllm"])
    async def rllm_resume(request: Request) -> Any:
        """Resume a paused group (`{"model": ...}`), or every paused group (no body)."""
        try:
            user, body = await authed_body(request)
            require_admin(user)
            model = parse_resume_body(body)
        except TrainerInputError as exc:
            return bad_request(exc)

        def write() -> Any:
            resumed = plugin.reader.clear_pause(model)
            return resumed, plugin.reader.pauses()

        try:
            resumed, pauses = await asyncio.to_thread(write)
        except Exception as exc:  # noqa: BLE001
            return _unavailable("resuming", exc)
        plugin.live.apply_pauses(pauses)
        return {"resumed": resumed}

    @router.get("/rllm/pause", tags=["litellm-rllm"])
    async def rllm_pause_status(user: Any = Depends(caller)) -> Any:
        """Pauses, calls in flight and held per model group across the live proxies, and
        `drained` per paused group (every proxy applied the pause, none has a call in flight)."""
        from ..trainer.live import live_window_s
        from ..trainer.pause import drain_report

        require_admin(user)
        live, gate = plugin.live, plugin.gate
        max_age = live_window_s(live.poll_s)

        def read() -> Any:
            return plugin.reader.pauses(), plugin.reader.heartbeats(max_age)

        try:
            pauses, proxies = await asyncio.to_thread(read)
        except Exception as exc:  # noqa: BLE001
            return _unavailable("reading pauses", exc)
        local = {**gate.snapshot(), "applied": {m: p.since_us for m, p in live.effective_pauses().items()}}
        return drain_report(pauses, proxies, live.proxy_id, local)


__all__ = ["bad_request", "install_trainer_routes", "read_filters", "session_extras"]
