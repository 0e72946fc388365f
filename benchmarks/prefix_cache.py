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

With `--replicas`, real OpenAI-format servers (vLLM with `--enable-prompt-tokens-details`, or
llama.cpp's server) are used as they are; each mode uses its own session ids, so one mode's
cache entries don't serve the next one's prompts (except the shared system prompt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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
        began = time.monotonic()
        statuses = asyncio.run(run_sessions([p.base_url for p in procs], range(offset, offset + args.sessions),
                                            args.turns, args.concurrency, timings=timings))
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
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", help="comma-separated api_base URLs (…/v1); default: start fake vLLM replicas")
    p.add_argument("--replica-count", type=int, default=4, help="fake replicas to start (without --replicas)")
    p.add_argument("--model-name", help="the served model name of --replicas (default: policy)")
    p.add_argument("--modes", default="none,stateless,redis")
    p.add_argument("--sessions", type=int, default=40)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="rllm-prefix-") as tmp:
        for k, mode in enumerate(args.modes.split(",")):
            running: list[Any] = []
            if args.replicas:
                api_bases = args.replicas.split(",")
            else:  # fresh replicas per mode: empty caches
                from tests.upstreams import server
                from tests.upstreams.vllm import FakeVLLM

                running = [server.start(FakeVLLM(prefix_cache_block=16)) for _ in range(args.replica_count)]
                api_bases = [r.api_base for r in running]
            try:
                result = run_mode(mode, api_bases, args, offset=k * 100_000, folder=Path(tmp))
            finally:
                for r in running:
                    r.stop()
            results.append(result)
            print(json.dumps(result), flush=True)
    print()
    print(f"{'mode':<10} {'one replica':>12} {'cached tokens per turn (mean)':<60} prompt tokens, last turn")
    for r in results:
        print(f"{r['mode']:<10} {r['sessions_on_one_replica']:>5} of {r['sessions']:<4} "
              f"{' '.join(f'{c:5.0f}' for c in r['cached_tokens_per_turn']):<60} {r['prompt_tokens_per_turn'][-1]:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["failed_calls"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
