"""Session order: where a newly written trace goes among its session's traces, whatever proxy
wrote it and whenever its commit lands.

Why it is shaped this way:

* Commit order is not call order once several proxies write one session: call k+1, served by
  another proxy, can be committed before call k. So a session is ordered by the call's *start*
  (``created_us``, the proxy's wall clock when the call arrived), ties broken by ``trace_id``
  (code-point order in every backend), and ``seq`` is the trace's rank in that order.
* Causality beats clocks: when a call's prompt token ids begin with an earlier call's prompt +
  completion (choice 0), the later call extended the earlier one and goes after it, even if its
  proxy's clock says otherwise. Each trace's stored order key (``order_us``) is its start time,
  raised to one microsecond past any call it extends: the least fixed point of those rules, so
  the order does not depend on which commit landed first.
* Clock bound ``CLOCK_BOUND_US`` (B): proxies' clocks are assumed within B of each other. A
  write only looks at the session's traces whose order key is at least (its start - B) ("the
  window"); a call cannot be causally before a trace more than B earlier than it. Calls that
  don't overlap are ordered right when the first lasted longer than the clocks' offset (they
  are milliseconds apart under NTP; LLM calls last longer); when they are prefix-related the
  order is right whatever the clocks, up to B.
* A late commit of an *earlier* call takes its rank and shifts the later traces' ``seq`` up by
  one: the backends rewrite those rows' ``seq`` in the same transaction. That only happens for
  calls that were still running when later ones of the same session had finished (overlapping
  calls) or when a proxy's writer lags; see docs/sessions-order.md for what a flush guarantees.
* Only the window is read, and only its rows that could extend a new call (prompt at least as
  long as that call's prompt + completion) have their token ids read back: usually none.

Everything here is plain Python shared by the backends; they fetch the window and apply the
result.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

CLOCK_BOUND_US = 1_000_000  # B: the proxies' clocks are within one second of each other

_HEAD = struct.Struct("<BI")


@dataclass(slots=True)
class CallContext:
    """A call's prompt ids (packed int32, as in the arrays blob) and the hash of its prompt +
    choice 0's completion: what a later call's prompt must start with to extend it."""

    prompt: memoryview
    prompt_len: int
    ctx_len: int
    ctx_hash: int


def call_context(arrays: Optional[bytes]) -> Optional[CallContext]:
    """The context of a stored ``arrays`` blob (codec.py's layout), or None without prompt ids.
    The top-level prompt ids, else choice 0's (completions put them per choice)."""
    if not arrays:
        return None
    view = memoryview(arrays)
    try:
        fmt, n = _HEAD.unpack_from(view, 0)
        counts = struct.unpack_from(f"<{n}i", view, _HEAD.size)
    except struct.error:
        return None
    if fmt != 1 or n < 1:
        return None
    offsets, at = [], _HEAD.size + 4 * n
    for count in counts:
        offsets.append(at)
        at += 4 * max(count, 0)
    prompt_at, prompt_n = offsets[0], counts[0]
    if prompt_n < 0 and n >= 4:
        prompt_at, prompt_n = offsets[2], counts[2]  # choice 0's prompt_token_ids
    if prompt_n < 0:
        return None
    prompt = view[prompt_at : prompt_at + 4 * prompt_n]
    completion = view[offsets[1] : offsets[1] + 4 * max(counts[1], 0)] if n >= 2 else view[0:0]
    h = hashlib.blake2b(prompt, digest_size=8)
    h.update(completion)
    return CallContext(prompt, prompt_n, prompt_n + len(completion) // 4, _signed(h.digest()))


def _signed(digest: bytes) -> int:
    return int.from_bytes(digest, "little", signed=True)  # fits a bigint column


@dataclass(slots=True)
class OrderItem:
    """One trace of a session in the window (``row`` set: stored) or being written (``index``)."""

    trace_id: str
    key: int  # order_us: stored value, or the call's start for a new trace
    seq: Optional[int] = None
    row: Optional[int] = None
    index: Optional[int] = None
    prompt_len: Optional[int] = None
    ctx_len: Optional[int] = None
    ctx_hash: Optional[int] = None
    prompt: Optional[memoryview] = field(default=None, repr=False)

    @classmethod
    def new(cls, index: int, trace_id: str, start_us: int, arrays: Optional[bytes]) -> "OrderItem":
        ctx = call_context(arrays)
        if ctx is None:
            return cls(trace_id, start_us, index=index)
        return cls(trace_id, start_us, index=index, prompt_len=ctx.prompt_len, ctx_len=ctx.ctx_len,
                   ctx_hash=ctx.ctx_hash, prompt=ctx.prompt)

    def columns(self) -> tuple[Optional[int], Optional[int], Optional[int]]:
        """(prompt_len, ctx_len, ctx_hash): what the backends store for later writes."""
        return self.prompt_len, self.ctx_len, self.ctx_hash


def extends(child: OrderItem, parent: OrderItem) -> bool:
    """``child``'s prompt begins with ``parent``'s prompt + (non-empty) completion."""
    if child.prompt is None or parent.ctx_len is None or parent.prompt_len is None or child is parent:
        return False
    if parent.ctx_len <= parent.prompt_len or child.prompt_len is None or child.prompt_len < parent.ctx_len:
        return False
    head = child.prompt[: 4 * parent.ctx_len]
    return _signed(hashlib.blake2b(head, digest_size=8).digest()) == parent.ctx_hash


@dataclass
class Placement:
    """What a write does to one session: the new traces' (seq, order_us) by input index, and
    the stored rows whose seq or order key changes (row, seq, order_us)."""

    fresh: dict[int, tuple[int, int]]
    moved: list[tuple[int, int, int]]


class ContextCache:
    """The immutable order columns (prompt_len, ctx_len, ctx_hash) of rows this store object
    wrote or read, by row id, checked against the row's trace id.

    Why: a write reads its session's window (often every row of the last second), and those
    columns sit after the doc and blobs in a row, i.e. on its overflow pages: reading them cost
    ~6 us per row (a quarter of a 5,000-trace store_throughput run's writer time). The window's keys (row id, trace id, order key) are all in the session-order
    index; only rows not found here (written by another proxy) are read whole. Row ids are never
    reused within a file; the backend clears this when it opens another one.
    """

    def __init__(self, max_rows: int = 1 << 16) -> None:
        self._rows: dict[int, tuple[str, Optional[int], Optional[int], Optional[int]]] = {}
        self._max = max_rows

    def lookup(self, stored: Sequence[tuple[int, str, int]]) -> list[Optional[tuple[Optional[int], Optional[int], Optional[int]]]]:
        """The columns of each (row id, trace id, order key) of a window read, or None where
        this store has not seen that row (or its id now holds another trace)."""
        rows = self._rows
        out: list[Optional[tuple[Optional[int], Optional[int], Optional[int]]]] = []
        for row, trace_id, _ in stored:
            found = rows.get(row)
            out.append(found[1:] if found is not None and found[0] == trace_id else None)
        return out

    def put(self, row: int, trace_id: str, columns: tuple[Optional[int], Optional[int], Optional[int]]) -> None:
        self._rows[row] = (trace_id, *columns)
        if len(self._rows) > self._max:  # the oldest half goes (dicts keep insertion order)
            for old in list(itertools.islice(self._rows, len(self._rows) - self._max // 2)):
                del self._rows[old]

    def clear(self) -> None:
        self._rows.clear()


def after_window(last_key: int, prompt_lens: Iterable[Optional[int]], fresh: Sequence[OrderItem]) -> bool:
    """Do ``fresh`` simply follow the window (``place(base + len(window), [], fresh, ...)`` gives
    what ``place(base, window, fresh, ...)`` would)? Yes when every new call starts after the
    window's last order key (``last_key``) and no stored prompt is long enough to extend a new
    call (``prompt_lens``: the window's; None for a row without ids): then no stored key moves
    (a stored row only moves after a parent it extends), a new call is already after any stored
    parent, and the stored rows all rank first. The usual case, decided without ``place``'s
    per-row work on a window of a second of calls."""
    if min(f.key for f in fresh) <= last_key:
        return False
    shortest = min((f.ctx_len for f in fresh if f.ctx_len is not None), default=None)
    return shortest is None or all(n is None or n < shortest for n in prompt_lens)


def window_start(fresh: Iterable[OrderItem]) -> int:
    """The order key from which stored traces can matter to these new ones."""
    return min(item.key for item in fresh) - CLOCK_BOUND_US


def _edges(items: Sequence[OrderItem]) -> list[tuple[OrderItem, OrderItem]]:
    """Every (child, parent) of ``items`` with ``extends(child, parent)``. A parent's context
    must fit in the child's prompt, so each child is checked only against the parents whose
    ``ctx_len`` is at most its ``prompt_len`` (a bisect over them sorted by it), not against the
    whole window: with hundreds of a session's calls started within a second (a parallel
    fan-out under one session id) that pairwise check took about a fifth of a write's time
    (docs/benchmarks.md, `store_throughput.py --sessions 20 --call-interval-ms 0`)."""
    parents = sorted((p for p in items if p.ctx_len is not None and p.prompt_len is not None
                      and p.ctx_len > p.prompt_len), key=lambda p: p.ctx_len)  # type: ignore[arg-type, return-value]
    lens = [p.ctx_len for p in parents]
    edges = []
    for child in items:
        if child.prompt is None or child.prompt_len is None:
            continue
        for parent in parents[: bisect.bisect_right(lens, child.prompt_len)]:  # type: ignore[arg-type]
            if extends(child, parent):
                edges.append((child, parent))
    return edges


def place(
    base: int,
    window: Sequence[OrderItem],
    fresh: Sequence[OrderItem],
    load_prompts: Callable[[list[OrderItem]], None],
) -> Placement:
    """Merge ``fresh`` into the session: ``window`` holds the stored traces with order key >=
    ``window_start(fresh)`` (their seqs are ``base``, ``base + 1``, ...), ``load_prompts`` fills
    ``prompt`` of the rows it is given (the backend reads their arrays)."""
    shortest = min((f.ctx_len for f in fresh if f.ctx_len is not None), default=None)
    if shortest is not None:
        maybe_after = [w for w in window if w.prompt_len is not None and w.prompt_len >= shortest]
        if maybe_after:
            load_prompts(maybe_after)
    items = [*window, *fresh]
    edges = _edges(items)
    edges.sort(key=lambda e: e[1].ctx_len or 0)  # parents before their children: fewer passes
    keys = {id(x): x.key for x in items}
    changed = True
    while changed:  # "extends" is acyclic (a child's prompt is longer than its parent's)
        changed = False
        for child, parent in edges:
            if keys[id(child)] <= keys[id(parent)]:
                keys[id(child)] = keys[id(parent)] + 1
                changed = True
    ordered = sorted(items, key=lambda x: (keys[id(x)], x.trace_id))
    placement = Placement({}, [])
    for rank, item in enumerate(ordered):
        seq, key = base + rank, keys[id(item)]
        if item.index is not None:
            placement.fresh[item.index] = (seq, key)
        elif item.row is not None and (seq != item.seq or key != item.key):
            placement.moved.append((item.row, seq, key))
    return placement


__all__ = ["CLOCK_BOUND_US", "CallContext", "ContextCache", "OrderItem", "after_window", "Placement", "call_context", "extends", "place", "window_start"]
