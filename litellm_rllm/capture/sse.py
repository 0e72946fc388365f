"""Incremental server-sent-events parser: raw upstream bytes -> JSON events -> a sink.

Fed straight from the HTTP response body as it arrives, so it copes with events and CRLFs
split across reads. Each `data:` payload is decoded once (orjson when available) and handed to
the sink (`StreamAccumulator.add`); nothing else is kept, so memory stays proportional to the
tokens, not to the bytes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

try:  # orjson comes with LiteLLM's proxy extras; ~5x faster than json for these small events
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover
    import json

    _loads = json.loads


class SSEParser:
    """`feed(bytes)` as often as data arrives; complete events go to `on_event(dict)`."""

    __slots__ = ("_buf", "_data", "on_event", "done", "events", "bad_events", "error")

    def __init__(self, on_event: Callable[[Any], None]) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self.on_event = on_event
        self.done = False  # saw `data: [DONE]`
        self.events = 0
        self.bad_events = 0
        self.error: Optional[dict[str, Any]] = None  # an in-stream `{"error": ...}` event

    def feed(self, chunk: bytes) -> None:
        # The usual body (vLLM, OpenAI) is `data: {...}\n\n` events: a read of exactly one
        # (a paced upstream) is taken whole; a read of several is cut at blank lines in C, each
        # one-line event taken whole. The line loop (`_lines`, the SSE grammar, for anything
        # else) costs ~1 us an event more (benchmarks/tee_events.py).
        if (not self._buf and not self._data and chunk[:6] == b"data: " and chunk[-2:] == b"\n\n"
                and chunk.find(b"\n", 6) == len(chunk) - 2 and chunk[-3:-2] != b"\r"):
            self._emit(chunk[6:-2])
            return
        buf = self._buf + chunk if self._buf else chunk
        if not self._data and b"\r" not in buf:
            events = buf.split(b"\n\n")
            self._buf = events.pop()  # after the last blank line: an event still arriving
            for event in events:
                if event[:6] == b"data: " and b"\n" not in event:
                    self._emit(event[6:])
                elif event:
                    self._lines(event + b"\n\n")
            return
        self._buf = self._lines(buf)

    def _lines(self, buf: bytes) -> bytes:
        """Line by line (the SSE grammar); returns what follows the last complete line."""
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                self._dispatch()
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            # other fields (event:, id:, retry:, comments) carry nothing we need
        return buf[start:]

    def close(self) -> None:
        """End of body: an event not terminated by a blank line still counts."""
        if self._buf:
            self._lines(self._buf + b"\n")
            self._buf = b""
        self._dispatch()

    def _dispatch(self) -> None:
        if not self._data:
            return
        payload = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        self._emit(payload)

    def _emit(self, payload: bytes) -> None:
        """One event's data."""
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            event = _loads(payload)
        except ValueError:
            self.bad_events += 1
            return
        self.events += 1
        if isinstance(event, dict) and "error" in event and "choices" not in event:
            self.error = event["error"] if isinstance(event["error"], dict) else {"message": str(event["error"])}
            return
        self.on_event(event)
