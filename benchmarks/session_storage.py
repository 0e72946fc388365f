"""Store bytes of a growing agent session: compacted (the default) vs every call stored whole.

    python benchmarks/session_storage.py [--turns 50] [--final-tokens 20000] [--top-logprobs 0]
    python benchmarks/session_storage.py --store-url postgresql://user@host/db

One agent session of ``--turns`` calls whose context grows to ``--final-tokens`` ids: each
prompt is the previous prompt + the ids the model sampled + a tool result or user turn, and
the request's messages grow alike (text of ~5 characters a token). Every call carries what a
vLLM capture does: prompt ids, sampled ids, logprobs and token strings (``--top-logprobs K``:
K alternatives a token too). The calls are written one a write (the writer's batches at a
moderate rate) into fresh stores:

* ``final``: the last call alone: one call carrying the final context (the yardstick);
* ``whole``: every call, compaction off (``store.compact_sessions = False``: how every call
  was stored before, and how a call whose base this store never saw is stored);
* ``compact``: every call, compaction on (store/compact.py).

Bytes: SQLite, the file's size after a checkpoint, and the same minus an empty store's file
(the fixed pages of empty tables and indexes: 16 KiB each); PostgreSQL (``--store-url``), the
total relation size of the store's tables (heap, TOAST, indexes) in a new schema per store,
dropped at the end, and the same minus an empty store's. Also the payload (doc + arrays +
detail as stored). Then every trace of the compact store is read back and compared with the
whole store's, JSON for JSON.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from litellm_rllm import store as store_mod  # noqa: E402
from litellm_rllm.trace import TopLogprob, Trace, TraceChoice  # noqa: E402

WORDS = ("the of and to in is for that with on as it be by this are from or an at was not have def return "
         "import self class if else while try except file path value list dict error result tool call "
         "function argument agent step observation action answer").split()
OPENING = 600  # system prompt + tool schemas + the task


def agent_session(turns: int, final_tokens: int, top: int, seed: int = 0) -> list[Trace]:
    """The session's calls: 40% of what each turn adds is sampled, the rest a tool result."""
    rnd = random.Random(seed)
    step = max(4, (final_tokens - OPENING) // turns)
    sampled_n, result_n = max(2, step * 2 // 5), step - max(2, step * 2 // 5)

    def words(n: int) -> str:
        return " ".join(rnd.choice(WORDS) for _ in range(n))

    prompt = [rnd.randrange(151_000) for _ in range(OPENING)]
    messages: list[dict[str, Any]] = [{"role": "system", "content": words(OPENING - 60)},
                                      {"role": "user", "content": words(50)}]
    tools = [{"type": "function", "function": {"name": f"tool_{k}", "description": words(12),
                                               "parameters": {"type": "object"}}} for k in range(4)]
    out = []
    for turn in range(turns):
        ids = [rnd.randrange(151_000) for _ in range(sampled_n - 1)] + [151645]
        lps = [-rnd.expovariate(2.0) for _ in ids]
        text = words(sampled_n - 1)
        tokens = [rnd.choice(WORDS) for _ in ids]
        out.append(Trace(
            trace_id=f"call-{turn:03d}", session_id="episode-1", session_uids=["run-7", "episode-1"],
            metadata={"task": "swe-1234", "env": "bench"}, route="/v1/chat/completions", model="policy",
            provider="hosted_vllm", deployment_model="hosted_vllm/policy", api_base="http://vllm:8000/v1",
            request={"messages": [dict(m) for m in messages], "tools": tools, "temperature": 1.0, "logprobs": True,
                     "return_token_ids": True},
            injected={"logprobs": True, "return_token_ids": True, "rule": "vllm"},
            prompt_token_ids=list(prompt),
            choices=[TraceChoice(
                index=0, message={"role": "assistant", "content": text}, finish_reason="stop", token_ids=ids,
                logprobs=lps, tokens=tokens,
                top_logprobs=[[TopLogprob(token=t, logprob=lp)] + [TopLogprob(token=rnd.choice(WORDS), logprob=lp - r)
                                                                   for r in range(1, top)]
                              for t, lp in zip(tokens, lps)] if top else None)],
            usage={"prompt_tokens": len(prompt), "completion_tokens": len(ids), "total_tokens": len(prompt) + len(ids)},
            stream=turn % 2 == 1, latency_ms=1234.5, ttft_ms=56.7))
        result = [rnd.randrange(151_000) for _ in range(result_n)]
        prompt = prompt + ids + result
        messages += [{"role": "assistant", "content": text}, {"role": "tool", "tool_call_id": f"c{turn}",
                                                               "content": words(result_n - 8)}]
    return out


class Backend:
    """Fresh stores of one kind and their sizes."""

    def __init__(self, url: Optional[str], workdir: str) -> None:
        self.url, self.workdir, self.schemas = url, workdir, []  # type: ignore[var-annotated]

    @property
    def is_pg(self) -> bool:
        return bool(self.url and self.url.startswith(("postgresql://", "postgres://")))

    def new(self, name: str) -> Any:
        if self.is_pg:
            from litellm_rllm.store.postgres import parse_url

            schema = f"bench_{os.urandom(3).hex()}_{name}"
            url = self.url + ("&" if "?" in self.url else "?") + f"schema={schema}"  # type: ignore[operator]
            self.schemas.append((parse_url(url)[0], schema))
            st = store_mod.open(url)
            st.bench_schema = schema
            return st
        return store_mod.open(f"sqlite:///{os.path.join(self.workdir, name + '.db')}")

    def size(self, st: Any) -> int:
        if self.is_pg:
            return int(st._read(lambda conn: conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'", (st.bench_schema,)).fetchone()[0]))
        st.checkpoint()
        return os.path.getsize(st.path)

    def payload(self, st: Any) -> int:
        sql = "SELECT sum(length(doc) + coalesce(length(arrays), 0) + coalesce(length(detail), 0)) FROM {t}"
        if self.is_pg:
            return int(st._read(lambda conn: conn.execute(
                sql.format(t=f'"{st.bench_schema}".traces').replace("length(doc)", "octet_length(doc)")).fetchone()[0]))
        with st._lock:
            return int(st._conn.execute(sql.format(t="traces").replace("length(doc)", "length(CAST(doc AS BLOB))"))
                       .fetchone()[0])

    def drop(self) -> None:
        if not self.schemas:
            return
        import psycopg

        for conninfo, schema in self.schemas:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=50, help="calls in the session")
    parser.add_argument("--final-tokens", type=int, default=20_000, help="ids in the last call (prompt + sampled)")
    parser.add_argument("--top-logprobs", type=int, default=0, help="alternatives a sampled token (0: none)")
    parser.add_argument("--store-url", default=None, help="postgresql://... (default: SQLite files in a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite files")
    args = parser.parse_args()

    traces = agent_session(args.turns, args.final_tokens, args.top_logprobs)
    last = traces[-1]
    final_ids = len(last.prompt_token_ids or []) + len(last.choices[0].token_ids or [])
    all_ids = sum(len(t.prompt_token_ids or []) + len(t.choices[0].token_ids or []) for t in traces)
    workdir = tempfile.mkdtemp(prefix="rllm-session-bench-")
    backend = Backend(args.store_url, workdir)
    try:
        stores = {name: backend.new(name) for name in ("empty", "final", "whole", "compact")}
        stores["whole"].compact_sessions = False
        timings = {}
        stores["final"].write([last.model_copy(deep=True)])
        for name in ("whole", "compact"):
            started = time.perf_counter()
            for trace in traces:
                stores[name].write([trace.model_copy(deep=True)])
            timings[name] = time.perf_counter() - started
        sizes = {name: backend.size(st) for name, st in stores.items()}
        payload = {name: backend.payload(st) for name, st in stores.items() if name != "empty"}
        base = sizes["empty"]
        kind = "PostgreSQL relations" if backend.is_pg else "SQLite file"
        print(f"session: {len(traces)} calls, last call {final_ids:,} ids; {all_ids:,} ids in all calls"
              f" ({all_ids / final_ids:.1f}x the last call's); top_logprobs {args.top_logprobs}")
        print(f"{'store':<9}{kind + ' bytes':>24}{'minus empty store':>20}{'payload bytes':>16}{'write s':>9}")
        for name in ("final", "whole", "compact"):
            print(f"{name:<9}{sizes[name]:>24,}{sizes[name] - base:>20,}{payload[name]:>16,}"
                  f"{timings.get(name, float('nan')):>9.2f}")
        print(f"{'empty':<9}{base:>24,}")
        for name in ("whole", "compact"):
            print(f"{name} / final: {sizes[name] / sizes['final']:.2f}x {kind.split()[0]} size,"
                  f" {(sizes[name] - base) / (sizes['final'] - base):.2f}x above an empty store,"
                  f" {payload[name] / payload['final']:.2f}x payload")
        started = time.perf_counter()
        got = [t.model_dump_json() for t in stores["compact"].traces(session="episode-1")]
        read_s = time.perf_counter() - started
        want = [t.model_dump_json() for t in stores["whole"].traces(session="episode-1")]
        same = got == want and len(got) == len(traces)
        print(f"read back: {len(got)} traces from the compact store in {read_s:.2f} s,"
              f" {'identical to' if same else 'DIFFERENT from'} the whole store's")
        for st in stores.values():
            st.close()
        if not same:
            sys.exit(1)
    finally:
        backend.drop()
        if args.keep:
            print(f"stores kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
