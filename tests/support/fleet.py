"""A fleet for tests and benchmarks: N proxies over M replicas of one model, and agents whose
sessions grow turn by turn through a round-robin balancer (`tests/system/test_fleet.py`,
`benchmarks/prefix_cache.py`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import yaml

from litellm_rllm import slug as slugs
from tests.support import harness


def fleet_config(folder: Path, api_bases: list[str], store_url: str, *, mode: str,
                 redis_port: Optional[int] = None) -> Path:
    """The fleet's proxy config: one model group `policy` over the replicas (ids `replica-i`).
    ``mode``: "redis" (LiteLLM's session affinity, router cache in Redis: configs/rllm.yaml's
    fleet block), "stateless" (the `litellm_rllm.callbacks.affinity` entry) or "none"
    (LiteLLM's default routing: a baseline)."""
    folder.mkdir(parents=True, exist_ok=True)
    router: dict[str, Any] = {"disable_cooldowns": True}
    callbacks = list(harness.RLLM_CALLBACKS)
    if mode == "redis":
        assert redis_port is not None
        router.update({"optional_pre_call_checks": ["session_affinity"], "redis_host": "127.0.0.1",
                       "redis_port": redis_port})
    elif mode == "stateless":
        callbacks.append("litellm_rllm.callbacks.affinity")
    config = {
        "model_list": [
            {"model_name": "policy", "litellm_params": {"model": "hosted_vllm/policy", "api_base": base,
                                                         "api_key": "fake-vllm-key"},
             "model_info": {"id": f"replica-{i}"}}
            for i, base in enumerate(api_bases)
        ],
        "litellm_settings": {"callbacks": callbacks, "num_retries": 0},
        "callback_settings": {"litellm_rllm": {"store": store_url, "policies_file": "policies.yaml"}},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
        "router_settings": router,
    }
    (folder / "policies.yaml").write_text(yaml.safe_dump(harness.TEST_POLICIES))
    path = folder / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def run_sessions(bases: list[str], sessions: range, turns: int, concurrency: int,
                       on_done: Any = None, model: str = "policy",
                       timings: Optional[dict[str, list[float]]] = None,
                       replies: Optional[dict[str, list[dict[str, Any]]]] = None) -> dict[str, list[int]]:
    """Each session: `turns` sequential chat calls whose history grows by the reply and a new
    user message; call k goes to proxy k % 2 (a round-robin balancer). Returns the statuses
    per session (each call's latency in seconds into ``timings``, each answer's `usage` and
    llama.cpp's `timings` into ``replies``)."""
    statuses: dict[str, list[int]] = {}
    sem = asyncio.Semaphore(concurrency)
    # Idle connections expire before uvicorn's 5 s keep-alive does: no request on a closed socket.
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2,
                          keepalive_expiry=1.0)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=harness.auth()) as client:

        async def session(s: int) -> None:
            sid = f"fleet-{s}"
            slug = slugs.encode({"session_id": sid})
            messages = [{"role": "system", "content": "You are an agent in a long episode. " * 4}]
            got = statuses[sid] = []
            async with sem:
                for turn in range(turns):
                    messages.append({"role": "user", "content": f"{sid} turn {turn}: go on"})
                    base = bases[turn % len(bases)]
                    began = time.perf_counter()
                    r = await client.post(f"{base}/meta/{slug}/v1/chat/completions",
                                          json={"model": model, "messages": messages, "max_tokens": 16})
                    if timings is not None:
                        timings.setdefault(sid, []).append(time.perf_counter() - began)
                    got.append(r.status_code)
                    if r.status_code != 200:
                        continue
                    body = r.json()
                    if replies is not None:
                        replies.setdefault(sid, []).append({"turn": turn, "usage": body.get("usage"),
                                                          "timings": body.get("timings")})
                    messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
            if on_done is not None:
                on_done(sid)

        await asyncio.gather(*(session(s) for s in sessions))
    return statuses
