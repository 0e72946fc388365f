"""The tee on the upstream connection: bytes pass unchanged, and parsing a large SSE read never
holds the event loop in one stretch."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, AsyncIterator

import httpx

from litellm_rllm.callbacks.upstream_tap import LATE_PARSE_MAX, PARSE_SLICE, TeeStream, UpstreamTap
from litellm_rllm.capture.ids_scan import IdsScan
from tests.upstreams.fixtures import *  # noqa: F401,F403

ASK = {"model": "tokens-2000", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
       "return_token_ids": True}


def fake_vllm(up: Any, stream: bool) -> Any:
    """The fake vLLM's reply to ASK: the SSE body as bytes, or the JSON response."""
    with httpx.Client(timeout=30) as http:
        r = http.post(up.url("/v1/chat/completions"), json={**ASK, "stream": stream})
        r.raise_for_status()
        return r.content if stream else r.json()


async def _read_counting_loop_turns(reads: list[bytes], tap: UpstreamTap) -> tuple[list[bytes], int]:
    """Everything the tee passes on for a body arriving in these reads, and how often the loop
    ran meanwhile (the reads themselves never wait, so any turn is the tee's own doing)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def upstream() -> AsyncIterator[bytes]:
        for read in reads:
            yield read

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks = 0
    passed = [data async for data in TeeStream(upstream(), tap)]
    during = ticks
    task.cancel()
    return passed, during


async def test_large_sse_read_is_parsed_in_slices_with_the_loop_running_between(vllm_upstream: Any) -> None:
    body = fake_vllm(vllm_upstream, stream=True)
    expected = fake_vllm(vllm_upstream, stream=False)["choices"][0]
    assert len(body) > 8 * PARSE_SLICE
    tap = UpstreamTap(time.perf_counter(), 200, is_sse=True)
    passed, during = await _read_counting_loop_turns([body], tap)  # all of it in one read

    assert b"".join(passed) == body
    slices = -(-len(body) // PARSE_SLICE)
    assert during >= slices - 1, f"the loop ran {during} times while {slices} slices were parsed"
    assert tap.finished and tap.parser is not None and tap.parser.done
    (choice,) = tap.acc.choices()  # type: ignore[union-attr]
    assert choice.token_ids == expected["token_ids"] and len(choice.token_ids) == 2001  # + EOS
    assert choice.message["content"] == expected["message"]["content"]
    assert choice.logprobs == [e["logprob"] for e in expected["logprobs"]["content"]]


async def test_small_reads_pass_through_without_yielding_to_the_loop(vllm_upstream: Any) -> None:
    body = fake_vllm(vllm_upstream, stream=True)
    reads = [body[k:k + PARSE_SLICE] for k in range(0, len(body), PARSE_SLICE)]
    tap = UpstreamTap(time.perf_counter(), 200, is_sse=True)
    passed, during = await _read_counting_loop_turns(reads, tap)

    assert passed == reads and during == 0
    (choice,) = tap.acc.choices()  # type: ignore[union-attr]
    assert len(choice.token_ids) == 2001


# ---- late parse: a stream's reads kept and parsed once it ends ------------------------------

def _events(body: bytes) -> list[bytes]:
    """The body as one read per event (a paced upstream)."""
    return [event + b"\n\n" for event in body.split(b"\n\n") if event]


def _parsed(reads: list[bytes], late: bool, scan_ids: bool = False) -> UpstreamTap:
    tap = UpstreamTap(time.perf_counter(), 200, is_sse=True, late=late, scan_ids=scan_ids)
    for read in reads:
        tap.feed(read)
    tap.settle()
    tap.parser.close()  # type: ignore[union-attr]
    return tap


def _same_trace(a: UpstreamTap, b: UpstreamTap) -> None:
    (x,), (y,) = a.acc.choices(), b.acc.choices()  # type: ignore[union-attr]
    assert x.model_dump() == y.model_dump()
    assert a.acc.prompt_token_ids == b.acc.prompt_token_ids and a.acc.usage == b.acc.usage  # type: ignore[union-attr]


def test_late_parse_builds_what_parsing_each_read_builds(vllm_upstream: Any) -> None:
    body = fake_vllm(vllm_upstream, stream=True)  # 2,000 tokens: past the cap, then parsed as it comes
    short = body[:body.index(b"\n\n", LATE_PARSE_MAX // 4) + 2] + b"data: [DONE]\n\n"  # within the cap
    for reads in (_events(body), _events(short), [body[k:k + 1000] for k in range(0, len(body), 1000)]):
        _same_trace(_parsed(reads, late=True, scan_ids=True), _parsed(reads, late=False))


def test_kept_reads_never_pass_the_cap_and_then_each_read_is_parsed(vllm_upstream: Any) -> None:
    tap = UpstreamTap(time.perf_counter(), 200, is_sse=True, late=True, scan_ids=True)
    most, switched_at = 0, None
    for i, read in enumerate(_events(fake_vllm(vllm_upstream, stream=True))):
        tap.feed(read)
        if tap.reads is not None:
            most = max(most, sum(map(len, tap.reads)))
        elif switched_at is None:
            switched_at = i
            assert tap.client_ids is tap.acc and len(tap.acc.token_ids_of(0)) == i  # type: ignore[union-attr]
    assert 0 < most <= LATE_PARSE_MAX and switched_at is not None


def test_ids_scan_reads_the_ids_the_parse_reads_however_the_body_is_cut(vllm_upstream: Any) -> None:
    body = fake_vllm(vllm_upstream, stream=True)
    expected = _parsed([body], late=False).acc
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(body)), 400))
        scan = IdsScan()
        for a, b in zip([0, *cuts], [*cuts, len(body)]):
            scan.feed(body[a:b])
        assert not scan.failed
        assert scan.ids.tolist() == expected.token_ids_of(0).tolist()  # type: ignore[union-attr]
        assert scan.prompt_token_ids == expected.prompt_token_ids and scan.prompt_token_ids  # type: ignore[union-attr]


def test_ids_scan_hands_over_to_the_parse_where_it_cannot_read_the_json(vllm_upstream: Any) -> None:
    """JSON with spaces after the separators (not vLLM's): the scan gives up at once and the
    tap parses each read as it arrives; the client's ids then come from the parse."""
    events = _events(fake_vllm(vllm_upstream, stream=True))
    spaced = [b"data: " + json.dumps(json.loads(e[6:])).encode() + b"\n\n" if e[6:7] == b"{" else e for e in events]
    tap = UpstreamTap(time.perf_counter(), 200, is_sse=True, late=True, scan_ids=True)
    tap.feed(spaced[0])
    assert tap.reads is None and tap.client_ids is tap.acc
    for read in spaced[1:]:
        tap.feed(read)
    tap.parser.close()  # type: ignore[union-attr]
    _same_trace(tap, _parsed(events, late=False))


def test_late_parse_times_the_first_token_by_the_read_it_came_in(vllm_upstream: Any) -> None:
    events = _events(fake_vllm(vllm_upstream, stream=True))[:40]
    tap = UpstreamTap(time.perf_counter(), 200, is_sse=True, late=True)
    tap.feed(events[0])  # the role chunk: no token yet
    time.sleep(0.05)
    tap.feed(events[1])
    first_read = time.perf_counter()
    for read in events[2:]:
        tap.feed(read)
    time.sleep(0.1)
    tap.settle()
    acc = tap.acc
    assert acc.first_token_at is not None and acc.first_token_at <= first_read  # type: ignore[union-attr]
    assert 50 <= acc.ttft_ms() < 100  # type: ignore[union-attr]
