"""Where the plugin's CPU goes, by ablation, in one run: proxy CPU per call for each variant.

    python benchmarks/attribution.py [--modes nonstream,stream] [--rounds 16] [--requests 20]
        [--streams 4] [--tokens 256] [--variants bare,bare2,plugin,...] [--baseline REV]
        [--json out.json]

One `litellm --config` subprocess per variant, all up at once, all pinned to the same CPU (the
upstream and this client on the others), one request at a time. Each round visits every
variant (the order rotates from round to round) and measures the CPU of the whole proxy
process (every thread, from `/proc/PID/task/*/schedstat`, nanoseconds; and its build process)
over `--requests` calls plus a short settle for its writer. Variants:

* `bare`, `bare2`: LiteLLM without callbacks, twice: bare2 - bare is the noise floor;
* `metadata`, `sampling`, `tracer`: each entry alone;
* `plugin`: the three entries (the full plugin, a SQLite store);
* `discard`: the plugin with a store that discards every batch;
* `tap_off`: the plugin with `raw_capture: false` (LiteLLM's parsed response, no tee);
* `no_build`, `no_encode`, `no_commit`: the plugin with the writer's build (prepare +
  build_trace), encode (codec.encode) or SQLite commit replaced by a no-op;
* not by default: `commit_each` / `commit_500ms`, the plugin with `writer_commit_interval_s`
  0 (a transaction per call at these rates) or 0.5 s (the default is 0.2 s); `build_child`,
  the plugin building every trace in its build process (`writer_build_process_min_bytes: 0`).

`--baseline REV` adds `plugin@REV`: the full plugin with `litellm_rllm` from that git revision
(`git archive` into the run's temp folder), measured in the same rounds: before/after a change
with the machine's drift paired out.

The last four swap one stage on the plugin's writer from a benchmark-only entry
(`benchmarks/ablations/writer_stages.py`, listed in place of the tracer); the package has no
switch for them. The client asks for logprobs and token ids itself, so every variant moves the
same bytes (`sampling` then injects nothing new; it still decides and strips).

Reported per variant: the median over rounds of CPU ms per call, and the median over rounds
of (variant - bare) within the same round (paired: drift of the machine cancels). The load
average is printed beside each mode: on a shared machine CPU time per call rises with load
(caches, frequency), so compare figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

import common  # noqa: E402

M, S, T = "litellm_rllm.callbacks.metadata", "litellm_rllm.callbacks.sampling", "litellm_rllm.callbacks.tracer"
ABLATED = "benchmarks.ablations.writer_stages.tracer_"

# name -> (callbacks or None for bare, extra plugin settings, what it shows)
VARIANTS: dict[str, tuple[Optional[list[str]], dict[str, Any], str]] = {
    "bare": (None, {}, "LiteLLM, no callbacks"),
    "bare2": (None, {}, "the same again: the noise floor"),
    "metadata": ([M], {}, "the metadata entry alone"),
    "sampling": ([S], {}, "the sampling entry alone"),
    "tracer": ([T], {}, "the tracer alone"),
    "plugin": ([M, S, T], {}, "all three (the full plugin)"),
    "discard": ([M, S, ABLATED + "discard"], {}, "plugin, store discards"),
    "tap_off": ([M, S, T], {"raw_capture": False}, "plugin, raw_capture: false"),
    "no_build": ([M, S, ABLATED + "no_build"], {}, "plugin, build a no-op"),
    "no_encode": ([M, S, ABLATED + "no_encode"], {}, "plugin, encode a no-op"),
    "no_commit": ([M, S, ABLATED + "no_commit"], {}, "plugin, commit a no-op (rollback)"),
    # not in the default run: the group-commit setting at other values
    "commit_each": ([M, S, T], {"writer_commit_interval_s": 0}, "plugin, a transaction per call"),
    "commit_500ms": ([M, S, T], {"writer_commit_interval_s": 0.5}, "plugin, commit interval 0.5 s"),
    "build_child": ([M, S, T], {"writer_build_process_min_bytes": 0}, "plugin, every build in the build process"),
}
DEFAULT_VARIANTS = [v for v in VARIANTS if not v.startswith("commit_") and v != "build_child"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def task_cpu_ns(pid: int) -> tuple[int, int]:
    """Run time (schedstat, ns) of `pid`'s main thread (the event loop) and of everything else:
    its other live threads (the writer, SQLite's checkpointer, LiteLLM's) and descendants."""
    main = other = 0
    for p in (pid, *common.descendants(pid)):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    ns = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if int(t) == pid:
                main += ns
            else:
                other += ns
    return main, other


def one_call(client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    if body.get("stream"):
        with client.stream("POST", url, json=body, headers=headers) as r:
            for _ in r.iter_bytes():
                pass
    else:
        r = client.post(url, json=body, headers=headers)
    if r.status_code != 200:
        raise RuntimeError(f"{url}: HTTP {r.status_code}")


def measure(client: httpx.Client, proxies: dict[str, common.Proxy], names: list[str], body: dict[str, Any],
            headers: dict[str, str], rounds: int, n: int, settle: float) -> dict[str, dict[str, list[float]]]:
    """Per variant: CPU ms per call per round, from schedstat (`ns`: `loop` thread + `other`
    threads) and from stat ticks (`ticks`)."""
    out = {name: {"ns": [], "ticks": [], "loop": [], "other": []} for name in names}
    for rnd in range(rounds):
        k = rnd % len(names)
        order = names[k:] + names[:k]
        if rnd % 2:
            order.reverse()
        for name in order:
            proxy = proxies[name]
            url = proxy.base_url + "/v1/chat/completions"
            time.sleep(settle)  # the previous proxy's writer and GC settle
            (m0, o0), t0 = task_cpu_ns(proxy.pid), common.cpu_seconds(proxy.pid)
            for _ in range(n):
                one_call(client, url, body, headers)
            time.sleep(settle)  # this proxy's writer finishes the round's traces
            (m1, o1), t1 = task_cpu_ns(proxy.pid), common.cpu_seconds(proxy.pid)
            out[name]["ns"].append((m1 + o1 - m0 - o0) / n / 1e6)
            out[name]["loop"].append((m1 - m0) / n / 1e6)
            out[name]["other"].append((o1 - o0) / n / 1e6)
            out[name]["ticks"].append((t1 - t0) / n * 1e3)
        log(f"round {rnd + 1}/{rounds} done (load {loadavg()})")
    return out


def table(res: dict[str, dict[str, list[float]]], names: list[str]) -> list[dict[str, Any]]:
    rows = []
    bare = res.get("bare")
    for name in names:
        ns = res[name]["ns"]
        what = VARIANTS[name.split("@")[0]][2] + (" at " + name.split("@")[1] if "@" in name else "")
        row = {"variant": name, "what": what, "ms": statistics.median(ns),
               "ms_ticks": statistics.median(res[name]["ticks"]), "rounds": ns,
               "loop_rounds": res[name]["loop"], "other_rounds": res[name]["other"]}
        if bare is not None:
            diffs = [a - b for a, b in zip(ns, bare["ns"])]
            row["delta"] = statistics.median(diffs)
            row["delta_q1"], _, row["delta_q3"] = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else (0, 0, 0)
            for part in ("loop", "other"):
                row[f"delta_{part}"] = statistics.median(a - b for a, b in zip(res[name][part], bare[part]))
        rows.append(row)
    return rows


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print("| variant | what | CPU ms/call | vs bare (paired median) | paired quartiles | loop thread vs bare "
          "| other threads vs bare | stat ticks ms/call |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        has = "delta" in r
        delta = f"{r['delta']:+.2f}" if has else ""
        rng = f"{r['delta_q1']:+.2f} .. {r['delta_q3']:+.2f}" if has else ""
        loop = f"{r['delta_loop']:+.2f}" if has else ""
        other = f"{r['delta_other']:+.2f}" if has else ""
        print(f"| {r['variant']} | {r['what']} | {r['ms']:.2f} | {delta} | {rng} | {loop} | {other} | {r['ms_ticks']:.2f} |")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="nonstream,stream")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--requests", type=int, default=20, help="non-streamed calls per variant and round")
    ap.add_argument("--streams", type=int, default=4, help="streams per variant and round")
    ap.add_argument("--baseline", help="git revision: add plugin@REV, the full plugin as of REV")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--settle", type=float, default=0.2)
    ap.add_argument("--pin", choices=("auto", "none"), default="auto")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if any(m not in ("nonstream", "stream") for m in modes):
        ap.error("--modes takes nonstream and/or stream")

    plan = common.cpu_plan(a.pin)
    work = Path(tempfile.mkdtemp(prefix="rllm-attr-"))
    upstream = common.Upstream(a.tokens, cpus=plan["upstream"], log_dir=work)
    proxies: dict[str, common.Proxy] = {}
    report: dict[str, Any] = {"tokens": a.tokens, "rounds": a.rounds, "variants": names, "modes": {}}
    try:
        sources: dict[str, Optional[Path]] = {name: None for name in names}
        if a.baseline:
            src = work / "baseline-src"
            src.mkdir()
            archive = subprocess.run(["git", "-C", str(common.REPO), "archive", a.baseline, "litellm_rllm"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            base = f"plugin@{a.baseline}"
            names.insert(names.index("plugin") + 1 if "plugin" in names else len(names), base)
            sources[base] = src
        for name in names:
            callbacks, settings, _ = VARIANTS[name.split("@")[0]]
            config = common.write_config(work / name, plugin=callbacks is not None, api_base=upstream.api_base,
                                         settings=settings, callbacks=callbacks)
            proxies[name] = common.Proxy(name, config, cpus=plan["proxy"], src=sources[name])
        log(f"starting {len(proxies)} proxies (load {loadavg()})")
        for proxy in proxies.values():
            proxy.wait_ready(900)
        if plan["client"]:
            os.sched_setaffinity(0, plan["client"])
        headers = {**common.auth(), "x-rllm-slug": common.slug_for("attribution")}
        with httpx.Client(timeout=300) as client:
            for mode in modes:
                stream = mode == "stream"
                body = {"model": "policy", "messages": [{"role": "user", "content": "Tell a story."}],
                        "max_tokens": a.tokens, "logprobs": True, "return_token_ids": True, "stream": stream}
                n = a.streams if stream else a.requests
                for proxy in proxies.values():
                    for _ in range(a.warmup if not stream else max(2, a.warmup // 4)):
                        one_call(client, proxy.base_url + "/v1/chat/completions", body, headers)
                load_before = loadavg()
                log(f"{mode}: {a.rounds} rounds x {n} calls x {len(names)} variants (load {load_before})")
                res = measure(client, proxies, names, body, headers, a.rounds, n, a.settle)
                load_after = loadavg()
                rows = table(res, names)
                title = (f"{mode}, {a.tokens}-token replies, {a.rounds} rounds x {n} calls, one at a time; "
                         f"load average {load_before} -> {load_after}")
                print_table(title, rows)
                report["modes"][mode] = {"title": title, "rows": rows, "load_before": load_before,
                                         "load_after": load_after}
        # the ablations must not have broken capture: every plugin variant stored its calls
        for name, proxy in proxies.items():
            callbacks = VARIANTS[name.split("@")[0]][0]
            if callbacks is None or T not in callbacks and not any(c.startswith(ABLATED) for c in callbacks):
                continue
            r = httpx.post(proxy.base_url + "/rllm/flush", headers=common.auth(), timeout=120)
            stats = httpx.get(proxy.base_url + "/rllm/stats", headers=common.auth(), timeout=30).json()["writer"]
            log(f"{name}: flush {r.status_code}, writer written {stats.get('written')} of submitted "
                f"{stats.get('submitted')}, failed {stats.get('failed')}, build errors {stats.get('build_errors')}")
        if a.json:
            a.json.write_text(json.dumps(report, indent=1))
    finally:
        for proxy in proxies.values():
            proxy.stop()
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
