"""Objects each request moves into Python's oldest GC generation, bare LiteLLM against the plugin.

Why this decides part of the plugin's cost: LiteLLM's proxy holds ~800,000 objects after start-up
and every full collection walks all of them (~0.6 s on this VM). CPython runs one once the
objects promoted into the oldest generation since the last reach a quarter of it, so a
variant's share of full collections per request is its promotions per request (its heap size
cancels: a larger heap is walked more slowly but reached less often). A stream's chunk objects
live as long as the stream, so nearly all of them are promoted; what the plugin adds is
what of its own, or of LiteLLM's, it keeps alive across a collection.

One variant at a time (`litellm --config` subprocesses pinned like `run.py`), each warmed up,
then loaded for `--seconds` (closed loop: 8 streams or 16 calls at a time); the GC probe
(`gcprobe/`, `$RLLM_BENCH_GC_PROMOTIONS=types`) counts promotions and their types. Prints per
variant: requests, collections by generation, promoted objects per request, and the types
whose promotions per request differ most from bare's.

    python benchmarks/gc_promotions.py [--modes stream,nonstream] [--seconds 15]
        [--variants bare,plugin] [--types 15]

Counting slows the proxy (a list of the oldest generation per collection): read the counts,
not the throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import run  # noqa: E402
from saturation import VARIANTS  # noqa: E402


def measure(bench: run.Bench, upstream: common.Upstream, name: str, mode: str, seconds: float) -> dict:
    callbacks = VARIANTS[name]
    cfg = common.write_config(bench.dir / f"{name}-{mode}", plugin=callbacks is not None,
                              api_base=upstream.api_base, callbacks=callbacks)
    proxy = common.Proxy(name, cfg, bench.plan["proxy"]).wait_ready()
    try:
        load = ["--stream", "--concurrency", "8"] if mode == "stream" else ["--concurrency", "16"]
        bench.loadgen(proxy, *load, "--requests", "64" if mode == "stream" else "400", "--max-seconds", "30")
        before = proxy.gc_stats()
        out = bench.loadgen(proxy, *load, "--requests", "1000000", "--max-seconds", str(seconds))
        after = proxy.gc_stats()
    finally:
        proxy.stop()
    if not before or not after or "promoted" not in after:
        raise SystemExit(f"error: no GC probe readings from {name} (see {cfg.parent / 'proxy.log'})")
    n = max(1, out["ok"])
    types0, types1 = before["promoted_types"], after["promoted_types"]
    return {"requests": out["ok"], "counts": [a - b for a, b in zip(after["count"], before["count"])],
            "promoted": (after["promoted"] - before["promoted"]) / n,
            "types": {k: (v - types0.get(k, 0)) / n for k, v in types1.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="stream,nonstream")
    ap.add_argument("--seconds", type=float, default=15.0, help="load per variant and mode")
    ap.add_argument("--variants", default="bare,plugin", help=f"from: {', '.join(VARIANTS)}")
    ap.add_argument("--types", type=int, default=15, help="types listed (largest differences from bare)")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    names = [v for v in a.variants.split(",") if v]
    for m in modes:
        if m not in ("stream", "nonstream"):
            ap.error(f"unknown mode {m!r} (modes: stream, nonstream)")
    for name in names:
        if name not in VARIANTS:
            ap.error(f"unknown variant {name!r} (variants: {', '.join(VARIANTS)})")
    if names[0] != "bare":
        ap.error("--variants must start with bare (the differences are against it)")

    os.environ["RLLM_BENCH_GC_PROMOTIONS"] = "types"  # the proxies' probe reads it (gcprobe/)
    bench = run.Bench(argparse.Namespace(pin="auto", client_asks="logprobs", top_logprobs=0, concurrency=16,
                                         stream_concurrency=8, phase_seconds=a.seconds))
    upstream = common.Upstream(256, cpus=bench.plan["upstream"], log_dir=bench.dir)
    try:
        for mode in modes:
            res = {name: measure(bench, upstream, name, mode, a.seconds) for name in names}
            bare = res["bare"]
            print(f"\n{mode}, 256-token replies, {a.seconds:g} s per variant (collections: generations 0/1/2)")
            for name, r in res.items():
                extra = "" if name == "bare" else f"  ({r['promoted'] - bare['promoted']:+.0f}, " \
                                                  f"{r['promoted'] / bare['promoted'] - 1:+.1%})"
                print(f"  {name:18s} {r['requests']:6d} requests  collections {'/'.join(map(str, r['counts'])):>12s}"
                      f"  promoted per request {r['promoted']:8.0f}{extra}")
            for name, r in res.items():
                if name == "bare":
                    continue
                keys = set(r["types"]) | set(bare["types"])
                diff = sorted(keys, key=lambda k: -abs(r["types"].get(k, 0.0) - bare["types"].get(k, 0.0)))
                print(f"  promoted per request by type, bare -> {name} (largest differences):")
                for k in diff[:a.types]:
                    b, v = bare["types"].get(k, 0.0), r["types"].get(k, 0.0)
                    print(f"    {b:8.1f} {v:8.1f} {v - b:+8.1f}  {k}")
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
