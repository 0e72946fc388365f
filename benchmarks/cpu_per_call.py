"""Proxy CPU per call, bare LiteLLM against LiteLLM + litellm-rllm: one request at a time.

Why beside `run.py`: throughput at saturation on a shared VM moves 10% from round to round,
the size of the gap it measures. CPU time per call of the whole proxy process (every thread,
and its build process) with one request in flight at a time is steadier: no queueing, no
scheduler interplay between the two proxies. Both proxies run side by side (same pinned CPU,
same upstream); rounds alternate their order and the script prints medians.

    python benchmarks/cpu_per_call.py [--stream] [--requests 100] [--rounds 8] [--tokens 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

import common  # noqa: E402


def one_call(client: httpx.Client, proxy: common.Proxy, body: dict[str, Any], headers: dict[str, str]) -> None:
    url = proxy.base_url + "/v1/chat/completions"
    if body.get("stream"):
        with client.stream("POST", url, json=body, headers=headers) as r:
            for _ in r.iter_bytes():
                pass
    else:
        r = client.post(url, json=body, headers=headers)
    if r.status_code != 200:
        raise RuntimeError(f"{proxy.name}: HTTP {r.status_code}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--requests", type=int, default=100, help="calls per proxy and round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--pin", choices=("auto", "none"), default="auto")
    a = ap.parse_args()

    plan = common.cpu_plan(a.pin)
    work = Path(tempfile.mkdtemp(prefix="rllm-cpu-"))
    upstream = common.Upstream(a.tokens, cpus=plan["upstream"], log_dir=work)
    proxies: dict[str, common.Proxy] = {}
    try:
        for name in ("bare", "plugin"):
            config = common.write_config(work / name, plugin=name == "plugin", api_base=upstream.api_base)
            proxies[name] = common.Proxy(name, config, cpus=plan["proxy"])
        for proxy in proxies.values():
            proxy.wait_ready()
        if plan["client"]:
            os.sched_setaffinity(0, plan["client"])
        body = {"model": "policy", "messages": [{"role": "user", "content": "Tell a story."}],
                "max_tokens": a.tokens, "logprobs": True, "return_token_ids": True, "stream": a.stream}
        headers = {**common.auth(), "x-rllm-slug": common.slug_for("cpu-per-call")}
        per_call: dict[str, list[float]] = {name: [] for name in proxies}
        with httpx.Client(timeout=120) as client:
            for proxy in proxies.values():
                for _ in range(a.warmup):
                    one_call(client, proxy, body, headers)
            for rnd in range(a.rounds):
                order = list(proxies) if rnd % 2 == 0 else list(proxies)[::-1]
                for name in order:
                    proxy = proxies[name]
                    time.sleep(0.5)  # the other proxy's writer and GC settle
                    before = common.cpu_seconds(proxy.pid)
                    for _ in range(a.requests):
                        one_call(client, proxy, body, headers)
                    time.sleep(0.3)  # this proxy's writer finishes the round's traces
                    per_call[name].append((common.cpu_seconds(proxy.pid) - before) / a.requests * 1e3)
        kind = "stream" if a.stream else "non-streamed call"
        bare, plugin = (statistics.median(per_call[n]) for n in ("bare", "plugin"))
        print(f"proxy CPU per {kind} ({a.tokens} tokens, {a.rounds} rounds x {a.requests}, medians):")
        for name in proxies:
            print(f"  {name:7s} {statistics.median(per_call[name]):8.2f} ms   rounds "
                  + " ".join(f"{x:.1f}" for x in per_call[name]))
        print(f"  plugin adds {plugin - bare:+.2f} ms ({(plugin / bare - 1) * 100:+.1f}%); "
              f"implied throughput {bare / plugin:.3f}x")
    finally:
        for proxy in proxies.values():
            proxy.stop()
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
