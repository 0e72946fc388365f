"""SQLite store faults (issue 21): a deleted folder, a reader that must not recreate a store, the
store process surviving a SIGBUS of its child."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from litellm_rllm.store.sqlite import SqliteStore, StoreMissing
from litellm_rllm.trace import Trace
from litellm_rllm.writer.store_process import StoreProcess, StoreProcessLost


def make(trace_id: str, session: str = "s") -> Trace:
    return Trace(trace_id=trace_id, session_id=session)


def test_deleted_folder_is_noticed_and_the_next_write_goes_to_a_new_file(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    path = str(folder / "traces.db")
    store = SqliteStore(path)
    try:
        store.write([make("before")])
        shutil.rmtree(folder)  # the operator's mistake; the connection still holds the old inode
        folder.mkdir()
        store.write([make("after-1"), make("after-2")])
        assert store.reopened == 1
        with SqliteStore(path, create=False) as reader:  # what is at the path now
            assert [t.trace_id for t in reader.traces()] == ["after-1", "after-2"]
            assert [t.seq for t in reader.traces()] == [0, 1]
    finally:
        store.close()


def test_reader_never_creates_a_missing_store_and_says_it_is_missing(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    with pytest.raises(StoreMissing, match="does not exist"):
        SqliteStore(str(folder / "traces.db"), create=False)
    assert not folder.exists()
    folder.mkdir()
    path = str(folder / "traces.db")
    with SqliteStore(path) as writer:
        writer.write([make("a")])
    reader = SqliteStore(path, create=False)
    try:
        assert reader.count() == 1
        shutil.rmtree(folder)
        with pytest.raises(StoreMissing):  # not "0 traces" from a new empty file
            reader.traces(session="s")
        assert not folder.exists()
    finally:
        reader.close()


def test_store_process_survives_its_child_dying_of_sigbus(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "traces.db")
    store = StoreProcess(path, restart_delays=(0.2,))
    try:
        store.write([make("one")])
        pid = store.pid
        assert pid is not None and pid != os.getpid()
        os.kill(pid, signal.SIGBUS)  # what a write to an unbackable -shm page does to the process
        with caplog.at_level(logging.ERROR), pytest.raises(StoreProcessLost):
            store.write([make("two")])
        assert "SIGBUS" in caplog.text
        with pytest.raises(StoreProcessLost, match="restarting"):  # within the backoff: at once
            store.count()
        time.sleep(0.3)
        store.write([make("two")])  # a new child
        assert store.count() == 2 and store.pid not in (None, pid)
        assert store.stats()["store_process_lost"] == 1
    finally:
        store.close()


def test_store_process_reader_reports_a_missing_file_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "none" / "traces.db"
    reader = StoreProcess(str(path), create=False)
    try:
        with pytest.raises(StoreMissing):
            reader.traces(session="x")
        assert not path.parent.exists()
    finally:
        reader.close()


def test_store_process_wakes_its_feed_listeners_after_a_new_reward_or_finish_not_a_repeat(tmp_path: Path) -> None:
    store = StoreProcess(str(tmp_path / "traces.db"))
    fired: list[int] = []
    store.add_commit_listener(lambda: fired.append(1))
    try:
        store.write([make("t1", "ep")])
        assert len(fired) == 1
        assert store.add_reward("ep", 0.5, idempotency_key="k").duplicate is False
        assert store.add_reward("ep", 0.5, idempotency_key="k").duplicate is True
        assert store.finish("ep", 1.0).duplicate is False
        assert store.finish("ep", 1.0).duplicate is True
        assert len(fired) == 3  # the trace, the reward, the finish: not the repeats
        assert [c.kind for c in store.changes(0, 10).items] == ["trace", "reward", "finish"]
    finally:
        store.close()
