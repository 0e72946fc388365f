"""Memory and per-chunk CPU of streaming capture for one long stream (issue 4 / issue 7).

Feeds a vLLM-format SSE body (N tokens, one token per chunk, `top_logprobs: K`, token ids) through
exactly what the proxy runs per upstream read: `SSEParser.feed` -> `StreamAccumulator.add`.
Reports the accumulation's peak memory (tracemalloc, the SSE body itself excluded), the CPU
per chunk on the event loop, and the writer-thread cost of turning it into a `Trace`.

    python benchmarks/stream_memory.py [--tokens 32000] [--top 5]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

from litellm_rllm.capture.sse import SSEParser
from litellm_rllm.capture.stream import StreamAccumulator


def vllm_sse(tokens: int, top: int) -> list[bytes]:
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "policy"}
    events = [{**head, "prompt_token_ids": list(range(1000, 1512)),
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}]}]
    for j in range(tokens):
        lp = -((j % 64) + 1) / 64
        item = {"token": f" w{j % 5000}", "logprob": lp, "bytes": [32, 119],
                "top_logprobs": [{"token": f" w{j % 5000}" if r == 0 else f" alt{r}", "logprob": lp - r,
                                  "bytes": [32]} for r in range(top)]}
        last = j == tokens - 1
        events.append({**head, "choices": [{"index": 0, "delta": {"content": f" w{j % 5000}"},
                                            "logprobs": {"content": [item]}, "finish_reason": "stop" if last else None,
                                            "stop_reason": None, "token_ids": [j % 50000]}]})
    events.append({**head, "choices": [], "usage": {"prompt_tokens": 512, "completion_tokens": tokens,
                                                   "total_tokens": 512 + tokens}})
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32000)
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    body = vllm_sse(args.tokens, args.top)
    body_bytes = sum(map(len, body))

    # Pass 1, timing: exactly the per-read work of the proxy's tee (no tracemalloc: it slows
    # every allocation several times over).
    acc = StreamAccumulator()
    parser = SSEParser(acc.add)
    worst = 0.0
    t0 = time.perf_counter()
    for chunk in body:
        c0 = time.perf_counter()
        parser.feed(chunk)
        worst = max(worst, time.perf_counter() - c0)
    parser.close()
    loop_s = time.perf_counter() - t0

    # Pass 2, memory: what the accumulation holds.
    del acc, parser
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    acc = StreamAccumulator()
    parser = SSEParser(acc.add)
    for chunk in body:
        parser.feed(chunk)
    parser.close()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    t1 = time.perf_counter()
    [choice] = acc.choices()
    build_s = time.perf_counter() - t1
    assert len(choice.token_ids) == args.tokens == len(choice.logprobs) == len(choice.top_columns().counts)

    n = len(body)
    print(f"stream: {args.tokens} tokens, top_logprobs={args.top}, {n} SSE events, {body_bytes / 1e6:.1f} MB on the wire")
    print(f"accumulation memory: {(current - base) / 1e6:.2f} MB held after the stream, peak {(peak - base) / 1e6:.2f} MB"
          f" ({(current - base) / args.tokens:.0f} B/token)")
    print(f"event-loop CPU: {loop_s * 1e6 / n:.1f} us per chunk (parse + accumulate), worst single chunk {worst * 1e3:.3f} ms,"
          f" {loop_s * 1e3:.0f} ms total")
    print(f"writer thread: arrays -> TraceChoice in {build_s * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
