"""Clients that leave mid-stream, under load: the trace says `incomplete` and holds what was
streamed until then, and the proxy closes the upstream so the server can stop generating.

Real parts: `litellm --config` with the plugin, the fake vLLM as its own process (its request
log records, per stream, how many steps it sent and whether the client went away), and N
concurrent streaming clients of which a fifth leave at a random point.
`RLLM_DISCONNECT_STREAMS` sets N (default 200; the test's bound scales with it).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import pytest
import yaml

from litellm_rllm.slug import encode
from tests.support import harness

STREAMS = int(os.environ.get("RLLM_DISCONNECT_STREAMS", "100"))
TOKENS = 200
DRIP_S = 0.1  # between engine steps: a 200-token stream takes 20 s
LEAVING = 0.2
BOUND_S = 8.0  # the upstream of a client that left must be closed within this (a loaded 2-core VM)
MODEL = "policy-drip-200"
SERVED = f"drip-{DRIP_S}-tokens-{TOKENS}"


class UpstreamProcess:
    """`python -m tests.upstreams.vllm` in its own process (the load must not share the test's GIL)."""

    def __init__(self, log: Path) -> None:
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.upstreams.vllm", "--port", "0"],
                                     cwd=str(harness.REPO), env=harness.proxy_env(), stdout=subprocess.PIPE,
                                     stderr=self._log)
        line = self.proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake vLLM did not start: {line!r}")
        self.base_url = line.split(" ", 1)[1]

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(self.base_url + "/_fake/requests", timeout=30).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()


@dataclass
class Stream:
    index: int
    session: str
    leave_after: Optional[int]  # content chunks to read before leaving; None: read to the end
    chunks: int = 0
    text: list[str] = field(default_factory=list)
    started_at: Optional[float] = None  # time.time() when the request was sent
    left_at: Optional[float] = None  # time.time() when the client closed the connection
    done: bool = False


def plan(n: int, seed: int = 20) -> list[Stream]:
    rnd = random.Random(seed)
    leavers = set(rnd.sample(range(n), int(n * LEAVING)))
    run = uuid.uuid4().hex[:6]
    return [Stream(i, f"dc-{run}-{i}", rnd.randrange(3, 40) if i in leavers else None) for i in range(n)]


async def drive(base_url: str, streams: list[Stream], slug: bool = True) -> None:
    """Open every stream at once; a leaver closes its connection after `leave_after` chunks.
    `slug`: each in its own session (False: plain /v1, for a proxy without the plugin)."""
    limits = httpx.Limits(max_connections=len(streams) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0)) as client:

        async def one(s: Stream) -> None:
            body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": f"stream {s.index}"}]}
            prefix = f"/meta/{encode({'session_id': s.session})}" if slug else ""
            url = f"{base_url}{prefix}/v1/chat/completions"
            s.started_at = time.time()
            async with client.stream("POST", url, json=body, headers=harness.auth()) as resp:
                assert resp.status_code == 200, await resp.aread()
                async for line in resp.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    for choice in json.loads(line[6:]).get("choices") or ():
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            s.chunks += 1
                            s.text.append(piece)
                    if s.leave_after is not None and s.chunks >= s.leave_after:
                        s.left_at = time.time()
                        return  # leaving the block closes the connection mid-stream
            s.done = True

        await asyncio.gather(*(one(s) for s in streams))


@pytest.fixture(scope="module")
def drip_proxy(tmp_path_factory: pytest.TempPathFactory, upstream_urls: dict[str, str]) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("disconnects")
    upstream = UpstreamProcess(folder / "upstream.log")
    try:
        store_url = f"sqlite:///{folder / 'traces.db'}"
        config = harness.write_config(folder, upstreams={**upstream_urls, "vllm": upstream.base_url + "/v1"},
                                      store_url=store_url)
        cfg = yaml.safe_load(config.read_text())
        cfg["model_list"].append({"model_name": MODEL, "litellm_params": {
            "model": f"hosted_vllm/{SERVED}", "api_base": upstream.base_url + "/v1", "api_key": "fake-vllm-key"}})
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        with harness.ProxyProcess(config) as proc:
            proc.store_url, proc.upstream = store_url, upstream
            yield proc
    finally:
        upstream.stop()


def test_clients_leaving_mid_stream_under_load_get_incomplete_traces_and_the_upstream_is_closed(drip_proxy):
    streams = plan(STREAMS)
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(drive(drip_proxy.base_url, streams), timeout=60 + STREAMS * 0.5))
    elapsed = time.monotonic() - started
    assert httpx.post(drip_proxy.base_url + "/rllm/flush", headers=harness.auth(), timeout=120).json()["flushed"]
    time.sleep(BOUND_S)  # let the upstream finish (or notice) every stream before its log is read
    # what the fake vLLM sent each stream, by the stream's prompt
    upstream = {r["json"]["messages"][-1]["content"]: r["stream"] for r in drip_proxy.upstream.requests()
                if r["path"] == "/v1/chat/completions" and r["json"].get("stream")}
    traces = {t.session_id: t for t in harness.read_traces(drip_proxy.store_url)}
    leavers = [s for s in streams if s.leave_after is not None]
    stayers = [s for s in streams if s.leave_after is None]
    assert len(traces) == STREAMS and len(leavers) == int(STREAMS * LEAVING) and all(s.done for s in stayers)

    for s in stayers:  # the others are complete and exact
        trace = traces[s.session]
        assert trace.status == "ok" and trace.choices[0].finish_reason == "stop", (s.index, trace.status)
        assert len(trace.choices[0].token_ids) == TOKENS + 1 and trace.choices[0].completeness.ok  # + EOS
        assert upstream[f"stream {s.index}"]["end"] == "complete"

    closed_after, cut = [], 0
    for s in leavers:
        trace = traces[s.session]
        [choice] = trace.choices
        sent = upstream[f"stream {s.index}"]
        assert s.left_at is not None and s.started_at is not None
        # the trace: incomplete, holding what was streamed until the proxy saw the client go
        # (all the client received, and what was in flight), never more than the upstream sent
        assert trace.status == "incomplete", (s.index, trace.status)
        assert s.chunks <= len(choice.token_ids or []) <= sent["sent"], (s.index, s.chunks, sent)
        assert "".join(s.text) == (choice.message.get("content") or "")[:len("".join(s.text))]
        if sent["end"] == "client_gone":
            closed_after.append(sent["ended_at"] - s.left_at)
            assert choice.finish_reason is None and len(choice.token_ids or []) < TOKENS + 1
            cut += 1
        # an upstream that could not have finished within the bound must have seen the client go
        if s.left_at - s.started_at + BOUND_S < TOKENS * DRIP_S:
            assert sent["end"] == "client_gone" and sent["sent"] < sent["rounds"], (s.index, sent)
            assert sent["ended_at"] - s.left_at < BOUND_S, (s.index, sent["ended_at"] - s.left_at)
    closed_after.sort()
    print(f"\n[disconnects] {STREAMS} streams ({len(leavers)} leaving) in {elapsed:.1f} s; {cut} upstreams cut "
          f"{closed_after[len(closed_after) // 2]:.2f} s (median), {closed_after[-1]:.2f} s (max) after the client left")
    assert cut >= len(leavers) // 2, (cut, len(leavers))  # most leave early: their generation was cut
