"""Saturated throughput by variant: which part of the plugin costs what when the proxy's core is full.

    python benchmarks/saturation.py [--modes stream,nonstream] [--rounds 6] [--seconds 10]
        [--variants bare,bare2,pass_through_hook,no_tee_parse,plugin] [--json out.json]

`attribution.py` measures CPU per call one request at a time; under load the plugin costs more
(`run.py`'s side-by-side: garbage collection, caches, GIL hand-overs between the loop and the
writer). This runs every variant as its own `litellm --config` subprocess, all up at once and
pinned to the same CPU (the fake vLLM upstream and the load generator on the others), and loads
one at a time with `run.py`'s saturating phase (closed loop: 16 concurrent requests, or 8
streams, for `--seconds`), the order rotating from round to round. Variants:

* `bare`, `bare2`: LiteLLM without callbacks, twice: bare2 / bare is the noise floor;
* `pass_through_hook`: bare LiteLLM plus one callback with a pass-through streaming iterator
  hook: LiteLLM's own price of a callback that sees streams chunk by chunk;
* `no_tee_parse`: the plugin, with the tee keeping nothing of an SSE body (stream traces
  empty): the full plugin minus this is what parsing the upstream's events costs;
* `plugin`: the three entries, a SQLite store (its helper process pinned with the proxy).

The last three come from `benchmarks/ablations/stream_parts.py`. The client asks for logprobs
and token ids itself, so every variant moves the same bytes. Reported per variant and mode:
medians over rounds of requests/s, the proxy's CPU per request (event-loop thread; other
threads and helper processes) and garbage collection per request (the GC probe), and the
median of the per-round throughput ratios against `bare` in the same round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import run  # noqa: E402

PARTS = "benchmarks.ablations.stream_parts."
VARIANTS: dict[str, list[str] | None] = {
    "bare": None,
    "bare2": None,
    "pass_through_hook": [PARTS + "pass_through_hook"],
    "no_tee_parse": [*common.RLLM_CALLBACKS[:-1], PARTS + "tracer_no_tee_parse"],
    "plugin": list(common.RLLM_CALLBACKS),
}
PHASES = {"stream": "st-sat", "nonstream": "ns-sat"}  # run.py's saturating phases


def phase(bench: run.Bench, proxy: common.Proxy, mode: str) -> dict[str, float]:
    """One saturating phase, run.py's own (`Bench.phase`: its load, CPU and GC readings)."""
    out = bench.phase(proxy, PHASES[mode])
    return {"rps": out["throughput_rps"], "loop_ms": out["cpu_loop_ms_per_req"],
            "other_ms": out["cpu_other_ms_per_req"], "gc_ms": out.get("gc_ms_per_req", float("nan")),
            "errors": float(sum(out["errors"].values()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="stream,nonstream")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=10.0, help="per phase and variant")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    names = [v for v in a.variants.split(",") if v]
    for name in [*modes, *names]:
        if name not in PHASES and name not in VARIANTS:
            ap.error(f"unknown mode or variant {name!r} (modes: {', '.join(PHASES)}; variants: {', '.join(VARIANTS)})")
    if "bare" not in names:
        ap.error("--variants must include bare (the ratios are against it)")

    # run.py's defaults: the client asks for logprobs and ids, 16 concurrent calls / 8 streams
    bench = run.Bench(argparse.Namespace(pin="auto", client_asks="logprobs", top_logprobs=0, concurrency=16,
                                         stream_concurrency=8, phase_seconds=a.seconds))
    work, plan = bench.dir, bench.plan
    upstream = common.Upstream(a.tokens, cpus=plan["upstream"], log_dir=work)
    proxies: dict[str, common.Proxy] = {}
    results: dict[str, dict[str, list[dict[str, float]]]] = {m: {v: [] for v in names} for m in modes}
    try:
        for name in names:
            callbacks = VARIANTS[name]
            cfg = common.write_config(work / name, plugin=callbacks is not None, api_base=upstream.api_base,
                                      callbacks=callbacks)
            proxies[name] = common.Proxy(name, cfg, plan["proxy"])
        for proxy in proxies.values():
            proxy.wait_ready()
        for mode in modes:
            clients = (["--stream", "--concurrency", str(bench.args.stream_concurrency)] if mode == "stream"
                       else ["--concurrency", str(bench.args.concurrency)])
            for proxy in proxies.values():  # warm-up: imports, pools, the store's first writes
                bench.loadgen(proxy, *clients, "--requests", "200", "--max-seconds", "20")
            for r in range(a.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    res = phase(bench, proxies[name], mode)
                    results[mode][name].append(res)
                    run.log(f"{mode} round {r + 1}/{a.rounds} {name:18s} {res['rps']:7.2f}/s  loop "
                            f"{res['loop_ms']:.2f} + other {res['other_ms']:.2f} ms/req, gc {res['gc_ms']:.2f}"
                            + (f", {res['errors']:.0f} errors" if res["errors"] else ""))
    finally:
        for proxy in proxies.values():
            proxy.stop()
        upstream.stop()

    print(f"saturated throughput, {a.tokens}-token replies, {a.rounds} rounds x {a.seconds:g}s, medians; "
          f"CPUs: proxies {plan['proxy']}, upstream+load {plan['upstream']}")
    for mode in modes:
        print(f"\n{mode}: {'variant':18s} {'req/s':>8s} {'vs bare':>8s} {'loop ms':>8s} {'other ms':>9s} {'gc ms':>7s}"
              f" {'errors':>6s}")
        bare = results[mode]["bare"]
        for name in names:
            rows = results[mode][name]
            ratio = statistics.median(x["rps"] / b["rps"] for x, b in zip(rows, bare))
            med = {k: statistics.median(x[k] for x in rows) for k in ("rps", "loop_ms", "other_ms", "gc_ms")}
            print(f"{'':{len(mode) + 1}s} {name:18s} {med['rps']:8.2f} {ratio:7.3f}x {med['loop_ms']:8.2f} "
                  f"{med['other_ms']:9.2f} {med['gc_ms']:7.2f} {sum(x['errors'] for x in rows):6.0f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=1))


if __name__ == "__main__":
    main()
