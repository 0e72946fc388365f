"""Streaming export of trajectory rows to Parquet (pyarrow) or JSON lines.

Rows are written as they come, in row groups of at most `row_group_rows` rows or
`row_group_tokens` token ids, whichever comes first, so memory holds one row group (plus the
session the views are working on), whatever the number of traces. The file is written under
a temporary name and renamed when complete: a failed export leaves no half file at `path`.

Parquet columns (the schemas below, documented in docs/training.md): token ids and masks are
``list<int32>``, logprobs ``list<float32>``, free-form dicts (``metadata``, ``rewards``) JSON
text, so the file loads unchanged with ``pyarrow.parquet.read_table`` and
``datasets.load_dataset("parquet", data_files=...)``. pyarrow is the ``export`` extra; JSON
lines need nothing.
"""

from __future__ import annotations

import json
import os
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Literal, Optional, Union

from pydantic import BaseModel

from litellm_rllm.training.views import VIEWS, MergedRow, Row, Trajectories, View

ExportFormat = Literal["parquet", "jsonl"]
FORMATS: tuple[str, ...] = ("parquet", "jsonl")

# (column, arrow type spec, description); the type spec is turned into pyarrow types lazily,
# so importing this module needs no pyarrow.
_VERSION = "struct<start:int64,end:int64>"
PER_CALL_COLUMNS: list[tuple[str, str, str]] = [
    ("trace_id", "string", "the call's trace id"),
    ("session_id", "string", "session key: the session id, else the innermost session uid"),
    ("seq", "int64", "order of the call within its session"),
    ("choice", "int32", "choice index (n > 1 gives one row per choice)"),
    ("prompt_ids", "list<int32>", "prompt token ids as the backend saw them"),
    ("response_ids", "list<int32>", "sampled token ids"),
    ("response_logprobs", "list<float32>", "logprob of each sampled id; null where not captured"),
    ("response_mask", "list<int32>", "ones, one per response id"),
    ("status", "string", "ok, error or incomplete"),
    ("finish_reason", "string", "the choice's finish reason"),
    ("relation", "string", "lineage relation: new, extends, drift or edited (null: no prompt ids)"),
    ("parent", "string", "lineage parent's trace id"),
    ("orphan", "bool", "a completion nothing continued because the agent retried (only with include_orphans)"),
    ("metadata", "json", "session metadata from the slug, as JSON text"),
    ("reward", "float64", "reward of the call where one is set"),
    ("rewards", "json", "named rewards as JSON text, where set"),
    ("policy_version", _VERSION, "weights version when the call started and ended"),
]
MERGED_COLUMNS: list[tuple[str, str, str]] = [
    ("session_id", "string", "session key: the session id, else the innermost session uid"),
    ("trace_ids", "list<string>", "the chain's calls, root to leaf"),
    ("choices", "list<int32>", "the choice of each call the chain follows"),
    ("spans", "list<list<int32>>", "[start, end) of each call's sampled ids within input_ids"),
    ("input_ids", "list<int32>", "the last call's prompt + completion"),
    ("loss_mask", "list<int32>", "1 exactly on tokens sampled by a call of the chain, else 0"),
    ("logprobs", "list<float32>", "sampled logprob where loss_mask is 1, else 0.0; null where not captured"),
    ("status", "string", "worst status of the chain (error, then incomplete, then ok)"),
    ("root_relation", "string", "how the chain's first call relates to earlier calls: new, drift or edited"),
    ("orphan", "bool", "the leaf is an orphan (only with include_orphans)"),
    ("metadata", "json", "the last call's session metadata, as JSON text"),
    ("reward", "float64", "the last reward set along the chain"),
    ("rewards", "json", "the last named rewards along the chain, as JSON text"),
    ("policy_versions", f"list<{_VERSION}>", "each call's weights versions"),
    ("policy_version", _VERSION, "the chain's earliest start and latest end version"),
]
COLUMNS: dict[str, list[tuple[str, str, str]]] = {"per-call": PER_CALL_COLUMNS, "merged": MERGED_COLUMNS}
_JSON_COLUMNS = {"metadata", "rewards"}
# columns counted against `row_group_tokens`
_TOKEN_COLUMNS = {"per-call": ("prompt_ids", "response_ids"), "merged": ("input_ids",)}


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RuntimeError("Parquet export needs pyarrow: pip install 'litellm-rllm[export]'") from None
    return pyarrow


def _arrow_type(pa: Any, spec: str) -> Any:
    if spec.startswith("list<") and spec.endswith(">"):
        return pa.list_(_arrow_type(pa, spec[5:-1]))
    if spec.startswith("struct<") and spec.endswith(">"):
        fields = [part.split(":", 1) for part in spec[7:-1].split(",")]
        return pa.struct([(name, _arrow_type(pa, kind)) for name, kind in fields])
    if spec == "json":
        return pa.string()
    return {
        "string": pa.string(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float32": pa.float32(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
    }[spec]


def parquet_schema(view: View) -> Any:
    """The pyarrow schema of a view's Parquet file; each field carries its description."""
    if view not in VIEWS:
        raise ValueError(f"view: must be one of {', '.join(VIEWS)}, not {view!r}")
    pa = _pyarrow()
    fields = [
        pa.field(name, _arrow_type(pa, spec), metadata={"description": doc}) for name, spec, doc in COLUMNS[view]
    ]
    return pa.schema(fields, metadata={"litellm_rllm.view": view})


def to_record(row: Row) -> dict[str, Any]:
    """A row as stored in Parquet: free-form dicts as JSON text, everything else as is."""
    out = row.to_dict()
    for name in _JSON_COLUMNS:
        value = out.get(name)
        out[name] = None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return out


def view_of(row: Row) -> View:
    return "merged" if isinstance(row, MergedRow) else "per-call"


_PROGRESS_ROWS = 100


@dataclass
class ExportProgress:
    """Passed to the progress callback every 100 rows, after each Parquet row group, and once
    at the end (`done`)."""

    rows: int
    traces: Optional[int]  # traces read so far, where the rows come from `Trajectories`
    done: bool = False


ProgressCallback = Callable[[ExportProgress], None]


class ExportResult(BaseModel):
    path: Optional[str]
    format: ExportFormat
    view: View
    rows: int
    row_groups: int = 0
    traces: Optional[int] = None
    sessions: Optional[int] = None
    skipped_orphans: Optional[int] = None
    skipped_without_ids: Optional[int] = None


class _Report:
    def __init__(self, rows: Iterable[Row], progress: Optional[ProgressCallback]) -> None:
        self.source = rows if isinstance(rows, Trajectories) else None
        self.progress = progress

    def __call__(self, count: int, done: bool = False) -> None:
        if self.progress is not None:
            traces = self.source.traces_read if self.source is not None else None
            self.progress(ExportProgress(rows=count, traces=traces, done=done))


_TYPECODES = {"list<int32>": "i", "list<float32>": "f"}


def _batch(pa: Any, view: View, schema: Any, records: list[dict[str, Any]]) -> Any:
    """One record batch from packed rows (or `to_dict()` rows): id / mask / logprob columns
    are concatenated into one native array each (C-level extends) and handed to Arrow as
    buffers, with int32 offsets; the rest through `pa.array`."""
    arrays = []
    for (name, spec, _), field in zip(COLUMNS[view], schema):
        values = [rec[name] for rec in records]
        code = _TYPECODES.get(spec)
        if code is not None:
            flat = array(code)
            offsets = array("i", [0])
            nulls = []
            for v in values:
                if v is not None:
                    flat.extend(v)
                nulls.append(v is None)
                offsets.append(len(flat))
            leaf = pa.Array.from_buffers(field.type.value_type, len(flat), [None, pa.py_buffer(flat)])
            starts = pa.Array.from_buffers(pa.int32(), len(offsets), [None, pa.py_buffer(offsets)])
            mask = pa.array(nulls, pa.bool_()) if any(nulls) else None
            arrays.append(pa.ListArray.from_arrays(starts, leaf, mask=mask))
        elif spec == "json":
            arrays.append(pa.array(
                [None if v is None else json.dumps(v, ensure_ascii=False, sort_keys=True) for v in values], pa.string()))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def write_parquet(
    rows: Iterable[Row],
    path: Union[str, Path],
    view: Optional[View] = None,
    *,
    row_group_rows: int = 1024,
    row_group_tokens: int = 1_000_000,
    compression: str = "zstd",
    progress: Optional[ProgressCallback] = None,
) -> tuple[int, int]:
    """Stream rows into a Parquet file at `path`; returns (rows, row groups). `view` defaults
    to the rows' own (a `Trajectories` knows it; else the first row's type)."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    if row_group_rows < 1 or row_group_tokens < 1:
        raise ValueError("row_group_rows and row_group_tokens must be positive")
    report = _Report(rows, progress)
    if view is None and isinstance(rows, Trajectories):
        view = rows.view
    records = _records(rows, view)
    first = next(records, None)
    if view is None:
        view = first[1] if first is not None else "merged"
    schema = parquet_schema(view)
    token_columns = _TOKEN_COLUMNS[view]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = groups = 0
    try:
        with pq.ParquetWriter(str(tmp), schema, compression=compression) as writer:
            buffer: list[dict[str, Any]] = []
            tokens = 0

            def flush() -> None:
                nonlocal buffer, tokens, groups
                writer.write_batch(_batch(pa, view, schema, buffer))
                groups += 1
                buffer, tokens = [], 0
                report(count)

            if first is not None:
                for record, kind in _chain(first, records):
                    if kind != view:
                        raise ValueError(f"a {kind} row in a {view} export")
                    buffer.append(record)
                    count += 1
                    tokens += sum(len(record[c]) for c in token_columns)
                    if len(buffer) >= row_group_rows or tokens >= row_group_tokens:
                        flush()
                    elif count % _PROGRESS_ROWS == 0:
                        report(count)
                if buffer:
                    flush()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report(count, done=True)
    return count, groups


def _chain(first: Any, rest: Iterable[Any]) -> Iterable[Any]:
    yield first
    yield from rest


def _records(rows: Iterable[Row], view: Optional[View]) -> Iterator[tuple[dict[str, Any], View]]:
    """(column dict, its view) per row: a `Trajectories`' packed rows as they are, other rows
    through `to_dict()`."""
    if isinstance(rows, Trajectories):
        for record in rows.packed():
            yield record, rows.view
        return
    for row in rows:
        yield row.to_dict(), view_of(row)


def write_jsonl(
    rows: Iterable[Row],
    out: Union[str, Path, IO[str]],
    *,
    progress: Optional[ProgressCallback] = None,
) -> int:
    """Stream rows as JSON lines (`row.to_dict()`, dicts as objects) to a path (written under a
    temporary name, then renamed) or an open text stream ("-" is stdout); returns the rows."""
    report = _Report(rows, progress)
    if isinstance(out, str) and out == "-":
        out = sys.stdout
    if not isinstance(out, (str, Path)):
        count = _jsonl_into(rows, out, report)
        report(count, done=True)
        return count
    path = Path(out)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            count = _jsonl_into(rows, fh, report)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report(count, done=True)
    return count


def _jsonl_into(rows: Iterable[Row], fh: IO[str], report: _Report) -> int:
    count = 0
    for row in rows:
        fh.write(row.model_dump_json())
        fh.write("\n")
        count += 1
        if count % _PROGRESS_ROWS == 0:
            report(count)
    return count


def _noting_view(rows: Iterable[Row], seen: list[View]) -> Iterator[Row]:
    for row in rows:
        if not seen:
            seen.append(view_of(row))
        yield row


def export(
    rows: Iterable[Row],
    out: Union[str, Path, IO[str]],
    format: ExportFormat = "parquet",  # noqa: A002 - the CLI's flag name
    *,
    view: Optional[View] = None,
    progress: Optional[ProgressCallback] = None,
    row_group_rows: int = 1024,
    row_group_tokens: int = 1_000_000,
) -> ExportResult:
    """Write rows (best: a `Trajectories`, whose counters go into the result) to `out`."""
    if format not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}, not {format!r}")
    if view is None and isinstance(rows, Trajectories):
        view = rows.view
    seen: list[View] = []
    if view is None:
        rows = _noting_view(rows, seen)
    groups = 0
    if format == "parquet":
        if not isinstance(out, (str, Path)) or str(out) == "-":
            raise ValueError("out: Parquet needs a file path")
        count, groups = write_parquet(
            rows, out, view, row_group_rows=row_group_rows, row_group_tokens=row_group_tokens, progress=progress
        )
    else:
        count = write_jsonl(rows, out, progress=progress)
    source = rows if isinstance(rows, Trajectories) else None
    return ExportResult(
        path=str(out) if isinstance(out, (str, Path)) else None,
        format=format,
        view=view or (seen[0] if seen else "merged"),
        rows=count,
        row_groups=groups,
        traces=source.traces_read if source is not None else None,
        sessions=source.sessions if source is not None else None,
        skipped_orphans=source.skipped_orphans if source is not None else None,
        skipped_without_ids=source.skipped_without_ids if source is not None else None,
    )


__all__ = [
    "COLUMNS",
    "ExportFormat",
    "ExportProgress",
    "ExportResult",
    "FORMATS",
    "MERGED_COLUMNS",
    "PER_CALL_COLUMNS",
    "ProgressCallback",
    "export",
    "parquet_schema",
    "to_record",
    "write_jsonl",
    "write_parquet",
]
