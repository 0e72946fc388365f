"""The tee on the upstream connection: bytes pass unchanged, and parsing a large SSE read never
holds the event loop in one stretch."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import httpx

from litellm_rllm.callbacks.upstream_tap import PARSE_SLICE, UpstreamTap, TeeStream
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
