"""The tee's cost per streamed event, offline: SSE framing, JSON parse, accumulation.

    python benchmarks/tee_events.py [--tokens 256] [--top-logprobs 0] [--repeat 200]

Why offline: in the proxy the tee's per-event work (`UpstreamTap.feed` -> `SSEParser` ->
`StreamAccumulator.add`, on the event loop for every chunk) is a few microseconds among
LiteLLM's tens, below what the proxy-level A/B (`inproc_ab.py`) resolves; here each layer runs
alone on a real fake-vLLM stream, read the way a paced upstream delivers it (one event per
read) and the way a fast one does (many per read). Reported: microseconds per event, best of 5.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402

import common  # noqa: E402
from litellm_rllm.capture.sse import SSEParser  # noqa: E402
from litellm_rllm.capture.stream import StreamAccumulator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--top-logprobs", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=200)
    a = ap.parse_args()
    body = {"model": "policy", "messages": [{"role": "user", "content": "Tell a story."}], "max_tokens": a.tokens,
            "logprobs": True, "return_token_ids": True, "stream": True}
    if a.top_logprobs:
        body["top_logprobs"] = a.top_logprobs
    upstream = common.Upstream(a.tokens)
    try:
        with httpx.stream("POST", upstream.api_base + "/chat/completions", json=body, timeout=60) as r:
            raw = b"".join(r.iter_raw())
    finally:
        upstream.stop()
    events = [e + b"\n\n" for e in raw.split(b"\n\n") if e]
    datas = [e[6:-2] for e in events if not e.startswith(b"data: [DONE]")]
    payloads = [orjson.loads(d) for d in datas]
    fast_reads = [raw[i:i + 16384] for i in range(0, len(raw), 16384)]

    def tee(reads: list[bytes]) -> None:
        acc = StreamAccumulator()
        parser = SSEParser(acc.add)
        for read in reads:
            parser.feed(read)
        parser.close()

    def accumulate() -> None:
        acc = StreamAccumulator()
        for event in payloads:
            acc.add(event)

    def parse() -> None:
        for d in datas:
            orjson.loads(d)

    n = len(events)
    print(f"tee per event, {a.tokens}-token stream ({n} events, {len(raw)} bytes, top_logprobs {a.top_logprobs}):")
    for name, fn in (("tee, one event per read", lambda: tee(events)),
                     ("tee, 16 KiB reads", lambda: tee(fast_reads)),
                     ("  of which accumulate", accumulate), ("  of which JSON parse", parse)):
        best = min(timeit.repeat(fn, number=a.repeat, repeat=5)) / a.repeat
        print(f"  {name:28s} {best / n * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
