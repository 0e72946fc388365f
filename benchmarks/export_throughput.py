"""Export throughput and memory: N synthetic traces in a store -> Parquet through the
training API, traces/s and resident memory at 10% / 50% / 100% of the traces read.

    python benchmarks/export_throughput.py [--n 100000] [--view merged] [--format parquet]
    python benchmarks/export_throughput.py --store-url postgresql://user@host/db   # PostgreSQL

Traces come in sessions of ``--turns`` calls that extend each other exactly (so the merged view
merges), ``--tokens`` ids per trace on average (prompt + completion), ``--completion`` of them
sampled with float logprobs. They are written with ``store.open(url).write(batch)``, then read
back with ``iter_traces()`` (the store's global write order: the sessions were written one
after another, hence ``order="session"``) and exported with
``litellm_rllm.training.export_trajectories``. ``--read per-session`` reads session by session
instead (``sessions()`` then ``iter_traces(session=...)``), the way to keep memory to one
session on a store whose sessions interleave. With ``--store-url postgresql://...`` the traces
go to a new schema ``bench_<random>`` (unless the URL names one), dropped at the end.

Wall-clock traces/s depend on what else the machine runs; traces per CPU-second of this
process (a PostgreSQL server's CPU not included) are steadier. Memory is flat when RSS at 100%
is about RSS at 10%: it holds one session and one row group, not the traces read so far.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from litellm_rllm import store as store_mod  # noqa: E402
from litellm_rllm.trace import Trace, TraceChoice  # noqa: E402
from litellm_rllm.training import ExportProgress, export_trajectories  # noqa: E402

USER_TOKENS = 50


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class Pool:
    """Random token ids and logprobs to slice from: random.Random per token would dominate."""

    def __init__(self, seed: int, size: int = 1 << 20) -> None:
        rnd = random.Random(seed)
        self.ids = array("i", (rnd.randrange(151_000) for _ in range(size)))
        self.lps = array("f", (-rnd.expovariate(2.0) for _ in range(4096)))
        self.at = 0

    def take(self, n: int) -> list[int]:
        if self.at + n > len(self.ids):
            self.at = 0
        out = self.ids[self.at : self.at + n].tolist()
        self.at += n + 17
        return out

    def logprobs(self, n: int) -> list[float]:
        start = (self.at * 7) % (len(self.lps) - n) if n < len(self.lps) else 0
        return (self.lps[start : start + n].tolist() * (n // len(self.lps) + 1))[:n]


def opening_tokens(tokens: int, completion: int, turns: int) -> int:
    """Opening prompt size so the mean trace (prompt + completion) holds `tokens` ids."""
    return max(1, tokens - completion - (completion + USER_TOKENS) * (turns - 1) // 2)


def synthetic(n: int, tokens: int, completion: int, turns: int, seed: int = 0) -> Iterator[Trace]:
    """n traces in sessions of `turns` exact-extension calls, session after session."""
    pool = Pool(seed)
    opening = opening_tokens(tokens, completion, turns)
    written = 0
    s = 0
    while written < n:
        prompt = pool.take(opening)
        for turn in range(turns):
            if written >= n:
                return
            sampled = pool.take(completion)
            yield Trace(
                trace_id=f"bench-{written:09d}",
                session_id=f"session-{s}",
                session_uids=["bench", f"session-{s}"],
                metadata={"task": f"task-{s % 17}", "env": "bench"},
                route="/v1/chat/completions",
                model="policy",
                request={"messages": [{"role": "user", "content": f"turn {turn} of {s}"}], "temperature": 1.0},
                prompt_token_ids=prompt,
                choices=[TraceChoice(index=0, finish_reason="stop", token_ids=sampled, logprobs=pool.logprobs(completion))],
                usage={"prompt_tokens": len(prompt), "completion_tokens": completion},
            )
            written += 1
            prompt = prompt + sampled + pool.take(USER_TOKENS)
        s += 1


def open_store(url: Optional[str], workdir: str) -> tuple[object, Optional[str]]:
    """(store, PostgreSQL schema to drop or None)."""
    if url and url.startswith(("postgresql://", "postgres://")):
        from litellm_rllm.store.postgres import parse_url

        schema = None
        if "schema=" not in url:
            url += ("&" if "?" in url else "?") + f"schema=bench_{os.urandom(4).hex()}"
            schema = parse_url(url)[1]
        return store_mod.open(url), schema
    return store_mod.open(url or f"sqlite:///{os.path.join(workdir, 'traces.db')}"), None


def per_session(store: object) -> Iterator[Trace]:
    for summary in store.sessions():  # type: ignore[attr-defined]
        yield from store.iter_traces(session=summary.session_id)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="traces to write and export")
    parser.add_argument("--tokens", type=int, default=1000, help="mean ids per trace (prompt + completion)")
    parser.add_argument("--completion", type=int, default=200, help="sampled ids per trace")
    parser.add_argument("--turns", type=int, default=4, help="calls per session")
    parser.add_argument("--batch", type=int, default=500, help="traces per store.write()")
    parser.add_argument("--view", choices=("merged", "per-call"), default="merged")
    parser.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    parser.add_argument("--read", choices=("global", "per-session"), default="global")
    parser.add_argument("--store-url", default=None, help="postgresql://... (default: a SQLite file in a temp dir)")
    parser.add_argument("--dir", default=None, help="folder for the SQLite file and the export")
    parser.add_argument("--keep", action="store_true", help="keep the store and the exported file")
    parser.add_argument("--whole", action="store_true",
                        help="store every call whole (compaction off: store.compact_sessions = False)")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="rllm-export-bench-", dir=args.dir)
    store, pg_schema = open_store(args.store_url, workdir)
    store.compact_sessions = not args.whole  # type: ignore[attr-defined]
    try:
        started = time.perf_counter()
        batch: list[Trace] = []
        for t in synthetic(args.n, args.tokens, args.completion, args.turns):
            batch.append(t)
            if len(batch) >= args.batch:
                store.write(batch)  # type: ignore[attr-defined]
                batch = []
        if batch:
            store.write(batch)  # type: ignore[attr-defined]
        write_s = time.perf_counter() - started
        count = store.count()  # type: ignore[attr-defined]
        assert count == args.n, (count, args.n)
        mean = opening_tokens(args.tokens, args.completion, args.turns) + args.completion + (
            (args.completion + USER_TOKENS) * (args.turns - 1) / 2)
        print(f"store: {store_mod.resolve_url(args.store_url) if args.store_url else 'sqlite (temp file)'}")
        print(f"wrote {args.n:,} traces ({args.turns} calls a session, {mean:.0f} ids a trace on average, "
              f"{args.completion} sampled) in {write_s:.1f} s: {args.n / write_s:,.0f} traces/s")

        marks = {max(1, args.n // 10): "10%", max(1, args.n // 2): "50%"}
        samples: dict[str, int] = {}

        def progress(p: ExportProgress) -> None:
            for mark, label in marks.items():
                if label not in samples and (p.traces or 0) >= mark:
                    samples[label] = rss_now()

        out = Path(workdir) / f"export.{args.format}"
        # warm-up: one session exported, so the baseline has the libraries the export loads
        # (pyarrow ~75 MB resident, pandas where installed, zstd) and not only the data's memory
        export_trajectories(synthetic(args.turns, args.tokens, args.completion, args.turns), out,
                            view=args.view, format=args.format)
        rss_before = rss_now()
        started = time.perf_counter()
        cpu_started = time.process_time()
        traces = per_session(store) if args.read == "per-session" else store.iter_traces()  # type: ignore[attr-defined]
        result = export_trajectories(
            traces, out, view=args.view, format=args.format, order="session", progress=progress
        )
        export_s = time.perf_counter() - started
        export_cpu = time.process_time() - cpu_started
        samples["100%"] = rss_now()
        size = out.stat().st_size
        print(f"exported {result.traces:,} traces -> {result.rows:,} {args.view} rows, {args.format} "
              f"{size / 1e6:.1f} MB, {result.row_groups} row groups, in {export_s:.1f} s: "
              f"{result.traces / export_s:,.0f} traces/s (read {args.read}); this process's CPU "
              f"{export_cpu:.1f} s: {result.traces / export_cpu:,.0f} traces per CPU-second")
        print("RSS: before export (after a one-session warm-up) {:.0f} MB; at {}; peak (ru_maxrss) {:.0f} MB".format(
            rss_before / 1e6,
            ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in samples.items()),
            rss_peak() / 1e6,
        ))
    finally:
        if pg_schema is not None:
            conn = store._connection()  # type: ignore[attr-defined]
            conn.execute(f'DROP SCHEMA "{pg_schema}" CASCADE')
        store.close()  # type: ignore[attr-defined]
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
