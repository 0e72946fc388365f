"""The plugin's own CPU per request and per chunk, and the longest time it holds the event loop.

Runs the real LiteLLM proxy app with the plugin's config in this process (uvicorn on uvloop, as
`litellm --config` runs it), with

* every plugin entry point that runs on the event loop wrapped in a timer (the callbacks' hooks,
  the tee's per-read `UpstreamTap.feed`, the stream wrapper's per-chunk strip and end-of-stream
  record, the slug check). None of them awaits, so each call is one uninterrupted hold of the
  loop: its thread CPU time (`time.thread_time`) is the plugin's own work, its wall time adds
  OS preemption, GIL waits and garbage collections that happened to run inside it (reported
  apart). Nested timers are reported but not double counted;
* the writer thread's `_process` timed (thread CPU per trace, and its busy windows);
* a loop-lag monitor: a task that sleeps 1 ms and records how late it wakes. A lag inside a
  writer busy window is the GIL: the writer thread keeps it up to `sys.getswitchinterval()`
  (5 ms) while it runs Python, and for the whole of a C call or a garbage collection;
* every garbage collection (generation, duration, thread) through `gc.callbacks`.

Requests come from a client subprocess started before the measurement (no fork while measuring),
one at a time, so each request's plugin work is seen alone.

    python benchmarks/loop_block.py [--tokens 32000] [--top-logprobs 5] [--requests 3]
        [--modes nonstream,stream] [--switch-interval 0.001] [--gc-freeze] [--bare] [--json]

`--bare` runs the same without the plugin (the loop lag LiteLLM itself causes, for comparison);
`--switch-interval` and `--gc-freeze` are experiments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# ----------------------------------------------------------------------------- timing


class Timeline:
    """Outermost plugin segments on the loop thread: (name, start, wall, cpu, gc) where `gc` is
    the time garbage collections took inside the segment (a collection runs in whichever code
    allocates when a threshold is crossed, so it is LiteLLM's heap being scanned as much as
    ours); nested segments are kept per name only. Writer windows: (start, end, CPU, items)."""

    def __init__(self) -> None:
        self.depth = 0
        self.segments: list[tuple[str, float, float, float, float]] = []
        self.nested: dict[str, list[float]] = {}
        self.writer: list[tuple[float, float, float, int]] = []
        self.writer_steps: dict[str, list[tuple[float, float, float]]] = {}  # name -> (start, wall, cpu)
        self.lags: list[tuple[float, float]] = []
        self.loop_thread = threading.get_ident()
        self.gc_loop = 0.0  # seconds of GC on the loop thread so far
        self.gc_pauses: list[tuple[float, float, bool, int]] = []  # (start, seconds, on the loop thread, generation)
        self._gc_start = 0.0

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
            return
        dt = time.perf_counter() - self._gc_start
        on_loop = threading.get_ident() == self.loop_thread
        if on_loop:
            self.gc_loop += dt
        self.gc_pauses.append((self._gc_start, dt, on_loop, int(info.get("generation", -1))))


TL = Timeline()


def _timed(name: str, fn: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    perf, cpu = time.perf_counter, time.thread_time

    def enter() -> Optional[tuple[float, float, float]]:
        TL.depth += 1
        return (perf(), cpu(), TL.gc_loop) if TL.depth == 1 else (perf(), 0.0, 0.0)

    def leave(mark: tuple[float, float, float]) -> None:
        TL.depth -= 1
        if TL.depth == 0:
            TL.segments.append((name, mark[0], perf() - mark[0], cpu() - mark[1], TL.gc_loop - mark[2]))
        else:
            TL.nested.setdefault(name, []).append(perf() - mark[0])

    if is_async:
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            mark = enter()
            try:
                return await fn(*args, **kwargs)
            finally:
                leave(mark)  # type: ignore[arg-type]

        awrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        return awrapper

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != TL.loop_thread:
            return fn(*args, **kwargs)
        mark = enter()
        try:
            return fn(*args, **kwargs)
        finally:
            leave(mark)  # type: ignore[arg-type]

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def timed_sync(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    return _timed(name, fn, False)


def timed_async(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """For hooks that never await anything real: the coroutine runs in one go."""
    return _timed(name, fn, True)


def instrument() -> None:
    from litellm_rllm.callbacks import finish, upstream_tap
    from litellm_rllm.callbacks import plugin as plugin_mod
    from litellm_rllm.callbacks.sampling_policy import SamplingPolicyCallback
    from litellm_rllm.callbacks.session_metadata import SessionMetadataCallback
    from litellm_rllm.callbacks.trace_capture import TraceCaptureCallback
    from litellm_rllm.capture.sse import SSEParser
    from litellm_rllm.writer.trace_writer import TraceWriter
    from litellm_rllm.capture.stream import StreamAccumulator

    hooks = ("async_pre_call_hook", "async_pre_call_deployment_hook")
    for cls, short in ((SessionMetadataCallback, "metadata"), (SamplingPolicyCallback, "sampling"),
                       (TraceCaptureCallback, "tracer")):
        for hook in hooks:
            if hook in cls.__dict__:  # LiteLLM checks the class __dict__: keep it there
                setattr(cls, hook, timed_async(f"{short}.{hook}", cls.__dict__[hook]))
    # the final hooks: `finish.enroll` puts them on the first entry's class when it is created
    for hook in ("async_post_call_success_hook", "async_post_call_failure_hook"):
        finish._FINAL_HOOKS[hook] = timed_async(f"final.{hook}", finish._FINAL_HOOKS[hook])
    # the slug check (SlugRoute.handle calls it before re-dispatching; it is passed by reference
    # at install time, so it is patched before the proxy starts)
    plugin_init = plugin_mod.Plugin.__init__

    def timed_init(self: Any, *args: Any, **kwargs: Any) -> None:
        plugin_init(self, *args, **kwargs)
        self.check_slug = timed_sync("slug check", self.check_slug)

    plugin_mod.Plugin.__init__ = timed_init
    # the stream wrapper's per-chunk and end-of-stream work (module globals, looked up per call)
    finish.strip_chunk = timed_sync("stream: strip chunk", finish.strip_chunk)
    finish._record = timed_sync("record", finish._record)
    finish._submit = timed_sync("submit", finish._submit)
    # the tee: one call per network read of the upstream body (parse + accumulate)
    upstream_tap.UpstreamTap.feed = timed_sync("tee: feed read", upstream_tap.UpstreamTap.feed)
    upstream_tap.UpstreamTap.json_body = timed_sync("tee: json body", upstream_tap.UpstreamTap.json_body)
    SSEParser.close = timed_sync("tee: parser close", SSEParser.close)
    StreamAccumulator.add = timed_sync("accumulate event", StreamAccumulator.add)

    # the writer thread's own steps (each one holds the GIL from start to end, or releases it
    # inside: pipe I/O, SQLite): thread CPU and wall per call
    from litellm_rllm import builder as build_mod
    from litellm_rllm.writer import build_process
    from litellm_rllm.store.sqlite import SqliteStore

    def writer_step(name: str, owner: Any, attr: str) -> None:
        fn = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            c0, t0 = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                TL.writer_steps.setdefault(name, []).append((t0, time.perf_counter() - t0, time.thread_time() - c0))

        setattr(owner, attr, wrapper)

    writer_step("prepare (trim, price)", build_mod, "prepare")
    writer_step("pickle item", build_process, "dumps")
    writer_step("send item (writev)", build_process, "_write_all")
    writer_step("read result (incl. wait)", build_process, "_read_frame")
    writer_step("store write", SqliteStore, "write_encoded")
    from litellm_rllm.writer import encoders

    writer_step("build + encode in the thread", encoders, "encode_item")
    process = TraceWriter._process

    def timed_process(self: Any, items: list[Any]) -> Any:
        c0, t0 = time.thread_time(), time.perf_counter()
        try:
            return process(self, items)
        finally:
            TL.writer.append((t0, time.perf_counter(), time.thread_time() - c0, len(items)))

    TraceWriter._process = timed_process


async def lag_monitor(stop: asyncio.Event, period: float = 0.001) -> None:
    perf = time.perf_counter
    while not stop.is_set():
        t0 = perf()
        await asyncio.sleep(period)
        t1 = perf()
        TL.lags.append((t0, t1 - t0 - period))


# ----------------------------------------------------------------------------- client


async def client_main(url: str) -> None:
    """`--client URL`: one request per stdin line (`nonstream MODEL BODYJSON` / `stream ...`),
    one JSON line back with its timing."""
    import aiohttp

    headers = {"Authorization": f"Bearer {common.MASTER_KEY}", "x-rllm-slug": common.slug_for("loop-block")}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        while True:
            line = await reader.readline()
            if not line:
                return
            mode, model, body_json = line.decode().strip().split(" ", 2)
            body = {"model": model, "messages": [{"role": "user", "content": "Tell a long story."}],
                    "stream": mode == "stream", **json.loads(body_json)}
            if mode == "stream":
                body["stream_options"] = {"include_usage": True}
            t0 = time.perf_counter()
            chunks = size = 0
            async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
                status = resp.status
                if mode == "stream":
                    async for raw in resp.content:
                        if raw.startswith(b"data:"):
                            chunks += 1
                            size += len(raw)
                else:
                    data = await resp.read()
                    size = len(data)
                if status != 200:
                    print(f"HTTP {status}: {data[:500]!r}", file=sys.stderr) if mode != "stream" else None
            print(json.dumps({"status": status, "seconds": time.perf_counter() - t0, "chunks": chunks, "bytes": size}),
                  flush=True)


# ----------------------------------------------------------------------------- proxy side


def summarize(t_from: float, t_to: float, requests: int, chunks: int) -> dict[str, Any]:
    segs = [seg for seg in TL.segments if t_from <= seg[1] <= t_to]
    per_name: dict[str, list[tuple[float, float, float]]] = {}
    for name, _, wall, cpu, gcs in segs:
        per_name.setdefault(name, []).append((wall, cpu, gcs))
    chunk_names = {"tee: feed read", "stream: strip chunk", "accumulate event"}
    cpu_total = sum(seg[3] for seg in segs)
    cpu_chunks = sum(seg[3] for seg in segs if seg[0] in chunk_names)
    writer = [w for w in TL.writer if t_from <= w[0] <= t_to]
    w_items = sum(w[3] for w in writer)
    lags = [(t, lag) for t, lag in TL.lags if t_from <= t <= t_to]
    gcs = [g for g in TL.gc_pauses if t_from <= g[0] <= t_to]

    def in_writer(t: float, lag: float) -> bool:
        return any(ws <= t + lag + 0.001 and t <= we for ws, we, _, _ in writer)

    lag_writer = [lag for t, lag in lags if in_writer(t, lag)]
    lag_other = [lag for t, lag in lags if not in_writer(t, lag)]
    worst_wall = max(segs, key=lambda seg: seg[2]) if segs else ("-", 0.0, 0.0, 0.0, 0.0)
    worst_cpu = max(segs, key=lambda seg: seg[3]) if segs else ("-", 0.0, 0.0, 0.0, 0.0)
    worst_own = max(segs, key=lambda seg: seg[2] - seg[4]) if segs else ("-", 0.0, 0.0, 0.0, 0.0)
    lag_sorted = sorted(lag for _, lag in lags)
    return {
        "requests": requests,
        "chunks_per_request": chunks / max(1, requests),
        # CPU of the loop thread inside plugin code (thread_time), GC included
        "loop_us_per_request": (cpu_total - cpu_chunks) / max(1, requests) * 1e6,
        "loop_us_per_chunk": cpu_chunks / chunks * 1e6 if chunks else None,
        "loop_us_total_per_request": cpu_total / max(1, requests) * 1e6,
        # the longest single hold of the loop by plugin code: wall, and wall without GC pauses
        "max_block_ms": worst_wall[2] * 1e3,
        "max_block_where": worst_wall[0],
        "max_block_cpu_ms": worst_cpu[3] * 1e3,
        "max_block_cpu_where": worst_cpu[0],
        "max_block_no_gc_ms": (worst_own[2] - worst_own[4]) * 1e3,
        "max_block_no_gc_where": worst_own[0],
        "by_hook": {name: {"calls": len(v),
                           "cpu_us_mean": sum(x[1] for x in v) / len(v) * 1e6,
                           "wall_us_max": max(x[0] for x in v) * 1e6,
                           "cpu_us_max": max(x[1] for x in v) * 1e6,
                           "gc_us_max": max(x[2] for x in v) * 1e6,
                           "cpu_us_per_request": sum(x[1] for x in v) / max(1, requests) * 1e6}
                    for name, v in sorted(per_name.items(), key=lambda kv: -sum(x[1] for x in kv[1]))},
        "nested_us_mean": {name: sum(v) / len(v) * 1e6 for name, v in TL.nested.items()},
        "writer_cpu_us_per_trace": sum(w[2] for w in writer) / w_items * 1e6 if w_items else 0.0,
        "writer_steps": {name: {"calls": len(v), "cpu_ms_total": sum(x[2] for x in v) * 1e3,
                                "cpu_ms_max": max(x[2] for x in v) * 1e3, "wall_ms_max": max(x[1] for x in v) * 1e3}
                         for name, vals in TL.writer_steps.items()
                         for v in [[x for x in vals if t_from <= x[0] <= t_to]] if v},
        "gc_in_writer_ms": sum(g[1] for g in gcs if not g[2]) * 1e3,
        "writer_wall_ms_max": max((w[1] - w[0]) * 1e3 for w in writer) if writer else 0.0,
        "lag_samples": len(lags),
        "lag_max_ms": max((lag for _, lag in lags), default=0.0) * 1e3,
        "lag_p99_ms": lag_sorted[int(0.99 * (len(lag_sorted) - 1))] * 1e3 if lag_sorted else 0.0,
        "lag_max_writer_ms": max(lag_writer, default=0.0) * 1e3,
        "lag_max_outside_writer_ms": max(lag_other, default=0.0) * 1e3,
        "lag_over_2ms_in_writer": sum(1 for x in lag_writer if x > 0.002),
        "gc_max_ms_loop": max((g[1] for g in gcs if g[2]), default=0.0) * 1e3,
        "gc_max_ms_writer": max((g[1] for g in gcs if not g[2]), default=0.0) * 1e3,
        "gc_ms_per_request": sum(g[1] for g in gcs) / max(1, requests) * 1e3,
        "gc_full_collections": sum(1 for g in gcs if g[3] == 2),
        "gc_full_ms_max": max((g[1] for g in gcs if g[3] == 2), default=0.0) * 1e3,
    }


async def serve_and_measure(args: argparse.Namespace, config: Path) -> dict[str, Any]:
    import uvicorn
    from litellm.proxy.proxy_server import app

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False,
                                           lifespan="on"))
    serve = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serve.done():
            serve.result()
            raise RuntimeError("proxy did not start")
        await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    if args.gc_freeze:
        import gc

        gc.collect()
        gc.freeze()  # the experiment: everything alive after start-up leaves the collector's view
    cpus = common.cpu_plan("auto")["client"] if args.client_cpus is None else [int(c) for c in args.client_cpus.split(",")]
    client = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", url, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=common.env(),
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    body: dict[str, Any] = {"logprobs": True, "return_token_ids": True, "max_tokens": args.tokens}
    if args.top_logprobs:
        body["top_logprobs"] = args.top_logprobs
    model = "policy-32k" if args.tokens == common.LONG_TOKENS else "policy"

    async def ask(mode: str, model: str = model, body: dict[str, Any] = body) -> dict[str, Any]:
        client.stdin.write(f"{mode} {model} {json.dumps(body)}\n".encode())  # type: ignore[union-attr]
        await client.stdin.drain()  # type: ignore[union-attr]
        return json.loads(await client.stdout.readline())  # type: ignore[union-attr]

    writer = None
    if not args.bare:
        from litellm_rllm.callbacks.plugin import plugin

        writer = plugin().writer
    short = {**body, "max_tokens": 16}
    for _ in range(2):  # warm: first-call imports and caches, the client's connection
        await ask("nonstream", "policy", short)
        await ask("stream", "policy", short)
    if writer is not None:
        await writer.aflush(120)
    await asyncio.sleep(0.3)

    stop = asyncio.Event()
    monitor = asyncio.create_task(lag_monitor(stop))
    out: dict[str, Any] = {"tokens": args.tokens, "top_logprobs": args.top_logprobs, "bare": args.bare,
                           "switch_interval_s": sys.getswitchinterval()}
    for mode in args.modes.split(","):
        await asyncio.sleep(0.2)
        TL.nested.clear()
        t_from = time.perf_counter()
        chunks = 0
        answers = []
        for _ in range(args.requests):
            ans = await ask(mode)
            answers.append(ans)
            chunks += ans["chunks"] - (1 if mode == "stream" else 0)  # minus [DONE]
            if writer is not None:
                await writer.aflush(300)  # the writer builds the trace while the monitor watches
            await asyncio.sleep(0.3)
        t_to = time.perf_counter()
        res = summarize(t_from, t_to, args.requests, chunks)
        res["request_seconds"] = [round(a["seconds"], 3) for a in answers]
        res["status"] = sorted({a["status"] for a in answers})
        res["response_bytes"] = answers[-1]["bytes"]
        out[mode] = res
    stop.set()
    await monitor
    if writer is not None:
        out["writer_stats"] = writer.stats()
    client.stdin.close()  # type: ignore[union-attr]
    await client.wait()
    server.should_exit = True
    await serve
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", default=None, help="fake vLLM api_base (default: start one)")
    ap.add_argument("--tokens", type=int, default=common.LONG_TOKENS)
    ap.add_argument("--top-logprobs", type=int, default=5)
    ap.add_argument("--requests", type=int, default=3, help="per mode")
    ap.add_argument("--modes", default="nonstream,stream")
    ap.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval (experiment)")
    ap.add_argument("--client-cpus", default=None)
    ap.add_argument("--bare", action="store_true", help="LiteLLM without the plugin (lag baseline)")
    ap.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once the proxy is up (experiment)")
    ap.add_argument("--plugin-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="a callback_settings.litellm_rllm key (repeatable), e.g. writer_build_process=false")
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    args = ap.parse_args(argv)

    import uvloop

    if args.client:
        uvloop.install()
        asyncio.run(client_main(args.client))
        return

    upstream = None
    api_base = args.upstream
    if api_base is None:
        plan = common.cpu_plan("auto")
        upstream = common.Upstream(args.tokens if args.tokens != common.LONG_TOKENS else 256, cpus=plan["upstream"])
        api_base = upstream.api_base
    folder = Path(tempfile.mkdtemp(prefix="rllm-loop-block-"))
    config = common.write_config(folder, plugin=not args.bare, api_base=api_base,
                                 settings=common.parse_settings(args.plugin_setting))
    os.environ.update(common.env(CONFIG_FILE_PATH=str(config)))
    os.environ.pop("RLLM_STORE_URL", None)
    os.chdir(folder)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    TL.loop_thread = threading.get_ident()
    import gc

    gc.callbacks.append(TL.gc_callback)
    if not args.bare:
        instrument()
    uvloop.install()
    try:
        result = asyncio.run(serve_and_measure(args, config))
    finally:
        if upstream is not None:
            upstream.stop()
    if args.json:
        print(json.dumps(result))
        return
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
