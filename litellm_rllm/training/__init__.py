"""From traces to training data: lineage, drift audit, retries, trajectory views, export.

Works on `litellm_rllm.trace.Trace` objects from any source (a store read, JSON lines, a
test), and imports nothing of LiteLLM, of the callbacks or of the store::

    from litellm_rllm import store, training

    traces = store.open(url).iter_traces(session="episode-17")
    rows = training.trajectories(traces, view="merged")      # MergedRow, one per leaf
    for row in rows: ...
    rows.skipped_orphans                                      # retried completions left out

    training.export_trajectories(traces, "out.parquet", view="per-call", format="parquet")
    print(training.audit(traces).render_text())               # the drift audit
    training.lineage_map(traces)                              # trace id -> Lineage

`order="session"` tells the functions that each session's traces arrive together (memory:
one session); the default `"global"` accepts any order and holds every session of the input
until it ends. The rules are in `lineage`'s docstring and docs/training.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Iterable, Optional, Union

from litellm_rllm.trace import Trace
from litellm_rllm.training.audit import AuditReport, SessionAudit, audit, iter_audit, render_text
from litellm_rllm.training.calls import ORDERS, Order
from litellm_rllm.training.export import (
    FORMATS,
    ExportFormat,
    ExportProgress,
    ExportResult,
    ProgressCallback,
    export,
    parquet_schema,
    to_record,
    write_jsonl,
    write_parquet,
)
from litellm_rllm.training.lineage import Lineage, LineageConfig, SessionLineage, attach_lineage, lineage_map
from litellm_rllm.training.views import VIEWS, MergedRow, PerCallRow, Row, Trajectories, View, trajectories


def export_trajectories(
    traces: Iterable[Trace],
    out: Union[str, Path, IO[str]],
    *,
    view: View = "merged",
    format: ExportFormat = "parquet",  # noqa: A002 - the CLI's flag name
    include_orphans: bool = False,
    order: Order = "global",
    progress: Optional[ProgressCallback] = None,
    row_group_rows: int = 1024,
    row_group_tokens: int = 1_000_000,
) -> ExportResult:
    """Traces -> rows of `view` -> a Parquet or JSON-lines file, streamed. What
    `litellm-rllm export` and `store.open(url).export(...)` call."""
    if format not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}, not {format!r}")
    rows = trajectories(traces, view=view, include_orphans=include_orphans, order=order)
    return export(
        rows, out, format, progress=progress, row_group_rows=row_group_rows, row_group_tokens=row_group_tokens
    )


__all__ = [
    "attach_lineage",
    "AuditReport",
    "ExportFormat",
    "ExportProgress",
    "ExportResult",
    "FORMATS",
    "Lineage",
    "LineageConfig",
    "MergedRow",
    "ORDERS",
    "Order",
    "PerCallRow",
    "ProgressCallback",
    "Row",
    "SessionAudit",
    "SessionLineage",
    "Trajectories",
    "VIEWS",
    "View",
    "audit",
    "export",
    "export_trajectories",
    "iter_audit",
    "lineage_map",
    "parquet_schema",
    "render_text",
    "to_record",
    "trajectories",
    "write_jsonl",
    "write_parquet",
]
