"""Traces -> compact calls, grouped by session.

A `Call` is what lineage and the views need of a `Trace`, and nothing else: token ids packed
as int32 bytes (4 bytes a token, compared with C-level `bytes.startswith` instead of Python
list slicing), logprobs as float32 arrays, a digest of the request for retry detection:
4 bytes a token instead of ~36 in a list of Python ints. The `Trace` (messages, top
logprobs) is dropped as soon as its call is built.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Iterator, Literal, Optional

from litellm_rllm.trace import Trace, pack_ids

Order = Literal["global", "session"]
ORDERS: tuple[str, ...] = ("global", "session")


@dataclass(slots=True)
class CallChoice:
    """One choice of a call: its sampled ids (packed) and their logprobs, if usable."""

    index: int
    ids: Optional[bytes]  # int32 little-endian; None where the backend gave no ids
    logprobs: Optional[array]  # float32, one per id; None where missing or misaligned
    finish_reason: Optional[str] = None

    @property
    def length(self) -> int:
        return len(self.ids) // 4 if self.ids is not None else 0


@dataclass(slots=True)
class Call:
    """The part of one trace that lineage, views and the audit read."""

    trace_id: str
    session_key: str
    session_id: Optional[str]
    seq: Optional[int]
    created_at: datetime
    arrival: int  # position in the input: the last tie-breaker of the session order
    prompt: Optional[bytes]  # int32 little-endian; None where the backend gave no ids
    choices: list[CallChoice]
    request_digest: bytes
    status: str
    metadata: dict[str, Any]
    problems: list[str] = field(default_factory=list)  # failed completeness checks
    reward: Any = None
    rewards: Optional[dict[str, float]] = None
    policy_version: Optional[dict[str, Optional[int]]] = None

    @property
    def prompt_length(self) -> int:
        return len(self.prompt) // 4 if self.prompt is not None else 0

    @property
    def complete(self) -> bool:
        return not self.problems

    def choice(self, index: int) -> Optional[CallChoice]:
        for choice in self.choices:
            if choice.index == index:
                return choice
        return None


def request_digest(trace: Trace) -> bytes:
    """A digest of what the client asked: `trace.request` minus the parameters the plugin's
    policy injected (`trace.injected`). Two attempts of one request compare equal even when a
    sample rate gave one of them logprobs and not the other."""
    injected = set(trace.injected or ())
    asked = {k: v for k, v in (trace.request or {}).items() if k not in injected}
    text = json.dumps(asked, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _pack(ids: Optional[list[int]], trace_id: str, what: str) -> Optional[bytes]:
    if ids is None:
        return None
    try:
        return pack_ids(ids)
    except (OverflowError, TypeError) as exc:
        raise ValueError(f"trace {trace_id}: {what}: not int32 token ids ({exc})") from None


def _logprobs(values: Optional[list[float]], length: int) -> Optional[array]:
    """float32 logprobs, or None when absent or not one per sampled id (a row never carries
    misaligned logprobs: rllm#816)."""
    if values is None or len(values) != length:
        return None
    try:
        return array("f", values)
    except TypeError:
        return None


def _optional_attr(trace: Trace, name: str) -> Any:
    """A field another issue adds to the trace (reward, policy_version): the attribute where the
    schema has it, else an extra field, else None."""
    if name in type(trace).model_fields:
        return getattr(trace, name)
    extra = trace.model_extra
    return extra.get(name) if extra else None


def _policy_version(value: Any, trace_id: str) -> Optional[dict[str, Optional[int]]]:
    if value is None:
        return None
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        start, end = value.get("start"), value.get("end")
    else:
        start = end = value
    try:
        return {"start": None if start is None else int(start), "end": None if end is None else int(end)}
    except (TypeError, ValueError):
        raise ValueError(f"trace {trace_id}: policy_version: not an integer version: {value!r}") from None


def _reward(value: Any, trace_id: str) -> tuple[Optional[float], Optional[dict[str, float]]]:
    """A number -> (reward, None); a dict of named numbers -> (None, rewards)."""
    if value is None:
        return None, None
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    try:
        if isinstance(value, dict):
            return None, {str(k): float(v) for k, v in value.items()}
        return float(value), None
    except (TypeError, ValueError):
        raise ValueError(f"trace {trace_id}: reward: not a number or a dict of numbers: {value!r}") from None


def call_of(trace: Trace, arrival: int = 0) -> Call:
    """The compact call of one trace. Prompt ids: the trace's, else the first choice's."""
    prompt_ids = trace.prompt_token_ids
    if prompt_ids is None:
        prompt_ids = next((c.prompt_token_ids for c in trace.choices if c.prompt_token_ids), None)
    choices: list[CallChoice] = []
    problems: list[str] = []
    for choice in trace.choices:
        ids = _pack(choice.token_ids, trace.trace_id, f"choices[{choice.index}].token_ids")
        length = len(ids) // 4 if ids is not None else 0
        choices.append(
            CallChoice(
                index=choice.index,
                ids=ids,
                logprobs=_logprobs(choice.logprobs, length) if ids is not None else None,
                finish_reason=choice.finish_reason,
            )
        )
        if choice.completeness is not None and not choice.completeness.ok:
            problems.extend(f"choice {choice.index}: {p}" for p in (choice.completeness.problems or ["check failed"]))
    reward, rewards = _reward(_optional_attr(trace, "reward"), trace.trace_id)
    return Call(
        trace_id=trace.trace_id,
        session_key=trace.session_key(),
        session_id=trace.session_id,
        seq=trace.seq,
        created_at=trace.created_at,
        arrival=arrival,
        prompt=_pack(prompt_ids, trace.trace_id, "prompt_token_ids"),
        choices=choices,
        request_digest=request_digest(trace),
        status=trace.status,
        metadata=dict(trace.metadata or {}),
        problems=problems,
        reward=reward,
        rewards=rewards,
        policy_version=_policy_version(_optional_attr(trace, "policy_version"), trace.trace_id),
    )


def session_order(calls: list[Call]) -> list[Call]:
    """A session's calls in call order: by `seq` where every call has one (the store's order),
    else by `created_at`; ties keep input order."""
    if all(c.seq is not None for c in calls):
        return sorted(calls, key=lambda c: (c.seq, c.arrival))
    return sorted(calls, key=lambda c: (c.created_at, c.arrival))


class SessionGrouper:
    """Traces -> (session key, its calls in order), one session at a time.

    `order="session"`: the input holds each session's traces together (a store read of one
    session, or sorted by session then seq); a session is complete when the next one starts,
    so memory holds one session. A session that shows up again after another started is a
    ValueError: the input was not grouped, and splitting it would give wrong lineage.

    `order="global"` (any order, e.g. a store's global write order, where sessions that ran
    at the same time interleave): a session can't be known complete before the input ends, so
    every session of the input is held (compact: ~4 bytes a token) until then. To keep memory
    to the largest session on a store-wide read, read session by session (`order="session"`).

    `traces_read` counts the traces consumed so far (progress bars).
    """

    def __init__(self, traces: Iterable[Trace], order: Order = "global") -> None:
        if order not in ORDERS:
            raise ValueError(f"order: must be one of {', '.join(ORDERS)}, not {order!r}")
        self._traces = traces
        self._order = order
        self.traces_read = 0

    def __iter__(self) -> Iterator[tuple[str, list[Call]]]:
        if self._order == "session":
            return self._grouped()
        return self._global()

    def _grouped(self) -> Iterator[tuple[str, list[Call]]]:
        done: set[str] = set()
        key: Optional[str] = None
        calls: list[Call] = []
        for trace in self._traces:
            call = call_of(trace, self.traces_read)
            self.traces_read += 1
            if call.session_key != key:
                if key is not None:
                    done.add(key)
                    yield key, session_order(calls)
                if call.session_key in done:
                    raise ValueError(
                        f"order='session': session {call.session_key!r} appears again after other "
                        "sessions; the input is not grouped by session (use order='global')"
                    )
                key, calls = call.session_key, []
            calls.append(call)
        if key is not None:
            yield key, session_order(calls)

    def _global(self) -> Iterator[tuple[str, list[Call]]]:
        sessions: dict[str, list[Call]] = {}
        for trace in self._traces:
            call = call_of(trace, self.traces_read)
            self.traces_read += 1
            sessions.setdefault(call.session_key, []).append(call)
        while sessions:
            key = next(iter(sessions))
            yield key, session_order(sessions.pop(key))


__all__ = ["Call", "CallChoice", "ORDERS", "Order", "SessionGrouper", "call_of", "request_digest", "session_order"]
