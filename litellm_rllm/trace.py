"""The trace schema: one record per client request, as the SPEC's table defines it.

This module is the ground floor: it imports nothing of ours and nothing of LiteLLM, so the
store, the CLI and trainers can use it without a proxy. Token ids and logprobs are lists in
the public (JSON) form and packed arrays on disk; `pack_*` / `unpack_*` convert between them.
"""

from __future__ import annotations

import sys
from array import array
from datetime import datetime, timezone
from typing import Any, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from . import sessions as _sessions

TraceStatus = Literal["ok", "error", "incomplete"]

_LITTLE = sys.byteorder == "little"


class TopLogprob(BaseModel):
    """One alternative at one completion position."""

    model_config = ConfigDict(extra="allow")

    token: Optional[str] = None
    logprob: float
    token_id: Optional[int] = None


class TopColumns:
    """Top logprobs of one choice as columns: every alternative's token and logprob in order,
    and how many alternatives each position has. The capture path builds these instead of one
    `TopLogprob` object per alternative (160,000 of them for 32k tokens x 5) and the store
    writes them as they are; `TopLogprob` objects exist only where a reader asks for them."""

    __slots__ = ("tokens", "logprobs", "counts")

    def __init__(self, tokens: list[Optional[str]], logprobs: Sequence[float], counts: Sequence[int]) -> None:
        self.tokens = tokens
        self.logprobs = logprobs
        self.counts = counts

    def positions(self) -> list[list[TopLogprob]]:
        make = TopLogprob.model_construct
        lps = self.logprobs.tolist() if isinstance(self.logprobs, array) else list(self.logprobs)
        out, at = [], 0
        for count in self.counts:
            out.append([make(token=self.tokens[k], logprob=lps[k]) for k in range(at, at + count)])
            at += count
        return out


class Completeness(BaseModel):
    """Per-choice consistency check between ids, logprobs and usage (vllm#27482 style gaps)."""

    token_ids: Optional[int] = None
    logprobs: Optional[int] = None
    usage_completion_tokens: Optional[int] = None
    ok: bool = True
    problems: list[str] = Field(default_factory=list)


class TraceChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    message: Optional[dict[str, Any]] = None
    text: Optional[str] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[Any] = None
    token_ids: Optional[list[int]] = None
    prompt_token_ids: Optional[list[int]] = None
    logprobs: Optional[list[float]] = None
    tokens: Optional[list[str]] = None
    top_logprobs: Optional[list[list[TopLogprob]]] = None
    completeness: Optional[Completeness] = None
    _top_columns: Optional[TopColumns] = PrivateAttr(default=None)

    # The private attribute is read and set through `__pydantic_private__`: `self._top_columns`
    # goes through pydantic's Python `__getattr__` / `__setattr__` (~2.4 us each, per trace).
    def set_top_columns(self, columns: Optional[TopColumns]) -> None:
        """Keep top logprobs as columns (write path); `top_logprobs` stays unset."""
        private = self.__pydantic_private__
        if private is None:
            self._top_columns = columns
        else:
            private["_top_columns"] = columns

    def _columns(self) -> Optional[TopColumns]:
        return (self.__pydantic_private__ or {}).get("_top_columns")

    def top_columns(self) -> Optional[TopColumns]:
        """The top logprobs as columns, whichever form this choice holds them in."""
        columns = self._columns()
        if columns is not None:
            return columns
        if self.top_logprobs is None:
            return None
        tokens, lps, counts = [], [], []
        for pos in self.top_logprobs:
            counts.append(len(pos))
            for alt in pos:
                tokens.append(alt.token)
                lps.append(alt.logprob)
        return TopColumns(tokens, lps, counts)

    def materialize(self) -> "TraceChoice":
        """Turn columns into `top_logprobs` objects (for JSON output of a freshly built trace)."""
        columns = self._columns()
        if columns is not None and self.top_logprobs is None:
            self.top_logprobs = columns.positions()
        return self


class TraceError(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Optional[str] = None
    message: str = ""
    status_code: Optional[int] = None


class PolicyVersion(BaseModel):
    """The model group's announced weights version when the call was sent upstream (`start`)
    and when it finished (`end`); a call that straddles a weight update has start < end.
    Versions are integers (`POST /rllm/policy-version`); None where none was announced."""

    start: Optional[int] = None
    end: Optional[int] = None


class Trace(BaseModel):
    """One captured LLM call. Field names are public interface (SPEC: "The trace")."""

    model_config = ConfigDict(extra="allow")

    trace_id: str
    session_id: Optional[str] = None
    session_uids: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    seq: Optional[int] = None
    # The trace's place in call order (set on read): its session-order key, the call's start in
    # microseconds since the epoch, raised past any call it extends (docs/sessions-order.md).
    # `seq` ranks a trace within its own session key; a lookup that merges several (an outer
    # uid, a session name) comes back sorted by (order, trace_id), and `order` says so.
    order: Optional[int] = None
    route: Optional[str] = None
    model: Optional[str] = None
    provider: Optional[str] = None
    deployment_model: Optional[str] = None
    api_base: Optional[str] = None
    request: dict[str, Any] = Field(default_factory=dict)
    injected: dict[str, Any] = Field(default_factory=dict)
    prompt_token_ids: Optional[list[int]] = None
    choices: list[TraceChoice] = Field(default_factory=list)
    usage: Optional[dict[str, Any]] = None
    # usage.prompt_tokens_details.cached_tokens: prompt tokens the upstream served from its
    # prefix cache (None where it does not say); summed per session in the read-back.
    cached_tokens: Optional[int] = None
    cost_usd: Optional[float] = None
    stream: bool = False
    latency_ms: Optional[float] = None
    ttft_ms: Optional[float] = None
    status: TraceStatus = "ok"
    error: Optional[TraceError] = None
    caller: Optional[dict[str, Any]] = None
    policy_version: Optional[PolicyVersion] = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    # How this call relates to the session's earlier calls (`training.lineage`): computed when
    # a session is read back (over what a writer may have stored: it depends on the calls
    # around it, which a reader sees whole).
    lineage: Optional[dict[str, Any]] = None

    def session_key(self) -> str:
        """The key `seq` counts within (`sessions.session_key`): the session id, else the
        innermost uid, else the session name, else ''; in the caller's team's namespace."""
        return _sessions.session_key(self.session_id, self.session_uids, _sessions.name_of(self.metadata),
                                     _sessions.team_of(self.caller))

    def lookup_keys(self) -> tuple[str, ...]:
        """Every key the trace is found under (`sessions.lookup_keys`)."""
        return _sessions.lookup_keys(self.session_id, self.session_uids, _sessions.name_of(self.metadata),
                                     _sessions.team_of(self.caller))


def session_key_of(session_id: Optional[str], session_uids: Sequence[str], session_name: Optional[str] = None,
                   team: Optional[str] = None) -> str:
    """`Trace.session_key` from its fields (for rows read back without a Trace)."""
    return _sessions.session_key(session_id, session_uids, session_name, team)


# ---------------------------------------------------------------------------------------
# Packing. Token ids are int32 and logprobs float32, both little-endian: 8 bytes per
# completion token. vLLM computes logprobs in float32, so float32 storage loses nothing
# the server had.
# ---------------------------------------------------------------------------------------


def pack_ids(ids: Optional[Sequence[int]]) -> Optional[bytes]:
    if ids is None:
        return None
    packed = ids if isinstance(ids, array) and ids.typecode == "i" else array("i", ids)
    if not _LITTLE:
        packed = array("i", packed)
        packed.byteswap()
    return packed.tobytes()


def unpack_ids(blob: Optional[bytes]) -> Optional[list[int]]:
    if blob is None:
        return None
    out = array("i")
    out.frombytes(blob)
    if not _LITTLE:
        out.byteswap()
    return out.tolist()


def pack_floats(values: Optional[Sequence[float]]) -> Optional[bytes]:
    if values is None:
        return None
    packed = array("f", values)
    if not _LITTLE:
        packed.byteswap()
    return packed.tobytes()


def unpack_floats(blob: Optional[bytes]) -> Optional[list[float]]:
    if blob is None:
        return None
    out = array("f")
    out.frombytes(blob)
    if not _LITTLE:
        out.byteswap()
    return out.tolist()


__all__ = [
    "Completeness",
    "PolicyVersion",
    "TopColumns",
    "TopLogprob",
    "Trace",
    "TraceChoice",
    "TraceError",
    "TraceStatus",
    "pack_floats",
    "session_key_of",
    "pack_ids",
    "unpack_floats",
    "unpack_ids",
]
