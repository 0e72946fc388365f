"""TraceWriter: off-loop batching, flush barrier, retries, and a submit that never raises."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest

from litellm_rllm.store import SqliteStore
from litellm_rllm.writer import TraceWriter
from litellm_rllm.store.base import EncodedWriteResult
from litellm_rllm.store.codec import EncodedTrace
from litellm_rllm.trace import Trace

FAST_RETRY = (0.01, 0.01, 0.01)


def make(trace_id: str, session: str = "s", **kw: Any) -> Trace:
    return Trace(trace_id=trace_id, session_id=session, **kw)


@pytest.fixture()
def db(tmp_path: Path) -> str:
    return str(tmp_path / "traces.db")


def read_back(db: str, **query: Any) -> list[Trace]:
    """A second, independent connection: sees only what is committed."""
    with SqliteStore(db) as reader:
        return reader.traces(**query)


class FlakyStore(SqliteStore):
    """Raises on the first ``failures`` writes, like a locked or unreachable database."""

    def __init__(self, path: str, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.calls = 0

    def write_encoded(self, traces: Sequence[EncodedTrace]) -> EncodedWriteResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(f"simulated outage #{self.calls}")
        return super().write_encoded(traces)


def test_flush_makes_everything_submitted_visible_to_a_second_connection(db: str) -> None:
    writer = TraceWriter(lambda: SqliteStore(db), batch_size=16, close_at_exit=False)
    try:
        for i in range(500):
            assert writer.submit(make(f"t{i}", f"s{i % 4}"))
        assert writer.flush(timeout=30)
        traces = read_back(db)
        assert [t.trace_id for t in traces] == [f"t{i}" for i in range(500)]
        for s in range(4):
            assert [t.seq for t in read_back(db, session=f"s{s}")] == list(range(125))
        stats = writer.stats()
        assert stats["submitted"] == stats["written"] == 500
        assert stats["queue_depth"] == 0
    finally:
        writer.close()


def test_flush_from_many_threads_each_covers_its_own_submissions(db: str) -> None:
    writer = TraceWriter(lambda: SqliteStore(db), batch_size=8, close_at_exit=False)
    seen: dict[int, int] = {}

    def producer(k: int) -> None:
        for i in range(50):
            writer.submit(make(f"p{k}-{i}", f"p{k}"))
        assert writer.flush(timeout=30)
        seen[k] = len(read_back(db, session=f"p{k}"))

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert seen == {k: 50 for k in range(4)}


async def test_aflush_waits_for_durability_without_blocking_the_loop(db: str) -> None:
    release = threading.Event()

    def slow_build(item: str) -> Trace:
        release.wait(5)
        return make(item)

    writer = TraceWriter(lambda: SqliteStore(db), build=slow_build, close_at_exit=False)
    try:
        for i in range(3):
            writer.submit(f"a{i}")
        flushed = asyncio.ensure_future(writer.aflush(timeout=10))
        ticks = 0
        while ticks < 5:  # the loop keeps running while the writer is stuck in build
            await asyncio.sleep(0.01)
            ticks += 1
        assert not flushed.done()
        release.set()
        assert await flushed is True
        assert len(read_back(db)) == 3
    finally:
        release.set()
        writer.close()


async def test_aflush_times_out_with_false(db: str) -> None:
    release = threading.Event()
    writer = TraceWriter(
        lambda: SqliteStore(db),
        build=lambda item: (release.wait(5), make(item))[1],
        close_at_exit=False,
    )
    try:
        writer.submit("x")
        assert await writer.aflush(timeout=0.05) is False
    finally:
        release.set()
        writer.close()


def test_submit_never_raises_even_when_build_raises(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    def build(item: dict[str, Any]) -> Optional[Trace]:
        if item["kind"] == "boom":
            raise RuntimeError("cannot build")
        if item["kind"] == "skip":
            return None
        if item["kind"] == "wrong":
            return "not a trace"  # type: ignore[return-value]
        return make(item["trace_id"])

    writer = TraceWriter(lambda: SqliteStore(db), build=build, close_at_exit=False)
    items = [
        {"kind": "ok", "trace_id": "good-1"},
        {"kind": "boom", "trace_id": "bad-1"},
        {"kind": "skip", "trace_id": "skipped-1"},
        {"kind": "wrong", "trace_id": "wrong-1"},
        {"kind": "ok", "trace_id": "good-2"},
    ]
    assert all(writer.submit(item) for item in items)
    assert writer.flush(timeout=10)
    writer.close()

    assert [t.trace_id for t in read_back(db)] == ["good-1", "good-2"]
    stats = writer.stats()
    assert (stats["written"], stats["build_errors"], stats["skipped"]) == (2, 2, 1)
    assert "bad-1" in caplog.text  # the log names the trace it could not build


def test_failing_store_is_retried_and_nothing_is_lost(db: str) -> None:
    store = FlakyStore(db, failures=2)
    writer = TraceWriter(store, retry_delays=FAST_RETRY, close_at_exit=False)
    for i in range(20):
        writer.submit(make(f"t{i}"))
    assert writer.flush(timeout=10)
    writer.close()
    store.close()
    assert store.calls >= 3
    assert [t.seq for t in read_back(db)] == list(range(20))
    stats = writer.stats()
    assert (stats["written"], stats["failed"]) == (20, 0)


def test_store_that_keeps_failing_counts_failed_logs_ids_and_flush_returns(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(db, failures=10**6)
    writer = TraceWriter(store, retry_delays=FAST_RETRY, close_at_exit=False)
    writer.submit(make("lost-1"))
    writer.submit(make("lost-2"))
    assert writer.flush(timeout=10) is True  # definitively failed also ends the wait
    writer.close()
    store.close()
    assert writer.stats()["failed"] == 2
    assert "lost-1" in caplog.text and "lost-2" in caplog.text


def test_store_created_lazily_off_the_callers_thread_and_retried_if_it_fails(db: str) -> None:
    made_in: list[str] = []
    attempts = [0]

    def factory() -> SqliteStore:
        attempts[0] += 1
        if attempts[0] == 1:
            raise OSError("disk not mounted yet")
        made_in.append(threading.current_thread().name)
        return SqliteStore(db)

    writer = TraceWriter(factory, retry_delays=FAST_RETRY, close_at_exit=False, name="w-test")
    assert writer.store is None
    writer.submit(make("a"))
    assert writer.flush(timeout=10)
    writer.close()
    assert made_in == ["w-test-store"]  # the writer's store-call thread (store calls may hang)
    assert len(read_back(db)) == 1


def test_unencodable_trace_fails_alone_and_is_not_retried(db: str) -> None:
    store = FlakyStore(db, failures=0)
    writer = TraceWriter(store, retry_delays=(5.0,), close_at_exit=False)
    writer.submit(make("ok-1"))
    writer.submit(make("bad", metadata={"x": object()}))
    writer.submit(make("ok-2"))
    started = time.monotonic()
    assert writer.flush(timeout=10)
    assert time.monotonic() - started < 4  # no backoff sleep for a trace that can never encode
    writer.close()
    store.close()
    assert [t.trace_id for t in read_back(db)] == ["ok-1", "ok-2"]
    assert (writer.stats()["failed"], writer.stats()["written"]) == (1, 2)


def test_duplicates_are_counted_not_written_twice(db: str) -> None:
    writer = TraceWriter(lambda: SqliteStore(db), close_at_exit=False)
    writer.submit(make("same"))
    writer.flush(timeout=10)
    writer.submit(make("same"))
    writer.flush(timeout=10)
    writer.close()
    assert (writer.stats()["written"], writer.stats()["duplicates"]) == (1, 1)
    assert len(read_back(db)) == 1


def test_full_queue_counts_dropped_and_submit_returns_false(db: str) -> None:
    release = threading.Event()
    entered = threading.Event()

    def blocking_build(item: str) -> Trace:
        entered.set()
        release.wait(10)
        return make(item)

    writer = TraceWriter(
        lambda: SqliteStore(db), build=blocking_build, max_queue=3, close_at_exit=False
    )
    try:
        assert writer.submit("first")
        assert entered.wait(5)  # the thread holds "first"; the queue is empty again
        accepted = [writer.submit(f"q{i}") for i in range(5)]
        assert accepted == [True, True, True, False, False]
        assert writer.stats()["dropped"] == 2
        assert writer.stats()["queue_depth"] == 3
    finally:
        release.set()
    assert writer.flush(timeout=10)
    writer.close()
    assert len(read_back(db)) == 4


def test_close_is_idempotent_and_later_submits_are_dropped(db: str) -> None:
    writer = TraceWriter(lambda: SqliteStore(db), close_at_exit=False)
    writer.submit(make("before"))
    assert writer.close(timeout=10) is True
    assert writer.close(timeout=10) is True
    assert writer.submit(make("after")) is False
    assert writer.flush(timeout=1) is True
    assert writer.stats()["dropped"] == 1
    assert [t.trace_id for t in read_back(db)] == ["before"]
    assert writer.store is not None
    with pytest.raises(RuntimeError, match="closed"):  # the writer made it, the writer closed it
        writer.store.count()


def test_close_leaves_a_caller_owned_store_open(db: str) -> None:
    store = SqliteStore(db)
    writer = TraceWriter(store, close_at_exit=False)
    writer.submit(make("a"))
    writer.close()
    assert store.count() == 1
    store.close()


def test_an_idle_writer_sleeps_until_woken_and_a_submit_still_wakes_it(db: str) -> None:
    """With nothing to write the thread wakes for its periodic store check (1 s), not every
    `poll_interval`; a submit and a flush barrier wake it at once."""
    writer = TraceWriter(store=SqliteStore(db), poll_interval=0.01, commit_interval=0.0, linger=0.0)
    try:
        assert writer.flush(10)
        rounds = [0]
        take = writer._take

        def counted(*args: Any, **kwargs: Any) -> Any:
            rounds[0] += 1
            return take(*args, **kwargs)

        writer._take = counted  # type: ignore[method-assign]
        time.sleep(0.5)
        assert rounds[0] <= 3  # ~50 with a wake-up per poll_interval
        started = time.monotonic()
        writer.submit(make("woken"))
        assert writer.flush(10)
        assert time.monotonic() - started < 0.25
        assert [t.trace_id for t in read_back(db)] == ["woken"]
    finally:
        writer.close()
