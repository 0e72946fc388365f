"""TraceWriter under store faults: a hung store call, a spool that can't write, replays in large
batches, a close that waits for a hung call within its budget (issue 21)."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import pytest

from litellm_rllm.store import SqliteStore
from litellm_rllm.store.base import EncodedWriteResult
from litellm_rllm.store.codec import EncodedTrace
from litellm_rllm.trace import Trace
from litellm_rllm.writer import TraceWriter
from litellm_rllm.writer.spool import Spool

FAST = (0.01, 0.01)


def make(trace_id: str, session: str = "s", **kw: Any) -> Trace:
    return Trace(trace_id=trace_id, session_id=session, **kw)


def read_back(db: str, **query: Any) -> list[Trace]:
    with SqliteStore(db) as reader:
        return reader.traces(**query)


class FaultyStore(SqliteStore):
    """A SQLite store whose writes can hang (like a busy wait behind another process's lock)
    or fail (like a server that is down); counts its write calls."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.release.set()
        self.down = False
        self.calls = 0

    def write_encoded(self, traces: Sequence[EncodedTrace]) -> EncodedWriteResult:
        self.calls += 1
        self.release.wait()
        if self.down:
            raise ConnectionError("store is down")
        return super().write_encoded(traces)


class FullDiskSpool(Spool):
    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.full = False

    def append(self, traces: Sequence[Any]) -> bool:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().append(traces)


@pytest.fixture()
def db(tmp_path: Path) -> str:
    return str(tmp_path / "traces.db")


def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def test_hung_store_call_moves_the_backlog_to_the_spool_and_a_late_commit_is_not_a_second_row(
    db: str, tmp_path: Path
) -> None:
    store = FaultyStore(db)
    writer = TraceWriter(store, batch_size=16, spool=str(tmp_path / "spool"), spool_after=0.3,
                         spool_backlog=50, probe_interval=0.05, close_at_exit=False)
    try:
        writer.submit(make("t000"))
        assert writer.flush(10)
        store.release.clear()  # every write from now on waits (a held lock)
        started = time.monotonic()
        for i in range(1, 301):
            writer.submit(make(f"t{i:03d}"))
        assert writer.flush(10)  # the barrier passes: everything is spooled, the store still hangs
        took = time.monotonic() - started
        stats = writer.stats()
        assert (stats["spool_pending"], stats["queue_depth"], stats["failed"]) == (300, 0, 0), stats
        assert took < 5 and stats["store_call_running_ms"] > 0
        assert writer.pending_for("s") == 300 and writer.pending_for("other") == 0
        store.release.set()  # the lock is gone: the late commit, then the replay
        assert wait_until(lambda: writer.stats()["spool_pending"] == 0)
        assert writer.flush(10)
        stats = writer.stats()
        assert stats["store_calls_late"] == 1 and stats["duplicates"] > 0  # the late batch, replayed again
        traces = read_back(db, session="s")
        assert [t.trace_id for t in traces] == [f"t{i:03d}" for i in range(301)]
        assert [t.seq for t in traces] == list(range(301))
        assert writer.pending_for("s") == 0
    finally:
        store.release.set()
        writer.close()
        store.close()


def test_queue_stays_bounded_while_the_store_hangs_at_a_high_submit_rate(db: str, tmp_path: Path) -> None:
    """The SIGKILL loss bound is the queue plus one batch: with the store hung, the writer
    moves the backlog to the spool as fast as it comes, whatever the rate."""
    store = FaultyStore(db)
    writer = TraceWriter(store, batch_size=16, spool=str(tmp_path / "spool"), spool_after=0.5,
                         spool_backlog=100, close_at_exit=False)
    try:
        writer.submit(make("warm"))
        assert writer.flush(10)
        store.release.clear()
        depths: list[int] = []
        for i in range(3000):  # ~3,000/s for a second
            writer.submit(make(f"b{i}", "burst"))
            if i % 50 == 0:
                depths.append(writer.stats()["queue_depth"])
                time.sleep(0.015)
        assert writer.flush(30)
        assert writer.stats()["spool_pending"] == 3000
        assert max(depths) < 400, depths  # spool_backlog (100) + a batch + what comes in while it spools
    finally:
        store.release.set()
        writer.close()
        store.close()


def test_store_down_and_spool_disk_full_holds_traces_in_memory_until_either_takes_them(
    db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyStore(db)
    spool = FullDiskSpool(str(tmp_path / "spool"))
    writer = TraceWriter(store, retry_delays=FAST, batch_size=4, spool=spool, probe_interval=0.05,
                         close_at_exit=False)
    try:
        store.down, spool.full = True, True
        for i in range(30):
            writer.submit(make(f"h{i:02d}"))
        assert writer.flush(10)
        stats = writer.stats()
        assert (stats["held"], stats["failed"], stats["spool_pending"]) == (30, 0, 0), stats
        assert writer.take_lost() == 0 and writer.pending_for("s") == 30
        assert "held in memory" in caplog.text and "No space left" in caplog.text
        spool.full = False  # space is back, the store is still down: the held batches go to the spool
        assert wait_until(lambda: writer.stats()["held"] == 0)
        assert writer.stats()["spool_pending"] == 30
        store.down = False
        assert wait_until(lambda: writer.stats()["spool_pending"] == 0)
        assert writer.flush(10)
        traces = read_back(db, session="s")
        assert [t.trace_id for t in traces] == [f"h{i:02d}" for i in range(30)]
        assert writer.stats()["failed"] == 0 and writer.pending_for("s") == 0
    finally:
        store.release.set()
        writer.close()
        store.close()


def test_held_batches_go_straight_to_the_store_when_it_comes_back_first(db: str, tmp_path: Path) -> None:
    store = FaultyStore(db)
    spool = FullDiskSpool(str(tmp_path / "spool"))
    writer = TraceWriter(store, retry_delays=FAST, batch_size=4, spool=spool, probe_interval=0.05,
                         close_at_exit=False)
    try:
        store.down, spool.full = True, True
        for i in range(12):
            writer.submit(make(f"m{i:02d}"))
        assert writer.flush(10) and writer.stats()["held"] == 12
        store.down = False
        assert wait_until(lambda: writer.stats()["held"] == 0)
        assert writer.flush(10)
        assert [t.trace_id for t in read_back(db)] == [f"m{i:02d}" for i in range(12)]
        assert writer.stats()["recovered"] == 12
    finally:
        writer.close()
        store.close()


def test_replay_writes_many_small_spooled_batches_in_few_transactions(db: str, tmp_path: Path) -> None:
    folder = str(tmp_path / "spool")
    earlier = Spool(folder)  # a moderate load spools one or two traces per record
    for i in range(600):
        assert earlier.append([make(f"r{i:03d}", "r")])
    earlier.close()
    store = FaultyStore(db)
    writer = TraceWriter(store, spool=folder, replay_batch=512, close_at_exit=False)
    try:
        assert writer.flush(30)
        assert [t.trace_id for t in read_back(db, session="r")] == [f"r{i:03d}" for i in range(600)]
        assert store.calls <= 3  # 600 records in batches of up to 512 traces, not 600 transactions
        assert writer.stats()["adopted"] == 600
    finally:
        writer.close()
        store.close()


def test_close_waits_for_a_hung_store_call_within_its_budget_and_leaves_nothing_in_the_spool(
    db: str, tmp_path: Path
) -> None:
    store = FaultyStore(db)
    writer = TraceWriter(store, batch_size=8, spool=str(tmp_path / "spool"), spool_after=0.2,
                         close_at_exit=False)
    writer.submit(make("c-first"))
    assert writer.flush(10)
    store.release.clear()
    for i in range(20):
        writer.submit(make(f"c{i:02d}"))
    assert writer.flush(10) and writer.stats()["spool_pending"] == 20
    threading.Timer(1.0, store.release.set).start()  # the lock holder commits a second later
    started = time.monotonic()
    assert writer.close(timeout=20)
    assert time.monotonic() - started < 10
    assert writer.stats()["spool_pending"] == 0
    assert [t.trace_id for t in read_back(db)] == ["c-first"] + [f"c{i:02d}" for i in range(20)]
    store.close()


def test_close_with_the_store_refusing_keeps_the_spool_and_does_not_wait(db: str, tmp_path: Path) -> None:
    store = FaultyStore(db)
    store.down = True
    writer = TraceWriter(store, retry_delays=FAST, spool=str(tmp_path / "spool"), close_at_exit=False)
    for i in range(5):
        writer.submit(make(f"k{i}"))
    started = time.monotonic()
    assert writer.close(timeout=20)
    assert time.monotonic() - started < 5
    again = Spool(str(tmp_path / "spool"))
    try:
        assert again.pending_traces == 5
    finally:
        again.close()
        store.close()


def test_flush_answer_is_503_while_traces_wait_409_once_per_loss_and_200_only_when_all_are_stored(
    db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from litellm_rllm.callbacks.flush_report import flush_answer

    store = FaultyStore(db)
    spool = FullDiskSpool(str(tmp_path / "spool"))
    writer = TraceWriter(store, retry_delays=FAST, batch_size=1, max_queue=3, spool=spool, probe_interval=0.05,
                         close_at_exit=False)
    try:
        store.down = True
        writer.submit(make("a0"))
        status, body = flush_answer(writer, writer.flush(10), 10)
        assert (status, body["flushed"], body["durable"], body["spooled"], body["held"]) == (503, False, True, 1, 0)
        spool.full = True
        for i in range(1, 6):  # past max_queue: some are lost
            writer.submit(make(f"a{i}"))
            writer.flush(10)
        status, body = flush_answer(writer, True, 10)
        assert status == 409 and body["lost"] == body["lost_total"] > 0 and body["flushed"] is False, body
        assert "traces lost since the last flush" in caplog.text
        status, body = flush_answer(writer, True, 10)
        assert status == 503 and body["durable"] is False and body["held"] > 0, body  # reported once
        store.down, spool.full = False, False
        assert wait_until(lambda: writer.flush(1) and flush_answer(writer, True, 10)[0] == 200)
        status, body = flush_answer(writer, writer.flush(10), 10)
        assert status == 200 and body["flushed"] is True and body["lost_total"] > 0
    finally:
        writer.close()
        store.close()


def test_spool_whose_folder_was_deleted_writes_a_new_file_with_what_was_pending(tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "spool"
    spool = Spool(str(folder))
    try:
        assert spool.append([make("p0", "x"), make("p1", "x")])
        shutil.rmtree(folder)  # the operator's mistake: the file is gone, our fd is not
        assert spool.append([make("p2", "x")])
        assert (folder / "spool-0.rllm").exists() and spool.pending_traces == 3
    finally:
        spool.close()
    again = Spool(str(folder))  # what a restarted process finds there
    try:
        rows = [row.trace_id for record in again.own.iter_records() for row in record.rows]
        assert rows == ["p0", "p1", "p2"]
    finally:
        again.close()
