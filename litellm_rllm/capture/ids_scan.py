"""Token ids of a one-choice vLLM stream, read from the upstream's bytes as they pass.

Why: a stream's events are parsed once, after it ends (`upstream_tap`'s late parse): parsing
each event as it arrives, between LiteLLM's own work on the event loop, cost a saturated proxy
~2-3% of its streams (benchmarks/saturation.py, `batch_parse_ids` against `plugin`). A client
that asked for token ids still needs them while it streams (`callbacks/stream_ids.py` hands it
the ids LiteLLM drops), so this finds just those in the bytes: `"prompt_token_ids":[...]` of
the first event and each event's `"token_ids":[...]`. vLLM writes compact JSON (pydantic's), in
which a key can't be mistaken for text (quotes inside strings are escaped); one choice only
(the tap asks for a scan only where the client's `n` is 1: several choices' ids interleave).
Anything else (spaces after colons, ids it cannot read) sets `failed`: the caller then parses
the whole events instead. The trace never comes from here: it is built from the full parse of
the same bytes.
"""

from __future__ import annotations

from array import array
from typing import Optional

_IDS = b'"token_ids":['
_PROMPT = b'"prompt_token_ids":['


class IdsScan:
    """`feed(bytes)` per read; `token_ids_of(0)` and `prompt_token_ids` as StreamAccumulator has them."""

    __slots__ = ("ids", "prompt_token_ids", "failed", "_carry", "_first")

    def __init__(self) -> None:
        self.ids = array("i")
        self.prompt_token_ids: Optional[list[int]] = None
        self.failed = False
        self._carry = b""  # an event not yet complete (a read that ended inside it)
        self._first = True  # the first complete event not seen yet

    def token_ids_of(self, index: int) -> Optional[array]:
        """The ids so far (the array itself), once an event was seen; as the accumulator's."""
        return self.ids if index == 0 and not self._first else None

    def feed(self, data: bytes) -> None:
        if self.failed:
            return
        if self._carry:
            data = self._carry + data
        end = data.rfind(b"\n")  # complete lines only; an event's JSON is one line
        if end < 0:
            self._carry = data
            return
        self._carry = data[end + 1:]
        if self._first:
            self._first = False
            if b'": ' in data[:end] or b'", "' in data[:end]:
                self.failed = True  # not compact JSON: not what this reads
                return
            at = data.find(_PROMPT, 0, end)
            if at >= 0:
                ids = self._read(data, at + len(_PROMPT), end)
                if ids is None:
                    return
                self.prompt_token_ids = ids.tolist()
        at = data.find(_IDS, 0, end)
        while at >= 0:
            ids = self._read(data, at + len(_IDS), end)
            if ids is None:
                return
            self.ids.extend(ids)
            at = data.find(_IDS, at + len(_IDS), end)

    def _read(self, data: bytes, start: int, end: int) -> Optional[array]:
        close = data.find(b"]", start, end)
        if close < 0:
            self.failed = True
            return None
        body = data[start:close]
        try:
            return array("i", map(int, body.split(b","))) if body else array("i")
        except ValueError:
            self.failed = True
            return None
