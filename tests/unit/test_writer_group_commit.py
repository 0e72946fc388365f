"""TraceWriter's commit interval: fewer transactions at moderate rates, never a later flush."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from litellm_rllm.store import SqliteStore
from litellm_rllm.store.base import EncodedWriteResult
from litellm_rllm.store.codec import EncodedTrace
from litellm_rllm.trace import Trace
from litellm_rllm.writer import TraceWriter


class CountingStore(SqliteStore):
    """Counts transactions (one ``write_encoded`` call each)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def write_encoded(self, traces: Sequence[EncodedTrace]) -> EncodedWriteResult:
        self.batches.append(len(traces))
        return super().write_encoded(traces)


def test_calls_20ms_apart_share_transactions_with_a_100ms_commit_interval(tmp_path: Path) -> None:
    store = CountingStore(str(tmp_path / "t.db"))
    writer = TraceWriter(store, commit_interval=0.1, close_at_exit=False)
    try:
        for i in range(25):  # ~0.5 s of calls, 20 ms apart: one batch per call without the interval
            writer.submit(Trace(trace_id=f"t{i}", session_id="s"))
            time.sleep(0.02)
        assert writer.flush(timeout=10)
        assert sum(store.batches) == 25
        assert len(store.batches) <= 10, store.batches
        assert writer.stats()["written"] == 25
    finally:
        writer.close()
        store.close()


def test_flush_does_not_wait_for_the_commit_interval(tmp_path: Path) -> None:
    store = CountingStore(str(tmp_path / "t.db"))
    writer = TraceWriter(store, commit_interval=5.0, close_at_exit=False)
    try:
        writer.submit(Trace(trace_id="first", session_id="s"))
        assert writer.flush(timeout=10)  # the first batch goes at once (no batch before it)
        writer.submit(Trace(trace_id="second", session_id="s"))  # would wait 5 s for company
        started = time.monotonic()
        assert writer.flush(timeout=10)
        assert time.monotonic() - started < 1.0
        assert [t.trace_id for t in store.traces(session="s")] == ["first", "second"]
    finally:
        writer.close()
        store.close()


def test_a_call_after_a_quiet_spell_is_written_without_waiting(tmp_path: Path) -> None:
    store = CountingStore(str(tmp_path / "t.db"))
    writer = TraceWriter(store, commit_interval=0.5, close_at_exit=False)
    try:
        writer.submit(Trace(trace_id="a", session_id="s"))
        deadline = time.monotonic() + 5
        while not store.batches and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.6)  # quieter than the interval
        writer.submit(Trace(trace_id="b", session_id="s"))
        started = time.monotonic()
        while len(store.batches) < 2 and time.monotonic() - started < 5:
            time.sleep(0.005)
        assert time.monotonic() - started < 0.3, "the second call waited for the interval"
    finally:
        writer.close()
        store.close()


def test_calls_during_the_interval_do_not_wake_the_writer_until_a_batch_is_full(tmp_path: Path) -> None:
    """Each wake-up is a thread switch and a GIL hand-over from the event loop: a lingering
    writer collects the queue at its deadline instead, unless the batch fills up first."""
    store = CountingStore(str(tmp_path / "t.db"))
    writer = TraceWriter(store, commit_interval=2.0, batch_size=4, close_at_exit=False)
    try:
        writer.submit(Trace(trace_id="first", session_id="s"))
        assert writer.flush(timeout=10)
        writer.submit(Trace(trace_id="a", session_id="s"))  # starts the writer's linger
        deadline = time.monotonic() + 5
        while writer._quiet_until == 0.0 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert writer._quiet_until > 0.0, "the writer never lingered"
        for tid in ("b", "c"):
            writer.submit(Trace(trace_id=tid, session_id="s"))
            assert not writer._wake.is_set(), f"submitting {tid} woke the lingering writer"
        writer.submit(Trace(trace_id="d", session_id="s"))  # the batch of 4 is full now
        started = time.monotonic()
        while len(store.batches) < 2 and time.monotonic() - started < 5:
            time.sleep(0.005)
        assert time.monotonic() - started < 1.0, "a full batch waited for the interval"
        assert store.batches == [1, 4]
    finally:
        writer.close()
        store.close()
