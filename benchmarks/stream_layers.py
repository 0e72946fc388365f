"""Loop CPU per streamed chunk with one vs two entries carrying the streaming iterator hook.

LiteLLM wraps a stream once per callback whose class has `async_post_call_streaming_iterator_hook`
in its own `__dict__` (a boundary iterator, an enrichment generator and the hook's generator per
chunk). The plugin gives it to one entry (callbacks/finish.py `enroll`); `two` puts it back on
the other entry's class too (the layout before), with LiteLLM's capability cache cleared. Both
run in one process on the real proxy app (uvicorn, uvloop), alternating in rounds, with the
upstream and the client (loop_block.py's) in subprocesses; the figure is the event loop
thread's CPU (`time.thread_time`, the writer thread excluded) over each round's streams.
`--offline` times the wrapping alone: LiteLLM's `ProxyLogging.async_post_call_streaming_iterator_hook`
over an in-memory source of 256 chunks, with two stand-in entries enrolled through
`finish.enroll` and the carrier's own work (capture, strip) off, so the difference is the layer.

    python benchmarks/stream_layers.py [--tokens 256] [--streams 20] [--rounds 6] [--offline]
"""

from __future__ import annotations

import argparse
import asyncio
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


def set_layers(n: int) -> int:
    """Give the final hooks to the carrier only (1) or to both entries' classes (2); returns the
    number of our entries LiteLLM will wrap a stream with."""
    from litellm.proxy.utils import ProxyLogging

    from litellm_rllm.callbacks import finish
    from litellm_rllm.callbacks.plugin import plugin

    p = plugin()
    other = p.entries["tracer" if p.calls.carrier == finish.SAMPLING else "sampling"]
    for name, hook in finish._FINAL_HOOKS.items():
        if n == 2:
            setattr(type(other), name, hook)
        elif name in vars(type(other)):
            delattr(type(other), name)
    ProxyLogging._callback_capabilities_cache.clear()
    ours = {id(e) for e in p.entries.values()}
    return sum(1 for cb, _ in ProxyLogging.callback_capabilities().iterator_overrides if id(cb) in ours)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from litellm_rllm.callbacks.plugin import plugin

    server, serve, url = await common.serve_proxy_app()
    client = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("loop_block.py")), "--client", url,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=common.env())
    body = {"max_tokens": args.tokens}

    async def ask() -> int:
        client.stdin.write(f"stream policy {json.dumps(body)}\n".encode())  # type: ignore[union-attr]
        await client.stdin.drain()  # type: ignore[union-attr]
        ans = json.loads(await client.stdout.readline())  # type: ignore[union-attr]
        assert ans["status"] == 200, ans
        return ans["chunks"] - 1  # minus [DONE]

    writer = plugin().writer
    for n in (1, 2, 1):
        set_layers(n)
        for _ in range(3):
            await ask()
    per_chunk: dict[int, list[float]] = {1: [], 2: []}
    chunks = 0
    for r in range(args.rounds):
        for n in ((1, 2) if r % 2 == 0 else (2, 1)):
            assert set_layers(n) == n
            await writer.aflush(120)
            await asyncio.sleep(0.2)
            c0 = time.thread_time()
            chunks = sum([await ask() for _ in range(args.streams)])
            per_chunk[n].append((time.thread_time() - c0) / chunks * 1e6)
    set_layers(1)
    client.stdin.close()  # type: ignore[union-attr]
    await client.wait()
    server.should_exit = True
    await serve
    med = {n: statistics.median(v) for n, v in per_chunk.items()}
    return {"streams_per_round": args.streams, "chunks_per_stream": chunks // args.streams, "rounds": args.rounds,
            "loop_cpu_us_per_chunk": {f"{n}_layer{'s' if n > 1 else ''}": [round(x, 2) for x in v]
                                      for n, v in per_chunk.items()},
            "median_us_per_chunk": {"one": round(med[1], 2), "two": round(med[2], 2)},
            "saved_us_per_chunk": round(med[2] - med[1], 2),
            "saved_fraction_of_loop_cpu": round((med[2] - med[1]) / med[2], 4)}


async def offline(args: argparse.Namespace) -> dict[str, Any]:
    import litellm
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.proxy._types import UserAPIKeyAuth
    from litellm.proxy.utils import ProxyLogging, UserApiKeyCache

    from litellm_rllm.callbacks import finish
    from litellm_rllm.callbacks import plugin as plugin_module
    from litellm_rllm.callbacks.plugin import Plugin
    from litellm_rllm.settings import Settings

    class Sampling(CustomLogger):
        pass

    class Tracer(CustomLogger):
        pass

    p = plugin_module._current = Plugin(Settings(store="sqlite:///:memory:"))
    first, second = Sampling(), Tracer()
    finish.enroll(first, finish.SAMPLING)
    finish.enroll(second, finish.TRACER)
    p.calls.roles.clear()  # the carrier's capture and strip off: the difference is the layer
    proxy_logging = ProxyLogging(user_api_key_cache=UserApiKeyCache())
    user = UserAPIKeyAuth(api_key="sk-bench")
    chunks = [object() for _ in range(args.tokens)]

    async def source() -> Any:
        for c in chunks:
            yield c

    def set_offline_layers(n: int) -> int:
        for name, hook in finish._FINAL_HOOKS.items():
            if n == 2:
                setattr(Tracer, name, hook)
            elif name in vars(Tracer):
                delattr(Tracer, name)
        litellm.callbacks = [first, second]
        ProxyLogging._callback_capabilities_cache.clear()
        return len(ProxyLogging.callback_capabilities().iterator_overrides)

    per_chunk: dict[int, list[float]] = {1: [], 2: []}
    k = 0
    for r in range(args.rounds + 2):  # the first two rounds warm up
        for n in ((1, 2) if r % 2 == 0 else (2, 1)):
            assert set_offline_layers(n) == n
            c0, served = time.thread_time(), 0
            for _ in range(args.streams):
                k += 1
                data = {"litellm_call_id": f"bench-{k}"}
                p.calls.get_or_create(data["litellm_call_id"])
                async for _ in proxy_logging.async_post_call_streaming_iterator_hook(source(), user, data):
                    served += 1
            if r >= 2:
                per_chunk[n].append((time.thread_time() - c0) / served * 1e6)
    med = {n: statistics.median(v) for n, v in per_chunk.items()}
    return {"streams_per_round": args.streams, "chunks_per_stream": args.tokens, "rounds": args.rounds,
            "median_us_per_chunk": {"one": round(med[1], 3), "two": round(med[2], 3)},
            "range_us_per_chunk": {"one": [round(min(per_chunk[1]), 3), round(max(per_chunk[1]), 3)],
                                   "two": [round(min(per_chunk[2]), 3), round(max(per_chunk[2]), 3)]},
            "saved_us_per_chunk": round(med[2] - med[1], 3),
            "saved_ms_per_stream": round((med[2] - med[1]) * args.tokens / 1000, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--streams", type=int, default=20, help="per round and variant")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--offline", action="store_true", help="time LiteLLM's wrapping alone, no proxy")
    args = ap.parse_args()
    import uvloop

    if args.offline:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        uvloop.install()
        print(json.dumps(asyncio.run(offline(args)), indent=1))
        return

    upstream = common.Upstream(args.tokens)
    folder = Path(tempfile.mkdtemp(prefix="rllm-stream-layers-"))
    config = common.write_config(folder, plugin=True, api_base=upstream.api_base)
    os.environ.update(common.env(CONFIG_FILE_PATH=str(config)))
    os.environ.pop("RLLM_STORE_URL", None)
    os.chdir(folder)
    uvloop.install()
    try:
        print(json.dumps(asyncio.run(measure(args)), indent=1))
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
