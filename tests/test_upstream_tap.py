"""The tee on the upstream connection: bytes pass unchanged, and parsing a large SSE read never
holds the event loop in one stretch."""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

from litellm_rllm.callbacks.upstream_tap import PARSE_SLICE, UpstreamTap, _TeeStream


def vllm_chat_sse(n_tokens: int) -> bytes:
    """vLLM's chat stream (one token per chunk, logprobs and token ids), then [DONE]."""
    events = []
    for j in range(n_tokens):
        chunk = {
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": f" w{j}"}, "finish_reason": None,
                         "logprobs": {"content": [{"token": f" w{j}", "logprob": -0.5, "bytes": [32],
                                                   "top_logprobs": []}]},
                         "token_ids": [j]}],
        }
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    return b"".join(events) + b"data: [DONE]\n\n"


async def _one_read(data: bytes) -> AsyncIterator[bytes]:
    yield data  # the whole body in one read, as from a fast upstream to a slow reader


async def _read_counting_loop_turns(body: bytes, tap: UpstreamTap) -> tuple[list[bytes], int]:
    """Everything the tee passes on for a one-read body, and how often the loop ran meanwhile."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks = 0
    passed = [data async for data in _TeeStream(_one_read(body), tap)]
    during = ticks
    task.cancel()
    return passed, during


async def test_large_sse_read_is_parsed_in_slices_with_the_loop_running_between() -> None:
    body = vllm_chat_sse(2000)
    assert len(body) > 8 * PARSE_SLICE
    tap = UpstreamTap(time.perf_counter(), 200, is_sse=True)
    passed, during = await _read_counting_loop_turns(body, tap)

    assert b"".join(passed) == body
    slices = -(-len(body) // PARSE_SLICE)
    assert during >= slices - 1, f"the loop ran {during} times while {slices} slices were parsed"
    assert tap.finished and tap.parser is not None and tap.parser.done
    (choice,) = tap.acc.choices()  # type: ignore[union-attr]
    assert choice.token_ids == list(range(2000))
    assert choice.message["content"] == "".join(f" w{j}" for j in range(2000))
    assert choice.logprobs is not None and len(choice.logprobs) == 2000


async def test_small_reads_pass_through_without_yielding_to_the_loop() -> None:
    body = vllm_chat_sse(3)
    assert len(body) < PARSE_SLICE
    tap = UpstreamTap(time.perf_counter(), 200, is_sse=True)
    passed, during = await _read_counting_loop_turns(body, tap)

    assert passed == [body]
    assert during == 0
    (choice,) = tap.acc.choices()  # type: ignore[union-attr]
    assert choice.token_ids == [0, 1, 2]
