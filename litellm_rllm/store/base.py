"""The storage contract every backend (SQLite, PostgreSQL) implements.

Guarantees a backend must give (SPEC "Read-back"):

* exactly once: ``trace_id`` is unique; writing an existing id changes nothing and uses no seq;
* ``seq`` per session key (``Trace.session_key()``) is 0, 1, 2, ... in write order, assigned in
  the write transaction, so it is gap-free and monotonic with several writers;
* ``traces(session=S)`` matches ``session_id == S``, ``S in session_uids`` (so an outer uid
  also returns its nested sessions' traces) or ``metadata.session_name == S``, in the caller
  team's namespace (``team=``, see ``sessions.py``), in global write order; every trace read
  carries ``order``, its place in that order (store-wide, increasing, gaps allowed), so a
  merged view's order is explicit where ``seq`` (per session key) is not.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from pydantic import BaseModel, Field

from litellm_rllm.sessions import qualify, split_key
from litellm_rllm.store.codec import EncodedTrace, decode, encode_all, from_utc_micros, to_utc_micros
from litellm_rllm.trace import Trace

Since = Union[datetime, str, None]


class SessionSummary(BaseModel):
    """One session key's traces at a glance (CLI ``sessions list``)."""

    session_id: str
    team: Optional[str] = None  # the namespace of a session written with a team's key
    traces: int
    first_seq: int
    last_seq: int
    first_at: datetime
    last_at: datetime
    statuses: dict[str, int] = Field(default_factory=dict)


def sessions_from_rows(rows: Sequence[Sequence[Any]]) -> list[SessionSummary]:
    """`SessionSummary`s from `(session_key, status, count, min seq, max seq, min created_us,
    max created_us, min id)` rows grouped by session and status (the same query in every
    store), in order of each session's first trace."""
    acc: dict[str, list[Any]] = {}
    for key, status, n, lo_seq, hi_seq, lo_us, hi_us, first_id in rows:
        n, lo_seq, hi_seq, lo_us, hi_us = int(n), int(lo_seq), int(hi_seq), int(lo_us), int(hi_us)
        cur = acc.get(key)
        if cur is None:
            acc[key] = [n, lo_seq, hi_seq, lo_us, hi_us, first_id, {status: n}]
            continue
        cur[0] += n
        cur[1], cur[2] = min(cur[1], lo_seq), max(cur[2], hi_seq)
        cur[3], cur[4] = min(cur[3], lo_us), max(cur[4], hi_us)
        cur[5] = min(cur[5], first_id)
        cur[6][status] = n
    ordered = sorted(acc.items(), key=lambda item: item[1][5])
    return [
        SessionSummary(session_id=split_key(key)[1], team=split_key(key)[0], traces=v[0], first_seq=v[1], last_seq=v[2],
                       first_at=from_utc_micros(v[3]), last_at=from_utc_micros(v[4]), statuses=v[6])
        for key, v in ordered
    ]



class WriteResult(list[Trace]):
    """What ``write`` returns: the traces as stored, in input order (a plain list to callers).

    ``duplicates`` are the trace ids that were already stored (or repeated within the call);
    the writer uses it for its stats without a second query.
    """

    def __init__(self, traces: Sequence[Trace] = (), duplicates: Sequence[str] = ()) -> None:
        super().__init__(traces)
        self.duplicates: list[str] = list(duplicates)

    @property
    def inserted(self) -> int:
        return len(self) - len(self.duplicates)


@dataclass
class EncodedWriteResult:
    """What ``write_encoded`` did: the seq each input got, in input order (None: a duplicate,
    stored before or earlier in the same call), and the duplicate ids."""

    seqs: list[Optional[int]]
    duplicates: list[str]

    @property
    def inserted(self) -> int:
        return len(self.seqs) - len(self.duplicates)


def parse_since(since: Since) -> Optional[datetime]:
    """ISO 8601 string or datetime -> aware UTC datetime; naive means UTC."""
    if since is None:
        return None
    if isinstance(since, str):
        text = since.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat has no 'Z'
        try:
            since = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"since: not an ISO 8601 date/time: {since!r}") from exc
    if since.tzinfo is None:
        return since.replace(tzinfo=timezone.utc)
    return since.astimezone(timezone.utc)


def keyset_rows(
    fetch: Callable[[Any, int], Sequence[Sequence[Any]]],
    start: Any,
    limit: Optional[int],
    page_size: int = 256,
) -> Iterator[Sequence[Any]]:
    """Rows of a keyset-paginated query, page by page, up to `limit`.

    `fetch(key, n)` returns at most n rows whose key (their first column) is greater than
    `key`, in key order; every store pages its reads through this one loop."""
    if limit is not None and limit <= 0:
        return
    key, remaining = start, limit
    while True:
        page = page_size if remaining is None else min(page_size, remaining)
        rows = fetch(key, page)
        yield from rows
        if remaining is not None:
            remaining -= len(rows)
            if remaining <= 0:
                return
        if len(rows) < page:
            return
        key = rows[-1][0]


READ_PAGE = 256  # rows per read query


def decode_row(row: Sequence[Any]) -> Trace:
    """A ``(key, seq, doc, arrays, detail[, row id])`` row of any backend -> its ``Trace``; the
    row id (global write order) becomes ``order``."""
    _key, seq, doc, arrays, detail, *rest = row
    trace = decode(doc, _as_bytes(arrays), _as_bytes(detail), None if seq is None else int(seq))
    if rest and rest[0] is not None:
        trace.order = int(rest[0])
    return trace


def _as_bytes(value: Any) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return bytes(value)  # memoryview / bytearray from some drivers


class TraceStore(abc.ABC):
    """A durable, ordered trace store. Implementations must be safe to share between threads."""

    @abc.abstractmethod
    def write_encoded(self, encoded: Sequence[EncodedTrace]) -> EncodedWriteResult:
        """Store encoded traces (``codec.encode``) in one transaction; assign ``seq`` in list
        order; skip known ids. The writer's path: its traces are encoded where they are built.
        Raises ``TraceEncodeError`` (nothing written) for values the backend refuses."""

    def write(self, traces: Sequence[Trace]) -> WriteResult:
        """Store ``traces`` in one transaction; assign ``seq`` in list order; skip known ids.

        Returns the traces as stored, in input order: a new trace is the given object with
        ``seq`` set (in place, after the commit: copying 1,000-element traces would cost more
        than storing them); a duplicate is the stored trace (or, repeated within the call, its
        first occurrence). Raises ``TraceEncodeError`` (nothing written) when some traces
        cannot be encoded.
        """
        result = self.write_encoded(encode_all(traces))
        fresh: dict[str, Trace] = {}
        for trace, seq in zip(traces, result.seqs):
            if seq is not None:
                trace.seq = seq  # only after COMMIT: a rolled-back write changes nothing
                fresh.setdefault(trace.trace_id, trace)
        out: list[Trace] = []
        for trace, seq in zip(traces, result.seqs):
            out.append(trace if seq is not None else fresh.get(trace.trace_id) or self.get(trace.trace_id) or trace)
        return WriteResult(out, result.duplicates)

    def iter_traces(
        self,
        session: Optional[str] = None,
        since: Since = None,
        limit: Optional[int] = None,
        team: Optional[str] = None,
    ) -> Iterator[Trace]:
        """Like ``traces`` but streamed page by page, for exports larger than memory: the
        backend's keyset query (``_read_plan``), paged through ``keyset_rows``."""
        since_dt = parse_since(since)
        if session:
            session = qualify(team, session)
        plan = self._read_plan(session, None if since_dt is None else to_utc_micros(since_dt))
        if plan is None:
            return
        query, params, start = plan
        for row in keyset_rows(lambda key, n: self._fetch_page(query, params, key, n), start, limit, READ_PAGE):
            yield decode_row(row)

    @abc.abstractmethod
    def _read_plan(self, session: Optional[str], since_us: Optional[int]) -> Optional[tuple[str, tuple[Any, ...], Any]]:
        """A keyset-paginated query whose last two parameters are the key to start after and
        the page size, the key being its first column and its other columns (seq, doc, arrays,
        detail); its leading parameters; the first key. None when nothing can match."""

    @abc.abstractmethod
    def _fetch_page(self, query: str, params: tuple[Any, ...], key: Any, n: int) -> Sequence[Sequence[Any]]:
        """Run one page of a ``_read_plan`` query."""

    def traces(
        self,
        session: Optional[str] = None,
        since: Since = None,
        limit: Optional[int] = None,
        team: Optional[str] = None,
    ) -> list[Trace]:
        """Traces in global write order (= ``seq`` order within a session; ``order`` says it).

        ``session`` matches the session id, any of the session uids or the session name;
        ``""`` selects the traces without a session. ``team``: the namespace of a session
        written with a team's key (None: sessions of callers without a team). ``since`` keeps
        ``created_at >= since``.
        """
        return list(self.iter_traces(session=session, since=since, limit=limit, team=team))

    @abc.abstractmethod
    def get(self, trace_id: str) -> Optional[Trace]:
        """The stored trace, or None."""

    @abc.abstractmethod
    def sessions(self) -> list[SessionSummary]:
        """One summary per session key, in order of each session's first write."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of stored traces."""

    def flush(self, timeout: Optional[float] = None) -> bool:
        """A bare store is durable once ``write`` returns; the writer gives the real barrier."""
        return True

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent."""

    def __enter__(self) -> "TraceStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["READ_PAGE", "EncodedWriteResult", "SessionSummary", "decode_row", "sessions_from_rows", "Since", "TraceStore", "WriteResult", "parse_since"]
