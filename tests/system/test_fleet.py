"""A session across several proxies (one PostgreSQL store): it reads back in call order, even
when one proxy's commits land seconds late. (Its companion without a lagging writer is
`test_durability.py::test_two_proxies_on_one_postgres_store_100_sessions_of_10_calls`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support import harness
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
