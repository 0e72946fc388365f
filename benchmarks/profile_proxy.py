"""Sampling profile (py-spy) of the plugin proxy under load: where its CPU goes, per thread.

Starts the fake vLLM upstream and the plugin proxy (`litellm --config`, pinned like
`run.py`), drives it with `loadgen.py` (non-streaming, then streaming), attaches
`py-spy record --threads` for most of each load, and reads every thread's CPU time from /proc.
Reports, per request:

* the event-loop thread's CPU and the part of it spent in the plugin's own code: a sample
  counts as the plugin's when the innermost non-stdlib frame is in `litellm_rllm` (so LiteLLM
  code running under the plugin's wrappers, e.g. the stream it wraps or the router the slug
  route hands the request back to, stays LiteLLM's; C calls made by plugin code count as the
  plugin's);
* the writer thread's CPU and its hottest functions;
* every other thread.

    pip install py-spy      # needs ptrace on the proxy process (same user is enough here)
    python benchmarks/profile_proxy.py [--seconds 12] [--tokens 256] [--top-logprobs 0]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from run import thread_cpu  # noqa: E402

HERE = Path(__file__).resolve().parent
def frame_file(frame: str) -> str:
    m = re.search(r"\(([^()]*):\d+\)$", frame)
    return m.group(1) if m else ""


def is_stdlib(frame: str) -> bool:
    path = frame_file(frame)
    return "/" not in path or path.split("/", 1)[0] in {"asyncio", "concurrent", "json", "logging", "email", "http",
                                                        "importlib", "collections", "urllib", "sqlite3", "<frozen"}


IDLE_LEAF = re.compile(r"^(Condition\.wait|Event\.wait|_worker|Runner\.run|run_forever|select|_run_once) ")


def parse(raw: Path) -> dict[str, Any]:
    """py-spy raw output: `thread (TID): NAME;frame;...;leaf COUNT` per line. Samples whose
    leaf is a blocking wait (py-spy cannot always tell them idle) are dropped."""
    threads: dict[str, dict[str, Any]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        head = frames[0]
        m = re.match(r"thread \((\d+)\): ?(.*)", head)
        if m:
            tid, name, frames = int(m.group(1)), m.group(2) or "?", frames[1:]
        else:
            tid, name = -1, head
        n = int(count)
        if frames and IDLE_LEAF.match(frames[-1]):
            continue
        t = threads.setdefault(name, {"tid": tid, "samples": 0, "plugin": 0, "leaf": collections.Counter(),
                                      "plugin_fn": collections.Counter()})
        t["samples"] += n
        t["leaf"][re.sub(r":\d+\)$", ")", frames[-1]) if frames else "?"] += n
        # innermost non-stdlib frame decides whose time it is
        owner = next((f for f in reversed(frames) if not is_stdlib(f)), None)
        if owner is not None and "litellm_rllm/" in owner:
            t["plugin"] += n
            t["plugin_fn"][re.sub(r":\d+\)$", ")", owner)] += n
    return threads


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="load per mode")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--top-logprobs", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--modes", default="nonstream,stream")
    ap.add_argument("--pin", choices=("auto", "none"), default="auto")
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        sys.exit("py-spy is not installed: pip install py-spy")

    folder = Path(tempfile.mkdtemp(prefix="rllm-profile-"))
    plan = common.cpu_plan(args.pin)
    upstream = common.Upstream(args.tokens, cpus=plan["upstream"], log_dir=folder)
    proxy = common.Proxy("plugin", common.write_config(folder / "plugin", plugin=True, api_base=upstream.api_base),
                         plan["proxy"])
    body: dict[str, Any] = {"logprobs": True, "return_token_ids": True}
    if args.top_logprobs:
        body["top_logprobs"] = args.top_logprobs
    headers = json.dumps({"x-rllm-slug": common.slug_for("profile")})
    client_cpus = plan["client"]

    def loadgen(*extra: str) -> subprocess.Popen:
        cmd = [sys.executable, str(HERE / "loadgen.py"), "--url", proxy.base_url, "--key", common.MASTER_KEY,
               "--headers", headers, "--body", json.dumps(body), *extra]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                preexec_fn=(lambda: os.sched_setaffinity(0, client_cpus)) if client_cpus else None)

    try:
        proxy.wait_ready()
        loadgen("--requests", "100", "--concurrency", str(args.concurrency)).communicate()
        loadgen("--stream", "--requests", "16", "--concurrency", "8").communicate()
        for mode in args.modes.split(","):
            stream = mode == "stream"
            extra = ["--stream", "--concurrency", "8"] if stream else ["--concurrency", str(args.concurrency)]
            load = loadgen(*extra, "--requests", "1000000", "--max-seconds", str(args.seconds))
            time.sleep(1.0)
            raw = folder / f"{mode}.txt"
            before, t0 = thread_cpu(proxy.pid), time.monotonic()
            subprocess.run([spy, "record", "--pid", str(proxy.pid), "--duration", str(int(args.seconds - 2)),
                            "--rate", str(args.rate), "--threads", "--nonblocking", "--format", "raw", "-o", str(raw)],
                           capture_output=True, check=False)
            after, t1 = thread_cpu(proxy.pid), time.monotonic()
            result = json.loads(load.communicate()[0])
            rps = result["throughput_rps"]
            window_requests = rps * (t1 - t0)
            chunks = result.get("chunks_mean") or 0
            threads = parse(raw)
            total = sum(t["samples"] for t in threads.values()) or 1
            print(f"\n== {mode}: {rps:.1f} req/s, {args.tokens}-token replies"
                  f"{f', {chunks:.0f} chunks' if stream else ''}; {total} samples over {t1 - t0:.1f}s "
                  f"(~{window_requests:.0f} requests)")
            names = {t["tid"]: name for name, t in threads.items()}
            for tid in sorted(after, key=lambda k: -(after[k] - before.get(k, 0.0))):
                cpu = after[tid] - before.get(tid, 0.0)
                if cpu <= 0:
                    continue
                name = names.get(tid, "main" if tid == proxy.pid else "?")
                per_req = cpu / max(1.0, window_requests) * 1e3
                line = f"  thread {name:32s} {per_req:8.3f} ms CPU/request"
                t = threads.get(name)
                if t and t["samples"]:
                    share = t["plugin"] / t["samples"]
                    if share:
                        line += f"; in plugin code {share * 100:5.1f}% = {per_req * share * 1e3:7.0f} us/request"
                        if stream and chunks:
                            line += f" ({per_req * share * 1e3 / chunks:.2f} us/chunk if all per chunk)"
                print(line)
                if t and name.startswith("MainThread") and t["plugin"]:
                    for fn, n in t["plugin_fn"].most_common(8):
                        print(f"      {n / t['samples'] * per_req * 1e3:8.0f} us/request  {fn}")
                if t and "writer" in name:
                    for fn, n in t["leaf"].most_common(10):
                        print(f"      {n / t['samples'] * per_req * 1e3:8.0f} us/request  {fn}")
    finally:
        proxy.stop()
        upstream.stop()
    print(f"\nraw py-spy samples in {folder}")


if __name__ == "__main__":
    main()
