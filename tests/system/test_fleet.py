"""A session across a fleet: several proxies (one store) and several inference replicas.

It reads back in call order, even when one proxy's commits land seconds late (the companion
without a lagging writer is `test_durability.py::test_two_proxies_on_one_postgres_store_100_
sessions_of_10_calls`), and its calls stay on one replica, with LiteLLM's Redis-backed session
affinity or with the stateless pin."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.support import harness
from tests.support.fleet import fleet_config, run_sessions
from tests.system.test_durability import answers, check_answers_have_traces, flush_proxy, pg_config, start_load


def _call_index(trace: Any) -> int:
    return int(trace.request["messages"][0]["content"].rsplit(" ", 1)[1])


def test_sessions_alternating_proxies_read_back_in_call_order_when_one_writer_lags(
    pg_server: Any, upstream_urls: dict[str, str], tmp_path: Path, vllm_upstream: Any
) -> None:
    """50 sessions x 10 sequential calls, call k on proxy k % 2; proxy 0 holds every batch 2 s
    before writing it, so call k+1's trace is committed before call k's. After a flush of both
    proxies every session reads back 0..9 in call order."""
    from tests.support.pg import unique_schema, with_schema

    store_url = with_schema(pg_server.url(), unique_schema("lag"))
    lagging = pg_config(tmp_path / "lagging", upstream_urls, store_url, writer_commit_delay_s=2.0)
    prompt = pg_config(tmp_path / "prompt", upstream_urls, store_url)
    procs = [harness.ProxyProcess(lagging), harness.ProxyProcess(prompt)]
    try:
        for p in procs:
            p.wait_ready()
        out = tmp_path / "alternate.jsonl"
        load = start_load(out, "--base-urls", ",".join(p.base_url for p in procs), "--sessions", "50",
                          "--calls", "10", "--concurrency", "25", "--split", "alternate", "--prefix", "lag")
        assert load.wait(300) == 0, out.with_suffix(".jsonl.err").read_text()
        answered = answers(out)
        assert len(answered) == 500 and all(a.get("status") == 200 for a in answered)
        for p in procs:
            flush_proxy(p.base_url)
        r = httpx.get(f"{procs[1].base_url}/rllm/sessions/lag-7/traces", headers=harness.auth(), timeout=60)
        assert r.status_code == 200
        body = r.json()
        assert [t["seq"] for t in body["traces"]] == list(range(10))
        assert [int(t["request"]["messages"][0]["content"].rsplit(" ", 1)[1]) for t in body["traces"]] == list(range(10))
    finally:
        for p in procs:
            p.stop()
    sessions = check_answers_have_traces(store_url, answered, in_call_order=True)
    assert len(sessions) == 50 and all(len(v) == 10 for v in sessions.values())
    # The lag did reorder the commits: in write order (row id), most sessions are out of call order.
    st = harness.store.open(store_url)
    try:
        written: dict[str, list[int]] = {}
        for t in st.traces():
            written.setdefault(t.session_id or "", []).append(_call_index(t))
        for sid in sessions:
            got = st.traces(session=sid)
            assert [_call_index(t) for t in got] == list(range(10)), sid
            assert [t.seq for t in got] == list(range(10)), sid
    finally:
        st.close()
    out_of_order = sum(v != sorted(v) for v in written.values())
    print(f"[lagging writer] sessions committed out of call order: {out_of_order} of 50; read back in order: 50")
    assert out_of_order >= 25


# ============================================================================ one replica per session


REPLICAS = 4
SESSIONS = 200
TURNS = 10
# LiteLLM places a session's first call at random (its pin keeps the rest there), so a replica's
# share of sessions is binomial: with 200 sessions its standard deviation is 12% of the mean and a
# 25% bound fails about one run in seven; with 400 sessions (8.7%) about one in 70 (CI hit it:
# 370 / 575 / 510 / 545 calls). 1,000 sessions x 3 turns: 5.5%, the bound is 4.6 standard
# deviations, about one run in 50,000; three turns still show the prefix cache growing.
REDIS_SESSIONS = 1000
REDIS_TURNS = 3


@pytest.fixture()
def replicas() -> Iterator[list[Any]]:
    """Four vLLM-format replicas of one model, each with its own prefix cache (16-token blocks)."""
    from tests.upstreams import server
    from tests.upstreams.vllm import FakeVLLM

    running = [server.start(FakeVLLM(prefix_cache_block=16)) for _ in range(REPLICAS)]
    try:
        yield running
    finally:
        for r in running:
            r.stop()


def _replica_of_calls(replicas: list[Any]) -> dict[str, set[int]]:
    """session -> the replicas its calls reached, from the replicas' own request logs."""
    seen: dict[str, set[int]] = {}
    for i, r in enumerate(replicas):
        for req in r.requests:
            messages = (req.get("json") or {}).get("messages")
            if messages:
                seen.setdefault(messages[-1]["content"].split(" ", 1)[0], set()).add(i)
    return seen


def _check_pins(replicas: list[Any], store_url: str, sessions: list[str], diverted: int = 0) -> Counter[int]:
    """Every session on one replica (its requests and its traces' api_base agree); returns the
    calls per replica. `diverted`: first calls the stateless pin's load bound sent elsewhere;
    such a session may be split by design (affinity.py: the other proxy has not seen the
    diversion), so at most that many sessions may be, and no other."""
    seen = _replica_of_calls(replicas)
    split = {sid: sorted(seen.get(sid, ())) for sid in sessions if len(seen.get(sid, ())) != 1}
    assert len(split) <= diverted and all(len(r) > 1 for r in split.values()), (
        f"{len(split)} sessions on several replicas (or none), {diverted} diverted by the load bound,"
        f" e.g. {list(split.items())[:5]}")
    st = harness.store.open(store_url)
    try:
        for sid in [s for s in sessions[:: max(1, len(sessions) // 20)] if s not in split]:
            traces = st.traces(session=sid)
            (replica,) = seen[sid]
            assert {t.api_base for t in traces} == {replicas[replica].api_base}, sid
            assert {t.deployment_model for t in traces} == {"hosted_vllm/policy"}
    finally:
        st.close()
    return Counter(i for i, r in enumerate(replicas) for req in r.requests if (req.get("json") or {}).get("messages"))


def _assert_balanced(calls: Counter[int], label: str) -> None:
    mean = sum(calls.values()) / REPLICAS
    print(f"[{label}] calls per replica: {[calls[i] for i in range(REPLICAS)]} (mean {mean:.0f})")
    assert all(abs(calls[i] - mean) <= 0.25 * mean for i in range(REPLICAS)), calls


def _cached_per_turn(store_url: str, sessions: list[str]) -> list[float]:
    """Mean cached prompt tokens per turn (as the replicas reported them), from the traces."""
    st = harness.store.open(store_url)
    try:
        per_turn: dict[int, list[int]] = {}
        for sid in sessions:
            for t in st.traces(session=sid):
                per_turn.setdefault(t.seq or 0, []).append(t.cached_tokens or 0)
        summary = {s.session_id: s.cached_tokens for s in st.sessions()}
    finally:
        st.close()
    assert all(summary[sid] > 0 for sid in sessions)
    return [sum(v) / len(v) for _, v in sorted(per_turn.items())]


def test_redis_session_affinity_keeps_each_session_on_one_replica_and_survives_redis_going_away(
    replicas: list[Any], redis_server: Any, tmp_path: Path
) -> None:
    """Two proxies, LiteLLM's `session_affinity` with the router cache in a real Redis, a
    round-robin client: 1,000 sessions x 3 turns each on one replica, replicas within 25% of
    the mean; then Redis is stopped mid-run and no call fails."""
    store_url = f"sqlite:///{tmp_path / 'traces.db'}"
    config = fleet_config(tmp_path / "proxy", [r.api_base for r in replicas], store_url, mode="redis",
                          redis_port=redis_server.port)
    procs = [harness.ProxyProcess(config) for _ in range(2)]
    try:
        for p in procs:
            p.wait_ready()
        bases = [p.base_url for p in procs]
        started = time.monotonic()
        statuses = asyncio.run(run_sessions(bases, range(REDIS_SESSIONS), REDIS_TURNS, concurrency=16))
        elapsed = time.monotonic() - started
        assert all(s == [200] * REDIS_TURNS for s in statuses.values())
        assert any(k.startswith("deployment_affinity:v1:session:") for k in redis_server.keys()), "no pin in Redis"
        for p in procs:
            flush_proxy(p.base_url)
        sessions = sorted(statuses)
        calls = _check_pins(replicas, store_url, sessions)
        _assert_balanced(calls, "redis affinity")
        cached = _cached_per_turn(store_url, sessions)
        print(f"[redis affinity] {REDIS_SESSIONS} x {REDIS_TURNS} calls in {elapsed:.0f}s; mean cached prompt tokens per turn:"
              f" {[round(c) for c in cached]}")
        assert cached[0] < cached[-1]  # the growing prompt's prefix is found on the session's replica

        # Redis goes away mid-run: calls keep being answered (pins fall back to each proxy's memory).
        for r in replicas:
            r.clear()
        done: list[str] = []
        stopped = threading.Event()

        def on_done(sid: str) -> None:
            done.append(sid)
            if len(done) == 20 and not stopped.is_set():
                stopped.set()
                redis_server.stop()

        statuses = asyncio.run(run_sessions(bases, range(REDIS_SESSIONS, REDIS_SESSIONS + 60), TURNS, concurrency=16,
                                             on_done=on_done))
        assert stopped.is_set() and not redis_server.ping()
        failed = {sid: s for sid, s in statuses.items() if s != [200] * TURNS}
        assert not failed, f"calls failed with Redis down: {list(failed.items())[:3]}"
        seen = _replica_of_calls(replicas)
        whole = sum(len(seen[sid]) == 1 for sid in statuses)
        print(f"[redis down mid-run] 60 sessions x {TURNS}: every call answered; sessions on one replica: {whole} of 60")
    finally:
        for p in procs:
            p.stop()


def test_stateless_pin_keeps_each_session_on_one_replica_without_redis(replicas: list[Any], tmp_path: Path) -> None:
    """The same fleet without Redis, with `litellm_rllm.callbacks.affinity`: every proxy
    computes the same replica for a session."""
    store_url = f"sqlite:///{tmp_path / 'traces.db'}"
    config = fleet_config(tmp_path / "proxy", [r.api_base for r in replicas], store_url, mode="stateless")
    procs = [harness.ProxyProcess(config) for _ in range(2)]
    try:
        for p in procs:
            p.wait_ready()
        started = time.monotonic()
        statuses = asyncio.run(run_sessions([p.base_url for p in procs], range(SESSIONS), TURNS, concurrency=16))
        elapsed = time.monotonic() - started
        assert all(s == [200] * TURNS for s in statuses.values())
        for p in procs:
            flush_proxy(p.base_url)
        def stats_now() -> list[dict[str, Any]]:
            return [httpx.get(p.base_url + "/rllm/stats", headers=harness.auth(), timeout=30).json() for p in procs]

        # every call's end was seen: nothing counts as in flight any more (the load bound's input)
        stats = harness.wait_for(lambda: (lambda st: st if all(not s["affinity"]["in_flight"] for s in st) else None)(
            stats_now()), timeout=20) or stats_now()
        assert all(s["affinity"]["in_flight"] == {} for s in stats), [s["affinity"] for s in stats]
        sessions = sorted(statuses)
        diverted = sum(s["affinity"]["diverted"] for s in stats)
        assert diverted <= SESSIONS // 50, f"the load bound diverted {diverted} of {SESSIONS} sessions"
        calls = _check_pins(replicas, store_url, sessions, diverted=diverted)
        _assert_balanced(calls, "stateless pin")
        cached = _cached_per_turn(store_url, sessions)
        body = httpx.get(f"{procs[1].base_url}/rllm/sessions/fleet-0/traces", headers=harness.auth(), timeout=60).json()
        assert body["cached_tokens"] == sum(t["cached_tokens"] or 0 for t in body["traces"]) > 0
        print(f"[stateless pin] {SESSIONS} x {TURNS} calls in {elapsed:.0f}s; diverted by the load bound:"
              f" {[s['affinity']['diverted'] for s in stats]}; mean cached prompt tokens per turn:"
              f" {[round(c) for c in cached]}")
    finally:
        for p in procs:
            p.stop()
