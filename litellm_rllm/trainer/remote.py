"""The trainer's HTTP client: rewards, finishes, policy versions, pauses and the change feed,
through any proxy of the deployment (`litellm_rllm.client` re-exports these).

Retries: `reward` and `finish` send an idempotency key (a fresh one unless given) and retry
connection errors and 5xx answers with it, so a retried POST is never a second reward.
`follow` reconnects forever (with a growing pause between attempts) and resumes from the last
cursor it was given, so a follower that loses its proxy misses nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Optional
from urllib.parse import quote, urlsplit, urlunsplit

log = logging.getLogger("litellm_rllm")

_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)


def proxy_root(base_url: str) -> str:
    """`http://host:4000/v1` or `.../meta/<slug>/v1` -> `http://host:4000`."""
    from ..slug import split_path

    parsed = urlsplit(base_url)
    _, path = split_path(parsed.path or "/")
    path = path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return urlunsplit((parsed.scheme, parsed.netloc, path, "", "")).rstrip("/")


def _headers(api_key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", **extra}


def _post(url: str, api_key: str, body: Any, *, timeout: float, retries: int,
          idempotency_key: Optional[str] = None) -> dict[str, Any]:
    """POST with retries on connection errors and 5xx (the key makes them safe)."""
    import httpx

    extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    last: Optional[BaseException] = None
    for attempt in range(retries + 1):
        try:
            resp = httpx.post(url, json=body, headers=_headers(api_key, **extra), timeout=timeout)
            if resp.status_code < 500 or attempt == retries:
                resp.raise_for_status()
                return resp.json()
        except httpx.TransportError as exc:
            last = exc
            if attempt == retries:
                raise
        time.sleep(_RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)])
    raise RuntimeError(f"POST {url} failed") from last  # pragma: no cover - loop always returns or raises


def reward(base_url: str, api_key: str, session: str, value: Any, *, trace_id: Optional[str] = None,
           metadata: Optional[dict[str, Any]] = None, idempotency_key: Optional[str] = None,
           timeout: float = 30.0, retries: int = 3, team: Optional[str] = None) -> dict[str, Any]:
    """Store a reward for `session` (or one of its traces): a number or `{"name": number}`.
    Returns the stored reward (`"duplicate": true` when the key had been used already).
    `team`: an admin key naming the team whose session it is (docs/sessions.md)."""
    body: dict[str, Any] = {"reward": value}
    if trace_id is not None:
        body["trace_id"] = trace_id
    if metadata:
        body["metadata"] = metadata
    url = f"{proxy_root(base_url)}/rllm/sessions/{quote(session, safe='')}/reward" + _team_query(team)
    return _post(url, api_key, body, timeout=timeout, retries=retries,
                 idempotency_key=idempotency_key or uuid.uuid4().hex)


def finish(base_url: str, api_key: str, session: str, *, reward: Any = None,
           metadata: Optional[dict[str, Any]] = None, timeout: float = 30.0, retries: int = 3,
           team: Optional[str] = None) -> dict[str, Any]:
    """Mark the episode `session` over, with an optional final reward (a session ends once;
    repeating the same finish is harmless). `team`: as in `reward`."""
    body: dict[str, Any] = {}
    if reward is not None:
        body["reward"] = reward
    if metadata:
        body["metadata"] = metadata
    url = f"{proxy_root(base_url)}/rllm/sessions/{quote(session, safe='')}/finish" + _team_query(team)
    return _post(url, api_key, body, timeout=timeout, retries=retries, idempotency_key=uuid.uuid4().hex)


def _team_query(team: Optional[str]) -> str:
    return f"?team={quote(team, safe='')}" if team else ""


def set_policy_version(base_url: str, api_key: str, model: str, version: int, *, timeout: float = 30.0) -> dict[str, Any]:
    """Announce `model`'s weights version (`"*"`: every group); admin key."""
    return _post(f"{proxy_root(base_url)}/rllm/policy-version", api_key, {"model": model, "version": version},
                 timeout=timeout, retries=3)


def pause(base_url: str, api_key: str, model: str, mode: str = "hold", *, timeout: float = 30.0) -> dict[str, Any]:
    """Pause `model` for a weight sync (`hold` or `reject`); admin key."""
    return _post(f"{proxy_root(base_url)}/rllm/pause", api_key, {"model": model, "mode": mode},
                 timeout=timeout, retries=3)


def resume(base_url: str, api_key: str, model: Optional[str] = None, *, timeout: float = 30.0) -> dict[str, Any]:
    """Resume `model` (None: every paused group); admin key."""
    return _post(f"{proxy_root(base_url)}/rllm/resume", api_key, {} if model is None else {"model": model},
                 timeout=timeout, retries=3)


def pause_status(base_url: str, api_key: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """Pauses, in-flight and held calls per group, and `drained` per paused group."""
    import httpx

    resp = httpx.get(f"{proxy_root(base_url)}/rllm/pause", headers=_headers(api_key), timeout=timeout)
    resp.raise_for_status()
    return resp.json()


def wait_drained(base_url: str, api_key: str, model: str, *, timeout: float = 300.0, interval: float = 0.2) -> bool:
    """Poll `GET /rllm/pause` until `model` is drained (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pause_status(base_url, api_key).get("drained", {}).get(model):
            return True
        time.sleep(interval)
    return False


class Follower:
    """Iterator over the change feed's items (dicts with `kind`, `pos`, ...), long-polling one
    proxy and reconnecting on any error. `cursor` is where to resume: save it and pass it as
    `after=` to a new follower to continue without missing or repeating an item."""

    def __init__(self, base_url: str, api_key: str, *, after: Any = 0, session: Optional[str] = None,
                 finished: bool = False, model: Optional[str] = None, limit: int = 100, wait: float = 30.0,
                 stop_when_idle: bool = False, max_backoff: float = 10.0, team: Optional[str] = None) -> None:
        self.url = f"{proxy_root(base_url)}/rllm/changes"
        self.api_key = api_key
        self.cursor: Any = after
        self.params: dict[str, Any] = {"limit": limit, "wait": wait}
        if session:
            self.params["session"] = session
        if finished:
            self.params["finished"] = "true"
        if model:
            self.params["model"] = model
        if team:
            self.params["team"] = team  # an admin following one team's session (docs/sessions.md)
        self.stop_when_idle = stop_when_idle
        self.max_backoff = max_backoff
        self.reconnects = 0
        self._buffer: list[dict[str, Any]] = []
        self._next: Any = after  # the cursor after the buffered items
        self._client: Any = None
        self._closed = False

    def __iter__(self) -> "Follower":
        return self

    def __next__(self) -> dict[str, Any]:
        while not self._buffer:
            if self._closed:
                raise StopIteration
            items = self._fetch()
            if not items and self.stop_when_idle:
                raise StopIteration
            self._buffer.extend(items)
        item = self._buffer.pop(0)
        # resume after what the caller has taken: this item, or the page's end once it is the last
        self.cursor = item.get("pos", self.cursor) if self._buffer else self._next
        return item

    def _fetch(self) -> list[dict[str, Any]]:
        import httpx

        delay = 0.2
        while not self._closed:
            try:
                if self._client is None:
                    self._client = httpx.Client(headers=_headers(self.api_key),
                                                timeout=float(self.params["wait"]) + 30.0)
                resp = self._client.get(self.url, params={**self.params, "after": self._next})
                resp.raise_for_status()
                page = resp.json()
                items = list(page["items"])
                self._next = page["next"]
                if not items:
                    self.cursor = self._next
                return items
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code < 500:
                    raise  # bad key or bad parameters: not something a reconnect fixes
                self._backoff(exc, delay)
            except (httpx.TransportError, ValueError, KeyError) as exc:
                self._backoff(exc, delay)
            delay = min(delay * 2, self.max_backoff)
        return []

    def _backoff(self, exc: BaseException, delay: float) -> None:
        self.reconnects += 1
        log.warning("litellm-rllm follow: %s (%s); reconnecting in %.1fs", type(exc).__name__, exc, delay)
        if self._client is not None:
            self._client.close()
            self._client = None
        time.sleep(delay)

    def close(self) -> None:
        self._closed = True
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def follow(base_url: str, api_key: str, *, after: Any = 0, session: Optional[str] = None, finished: bool = False,
           model: Optional[str] = None, limit: int = 100, wait: float = 30.0, stop_when_idle: bool = False,
           team: Optional[str] = None) -> Follower:
    """Follow the change feed from `after` (0: the beginning, `"now"`: only what comes next):
    `for item in follow(url, key): ...`. Reconnects forever on errors; `.cursor` says where to
    resume. `stop_when_idle`: end once a wait of `wait` seconds brought nothing."""
    return Follower(base_url, api_key, after=after, session=session, finished=finished, model=model,
                    limit=limit, wait=wait, stop_when_idle=stop_when_idle, team=team)


__all__ = ["Follower", "finish", "follow", "pause", "pause_status", "proxy_root", "resume", "reward",
           "set_policy_version", "wait_drained"]
