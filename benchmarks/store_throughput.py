"""Trace-store throughput: traces/s through TraceWriter, and bytes on disk per token.

    python benchmarks/store_throughput.py [--traces 20000] [--completion-tokens 1000] [--mode M]
    python benchmarks/store_throughput.py --store-url postgresql://user@host/db   # PostgreSQL

With ``--store-url postgresql://...`` the traces go to a new schema ``bench_<random>`` (unless the
URL names one with ``?schema=``), dropped at the end; sizes are PostgreSQL's
(``pg_total_relation_size`` of the schema's tables, ``pg_column_size`` of the arrays column).

Traces carry ``--completion-tokens`` completion ids + float logprobs (no top_logprobs),
``--prompt-tokens`` prompt ids, and chat messages of matching length, like a vLLM call with
``logprobs`` and ``return_token_ids``. Calls start ``--call-interval-ms`` apart in write order
(1 ms: a proxy taking 1,000 calls/s; with 200 sessions a session's calls are 200 ms apart, so
its session-order window, the 1 s clock bound, holds about five of them). ``0`` starts every
call at once, which puts each session's every trace in that window: session order's worst case.

Modes (``--mode``, default ``encoded,writer``; each on a new store, all timing submit() of
every item + flush(), except ``direct``):

* ``encoded``: the proxy's writer thread: rows come encoded from the build process, so the
  thread only writes them (the items are the rows, encoded before the clock starts);
* ``writer``: ``Trace`` objects, encoded in the writer thread (a library user's writer, or a
  proxy with ``writer_build_process: false``);
* ``records``: the proxy's whole path after a call: vLLM JSON bodies as the tee keeps them
  (``--completion-tokens`` ids + logprobs, prompt ids), prepared in the writer thread, built
  and encoded in the build process, written by the thread; ``--traces`` defaults to 4000 here;
* ``direct``: ``store.write()`` in batches on the calling thread (encode + write).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from litellm_rllm.store.codec import encode, encode_all  # noqa: E402
from litellm_rllm.store.sqlite import SqliteStore  # noqa: E402
from litellm_rllm.writer.trace_writer import TraceWriter  # noqa: E402
from litellm_rllm.trace import TopLogprob, Trace, TraceChoice  # noqa: E402

WORDS = (
    "the of and to in is for that with on as it be by this are from or an at was not have "
    "def return import self class if else for while try except file path value list dict "
    "error result tool call function argument agent step observation action answer"
).split()


def _text(rnd: random.Random, n_tokens: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(n_tokens))


def make_templates(
    n: int, prompt_tokens: int, completion_tokens: int, seed: int, top_logprobs: int = 0
) -> list[Trace]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        top = None
        if top_logprobs:
            top = [
                [
                    TopLogprob(
                        token=rnd.choice(WORDS), logprob=-rnd.expovariate(1.0),
                        token_id=rnd.randrange(151_000),
                    )
                    for _ in range(top_logprobs)
                ]
                for _ in range(completion_tokens)
            ]
        out.append(
            Trace(
                trace_id=f"template-{i}",
                session_id=f"session-{i}",
                session_uids=["run-1", f"session-{i}"],
                metadata={"task": f"task-{i % 17}", "env": "swe"},
                route="/v1/chat/completions",
                model="policy-7b",
                provider="hosted_vllm",
                deployment_model="hosted_vllm/Qwen/Qwen2.5-7B-Instruct",
                api_base="http://vllm:8000/v1",
                request={
                    "messages": [
                        {"role": "system", "content": _text(rnd, prompt_tokens // 5)},
                        {"role": "user", "content": _text(rnd, prompt_tokens - prompt_tokens // 5)},
                    ],
                    "temperature": 1.0,
                    "max_tokens": completion_tokens,
                    "logprobs": True,
                },
                injected={"logprobs": True, "return_token_ids": True, "rule": 0},
                prompt_token_ids=[rnd.randrange(151_000) for _ in range(prompt_tokens)],
                choices=[
                    TraceChoice(
                        index=0,
                        message={"role": "assistant", "content": _text(rnd, completion_tokens)},
                        finish_reason="length",
                        token_ids=[rnd.randrange(151_000) for _ in range(completion_tokens)],
                        logprobs=[-rnd.expovariate(2.0) for _ in range(completion_tokens)],
                        top_logprobs=top,
                    )
                ],
                usage={
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                cost_usd=0.0,
                latency_ms=rnd.uniform(500, 5000),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--traces", type=int, default=None, help="default 20000 (records mode: 4000)")
    parser.add_argument("--completion-tokens", type=int, default=1000)
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--top-logprobs", type=int, default=0, help="alternatives per token")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--call-interval-ms", type=float, default=1.0,
                        help="start times this far apart in write order (0: all at once; docstring)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--mode", default="encoded,writer", help="encoded, writer, records, direct (comma list)")
    parser.add_argument("--dir", default=None, help="where the database goes (default: a temp dir)")
    parser.add_argument("--store-url", default=None, help="postgresql://... instead of a SQLite file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whole", action="store_true",
                        help="store every call whole (compaction off: store.compact_sessions = False)")
    args = parser.parse_args()
    args.traces_given = args.traces is not None
    if args.traces is None:
        args.traces = 20_000

    templates = make_templates(
        50, args.prompt_tokens, args.completion_tokens, args.seed, args.top_logprobs
    )
    traces = []
    t0 = datetime.now(timezone.utc)
    for i in range(args.traces):
        base = templates[i % len(templates)]
        session = f"session-{i % args.sessions}"
        traces.append(
            base.model_copy(
                update={
                    "trace_id": f"chatcmpl-{i:09d}",
                    "session_id": session,
                    "session_uids": ["run-1", session],
                    "created_at": t0 + timedelta(milliseconds=i * args.call_interval_ms),
                }
            )
        )

    sample = encode(traces[0])
    for mode in args.mode.split(","):
        run_mode(args, mode, traces, sample)


def open_store(args: argparse.Namespace) -> tuple[object, Optional[str], Optional[str]]:
    """(store, its file or None, a PostgreSQL schema to drop or None)."""
    if args.store_url:
        from litellm_rllm import store as store_mod
        from litellm_rllm.store.postgres import parse_url

        url = args.store_url
        pg_schema = None
        if "schema=" not in url:
            url += ("&" if "?" in url else "?") + f"schema=bench_{os.urandom(4).hex()}"
            pg_schema = parse_url(url)[1]
        store = store_mod.open(url)
        store.compact_sessions = not args.whole
        return store, None, pg_schema
    workdir = tempfile.mkdtemp(prefix="rllm-bench-", dir=args.dir)
    path = os.path.join(workdir, "traces.db")
    store = SqliteStore(path)
    store.compact_sessions = not args.whole
    return store, path, None


def make_records(n: int, completion_tokens: int, interval_ms: float = 1.0) -> list[object]:
    """Call records as the proxy's tee captures a non-streamed vLLM call (`writer_gil.make_record`:
    the JSON body as its reads), each its own call in one of 200 sessions, with a 400-token
    prompt so the stored doc has a realistic size."""
    from dataclasses import replace

    from writer_gil import make_record

    base = make_record("nonstream", completion_tokens, 0)
    upstream = {**base.upstream, "messages": [{"role": "user", "content": _text(random.Random(0), 400)}]}
    return [replace(base, call_id=f"chatcmpl-{i:09d}", session={"session_id": f"session-{i % 200}"},
                    upstream=upstream, client_request=upstream, started_wall=base.started_wall + i * interval_ms / 1000)
            for i in range(n)]


def run_mode(args: argparse.Namespace, mode: str, traces: list[Trace], sample: object) -> None:
    items: list[object] = traces
    encoder = None
    n_items = len(traces)
    if mode == "encoded":
        items = encode_all(traces)
    elif mode == "records":
        from litellm_rllm.builder import prepare
        from litellm_rllm.writer.build_process import BuildProcess

        n_items = args.traces if args.traces_given else 4000
        items = make_records(n_items, args.completion_tokens, args.call_interval_ms)
        encoder = BuildProcess("litellm_rllm.builder:build_trace", prepare=prepare)
    store, path, pg_schema = open_store(args)

    start = time.perf_counter()
    cpu_start = time.process_time()
    if mode == "direct":
        for k in range(0, len(traces), args.batch_size):
            store.write(traces[k : k + args.batch_size])
        elapsed = time.perf_counter() - start
        stats = {"written": store.count()}
        submit_us = float("nan")
    else:
        writer = TraceWriter(store, batch_size=args.batch_size, close_at_exit=False, encoder=encoder)
        for item in items:
            writer.submit(item)
        submitted = time.perf_counter()
        assert writer.flush(timeout=600)
        elapsed = time.perf_counter() - start
        stats = writer.stats()
        writer.close()
        submit_us = (submitted - start) / n_items * 1e6

    cpu = time.process_time() - cpu_start
    assert store.count() == n_items, (store.count(), stats)
    arrays_column = None
    if args.store_url:
        size, arrays_column = _pg_sizes(store, drop=pg_schema is not None)
    else:
        store.checkpoint()
    store.close()
    if path is not None:
        size = os.path.getsize(path) + sum(
            os.path.getsize(path + ext) for ext in ("-wal", "-shm") if os.path.exists(path + ext)
        )
    n = n_items
    completion = n * args.completion_tokens
    print(f"mode={mode} traces={n} batch={args.batch_size} "
          f"completion_tokens={args.completion_tokens} prompt_tokens={args.prompt_tokens}")
    print(f"traces/s: {n / elapsed:,.0f}   ({elapsed:.2f} s; submit {submit_us:.2f} us/trace)")
    print(f"process CPU: {cpu / n * 1e6:.1f} us/trace (all threads of this process; wall {elapsed / n * 1e6:.1f})")
    print(f"completion tokens/s: {completion / elapsed:,.0f}")
    print(f"bytes per completion token: {size / completion:.2f}   (file {size / 1e6:.1f} MB)")
    if arrays_column is not None:
        prompt_ids = n * args.prompt_tokens * 4
        print(f"arrays column (ids + logprobs), PostgreSQL pg_column_size: "
              f"{(arrays_column - prompt_ids) / completion:.3f} B/completion token (prompt ids excluded)")
    if mode != "records":
        arrays = len(sample.arrays or b"")
        n_arrays = 1 + 3 * len(traces[0].choices)
        ids_lps = arrays - 4 * args.prompt_tokens - (5 + 4 * n_arrays)  # minus prompt ids and the header
        print(
            f"row payload per trace: doc {len(sample.doc)} B (JSON: messages, text, metadata),"
            f" arrays {arrays} B ({arrays / args.completion_tokens:.2f} B/completion token incl."
            f" prompt ids), top_logprobs {len(sample.detail or b'')} B"
        )
        print(f"ids + logprobs: {ids_lps / args.completion_tokens:.2f} B/completion token (arrays blob, prompt ids"
              f" and header excluded)")
    print(f"writer stats: {stats}")
    print()
    if path is not None:
        os.remove(path)
        for ext in ("-wal", "-shm"):
            if os.path.exists(path + ext):
                os.remove(path + ext)
        os.rmdir(os.path.dirname(path))


def _pg_sizes(store: object, drop: bool) -> tuple[int, int]:
    """(bytes of the schema's tables incl. indexes and TOAST, bytes of the arrays column)."""
    conn = store._connection()  # type: ignore[attr-defined]
    schema = store.schema  # type: ignore[attr-defined]
    total = conn.execute(
        "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
        (schema,),
    ).fetchone()[0]
    arrays = conn.execute(f'SELECT COALESCE(SUM(pg_column_size(arrays)), 0) FROM "{schema}".traces').fetchone()[0]
    if drop:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return int(total), int(arrays)


if __name__ == "__main__":
    main()
