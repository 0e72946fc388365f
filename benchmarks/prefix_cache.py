"""What session affinity buys: cached prompt tokens per turn, with and without it.

Two `litellm --config` proxies (litellm-rllm, SQLite store) in front of several replicas of one
model; agents whose history grows every turn, each call through the other proxy (a round-robin
balancer). Modes: `none` (LiteLLM's default routing), `stateless` (the
`litellm_rllm.callbacks.affinity` entry), `redis` (LiteLLM's `session_affinity` with the router
cache in a local `redis-server`). Per turn it prints the mean cached prompt tokens the replicas
reported (`usage.prompt_tokens_details.cached_tokens`, the trace's `cached_tokens`), the mean
prompt tokens, and the median client latency.

    python benchmarks/prefix_cache.py                       # 4 fake vLLM replicas (16-token cache blocks)
    python benchmarks/prefix_cache.py --replicas http://h1:8000/v1,http://h2:8000/v1 --model-name MODEL

    python benchmarks/prefix_cache.py --llama               # 2 llama.cpp servers, tiny local model

With `--replicas`, real OpenAI-format servers (vLLM with `--enable-prompt-tokens-details`, or
llama.cpp's server) are used as they are; each mode uses its own session ids (of one length, so
every mode's prompts have the same token counts), so one mode's cache entries don't serve the next
one's prompts (except the shared system prompt).

With `--llama`, two real llama.cpp `llama-server`s (built once from llama-cpp-python's PyPI sdist by
benchmarks/llama/build.sh, serving a tiny random-weight model written by
benchmarks/llama/tiny_model.py; needs the `bench` extra), started afresh for each mode: it also
prints what the servers report per call (`timings`: `cache_n` prompt tokens reused from the KV
cache, `prompt_n` processed, `prompt_ms` prompt processing time).
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
from collections import Counter
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from litellm_rllm import store as store_mod  # noqa: E402
from tests.support.fleet import fleet_config, run_sessions  # noqa: E402
from tests.support.harness import ProxyProcess, auth  # noqa: E402


def _flush(base: str) -> None:
    import httpx

    r = httpx.post(base + "/rllm/flush", headers=auth(), timeout=120)
    r.raise_for_status()


def run_mode(mode: str, api_bases: list[str], args: argparse.Namespace, offset: int, folder: Path) -> dict[str, Any]:
    redis = None
    if mode == "redis":
        from tests.support.redis_server import RedisServer

        redis = RedisServer().start()
    store_url = f"sqlite:///{folder / mode / 'traces.db'}"
    config = fleet_config(folder / mode, api_bases, store_url, mode=mode, redis_port=redis.port if redis else None)
    if args.model_name:
        text = config.read_text().replace("hosted_vllm/policy", f"hosted_vllm/{args.model_name}")
        config.write_text(text)
    procs = [ProxyProcess(config) for _ in range(2)]
    try:
        for p in procs:
            p.wait_ready()
        timings: dict[str, list[float]] = {}
        replies: dict[str, list[dict[str, Any]]] = {}
        began = time.monotonic()
        statuses = asyncio.run(run_sessions([p.base_url for p in procs], range(offset, offset + args.sessions),
                                            args.turns, args.concurrency, timings=timings, replies=replies))
        elapsed = time.monotonic() - began
        for p in procs:
            _flush(p.base_url)
    finally:
        for p in procs:
            p.stop()
        if redis is not None:
            redis.destroy()
    failed = sum(s != 200 for v in statuses.values() for s in v)
    st = store_mod.open(store_url)
    try:
        cached: dict[int, list[int]] = {}
        prompt: dict[int, list[int]] = {}
        replicas_of: dict[str, set[str]] = {}
        per_replica: Counter[str] = Counter()
        for sid in statuses:
            for t in st.traces(session=sid):
                turn = t.seq or 0
                cached.setdefault(turn, []).append(t.cached_tokens or 0)
                prompt.setdefault(turn, []).append(int((t.usage or {}).get("prompt_tokens") or 0))
                replicas_of.setdefault(sid, set()).add(t.api_base or "")
                per_replica[t.api_base or ""] += 1
    finally:
        st.close()
    latency = [statistics.median(v[k] for v in timings.values() if len(v) > k) * 1000 for k in range(args.turns)]
    server = _server_timings(replies, args.turns)
    return {
        "mode": mode,
        "sessions": args.sessions,
        "turns": args.turns,
        "failed_calls": failed,
        "seconds": round(elapsed, 1),
        "sessions_on_one_replica": sum(len(v) == 1 for v in replicas_of.values()),
        "calls_per_replica": [per_replica[b] for b in api_bases],
        "cached_tokens_per_turn": [round(statistics.mean(cached[k]), 1) for k in sorted(cached)],
        "prompt_tokens_per_turn": [round(statistics.mean(prompt[k]), 1) for k in sorted(prompt)],
        "latency_ms_p50_per_turn": [round(v, 1) for v in latency],
        **server,
    }


def _server_timings(replies: dict[str, list[dict[str, Any]]], turns: int) -> dict[str, Any]:
    """Per turn, the means of what the servers said about each call: llama.cpp's `timings`
    (`cache_n`, `prompt_n`, `prompt_ms`) and `usage.prompt_tokens_details.cached_tokens` as the
    client received it; with totals over all calls. Empty where the servers don't say."""
    per: dict[str, list[list[float]]] = {k: [[] for _ in range(turns)] for k in ("cache_n", "prompt_n", "prompt_ms")}
    usage_cached: list[list[float]] = [[] for _ in range(turns)]
    for calls in replies.values():
        for c in calls:
            t = c.get("timings") or {}
            for k in per:
                if isinstance(t.get(k), (int, float)):
                    per[k][c["turn"]].append(float(t[k]))
            details = (c.get("usage") or {}).get("prompt_tokens_details") or {}
            if isinstance(details.get("cached_tokens"), int):
                usage_cached[c["turn"]].append(float(details["cached_tokens"]))
    out: dict[str, Any] = {}
    if any(usage_cached):
        out["usage_cached_tokens_per_turn"] = [round(statistics.mean(v), 1) if v else None for v in usage_cached]
    for k, rows in per.items():
        if any(rows):
            out[f"server_{k}_per_turn"] = [round(statistics.mean(v), 1) if v else None for v in rows]
            out[f"server_{k}_total"] = round(sum(sum(v) for v in rows), 1)
    return out


def _replicas(args: argparse.Namespace, folder: Path) -> tuple[list[str], list[Any]]:
    """The replicas' api_bases for one mode, and what to stop after it (fresh caches per mode)."""
    if args.replicas:
        return args.replicas.split(","), []
    if args.llama:
        from benchmarks.llama.server import LlamaServer

        servers = [LlamaServer(args.llama_binary, args.llama_model, args.llama_settings, folder / "llama")
                   for _ in range(args.replica_count)]
        try:
            for s in servers:
                s.wait_ready()
        except BaseException:
            for s in servers:
                s.stop()
            raise
        return [s.api_base for s in servers], servers
    from tests.upstreams import server
    from tests.upstreams.vllm import FakeVLLM

    running = [server.start(FakeVLLM(prefix_cache_block=16)) for _ in range(args.replica_count)]
    return [r.api_base for r in running], running


def _row(label: str, values: list[Any], total: Any = None, width: int = 6) -> str:
    cells = " ".join(f"{'-' if v is None else format(v, '.0f'):>{width}}" for v in values)
    return f"{label:<16} {cells}" + ("" if total is None else f"  {total:>10.0f}")


def print_tables(results: list[dict[str, Any]]) -> None:
    turns = results[0]["turns"]
    head = f"{'mode':<16} " + " ".join(f"{'t' + str(k + 1):>6}" for k in range(turns))
    print(f"{'mode':<10} {'one replica':>12}   calls per replica   prompt tokens, last turn")
    for r in results:
        print(f"{r['mode']:<10} {r['sessions_on_one_replica']:>5} of {r['sessions']:<4}   "
              f"{str(r['calls_per_replica']):<18}  {r['prompt_tokens_per_turn'][-1]:.0f}")
    tables = [
        ("cached prompt tokens per call, mean by turn (trace cached_tokens, read back from the store)",
         "cached_tokens_per_turn", None),
        ("prompt tokens reused from the KV cache, mean by turn (server timings.cache_n)",
         "server_cache_n_per_turn", "server_cache_n_total"),
        ("prompt tokens processed, mean by turn (server timings.prompt_n)",
         "server_prompt_n_per_turn", "server_prompt_n_total"),
        ("prompt processing ms, mean by turn (server timings.prompt_ms)",
         "server_prompt_ms_per_turn", "server_prompt_ms_total"),
        ("client latency ms through the proxy, median by turn", "latency_ms_p50_per_turn", None),
    ]
    for title, key, total in tables:
        if not all(key in r for r in results):
            continue
        print()
        print(title)
        print(head + ("  " + f"{'total':>10}" if total else ""))
        for r in results:
            print(_row(r["mode"], r[key], r.get(total) if total else None))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", help="comma-separated api_base URLs (…/v1); default: start fake vLLM replicas")
    p.add_argument("--llama", action="store_true", help="start llama.cpp servers (tiny local model) as the replicas")
    p.add_argument("--replica-count", type=int, help="replicas to start (fake vLLM: 4; --llama: 2)")
    p.add_argument("--model-name", help="the served model name of --replicas (default: policy)")
    p.add_argument("--modes", default="none,stateless,redis")
    p.add_argument("--sessions", type=int, help="default 40 (fake vLLM), 20 (--llama)")
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--concurrency", type=int, help="sessions in flight; default 8 (fake vLLM), 4 (--llama)")
    g = p.add_argument_group("--llama")
    g.add_argument("--llama-server", help="a llama-server binary (default: benchmarks/llama/build.sh's build)")
    g.add_argument("--slots", type=int, default=4, help="llama-server -np (default 4)")
    g.add_argument("--cache-ram", type=int, default=256, help="llama-server --cache-ram MiB (default 256; 0: slots only)")
    g.add_argument("--layers", type=int, default=4, help="tiny model layers (default 4)")
    g.add_argument("--embd", type=int, default=256, help="tiny model width (default 256)")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    if args.llama and args.replicas:
        p.error("--llama and --replicas exclude each other")
    if args.llama_server and not os.access(args.llama_server, os.X_OK):
        p.error(f"--llama-server: {args.llama_server} is not an executable file")
    args.replica_count = args.replica_count or (2 if args.llama else 4)
    args.sessions = args.sessions or (20 if args.llama else 40)
    args.concurrency = args.concurrency or (4 if args.llama else 8)
    if args.llama:
        from benchmarks.llama.server import ServerSettings, ensure_binary, ensure_model

        try:
            args.llama_binary = ensure_binary(args.llama_server)
            args.llama_model = ensure_model(args.layers, args.embd)
        except ImportError:
            print("error: --llama needs the gguf package (pip install 'litellm-rllm[bench]')", file=sys.stderr)
            return 2
        except subprocess.CalledProcessError as e:
            print(f"error: benchmarks/llama/build.sh failed (exit {e.returncode}): see its output above", file=sys.stderr)
            return 2
        args.llama_settings = ServerSettings(slots=args.slots, cache_ram_mib=args.cache_ram)
        print(f"llama-server: {args.llama_binary}; model {args.llama_model.name} "
              f"({args.layers} layers, n_embd {args.embd}); per server: {args.llama_settings.describe()}", flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="rllm-prefix-") as tmp:
        for k, mode in enumerate(args.modes.split(",")):
            api_bases, running = _replicas(args, Path(tmp) / mode)
            try:
                result = run_mode(mode, api_bases, args, offset=(k + 1) * 100_000, folder=Path(tmp))
            finally:
                for r in running:
                    r.stop()
            results.append(result)
            print(json.dumps(result), flush=True)
    print()
    print(f"{args.sessions} sessions x {args.turns} turns, {args.concurrency} sessions in flight, "
          f"{args.replica_count} replicas, 2 proxies (calls alternate)")
    print_tables(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["failed_calls"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
