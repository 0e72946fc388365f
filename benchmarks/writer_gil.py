"""How long the trace writer thread stalls the event loop (through the GIL) for one big trace.

The writer builds and stores traces off the event loop, but in the same process: while it runs
Python code it holds the GIL, and the loop thread waits for it, up to `sys.getswitchinterval()`
(5 ms by default) per hand-over, or for the whole of a single C call (a JSON parse, a pydantic
validation, a `struct.pack`) that does not release the GIL.

This runs an idle asyncio loop (uvloop) with a 1 ms lag monitor, hands the writer one captured
call (a 32,000-token reply with top_logprobs 5 by default, streamed or not, as the proxy would
capture it from vLLM's bytes), and reports the loop lag while the writer works, next to the
writer's time per stage (build the Trace / encode / SQLite write).

    python benchmarks/writer_gil.py [--tokens 32000] [--top 5] [--kind stream,nonstream]
        [--switch-interval 0.001] [--experiment packed] [--json]

`--experiment packed` is a prototype, in this process only, of keeping the top-logprob columns
packed from the stream accumulator to the codec (no `TopLogprob` objects on the write path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_memory import vllm_sse  # noqa: E402

STAGES: dict[str, list[tuple[float, float, float]]] = {}  # name -> (start, wall, cpu)
GC_PAUSES: list[tuple[float, float, int]] = []  # (start, seconds, generation) of each collection


def _gc_callback(phase: str, info: dict[str, Any], _start: list[float] = [0.0]) -> None:
    if phase == "start":
        _start[0] = time.perf_counter()
    else:
        GC_PAUSES.append((_start[0], time.perf_counter() - _start[0], info.get("generation", -1)))


def staged(name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        c0, t0 = time.thread_time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            STAGES.setdefault(name, []).append((t0, time.perf_counter() - t0, time.thread_time() - c0))

    return wrapper


def nonstream_body(tokens: int, top: int) -> bytes:
    """vLLM's non-streaming chat completion for the same reply as `vllm_sse`."""
    items, text, ids = [], [], []
    for j in range(tokens):
        lp = -((j % 64) + 1) / 64
        tok = f" w{j % 5000}"
        text.append(tok)
        ids.append(j % 50000)
        items.append({"token": tok, "logprob": lp, "bytes": [32, 119],
                      "top_logprobs": [{"token": tok if r == 0 else f" alt{r}", "logprob": lp - r, "bytes": [32]}
                                       for r in range(top)]})
    body = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "policy",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text), "tool_calls": []},
                         "logprobs": {"content": items}, "finish_reason": "length", "stop_reason": None,
                         "token_ids": ids}],
            "usage": {"prompt_tokens": 512, "completion_tokens": tokens, "total_tokens": 512 + tokens},
            "prompt_token_ids": list(range(1000, 1512))}
    return json.dumps(body).encode()


def make_record(kind: str, tokens: int, top: int) -> Any:
    from litellm_rllm.record import CallRecord
    from litellm_rllm.sse import SSEParser
    from litellm_rllm.stream import StreamAccumulator

    upstream = {"model": "policy", "custom_llm_provider": "hosted_vllm", "api_base": "http://vllm:8000/v1",
                "messages": [{"role": "user", "content": "Tell a long story."}], "logprobs": True,
                "top_logprobs": top, "extra_body": {"return_token_ids": True}}
    rec = CallRecord(call_id=f"gil-{kind}-{time.time_ns()}", started_wall=time.time(), model="policy",
                     route="/v1/chat/completions", stream=kind == "stream", latency_ms=1.0,
                     session={"session_id": "gil"}, upstream=upstream, client_request=dict(upstream))
    if kind == "stream":
        acc = StreamAccumulator()
        parser = SSEParser(acc.add)
        for chunk in vllm_sse(tokens, top):
            parser.feed(chunk)
        parser.close()
        rec.stream_result = acc
    else:
        rec.raw_body = nonstream_body(tokens, top)
    return rec


# ------------------------------------------------------------------------------ experiment


def install_packed_experiment() -> None:
    """Prototype: the accumulator's top-logprob columns go to the codec as they are.

    `StreamAccumulator.choices` leaves `top_logprobs` unset and parks its columns (token strings,
    float32 logprobs, counts per position) beside the choice; `codec.encode_detail` writes the
    same detail blob from them (`top_lps.tobytes()` is already the packed float32 column).
    Decoding is unchanged. Stream path only, for the measurement."""
    from litellm_rllm.store import codec
    from litellm_rllm import stream as stream_mod

    parked: dict[int, Any] = {}
    original_choices = stream_mod.StreamAccumulator.choices
    original_detail = codec.encode_detail

    def choices(self: Any) -> Any:
        saved = {}
        for index, acc in self._choices.items():
            saved[index] = acc.has_tops
            acc.has_tops = False  # skip building 160k TopLogprob objects
        try:
            out = original_choices(self)
        finally:
            for index, acc in self._choices.items():
                acc.has_tops = saved[index]
        for choice in out:
            acc = self._choices[choice.index]
            if acc.has_tops:
                parked[id(choice)] = (acc.top_tokens, acc.top_lps, acc.top_counts)
        return out

    def encode_detail(trace: Any) -> Optional[bytes]:
        cols = [parked.pop(id(c), None) for c in trace.choices]
        if not any(cols):
            return original_detail(trace)
        import struct
        import zlib

        import orjson

        per_choice: list[dict[str, Any]] = []
        tokens: list[str] = []
        floats: list[bytes] = []
        for choice, col in zip(trace.choices, cols):
            entry: dict[str, Any] = {}
            if choice.tokens is not None:
                entry["tokens"] = choice.tokens
            if col is not None:
                top_tokens, top_lps, top_counts = col
                entry["n"] = top_counts.tolist()
                tokens.extend(top_tokens)
                floats.append(top_lps.tobytes() if sys.byteorder == "little" else struct.pack(f"<{len(top_lps)}f", *top_lps))
            per_choice.append(entry)
        head = orjson.dumps({"choices": per_choice, "t": tokens, "i": None, "x": None})
        body = b"".join((struct.pack("<BI", codec.DETAIL_FORMAT, len(head)), head, *floats))
        return zlib.compress(body, codec._ZLIB_LEVEL)

    stream_mod.StreamAccumulator.choices = choices
    codec.encode_detail = encode_detail


# ------------------------------------------------------------------------------ measurement


async def measure(writer: Any, record: Any, settle: float = 0.3) -> dict[str, Any]:
    lags: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def monitor() -> None:
        perf = time.perf_counter
        while not stop.is_set():
            t0 = perf()
            await asyncio.sleep(0.001)
            lags.append((t0, perf() - t0 - 0.001))

    task = asyncio.create_task(monitor())
    await asyncio.sleep(settle)
    STAGES.clear()
    GC_PAUSES.clear()
    t_submit = time.perf_counter()
    writer.submit(record)
    await writer.aflush(600)
    t_done = time.perf_counter()
    await asyncio.sleep(0.05)
    stop.set()
    await task
    busy = [lag for t, lag in lags if t_submit <= t + lag and t <= t_done]
    idle = [lag for t, lag in lags if t + lag < t_submit]
    busy_sorted = sorted(busy)
    return {
        "writer_busy_ms": (t_done - t_submit) * 1e3,
        "stages_ms": {name: {"wall": sum(v[1] for v in vals) * 1e3, "cpu": sum(v[2] for v in vals) * 1e3}
                      for name, vals in STAGES.items()},
        "lag_max_ms": max(busy, default=0.0) * 1e3,
        "lag_p50_ms": busy_sorted[len(busy_sorted) // 2] * 1e3 if busy else 0.0,
        "lag_p99_ms": busy_sorted[int(0.99 * (len(busy_sorted) - 1))] * 1e3 if busy else 0.0,
        "lags_over_2ms": sum(1 for x in busy if x > 0.002),
        "loop_wakeups": len(busy),
        "gc_pauses": len(GC_PAUSES),
        "gc_max_ms": max((p[1] for p in GC_PAUSES), default=0.0) * 1e3,
        "gc_total_ms": sum(p[1] for p in GC_PAUSES) * 1e3,
        "gc_gen2": sum(1 for p in GC_PAUSES if p[2] == 2),
        "idle_lag_max_ms": max(idle, default=0.0) * 1e3,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from litellm_rllm import build
    from litellm_rllm.store.sqlite import SqliteStore
    from litellm_rllm.store.writer import TraceWriter

    folder = tempfile.mkdtemp(prefix="rllm-writer-gil-")
    store = SqliteStore(os.path.join(folder, "traces.db"))
    store.write = staged("sqlite write (encode + commit)", store.write)  # type: ignore[method-assign]
    from litellm_rllm.store import codec

    codec_encode = codec.encode
    codec.encode = staged("  of which encode", codec_encode)
    import litellm_rllm.store.sqlite as sqlite_mod

    if getattr(sqlite_mod, "encode", None) is codec_encode:
        sqlite_mod.encode = codec.encode  # type: ignore[attr-defined]
    writer = TraceWriter(store, build=staged("build Trace", build.build_trace), close_at_exit=False)
    out: dict[str, Any] = {"tokens": args.tokens, "top_logprobs": args.top, "switch_interval_s": sys.getswitchinterval(),
                           "experiment": args.experiment}
    # warm: imports, the store's first statements
    warm = make_record("stream", 16, args.top)
    writer.submit(warm)
    await writer.aflush(60)
    for kind in args.kind.split(","):
        record = make_record(kind, args.tokens, args.top)
        out[kind] = await measure(writer, record)
    writer.close()
    out["written"] = store.count()
    store.close()
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32000)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--kind", default="stream,nonstream")
    ap.add_argument("--switch-interval", type=float, default=None)
    ap.add_argument("--experiment", choices=("none", "packed"), default="none")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.experiment == "packed":
        install_packed_experiment()
    import uvloop

    uvloop.install()
    threading.current_thread().name = "loop"
    import gc

    gc.callbacks.append(_gc_callback)
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
        return
    print(f"one {args.tokens}-token trace, top_logprobs {args.top}; switch interval {result['switch_interval_s'] * 1e3:g} ms;"
          f" experiment: {args.experiment}")
    for kind in args.kind.split(","):
        r = result[kind]
        stages = ", ".join(f"{k} {v['wall']:.0f} ms (cpu {v['cpu']:.0f})" for k, v in r["stages_ms"].items())
        print(f"  {kind:9s}: writer busy {r['writer_busy_ms']:.0f} ms [{stages}]")
        print(f"             loop lag while busy: max {r['lag_max_ms']:.2f} ms, p99 {r['lag_p99_ms']:.2f} ms, "
              f"p50 {r['lag_p50_ms']:.2f} ms, {r['lags_over_2ms']} of {r['loop_wakeups']} wakeups over 2 ms "
              f"(idle before: max {r['idle_lag_max_ms']:.2f} ms)")
        print(f"             garbage collections: {r['gc_pauses']} ({r['gc_gen2']} full), longest {r['gc_max_ms']:.1f} ms,"
              f" total {r['gc_total_ms']:.0f} ms")


if __name__ == "__main__":
    main()
