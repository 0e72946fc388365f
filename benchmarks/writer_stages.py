"""The writer's stages offline, per trace: prepare, build, encode, and the SQLite write by batch size.

    python benchmarks/writer_stages.py [--tokens 256] [--traces 240] [--batches 1,3,8]

Last, the writer thread's CPU per second with nothing to write (what a quiet proxy pays).

Why beside `attribution.py`: on a loaded machine the proxy-level ablation cannot resolve a tenth
of a millisecond; here each stage runs alone in one process on a real fake-vLLM reply (the
upstream's JSON body as the tee keeps it), so its cost per trace is steady. `build` and
`encode` are thread CPU; the store write is process CPU (SQLite's checkpointer thread
included), calls 35 ms apart in one session as `cpu_per_call.py` makes them, one transaction
per batch: what `writer_commit_interval_s` changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

import common  # noqa: E402
from litellm_rllm.builder import build_trace, prepare  # noqa: E402
from litellm_rllm.capture.record import CallRecord  # noqa: E402
from litellm_rllm.store import SqliteStore  # noqa: E402
from litellm_rllm.store.codec import encode  # noqa: E402
from litellm_rllm.writer import TraceWriter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--traces", type=int, default=240)
    ap.add_argument("--batches", default="1,3,8")
    a = ap.parse_args()
    body = {"model": "policy", "messages": [{"role": "user", "content": "Tell a story."}], "max_tokens": a.tokens,
            "logprobs": True, "return_token_ids": True}
    upstream = common.Upstream(a.tokens)
    try:
        raw = httpx.post(upstream.api_base + "/chat/completions", json=body, timeout=60).content
    finally:
        upstream.stop()

    def record(i: int) -> CallRecord:
        r = CallRecord(call_id=f"c{i}", started_wall=1.7e9 + i * 0.035, status="ok", route="/v1/chat/completions",
                       model="policy", stream=False, latency_ms=30.0, session={"session_id": "s", "task": "bench"},
                       caller=None, client_request=dict(body),
                       upstream={**body, "model": "hosted_vllm/policy", "custom_llm_provider": "hosted_vllm",
                                 "api_base": "http://127.0.0.1/v1"},
                       injected={}, policy_version=None)
        r.raw_body = [raw[: len(raw) // 2], raw[len(raw) // 2:]]  # the tee keeps the body's reads
        r.hidden = {"response_cost": 0.0, "custom_llm_provider": "hosted_vllm"}
        return r

    sizes = [int(x) for x in a.batches.split(",")]
    n = a.traces
    records = [record(i) for i in range(n * (1 + len(sizes)))]

    def timed(name: str, fn, items):  # type: ignore[no-untyped-def]
        c = time.thread_time()
        out = [fn(x) for x in items]
        print(f"  {name:28s} {(time.thread_time() - c) / len(items) * 1e6:7.0f} us per trace")
        return out

    print(f"writer stages per trace, {a.tokens}-token vLLM reply ({len(raw)} bytes of JSON), "
          f"load average {os.getloadavg()[0]:.2f}:")
    prepared = timed("prepare (trim, price)", prepare, records)
    traces = timed("build_trace", build_trace, prepared)
    rows = timed("encode", encode, traces)
    for k, size in enumerate(sizes):
        folder = tempfile.mkdtemp(prefix="rllm-stages-")
        store = SqliteStore(os.path.join(folder, "t.db"))
        mine = rows[k * n:(k + 1) * n]
        store.write_encoded(mine[:1])
        c = time.process_time()
        for j in range(1, n, size):
            store.write_encoded(mine[j:j + size])
            time.sleep(0.002)
        time.sleep(0.3)  # the checkpointer's last pass
        print(f"  {f'store write, batches of {size}':28s} {(time.process_time() - c) / (n - 1) * 1e6:7.0f} us per trace")
        store.close()
    idle_writer_cpu()


def idle_writer_cpu(seconds: float = 3.0) -> None:
    """The writer thread's own CPU clock over a quiet spell, after its start-up."""
    folder = tempfile.mkdtemp(prefix="rllm-stages-")
    writer = TraceWriter(store=SqliteStore(os.path.join(folder, "t.db")), close_at_exit=False)
    try:
        writer.flush(10)
        time.sleep(1.0)
        clock = common.writer_cpu_clock(writer)
        c = time.clock_gettime(clock)
        time.sleep(seconds)
        print(f"  {'idle writer thread':28s} {(time.clock_gettime(clock) - c) / seconds * 1e3:7.2f} ms CPU per second")
    finally:
        writer.close()


if __name__ == "__main__":
    main()
