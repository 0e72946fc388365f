"""Submitted items -> encoded rows (``codec.EncodedTrace``): the writer's build-and-encode step.

The writer thread hands each batch to an encoder and writes what comes back. Two encoders do
the same work in different places:

* ``InlineEncoder``: in the calling thread (the writer thread). The only choice for a writer
  whose items are ready ``Trace`` objects, and the fallback of the other one.
* ``build_process.BuildProcess``: in a helper process, so the proxy's GIL stays free for
  its event loop (see that module).

Each item gives one ``Encoded``, in input order (order is ``seq`` order within a session).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Protocol, Sequence

from litellm_rllm.store.codec import EncodedTrace, encode
from litellm_rllm.trace import Trace

BuildFn = Callable[[Any], Optional[Trace]]
Failure = Literal["build", "encode", "skip"]


@dataclass(slots=True)
class Encoded:
    """One item's outcome: its row, or why there is none (``failure``; ``detail`` says more:
    a traceback for a build error, the exception for an encode error)."""

    item_id: Optional[str]
    row: Optional[EncodedTrace] = None
    failure: Optional[Failure] = None
    detail: str = ""


class Encoder(Protocol):
    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        """One ``Encoded`` per item, in order. Never raises."""

    def stats(self) -> dict[str, int]:
        """Counters for the writer's ``stats()`` (may be empty)."""

    def close(self) -> None:
        """Release what the encoder holds (a helper process). Idempotent."""


def trace_id_of(item: Any) -> Optional[str]:
    """Best-effort id of a submitted item, for log lines about it."""
    candidates = item if isinstance(item, (tuple, list)) else (item,)
    for obj in candidates:
        for name in ("trace_id", "call_id", "litellm_call_id", "id"):
            value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
            if isinstance(value, str) and value:
                return value
    return None


def encode_item(item: Any, build: Optional[BuildFn]) -> Encoded:
    """``build`` (none: the item is a Trace) then ``codec.encode``, with failures as outcomes.
    An item that is already an ``EncodedTrace`` is taken as it is."""
    if isinstance(item, EncodedTrace):
        return Encoded(item.trace_id, row=item)
    item_id = trace_id_of(item)
    try:
        trace = item if build is None else build(item)
    except Exception:  # noqa: BLE001 - reported as the item's outcome
        return Encoded(item_id, failure="build", detail=traceback.format_exc())
    if trace is None:
        return Encoded(item_id, failure="skip")
    if not isinstance(trace, Trace):
        return Encoded(item_id, failure="build", detail=f"got {type(trace).__name__} instead of a Trace")
    try:
        return Encoded(trace.trace_id, row=encode(trace))
    except Exception as exc:  # noqa: BLE001 - e.g. a non-JSON value in metadata
        return Encoded(trace.trace_id, failure="encode", detail=repr(exc))


_YIELD_AFTER_S = 0.001  # building in the writer thread hands the GIL over after this much
_YIELD_SLEEP_S = 0.0001  # a real sleep: on one CPU a zero-length one would take the GIL right back


def encode_in_thread(items: Sequence[Any], build: Optional[BuildFn]) -> list[Encoded]:
    """``encode_item`` for each, yielding the GIL after each millisecond of work: without that
    a burst of items would be Python work in one stretch, and the event loop would wait a full
    switch interval (5 ms) for the GIL each time it wanted it back."""
    out: list[Encoded] = []
    clock = time.perf_counter
    mark = clock()
    last = len(items) - 1
    for k, item in enumerate(items):
        out.append(encode_item(item, build))
        if k < last and clock() - mark > _YIELD_AFTER_S:
            time.sleep(_YIELD_SLEEP_S)
            mark = clock()
    return out


class InlineEncoder:
    """Builds and encodes in the calling thread."""

    def __init__(self, build: Optional[BuildFn] = None) -> None:
        self.build = build

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        return encode_in_thread(items, self.build)

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


__all__ = ["BuildFn", "Encoded", "Encoder", "InlineEncoder", "encode_in_thread", "encode_item", "trace_id_of"]
