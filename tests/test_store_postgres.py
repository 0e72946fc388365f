"""PostgreSQL trace store against a real server (tests/pg.py starts it): the SQLite store's
contract (exactly once, gap-free seq, packed arrays, uid lookup, read-back), plus what only
several processes on one server show: concurrent migrations, seq across writers, reconnects."""

from __future__ import annotations

import multiprocessing
import struct
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest

import litellm_rllm.store as store_mod
from litellm_rllm.store import CorruptTraceError, TraceEncodeError
from litellm_rllm.writer import TraceWriter
from litellm_rllm.trace import TopLogprob, Trace, TraceChoice
from tests.pg import PgServer, unique_schema, with_schema

psycopg = pytest.importorskip("psycopg")

from litellm_rllm.store.postgres import (  # noqa: E402
    SCHEMA_VERSION,
    PostgresStore,
    migrate,
    parse_url,
    redact,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def make(trace_id: str, session: str | None = "s", *, uids: list[str] | None = None, **kw: Any) -> Trace:
    return Trace(
        trace_id=trace_id,
        session_id=session,
        session_uids=uids if uids is not None else ([session] if session else []),
        created_at=kw.pop("created_at", T0),
        **kw,
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


# ------------------------------------------------------------------------------ round trip


def test_full_trace_round_trips_through_a_fresh_connection(url: str) -> None:
    from tests.test_store_sqlite import full_trace

    original = full_trace()
    expected = original.model_copy(deep=True)
    expected.seq = 0
    c0 = expected.choices[0]
    c0.logprobs = [f32(v) for v in c0.logprobs or []]
    for pos in c0.top_logprobs or []:
        for alt in pos:
            alt.logprob = f32(alt.logprob)
    with store_mod.open(url) as writer:
        writer.write([original])
    with store_mod.open(url) as reader:
        assert reader.get("chatcmpl-full") == expected
        assert reader.traces(session="outer") == [expected]
        assert reader.traces(session="inner") == [expected]


def test_token_arrays_are_stored_packed_in_bytea_not_json(store: PostgresStore, url: str) -> None:
    n = 1000
    trace = make("packed", prompt_token_ids=list(range(10)),
                 choices=[TraceChoice(index=0, token_ids=list(range(n)), logprobs=[-0.5] * n)])
    store.write([trace])
    with raw(url) as conn:
        doc, arrays, detail = conn.execute(
            f'SELECT doc, arrays, detail FROM "{store.schema}".traces WHERE trace_id = %s', ("packed",)
        ).fetchone()
    assert len(arrays) == 5 + 4 * 4 + 4 * 10 + 8 * n
    assert "token_ids" not in doc and "999" not in doc
    assert detail is None


def test_top_logprobs_and_bare_traces_round_trip(store: PostgresStore) -> None:
    top = [[TopLogprob(token=f"t{j}", logprob=-0.25 * j, token_id=j)] for j in range(3)] + [[]]
    store.write([
        make("top", choices=[TraceChoice(index=0, top_logprobs=top, tokens=["a", "b", "c", "d"])]),
        make("bare", None, choices=[TraceChoice(index=0, message={"content": "x"})]),
    ])
    got = store.get("top")
    assert got is not None and got.choices[0].top_logprobs == top
    bare = store.get("bare")
    assert bare is not None and bare.prompt_token_ids is None and bare.session_key() == ""


def test_corrupt_arrays_blob_is_reported_not_misread(store: PostgresStore, url: str) -> None:
    store.write([make("c", choices=[TraceChoice(index=0, token_ids=[1, 2, 3])])])
    with raw(url) as conn:
        conn.execute(f'UPDATE "{store.schema}".traces SET arrays = substring(arrays from 1 for 10)')
    with pytest.raises(CorruptTraceError):
        store.get("c")


def test_unencodable_trace_raises_and_writes_nothing(store: PostgresStore) -> None:
    good, bad = make("good"), make("bad", metadata={"obj": object()})
    with pytest.raises(TraceEncodeError) as info:
        store.write([good, bad])
    assert set(info.value.errors) == {"bad"}
    assert store.count() == 0 and good.seq is None


# ------------------------------------------------------------------------------ exactly once, seq


def test_duplicate_trace_id_is_not_a_second_row_and_consumes_no_seq(store: PostgresStore) -> None:
    first = store.write([make("a"), make("b")])
    again = store.write([make("a", metadata={"changed": True}), make("c")])
    within = store.write([make("d"), make("d")])
    assert [t.seq for t in first] == [0, 1]
    assert [(t.trace_id, t.seq, t.metadata) for t in again] == [("a", 0, {}), ("c", 2, {})]
    assert again.duplicates == ["a"]
    assert [t.seq for t in within] == [3, 3] and within.duplicates == ["d"]
    assert store.count() == 4
    assert [t.seq for t in store.traces(session="s")] == [0, 1, 2, 3]


def test_seq_is_per_session_in_write_order_across_batches(store: PostgresStore) -> None:
    keys = ["x", "y", "x", "", "z-only-uid", "x", "y", ""]
    batch = []
    for i, key in enumerate(keys):
        if key == "z-only-uid":
            batch.append(make(f"t{i}", None, uids=["outer", "z-only-uid"]))
        else:
            batch.append(make(f"t{i}", key or None))
    store.write(batch[:3])
    store.write(batch[3:])
    seqs = {t.trace_id: (t.session_key(), t.seq) for t in store.traces()}
    assert seqs == {
        "t0": ("x", 0), "t1": ("y", 0), "t2": ("x", 1), "t3": ("", 0),
        "t4": ("z-only-uid", 0), "t5": ("x", 2), "t6": ("y", 1), "t7": ("", 1),
    }
    assert [t.trace_id for t in store.traces()] == [f"t{i}" for i in range(8)]


def test_same_id_under_another_session_key_is_a_duplicate_and_leaves_no_gap(store: PostgresStore) -> None:
    store.write([make("same", "s1")])
    result = store.write([make("same", "s2"), make("other", "s2")])
    assert result.duplicates == ["same"] and result[0].session_id == "s1"
    assert [t.seq for t in store.traces(session="s2")] == [0]


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
    assert versions == [(SCHEMA_VERSION,)]


def test_values_postgres_cannot_index_are_stored_and_found(store: PostgresStore) -> None:
    """A NUL character (text cannot hold it) or a value past a btree entry's size limit in the
    session id, a uid or the trace id must not make a batch unwritable."""
    long_sid = "s" * 5000
    nul_sid = "a\x00b"
    long_id = "id-" + "x" * 4000
    result = store.write([
        make("n1", nul_sid, uids=["outer", nul_sid]),
        make("l1", long_sid, uids=["outer", long_sid]),
        make(long_id, long_sid),
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


def test_lookup_by_outer_uid_returns_the_nested_sessions_traces(store: PostgresStore) -> None:
    store.write([
        make("o1", None, uids=["outer"]),
        make("i1", "inner-a", uids=["outer", "inner-a"]),
        make("other", "elsewhere"),
        make("i2", None, uids=["outer", "inner-b"]),
        make("i3", "inner-a", uids=["outer", "inner-a"]),
    ])
    assert [t.trace_id for t in store.traces(session="outer")] == ["o1", "i1", "i2", "i3"]
    assert [t.trace_id for t in store.traces(session="inner-a")] == ["i1", "i3"]
    assert [t.seq for t in store.traces(session="inner-a")] == [0, 1]
    assert store.traces(session="nope") == []


def test_since_limit_paging_and_sessions(store: PostgresStore) -> None:
    times = [T0 + timedelta(minutes=m) for m in (0, 10, 5, 20)]
    store.write([make(f"t{i}", created_at=t) for i, t in enumerate(times)])
    cut = T0 + timedelta(minutes=5)
    assert [t.trace_id for t in store.traces(since=cut)] == ["t1", "t2", "t3"]
    assert [t.trace_id for t in store.traces(since="2025-03-01T12:05:00Z")] == ["t1", "t2", "t3"]
    assert [t.trace_id for t in store.traces(session="s", since=cut)] == ["t1", "t2", "t3"]
    assert store.traces(since=T0 + timedelta(days=1)) == []

    for start in range(0, 600, 100):
        store.write([make(f"p{i:04d}", f"s{i % 3}" if i % 3 else None) for i in range(start, start + 100)])
    assert [t.trace_id for t in store.traces()][4:] == [f"p{i:04d}" for i in range(600)]
    assert len(store.traces(limit=300)) == 300
    assert [t.seq for t in store.traces(session="s1")] == list(range(200))
    assert [t.seq for t in store.traces(session="")] == list(range(200))
    assert store.traces(limit=0) == []
    summaries = {s.session_id: s for s in store.sessions()}
    assert (summaries["s"].traces, summaries["s"].first_seq, summaries["s"].last_seq) == (4, 0, 3)
    assert summaries["s1"].statuses == {"ok": 200}
    assert store.count() == 604


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
        assert tables == {"traces", "trace_uids", "session_seq", "schema_version"}
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


def test_closed_store_refuses_work_and_close_is_idempotent(store: PostgresStore) -> None:
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.count()


# ------------------------------------------------------------------------------ restarts


@pytest.fixture()
def own_server() -> Iterator[PgServer]:
    """A server of this test's own, to stop and start without disturbing the others."""
    from tests.pg import start_server_or_skip

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
    try:
        for i in range(10):
            writer.submit(make(f"before-{i}", "r"))
        assert writer.flush(10)
        own_server.stop()
        for i in range(10):
            writer.submit(make(f"during-{i}", "r"))
        assert writer.flush(10)  # durable: in the spool
        stats = writer.stats()
        assert stats["spool_pending"] == 10 and stats["failed"] == 0
        with pytest.raises(psycopg.OperationalError):
            store.count()
        own_server.start()
        assert store.count() in (10, 20)  # reads reconnect by themselves
        writer.submit(make("after-0", "r"))
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
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
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
