"""PostgreSQL trace store against a real server (tests/support/pg.py starts it): the store
contract (`tests/support/store_contract.py`, the same suite SQLite passes), plus what only
several processes on one server show: concurrent migrations, seq across writers, reconnects."""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from datetime import timedelta
from typing import Any, Iterator, Optional

import pytest

import litellm_rllm.store as store_mod
from litellm_rllm.store import TraceEncodeError
from litellm_rllm.writer import TraceWriter
from tests.support.store_contract import T0, StoreContract, agent_session, as_read, make
from tests.support.pg import PgServer, unique_schema, with_schema

psycopg = pytest.importorskip("psycopg")

from litellm_rllm.store.postgres import (  # noqa: E402
    SCHEMA_VERSION,
    PostgresStore,
    migrate,
    parse_url,
    redact,
)

@pytest.fixture()
def url(pg_fresh_url: str) -> str:
    return pg_fresh_url


@pytest.fixture()
def store(url: str) -> Iterator[PostgresStore]:
    s = store_mod.open(url)
    assert isinstance(s, PostgresStore)
    yield s
    s.close()


def raw(url: str) -> Any:
    """A plain psycopg connection to the store's database (autocommit)."""
    conninfo, _schema = parse_url(url)
    return psycopg.connect(conninfo, autocommit=True)


class TestPostgresStoreContract(StoreContract):
    @pytest.fixture()
    def store_url(self, url: str) -> str:
        return url

    @pytest.fixture()
    def raw_blob(self, url: str) -> Any:
        def access(store: Any, trace_id: str, new_arrays: Optional[bytes] = None) -> tuple[Any, Any, Any]:
            table = f'"{parse_url(url)[1]}".traces'
            with raw(url) as conn:
                doc, arrays, detail = conn.execute(
                    f"SELECT doc, arrays, detail FROM {table} WHERE trace_id = %s", (trace_id,)).fetchone()
                if new_arrays is not None:
                    conn.execute(f"UPDATE {table} SET arrays = %s WHERE trace_id = %s", (new_arrays, trace_id))
            return doc, bytes(arrays) if arrays is not None else None, detail

        return access


# ------------------------------------------------------------------------------ round trip


# ------------------------------------------------------------------------------ exactly once, seq


# ------------------------------------------------------------------------------ compacted sessions


def test_a_write_that_compacts_against_a_row_being_deleted_waits_and_stores_the_call_whole(url: str) -> None:
    """The delete holds its rows locked, not committed yet: the writer's base check waits for
    it (FOR KEY SHARE), then finds the base gone and stores the call whole."""
    traces = agent_session("race-w", 2)
    table = f'"{parse_url(url)[1]}".traces'
    with store_mod.open(url) as writer:
        writer.write([traces[0].model_copy(deep=True)])
        with raw(url) as conn:
            with conn.transaction():
                conn.execute(f"SELECT id FROM {table} WHERE trace_id = 'race-w-0' FOR UPDATE")
                conn.execute(f"DELETE FROM {table} WHERE trace_id = 'race-w-0'")
                thread = threading.Thread(target=writer.write, args=([traces[1].model_copy(deep=True)],))
                thread.start()
                thread.join(0.5)
                assert thread.is_alive()  # waiting for the delete to end
            thread.join(10)
            base_id, = conn.execute(f"SELECT base_id FROM {table} WHERE trace_id = 'race-w-1'").fetchone()
        assert base_id is None
        [got] = writer.traces(session="race-w")
        assert got.model_copy(update={"seq": 1}).model_dump_json() == as_read(traces)[1]


def test_a_delete_waits_for_a_write_that_compacts_against_its_rows_and_makes_the_child_whole(url: str) -> None:
    """A writer holds its base locked (FOR KEY SHARE) until it commits a child: the delete
    waits, then sees the child and makes it whole before it removes the base."""
    from litellm_rllm.store.codec import encode

    traces = agent_session("race-d", 2)
    table = f'"{parse_url(url)[1]}".traces'
    with store_mod.open(url) as writer, store_mod.open(url) as deleter:
        writer.write([traces[0].model_copy(deep=True)])
        [plan] = writer.compactor.plan([encode(traces[1])])
        child = plan.compact
        assert child is not None and child.base_id == "race-d-0"
        deleted: list[int] = []
        with raw(url) as conn:
            with conn.transaction():  # what PostgresStore.write_encoded does, step by step
                conn.execute(f"SELECT trace_id FROM {table} WHERE trace_id = 'race-d-0' FOR KEY SHARE")
                thread = threading.Thread(target=lambda: deleted.append(deleter.delete(before=traces[1].created_at)))
                thread.start()
                thread.join(0.5)
                assert thread.is_alive()  # waiting for the write to end
                conn.execute(
                    f"INSERT INTO {table} (trace_id, session_key, seq, created_us, status, model, doc, arrays, detail,"
                    " base_id, order_us) VALUES (%s, %s, 1, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (child.trace_id, child.session_key, child.created_us, child.status, child.model, child.doc,
                     child.arrays, child.detail, child.base_id, child.created_us))
            thread.join(10)
        assert deleted == [1]
        [got] = deleter.traces()
        assert got.model_dump_json() == as_read(traces)[1]


def _write_from_process(url: str, worker: int, n: int, sessions: int) -> None:
    store = store_mod.open(url)
    try:
        for start in range(0, n, 7):
            batch = [make(f"w{worker}-{i}", f"sess-{i % sessions}") for i in range(start, min(start + 7, n))]
            if start % 3 == 0:  # ids the other workers write too: exactly once must hold
                batch.append(make(f"shared-{start}", f"sess-{start % sessions}"))
            store.write(batch)
    finally:
        store.close()


def _run_processes(target: Any, args_list: list[tuple[Any, ...]]) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0


def test_four_processes_creating_and_writing_one_schema_at_once(url: str) -> None:
    """The schema does not exist yet: all four migrate at once (advisory lock), then race on
    the same sessions and on shared ids."""
    n, sessions, workers = 300, 5, 4
    _run_processes(_write_from_process, [(url, w, n, sessions) for w in range(workers)])
    with store_mod.open(url) as store:
        traces = store.traces()
        ids = [t.trace_id for t in traces]
        assert len(ids) == len(set(ids))
        expected = {f"w{w}-{i}" for w in range(workers) for i in range(n)}
        expected |= {f"shared-{s}" for s in range(0, n, 7) if s % 3 == 0}
        assert set(ids) == expected
        for s in range(sessions):
            in_session = store.traces(session=f"sess-{s}")
            assert [t.seq for t in in_session] == list(range(len(in_session)))
        assert store.schema_version() == SCHEMA_VERSION
    with raw(url) as conn:
        versions = conn.execute(f'SELECT version FROM "{parse_url(url)[1]}".schema_version').fetchall()
    assert sorted(versions) == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # each step applied once


def test_values_postgres_cannot_index_are_stored_and_found(store: PostgresStore) -> None:
    """A NUL character (text cannot hold it) or a value past a btree entry's size limit in the
    session id, a uid or the trace id must not make a batch unwritable."""
    long_sid = "s" * 5000
    nul_sid = "a\x00b"
    long_id = "id-" + "x" * 4000
    result = store.write([
        make("n1", nul_sid, uids=["outer", nul_sid]),
        make("l1", long_sid, uids=["outer", long_sid], created_at=T0 + timedelta(seconds=0.5)),
        make(long_id, long_sid, created_at=T0 + timedelta(seconds=1)),  # called after l1
        make("ok", "plain"),
    ])
    assert [t.seq for t in result] == [0, 0, 1, 0]
    assert [t.trace_id for t in store.traces(session=nul_sid)] == ["n1"]
    assert [t.trace_id for t in store.traces(session=long_sid)] == ["l1", long_id]
    assert [t.session_id for t in store.traces(session="outer")] == [nul_sid, long_sid]
    got = store.get(long_id)
    assert got is not None and got.trace_id == long_id and got.session_id == long_sid
    assert store.write([make(long_id, long_sid)]).duplicates == [long_id]


def test_a_value_the_server_refuses_fails_alone_and_the_writer_stores_the_rest(
    store: PostgresStore, url: str
) -> None:
    with raw(url) as conn:  # stands for any value a server could refuse (a DataError, ...)
        conn.execute(f'ALTER TABLE "{store.schema}".traces ADD CONSTRAINT no_poison CHECK (model <> \'poison\')')
    with pytest.raises(TraceEncodeError) as info:
        store.write([make("a"), make("bad", model="poison"), make("b")])
    assert set(info.value.errors) == {"bad"} and store.count() == 0
    writer = TraceWriter(store, retry_delays=(5.0,), close_at_exit=False)
    for t in (make("a"), make("bad", model="poison"), make("b")):
        writer.submit(t)
    started = time.monotonic()
    assert writer.flush(10)
    writer.close()
    assert time.monotonic() - started < 4  # dropped at once, not retried
    assert [t.trace_id for t in store.traces()] == ["a", "b"]
    assert [t.seq for t in store.traces()] == [0, 1]
    assert writer.stats()["failed"] == 1


# ------------------------------------------------------------------------------ read-back


def test_cli_reads_a_postgres_store(store: PostgresStore, url: str) -> None:
    import subprocess

    store.write([make("cli-1", "cli-sess"), make("cli-2", "cli-sess")])
    out = subprocess.run([sys.executable, "-m", "litellm_rllm.cli", "traces", "export", "--store", url,
                          "--session", "cli-sess"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [line.count('"trace_id"') for line in out.stdout.splitlines()] == [1, 1]
    listed = subprocess.run([sys.executable, "-m", "litellm_rllm.cli", "sessions", "list", "--store", url],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "cli-sess" in listed.stdout


# ------------------------------------------------------------------------------ open / schema / errors


def test_url_parsing_schema_parameter_defaults_and_redaction() -> None:
    conninfo, schema = parse_url("postgresql://u:secret@h:5433/db?schema=mine&sslmode=disable")
    assert schema == "mine" and "schema=" not in conninfo and "sslmode=disable" in conninfo
    assert "connect_timeout=5" in conninfo
    assert parse_url("postgres://h/db")[1] == "rllm"
    assert "connect_timeout=9" in parse_url("postgresql://h/db?connect_timeout=9")[0]
    assert "connect_timeout=5" not in parse_url("postgresql://h/db?connect_timeout=9")[0]
    with pytest.raises(ValueError, match="schema"):
        parse_url("postgresql://h/db?schema=x;drop")
    assert "secret" not in redact("postgresql://u:secret@h/db")


def test_store_lives_in_its_own_schema_next_to_other_tables(url: str) -> None:
    """A LiteLLM deployment's database has its own tables in `public`: ours stay out of them."""
    with raw(url) as conn:
        conn.execute('CREATE TABLE IF NOT EXISTS public."LiteLLM_VerificationToken" (token text)')
    with store_mod.open(url) as s:
        s.write([make("x")])
        schema = s.schema
    with raw(url) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))}
        assert tables == {"traces", "trace_uids", "session_seq", "schema_version",
                          "feed", "rewards", "finishes", "policy_versions", "pauses", "proxies"}
        assert conn.execute("SELECT count(*) FROM public.\"LiteLLM_VerificationToken\"").fetchone() == (0,)


def test_migration_is_idempotent_and_refuses_a_newer_schema(url: str) -> None:
    store_mod.open(url).close()
    schema = parse_url(url)[1]
    with raw(url) as conn:
        assert migrate(conn, schema) == SCHEMA_VERSION
        conn.execute(f'INSERT INTO "{schema}".schema_version (version) VALUES (%s)', (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        store_mod.open(url)


def test_open_names_the_missing_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    import litellm_rllm.store.postgres as pg_mod

    monkeypatch.setattr(pg_mod, "psycopg", None)
    with pytest.raises(ImportError, match=r"litellm-rllm\[postgres\]"):
        store_mod.open("postgresql://user:secret@127.0.0.1:1/db")


def test_unreachable_server_fails_fast_without_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        store_mod.open("postgresql://user:hunter2@127.0.0.1:1/db")
    assert time.monotonic() - started < 10
    assert "hunter2" not in str(info.value)


# ------------------------------------------------------------------------------ restarts


@pytest.fixture()
def own_server() -> Iterator[PgServer]:
    """A server of this test's own, to stop and start without disturbing the others."""
    from tests.support.pg import start_server_or_skip

    server = start_server_or_skip()
    server.create_database()
    yield server
    server.destroy()


def test_store_reconnects_after_a_server_restart_and_writer_spools_meanwhile(
    own_server: PgServer, tmp_path: Any
) -> None:
    url = with_schema(own_server.url(), unique_schema())
    store = store_mod.open(url)
    writer = TraceWriter(store, retry_delays=(0.05, 0.05), spool=str(tmp_path / "spool"),
                         probe_interval=0.2, close_at_exit=False)
    clock = iter(T0 + timedelta(seconds=k) for k in range(100))  # the calls, one after another
    try:
        for i in range(10):
            writer.submit(make(f"before-{i}", "r", created_at=next(clock)))
        assert writer.flush(10)
        own_server.stop()
        for i in range(10):
            writer.submit(make(f"during-{i}", "r", created_at=next(clock)))
        assert writer.flush(10)  # durable: in the spool
        stats = writer.stats()
        assert stats["spool_pending"] == 10 and stats["failed"] == 0
        with pytest.raises(psycopg.OperationalError):
            store.count()
        own_server.start()
        assert store.count() in (10, 20)  # reads reconnect by themselves
        writer.submit(make("after-0", "r", created_at=next(clock)))
        assert writer.flush(10)
        stats = writer.stats()
        assert stats["spool_pending"] == 0 and stats["written"] == 21, stats
        got = store.traces(session="r")
        assert [t.trace_id for t in got] == (
            [f"before-{i}" for i in range(10)] + [f"during-{i}" for i in range(10)] + ["after-0"])
        assert [t.seq for t in got] == list(range(21))
    finally:
        writer.close()
        store.close()


# ------------------------------------------------------------------------------ measurements


def test_measure_bytes_per_completion_token_and_writer_throughput(
    pg_store_url: str, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stored bytes per completion token (ids + logprobs) on PostgreSQL, and writer traces/s.

    A trace with N completion tokens stores N i32 ids + N f32 logprobs in `arrays`: 8 bytes per
    token plus a fixed header; bytea in PostgreSQL adds a 4-byte varlena header (no
    compression: STORAGE EXTERNAL)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks"))
    from store_throughput import make_templates  # noqa: E402

    url = with_schema(pg_store_url, unique_schema("measure"))
    n, tokens = 1000, 1000
    templates = make_templates(50, 500, tokens, seed=1)
    traces = []
    for i in range(n):
        t = templates[i % len(templates)].model_copy()
        t.trace_id = f"m-{i}"
        t.session_id = f"ms-{i % 100}"
        t.session_uids = ["run", t.session_id]
        traces.append(t)
    store = store_mod.open(url)
    store.compact_sessions = False  # the packing alone: these sessions repeat their prompts
    writer = TraceWriter(store, batch_size=256, close_at_exit=False)
    started = time.perf_counter()
    for t in traces:
        writer.submit(t)
    assert writer.flush(300)
    elapsed = time.perf_counter() - started
    writer.close()
    with raw(url) as conn:
        schema = parse_url(url)[1]
        arrays_bytes, rows = conn.execute(
            f'SELECT sum(pg_column_size(arrays)), count(*) FROM "{schema}".traces').fetchone()
        table_bytes = conn.execute(f"SELECT pg_total_relation_size('\"{schema}\".traces')").fetchone()[0]
    store.close()
    completion_tokens = n * tokens
    prompt_tokens = n * 500
    # arrays holds prompt ids too: take them out at 4 bytes each
    per_token = (arrays_bytes - 4 * prompt_tokens) / completion_tokens
    rate = n / elapsed
    record_property("pg_bytes_per_completion_token", round(per_token, 3))
    record_property("pg_writer_traces_per_s", round(rate))
    with capsys.disabled():
        print(f"\n[pg] arrays column: {per_token:.3f} bytes per completion token (ids + logprobs); "
              f"whole table incl. doc/indexes/TOAST: {table_bytes / completion_tokens:.2f} B/token; "
              f"writer: {rate:.0f} traces/s ({tokens} completion + 500 prompt tokens each)")
    assert 8.0 <= per_token < 8.1
    assert rate > 50


def test_a_version_4_store_is_rekeyed_by_team_namespace_and_session_name(url: str) -> None:
    """Schema step 5 (store/rekey.py), as for SQLite; the per-session counters follow."""
    from tests.support.rekey_case import check_upgraded, write_v4_store

    schema = parse_url(url)[1]
    with store_mod.open(url) as store, raw(url) as conn:
        def run(sql: str, params: tuple) -> list:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

        write_v4_store(store, run, "%s", f'"{schema}".')
        conn.execute(f'DELETE FROM "{schema}".session_seq')
        conn.execute(f'INSERT INTO "{schema}".session_seq (session_key, next_seq, max_order_us) SELECT session_key,'
                     f' MAX(seq) + 1, MAX(order_us) FROM "{schema}".traces GROUP BY session_key')
        conn.execute(f'DELETE FROM "{schema}".schema_version WHERE version = 5')
    with store_mod.open(url) as store:
        check_upgraded(store)
