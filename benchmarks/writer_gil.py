"""How long the trace writer thread stalls the event loop (through the GIL) for one big trace.

The writer builds and stores traces off the event loop, but in the same process: while it runs
Python code it holds the GIL, and the loop thread waits for it, up to `sys.getswitchinterval()`
(5 ms by default) per hand-over, or for the whole of a single C call (a JSON parse, a pydantic
validation, a `struct.pack`) that does not release the GIL.

This runs an idle asyncio loop (uvloop) with a 1 ms lag monitor, hands the writer one captured
call (a 32,000-token reply with top_logprobs 5 by default, streamed or not, as the proxy would
capture it from vLLM's bytes), and reports the loop lag while the writer works, next to the
writer thread's time per stage: the encoder (build + encode in the thread, or, with the build
process, prepare + pickle + pipe I/O + waiting for it) and the SQLite write. `cpu` is the writer
thread's own CPU, i.e. the time it can hold the GIL.

    python benchmarks/writer_gil.py [--tokens 32000] [--top 5] [--kind stream,nonstream]
        [--encoder process,inline] [--switch-interval 0.001] [--json]
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
    from litellm_rllm.capture.record import CallRecord
    from litellm_rllm.capture.sse import SSEParser
    from litellm_rllm.capture.stream import StreamAccumulator

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
        body = nonstream_body(tokens, top)  # as the tee keeps it: the reads, 64 KiB each
        rec.raw_body = [body[k:k + 65536] for k in range(0, len(body), 65536)]
        rec.hidden = {"response_cost": 0.0}
    return rec


# ------------------------------------------------------------------------------ measurement


def _lag_stats(lags: list[float]) -> dict[str, float]:
    ordered = sorted(lags)
    return {
        "max_ms": (ordered[-1] if ordered else 0.0) * 1e3,
        "p99_ms": (ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0) * 1e3,
        "p50_ms": (ordered[len(ordered) // 2] if ordered else 0.0) * 1e3,
        "over_2ms": sum(1 for x in ordered if x > 0.002),
        "wakeups": len(ordered),
    }


async def measure(writer: Any, record: Any, settle: float = 1.0) -> dict[str, Any]:
    """Loop lag while the writer handles `record`, and in an idle window of `settle` seconds
    just before: the machine's own noise floor (scheduler, other processes), for comparison."""
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
    idle = [lag for t, lag in lags if t + lag < t_submit and t > t_submit - settle + 0.1]
    return {
        "writer_busy_ms": (t_done - t_submit) * 1e3,
        "stages_ms": {name: {"wall": sum(v[1] for v in vals) * 1e3, "cpu": sum(v[2] for v in vals) * 1e3,
                             "cpu_max": max(v[2] for v in vals) * 1e3}
                      for name, vals in STAGES.items()},
        "lag": _lag_stats(busy),
        "idle_lag": _lag_stats(idle),
        "gc_pauses": len(GC_PAUSES),
        "gc_max_ms": max((p[1] for p in GC_PAUSES), default=0.0) * 1e3,
        "gc_total_ms": sum(p[1] for p in GC_PAUSES) * 1e3,
        "gc_gen2": sum(1 for p in GC_PAUSES if p[2] == 2),
    }


async def run(args: argparse.Namespace, encoder_kind: str) -> dict[str, Any]:
    from litellm_rllm.builder import build_trace, prepare
    from litellm_rllm.writer.build_process import BuildProcess
    from litellm_rllm.writer.encoders import InlineEncoder
    from litellm_rllm.store.sqlite import SqliteStore
    from litellm_rllm.writer.trace_writer import TraceWriter

    folder = tempfile.mkdtemp(prefix="rllm-writer-gil-")
    store = SqliteStore(os.path.join(folder, "traces.db"))
    store.write_encoded = staged("sqlite write", store.write_encoded)  # type: ignore[method-assign]
    encoder: Any = (BuildProcess("litellm_rllm.builder:build_trace", prepare=prepare) if encoder_kind == "process"
                    else InlineEncoder(build_trace))
    label = "prepare + send + wait for the build process" if encoder_kind == "process" else "build + encode"
    encoder.encode = staged(label, encoder.encode)
    writer = TraceWriter(store, encoder=encoder, close_at_exit=False)
    pin = _pin_plan(args.pin)
    out: dict[str, Any] = {"tokens": args.tokens, "top_logprobs": args.top, "switch_interval_s": sys.getswitchinterval(),
                           "encoder": encoder_kind}
    # warm: imports, the store's first statements, the build process's start
    for kind in args.kind.split(","):
        writer.submit(make_record(kind, 16, args.top))
    await writer.aflush(60)
    if pin is not None:  # this process (loop + writer thread) on one core, the build process beside it
        os.sched_setaffinity(0, pin[0])
        if getattr(encoder, "pid", None):
            os.sched_setaffinity(encoder.pid, pin[1])
    for kind in args.kind.split(","):
        record = make_record(kind, args.tokens, args.top)
        out[kind] = await measure(writer, record)
    out["writer_stats"] = writer.stats()
    writer.close()
    out["written"] = store.count()
    store.close()
    return out


def _pin_plan(pin: str) -> Optional[tuple[set[int], set[int]]]:
    allowed = sorted(os.sched_getaffinity(0))
    if pin == "none" or len(allowed) < 2:
        return None
    return {allowed[-1]}, set(allowed[:-1])


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32000)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--kind", default="stream,nonstream")
    ap.add_argument("--encoder", default="process,inline", help="where traces are built: process, inline or both")
    ap.add_argument("--switch-interval", type=float, default=None)
    ap.add_argument("--pin", choices=("auto", "none"), default="auto",
                    help="auto: loop + writer thread on one CPU, the build process on the others")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    import uvloop

    uvloop.install()
    threading.current_thread().name = "loop"
    import gc

    gc.callbacks.append(_gc_callback)
    results = [asyncio.run(run(args, kind)) for kind in args.encoder.split(",")]
    if args.json:
        print(json.dumps(results))
        return
    for result in results:
        print(f"one {args.tokens}-token trace, top_logprobs {args.top}; switch interval "
              f"{result['switch_interval_s'] * 1e3:g} ms; built: {result['encoder']}")
        for kind in args.kind.split(","):
            r = result[kind]
            stages = ", ".join(f"{k} {v['wall']:.1f} ms (writer thread cpu {v['cpu']:.1f})"
                               for k, v in r["stages_ms"].items())
            print(f"  {kind:9s}: writer busy {r['writer_busy_ms']:.0f} ms [{stages}]")
            for name, lag in (("while busy", r["lag"]), ("idle, before", r["idle_lag"])):
                print(f"             loop lag {name:12s}: max {lag['max_ms']:.2f} ms, p99 {lag['p99_ms']:.2f} ms, "
                      f"p50 {lag['p50_ms']:.2f} ms, {lag['over_2ms']} of {lag['wakeups']} wakeups over 2 ms")
            print(f"             garbage collections: {r['gc_pauses']} ({r['gc_gen2']} full), longest {r['gc_max_ms']:.1f} ms,"
                  f" total {r['gc_total_ms']:.0f} ms")
        stats = result["writer_stats"]
        print(f"  written {result['written']}, built inline {stats.get('encoded_inline', '-')}, "
              f"build errors {stats['build_errors']}")


if __name__ == "__main__":
    main()
