"""The storage contract every backend (SQLite, PostgreSQL) implements.

Guarantees a backend must give (SPEC "Read-back"):

* exactly once: ``trace_id`` is unique; writing an existing id changes nothing and uses no seq;
* ``seq`` per session key (``Trace.session_key()``) is 0, 1, 2, ... in *session order* (call
  start, causal prefix order first; ``store/session_order.py``), assigned in the write
  transaction, gap-free with several writers; a late commit of an earlier call shifts the later
  traces' seq (docs/sessions-order.md);
* ``traces(session=S)`` matches ``session_id == S``, ``S in session_uids`` (so an outer uid
  also returns its nested sessions' traces) or ``metadata.session_name == S``, in the caller
  team's namespace (``team=``, see ``sessions.py``), in session order across the keys it finds
  (``(order_us, trace_id)``); ``traces()`` in write order. Every trace read carries ``order``,
  its session-order key, so a merged view's order is explicit where ``seq`` (per session key)
  is not.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, Union

from pydantic import BaseModel, Field

from litellm_rllm.sessions import qualify, split_key
from litellm_rllm.store.codec import EncodedTrace, decode, encode_all, from_utc_micros, to_utc_micros
from litellm_rllm.store.trainer_store import TrainerStore
from litellm_rllm.trainer.versions import parse_filters, policy_filter
from litellm_rllm.store.compact import Compactor, Plan, Rebuilder
from litellm_rllm.trace import Trace

if TYPE_CHECKING:
    from litellm_rllm.store.listing import SessionPage, SessionQuery

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
    cached_tokens: int = 0  # prompt tokens the upstreams served from their prefix cache, summed


def sessions_from_rows(rows: Sequence[Sequence[Any]]) -> list[SessionSummary]:
    """`SessionSummary`s from `(session_key, status, count, min seq, max seq, min created_us,
    max created_us, min id, sum cached_tokens)` rows grouped by session and status (the same
    query in every store), in order of each session's first trace."""
    acc: dict[str, list[Any]] = {}
    for key, status, n, lo_seq, hi_seq, lo_us, hi_us, first_id, cached in rows:
        n, lo_seq, hi_seq, lo_us, hi_us = int(n), int(lo_seq), int(hi_seq), int(lo_us), int(hi_us)
        cur = acc.get(key)
        if cur is None:
            acc[key] = [n, lo_seq, hi_seq, lo_us, hi_us, first_id, {status: n}, int(cached or 0)]
            continue
        cur[7] += int(cached or 0)
        cur[0] += n
        cur[1], cur[2] = min(cur[1], lo_seq), max(cur[2], hi_seq)
        cur[3], cur[4] = min(cur[3], lo_us), max(cur[4], hi_us)
        cur[5] = min(cur[5], first_id)
        cur[6][status] = n
    ordered = sorted(acc.items(), key=lambda item: item[1][5])
    return [
        SessionSummary(session_id=split_key(key)[1], team=split_key(key)[0], traces=v[0], first_seq=v[1],
                       last_seq=v[2], first_at=from_utc_micros(v[3]), last_at=from_utc_micros(v[4]),
                       statuses=v[6], cached_tokens=v[7])
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

    `fetch(key, n)` returns at most n rows whose key (a tuple: the columns before a row's last
    seven, see `decode_row`) is greater than `key`, in key order; every store pages its reads
    through this one loop. A scalar `start` is a one-column key."""
    if limit is not None and limit <= 0:
        return
    key, remaining = (start if isinstance(start, tuple) else (start,)), limit
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
        key = tuple(rows[-1][:-7])


READ_PAGE = 256  # rows per read query
# The key a session read starts after: (order key, trace id), before any real one.
SESSION_START = (-(1 << 62), "")


def decode_row(row: Sequence[Any]) -> Trace:
    """A ``(key..., order_us, seq, doc, arrays, detail, base_id, trace_id)`` row of any backend
    -> its ``Trace`` (a whole row; the stores read through ``TraceStore._rebuilder`` instead,
    which also takes compacted ones)."""
    seq, doc, arrays, detail = row[-6:-2]
    trace = decode(doc, _as_bytes(arrays), _as_bytes(detail), None if seq is None else int(seq))
    trace.order = None if row[-7] is None else int(row[-7])
    return trace


def _as_bytes(value: Any) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return bytes(value)  # memoryview / bytearray from some drivers


class TraceStore(TrainerStore, abc.ABC):
    """A durable, ordered trace store. Implementations must be safe to share between threads.

    The trainer's side (rewards, finishes, policy versions, pauses, the change feed) is
    ``TrainerStore``'s, on the same connection."""

    # Store a call that extends an earlier call of its session as what it adds (store/compact.py).
    compact_sessions: bool = True

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
        *,
        min_policy_version: Optional[int] = None,
        max_staleness: Optional[int] = None,
        team: Optional[str] = None,
    ) -> Iterator[Trace]:
        """Like ``traces`` but streamed page by page, for exports larger than memory: the
        backend's keyset query (``_read_plan``), paged through ``keyset_rows``."""
        keep = policy_filter(*parse_filters(min_policy_version, max_staleness), self.policy_versions)
        since_dt = parse_since(since)
        if session:
            session = qualify(team, session)
        plan = self._read_plan(session, None if since_dt is None else to_utc_micros(since_dt))
        if plan is None or (limit is not None and limit <= 0):
            return
        query, params, start = plan
        rebuild = self._rebuilder()
        rows = keyset_rows(lambda key, n: self._fetch_page(query, params, key, n), start,
                           limit if keep is None else None, READ_PAGE)
        kept = 0
        for row in rows:
            trace = rebuild.decode(row)
            if keep is not None and not keep(trace):
                continue
            yield trace
            kept += 1
            if limit is not None and kept >= limit:
                return

    @abc.abstractmethod
    def _read_plan(self, session: Optional[str], since_us: Optional[int]) -> Optional[tuple[str, tuple[Any, ...], Any]]:
        """A keyset-paginated query whose last two parameters are the key to start after and
        the page size, the key being its first column and its other columns (seq, doc, arrays,
        detail); its leading parameters; the first key. None when nothing can match."""

    @abc.abstractmethod
    def _fetch_page(self, query: str, params: tuple[Any, ...], key: Any, n: int) -> Sequence[Sequence[Any]]:
        """Run one page of a ``_read_plan`` query."""

    # ---- compacted sessions (store/compact.py): the backends call these ------------------

    @abc.abstractmethod
    def _rows_by_id(self, trace_ids: list[str]) -> Sequence[Sequence[Any]]:
        """Rows ``(key, seq, doc, arrays, detail, base_id, trace_id)`` by stored ``trace_id``:
        how a read finds the base of a compacted row."""

    def _rebuilder(self) -> Rebuilder:
        """Decodes rows, putting compacted ones back whole; one per read."""
        return Rebuilder(self._rows_by_id)

    def _compaction_plans(self, encoded: Sequence[EncodedTrace]) -> Optional[list[Plan]]:
        """Whole and compacted forms of the rows to write (None: compaction is off); the
        backend picks with ``Compactor.choose`` in its transaction, then ``remember``s."""
        if not self.compact_sessions:
            return None
        return self.compactor.plan(encoded)

    @property
    def compactor(self) -> Compactor:
        found = self.__dict__.get("_compactor")
        if found is None:
            found = self.__dict__["_compactor"] = Compactor()
        return found

    def _relinked(self, children: Sequence[Sequence[Any]]) -> list[tuple[str, str, Optional[bytes]]]:
        """``(trace_id, doc, arrays)`` of compacted rows made whole: what a delete writes over
        the children that survive it before it removes their base (read in its transaction)."""
        rebuild = self._rebuilder()
        out = []
        for row in children:
            doc, arrays = rebuild.whole(row[-1], row[-5], _as_bytes(row[-4]), row[-2])
            out.append((row[-1], doc if isinstance(doc, str) else doc.decode("utf-8"), arrays))
        return out

    def traces(
        self,
        session: Optional[str] = None,
        since: Since = None,
        limit: Optional[int] = None,
        *,
        min_policy_version: Optional[int] = None,
        max_staleness: Optional[int] = None,
        team: Optional[str] = None,
    ) -> list[Trace]:
        """A session's traces in session order (= ``seq`` order within one session key; a
        lookup that finds several is sorted by ``(order, trace_id)``), else all in write order.

        ``session`` matches the session id, any of the session uids or the session name; ``""``
        selects the traces without a session. ``team``: the namespace of a session written with
        a team's key (None: sessions of callers without a team; ``sessions.py``). ``since`` keeps
        ``created_at >= since``.
        ``min_policy_version`` keeps calls sent under that version or a later one;
        ``max_staleness=k`` those sent at most k versions behind their model group's newest
        announced version (``trainer/versions.py``); both drop traces without a version.
        """
        return list(self.iter_traces(session=session, since=since, limit=limit, team=team,
                                     min_policy_version=min_policy_version, max_staleness=max_staleness))

    # ---- training data (litellm_rllm.training over this store's reads) -----------------

    def session_batches(self, session: Optional[str] = None, since: Since = None,
                        team: Optional[str] = None) -> Iterator[list[Trace]]:
        """The traces of one session key at a time, in ``seq`` order: for a lookup (in
        ``team``'s namespace), every session key it finds (its nested sessions too); else every
        session of the store, one read each, so memory holds one session."""
        if session is not None:
            groups: dict[str, list[Trace]] = {}
            for trace in self.iter_traces(session=session, since=since, team=team):
                groups.setdefault(trace.session_key(), []).append(trace)
            yield from groups.values()
            return
        for summary in self.sessions():
            key = qualify(summary.team, summary.session_id)
            batch = [t for t in self.iter_traces(session=key, since=since) if t.session_key() == key]
            if batch:
                yield batch

    def traces_with_lineage(self, session: Optional[str] = None, since: Since = None,
                            team: Optional[str] = None) -> Iterator[Trace]:
        """Like ``iter_traces`` (grouped by session key) with each trace's ``lineage`` set."""
        from litellm_rllm.training import attach_lineage

        for batch in self.session_batches(session, since, team):
            yield from attach_lineage(batch)

    def with_rewards(self, batch: list[Trace]) -> list[Trace]:
        """Attach a session's stored rewards to its traces (``reward``, read by the training
        views): a reward given to one trace rides on that trace (its latest); the session's
        rewards and the finish's final reward ride on the session's last call, so the merged row
        that ends there carries the episode's reward (the finish's wins over a session reward)."""
        rewards_for = getattr(self, "rewards_for", None)
        if not batch or rewards_for is None:
            return batch
        key = batch[0].session_key()
        found = rewards_for([key]).get(key)
        if found is None:
            return batch
        by_trace = found.by_trace()
        for trace in batch:
            given = by_trace.get(trace.trace_id)
            if given:
                trace.reward = given[-1].reward  # type: ignore[attr-defined]
        episode = found.final()
        if episode is None and found.session_rewards():
            episode = found.session_rewards()[-1].reward
        if episode is not None:
            batch[-1].reward = episode  # type: ignore[attr-defined]
        return batch

    def trajectories(self, session: Optional[str] = None, since: Since = None, view: str = "merged",
                     include_orphans: bool = False, team: Optional[str] = None) -> Any:
        """Training rows (``training.trajectories``): ``merged`` (one per chain of calls that
        extend each other, with the loss mask) or ``per-call``; an iterator with counters.
        Stored rewards ride along (``with_rewards``)."""
        from litellm_rllm import training

        batches = (self.with_rewards(batch) for batch in self.session_batches(session, since, team))
        return training.trajectories((t for batch in batches for t in batch), view=view,  # type: ignore[arg-type]
                                     include_orphans=include_orphans, order="session")

    def export(self, out: Any, *, session: Optional[str] = None, since: Since = None, view: str = "merged",
               format: str = "parquet", include_orphans: bool = False, progress: Any = None,  # noqa: A002
               team: Optional[str] = None) -> Any:
        """Stream ``trajectories`` into a Parquet or JSON-lines file (``training.export``)."""
        from litellm_rllm import training

        rows = self.trajectories(session, since, view, include_orphans, team)
        return training.export(rows, out, format, progress=progress)  # type: ignore[arg-type]

    def audit(self, session: Optional[str] = None, since: Since = None, team: Optional[str] = None) -> Any:
        """The drift audit (``training.audit``): extends / drift / edited / new boundaries,
        retries, orphans and failed completeness checks, per session and in total."""
        from litellm_rllm import training

        return training.audit((t for batch in self.session_batches(session, since, team) for t in batch),
                              order="session")

    @abc.abstractmethod
    def get(self, trace_id: str) -> Optional[Trace]:
        """The stored trace, or None."""

    @abc.abstractmethod
    def sessions(self) -> list[SessionSummary]:
        """One summary per session key, in order of each session's first write."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of stored traces."""

    def delete(self, session: Optional[str] = None, before: Since = None, team: Optional[str] = None) -> int:
        """Delete the traces of ``session`` (matched as in ``traces``, in ``team``'s namespace:
        its nested sessions too) and/or those created before ``before``; at least one is
        required. Returns how many."""
        if session is None and before is None:
            raise ValueError("delete needs a session, a time (before), or both")
        if session:
            session = qualify(team, session)
        before_dt = parse_since(before)
        return self._delete(session, None if before_dt is None else to_utc_micros(before_dt))

    @abc.abstractmethod
    def _delete(self, session: Optional[str], before_us: Optional[int]) -> int:
        """Delete matching rows (and their uid index entries) in one transaction."""

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

    # ------------------------------------------------------------------ the session list (viewer)

    def session_page(self, query: "SessionQuery") -> "SessionPage":
        """One page of session summaries, most recently active first (``GET /rllm/sessions``);
        see ``store/listing.py`` for the walk every backend implements and its cost."""
        raise NotImplementedError(f"{type(self).__name__} does not list sessions")

    def session_rewards(self, session_keys: Sequence[str]) -> dict[str, Any]:
        """Reward per session key, for the list; a store that keeps rewards (the trainer's
        interface) overrides this. None here: the list shows no reward."""
        return {}


__all__ = ["READ_PAGE", "SESSION_START", "EncodedWriteResult", "SessionSummary", "decode_row", "sessions_from_rows", "Since", "TraceStore", "WriteResult", "parse_since"]
