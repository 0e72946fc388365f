"""SQLite trace store: the store contract (`tests/support/store_contract.py`), plus what only a
file store has: several processes on one file, URL resolution, migrations, the checkpointer."""

from __future__ import annotations

import multiprocessing
import sqlite3
import struct
import threading
from pathlib import Path
from typing import Any, Optional

import pytest

import litellm_rllm.store as store_mod
from litellm_rllm.store import SqliteStore
from litellm_rllm.store.codec import encode
from litellm_rllm.store.sqlite import SCHEMA_VERSION, migrate
from litellm_rllm.trace import TraceChoice, pack_floats, pack_ids
from datetime import timedelta

from tests.support.store_contract import T0, StoreContract, make

@pytest.fixture()
def db(tmp_path: Path) -> str:
    return str(tmp_path / "traces.db")


@pytest.fixture()
def store(db: str):
    s = SqliteStore(db)
    yield s
    s.close()


class TestSqliteStoreContract(StoreContract):
    @pytest.fixture()
    def store_url(self, db: str) -> str:
        return f"sqlite:///{db}"

    @pytest.fixture()
    def raw_blob(self, db: str) -> Any:
        def access(store: Any, trace_id: str, new_arrays: Optional[bytes] = None) -> tuple[Any, Any, Any]:
            with sqlite3.connect(db) as raw:
                row = raw.execute("SELECT doc, arrays, detail FROM traces WHERE trace_id = ?", (trace_id,)).fetchone()
                if new_arrays is not None:
                    raw.execute("UPDATE traces SET arrays = ? WHERE trace_id = ?", (new_arrays, trace_id))
            return row

        return access


# ------------------------------------------------------------------------------ round trip


def test_arrays_blob_is_the_trace_pack_helpers_bytes_behind_a_count_header() -> None:
    trace = make(
        "layout",
        prompt_token_ids=[7, 8],
        choices=[
            TraceChoice(index=0, token_ids=[1, -2], prompt_token_ids=None, logprobs=[-0.5, -1.0]),
            TraceChoice(index=1, token_ids=[], logprobs=None),
        ],
    )
    counts = [2, 2, -1, 2, 0, -1, -1]
    expected = (
        struct.pack("<BI", 1, len(counts))
        + struct.pack(f"<{len(counts)}i", *counts)
        + pack_ids([7, 8])
        + pack_ids([1, -2])
        + pack_floats([-0.5, -1.0])
    )
    assert encode(trace).arrays == expected


# ------------------------------------------------------------------------------ exactly once, seq


def _write_from_process(db: str, worker: int, n: int, sessions: int) -> None:
    store = SqliteStore(db)
    try:
        for start in range(0, n, 7):
            batch = [
                make(f"w{worker}-{i}", f"sess-{i % sessions}")
                for i in range(start, min(start + 7, n))
            ]
            # every third batch also carries ids the other worker writes: exactly once must hold
            if start % 3 == 0:
                batch.append(make(f"shared-{start}", f"sess-{start % sessions}"))
            store.write(batch)
    finally:
        store.close()


def test_two_processes_writing_one_file_store_every_trace_once_with_gap_free_seq(db: str) -> None:
    n, sessions = 300, 5
    SqliteStore(db).close()  # create the file first; the writers race only on data
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_from_process, args=(db, w, n, sessions)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0

    with SqliteStore(db) as store:
        traces = store.traces()
        ids = [t.trace_id for t in traces]
        assert len(ids) == len(set(ids))
        expected = {f"w{w}-{i}" for w in (1, 2) for i in range(n)}
        expected |= {f"shared-{s}" for s in range(0, n, 7) if s % 3 == 0}
        assert set(ids) == expected
        for s in range(sessions):
            in_session = store.traces(session=f"sess-{s}")
            assert [t.seq for t in in_session] == list(range(len(in_session)))


def test_two_processes_creating_the_file_at_once_both_succeed(db: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_from_process, args=(db, w, 20, 2)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with SqliteStore(db) as store:
        assert store.count() == 40 + 1  # "shared-0" once


# ------------------------------------------------------------------------------ read-back


# ------------------------------------------------------------------------------ open / schema


def test_open_resolves_url_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RLLM_STORE_URL", raising=False)
    with store_mod.open() as default:
        assert isinstance(default, SqliteStore)
    assert (tmp_path / "rllm_traces.db").exists()

    monkeypatch.setenv("RLLM_STORE_URL", "sqlite:///sub/env.db")
    with store_mod.open():
        pass
    assert (tmp_path / "sub" / "env.db").exists()

    absolute = tmp_path / "abs.db"
    with store_mod.open(f"sqlite:///{absolute}") as s:  # sqlite:////tmp/.../abs.db
        s.write([make("x")])
    assert absolute.exists()

    with store_mod.open("sqlite:///:memory:") as mem:
        mem.write([make("m")])
        assert mem.count() == 1


def test_open_rejects_unknown_scheme_naming_it_and_the_supported_ones() -> None:
    with pytest.raises(ValueError) as info:
        store_mod.open("mysql://user:secret@host/db")
    message = str(info.value)
    assert "'mysql'" in message and "sqlite" in message
    assert "secret" not in message
    with pytest.raises(ValueError, match="sqlite:///"):
        store_mod.open("sqlite://relative.db")


def test_migration_is_idempotent_and_refuses_a_newer_schema(db: str) -> None:
    SqliteStore(db).close()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        assert migrate(conn) == SCHEMA_VERSION  # already current: nothing to do
        assert migrate(conn) == SCHEMA_VERSION
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    finally:
        conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteStore(db)


def test_a_version_1_file_is_upgraded_to_session_order(db: str) -> None:
    """Traces stored in commit order by an older version get their seq re-ranked by call start."""
    from litellm_rllm.store.sqlite import _V1

    conn = sqlite3.connect(db, isolation_level=None)
    for statement in _V1:
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    for row_id, (tid, seq, start) in enumerate([("late", 0, 2), ("early", 1, 1), ("last", 2, 3)], 1):
        enc = encode(make(tid, created_at=T0 + timedelta(seconds=start)))
        conn.execute("INSERT INTO traces (id, trace_id, session_key, seq, created_us, status, model, doc)"
                     " VALUES (?, ?, 's', ?, ?, 'ok', NULL, ?)", (row_id, tid, seq, enc.created_us, enc.doc))
        conn.execute("INSERT INTO trace_uids VALUES ('s', ?)", (row_id,))
    conn.close()
    with SqliteStore(db) as store:
        assert [(t.trace_id, t.seq) for t in store.traces(session="s")] == [("early", 0), ("late", 1), ("last", 2)]
        store.write([make("next", created_at=T0 + timedelta(seconds=4))])
        assert [t.seq for t in store.traces(session="s")] == [0, 1, 2, 3]


def test_closed_store_refuses_work_and_close_is_idempotent(db: str) -> None:
    store = SqliteStore(db)
    def checkpointers() -> int:
        return sum(t.name == "litellm-rllm-sqlite-checkpointer" for t in threading.enumerate())

    before = checkpointers()
    store.write([make("a")])  # starts this store's background checkpointer
    assert checkpointers() == before + 1
    store.close()
    assert checkpointers() == before
    assert not Path(db + "-wal").exists()  # the last connection folded the WAL in
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.count()
    assert store.flush() is True


def test_sessions_list_shows_each_sessions_cached_prompt_tokens(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from litellm_rllm import cli

    with SqliteStore(db) as st:
        st.write([make("a", "s1", cached_tokens=96), make("b", "s1", cached_tokens=160), make("c", "s2")])
    assert cli.main(["sessions", "list", "--store", f"sqlite:///{db}"]) == 0
    rows = {r["session_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert (rows["s1"]["cached_tokens"], rows["s2"]["cached_tokens"]) == (256, 0)


def test_a_version_4_file_is_rekeyed_by_team_namespace_and_session_name(db: str) -> None:
    """Schema step 5: traces written before team namespaces move to their team's session (seq
    re-ranked), rewards follow, old rLLM sessions become findable by name."""
    from tests.support.rekey_case import check_upgraded, write_v4_store

    with SqliteStore(db) as store:
        conn = store._conn  # noqa: SLF001 - the test reaches under the store on purpose
        write_v4_store(store, lambda sql, params: conn.execute(sql, params).fetchall(), "?", "")
        conn.execute("UPDATE schema_version SET version = 4")
    with SqliteStore(db) as store:
        check_upgraded(store)
