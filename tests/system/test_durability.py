"""Durability: the writer's spool (unit), then real `litellm --config` proxies under load:
two proxies on one PostgreSQL store, a PostgreSQL outage mid-load, SIGTERM mid-load, and two
proxies on one SQLite file.

The load comes from a separate process (``python -m tests.system.test_durability load ...``), which
writes one JSON line per answered call; every answered call must have exactly one trace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import httpx
import pytest

from litellm_rllm import slug as slugs
from litellm_rllm import store as store_mod
from litellm_rllm.store import SqliteStore
from litellm_rllm.writer import TraceWriter
from litellm_rllm.store.base import EncodedWriteResult
from litellm_rllm.store.codec import EncodedTrace
from litellm_rllm.writer.spool import Spool, encode_record
from litellm_rllm.trace import Trace, TraceChoice
from tests.support import harness

FAST = (0.01, 0.01)


def make(trace_id: str, session: str = "s", **kw: Any) -> Trace:
    return Trace(trace_id=trace_id, session_id=session, **kw)


class SwitchStore(SqliteStore):
    """A SQLite store that can be switched off (writes raise, like a server that is down)
    or slowed down."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.down = False
        self.delay = 0.0
        self.calls = 0

    def write_encoded(self, traces: Sequence[EncodedTrace]) -> EncodedWriteResult:
        self.calls += 1
        if self.down:
            raise ConnectionError("store is down")
        if self.delay:
            time.sleep(self.delay)
        return super().write_encoded(traces)


@pytest.fixture()
def db(tmp_path: Path) -> str:
    return str(tmp_path / "traces.db")


def read_back(db: str, **query: Any) -> list[Trace]:
    with SqliteStore(db) as reader:
        return reader.traces(**query)


# ====================================================================================== spool


def test_down_store_spools_fsynced_batches_and_replays_them_in_order(db: str, tmp_path: Path) -> None:
    store = SwitchStore(db)
    writer = TraceWriter(store, retry_delays=FAST, spool=str(tmp_path / "spool"), probe_interval=0.05,
                         close_at_exit=False)
    try:
        writer.submit(make("t0"))
        assert writer.flush(10)
        store.down = True
        for i in range(1, 30):
            assert writer.submit(make(f"t{i}"))
        assert writer.flush(10)  # durable in the spool
        stats = writer.stats()
        assert (stats["written"], stats["spooled"], stats["spool_pending"], stats["failed"]) == (1, 29, 29, 0)
        spool_file = tmp_path / "spool" / "spool-0.rllm"
        assert spool_file.stat().st_size == stats["spool_bytes"] > 0
        store.down = False
        writer.submit(make("t30"))  # goes behind the spooled ones
        assert writer.flush(10)
        stats = writer.stats()
        # t30 went behind the spooled ones (or straight in, had a probe already replayed them)
        assert (stats["written"], stats["spool_pending"]) == (31, 0)
        assert stats["replayed"] == stats["spooled"] in (29, 30)
        assert spool_file.stat().st_size == 0  # emptied once replayed
        traces = read_back(db, session="s")
        assert [t.trace_id for t in traces] == [f"t{i}" for i in range(31)]
        assert [t.seq for t in traces] == list(range(31))
    finally:
        writer.close()
        store.close()


def test_a_growing_session_spooled_while_the_store_is_down_is_replayed_parents_first_and_compacted(
        db: str, tmp_path: Path) -> None:
    from tests.support.store_contract import agent_session, as_read

    traces = agent_session("grow", 10, step=100)
    store = SwitchStore(db)
    writer = TraceWriter(store, retry_delays=FAST, spool=str(tmp_path / "spool"), probe_interval=0.05,
                         close_at_exit=False)
    try:
        for trace in traces[:3]:
            writer.submit(trace.model_copy(deep=True))
            assert writer.flush(10)
        store.down = True
        for trace in traces[3:]:
            writer.submit(trace.model_copy(deep=True))
        assert writer.flush(10) and writer.stats()["spool_pending"] == 7
        store.down = False
        assert harness.wait_for(lambda: writer.flush(10) and writer.stats()["spool_pending"] == 0, 10)
        assert [t.model_dump_json() for t in read_back(db, session="grow")] == as_read(traces)
        with sqlite3.connect(db) as raw:
            bases = raw.execute("SELECT base_id FROM traces ORDER BY id").fetchall()
        assert bases == [(None,)] + [(f"grow-{k}",) for k in range(9)]  # each call stores what it adds
    finally:
        writer.close()
        store.close()


def test_store_that_cannot_be_opened_spools_and_replays_once_it_can(db: str, tmp_path: Path) -> None:
    available = threading.Event()

    def factory() -> SqliteStore:
        if not available.is_set():
            raise OSError("database server not reachable")
        return SqliteStore(db)

    writer = TraceWriter(factory, retry_delays=FAST, spool=str(tmp_path / "spool"), probe_interval=0.05,
                         close_at_exit=False)
    try:
        for i in range(5):
            writer.submit(make(f"a{i}"))
        assert writer.flush(10)
        assert writer.stats()["spool_pending"] == 5
        available.set()
        deadline = time.monotonic() + 10  # the idle probe replays without a flush
        while writer.stats()["spool_pending"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [t.seq for t in read_back(db)] == list(range(5))
    finally:
        writer.close()


def test_full_spool_holds_traces_in_memory_up_to_the_bound_then_counts_and_logs_losses(
    db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SwitchStore(db)
    store.down = True
    writer = TraceWriter(store, retry_delays=FAST, batch_size=1, max_queue=4, spool=str(tmp_path / "spool"),
                         spool_max_bytes=1500, probe_interval=0.05, close_at_exit=False)
    try:
        for i in range(10):
            writer.submit(make(f"big-{i}", metadata={"pad": "x" * 400}))
            assert writer.flush(10)
        stats = writer.stats()
        assert stats["spooled"] >= 1 and stats["held"] == 4, stats
        assert stats["spooled"] + stats["held"] + stats["dropped"] == 10 and stats["failed"] == 0
        assert (tmp_path / "spool" / "spool-0.rllm").stat().st_size <= 1500
        assert "spool" in caplog.text and "full" in caplog.text and "held in memory" in caplog.text
        assert writer.take_lost() == stats["dropped"] > 0 and writer.take_lost() == 0  # each loss once
        assert writer.pending_for("s") == stats["spooled"] + stats["held"]
        store.down = False  # the store is back: the spool, then the held batches, in order
        assert writer.flush(10)
        stats = writer.stats()
        assert (stats["held"], stats["spool_pending"], stats["written"]) == (0, 0, 10 - stats["dropped"]), stats
        kept = [t.trace_id for t in read_back(db)]
        assert kept == sorted(kept, key=lambda x: int(x.split("-")[1])) and len(kept) == 10 - stats["dropped"]
        assert writer.pending_for("s") == 0
    finally:
        writer.close()
        store.close()


def test_slow_store_sends_the_backlog_to_the_spool_and_keeps_order(db: str, tmp_path: Path) -> None:
    store = SwitchStore(db)
    store.delay = 0.05
    writer = TraceWriter(store, batch_size=4, spool=str(tmp_path / "spool"), spool_backlog=8,
                         drain_budget=0.1, close_at_exit=False)
    try:
        for i in range(200):
            writer.submit(make(f"s{i:03d}", "slow"))
        assert writer.flush(60)
        stats = writer.stats()
        assert stats["spooled"] > 0, stats
        deadline = time.monotonic() + 60
        while writer.stats()["spool_pending"] and time.monotonic() < deadline:
            writer.flush(5)
        traces = read_back(db, session="slow")
        assert [t.trace_id for t in traces] == [f"s{i:03d}" for i in range(200)]
        assert [t.seq for t in traces] == list(range(200))
    finally:
        writer.close()
        store.close()


def test_spool_left_by_a_dead_process_is_replayed_by_the_next_one(db: str, tmp_path: Path) -> None:
    folder = str(tmp_path / "spool")
    dead = Spool(folder)  # "the previous process": its slot file keeps two batches
    assert dead.append([make("old-0", "x"), make("old-1", "x")])
    assert dead.append([make("old-2", "x")])
    dead.close()
    # a torn third record: the process died while writing it
    with open(os.path.join(folder, "spool-0.rllm"), "ab") as f:
        f.write(encode_record([make("torn", "x")])[:-3])
    writer = TraceWriter(lambda: SqliteStore(db), spool=folder, close_at_exit=False)
    try:
        writer.submit(make("new-0", "x"))
        assert writer.flush(10)
        assert [t.trace_id for t in read_back(db, session="x")] == ["old-0", "old-1", "old-2", "new-0"]
        stats = writer.stats()
        assert (stats["adopted"], stats["written"], stats["spool_pending"]) == (3, 1, 0)
    finally:
        writer.close()


def test_orphaned_spool_of_another_slot_is_adopted_and_a_live_one_is_left_alone(db: str, tmp_path: Path) -> None:
    folder = str(tmp_path / "spool")
    live = Spool(folder)  # slot 0, held (like a running worker)
    assert live.append([make("live-0", "live")])
    orphan = Spool(folder)  # slot 1, then its process "dies"
    assert orphan.append([make("orphan-0", "o"), make("orphan-1", "o")])
    orphan.close()
    writer = TraceWriter(lambda: SqliteStore(db), spool=folder, close_at_exit=False)
    try:
        assert writer.spool is not None and writer.spool.slot == 1  # the first free slot
        assert writer.flush(10)
        assert [t.trace_id for t in read_back(db)] == ["orphan-0", "orphan-1"]
        assert live.pending_traces == 1  # still owned by its live process: not touched
    finally:
        writer.close()
        live.close()


def test_replaying_twice_after_a_crash_stores_each_trace_once(db: str, tmp_path: Path) -> None:
    """A crash between the store's commit and the spool's truncation replays again: the store's
    exactly-once makes that harmless."""
    folder = str(tmp_path / "spool")
    spool = Spool(folder)
    batch = [make(f"r{i}", "r") for i in range(5)]
    spool.append(batch)
    spool.close()
    with SqliteStore(db) as s:
        s.write([make(f"r{i}", "r") for i in range(3)])  # the first replay got this far
    writer = TraceWriter(lambda: SqliteStore(db), spool=folder, close_at_exit=False)
    try:
        assert writer.flush(10)
    finally:
        writer.close()
    assert [t.trace_id for t in read_back(db)] == [f"r{i}" for i in range(5)]
    assert writer.stats()["adopted"] == 5


def test_close_with_the_store_down_leaves_everything_in_the_spool(db: str, tmp_path: Path) -> None:
    store = SwitchStore(db)
    store.down = True
    folder = str(tmp_path / "spool")
    writer = TraceWriter(store, retry_delays=FAST, spool=folder, close_at_exit=False)
    for i in range(7):
        writer.submit(make(f"c{i}"))
    assert writer.close(10)
    store.close()
    again = Spool(folder)
    try:
        assert again.pending_traces == 7
    finally:
        again.close()


# ====================================================================================== load


def _answer_line(session: str, index: int, resp: httpx.Response, base: str) -> dict[str, Any]:
    return {"session": session, "index": index, "status": resp.status_code, "proxy": base,
            "call_id": resp.headers.get("x-litellm-call-id"), "t": time.time()}


async def _load(args: argparse.Namespace) -> None:
    bases = args.base_urls.split(",")
    key = os.environ["LITELLM_MASTER_KEY"]
    out = open(args.out, "a", buffering=1)
    stop_at = time.monotonic() + args.duration if args.duration else None
    stop_file = Path(args.stop_file) if args.stop_file else None
    sem = asyncio.Semaphore(args.concurrency)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    async with httpx.AsyncClient(timeout=args.timeout, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:

        async def session(s: int) -> None:
            sid = f"{args.prefix}-{s}"
            slug = slugs.encode({"session_id": sid})
            index = 0
            while True:
                if args.calls and index >= args.calls:
                    return
                if stop_at is not None and time.monotonic() > stop_at:
                    return
                if stop_file is not None and stop_file.exists():
                    return
                if args.split == "alternate":
                    base = bases[index % len(bases)]
                else:  # pinned: one proxy per session
                    base = bases[s % len(bases)]
                body = {"model": args.model, "messages": [{"role": "user", "content": f"{sid} call {index}"}]}
                async with sem:
                    try:
                        resp = await client.post(f"{base}/meta/{slug}/v1/chat/completions", json=body)
                    except httpx.HTTPError as exc:
                        out.write(json.dumps({"session": sid, "index": index, "error": repr(exc)[:200],
                                              "t": time.time()}) + "\n")
                        if args.stop_on_error:
                            return
                        await asyncio.sleep(0.2)
                        index += 1
                        continue
                out.write(json.dumps(_answer_line(sid, index, resp, base)) + "\n")
                index += 1
                if args.interval:
                    await asyncio.sleep(args.interval)

        await asyncio.gather(*(session(s) for s in range(args.sessions)))
    out.close()


def load_main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.system.test_durability load")
    p.add_argument("--base-urls", required=True)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--calls", type=int, default=0, help="per session; 0 = until --duration / --stop-file")
    p.add_argument("--duration", type=float, default=0)
    p.add_argument("--stop-file", default=None)
    p.add_argument("--interval", type=float, default=0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--split", choices=("pinned", "alternate"), default="pinned")
    p.add_argument("--model", default="policy")
    p.add_argument("--prefix", default="load")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--stop-on-error", action="store_true")
    p.add_argument("--out", required=True)
    asyncio.run(_load(p.parse_args(argv)))


def start_load(out: Path, *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tests.system.test_durability", "load", "--out", str(out), *args]
    env = harness.proxy_env()
    return subprocess.Popen(cmd, cwd=str(harness.REPO), env=env, stdout=subprocess.DEVNULL,
                            stderr=open(str(out) + ".err", "wb"))


def answers(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    lines = []
    for line in out.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return lines


def flush_proxy(base_url: str, timeout: float = 60.0) -> dict[str, Any]:
    resp = httpx.post(base_url + "/rllm/flush", headers=harness.auth(), timeout=timeout + 10,
                      params={"timeout": timeout})
    assert resp.status_code == 200, resp.text
    return resp.json()


def check_answers_have_traces(store_url: str, answered: list[dict[str, Any]], *,
                              in_call_order: bool = True) -> dict[str, list[Trace]]:
    """Every answered call has exactly one trace; per session seq is 0..n-1 (and, where the
    calls of a session went through one proxy, in call order)."""
    st = store_mod.open(store_url)
    try:
        traces = st.traces()
    finally:
        st.close()
    ids = [t.trace_id for t in traces]
    assert len(ids) == len(set(ids)), "a trace id is stored twice"
    by_content: dict[str, Trace] = {}
    for t in traces:
        content = t.request["messages"][0]["content"]
        assert content not in by_content, f"two traces for one call: {content}"
        by_content[content] = t
    sessions: dict[str, list[Trace]] = {}
    for t in traces:
        sessions.setdefault(t.session_id or "", []).append(t)
    for sid, items in sessions.items():
        items.sort(key=lambda t: t.seq)  # the store's read is in write order; seq is session order
        assert [t.seq for t in items] == list(range(len(items))), sid
    missing = []
    for a in answered:
        if a.get("status") != 200:
            continue
        t = by_content.get(f"{a['session']} call {a['index']}")
        if t is None:
            missing.append(a)
            continue
        assert t.status == "ok" and t.choices[0].token_ids and t.choices[0].logprobs
        if a.get("call_id"):
            assert t.trace_id == a["call_id"]
    assert not missing, f"{len(missing)} answered calls have no trace, e.g. {missing[:3]}"
    if in_call_order:
        for sid in {a["session"] for a in answered}:
            items = sessions.get(sid, [])
            idx = [int(t.request["messages"][0]["content"].rsplit(" ", 1)[1]) for t in items]
            assert idx == sorted(idx), f"session {sid}: seq order is not call order: {idx}"
    return sessions


@pytest.fixture()
def proxy_dir(tmp_path: Path) -> Path:
    return tmp_path


def pg_config(folder: Path, upstream_urls: dict[str, str], store_url: str, **extra: Any) -> Path:
    return harness.write_config(folder, upstreams=upstream_urls, store_url=store_url,
                                extra_settings={"spool_dir": "spool", **extra})


def _proxies(config: Path, n: int) -> list[harness.ProxyProcess]:
    procs = [harness.ProxyProcess(config) for _ in range(n)]  # start together: they race to migrate
    try:
        for p in procs:
            p.wait_ready()
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs


# ====================================================================================== proxies


def test_two_proxies_on_one_postgres_store_100_sessions_of_10_calls(
    pg_server: Any, upstream_urls: dict[str, str], proxy_dir: Path, vllm_upstream: Any
) -> None:
    from tests.support.pg import unique_schema, with_schema

    store_url = with_schema(pg_server.url(), unique_schema("two"))
    config = pg_config(proxy_dir, upstream_urls, store_url)
    procs = _proxies(config, 2)
    try:
        bases = ",".join(p.base_url for p in procs)
        out = proxy_dir / "pinned.jsonl"
        load = start_load(out, "--base-urls", bases, "--sessions", "50", "--calls", "10",
                          "--concurrency", "50", "--split", "pinned", "--prefix", "pin")
        out2 = proxy_dir / "alternate.jsonl"
        load2 = start_load(out2, "--base-urls", bases, "--sessions", "50", "--calls", "10",
                           "--concurrency", "50", "--split", "alternate", "--prefix", "alt")
        assert load.wait(300) == 0 and load2.wait(300) == 0, (out.with_suffix(".jsonl.err").read_text())
        answered = answers(out) + answers(out2)
        assert len(answered) == 1000 and all(a.get("status") == 200 for a in answered)
        assert {a["proxy"] for a in answered} == {p.base_url for p in procs}
        # The flush barrier, then read-back through a proxy right after the burst.
        for p in procs:
            flush_proxy(p.base_url)
        for sid in ("pin-7", "alt-7"):
            r = httpx.get(f"{procs[0].base_url}/rllm/sessions/{sid}/traces", headers=harness.auth(), timeout=60)
            assert r.status_code == 200
            body = r.json()
            assert body["count"] == 10 and [t["seq"] for t in body["traces"]] == list(range(10))
        # Without a key: refused (the exact status: test_rllm_routes_without_a_key_answer_401).
        no_key = httpx.get(f"{procs[1].base_url}/rllm/sessions/pin-7/traces", timeout=30)
        assert no_key.status_code >= 400 and "pin-7 call" not in no_key.text
        assert httpx.post(procs[1].base_url + "/rllm/flush", timeout=30).status_code >= 400
    finally:
        for p in procs:
            p.stop()
    sessions = check_answers_have_traces(store_url, answers(out), in_call_order=True)
    assert len([s for s in sessions if s.startswith("pin-")]) == 50
    # Sessions whose calls alternate between the proxies: every call once, seq 0..9 gap-free,
    # in call order (session order is call start, not commit order: tests/system/test_fleet.py).
    sessions = check_answers_have_traces(store_url, answers(out2), in_call_order=True)
    alt = {s: v for s, v in sessions.items() if s.startswith("alt-")}
    assert len(alt) == 50 and all(len(v) == 10 for v in alt.values())
    assert sum(len(v) for v in sessions.values()) == 1000


def test_postgres_down_for_20s_mid_load_every_call_served_and_stored_once(
    upstream_urls: dict[str, str], proxy_dir: Path, vllm_upstream: Any
) -> None:
    from tests.support.pg import start_server_or_skip

    server = start_server_or_skip()  # this test's own: it is stopped for 20 s
    try:
        server.create_database()
        store_url = server.url()
        config = pg_config(proxy_dir, upstream_urls, store_url)
        [proxy] = _proxies(config, 1)
        try:
            out = proxy_dir / "outage.jsonl"
            stop_file = proxy_dir / "stop-load"
            load = start_load(out, "--base-urls", proxy.base_url, "--sessions", "20", "--interval", "0.05",
                              "--stop-file", str(stop_file), "--concurrency", "20", "--prefix", "out")
            time.sleep(4)
            before = len(answers(out))
            server.stop()
            down_at = time.monotonic()
            time.sleep(10)
            mid = httpx.get(proxy.base_url + "/rllm/stats", headers=harness.auth(), timeout=30).json()["writer"]
            time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))
            during = len(answers(out)) - before
            server.start()
            time.sleep(3)
            stop_file.touch()
            assert load.wait(120) == 0
            result = flush_proxy(proxy.base_url)
            writer = result["writer"]
        finally:
            proxy.stop()
        answered = answers(out)
        assert answered and all(a.get("status") == 200 for a in answered), [a for a in answered if a.get("status") != 200][:3]
        assert during > 100, "the load did not run through the outage"
        assert mid["spool_pending"] > 0 and mid["failed"] == 0, mid
        assert writer["spool_pending"] == 0 and writer["failed"] == 0 and writer["dropped"] == 0, writer
        assert writer["replayed"] >= mid["spool_pending"]
        check_answers_have_traces(store_url, answered, in_call_order=True)
        print(f"[outage] {len(answered)} calls answered, {during} during the 20 s outage; "
              f"spooled {writer['spooled']}, replayed {writer['replayed']}; mid-outage: {mid}")
    finally:
        server.destroy()


def test_sigterm_mid_load_every_answered_call_has_its_trace(
    pg_server: Any, upstream_urls: dict[str, str], proxy_dir: Path, vllm_upstream: Any
) -> None:
    from tests.support.pg import unique_schema, with_schema

    store_url = with_schema(pg_server.url(), unique_schema("term"))
    config = pg_config(proxy_dir, upstream_urls, store_url)
    [proxy] = _proxies(config, 1)
    out = proxy_dir / "sigterm.jsonl"
    try:
        load = start_load(out, "--base-urls", proxy.base_url, "--sessions", "40", "--duration", "60",
                          "--concurrency", "40", "--prefix", "term", "--stop-on-error")
        deadline = time.monotonic() + 60
        while len(answers(out)) < 300 and time.monotonic() < deadline:
            time.sleep(0.1)
        # Hold the writers off the store for a moment around the signal, so the writer still
        # has a queue of answered calls when uvicorn finishes its graceful shutdown: they are
        # lost unless the writer is flushed before the process exits (uvicorn re-raises
        # SIGTERM after its shutdown, so atexit alone would not run).
        import psycopg

        from litellm_rllm.store.postgres import parse_url

        conninfo, schema = parse_url(store_url)
        with psycopg.connect(conninfo) as blocker:
            blocker.execute(f'LOCK TABLE "{schema}".session_seq IN SHARE ROW EXCLUSIVE MODE')
            time.sleep(1.5)
            held = len(answers(out))
            proxy.proc.send_signal(signal.SIGTERM)
            time.sleep(2.0)
            assert proxy.proc.poll() is None, "the proxy exited without waiting for its writer"
            blocker.rollback()
        code = proxy.proc.wait(90)
        assert load.wait(120) == 0
    finally:
        log = proxy.log()
        proxy.stop()
    assert code in (0, -signal.SIGTERM), log[-3000:]  # uvicorn re-raises SIGTERM after its graceful shutdown
    answered = [a for a in answers(out) if a.get("status") == 200]
    assert len(answered) >= held >= 300
    check_answers_have_traces(store_url, answered, in_call_order=True)
    assert "not yet durable" not in log


def test_two_proxies_on_one_sqlite_file(upstream_urls: dict[str, str], proxy_dir: Path, vllm_upstream: Any) -> None:
    store_url = f"sqlite:///{proxy_dir / 'shared.db'}"
    config = harness.write_config(proxy_dir, upstreams=upstream_urls, store_url=store_url)
    procs = _proxies(config, 2)
    try:
        bases = ",".join(p.base_url for p in procs)
        out = proxy_dir / "sqlite.jsonl"
        load = start_load(out, "--base-urls", bases, "--sessions", "40", "--calls", "10",
                          "--concurrency", "40", "--split", "pinned", "--prefix", "sq")
        assert load.wait(300) == 0
        for p in procs:
            flush_proxy(p.base_url)
    finally:
        for p in procs:
            p.stop()
    answered = answers(out)
    assert len(answered) == 400 and all(a.get("status") == 200 for a in answered)
    sessions = check_answers_have_traces(store_url, answered, in_call_order=True)
    assert len(sessions) == 40 and all(len(v) == 10 for v in sessions.values())


def test_rllm_routes_without_a_key_answer_401(upstream_urls: dict[str, str], proxy_dir: Path) -> None:
    config = harness.write_config(proxy_dir, upstreams=upstream_urls, store_url=f"sqlite:///{proxy_dir / 't.db'}")
    with harness.ProxyProcess(config) as proc:
        statuses = [
            httpx.post(proc.base_url + "/rllm/flush", timeout=30).status_code,
            httpx.get(proc.base_url + "/rllm/sessions/x/traces", timeout=30).status_code,
            httpx.post(proc.base_url + "/rllm/flush", headers={"Authorization": "Bearer sk-wrong"},
                       timeout=30).status_code,
        ]
    assert statuses == [401, 401, 401]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        load_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m tests.system.test_durability load --base-urls URL[,URL] --out FILE ...")
