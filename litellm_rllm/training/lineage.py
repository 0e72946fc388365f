"""Lineage: how each call of a session relates to the earlier ones, from token ids alone.

No tokenizer, no messages: only prompt ids, sampled completion ids and (for retries) a digest
of the request. Notation for one session, calls in order (`seq`, else `created_at`):
``P_i`` the prompt ids of call i, ``C_ik`` the sampled ids of its choice k, ``S_ik = P_i + C_ik``.
A call is *usable as a parent* when it has prompt ids and at least one choice with a non-empty
``C_ik`` (a call that sampled nothing is nobody's parent). For call j with prompt ids:

1. ``B`` = usable earlier calls i whose ``P_i`` is a *proper* prefix of ``P_j``;
   ``longest`` = the largest ``len(P_i)`` in B.
2. **extends**: some (i, k) with i in B has ``S_ik`` a prefix of ``P_j`` and
   ``len(S_ik) > longest`` (no other call's prompt reaches past that completion: a call that
   drifted from a later turn is not an "extends" of an earlier one). Among those, the longest
   ``S_ik``, then the latest i, then the lowest k: ``parent = i``, ``choice = k``.
3. **drift**: otherwise, if B is not empty: the parent is a call of B with ``len(P_i) ==
   longest`` (its prompt is kept, its completion region is not), with the choice k whose ids
   agree longest with ``P_j`` after ``P_i`` (ties: latest call, lowest choice), among the
   choices no earlier call *extends*. A choice that was once continued exactly and now is not
   was not re-tokenized: its history was changed (rule 4; e.g. old turns dropped after the
   opening prompt).
   ``offset`` = index into ``P_j`` of the first token that differs from ``S_ik`` (it lies inside
   the completion region; it equals ``len(P_j)`` when ``P_j`` stops inside it), ``expected`` /
   ``actual`` = ``S_ik`` / ``P_j`` over ``[window_start, offset + window)``, ``window_start =
   max(0, offset - window)``.
4. **edited**: otherwise, among usable earlier calls with ``P_i != P_j``, the one sharing the
   longest common prefix ``L`` with ``P_j`` (where all of ``P_i`` is shared, counting on into
   its best-agreeing ``C_ik``; ties: latest), if L is *meaningful*: at least
   ``R - min(edit_slack, R // 4)`` tokens (and at least 1), R = the length of the opening
   prompt of that call's conversation (the prompt of the ``new`` call its parent links lead
   back to). So the call keeps the conversation's opening (system + first user message, give
   or take the role header the template puts after it) and changes later history: truncation,
   summarising, a rollback. ``offset = L`` and the windows as for drift (``expected`` from
   the earlier call's ids). A fresh conversation that shares only a system prompt with an
   earlier one stays ``new``.
5. **new**: otherwise.

Calls with the same prompt (``P_i == P_j``) are never each other's parent: they are siblings
(retries, samples of one prompt) and get the first one's record (parent, relation, offsets),
even when calls came in between: an attempt that timed out on the client and reached the
store after its retry and the calls after that is a retry, not an edit of the last call.

**Retries**: call j is a retry of the latest earlier call i whose request digest (the request
as sent minus what the policy injected, `calls.request_digest`) equals j's, when both have the
same parent (or either has no prompt ids, so no parent can be known: a failed attempt usually
has none). ``retry_of = i``. A *retry group* is a chain of such links.

**Orphans**: in a retry group, a call is *continued* when some later call names it as parent
(any relation). If any member is continued, the members that are not are orphans; if none is,
all but the last member that sampled something (else the last member) are orphans: the agent
retried, and nothing went on from them.

Calls without prompt ids get ``relation = None`` (nothing can be said from ids), and still
take part in retries.

Cost: ids are compared as packed int32 with C-level ``bytes.startswith`` (memcmp, no Python
list per token); a common prefix is found by galloping bisection over such compares. Every
call of a conversation starts with the first ``R - min(edit_slack, R // 4)`` tokens of its
opening, so candidate parents are looked up by a digest of that head (blake2b of the prompt,
updated incrementally, one lookup per distinct head length) instead of scanning every earlier
call. A 50-turn session growing to 20k tokens resolves in a few milliseconds; 1,000 unrelated
calls sharing a system prompt in under 0.1 s.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

from pydantic import BaseModel

from litellm_rllm.trace import Trace, unpack_ids
from litellm_rllm.training.calls import Call, CallChoice, Order, SessionGrouper

Relation = Literal["new", "extends", "drift", "edited"]
RELATIONS: tuple[str, ...] = ("new", "extends", "drift", "edited")


class Lineage(BaseModel):
    """The lineage record of one call (the `lineage` object of a trace's JSON)."""

    parent: Optional[str] = None  # trace id of the parent call
    relation: Optional[Relation] = None  # None: the call has no prompt token ids
    choice: Optional[int] = None  # which choice of the parent this call continues (extends/drift)
    offset: Optional[int] = None  # drift/edited: index into this prompt of the first differing token
    window_start: Optional[int] = None  # where `expected` and `actual` start (an index into this prompt)
    expected: Optional[list[int]] = None  # the parent's ids around `offset`
    actual: Optional[list[int]] = None  # this prompt's ids around `offset`
    retry_of: Optional[str] = None  # trace id of the earlier attempt of the same request
    orphan: bool = False  # a completion nothing continued because the agent retried

    def to_dict(self) -> dict:
        """Compact JSON form: `parent`, `relation`, `orphan` always; the rest where set."""
        out = self.model_dump(exclude_none=True)
        out.setdefault("parent", None)
        out.setdefault("relation", None)
        return out


@dataclass(frozen=True)
class LineageConfig:
    """Tunables of the rules in the module docstring."""

    window: int = 4  # ids shown on each side of a drift / edit offset
    edit_slack: int = 8  # tokens an edited prompt may lack of the conversation's opening


def common_prefix(a: bytes, b: bytes, a_start: int = 0, b_start: int = 0) -> int:
    """Number of equal leading int32 tokens of ``a[a_start:]`` and ``b[b_start:]`` (byte
    offsets). Bisection over memcmp (`bytes.startswith` on a memoryview): no copies."""
    n = min(len(a) - a_start, len(b) - b_start) // 4
    if n <= 0:
        return 0
    view = memoryview(b)
    if a.startswith(view[b_start : b_start + 4 * n], a_start):
        return n
    lo, hi = 0, n  # a prefix of lo tokens matches, one of hi tokens does not
    step = 64
    # gallop first: differences are usually near the start of the region compared
    while step < hi and a.startswith(view[b_start : b_start + 4 * step], a_start):
        lo, step = step, step * 4
    hi = min(hi, step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a.startswith(view[b_start : b_start + 4 * mid], a_start):
            lo = mid
        else:
            hi = mid
    return lo


def _window(prompt: bytes, completion: Optional[bytes], start: int, end: int) -> list[int]:
    """Tokens [start, end) of ``prompt + completion`` without building the concatenation."""
    plen = len(prompt) // 4
    out: list[int] = []
    if start < plen:
        out.extend(unpack_ids(prompt[4 * start : 4 * min(end, plen)]) or [])
    if completion is not None and end > plen:
        lo, hi = max(start, plen) - plen, end - plen
        out.extend(unpack_ids(completion[4 * lo : 4 * hi]) or [])
    return out


def _digest(data: memoryview) -> bytes:
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(data)
    return hasher.digest()


def _sampled(call: Call) -> list[CallChoice]:
    return [c for c in call.choices if c.ids is not None and c.ids]


class SessionLineage:
    """Lineage of one session, built incrementally: `add` each call in session order; `add`
    returns its record from the calls before it (a writer can use it to find the parent at
    write time). Orphan marks need the whole session: they are set by `finish`, on the same
    record objects."""

    def __init__(self, config: LineageConfig = LineageConfig()) -> None:
        self.config = config
        self._calls: list[Call] = []
        self._records: dict[str, Lineage] = {}
        self._root_len: dict[str, int] = {}  # trace id -> length of its conversation's opening
        self._last_by_digest: dict[bytes, Call] = {}
        self._children: set[str] = set()  # trace ids some call names as parent
        self._extended: set[tuple[str, int]] = set()  # (trace id, choice) some call extends
        # Candidates by conversation opening: every call of a conversation starts with the
        # first `needed` tokens of its opening (`_needed`), so a call can only be a parent
        # (any relation) of prompts that start with those. needed -> digest of those tokens
        # -> calls in session order: one incremental hash of the prompt and a lookup per
        # distinct `needed`, instead of a scan of every earlier call.
        self._heads: dict[int, dict[bytes, list[Call]]] = {}
        self._lengths: list[int] = []  # the keys of _heads, ascending
        self._position: dict[str, int] = {}
        self._by_prompt: dict[bytes, str] = {}  # digest of a whole prompt -> the first call with it

    @property
    def records(self) -> dict[str, Lineage]:
        return self._records

    def add(self, call: Call) -> Lineage:
        record = Lineage()
        if call.prompt is not None:
            key = _digest(memoryview(call.prompt))
            sibling = self._by_prompt.get(key)
            if sibling is not None:  # same prompt: a sibling, whatever came in between
                record = self._records[sibling].model_copy(update={"retry_of": None, "orphan": False})
            else:
                self._by_prompt[key] = call.trace_id
                record = self._relate(call)
        if call.prompt is not None:
            parent_root = self._root_len.get(record.parent) if record.parent is not None else None
            self._root_len[call.trace_id] = parent_root if parent_root is not None else call.prompt_length
        earlier = self._last_by_digest.get(call.request_digest)
        if earlier is not None:
            known = self._records[earlier.trace_id]
            unknown = call.prompt is None or earlier.prompt is None
            if unknown or known.parent == record.parent:
                record.retry_of = earlier.trace_id
        self._last_by_digest[call.request_digest] = call
        if record.parent is not None:
            self._children.add(record.parent)
            if record.relation == "extends" and record.choice is not None:
                self._extended.add((record.parent, record.choice))
        self._records[call.trace_id] = record
        self._position[call.trace_id] = len(self._calls)
        self._calls.append(call)
        if call.prompt is not None and _sampled(call):
            needed = self._needed(self._root_len[call.trace_id])
            if needed not in self._heads:
                bisect.insort(self._lengths, needed)
                self._heads[needed] = {}
            head = _digest(memoryview(call.prompt)[: 4 * needed])
            self._heads[needed].setdefault(head, []).append(call)
        return record

    def _needed(self, opening: int) -> int:
        """Tokens of a conversation's opening a prompt must keep to be related to it."""
        return max(1, opening - min(self.config.edit_slack, opening // 4))

    def _candidates(self, prompt: bytes) -> list[Call]:
        """Earlier usable calls whose conversation's head this prompt starts with, in
        session order."""
        found: list[list[Call]] = []
        view = memoryview(prompt)
        hasher = hashlib.blake2b(digest_size=16)
        at = 0
        for needed in self._lengths:
            if 4 * needed > len(prompt):
                break
            hasher.update(view[4 * at : 4 * needed])
            at = needed
            calls = self._heads[needed].get(hasher.copy().digest())
            if calls:
                found.append(calls)
        if len(found) == 1:
            return found[0]
        merged = [c for calls in found for c in calls]
        merged.sort(key=lambda c: self._position[c.trace_id])
        return merged

    def _relate(self, call: Call) -> Lineage:
        prompt = call.prompt
        assert prompt is not None
        candidates = self._candidates(prompt)
        # B: usable earlier calls whose prompt is a proper prefix of this one
        prefixes = [c for c in candidates if len(c.prompt) < len(prompt) and prompt.startswith(c.prompt)]  # type: ignore[arg-type]
        if prefixes:
            longest = max(len(c.prompt) for c in prefixes)  # type: ignore[arg-type]
            best: Optional[tuple[int, int, Call, CallChoice]] = None
            for order, c in enumerate(prefixes):
                base = len(c.prompt)  # type: ignore[arg-type]
                for ch in _sampled(c):
                    end = base + len(ch.ids)  # type: ignore[arg-type]
                    if end > longest and end <= len(prompt) and prompt.startswith(ch.ids, base):  # type: ignore[arg-type]
                        # longest S, then latest call (later in `prefixes`), then lowest choice
                        if best is None or (end, order) > (best[0], best[1]):
                            best = (end, order, c, ch)
            if best is not None:
                return Lineage(parent=best[2].trace_id, relation="extends", choice=best[3].index)
            drift = self._drift(call, [c for c in prefixes if len(c.prompt) == longest])  # type: ignore[arg-type]
            if drift is not None:
                return drift
        return self._edited(call, candidates)

    def _drift(self, call: Call, candidates: list[Call]) -> Optional[Lineage]:
        prompt = call.prompt
        assert prompt is not None
        best: Optional[tuple[int, int, Call, CallChoice]] = None
        for order, c in enumerate(candidates):
            base = len(c.prompt)  # type: ignore[arg-type]
            for ch in _sampled(c):
                if (c.trace_id, ch.index) in self._extended:
                    continue
                agree = common_prefix(prompt, ch.ids, base, 0)  # type: ignore[arg-type]
                if best is None or (agree, order) > (best[0], best[1]):
                    best = (agree, order, c, ch)
        if best is None:
            return None
        agree, _, parent, choice = best
        offset = parent.prompt_length + agree
        w = self.config.window
        start = max(0, offset - w)
        return Lineage(
            parent=parent.trace_id,
            relation="drift",
            choice=choice.index,
            offset=offset,
            window_start=start,
            expected=_window(parent.prompt, choice.ids, start, offset + w),  # type: ignore[arg-type]
            actual=_window(prompt, None, start, min(offset + w, call.prompt_length)),
        )

    def _edited(self, call: Call, candidates: list[Call]) -> Lineage:
        """Candidates share their conversation's head with this prompt (rule 4's threshold;
        checked again here, exactly), so what remains is the longest shared prefix."""
        prompt = call.prompt
        assert prompt is not None
        best: Optional[tuple[int, int, Call, Optional[CallChoice]]] = None
        for order, c in enumerate(candidates):
            if c.prompt == prompt:
                continue
            shared = common_prefix(prompt, c.prompt)  # type: ignore[arg-type]
            choice = None
            if shared == c.prompt_length:  # all of c's prompt is kept (c's choices were continued before)
                agree, choice = max(((common_prefix(prompt, ch.ids, len(c.prompt), 0), ch)  # type: ignore[arg-type]
                                     for ch in _sampled(c)), key=lambda x: x[0])
                shared += agree
            needed = self._needed(self._root_len[c.trace_id])
            if shared >= needed and (best is None or (shared, order) > (best[0], best[1])):
                best = (shared, order, c, choice)
        if best is None:
            return Lineage(relation="new")
        offset, _, parent, choice = best
        w = self.config.window
        start = max(0, offset - w)
        return Lineage(
            parent=parent.trace_id,
            relation="edited",
            offset=offset,
            window_start=start,
            expected=_window(parent.prompt, choice.ids if choice else None, start, offset + w),  # type: ignore[arg-type]
            actual=_window(prompt, None, start, min(offset + w, call.prompt_length)),
        )

    def finish(self) -> dict[str, Lineage]:
        """Mark orphans (rules in the module docstring); returns trace id -> record."""
        groups: dict[str, list[Call]] = {}  # first attempt's trace id -> attempts in order
        head: dict[str, str] = {}
        for call in self._calls:
            retry_of = self._records[call.trace_id].retry_of
            first = head.get(retry_of, retry_of) if retry_of is not None else call.trace_id
            head[call.trace_id] = first
            groups.setdefault(first, []).append(call)
        for attempts in groups.values():
            if len(attempts) < 2:
                continue
            continued = [c for c in attempts if c.trace_id in self._children]
            if continued:
                keep = {c.trace_id for c in continued}
            else:
                sampled = [c for c in attempts if _sampled(c)]
                keep = {(sampled or attempts)[-1].trace_id}
            for c in attempts:
                self._records[c.trace_id].orphan = c.trace_id not in keep
        return self._records


def resolve(calls: Iterable[Call], config: LineageConfig = LineageConfig()) -> dict[str, Lineage]:
    """Lineage of one session's calls, given in session order: trace id -> record."""
    session = SessionLineage(config)
    for call in calls:
        session.add(call)
    return session.finish()


def lineage_map(
    traces: Iterable[Trace], order: Order = "global", config: LineageConfig = LineageConfig()
) -> dict[str, Lineage]:
    """trace id -> lineage record for every trace given (grouped by session key; see
    `calls.SessionGrouper` for `order`). What a read-back attaches as each trace's `lineage`."""
    out: dict[str, Lineage] = {}
    for _, calls in SessionGrouper(traces, order):
        out.update(resolve(calls, config))
    return out


def attach_lineage(traces: list[Trace], config: LineageConfig = LineageConfig()) -> list[Trace]:
    """Set each trace's `lineage` (its JSON form) from the calls of its session among `traces`
    (read back together: a session, or a lookup with its nested sessions). Returns `traces`."""
    records = lineage_map(traces, "global", config)
    for trace in traces:
        record = records.get(trace.trace_id)
        trace.lineage = record.to_dict() if record is not None else None
    return traces


__all__ = [
    "attach_lineage",
    "Lineage",
    "LineageConfig",
    "RELATIONS",
    "Relation",
    "SessionLineage",
    "common_prefix",
    "lineage_map",
    "resolve",
]
