"""Store faults under load (issue 21): each test drives a `litellm --config` proxy with the three
callbacks and a fake vLLM upstream, every request carrying a marker (its session and index in
the message) matched between the client's answers and the stored traces. After the fault ends:
every answered call is in the store exactly once (or its loss is within the stated bound,
counted and logged), the proxy served every request, and the flush told the truth throughout.

The load is ``python -m tests.system.test_durability load`` (one JSON line per answer)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import faults, harness
from tests.system.test_durability import answers, start_load

LOAD = ("--sessions", "8", "--interval", "0.05", "--concurrency", "8")


def sqlite_proxy(folder: Path, upstream_urls: dict[str, str], db: Path, **settings: Any) -> harness.ProxyProcess:
    config = harness.write_config(folder, upstreams=upstream_urls, store_url=f"sqlite:///{db}",
                                  extra_settings=settings)
    return harness.ProxyProcess(config).wait_ready()


def run_load(folder: Path, proxy: harness.ProxyProcess, prefix: str) -> tuple[Any, Path, Path]:
    out, stop = folder / f"{prefix}.jsonl", folder / f"{prefix}.stop"
    load = start_load(out, "--base-urls", proxy.base_url, "--stop-file", str(stop), "--prefix", prefix, *LOAD)
    return load, out, stop


def wait_answers(out: Path, n: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while len(answers(out)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(answers(out))


def stop_load(load: Any, stop: Path) -> None:
    stop.touch()
    assert load.wait(120) == 0


def all_served(out: Path) -> list[dict[str, Any]]:
    answered = answers(out)
    bad = [a for a in answered if a.get("status") != 200]
    assert answered and not bad, f"{len(bad)} requests not served, e.g. {bad[:3]}"
    return answered


# ====================================================================================== 1 disk full


@pytest.mark.parametrize("max_queue", [100_000, 30], ids=["within-bound", "past-bound"])
def test_disk_full_under_load_traces_land_after_space_returns_and_losses_are_reported(
    tmp_path: Path, upstream_urls: dict[str, str], vllm_upstream: Any, max_queue: int
) -> None:
    """An 8 MiB volume holding the SQLite file and the spool fills up mid-load. While it is full
    the writer holds traces in memory (the spool is on the same disk); the flush says 503 with
    the count, or 409 with the number lost once more than ``writer_max_queue`` waited. When the
    space comes back everything held lands, the checkpointer resumes and the WAL shrinks."""
    with faults.small_disk(tmp_path / "vol") as vol:
        db = vol / "traces.db"
        proxy = sqlite_proxy(tmp_path, upstream_urls, db, writer_max_queue=max_queue)
        try:
            load, out, stop = run_load(tmp_path, proxy, "full")
            wait_answers(out, 20)
            filler = faults.fill_disk(vol)
            full_at = len(answers(out))
            with faults.FlushWatch(proxy.base_url, interval=1.0) as watch:
                time.sleep(6)
                during = faults.writer_stats(proxy.base_url)
                os.unlink(filler)  # the space is back
                recovery = faults.flush_until_200(proxy.base_url, timeout=40)
            stop_load(load, stop)
            final_status, final = faults.flush(proxy.base_url)
            log = proxy.log()
        finally:
            proxy.stop()
        answered = all_served(out)
        assert len(answered) - full_at > 40, "the load did not run through the fault"
        statuses = watch.statuses() + [s for s, _ in recovery]
        assert during["held"] + during["spool_pending"] > 0 or during["lost"] > 0, during
        assert 503 in statuses or 409 in statuses, statuses
        assert final_status == 200 and final["writer"]["held"] == 0 and final["spooled"] == 0, final
        if "checkpoint failed" in log:  # it kept trying, and said when it worked again
            assert "checkpoints work again" in log and "checkpointer" in log and "stopped" not in log
        wal = db.with_name("traces.db-wal")
        assert not wal.exists() or wal.stat().st_size <= 4 * 1024 * 1024 + 65536
        lost = final["lost_total"]
        if max_queue == 100_000:
            assert lost == 0 and 409 not in statuses, (lost, statuses)
            faults.check_stored_once(f"sqlite:///{db}", answered)
        else:
            assert lost > 0 and 409 in statuses, (lost, statuses)
            reported = sum(body.get("lost", 0) for _, s, body in watch.answers if s == 409) + \
                sum(body.get("lost", 0) for s, body in [*recovery, (final_status, final)] if s == 409)
            assert reported == lost  # each loss reported once, by one flush
            missing = faults.check_stored_once(f"sqlite:///{db}", answered, may_miss=lambda a: True)
            assert len(missing) == lost, (len(missing), lost)  # the loss is exactly what was counted
            assert "traces lost since the last flush" in log
        print(f"[disk full, max_queue {max_queue}] {len(answered)} answered, {len(answered) - full_at} after "
              f"the disk filled; mid-fault {dict((k, during[k]) for k in ('held', 'spool_pending', 'lost'))}; "
              f"flushes {statuses}; lost {lost}")


# ====================================================================================== 2 folder deleted


def test_store_folder_deleted_and_recreated_under_load_later_calls_land_in_the_new_file(
    tmp_path: Path, upstream_urls: dict[str, str], vllm_upstream: Any
) -> None:
    """The writer notices that the file it holds is no longer the one at the configured path
    (deleted with its folder, which an operator recreated) and opens a new one there; every
    call answered after the deletion is in the new file once. Those answered before it were in
    the deleted file: the deletion took them."""
    folder = tmp_path / "store"
    db = folder / "traces.db"
    proxy = sqlite_proxy(tmp_path, upstream_urls, db)
    try:
        load, out, stop = run_load(tmp_path, proxy, "del")
        wait_answers(out, 20)
        deleted_at = time.time()
        shutil.rmtree(folder)
        folder.mkdir()
        with faults.FlushWatch(proxy.base_url, interval=1.0) as watch:
            time.sleep(4)
        stop_load(load, stop)
        final = faults.flush_until_200(proxy.base_url)[-1][1]
        read = httpx.get(f"{proxy.base_url}/rllm/sessions/del-3/traces", headers=harness.auth(), timeout=60)
        log = proxy.log()
    finally:
        proxy.stop()
    answered = all_served(out)
    after = [a for a in answered if a["t"] > deleted_at + 0.3]
    assert len(after) > 20, "the load did not run on after the deletion"
    missing = faults.check_stored_once(f"sqlite:///{db}", answered, may_miss=lambda a: a["t"] <= deleted_at + 0.3)
    assert all(s == 200 for s in watch.statuses()), watch.statuses()  # nothing was ever waiting
    assert final["writer"]["store_reopened"] >= 1 and final["lost_total"] == 0, final["writer"]
    assert "no longer at its path" in log
    body = read.json()
    in_new_file = [t for t in faults.stored_markers(f"sqlite:///{db}") if t.startswith("del-3 call")]
    assert read.status_code == 200 and body["complete"] is True and body["count"] == len(in_new_file)
    print(f"[folder deleted] {len(answered)} answered, {len(after)} after the deletion (all stored once); "
          f"{len(missing)} answered before it went with the deleted file")


# ====================================================================================== 3 SIGBUS


def test_unwritable_shm_kills_only_the_store_process_and_the_proxy_serves_on(
    tmp_path: Path, upstream_urls: dict[str, str], vllm_upstream: Any
) -> None:
    """The SQLite file, its WAL and its -shm made immutable mid-load (the next write to a page
    of the shared-memory mapping is a SIGBUS; where chattr is unavailable, the -shm file is
    truncated under the mapping, which does the same, or an I/O error where the mapping was
    sized already). A store process dies and is replaced, or its writes fail,
    the writer spools meanwhile; the proxy never dies, and once the files are writable again
    every answered call is stored once."""
    folder = tmp_path / "store"
    db = folder / "traces.db"
    files = [db, db.with_name("traces.db-wal"), db.with_name("traces.db-shm")]
    proxy = sqlite_proxy(tmp_path, upstream_urls, db)
    how = "immutable"
    try:
        load, out, stop = run_load(tmp_path, proxy, "bus")
        wait_answers(out, 20)
        if not faults.immutable(files, True):
            how = "truncated"
            os.truncate(files[2], 0)
        with faults.FlushWatch(proxy.base_url, interval=1.0) as watch:
            time.sleep(5)
            read = httpx.get(f"{proxy.base_url}/rllm/sessions/bus-1/traces", headers=harness.auth(), timeout=60)
            mid = faults.writer_stats(proxy.base_url)
            assert proxy.proc.poll() is None, "the proxy died"
            faults.immutable(files, False)
            faults.flush_until_200(proxy.base_url)
        stop_load(load, stop)
        final = faults.flush_until_200(proxy.base_url)[-1][1]
        alive = proxy.proc.poll() is None
        log = proxy.log()
    finally:
        faults.immutable(files, False)
        proxy.stop()
    assert alive, log[-3000:]
    answered = all_served(out)
    faults.check_stored_once(f"sqlite:///{db}", answered)
    # The fault shows as a SIGBUS of a store process, or (where other connections of the proxy's
    # store processes had the -shm mapped already) as I/O errors of the store: either way in a
    # child, the traces spooled meanwhile and the proxy alive.
    assert (mid["store_process_lost"] >= 1 and "SIGBUS" in log) or "disk I/O error" in log or \
        "readonly database" in log, (mid, log[-3000:])
    assert mid["spool_pending"] + mid["held"] > 0 and 503 in watch.statuses(), (mid, watch.statuses())
    assert read.status_code in (200, 503)  # the read's own store process may have died too: never the proxy
    if read.status_code == 200:
        assert read.json()["complete"] is False
    assert final["lost_total"] == 0
    print(f"[-shm {how}] {len(answered)} answered, all stored once; store processes lost "
          f"{final['writer']['store_process_lost']}; flushes {watch.statuses()}")


# ====================================================================================== 4 SIGKILL on a lock


def sigkill_on_a_held_lock(tmp_path: Path, proxy: harness.ProxyProcess, store_url: str, hold: Any) -> None:
    """Hold the store's write lock (``hold()`` -> a release function) under load, read a session
    and flush mid-fault, SIGKILL the proxy, release, start a new proxy on the same config and
    spool, and check what was lost."""
    release = None
    try:
        load, out, stop = run_load(tmp_path, proxy, "kill")
        wait_answers(out, 20)
        release = hold()
        time.sleep(4)
        mid = faults.writer_stats(proxy.base_url)
        session_answered = len([a for a in answers(out) if a["session"] == "kill-2" and a.get("status") == 200])
        read = httpx.get(f"{proxy.base_url}/rllm/sessions/kill-2/traces", headers=harness.auth(), timeout=60)
        flush_status, flushed = faults.flush(proxy.base_url)
        killed_at = time.time()
        proxy.proc.send_signal(signal.SIGKILL)
        proxy.proc.wait(30)
        stop_load(load, stop)
        release()
        release = None
        proxy.stop()
        proxy = harness.ProxyProcess(proxy.config).wait_ready()  # replays the spool it inherits
        faults.flush_until_200(proxy.base_url)
        reread = httpx.get(f"{proxy.base_url}/rllm/sessions/kill-2/traces", headers=harness.auth(), timeout=60)
    finally:
        if release is not None:
            release()
        proxy.stop()
    assert mid["spooled"] > 0 and mid["queue_depth"] < 256 + 2048 and mid["failed"] == 0, mid
    assert mid["store_call_running_ms"] > 1000, mid  # the call still waits on the lock
    body = read.json()
    assert read.status_code == 200 and body["complete"] is False and body["pending"] > 0, body
    assert read.headers["x-rllm-complete"] == "false" and int(read.headers["x-rllm-pending"]) == body["pending"]
    assert body["count"] + body["pending"] >= session_answered
    assert flush_status == 503 and flushed["spooled"] > 0, flushed
    answered = [a for a in answers(out) if a.get("status") == 200]
    missing = faults.check_stored_once(store_url, answered, may_miss=lambda a: a["t"] > killed_at - 2.0)
    assert len(missing) <= 256 + 2048
    assert reread.json()["complete"] is True
    print(f"[SIGKILL on a held lock, {store_url.split(':')[0]}] {len(answered)} answered; mid-fault spooled "
          f"{mid['spooled']}, queue {mid['queue_depth']}; {len(missing)} lost, all answered in the last 2 s "
          f"before the kill")


def test_sigkill_while_the_sqlite_writer_waits_on_a_lock_loses_at_most_the_last_moment(
    tmp_path: Path, upstream_urls: dict[str, str], vllm_upstream: Any
) -> None:
    """Another process holds the SQLite write lock: the writer's call waits in SQLite's busy
    timeout, the backlog goes to the spool after `spool_after` (1 s) all the same, and a session
    read says it is incomplete. SIGKILL then loses only what was not yet spooled (the last
    second or so, at most `writer_batch_size` + 2,048 traces); the next proxy replays the rest."""
    db = tmp_path / "store" / "traces.db"
    proxy = sqlite_proxy(tmp_path, upstream_urls, db)

    def hold() -> Any:
        blocker = sqlite3.connect(str(db), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the write lock, held

        def release() -> None:
            blocker.rollback()
            blocker.close()
        return release

    sigkill_on_a_held_lock(tmp_path, proxy, f"sqlite:///{db}", hold)


def test_sigkill_while_the_postgres_writer_waits_on_a_lock_loses_at_most_the_last_moment(
    pg_server: Any, tmp_path: Path, upstream_urls: dict[str, str], vllm_upstream: Any
) -> None:
    """The same with PostgreSQL: a session holds a lock on the table every write takes a row
    lock in, so the writer's transaction waits (no client timeout cuts a lock wait)."""
    import psycopg

    from litellm_rllm.store.postgres import parse_url
    from tests.support.pg import unique_schema, with_schema

    store_url = with_schema(pg_server.url(), unique_schema("lock"))
    config = harness.write_config(tmp_path, upstreams=upstream_urls, store_url=store_url,
                                  extra_settings={"spool_dir": "spool"})
    proxy = harness.ProxyProcess(config).wait_ready()
    conninfo, schema = parse_url(store_url)

    def hold() -> Any:
        blocker = psycopg.connect(conninfo)
        blocker.execute(f'LOCK TABLE "{schema}".session_seq IN SHARE ROW EXCLUSIVE MODE')

        def release() -> None:
            blocker.rollback()
            blocker.close()
        return release

    sigkill_on_a_held_lock(tmp_path, proxy, store_url, hold)


# ====================================================================================== 5 replay rate


def test_postgres_back_after_an_outage_the_spool_replays_faster_than_the_load(
    tmp_path: Path, upstream_urls: dict[str, str], vllm_upstream: Any
) -> None:
    """PostgreSQL stopped for 8 s under load, then started again while the load goes on: the
    spool must drain while calls keep coming (replayed in large batches, one transaction each),
    not only once the load stops."""
    from tests.support.pg import start_server_or_skip

    server = start_server_or_skip()  # this test's own: it is stopped
    try:
        server.create_database()
        config = harness.write_config(tmp_path, upstreams=upstream_urls, store_url=server.url(),
                                      extra_settings={"spool_dir": "spool"})
        proxy = harness.ProxyProcess(config).wait_ready()
        samples: list[tuple[float, int, dict[str, Any]]] = []
        try:
            load, out, stop = run_load(tmp_path, proxy, "replay")
            wait_answers(out, 20)
            server.stop()
            time.sleep(8)
            outage = faults.writer_stats(proxy.base_url)
            server.start()
            back_at = time.monotonic()
            while time.monotonic() - back_at < 10:
                samples.append((time.monotonic() - back_at, len(answers(out)), faults.writer_stats(proxy.base_url)))
                time.sleep(0.5)
            stop_load(load, stop)
            final = faults.flush_until_200(proxy.base_url)[-1][1]
        finally:
            proxy.stop()
        answered = all_served(out)
        faults.check_stored_once(server.url(), answered)
    finally:
        server.destroy()
    assert outage["spool_pending"] > 20 and outage["failed"] == 0, outage
    drained = next((t for t, _, w in samples if w["spool_pending"] == 0), None)
    assert drained is not None, [(round(t, 1), w["spool_pending"]) for t, _, w in samples]
    start_answers = samples[0][1]
    end_answers = samples[-1][1]
    load_rate = (end_answers - start_answers) / (samples[-1][0] - samples[0][0])
    replayed = outage["spool_pending"] / max(drained, 0.5)  # at least this fast: it was all gone by then
    assert replayed > load_rate, (replayed, load_rate)
    assert final["lost_total"] == 0
    print(f"[PostgreSQL outage] {outage['spool_pending']} spooled traces drained {drained:.1f}s after the "
          f"restart (>= {replayed:.0f} traces/s) under a load of {load_rate:.1f} calls/s")
