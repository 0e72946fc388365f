"""The plugin's CPU per call against bare LiteLLM, in one proxy process, alternating.

    python benchmarks/inproc_ab.py [--modes nonstream,stream] [--rounds 12] [--requests 20]
        [--streams 6] [--tokens 256] [--plugin-setting KEY=VALUE ...] [--json out.json]

Why one process: two proxy processes one request at a time (`attribution.py`) differ by
+-10 ms per stream bare against bare on this VM (memory layout, placement, drift), more than
the plugin's cost. Here the real proxy app (uvicorn, uvloop, the plugin's config) serves in
this process, and between rounds the plugin's entries are taken out of, and put back into,
every LiteLLM callback list (LiteLLM's capability cache cleared), so `bare` is the same process
without the plugin's hooks. What `bare` still has: the plugin imported, its routes mounted and
its writer thread idle; the client's `x-rllm-slug` header is then only a header.

Each round measures each variant (order alternating) over `--requests` calls (`--streams`
streams), one at a time from a client subprocess (loop_block.py's), the client asking for
logprobs and token ids itself so both sides move the same bytes; the window ends after the
plugin's writer has written the round's traces (`aflush`), so its thread's work is in; it
starts after a full `gc.collect()`, so a full collection landing in one window and not the
other (tens of ms in LiteLLM's heap) does not decide the pair. CPU is
this process's (every thread: `time.process_time`), the loop thread's (`time.thread_time`) and
the trace writer thread's (its `pthread_getcpuclockid` clock); the plugin's helper processes
(store process, build process: children, so not in `process_time`) are read from their
`/proc/PID/schedstat` and reported beside it, and added in `with_helpers_plugin_minus_bare_ms`.
The upstream and the client run on the other CPUs. Reported: medians per variant and the
median over rounds of (plugin - bare) in the same round, with quartiles.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402


class Toggle:
    """Takes the plugin's entries out of LiteLLM's callback lists and puts them back in place."""

    def __init__(self) -> None:
        import litellm

        from litellm_rllm.callbacks.plugin import plugin

        self.litellm = litellm
        self.ours = {id(e) for e in plugin().entries.values()}
        self.lists = {name: list(value) for name, value in vars(litellm).items()
                      if isinstance(value, list) and any(id(x) in self.ours for x in value)}
        assert "callbacks" in self.lists, "the plugin's entries are not in litellm.callbacks"

    def set(self, on: bool) -> None:
        from litellm.proxy.utils import ProxyLogging

        for name, full in self.lists.items():
            current = getattr(self.litellm, name)
            current[:] = full if on else [x for x in full if id(x) not in self.ours]
        ProxyLogging._callback_capabilities_cache.clear()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from litellm_rllm.callbacks.plugin import plugin

    server, serve, url = await common.serve_proxy_app()
    others = args.plan["client"]
    client = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("loop_block.py")), "--client", url,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=common.env(),
        preexec_fn=(lambda: os.sched_setaffinity(0, others)) if others else None)
    body = {"logprobs": True, "return_token_ids": True, "max_tokens": args.tokens}

    async def ask(mode: str) -> None:
        client.stdin.write(f"{mode} policy {json.dumps(body)}\n".encode())  # type: ignore[union-attr]
        await client.stdin.drain()  # type: ignore[union-attr]
        ans = json.loads(await client.stdout.readline())  # type: ignore[union-attr]
        assert ans["status"] == 200, ans

    toggle = Toggle()
    writer = plugin().writer
    writer_clock = common.writer_cpu_clock(writer)
    written0 = writer.stats().get("written", 0)
    report: dict[str, Any] = {"tokens": args.tokens, "rounds": args.rounds, "modes": {}}
    for mode in args.modes:
        n = args.streams if mode == "stream" else args.requests
        for on in (True, False, True):  # warm both sides
            toggle.set(on)
            for _ in range(3):
                await ask(mode)
        await writer.aflush(120)
        cpu: dict[str, list[float]] = {"bare": [], "plugin": []}
        loop: dict[str, list[float]] = {"bare": [], "plugin": []}
        wrote: dict[str, list[float]] = {"bare": [], "plugin": []}  # the writer thread's CPU
        helped: dict[str, list[float]] = {"bare": [], "plugin": []}  # the plugin's helper processes'
        for r in range(args.rounds):
            for name in (("plugin", "bare") if r % 2 == 0 else ("bare", "plugin")):
                toggle.set(name == "plugin")
                await asyncio.sleep(0.2)
                gc.collect()  # each window starts with the collector's counts at zero
                w0 = time.clock_gettime(writer_clock)
                helpers = common.plugin_helpers(os.getpid())
                h0 = common.sched_cpu_seconds(helpers)
                p0, t0 = time.process_time(), time.thread_time()
                for _ in range(n):
                    await ask(mode)
                await writer.aflush(120)
                cpu[name].append((time.process_time() - p0) / n * 1000)
                loop[name].append((time.thread_time() - t0) / n * 1000)
                wrote[name].append((time.clock_gettime(writer_clock) - w0) / n * 1000)
                helped[name].append((common.sched_cpu_seconds(helpers) - h0) / n * 1000)
            print(f"[{time.strftime('%H:%M:%S')}] {mode} round {r + 1}/{args.rounds}", file=sys.stderr)
        report["modes"][mode] = summarize(cpu, loop, n)
        report["modes"][mode]["writer_thread_ms_per_call"] = {k: round(statistics.median(v), 3) for k, v in wrote.items()}
        report["modes"][mode]["helper_processes_ms_per_call"] = {
            k: round(statistics.median(v), 3) for k, v in helped.items()}
        total = [p + hp - b - hb for p, hp, b, hb in zip(cpu["plugin"], helped["plugin"], cpu["bare"], helped["bare"])]
        report["modes"][mode]["with_helpers_plugin_minus_bare_ms"] = round(statistics.median(total), 3)
    toggle.set(True)
    report["traces_written"] = writer.stats().get("written", 0) - written0
    client.stdin.close()  # type: ignore[union-attr]
    await client.wait()
    server.should_exit = True
    await serve
    return report


def summarize(cpu: dict[str, list[float]], loop: dict[str, list[float]], n: int) -> dict[str, Any]:
    def quart(xs: list[float]) -> list[float]:
        q = statistics.quantiles(xs, n=4)
        return [round(q[0], 3), round(q[2], 3)]

    diff = [p - b for p, b in zip(cpu["plugin"], cpu["bare"])]
    ldiff = [p - b for p, b in zip(loop["plugin"], loop["bare"])]
    bare = statistics.median(cpu["bare"])
    return {
        "calls_per_round": n,
        "cpu_ms_per_call": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
        "loop_ms_per_call": {k: round(statistics.median(v), 3) for k, v in loop.items()},
        "plugin_minus_bare_ms": round(statistics.median(diff), 3),
        "plugin_minus_bare_quartiles_ms": quart(diff),
        "plugin_minus_bare_percent": round(statistics.median(diff) / bare * 100, 2),
        "loop_plugin_minus_bare_ms": round(statistics.median(ldiff), 3),
        "other_threads_plugin_minus_bare_ms": round(statistics.median(d - l for d, l in zip(diff, ldiff)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="nonstream,stream")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--requests", type=int, default=20, help="non-streamed calls per round and variant")
    ap.add_argument("--streams", type=int, default=6, help="streams per round and variant")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--pin", choices=("auto", "none"), default="auto")
    ap.add_argument("--plugin-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="a callback_settings.litellm_rllm key for the plugin (repeatable), e.g."
                         " writer_build_process_min_bytes=0")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("nonstream", "stream") for m in args.modes):
        ap.error("--modes takes nonstream and/or stream")
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (quartiles)")
    import uvloop

    args.plan = common.cpu_plan(args.pin)
    upstream = common.Upstream(args.tokens, cpus=args.plan["upstream"])
    folder = Path(tempfile.mkdtemp(prefix="rllm-inproc-ab-"))
    config = common.write_config(folder, plugin=True, api_base=upstream.api_base,
                                 settings=common.parse_settings(args.plugin_setting))
    os.environ.update(common.env(CONFIG_FILE_PATH=str(config)))
    os.environ.pop("RLLM_STORE_URL", None)
    os.chdir(folder)
    if args.plan["proxy"]:
        os.sched_setaffinity(0, args.plan["proxy"])
    uvloop.install()
    try:
        report = asyncio.run(measure(args))
    finally:
        upstream.stop()
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
