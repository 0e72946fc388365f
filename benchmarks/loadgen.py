"""Bounded HTTP load against one proxy, from its own process (so its CPU is not the proxy's).

Two ways to drive it, both bounded in request count and in time:

* ``closed``: ``--requests N`` at ``--concurrency C`` (C workers, each sends its next request
  when the previous one finished): throughput at saturation.
* ``open``: ``--rate R`` requests per second for ``--requests N`` requests, sent on a fixed
  schedule whatever the answers (open loop): latency at a fixed load. A request's latency is
  measured from its scheduled send time, so a proxy that falls behind is not flattered
  (no coordinated omission).

Non-streaming requests record the latency. Streaming requests (``--stream``, OpenAI SSE) also
record the time to the first content chunk (TTFT) and the time per chunk
(first to last ``data:`` event, divided by the events in between).

Prints one JSON object on stdout. Not a general tool: the request body is the benchmark's.

    python benchmarks/loadgen.py --url http://127.0.0.1:4000 --key sk-... --model policy \
        --mode closed --requests 400 --concurrency 16 [--stream] [--body '{"logprobs": true}']
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from typing import Any, Optional

import aiohttp

CONTENT_MARK = b'"content":"'


def percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] if lo == hi else s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 0.5), "p90": percentile(values, 0.9),
            "p99": percentile(values, 0.99), "max": max(values) if values else None,
            "mean": sum(values) / len(values) if values else None}


class Stats:
    def __init__(self) -> None:
        self.latency: list[float] = []
        self.ttft: list[float] = []
        self.per_chunk: list[float] = []
        self.chunks: list[int] = []
        self.errors: dict[str, int] = {}
        self.ok = 0
        self.bytes = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def one(session: aiohttp.ClientSession, args: argparse.Namespace, body: bytes, headers: dict[str, str],
              stats: Stats, start: float) -> None:
    """One request; `start` is when it was (scheduled to be) sent."""
    try:
        async with session.post(args.url + args.path, data=body, headers=headers) as resp:
            if resp.status != 200:
                stats.error(f"http {resp.status}")
                await resp.read()
                return
            if not args.stream:
                data = await resp.read()
                stats.latency.append(time.perf_counter() - start)
                stats.bytes += len(data)
                stats.ok += 1
                return
            first_event = last_event = first_token = None
            events = 0
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                now = time.perf_counter()
                stats.bytes += len(line)
                if line.startswith(b"data: [DONE]"):
                    continue
                events += 1
                if first_event is None:
                    first_event = now
                last_event = now
                if first_token is None:
                    at = line.find(CONTENT_MARK)
                    if at >= 0 and line[at + len(CONTENT_MARK):at + len(CONTENT_MARK) + 1] != b'"':
                        first_token = now
            end = time.perf_counter()
            if events == 0:
                stats.error("empty stream")
                return
            stats.latency.append(end - start)
            stats.ttft.append((first_token or first_event) - start)
            if events > 1:
                stats.per_chunk.append((last_event - first_event) / (events - 1))
            stats.chunks.append(events)
            stats.ok += 1
            if stats.ok == 1 and args.mark_first:
                print("first-done", flush=True, file=sys.stderr)
    except asyncio.TimeoutError:
        stats.error("timeout")
    except aiohttp.ClientError as exc:
        stats.error(type(exc).__name__)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    payload = {"model": args.model, "messages": [{"role": "user", "content": args.prompt}], "stream": args.stream}
    if args.stream:
        payload["stream_options"] = {"include_usage": True}
    payload.update(json.loads(args.body))
    body = json.dumps(payload).encode()
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
    headers.update(json.loads(args.headers))
    stats = Stats()
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        deadline = time.perf_counter() + args.max_seconds
        t0 = time.perf_counter()
        if args.mode == "closed":
            counter = iter(range(args.requests))

            async def worker() -> None:
                for _ in counter:
                    if time.perf_counter() > deadline:
                        return
                    await one(session, args, body, headers, stats, time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        else:
            tasks = []
            interval = 1.0 / args.rate
            for i in range(args.requests):
                due = t0 + i * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.perf_counter() > deadline:
                    break
                tasks.append(asyncio.ensure_future(one(session, args, body, headers, stats, due)))
            if tasks:
                await asyncio.wait(tasks, timeout=max(1.0, deadline + args.timeout - time.perf_counter()))
        elapsed = time.perf_counter() - t0
    ms = lambda xs: [x * 1000.0 for x in xs]  # noqa: E731
    return {
        "mode": args.mode, "stream": args.stream, "sent": stats.ok + sum(stats.errors.values()),
        "ok": stats.ok, "errors": stats.errors, "elapsed_s": elapsed,
        "throughput_rps": stats.ok / elapsed if elapsed > 0 else None,
        "latency_ms": summary(ms(stats.latency)), "ttft_ms": summary(ms(stats.ttft)),
        "per_chunk_ms": summary(ms(stats.per_chunk)),
        "chunks_mean": sum(stats.chunks) / len(stats.chunks) if stats.chunks else None,
        "bytes_mean": stats.bytes / stats.ok if stats.ok else None,
    }


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="proxy base URL, e.g. http://127.0.0.1:4000")
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--key", required=True)
    ap.add_argument("--model", default="policy")
    ap.add_argument("--prompt", default="Write one sentence about the sea.")
    ap.add_argument("--mode", choices=("closed", "open"), default="closed")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rate", type=float, default=20.0, help="open mode: requests per second")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--body", default="{}", help="JSON merged into the request body")
    ap.add_argument("--headers", default="{}", help="JSON of extra request headers")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this long")
    ap.add_argument("--timeout", type=float, default=120.0, help="per request")
    ap.add_argument("--mark-first", action="store_true", help="print 'first-done' on stderr when a stream ends")
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
