"""End to end: `litellm --config ...` as a subprocess, real HTTP, the official openai client."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import openai
import pytest

from litellm_rllm import client as rllm
from litellm_rllm import slug as slugs
from tests.support import harness


@pytest.fixture(scope="module")
def proxy_proc(tmp_path_factory, upstream_urls):
    folder = tmp_path_factory.mktemp("e2e")
    store_url = f"sqlite:///{folder / 'traces.db'}"
    config = harness.write_config(folder, upstreams=upstream_urls, store_url=store_url)
    with harness.ProxyProcess(config) as proc:
        proc.store_url = store_url
        yield proc


def flush(proc) -> None:
    """Barrier: the proxy's writer has made every finished call durable."""
    assert rllm.flush(proc.base_url + "/v1", harness.MASTER_KEY)["flushed"] is True


def test_50_concurrent_sessions_of_4_requests_are_not_crossed(proxy_proc, vllm_upstream):
    oai = rllm.wrap(openai.AsyncOpenAI(base_url=proxy_proc.base_url + "/v1", api_key=harness.MASTER_KEY,
                                       max_retries=0, timeout=60))
    ids: dict[int, str] = {}

    async def agent(i: int) -> None:
        with rllm.session(session_id=f"agent-{i}-{os.getpid()}", agent=i) as sess:
            ids[i] = sess.session_id
            for step in range(4):
                await oai.chat.completions.create(
                    model="policy", messages=[{"role": "user", "content": f"agent {i} step {step}"}])

    async def main() -> None:
        await asyncio.gather(*(agent(i) for i in range(50)))
        await oai.close()

    asyncio.run(main())
    flush(proxy_proc)
    # the same session read back through the proxy equals the store's
    remote = rllm.fetch_traces(proxy_proc.base_url + f"/meta/{slugs.encode({'x': 1})}/v1", ids[0], harness.MASTER_KEY)
    assert [t.trace_id for t in remote] == [t.trace_id for t in harness.read_traces(proxy_proc.store_url, ids[0])]
    total = 0
    for i, sid in ids.items():
        traces = harness.read_traces(proxy_proc.store_url, sid)
        assert [t.seq for t in traces] == [0, 1, 2, 3], sid
        assert [t.request["messages"][0]["content"] for t in traces] == [f"agent {i} step {s}" for s in range(4)]
        assert all(t.metadata.get("agent") == i for t in traces)
        assert all(t.choices[0].token_ids and t.choices[0].logprobs for t in traces)
        total += len(traces)
    assert total == 200


def test_proxy_keeps_serving_after_a_burst_of_bad_slugs(proxy_proc):
    bad = ["rllm1:%%%", "rllm9:e30", "rllm1:" + "x" * 10000, "rllm1:WzFd", "rllm1:e30.zz"]
    with httpx.Client(base_url=proxy_proc.base_url, headers=harness.auth(), timeout=30) as c:
        for slug in bad * 20:
            r = c.post(f"/meta/{slug}/v1/chat/completions",
                       json={"model": "demo", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 400 and r.json()["error"]["code"] == "rllm_invalid_slug"
        good = c.post(f"/meta/{slugs.encode({'session_id': 'after-bad'})}/v1/chat/completions",
                      json={"model": "demo", "messages": [{"role": "user", "content": "x"}]})
        assert good.status_code == 200


def test_client_going_away_mid_stream_leaves_one_incomplete_trace(proxy_proc, vllm_upstream):
    from tests.upstreams.common import word_id

    sid = "disconnect-" + os.urandom(4).hex()
    slug = slugs.encode({"session_id": sid})
    received = []
    with httpx.Client(base_url=proxy_proc.base_url, headers=harness.auth(), timeout=30) as c:
        with c.stream("POST", f"/meta/{slug}/v1/chat/completions",
                      json={"model": "policy-drip", "stream": True,
                            "messages": [{"role": "user", "content": "long answer"}]}) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    received.append(json.loads(line[6:]))
                if len(received) >= 5:
                    break  # hang up with the stream still running upstream
    harness.wait_for(lambda: harness.read_traces(proxy_proc.store_url, sid) or (flush(proxy_proc) and False), 15)
    [trace] = harness.read_traces(proxy_proc.store_url, sid)
    assert trace.status == "incomplete" and trace.stream
    ids = trace.choices[0].token_ids
    expected = [word_id(f"tok{i}") for i in range(400)]
    assert 4 <= len(ids) < 400 and ids == expected[: len(ids)]
    assert len(trace.choices[0].logprobs) == len(ids)
    # the upstream was closed: the server stops generating for nobody
    [req] = [r for r in vllm_upstream.requests if r["path"] == "/v1/chat/completions"]
    assert harness.wait_for(lambda: req["stream"]["end"], 10) == "client_gone"
    assert req["stream"]["sent"] < req["stream"]["rounds"]
    # the proxy is still serving
    r = httpx.post(proxy_proc.base_url + "/v1/chat/completions", headers=harness.auth(), timeout=30,
                   json={"model": "demo", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
