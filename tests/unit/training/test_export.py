"""Export: Parquet and JSON lines read back equal the Python rows; memory stays flat."""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path
from typing import Iterator

import pytest

from litellm_rllm.trace import Trace
from litellm_rllm.training import export, export_trajectories, parquet_schema, to_record, trajectories
from litellm_rllm.training.export import _arrow_type

from tests.unit.training.builders import Conversation, completion

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def sessions(count: int, turns: int = 4, with_retry: bool = True) -> Iterator[Trace]:
    """Sessions with n=2 calls, a retry orphan, rewards and versions: every column non-trivial."""
    for s in range(count):
        conv = Conversation(f"s{s}")
        for turn in range(turns):
            ids = completion(turn, length=3 + (s + turn) % 5)
            extra = {"reward": float(turn), "policy_version": {"start": turn, "end": turn + 1}} if turn else {}
            if turn == 1:
                extra["rewards"] = {"format": 1.0}
            conv.call(f"s{s}-t{turn}", [ids, completion(turn, branch=1)] if turn == 2 else [ids], **extra)
            conv.follow(ids, turn=turn + 1)
        if with_retry:
            conv.call(f"s{s}-timeout", [completion(turns)])
            conv.call(f"s{s}-retry", [completion(turns, branch=2)])
        conv.traces[0].metadata["note"] = "ünïcode"
        yield from conv.traces


@pytest.mark.parametrize("view", ["merged", "per-call"])
def test_parquet_read_back_equals_the_python_rows(tmp_path: Path, view: str) -> None:
    traces = list(sessions(7))
    expected = list(trajectories(traces, view=view))
    out = tmp_path / f"{view}.parquet"
    result = export_trajectories(traces, out, view=view, format="parquet", row_group_rows=3)
    assert (result.rows, result.skipped_orphans, result.sessions, result.traces) == (len(expected), 7, 7, len(traces))
    table = pq.read_table(out)
    assert table.schema.equals(parquet_schema(view), check_metadata=False)
    assert pq.ParquetFile(out).metadata.num_row_groups == result.row_groups == -(-len(expected) // 3)
    assert table.to_pylist() == [to_record(r) for r in expected]
    # the JSON text columns decode to the rows' dicts
    assert [json.loads(m) for m in table.column("metadata").to_pylist()] == [r.metadata for r in expected]
    ids = "input_ids" if view == "merged" else "response_ids"
    assert table.schema.field(ids).type == pa.list_(pa.int32())
    lps = "logprobs" if view == "merged" else "response_logprobs"
    assert table.schema.field(lps).type == pa.list_(pa.float32())


def test_parquet_loads_with_datasets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    traces = list(sessions(3))
    out = tmp_path / "merged.parquet"
    export_trajectories(traces, out)
    loaded = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    expected = [to_record(r) for r in trajectories(traces)]
    assert loaded.num_rows == len(expected)
    assert [dict(r) for r in loaded] == expected


def test_jsonl_read_back_equals_the_python_rows(tmp_path: Path) -> None:
    traces = list(sessions(4))
    out = tmp_path / "rows.jsonl"
    result = export_trajectories(traces, out, view="per-call", format="jsonl")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [r.to_dict() for r in trajectories(traces, view="per-call")]
    assert result.rows == len(lines)


def test_progress_is_reported_per_row_group_and_at_the_end(tmp_path: Path) -> None:
    seen = []
    traces = list(sessions(5))
    export_trajectories(traces, tmp_path / "p.parquet", row_group_rows=2, progress=seen.append)
    assert [p.rows for p in seen] == [2, 4, 6, 8, 10, 10]
    assert seen[-1].done and seen[-1].traces == len(traces) and not seen[0].done


def test_failed_export_leaves_no_file(tmp_path: Path) -> None:
    def broken() -> Iterator[Trace]:
        yield from sessions(2)
        raise RuntimeError("store went away")

    out = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError, match="store went away"):
        export_trajectories(broken(), out, order="session", row_group_rows=1)
    assert list(tmp_path.iterdir()) == []


def test_empty_input_gives_an_empty_file_with_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "empty.parquet"
    assert export_trajectories([], out, view="per-call").rows == 0
    assert pq.read_table(out).schema.equals(parquet_schema("per-call"), check_metadata=False)


def _export_peak(tmp_path: Path, count: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        export_trajectories(
            sessions(count, turns=6), tmp_path / f"{count}.parquet", order="session", row_group_rows=16
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_memory_does_not_grow_with_the_number_of_sessions(tmp_path: Path) -> None:
    """Python heap peak for 20 vs 200 sessions (10x the traces): bounded by one session and
    one row group, not by the input. (pyarrow's own buffers are per row group as well.)"""
    _export_peak(tmp_path, 5)  # warm-up: imports, schema caches
    small, large = _export_peak(tmp_path, 20), _export_peak(tmp_path, 200)
    assert large < small * 1.5, (small, large)


def test_docs_list_every_parquet_column_with_its_type() -> None:
    text = (Path(__file__).resolve().parents[3] / "docs" / "training.md").read_text(encoding="utf-8")
    for view in ("per-call", "merged"):
        section = text.split(f"### Parquet schema: `{view}`", 1)[1].split("###", 1)[0]
        documented = [
            (cells[1].strip("` "), cells[2].strip(" ").split("`")[1])
            for cells in (line.split("|") for line in section.splitlines() if line.startswith("| `"))
        ]
        schema = parquet_schema(view)
        assert [name for name, _ in documented] == schema.names
        for name, kind in documented:
            assert schema.field(name).type == _arrow_type(pa, kind), name


def test_rows_made_elsewhere_export_the_same(tmp_path: Path) -> None:
    traces = list(sessions(2))
    rows = list(trajectories(traces, view="per-call"))
    out = tmp_path / "rows.parquet"
    result = export(rows, out)
    assert result.view == "per-call" and result.rows == len(rows)
    assert pq.read_table(out).to_pylist() == [to_record(r) for r in rows]
