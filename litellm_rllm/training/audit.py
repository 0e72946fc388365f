"""The drift audit: per session and in total, how each call relates to the ones before it.

Counts of ``extends`` / ``drift`` / ``edited`` / ``new`` boundaries (drift and edits with
their offsets and the ids on both sides), retries, orphans, calls without prompt ids, and the
traces whose completeness check failed (ids, logprobs and usage disagree). `AuditReport` is
JSON-able (`to_dict`) and renders as text (`render_text`): what `litellm-rllm sessions check`
prints, with and without ``--json``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

from pydantic import BaseModel, Field

from litellm_rllm.trace import Trace
from litellm_rllm.training.calls import Call, Order, SessionGrouper
from litellm_rllm.training.lineage import RELATIONS, Lineage, LineageConfig, resolve


class Boundary(BaseModel):
    """A drift or an edit: where this call's prompt stops following its parent's ids."""

    trace_id: str
    parent: Optional[str]
    choice: Optional[int] = None
    offset: Optional[int]
    window_start: Optional[int]
    expected: list[int] = Field(default_factory=list)  # the parent's ids from window_start
    actual: list[int] = Field(default_factory=list)  # this prompt's ids from window_start


class Retry(BaseModel):
    trace_id: str
    retry_of: str


class Incomplete(BaseModel):
    trace_id: str
    problems: list[str]


def _zero_relations() -> dict[str, int]:
    return {r: 0 for r in RELATIONS}


class Counts(BaseModel):
    calls: int = 0
    relations: dict[str, int] = Field(default_factory=_zero_relations)  # new / extends / drift / edited
    without_ids: int = 0  # calls with no prompt ids: no relation
    retries: int = 0
    orphans: int = 0
    incomplete: int = 0  # traces whose completeness check failed

    def add(self, other: "Counts") -> None:
        self.calls += other.calls
        for key, value in other.relations.items():
            self.relations[key] = self.relations.get(key, 0) + value
        self.without_ids += other.without_ids
        self.retries += other.retries
        self.orphans += other.orphans
        self.incomplete += other.incomplete


class SessionAudit(BaseModel):
    session_id: str
    counts: Counts
    drifts: list[Boundary] = Field(default_factory=list)
    edits: list[Boundary] = Field(default_factory=list)
    retries: list[Retry] = Field(default_factory=list)
    orphans: list[str] = Field(default_factory=list)
    incomplete: list[Incomplete] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing a trainer must look at: no drift, no edit, no orphan, nothing incomplete."""
        c = self.counts
        return not (c.relations.get("drift") or c.relations.get("edited") or c.orphans or c.incomplete)


class AuditReport(BaseModel):
    sessions: list[SessionAudit] = Field(default_factory=list)
    total: Counts = Field(default_factory=Counts)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def render_text(self, detail: bool = True) -> str:
        return render_text(self, detail)


def audit_session(key: str, calls: list[Call], records: dict[str, Lineage]) -> SessionAudit:
    """The audit of one session's calls (in session order) and their lineage records."""
    counts = Counts(calls=len(calls))
    out = SessionAudit(session_id=key, counts=counts)
    for call in calls:
        record = records[call.trace_id]
        if record.relation is None:
            counts.without_ids += 1
        else:
            counts.relations[record.relation] += 1
        if record.relation in ("drift", "edited"):
            boundary = Boundary(
                trace_id=call.trace_id,
                parent=record.parent,
                choice=record.choice,
                offset=record.offset,
                window_start=record.window_start,
                expected=record.expected or [],
                actual=record.actual or [],
            )
            (out.drifts if record.relation == "drift" else out.edits).append(boundary)
        if record.retry_of is not None:
            counts.retries += 1
            out.retries.append(Retry(trace_id=call.trace_id, retry_of=record.retry_of))
        if record.orphan:
            counts.orphans += 1
            out.orphans.append(call.trace_id)
        if call.problems:
            counts.incomplete += 1
            out.incomplete.append(Incomplete(trace_id=call.trace_id, problems=list(call.problems)))
    return out


def iter_audit(
    traces: Iterable[Trace], order: Order = "global", config: LineageConfig = LineageConfig()
) -> Iterator[SessionAudit]:
    """One `SessionAudit` per session, as each session is complete (see `calls.SessionGrouper`)."""
    for key, calls in SessionGrouper(traces, order):
        yield audit_session(key, calls, resolve(calls, config))


def audit(traces: Iterable[Trace], order: Order = "global", config: LineageConfig = LineageConfig()) -> AuditReport:
    """The audit of every session of `traces`, and the totals."""
    report = AuditReport()
    for session in iter_audit(traces, order, config):
        report.sessions.append(session)
        report.total.add(session.counts)
    return report


def _counts_line(c: Counts) -> str:
    rel = c.relations
    parts = [f"{c.calls} calls", *(f"{rel.get(r, 0)} {r}" for r in ("extends", "drift", "edited", "new"))]
    if c.without_ids:
        parts.append(f"{c.without_ids} without ids")
    parts += [f"{c.retries} retries", f"{c.orphans} orphans", f"{c.incomplete} incomplete"]
    return ", ".join(parts)


def render_text(report: AuditReport, detail: bool = True) -> str:
    """Human form: a line per session, then (with `detail`) its drifts, edits, retries,
    orphans and incomplete traces, indented; the totals last."""
    lines: list[str] = []
    for s in report.sessions:
        mark = "ok   " if s.clean else "CHECK"
        lines.append(f"{mark} session {s.session_id}: {_counts_line(s.counts)}")
        if not detail:
            continue
        for kind, boundaries in (("drift ", s.drifts), ("edited", s.edits)):
            for b in boundaries:
                choice = f" choice {b.choice}" if b.choice is not None else ""
                lines.append(
                    f"  {kind} {b.trace_id} <- {b.parent}{choice} at token {b.offset}: "
                    f"expected {b.expected} actual {b.actual} (from token {b.window_start})"
                )
        for r in s.retries:
            lines.append(f"  retry  {r.trace_id} retries {r.retry_of}")
        for trace_id in s.orphans:
            lines.append(f"  orphan {trace_id}")
        for inc in s.incomplete:
            lines.append(f"  incomplete {inc.trace_id}: {'; '.join(inc.problems)}")
    lines.append(f"total: {len(report.sessions)} sessions, {_counts_line(report.total)}")
    return "\n".join(lines) + "\n"


__all__ = [
    "AuditReport",
    "Boundary",
    "Counts",
    "Incomplete",
    "Retry",
    "SessionAudit",
    "audit",
    "audit_session",
    "iter_audit",
    "render_text",
]
