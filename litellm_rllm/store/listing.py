"""The session list (``GET /rllm/sessions``, the viewer): one summary per session, newest first,
paged by keyset so the first page costs the same with 100 or 100,000 sessions.

Why it is shaped this way:

* A session's place in the list is its *last* trace's row id (global write order), so "newest
  first" means "most recently active first". The backends walk the traces table backwards on
  its primary key and keep a row only when it is its session's last one (no later ``seq`` in
  the ``(session_key, seq)`` index: one index probe per row). No aggregation over the table,
  no new index: a page costs O(rows walked), about the page size when nothing is filtered.
* The cursor is the row id the walk stopped at (opaque to clients: ``"r<id>"``). Rows written
  while a client pages move their sessions to the top, so a session is never listed twice.
* Filters that only some sessions pass can make the walk long; it is bounded by a time budget,
  after which the page comes back short with a ``next`` cursor ("more may match further
  back"), never a slow request.
* Everything here is plain Python shared by the backends: the query model (validated, errors
  name the field), the summary built from per-trace rows, cursors.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any, Callable, Iterable, Optional, Sequence

from pydantic import BaseModel, Field

from litellm_rllm.sessions import split_key
from litellm_rllm.store.base import parse_since
from litellm_rllm.store.codec import from_utc_micros, to_utc_micros

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
WALK_WINDOW = 4096  # row ids per walk query
WALK_BUDGET_S = 0.3  # a filtered walk stops after this long and returns a short page + cursor
_CURSOR_RE = re.compile(r"^r(\d{1,19})$")
_META_KEY_RE = re.compile(r'^[^"\\\x00-\x1f]{1,200}$')


class SessionQueryError(ValueError):
    """A bad list parameter; ``field`` names it (the route answers 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class SessionQuery(BaseModel):
    """What ``TraceStore.session_page`` lists. ``team`` scopes it to the traces a team key may
    read (``caller.team_id``); ``session`` asks for one session's summary (live polling), by its
    stored key (``sessions.qualify``: in its team's namespace)."""

    limit: int = DEFAULT_LIMIT
    cursor: Optional[int] = None  # list rows with id < cursor
    q: Optional[str] = None  # substring of the session id or of its metadata (case-insensitive)
    model: Optional[str] = None  # some call of the session asked for this model group
    status: Optional[str] = None  # some call of the session has this status
    since_us: Optional[int] = None  # last activity >= since
    until_us: Optional[int] = None  # last activity < until
    meta: dict[str, str] = Field(default_factory=dict)  # metadata key == value (text form)
    team: Optional[str] = None
    session: Optional[str] = None

    @property
    def filtered(self) -> bool:
        """Any filter that keeps some sessions out (then no ``total``: counting would walk all)."""
        return any(v is not None for v in (self.q, self.model, self.status, self.since_us, self.until_us,
                                           self.team)) or bool(self.meta)

    @classmethod
    def parse(
        cls,
        *,
        limit: Any = None,
        cursor: Optional[str] = None,
        q: Optional[str] = None,
        model: Optional[str] = None,
        status: Optional[str] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
        meta: Sequence[str] = (),
        team: Optional[str] = None,
        session: Optional[str] = None,
    ) -> "SessionQuery":
        """From query-string values; raises ``SessionQueryError`` naming the bad field."""
        if limit is None or limit == "":
            n = DEFAULT_LIMIT
        else:
            try:
                n = int(limit)
            except (TypeError, ValueError):
                raise SessionQueryError("limit", f"not an integer: {limit!r}") from None
            if not 1 <= n <= MAX_LIMIT:
                raise SessionQueryError("limit", f"must be between 1 and {MAX_LIMIT}")
        return cls(
            limit=n,
            cursor=decode_cursor(cursor),
            q=_text("q", q),
            model=_text("model", model),
            status=_text("status", status),
            since_us=_time("since", since),
            until_us=_time("until", until),
            meta=_meta(meta),
            team=team,
            session=_text("session", session),
        )


def _text(field: str, value: Optional[str]) -> Optional[str]:
    if value is None or value == "":
        return None
    if len(value) > 1000 or "\x00" in value:
        raise SessionQueryError(field, "at most 1000 characters, no NUL")
    return value


def _time(field: str, value: Optional[str]) -> Optional[int]:
    if not value:
        return None
    try:
        parsed = parse_since(value)
    except ValueError:
        raise SessionQueryError(field, f"not an ISO 8601 date/time: {value!r}") from None
    assert parsed is not None
    return to_utc_micros(parsed)


def _meta(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition(":")
        if not sep or not _META_KEY_RE.match(key):
            raise SessionQueryError("meta", f"expected key:value (key without quotes or backslashes): {item!r}")
        out[key] = value
    return out


def encode_cursor(row_id: Optional[int]) -> Optional[str]:
    return None if row_id is None else f"r{row_id}"


def decode_cursor(cursor: Optional[str]) -> Optional[int]:
    if not cursor:
        return None
    m = _CURSOR_RE.match(cursor)
    if m is None:
        raise SessionQueryError("cursor", "not a cursor this server gave out")
    return int(m.group(1))


def meta_text(value: Any) -> str:
    """The text form a ``meta=key:value`` filter compares with (JSON scalars as JSON spells them)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return str(value)


class SessionListing(BaseModel):
    """One session in the list."""

    session_id: str
    team: Optional[str] = None  # the namespace of a session written with a team's key (sessions.py)
    traces: int
    first_at: datetime
    last_at: datetime
    last_seq: int
    models: list[str] = Field(default_factory=list)
    statuses: dict[str, int] = Field(default_factory=dict)
    errors: int = 0
    completeness_failed: int = 0
    drift: Optional[int] = None  # traces whose lineage relation is drift (when lineage is stored)
    metadata: dict[str, Any] = Field(default_factory=dict)  # the last trace's
    reward: Optional[Any] = None  # where the store keeps rewards (the trainer's interface)


class SessionPage(BaseModel):
    """``GET /rllm/sessions``: ``next`` is the cursor of the following page (None: the end)."""

    sessions: list[SessionListing]
    next: Optional[str] = None
    total: Optional[int] = None


def walk(
    fetch: Callable[[int, int, int], Sequence[Sequence[Any]]],
    start: int,
    bottom: int,
    limit: int,
    budget_s: float = WALK_BUDGET_S,
) -> tuple[list[Sequence[Any]], Optional[int]]:
    """The keyset walk every backend pages through: rows ``(id, ...)`` from ``fetch(hi, lo, n)``
    (at most n passing rows with ``lo <= id < hi``, id descending), from ``start`` down to
    ``bottom``, until ``limit`` rows or the time budget. Returns the rows and the id the next
    page starts below (None: nothing further back)."""
    found: list[Sequence[Any]] = []
    hi, window = start, WALK_WINDOW
    deadline = time.monotonic() + budget_s
    while hi > bottom:
        lo = max(bottom, hi - window)
        began = time.monotonic()
        found.extend(fetch(hi, lo, limit + 1 - len(found)))
        if len(found) > limit:
            return found[:limit], int(found[limit - 1][0])
        hi = lo
        now = time.monotonic()
        if hi > bottom and now > deadline:
            return found, hi
        if (now - began) * 4 < deadline - now:  # sparse matches: fewer, larger steps, in budget
            window = min(window * 2, 16 * WALK_WINDOW)
        else:
            window = max(256, window // 2)
    return found, None


def id_window(scalar: Callable[[str, tuple[Any, ...]], Any], table: str, mark: str,
              query: SessionQuery) -> tuple[int, int]:
    """The row ids a walk covers, ``(start, bottom)`` for ``walk``: below the newest row (or the
    first row at/after ``until``, or the cursor), down to the first row at/after ``since``.
    ``scalar(sql, params)`` answers one value; ``table`` and ``mark`` are the backend's table
    name and parameter mark (rows are written in id order, so ids stand for write time)."""
    start, bottom = int(scalar(f"SELECT MAX(id) FROM {table}", ()) or 0) + 1, 1
    if query.until_us is not None:
        start = int(scalar(f"SELECT MAX(id) FROM {table} WHERE created_us < {mark}", (query.until_us,)) or 0) + 1
    if query.since_us is not None:
        above = scalar(f"SELECT MIN(id) FROM {table} WHERE created_us >= {mark}", (query.since_us,))
        bottom = int(above) if above is not None else start
    if query.cursor is not None:
        start = min(start, query.cursor)
    return start, bottom


def summaries(
    order: Sequence[str],
    facts: Iterable[Sequence[Any]],
    metadata: dict[str, Any],
    rewards: Optional[dict[str, Any]] = None,
) -> list[SessionListing]:
    """Summaries for the sessions in ``order`` from their traces' facts (any order)."""
    acc: dict[str, dict[str, Any]] = {}
    for key, status, model, created_us, seq, failed, relation in facts:
        a = acc.get(key)
        if a is None:
            a = acc[key] = {"n": 0, "lo": created_us, "hi": created_us, "seq": seq, "models": {},
                            "statuses": {}, "failed": 0, "drift": None}
        a["n"] += 1
        a["lo"], a["hi"] = min(a["lo"], created_us), max(a["hi"], created_us)
        a["seq"] = max(a["seq"], seq)
        if model:
            a["models"][model] = None
        a["statuses"][status] = a["statuses"].get(status, 0) + 1
        if failed:
            a["failed"] += 1
        if relation is not None:
            a["drift"] = (a["drift"] or 0) + (relation == "drift")
    out: list[SessionListing] = []
    for key in order:
        a = acc.get(key)
        if a is None:
            continue
        team, own = split_key(key)
        out.append(SessionListing(
            session_id=own, team=team, traces=a["n"], first_at=from_utc_micros(int(a["lo"])),
            last_at=from_utc_micros(int(a["hi"])), last_seq=int(a["seq"]), models=sorted(a["models"]),
            statuses=a["statuses"], errors=a["statuses"].get("error", 0), completeness_failed=a["failed"],
            drift=a["drift"], metadata=metadata.get(key) or {},
            reward=(rewards or {}).get(key),
        ))
    return out


__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "SessionListing",
    "SessionPage",
    "SessionQuery",
    "SessionQueryError",
    "decode_cursor",
    "encode_cursor",
    "id_window",
    "meta_text",
    "summaries",
    "walk",
]
