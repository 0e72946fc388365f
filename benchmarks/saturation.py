"""Saturated throughput by variant: which part of the plugin costs what when the proxy's core is full.

    python benchmarks/saturation.py [--modes stream,nonstream] [--rounds 6] [--seconds 10]
        [--variants bare,bare2,pass_through_hook,no_tee_parse,plugin] [--fresh] [--together]
        [--json out.json]

`attribution.py` measures CPU per call one request at a time; under load the plugin costs more
(`run.py`'s side-by-side: garbage collection, caches, GIL hand-overs between the loop and the
writer). This runs every variant as its own `litellm --config` subprocess, all up at once and
pinned to the same CPU (the fake vLLM upstream and the load generator on the others), and loads
one at a time with `run.py`'s saturating phase (closed loop: 16 concurrent requests, or 8
streams, for `--seconds`), the order rotating from round to round. Variants:

* `bare`, `bare2`: LiteLLM without callbacks, twice: bare2 / bare is the noise floor;
* `pass_through_hook`: bare LiteLLM plus one callback with a pass-through streaming iterator
  hook: LiteLLM's own price of a callback that sees streams chunk by chunk;
* `metadata_only`, `sampling_only`: one entry alone: the slug decoded into LiteLLM's
  metadata; the policies and the one stream wrapper (which then captures nothing);
* `sampling_no_cancel_points`: the sampling entry alone, its stream wrapper never yielding
  to the loop on its own (`finish.CANCEL_POINT_S`);
* `no_tracer`: the metadata and sampling entries without the tracer (no tee, no trace);
* `no_tee_parse`: the plugin, with the tee keeping nothing of an SSE body (stream traces
  empty): the full plugin minus this is what parsing the upstream's events costs;
* `batch_parse`: the plugin, the tee keeping an SSE body's reads and parsing them once it
  ends (a client that asked for token ids then misses the ones LiteLLM drops);
  `batch_parse_ids`: the same with the ids read from the bytes as they pass (both tried as
  the late parse, 2026-12-06, docs/benchmarks.md);
* `discard_store`: the plugin with a store that takes every batch and writes nothing
  (`ablations/writer_stages.py`): no SQLite, no helper process writing;
* `plugin`: the three entries, a SQLite store (its helper process pinned with the proxy).

The stand-ins come from `benchmarks/ablations/`. The client asks for logprobs
and token ids itself, so every variant moves the same bytes. Reported per variant and mode:
medians over rounds of requests/s, the proxy's CPU per request (event-loop thread; other
threads and helper processes) and garbage collection per request (the GC probe's wall time:
with `--together` that includes the other proxies' turns on the CPU), and the median of the
per-round throughput ratios against `bare` in the same round, and every round's ratio.

`--fresh` starts new proxy processes for every round (each warmed up again): one process per
variant for the whole run carries that process's own bias (two identical bare proxies differ
by up to 6% over a run on a 2-core VM: memory layout, hash seeds, where its pages landed) into
every round, so more rounds do not average it out; fresh processes do.

`--together` loads every variant at the same time instead of one after another, each proxy in
a session of its own: Linux's autogroup scheduler then gives each an equal share of the one CPU
(its helper processes and threads included: the plugin starts its helpers in the proxy's
session, `writer/helper_process.py`; before 2026-12-06 they had sessions of their own, and their CPU
came out of every proxy's share), so requests/s against bare's in the same phase is bare's CPU
per request over the variant's, measured in the same seconds: the VM's drift over a round
(bare alone moves 8.6-9.4 streams/s from round to round) no longer decides the pair. `CPU vs
bare` is that ratio read directly (bare's CPU per request over the variant's, per round, the
median): it does not depend on the shares being equal. `client busy` says how busy the load
side's CPUs were; near 100% the load, not the proxies, set the pace, and the ratios mean
nothing.

`--gc-freeze`: `gc.collect(); gc.freeze()` in every proxy after its warm-up (the GC probe's
experiment). Full collections cost LiteLLM ~0.6 s each on this VM (walking its heap, freeing
~177,000 objects of cyclic garbage), one per ~30 streams; with fresh proxies and one warm-up
the count in a phase is nearly the same every round for one variant and can differ by one
between two (~8% of a 20 s phase). `full GCs/100` is their count per 100 requests;
`gc_promotions.py` says how much of them is the plugin's.

`--rate R`: every proxy gets R requests (streams) a second, open loop, instead of a closed loop
that saturates; requests/s then say nothing and `CPU vs bare` is the reading: each proxy's CPU
per request at the same load. Why: with saturating non-streamed calls, two fresh bare proxies
sharing the CPU equally differ by up to 25% in CPU per call within one phase.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import run  # noqa: E402

PARTS = "benchmarks.ablations.stream_parts."
VARIANTS: dict[str, list[str] | None] = {
    "bare": None,
    "bare2": None,
    "pass_through_hook": [PARTS + "pass_through_hook"],
    "metadata_only": list(common.RLLM_CALLBACKS[:1]),
    "sampling_only": list(common.RLLM_CALLBACKS[1:2]),
    "sampling_no_cancel_points": [PARTS + "sampling_no_cancel_points"],
    "no_tracer": list(common.RLLM_CALLBACKS[:-1]),
    "no_tee_parse": [*common.RLLM_CALLBACKS[:-1], PARTS + "tracer_no_tee_parse"],
    "batch_parse": [*common.RLLM_CALLBACKS[:-1], PARTS + "tracer_batch_parse"],
    "batch_parse_ids": [*common.RLLM_CALLBACKS[:-1], PARTS + "tracer_batch_parse_ids"],
    "discard_store": [*common.RLLM_CALLBACKS[:-1], "benchmarks.ablations.writer_stages.tracer_discard"],
    "plugin": list(common.RLLM_CALLBACKS),
}
PHASES = {"stream": "st-sat", "nonstream": "ns-sat"}  # run.py's saturating phases
OPEN_PHASES = {"stream": "st-rate", "nonstream": "ns-rate"}  # and its open-loop ones (--rate)


def phase(bench: run.Bench, proxies: list[common.Proxy], mode: str, open_rate: bool = False) -> dict[str, dict[str, float]]:
    """One saturating phase against `proxies` at once, run.py's own (`Bench.phase_at_once`: its
    load, CPU and GC readings); `open_rate`: its open-loop phase at `bench`'s rate instead."""
    outs = bench.phase_at_once(proxies, (OPEN_PHASES if open_rate else PHASES)[mode])
    return {name: {"rps": out["throughput_rps"], "loop_ms": out["cpu_loop_ms_per_req"],
                   "other_ms": out["cpu_other_ms_per_req"], "gc_ms": out.get("gc_ms_per_req", float("nan")),
                   "gc_counts": out.get("gc_counts"), "gc_ms_by_gen": out.get("gc_ms_by_gen"), "n": out["ok"],
                   "client_busy": out["client_cpus_busy"], "errors": float(sum(out["errors"].values()))}
            for name, out in outs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="stream,nonstream")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=10.0, help="per phase and variant")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--fresh", action="store_true", help="new proxy processes every round (see above)")
    ap.add_argument("--together", action="store_true", help="load every variant at once (see above)")
    ap.add_argument("--fresh-warmup", type=int, default=64, help="requests (streams) warming each fresh proxy")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.collect(); gc.freeze() in every proxy after its warm-up (see above)")
    ap.add_argument("--rate", type=float, default=None,
                    help="open loop: this many requests (streams) a second to each proxy instead of saturating (see above)")
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
    if a.rate is not None:
        bench.ns_rate = bench.st_rate = a.rate
    upstream = common.Upstream(a.tokens, cpus=plan["upstream"], log_dir=work)
    proxies: dict[str, common.Proxy] = {}
    results: dict[str, dict[str, list[dict[str, float]]]] = {m: {v: [] for v in names} for m in modes}

    started = [0]  # every start its own folders: a fresh store too

    def start() -> None:
        started[0] += 1
        for name in names:
            callbacks = VARIANTS[name]
            cfg = common.write_config(work / f"{name}-{started[0]}", plugin=callbacks is not None,
                                      api_base=upstream.api_base, callbacks=callbacks)
            proxies[name] = common.Proxy(name, cfg, plan["proxy"], new_session=a.together)
        for proxy in proxies.values():
            proxy.wait_ready()

    def stop() -> None:
        for proxy in proxies.values():
            proxy.stop()
        proxies.clear()

    def warm(mode: str, requests: int) -> None:  # imports, pools, the store's first writes
        clients = (["--stream", "--concurrency", str(bench.args.stream_concurrency)] if mode == "stream"
                   else ["--concurrency", str(bench.args.concurrency)])
        for proxy in proxies.values():
            bench.loadgen(proxy, *clients, "--requests", str(requests), "--max-seconds", "20")
        if a.gc_freeze:
            for proxy in proxies.values():
                proxy.gc_freeze()
            time.sleep(1.5)  # the probe looks for the request every 0.1 s; a collection of the heap follows

    try:
        if not a.fresh:
            start()
        for mode in modes:
            if not a.fresh:
                warm(mode, 200)
            for r in range(a.rounds):
                if a.fresh:
                    start()
                    warm(mode, a.fresh_warmup)
                order = names[r % len(names):] + names[:r % len(names)]
                groups = [order] if a.together else [[name] for name in order]
                for group in groups:
                    for name, res in phase(bench, [proxies[n] for n in group], mode, a.rate is not None).items():
                        results[mode][name].append(res)
                        run.log(f"{mode} round {r + 1}/{a.rounds} {name:18s} {res['rps']:7.2f}/s  loop "
                                f"{res['loop_ms']:.2f} + other {res['other_ms']:.2f} ms/req, gc {res['gc_ms']:.2f}, "
                                f"client busy {res['client_busy']:.0%}, collections by generation {res['gc_counts']} in {res['n']}"
                                + (f", {res['errors']:.0f} errors" if res["errors"] else ""))
                if a.fresh:
                    stop()
    finally:
        stop()
        upstream.stop()

    print(f"saturated throughput, {a.tokens}-token replies, {a.rounds} rounds x {a.seconds:g}s, medians; "
          f"CPUs: proxies {plan['proxy']}, upstream+load {plan['upstream']}; "
          f"{'all variants loaded at once' if a.together else 'one variant at a time'}"
          f"{', fresh proxies every round' if a.fresh else ''}{', gc.freeze() after warm-up' if a.gc_freeze else ''}"
          f"{f', open loop at {a.rate:g}/s per proxy' if a.rate is not None else ''}")
    for mode in modes:
        print(f"\n{mode}: {'variant':18s} {'req/s':>8s} {'vs bare':>8s} {'CPU vs bare':>11s} {'loop ms':>8s} {'other ms':>9s} {'gc wall ms':>10s}"
              f" {'full GCs/100':>12s} {'errors':>6s} {'client busy':>11s}   "
              + ("CPU ratios by round" if a.rate is not None else "ratios by round"))
        bare = results[mode]["bare"]
        for name in names:
            rows = results[mode][name]
            ratios = [x["rps"] / b["rps"] for x, b in zip(rows, bare)]
            cpu_ratios = [(b["loop_ms"] + b["other_ms"]) / (x["loop_ms"] + x["other_ms"]) for x, b in zip(rows, bare)]
            med = {k: statistics.median(x[k] for x in rows) for k in ("rps", "loop_ms", "other_ms", "gc_ms", "client_busy")}
            counted = [x for x in rows if x.get("gc_counts")]  # the probe answered
            full_per_100 = (100.0 * sum(x["gc_counts"][2] for x in counted) / max(1, sum(x["n"] for x in counted))
                            if counted else float("nan"))
            print(f"{'':{len(mode) + 1}s} {name:18s} {med['rps']:8.2f} {statistics.median(ratios):7.3f}x "
                  f"{statistics.median(cpu_ratios):10.3f}x "
                  f"{med['loop_ms']:8.2f} {med['other_ms']:9.2f} {med['gc_ms']:10.2f} {full_per_100:12.2f} "
                  f"{sum(x['errors'] for x in rows):6.0f} {med['client_busy']:10.0%}   "
                  # open loop: every proxy serves the same rate, so CPU is what differs by round
                  + " ".join(f"{x:.3f}" for x in (cpu_ratios if a.rate is not None else ratios)))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=1))


if __name__ == "__main__":
    main()
