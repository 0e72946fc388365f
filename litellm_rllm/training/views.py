"""Trajectory views: a session's calls and their lineage -> training rows.

* ``per-call``: one row per (call, choice with sampled ids): the prompt, the response and its
  logprobs, a response mask of ones.
* ``merged``: one row per maximal chain of ``extends`` links, one per leaf where the chain
  branches (n > 1, retries, tree search). The chain's last call's prompt + completion is
  ``input_ids``; every call of the chain sampled a ``[start, end)`` span of it, and
  ``loss_mask`` is 1 exactly on those spans. A ``drift`` or ``edited`` link is never merged
  across: the call after it starts a chain of its own.

Rows hold plain lists (``to_dict()`` is JSON-ready). Where a call's logprobs are missing or do
not match its ids one for one, the row's logprobs are None rather than wrong (rllm#816).
Orphans (see `lineage`) are left out unless ``include_orphans``; `Trajectories` counts them.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any, Iterable, Iterator, Literal, Optional, Union

from pydantic import BaseModel

from litellm_rllm.trace import Trace
from litellm_rllm.training.calls import Call, Order, SessionGrouper
from litellm_rllm.training.lineage import Lineage, LineageConfig, resolve

View = Literal["merged", "per-call"]
VIEWS: tuple[str, ...] = ("merged", "per-call")

_STATUS_RANK = {"ok": 0, "incomplete": 1, "error": 2}


class PerCallRow(BaseModel):
    """One sampled choice of one call."""

    trace_id: str
    session_id: Optional[str]  # the session key (session id, else the innermost uid)
    seq: Optional[int]
    choice: int
    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: Optional[list[float]]  # float32 values; None where not captured
    response_mask: list[int]  # ones, one per response id
    status: str
    finish_reason: Optional[str]
    relation: Optional[str]  # lineage relation of the call
    parent: Optional[str]
    orphan: bool
    metadata: dict[str, Any]
    reward: Optional[float] = None
    rewards: Optional[dict[str, float]] = None
    policy_version: Optional[dict[str, Optional[int]]] = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class MergedRow(BaseModel):
    """One chain of ``extends`` links, root to leaf."""

    session_id: Optional[str]
    trace_ids: list[str]  # the chain's calls, in order
    choices: list[int]  # which choice of each call the chain follows
    spans: list[list[int]]  # [start, end) of each call's sampled ids in input_ids
    input_ids: list[int]  # the last call's prompt + completion
    loss_mask: list[int]  # 1 exactly on sampled tokens
    logprobs: Optional[list[float]]  # sampled logprob where loss_mask is 1, else 0.0; None where not captured
    status: str  # the worst status of the chain: error > incomplete > ok
    root_relation: Optional[str]  # how the chain's first call relates to what came before
    orphan: bool  # only with include_orphans: the leaf is an orphan
    metadata: dict[str, Any]  # the last call's
    reward: Optional[float] = None  # the last one set along the chain
    rewards: Optional[dict[str, float]] = None
    policy_versions: list[Optional[dict[str, Optional[int]]]] = []  # one per call
    policy_version: Optional[dict[str, Optional[int]]] = None  # min start, max end over the chain

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


Row = Union[PerCallRow, MergedRow]


# Rows are first built "packed": a dict of column values where token ids, masks and logprobs
# are native `array`s, put together with C-level slice assignment (no Python object per
# token). The export writes those arrays to Arrow buffers directly; the public rows turn them
# into lists (`_unpacked`).

_LITTLE = sys.byteorder == "little"


def _ids(packed: bytes) -> array:
    """int32 little-endian bytes (the calls' form) -> a native int array."""
    out = array("i")
    out.frombytes(packed)
    if not _LITTLE:
        out.byteswap()
    return out


def _ones(n: int) -> array:
    return array("i", [1]) * n


def per_call_packed(
    calls: list[Call], records: dict[str, Lineage], include_orphans: bool, counts: "Counts"
) -> Iterator[dict[str, Any]]:
    """Packed rows of one session (calls in session order)."""
    for call in calls:
        record = records[call.trace_id]
        if record.orphan and not include_orphans:
            counts.skipped_orphans += 1
            continue
        sampled = [c for c in call.choices if c.ids is not None]
        if call.prompt is None or not sampled:
            counts.skipped_without_ids += 1
            continue
        prompt_ids = _ids(call.prompt)
        for choice in sampled:
            yield {
                "trace_id": call.trace_id,
                "session_id": call.session_key,
                "seq": call.seq,
                "choice": choice.index,
                "prompt_ids": prompt_ids,
                "response_ids": _ids(choice.ids),  # type: ignore[arg-type]
                "response_logprobs": choice.logprobs,
                "response_mask": _ones(choice.length),
                "status": call.status,
                "finish_reason": choice.finish_reason,
                "relation": record.relation,
                "parent": record.parent,
                "orphan": record.orphan,
                "metadata": call.metadata,
                "reward": call.reward,
                "rewards": call.rewards,
                "policy_version": call.policy_version,
            }


def merged_packed(
    calls: list[Call], records: dict[str, Lineage], include_orphans: bool, counts: "Counts"
) -> Iterator[dict[str, Any]]:
    """Packed rows of one session: one per leaf of the forest of ``extends`` links.

    Nodes are (call, choice) pairs with prompt ids and sampled ids, minus orphans unless
    included. A call that ``extends`` (p, k) makes each of its nodes a child of node (p, k); a
    node without children is a leaf, and its row is the path from its chain's root. A parent is
    never an orphan (it was continued), so every path stays inside the node set."""
    by_id = {c.trace_id: c for c in calls}
    has_children: set[tuple[str, int]] = set()
    nodes: list[tuple[Call, int]] = []
    for call in calls:
        record = records[call.trace_id]
        if record.orphan and not include_orphans:
            counts.skipped_orphans += 1
            continue
        sampled = [c for c in call.choices if c.ids is not None]
        if call.prompt is None or not sampled:
            counts.skipped_without_ids += 1
            continue
        nodes.extend((call, c.index) for c in sampled)
        if record.relation == "extends" and record.parent is not None and record.choice is not None:
            has_children.add((record.parent, record.choice))
    for call, index in nodes:
        if (call.trace_id, index) in has_children:
            continue
        path = [(call, index)]
        record = records[call.trace_id]
        while record.relation == "extends" and record.parent in by_id and record.choice is not None:
            parent = by_id[record.parent]
            path.append((parent, record.choice))
            record = records[parent.trace_id]
        path.reverse()
        yield _merge(path, records)


def _merge(path: list[tuple[Call, int]], records: dict[str, Lineage]) -> dict[str, Any]:
    leaf, leaf_choice = path[-1]
    last = leaf.choice(leaf_choice)
    assert leaf.prompt is not None and last is not None and last.ids is not None
    input_ids = _ids(leaf.prompt + last.ids)
    n = len(input_ids)
    mask = array("i", bytes(4 * n))
    logprobs: Optional[array] = array("f", bytes(4 * n))
    spans: list[list[int]] = []
    status, reward, rewards = "ok", None, None
    versions: list[Optional[dict[str, Optional[int]]]] = []
    for call, index in path:
        choice = call.choice(index)
        assert choice is not None and choice.ids is not None
        start = call.prompt_length
        end = start + choice.length
        spans.append([start, end])
        mask[start:end] = _ones(end - start)
        if logprobs is not None:
            if choice.logprobs is None:
                logprobs = None
            else:
                logprobs[start:end] = choice.logprobs
        if _STATUS_RANK.get(call.status, 2) > _STATUS_RANK.get(status, 2):
            status = call.status
        if call.reward is not None:
            reward = call.reward
        if call.rewards is not None:
            rewards = call.rewards
        versions.append(call.policy_version)
    known = [v for v in versions if v is not None]
    starts = [v["start"] for v in known if v.get("start") is not None]
    ends = [v["end"] for v in known if v.get("end") is not None]
    span_version = {"start": min(starts) if starts else None, "end": max(ends) if ends else None} if known else None
    return {
        "session_id": leaf.session_key,
        "trace_ids": [c.trace_id for c, _ in path],
        "choices": [i for _, i in path],
        "spans": spans,
        "input_ids": input_ids,
        "loss_mask": mask,
        "logprobs": logprobs,
        "status": status,
        "root_relation": records[path[0][0].trace_id].relation,
        "orphan": records[leaf.trace_id].orphan,
        "metadata": leaf.metadata,
        "reward": reward,
        "rewards": rewards,
        "policy_versions": versions,
        "policy_version": span_version,
    }


def _unpacked(packed: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, array) else v) for k, v in packed.items()}


def per_call_rows(calls: list[Call], records: dict[str, Lineage], include_orphans: bool, counts: "Counts") -> Iterator[PerCallRow]:
    """Rows of one session (calls in session order)."""
    for packed in per_call_packed(calls, records, include_orphans, counts):
        yield PerCallRow.model_construct(**_unpacked(packed))


def merged_rows(calls: list[Call], records: dict[str, Lineage], include_orphans: bool, counts: "Counts") -> Iterator[MergedRow]:
    """Rows of one session: see `merged_packed`."""
    for packed in merged_packed(calls, records, include_orphans, counts):
        yield MergedRow.model_construct(**_unpacked(packed))


class Counts:
    """What a views pass left out and read."""

    __slots__ = ("skipped_orphans", "skipped_without_ids", "sessions", "rows")

    def __init__(self) -> None:
        self.skipped_orphans = 0  # orphan calls left out
        self.skipped_without_ids = 0  # calls with no prompt ids or no sampled ids
        self.sessions = 0
        self.rows = 0


class Trajectories(Iterator[Row]):
    """An iterator of rows of one view over traces, session by session, with counters
    (`skipped_orphans`, `skipped_without_ids`, `sessions`, `rows`, `traces_read`) that are
    final once it is exhausted. Memory: the sessions held by the grouping (see
    `calls.SessionGrouper`) plus the rows of one session."""

    def __init__(
        self,
        traces: Iterable[Trace],
        view: View = "merged",
        include_orphans: bool = False,
        order: Order = "global",
        config: LineageConfig = LineageConfig(),
    ) -> None:
        if view not in VIEWS:
            raise ValueError(f"view: must be one of {', '.join(VIEWS)}, not {view!r}")
        self.view: View = view
        self.include_orphans = include_orphans
        self._counts = Counts()
        self._grouper = SessionGrouper(traces, order)
        self._config = config
        self._packed = self._generate()
        self._model = MergedRow if view == "merged" else PerCallRow

    def _generate(self) -> Iterator[dict[str, Any]]:
        rows_of = merged_packed if self.view == "merged" else per_call_packed
        for _, calls in self._grouper:
            self._counts.sessions += 1
            records = resolve(calls, self._config)
            for row in rows_of(calls, records, self.include_orphans, self._counts):
                self._counts.rows += 1
                yield row

    def packed(self) -> Iterator[dict[str, Any]]:
        """The remaining rows as packed dicts (column name -> value; ids, masks and logprobs
        as native `array`s): what the export writes, without a Python object per token.
        Shares this iterator's position and counters."""
        return self._packed

    def __iter__(self) -> "Trajectories":
        return self

    def __next__(self) -> Row:
        return self._model.model_construct(**_unpacked(next(self._packed)))

    @property
    def skipped_orphans(self) -> int:
        return self._counts.skipped_orphans

    @property
    def skipped_without_ids(self) -> int:
        return self._counts.skipped_without_ids

    @property
    def sessions(self) -> int:
        return self._counts.sessions

    @property
    def rows(self) -> int:
        return self._counts.rows

    @property
    def traces_read(self) -> int:
        return self._grouper.traces_read


def trajectories(
    traces: Iterable[Trace],
    view: View = "merged",
    include_orphans: bool = False,
    order: Order = "global",
    config: LineageConfig = LineageConfig(),
) -> Trajectories:
    """Rows of `view` ("merged" or "per-call") for the given traces, grouped by session key.

    `order="session"` when the input holds each session's traces together (memory: one
    session); `"global"` for any order (memory: every session of the input). Orphans are left
    out unless `include_orphans`; the returned iterator counts them (`skipped_orphans`)."""
    return Trajectories(traces, view=view, include_orphans=include_orphans, order=order, config=config)


__all__ = [
    "MergedRow",
    "PerCallRow",
    "Row",
    "Trajectories",
    "VIEWS",
    "View",
    "merged_packed",
    "merged_rows",
    "per_call_packed",
    "per_call_rows",
    "trajectories",
]
