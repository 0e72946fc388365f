"""Benchmark-only: the tracer entry with one stage of its writer replaced by a no-op.

`benchmarks/attribution.py` lists `benchmarks.ablations.writer_stages.tracer_<ablation>` in a
proxy config in place of `litellm_rllm.callbacks.tracer`. LiteLLM resolves that name to the
real tracer instance (so the proxy runs the same three callbacks as the full plugin, nothing
more), and resolving it swaps one stage on the plugin's writer first:

* `discard`: a store that takes every batch and writes nothing (no SQLite at all);
* `no_commit`: SQLite does the batch's reads and inserts, then rolls back (no commit, no WAL
  write, no checkpoint);
* `no_build`: the trace of each call is a copy of the first one built (no `prepare`, no
  `build_trace`: no body parse, no pydantic validation), renamed to the call's id;
* `no_encode`: the row of each call is a copy of the first one encoded (no `codec.encode`),
  renamed to the call's id.

None of this touches the package's code paths: it patches one proxy's objects at start.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ABLATIONS = ("discard", "no_commit", "no_build", "no_encode")


class DiscardStore:
    """What the writer calls on a store, doing nothing: every trace "written"."""

    def write_encoded(self, encoded: Any) -> Any:
        from litellm_rllm.store.base import EncodedWriteResult

        return EncodedWriteResult(list(range(len(encoded))), [])

    def close(self) -> None:
        pass


def _discard(writer: Any) -> None:
    writer._store = DiscardStore()


def _no_commit(writer: Any) -> None:
    from litellm_rllm.store import sqlite

    class RollbackTransaction(sqlite._Transaction):
        def __exit__(self, exc_type: Any, *rest: object) -> None:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    def patch(store: Any) -> Any:
        store._transaction = lambda: RollbackTransaction(store._conn)
        store._background_checkpoint = False
        return store

    if writer._store is not None:
        patch(writer._store)
    else:
        factory = writer._factory
        writer._factory = lambda: patch(factory())


def _no_build(writer: Any) -> None:
    encoder = writer._encoder
    attr = "_build" if hasattr(encoder, "_build") else "build"
    real = getattr(encoder, attr)
    cache: dict[bool, Any] = {}

    def build(item: Any) -> Any:
        first = cache.get(bool(item.stream))
        if first is None:
            first = cache[bool(item.stream)] = real(item)
            return first
        return first.model_copy(update={"trace_id": item.call_id})

    setattr(encoder, attr, build)
    if hasattr(encoder, "_prepare"):
        encoder._prepare = None  # part of the build: pricing, trimming, redaction


def _no_encode(writer: Any) -> None:
    from litellm_rllm.writer import encoders

    real = encoders.encode
    cache: dict[bool, Any] = {}

    def encode(trace: Any) -> Any:
        first = cache.get(bool(trace.stream))
        if first is None:
            first = cache[bool(trace.stream)] = real(trace)
            return first
        return dataclasses.replace(first, trace_id=trace.trace_id)

    encoders.encode = encode


_APPLY = {"discard": _discard, "no_commit": _no_commit, "no_build": _no_build, "no_encode": _no_encode}


def __getattr__(name: str) -> Any:
    ablation = name[len("tracer_"):] if name.startswith("tracer_") else ""
    if ablation not in _APPLY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import litellm_rllm.callbacks as entries
    from litellm_rllm.callbacks.plugin import plugin

    tracer = entries.tracer  # the real entry; it creates the writer
    p = plugin()
    if not getattr(p, "bench_ablation", None):
        _APPLY[ablation](p.writer)
        p.bench_ablation = ablation
    return tracer
