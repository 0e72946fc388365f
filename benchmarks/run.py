"""Bare LiteLLM vs LiteLLM + litellm-rllm, same machine, same run, same load: one table.

    python benchmarks/run.py            # full: ~15 min
    python benchmarks/run.py --quick    # smoke: ~2-3 min, noisy, no 32k-token part

What it does:

1. Starts the fake vLLM upstream (`tests/upstreams/vllm.py`: vLLM's wire format, fixed replies of
   `--tokens` tokens from cached JSON fragments, streaming and not) and two `litellm --config`
   proxies with the same model list: *bare* (no callbacks) and *plugin* (the three
   `litellm_rllm.callbacks.*` entries, the repo's `configs/policies.yaml`, a SQLite store in a
   temp folder). Both stay up for the whole run.
2. CPUs (`--pin auto`, 2+ CPUs): both proxies on the last CPU, alone; the upstream and the load
   generator on the others. The proxy, the system under test, is then the bottleneck, and all of
   the plugin's cost (its writer thread included) lands on the proxy's core, where a GIL-bound
   process spends it anyway. `--pin none` lets the OS schedule.
3. Drives them with `benchmarks/loadgen.py` in its own process, in rounds; within a round every
   phase runs on both proxies back to back, in alternating order (AB BA AB ...), so machine
   noise hits both sides alike. Medians over rounds are reported. Phases:
   `ns-sat` (non-streaming, closed loop at `--concurrency`: throughput), `ns-rate` (open loop at
   `--rate-frac` x bare's throughput: latency p50/p99), `st-sat` (streaming throughput),
   `st-rate` (streaming at a fixed rate: TTFT and time per chunk). Proxy CPU per request (loop
   thread and other threads, from /proc) and garbage-collection time (a probe loaded into both
   proxies, `benchmarks/gcprobe/`) are recorded in every phase: at saturation the pinned proxy
   is CPU-bound, so the CPU per request gives the throughput ratio with far less noise than
   the request rate itself.
4. Memory: `--memory-streams` concurrent long streams (`--memory-tokens`, top_logprobs 5) per
   proxy; the proxy's RSS is sampled during the run: (peak - idle before) / streams.
5. Checks the plugin really captured: flushes its writer (`POST /rllm/flush`) and counts the
   rows in the SQLite store against the requests it answered.
6. Plugin CPU and event-loop blocking (`benchmarks/loop_block.py`: the proxy in-process with
   every plugin hook timed and a loop-lag monitor), for `--tokens` replies and for a
   32,000-token reply with top_logprobs 5 (the latter also bare, for the lag LiteLLM causes).
7. The writer's GIL stalls for one 32,000-token trace, built in the build process and in the
   writer thread (`benchmarks/writer_gil.py`, lag against an idle window of the same loop).
8. Store throughput and bytes per token (`benchmarks/store_throughput.py`; `--store-url
   postgresql://...` adds the PostgreSQL store once store_throughput.py takes that option).

A sampling profile of the plugin proxy under load (py-spy, per thread) is a separate command:
`python benchmarks/profile_proxy.py`.

The client request is the same for both proxies: by default it asks for `logprobs` and
`return_token_ids` itself (`--client-asks logprobs`), so both proxies move the same bytes and
the difference is the plugin's capture; `--client-asks nothing` lets the policy inject them
(then the plugin also pays for the bigger upstream responses and for hiding them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

import common  # noqa: E402
from common import MASTER_KEY, Proxy, Upstream  # noqa: E402

HERE = Path(__file__).resolve().parent
SIDES = ("bare", "plugin")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(values: list[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# ------------------------------------------------------------------------------ processes


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread id of a process and of its descendants (the plugin's build
    process: its CPU is the plugin's cost too)."""
    out: dict[int, float] = {}
    for proc in (pid, *common.descendants(pid)):
        try:
            tids = os.listdir(f"/proc/{proc}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                out[int(tid)] = common.stat_cpu_seconds(f"/proc/{proc}/task/{tid}/stat")
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return out


def cpu_busy(cpus: Optional[list[int]], since: Optional[Any] = None) -> Any:
    """Busy fraction of `cpus` since the `(busy, total)` jiffies sample `since`, from
    /proc/stat; without `since`, that sample."""
    busy = total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu" and (cpus is None or int(name[3:]) in cpus):
                ticks = [int(v) for v in vals]
                total += sum(ticks[:8])
                busy += sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait
    if since is None:
        return busy, total
    return (busy - since[0]) / max(1, total - since[1])


def split_cpu(pid: int, before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(loop thread, all other threads and child processes) CPU seconds between two samples.
    Uvicorn runs the event loop in the main thread (tid == pid)."""
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    other = sum(v - before.get(t, 0.0) for t, v in after.items() if t != pid)
    return main, other


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="rllm-bench-"))
        self.plan = common.cpu_plan(args.pin)
        self.results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.answered: Counter[str] = Counter()  # by proxy name (saturation.py has more than two)
        self.headers = json.dumps({"x-rllm-slug": common.slug_for("bench-session")})
        self.store_db = self.dir / "plugin" / "traces.db"

    # ---- load ----------------------------------------------------------------------------

    def body(self, top: Optional[int] = None) -> dict[str, Any]:
        top = self.args.top_logprobs if top is None else top
        if self.args.client_asks == "nothing":
            return {}
        body: dict[str, Any] = {"logprobs": True, "return_token_ids": True}
        if top:
            body["top_logprobs"] = top
        return body

    def loadgen(self, proxy: Proxy, *extra: str, body: Optional[dict[str, Any]] = None,
                background: bool = False) -> Any:
        cmd = [sys.executable, str(HERE / "loadgen.py"), "--url", proxy.base_url, "--key", MASTER_KEY,
               "--headers", self.headers, "--body", json.dumps(self.body() if body is None else body), *extra]
        cpus = self.plan["client"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        if background:
            return proc
        return self.collect(proxy, proc)

    def collect(self, proxy: Proxy, proc: subprocess.Popen) -> dict[str, Any]:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed against {proxy.name}:\n{err[-3000:]}")
        result = json.loads(out)
        self.answered[proxy.name] += result["ok"]
        if result["errors"]:
            log(f"  {proxy.name}: errors {result['errors']}")
        return result

    def phase_args(self, name: str) -> list[str]:
        """The load generator's options for phase `name`."""
        a = self.args
        secs = str(a.phase_seconds)
        if name == "ns-sat":
            return ["--mode", "closed", "--requests", "1000000", "--concurrency", str(a.concurrency), "--max-seconds", secs]
        if name == "ns-rate":
            return ["--mode", "open", "--rate", f"{self.ns_rate:.3f}", "--requests", str(int(self.ns_rate * a.phase_seconds)),
                    "--max-seconds", secs]
        if name == "st-sat":
            return ["--stream", "--mode", "closed", "--requests", "1000000", "--concurrency", str(a.stream_concurrency),
                    "--max-seconds", secs]
        if name == "st-rate":
            return ["--stream", "--mode", "open", "--rate", f"{self.st_rate:.3f}",
                    "--requests", str(max(3, int(self.st_rate * a.phase_seconds))), "--max-seconds", secs]
        raise ValueError(name)

    def phase(self, proxy: Proxy, name: str) -> dict[str, Any]:
        return self.phase_at_once([proxy], name)[proxy.name]

    def phase_at_once(self, proxies: list[Proxy], name: str) -> dict[str, dict[str, Any]]:
        """Phase `name` against every proxy in `proxies` at the same time (one load generator
        each): their results by proxy name, with the proxy's CPU per request (event-loop
        thread; other threads and child processes), its garbage collections, and how busy the
        load generators' CPUs were meanwhile (`client_cpus_busy`, 0..1 over all of them: near
        1, the load side, not the proxies, set the pace)."""
        extra = self.phase_args(name)
        gc0 = {p.name: p.gc_stats() for p in proxies}
        before = {p.name: thread_cpu(p.pid) for p in proxies}
        busy0 = cpu_busy(self.plan["client"])
        procs = {p.name: self.loadgen(p, *extra, background=True) for p in proxies}
        out = {p.name: self.collect(p, procs[p.name]) for p in proxies}
        client_busy = cpu_busy(self.plan["client"], busy0)
        for p in proxies:
            result = out[p.name]
            main, other = split_cpu(p.pid, before[p.name], thread_cpu(p.pid))
            gc1 = p.gc_stats()
            n = max(1, result["ok"])
            result["cpu_loop_ms_per_req"] = main / n * 1000.0
            result["cpu_other_ms_per_req"] = other / n * 1000.0
            result["client_cpus_busy"] = client_busy
            g0 = gc0[p.name]
            if g0 and gc1:
                result["gc_ms_per_req"] = (sum(gc1["seconds"]) - sum(g0["seconds"])) / n * 1000.0
                result["gc_counts"] = [c1 - c0 for c1, c0 in zip(gc1["count"], g0["count"])]
                result["gc_full"] = result["gc_counts"][2]
                result["gc_ms_by_gen"] = [(s1 - s0) * 1000.0 for s1, s0 in zip(gc1["seconds"], g0["seconds"])]
                result["gc_full_max_ms"] = gc1["max"][2] * 1000.0
        return out

    # ---- stages --------------------------------------------------------------------------

    def start(self) -> None:
        a = self.args
        log(f"work dir {self.dir}; CPUs: proxies {self.plan['proxy']}, upstream+load {self.plan['upstream']}")
        self.upstream = Upstream(a.tokens, a.tokens_per_step, cpus=self.plan["upstream"], log_dir=self.dir)
        self.proxies: dict[str, Proxy] = {}
        for side in SIDES:
            plugin = side == "plugin" and not a.noise_floor  # --noise-floor: bare against bare
            cfg = common.write_config(self.dir / side, plugin=plugin, api_base=self.upstream.api_base,
                                      memory_tokens=a.memory_tokens, memory_drip_s=a.memory_drip,
                                      settings=common.parse_settings(a.plugin_setting))
            self.proxies[side] = Proxy(side, cfg, self.plan["proxy"])
        t0 = time.monotonic()
        for p in self.proxies.values():
            p.wait_ready()
        log(f"proxies ready in {time.monotonic() - t0:.0f}s (bare :{self.proxies['bare'].port}, plugin :{self.proxies['plugin'].port})")

    def warmup(self) -> None:
        a = self.args
        for side in SIDES:
            p = self.proxies[side]
            self.loadgen(p, "--requests", str(a.warmup), "--concurrency", str(a.concurrency), "--max-seconds", "30")
            self.loadgen(p, "--stream", "--requests", str(max(4, a.warmup // 8)), "--concurrency",
                         str(a.stream_concurrency), "--max-seconds", "30")
        if a.build_process_cpus == "other" and self.plan["upstream"]:
            # the plugin's build process (started by the first trace) beside the proxy, as the OS
            # would place it on a machine with a core to spare; its CPU still counts as the proxy's
            for child in common.descendants(self.proxies["plugin"].pid):
                os.sched_setaffinity(child, self.plan["upstream"])
                log(f"plugin build process {child} on CPUs {self.plan['upstream']}")
        # the open-loop rates: a fraction of bare LiteLLM's saturation throughput, fixed for the run
        if a.rate:
            self.ns_rate = a.rate
        else:
            r = self.loadgen(self.proxies["bare"], "--requests", "1000000", "--concurrency", str(a.concurrency),
                             "--max-seconds", str(min(3.0, a.phase_seconds)))
            self.ns_rate = max(1.0, r["throughput_rps"] * a.rate_frac)
        if a.stream_rate:
            self.st_rate = a.stream_rate
        else:
            r = self.loadgen(self.proxies["bare"], "--stream", "--requests", "1000000", "--concurrency",
                             str(a.stream_concurrency), "--max-seconds", str(min(3.0, a.phase_seconds)))
            self.st_rate = max(0.5, r["throughput_rps"] * a.rate_frac)
        log(f"open-loop rates: non-streaming {self.ns_rate:.1f}/s, streaming {self.st_rate:.2f}/s")
        if a.gc_freeze:
            for p in self.proxies.values():
                p.gc_freeze()
            time.sleep(1.5)
            log("gc.freeze() done in both proxies (--gc-freeze)")

    def rounds(self) -> None:
        a = self.args
        phases = ["ns-sat", "ns-rate", "st-sat", "st-rate"]
        for r in range(a.rounds):
            for k, name in enumerate(phases):
                order = SIDES if (r + k) % 2 == 0 else SIDES[::-1]
                for side in order:
                    res = self.phase(self.proxies[side], name)
                    self.results.setdefault(name, {}).setdefault(side, []).append(res)
                    log(f"round {r + 1}/{a.rounds} {name:7s} {side:6s} {short(name, res)}")

    def memory(self) -> dict[str, Any]:
        """RSS with M long streams in flight: (peak RSS before the first stream ends - RSS
        before they start) / M, per proxy. Stopping at the first end keeps what the writer
        thread allocates afterwards (building traces) out of the figure."""
        a = self.args
        out: dict[str, list[float]] = {s: [] for s in SIDES}
        body = dict(self.body(top=5)) if a.client_asks == "logprobs" else {}
        for r in range(a.memory_rounds):
            for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                p = self.proxies[side]
                time.sleep(0.5)
                idle = p.rss_bytes()
                proc = self.loadgen(p, "--stream", "--model", "policy-long", "--mode", "closed", "--requests",
                                    str(a.memory_streams), "--concurrency", str(a.memory_streams), "--mark-first",
                                    "--max-seconds", "120", body=body, background=True)
                first_done = threading.Event()

                def watch(stream: Any = proc.stderr, flag: threading.Event = first_done) -> None:
                    for line in stream:
                        if line.startswith("first-done"):
                            flag.set()
                    flag.set()

                watcher = threading.Thread(target=watch, daemon=True)
                watcher.start()
                peak = idle
                while not first_done.is_set() and proc.poll() is None:
                    peak = max(peak, p.rss_bytes())
                    time.sleep(0.01)
                out_text = proc.stdout.read()  # type: ignore[union-attr]
                proc.wait()
                watcher.join(5)
                res = json.loads(out_text)
                self.answered[side] += res["ok"]
                per = (peak - idle) / a.memory_streams
                out[side].append(per)
                log(f"memory {side:6s} idle {idle / 1e6:.0f} MB, peak in flight {peak / 1e6:.0f} MB, {a.memory_streams} "
                    f"streams of {res['chunks_mean'] or 0:.0f} chunks: {per / 1e3:.0f} kB/stream")
        return {s: med(v) for s, v in out.items()}

    def check_traces(self) -> dict[str, Any]:
        p = self.proxies["plugin"]
        r = httpx.post(p.base_url + "/rllm/flush", headers=common.auth(), timeout=120)
        stats = httpx.get(p.base_url + "/rllm/stats", headers=common.auth(), timeout=30).json()
        con = sqlite3.connect(f"file:{self.store_db}?mode=ro", uri=True)
        try:
            tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            table = "traces" if "traces" in tables else tables[0]
            rows = con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        finally:
            con.close()
        return {"flush_status": r.status_code, "rows": rows, "answered": self.answered["plugin"], "stats": stats}

    def inproc(self, tokens: int, top: int, requests: int, label: str, bare: bool = False) -> Optional[dict[str, Any]]:
        """benchmarks/loop_block.py: the plugin proxy in-process, hooks timed, loop lag watched."""
        cmd = [sys.executable, str(HERE / "loop_block.py"), "--upstream", self.upstream.api_base, "--tokens", str(tokens),
               "--top-logprobs", str(top), "--requests", str(requests), "--json"]
        if bare:
            cmd.append("--bare")
        if self.plan["client"]:
            cmd += ["--client-cpus", ",".join(map(str, self.plan["client"]))]
        if self.args.switch_interval:
            cmd += ["--switch-interval", str(self.args.switch_interval)]
        cpus = self.plan["proxy"]
        log(f"in-process {'bare' if bare else 'plugin'} proxy: {label}")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=common.env(),
                              preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        if proc.returncode != 0:
            log(f"loop_block failed:\n{proc.stderr[-3000:]}")
            return None
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def store(self) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {}
        cmd = [sys.executable, str(HERE / "store_throughput.py"), "--traces", str(a.store_traces),
               "--completion-tokens", "1000"]
        log("store throughput: SQLite")
        out["sqlite"] = parse_store(subprocess.run(cmd, capture_output=True, text=True, env=common.env()))
        if a.store_url:
            name = a.store_url.split("://", 1)[0]
            if "--store-url" not in (HERE / "store_throughput.py").read_text():
                out[name] = {"error": "benchmarks/store_throughput.py has no --store-url option yet (the PostgreSQL hook)"}
            else:
                log(f"store throughput: {name}")
                res = subprocess.run(cmd + ["--store-url", a.store_url], capture_output=True, text=True, env=common.env())
                out[name] = parse_store(res)
        return out

    def gil(self) -> dict[str, Any]:
        """benchmarks/writer_gil.py: loop lag while the writer stores one 32k-token trace, with
        traces built in the build process (as shipped) and in the writer thread."""
        a = self.args
        variants = [("as is", [])]
        if not a.quick:
            variants += [("switch interval 1 ms", ["--switch-interval", "0.001"])]
        kinds = "stream" if a.quick else "stream,nonstream"
        out: dict[str, Any] = {}
        for label, extra in variants:
            log(f"writer GIL stalls: {label}")
            proc = subprocess.run([sys.executable, str(HERE / "writer_gil.py"), "--kind", kinds, "--json", *extra],
                                  capture_output=True, text=True, env=common.env())
            if proc.returncode != 0:
                out[label] = {"error": proc.stderr[-800:]}
                continue
            for result in json.loads(proc.stdout.strip().splitlines()[-1]):
                out[f"{label}, built in {result['encoder']}"] = result
        return out

    def stop(self) -> None:
        for p in getattr(self, "proxies", {}).values():
            p.stop()
        if getattr(self, "upstream", None) is not None:
            self.upstream.stop()


def parse_store(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    """store_throughput.py's output, per mode (`mode=...` starts each block)."""
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-800:]}
    text = proc.stdout
    out: dict[str, Any] = {"raw": text, "modes": {}}
    for block in re.split(r"(?m)^(?=mode=)", text):
        m = re.match(r"mode=(\w+)", block)
        if not m:
            continue
        res: dict[str, float] = {}
        for key, pattern in (("traces_per_s", r"traces/s: ([\d,]+)"),
                             ("bytes_per_token", r"bytes per completion token: ([\d.]+)"),
                             ("ids_logprobs_bytes_per_token", r"ids \+ logprobs: ([\d.]+)"),
                             ("pg_arrays_bytes_per_token", r"pg_column_size: ([\d.]+)")):
            found = re.search(pattern, block)
            if found:
                res[key] = float(found.group(1).replace(",", ""))
        out["modes"][m.group(1)] = res
    return out


def short(name: str, r: dict[str, Any]) -> str:
    cpu = f"cpu {r['cpu_loop_ms_per_req']:.2f}+{r['cpu_other_ms_per_req']:.2f} ms/req"
    if r.get("gc_ms_per_req") is not None:
        cpu += f" (gc {r['gc_ms_per_req']:.2f}, {r['gc_full']} full)"
    if name.endswith("sat"):
        return f"{r['throughput_rps']:.1f} req/s, {cpu}"
    if name == "ns-rate":
        return f"p50 {r['latency_ms']['p50']:.1f} ms p99 {r['latency_ms']['p99']:.1f} ms, {cpu}"
    pc = r["per_chunk_ms"]["p50"]
    return f"ttft p50 {r['ttft_ms']['p50']:.1f} ms, chunk {pc if pc is None else round(pc, 3)} ms, {cpu}"


# ------------------------------------------------------------------------------ report


def fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(b: Bench, mem: Optional[dict[str, Any]], traces: Optional[dict[str, Any]],
          inproc: dict[str, Any], store: Optional[dict[str, Any]], gil: Optional[dict[str, Any]] = None) -> str:
    a = b.args
    R = b.results
    rows: list[tuple[str, str, str, str, str]] = []

    def metric(phase: str, pick: Any) -> tuple[Optional[float], Optional[float]]:
        if phase not in R:
            return None, None
        return tuple(med([pick(x) for x in R[phase].get(s, [])]) for s in SIDES)  # type: ignore[return-value]

    def add(label: str, bare: Optional[float], plug: Optional[float], spec: str = ".1f", kind: str = "ratio",
            target: str = "") -> None:
        if kind == "ratio":
            rel = "-" if not bare or plug is None else f"{plug / bare:.3f}x"
        else:  # added
            rel = "-" if bare is None or plug is None else f"{plug - bare:+{spec}}"
        rows.append((label, fmt(bare, spec), fmt(plug, spec), rel, target))

    add("non-streaming throughput (req/s)", *metric("ns-sat", lambda x: x["throughput_rps"]), target=">= 0.97x")
    add("  proxy CPU per request, loop thread (ms)", *metric("ns-sat", lambda x: x["cpu_loop_ms_per_req"]), ".2f", "added")
    add("  proxy CPU per request, other threads (ms)", *metric("ns-sat", lambda x: x["cpu_other_ms_per_req"]), ".2f", "added")
    add("  garbage collection per request (ms, in the above)", *metric("ns-sat", lambda x: x.get("gc_ms_per_req")),
        ".2f", "added")
    cpu_b, cpu_p = metric("ns-sat", lambda x: x["cpu_loop_ms_per_req"] + x["cpu_other_ms_per_req"])
    add("  throughput implied by proxy CPU/request (1/ms)", None if not cpu_b else 1000.0 / cpu_b,
        None if not cpu_p else 1000.0 / cpu_p, ".1f")
    add(f"latency p50 at {b.ns_rate:.0f} req/s (ms)", *metric("ns-rate", lambda x: x["latency_ms"]["p50"]), ".1f", "added")
    add(f"latency p99 at {b.ns_rate:.0f} req/s (ms)", *metric("ns-rate", lambda x: x["latency_ms"]["p99"]), ".1f", "added")
    add("streaming throughput (streams/s)", *metric("st-sat", lambda x: x["throughput_rps"]), ".2f", target=">= 0.97x")
    add("  proxy CPU per stream, loop thread (ms)", *metric("st-sat", lambda x: x["cpu_loop_ms_per_req"]), ".2f", "added")
    add("  proxy CPU per stream, other threads (ms)", *metric("st-sat", lambda x: x["cpu_other_ms_per_req"]), ".2f", "added")
    add("  garbage collection per stream (ms, in the above)", *metric("st-sat", lambda x: x.get("gc_ms_per_req")),
        ".2f", "added")
    cpu_b, cpu_p = metric("st-sat", lambda x: x["cpu_loop_ms_per_req"] + x["cpu_other_ms_per_req"])
    add("  throughput implied by proxy CPU/stream (1/s)", None if not cpu_b else 1000.0 / cpu_b,
        None if not cpu_p else 1000.0 / cpu_p, ".2f")
    add(f"TTFT p50 at {b.st_rate:.1f} streams/s (ms)", *metric("st-rate", lambda x: x["ttft_ms"]["p50"]), ".2f", "added")
    add(f"TTFT p99 at {b.st_rate:.1f} streams/s (ms)", *metric("st-rate", lambda x: x["ttft_ms"]["p99"]), ".2f", "added")
    add("time per chunk p50 (ms)", *metric("st-rate", lambda x: x["per_chunk_ms"]["p50"]), ".3f", "added")
    if mem:
        add(f"memory per in-flight stream (kB; {a.memory_tokens} tok, top 5)",
            *(None if mem.get(s) is None else mem[s] / 1e3 for s in SIDES), ".0f", "added")

    w = [max(len(r[i]) for r in rows + [("", "bare LiteLLM", "+ litellm-rllm", "plugin vs bare", "target")])
         for i in range(5)]
    head = ("", "bare LiteLLM", "+ litellm-rllm", "plugin vs bare", "target")
    lines = [
        f"litellm-rllm benchmark: {a.tokens}-token replies, client asks {a.client_asks}"
        f"{'' if not a.top_logprobs else f' (top_logprobs {a.top_logprobs})'}, {a.rounds} rounds x "
        f"{a.phase_seconds:g}s phases, medians; concurrency {a.concurrency} / {a.stream_concurrency} streams; "
        f"CPUs: proxy {b.plan['proxy']}, upstream+load {b.plan['upstream']}"
        f"{'; NOISE FLOOR: the right-hand side is bare LiteLLM too' if a.noise_floor else ''}",
        "  ".join(h.ljust(w[i]) if i == 0 else h.rjust(w[i]) for i, h in enumerate(head)),
    ]
    for r in rows:
        lines.append("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
    if traces:
        lines.append(f"captured: {traces['rows']} traces stored for {traces['answered']} answered requests "
                     f"(writer {traces['stats'].get('writer')}, capture {traces['stats'].get('capture')})")
    for label, res in inproc.items():
        if res:
            lines.append(describe_inproc(label, res))
    if gil:
        lines.append("writer thread vs event loop, one 32,000-token trace with top_logprobs 5 (benchmarks/writer_gil.py,"
                     " idle loop, 1 ms lag monitor):")
        for label, g in gil.items():
            if "error" in g:
                lines.append(f"  {label}: failed: {g['error'][-300:]}")
                continue
            for kind in ("stream", "nonstream"):
                r = g.get(kind)
                if r:
                    lag, idle = r["lag"], r["idle_lag"]
                    lines.append(f"  {label:38s} {kind:9s}: writer busy {r['writer_busy_ms']:.0f} ms; loop lag max "
                                 f"{lag['max_ms']:.1f} ms, p99 {lag['p99_ms']:.2f} ms, {lag['over_2ms']}/{lag['wakeups']} "
                                 f"wakeups > 2 ms (idle: max {idle['max_ms']:.1f}, {idle['over_2ms']}/{idle['wakeups']});"
                                 f" longest GC pause {r['gc_max_ms']:.0f} ms")
    if store:
        for name, s in store.items():
            if "error" in s:
                lines.append(f"store {name}: failed: {s['error'][-300:]}")
                continue
            modes = s.get("modes", {})
            for mode, label in (("encoded", "rows from the build process (the proxy's writer)"),
                                ("writer", "Trace objects encoded in the writer thread")):
                m = modes.get(mode)
                if m:
                    lines.append(f"store {name}, {label}: {fmt(m.get('traces_per_s'), ',.0f')} traces/s of 1,000-token"
                                 f" traces (target >= 10,000 for SQLite)")
            m = next(iter(modes.values()), {})
            ids = m.get("pg_arrays_bytes_per_token") or m.get("ids_logprobs_bytes_per_token")
            lines.append(f"store {name}: ids + logprobs {fmt(ids, '.2f')} bytes per completion token (target <= 9);"
                         f" whole file {fmt(m.get('bytes_per_token'), '.2f')} B/token")
    return "\n".join(lines)


def describe_inproc(label: str, r: dict[str, Any]) -> str:
    if r.get("bare"):
        out = [f"{label} (in-process, benchmarks/loop_block.py --bare):"]
        for mode in ("nonstream", "stream"):
            m = r.get(mode)
            if m:
                out.append(f"  {mode:9s}: loop lag max {m['lag_max_ms']:.0f} ms; GC {m['gc_ms_per_request']:.0f} ms/request,"
                           f" longest full collection {m['gc_full_ms_max']:.0f} ms")
        return "\n".join(out)
    out = [f"plugin's own work on the event loop, {label} (in-process, thread CPU, benchmarks/loop_block.py):"]
    for mode in ("nonstream", "stream"):
        m = r.get(mode)
        if not m:
            continue
        top = ", ".join(f"{name} {h['cpu_us_per_request']:.0f}" for name, h in list(m["by_hook"].items())[:4])
        per_chunk = "" if m.get("loop_us_per_chunk") is None else f" + {m['loop_us_per_chunk']:.1f} us/chunk"
        out.append(
            f"  {mode:9s}: {m['loop_us_per_request']:.0f} us/request{per_chunk} ({m['chunks_per_request']:.0f} chunks;"
            f" {top}); writer thread {m['writer_cpu_us_per_trace']:.0f} us CPU/trace")
        out.append(
            f"             longest hold: {m['max_block_cpu_ms']:.2f} ms CPU ({m['max_block_cpu_where']}), "
            f"{m['max_block_ms']:.2f} ms wall ({m['max_block_where']}; wall includes OS preemption and GIL waits);"
            f" loop lag max {m['lag_max_ms']:.1f} ms, {m['lag_over_2ms_in_writer']} lags > 2 ms while the writer ran"
            f" (max {m['lag_max_writer_ms']:.1f} ms; longest GC pause: loop {m['gc_max_ms_loop']:.1f} ms,"
            f" writer {m['gc_max_ms_writer']:.1f} ms)")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="~2 minute smoke version (2 rounds, short phases)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5; quick 2)")
    ap.add_argument("--phase-seconds", type=float, default=None, help="per phase and proxy (default 10; quick 2.5)")
    ap.add_argument("--tokens", type=int, default=256, help="reply length K of the upstream")
    ap.add_argument("--tokens-per-step", type=int, default=1, help="tokens per stream chunk (vLLM's stream_interval)")
    ap.add_argument("--top-logprobs", type=int, default=0, help="top_logprobs the client asks for in the load phases")
    ap.add_argument("--client-asks", choices=("logprobs", "nothing"), default="logprobs")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--stream-concurrency", type=int, default=8)
    ap.add_argument("--rate-frac", type=float, default=0.5, help="open-loop rate as a fraction of bare's throughput")
    ap.add_argument("--rate", type=float, default=None, help="fixed non-streaming open-loop rate (req/s)")
    ap.add_argument("--stream-rate", type=float, default=None, help="fixed streaming open-loop rate (streams/s)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--memory-streams", type=int, default=None, help="concurrent long streams (default 32; quick 16)")
    ap.add_argument("--memory-tokens", type=int, default=None, help="tokens per long stream (default 2000; quick 1000)")
    ap.add_argument("--memory-drip", type=float, default=0.0, help="seconds between upstream steps of the long streams")
    ap.add_argument("--memory-rounds", type=int, default=None)
    ap.add_argument("--store-traces", type=int, default=None, help="traces for store_throughput.py (default 20000)")
    ap.add_argument("--store-url", default=None,
                    help="also benchmark this store (postgresql://user:pass@host/db) with store_throughput.py")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval for the in-process plugin proxy (an experiment)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="experiment: gc.collect(); gc.freeze() in both proxies after the warm-up")
    ap.add_argument("--pin", choices=("auto", "none"), default="auto")
    ap.add_argument("--plugin-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="a callback_settings.litellm_rllm key for the plugin proxy (repeatable), e.g."
                         " writer_build_process=false")
    ap.add_argument("--build-process-cpus", choices=("proxy", "other"), default="proxy",
                    help="proxy: the plugin's build process shares the proxy's CPU (its whole cost on one"
                         " core); other: it runs on the upstream's CPUs")
    ap.add_argument("--skip", default=None,
                    help="comma list of: load,memory,inproc,long,gil,store (default: none; quick: long)")
    ap.add_argument("--json", default=None, help="also write every raw result to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (configs, proxy logs, the store)")
    ap.add_argument("--noise-floor", action="store_true",
                    help="the 'plugin' side is bare LiteLLM too: its ratios are this VM's noise floor "
                         "(use with --skip memory,inproc,long,gil,store)")
    a = ap.parse_args(argv)
    quick = a.quick
    a.rounds = a.rounds or (2 if quick else 5)
    a.phase_seconds = a.phase_seconds or (2.5 if quick else 10.0)
    a.warmup = a.warmup or (60 if quick else 200)
    a.memory_streams = a.memory_streams or (12 if quick else 32)
    a.memory_rounds = a.memory_rounds or (1 if quick else 3)
    a.memory_tokens = a.memory_tokens or (1000 if quick else 2000)
    a.store_traces = a.store_traces or (5000 if quick else 20000)
    skip = set(filter(None, (a.skip if a.skip is not None else ("long" if quick else "")).split(",")))

    b = Bench(a)
    mem = traces = store = None
    inproc: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        b.start()
        b.warmup()
        if "load" not in skip:
            b.rounds()
        if "memory" not in skip:
            mem = b.memory()
        traces = None if a.noise_floor else b.check_traces()
        if "inproc" not in skip:
            inproc[f"{a.tokens}-token replies"] = b.inproc(a.tokens, a.top_logprobs, 10 if quick else 100,
                                                            f"{a.tokens}-token replies")
        if "long" not in skip:
            inproc[f"{common.LONG_TOKENS}-token reply, top_logprobs 5"] = b.inproc(
                common.LONG_TOKENS, 5, 1 if quick else 2, f"{common.LONG_TOKENS} tokens, top_logprobs 5")
            if not quick:
                inproc[f"{common.LONG_TOKENS}-token reply, top_logprobs 5, bare LiteLLM (for the lag it causes)"] = b.inproc(
                    common.LONG_TOKENS, 5, 1, f"{common.LONG_TOKENS} tokens, top_logprobs 5", bare=True)
    finally:
        b.stop()
    gil = None
    if "gil" not in skip:
        gil = b.gil()
    if "store" not in skip:
        store = b.store()
    log(f"done in {time.monotonic() - t0:.0f}s" + (f"; work folder {b.dir}" if a.keep else ""))
    if not a.keep:
        shutil.rmtree(b.dir, ignore_errors=True)
    report = table(b, mem, traces, inproc, store, gil)
    print(report)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": b.results, "memory": mem, "traces": traces,
                                            "inproc": inproc, "store": store, "gil": gil, "table": report}, indent=1, default=str))


if __name__ == "__main__":
    main()
