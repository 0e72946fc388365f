"""Benchmark-only: parts of the plugin's stream path, each alone (`benchmarks/saturation.py`).

* `pass_through_hook`: a callback whose only override is a streaming iterator hook that yields
  every chunk unchanged. With it LiteLLM leaves its fast path for streams: each chunk goes
  through its hook layers and into the list of served chunks it keeps until the stream ends
  (`ProxyLogging.async_post_call_streaming_iterator_hook`), whose text it then gathers in a
  worker thread. That is LiteLLM's price of any callback that sees a stream chunk by chunk.
* `tracer_no_tee_parse`: the real tracer, but the tee keeps nothing of an SSE body (no parse,
  no accumulation; the streams' traces come out empty). The difference to the full plugin is
  what parsing the upstream's events costs the proxy, garbage collection included.
* `tracer_batch_parse`, `tracer_batch_parse_ids`: the real tracer, the tee keeping an SSE
  body's reads and parsing them in one go when the body ends (the trace is the same); `_ids`
  also reads the token ids from the bytes as they pass, so a client that asked gets them all.
  What parsing each event as it arrives costs a saturated proxy (docs/benchmarks.md).
* `sampling_no_cancel_points`: the real sampling entry (which then carries the one stream
  wrapper), its wrapper never yielding to the loop on its own (`finish.CANCEL_POINT_S` out
  of reach): what those yields cost a saturated loop.

Listed in a proxy config's `callbacks` (the last two in place of the entry they stand for);
none of this changes the package: it patches one proxy's objects when LiteLLM resolves the
name, once (the first resolution's object is returned after).
"""

from __future__ import annotations

from typing import Any

from litellm.integrations.custom_logger import CustomLogger


class PassThroughHook(CustomLogger):
    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict: Any, response: Any,
                                                      request_data: dict) -> Any:
        async for chunk in response:
            yield chunk


def _tracer_no_tee_parse() -> Any:
    import litellm_rllm.callbacks as entries
    from litellm_rllm.callbacks import upstream_tap

    real = upstream_tap.UpstreamTap.feed

    def feed(self: Any, data: bytes) -> None:
        if self.parser is None:  # a JSON body: kept as before
            real(self, data)

    upstream_tap.UpstreamTap.feed = feed  # type: ignore[method-assign]
    return entries.tracer


def _tracer_batch_parse(scan_ids: bool) -> Any:
    """The tee keeps an SSE body's reads and parses them in one go when the body ends, into a
    fresh accumulator; `scan_ids`: meanwhile it reads the token ids (and the first event's
    prompt ids) from the bytes as they pass, which is what a client that asked for ids needs
    during the stream (callbacks/stream_ids.py reads them from the tap's accumulator)."""
    import litellm_rllm.callbacks as entries
    from litellm_rllm.callbacks import upstream_tap
    from litellm_rllm.capture.sse import SSEParser
    from litellm_rllm.capture.stream import StreamAccumulator

    raw: dict[int, tuple[Any, list[bytes]]] = {}  # id(the tap's parser) -> (the tap, its reads)
    real_feed, real_close = upstream_tap.UpstreamTap.feed, SSEParser.close
    key, prompt_key = b'"token_ids":[', b'"prompt_token_ids":['

    def feed(self: Any, data: bytes) -> None:
        if self.parser is None:
            real_feed(self, data)
            return
        if self.stopped:
            return
        entry = raw.get(id(self.parser))
        if entry is None:
            entry = raw[id(self.parser)] = (self, [])
            at = data.find(prompt_key) if scan_ids else -1
            if at >= 0:
                end = data.find(b"]", at)
                self.acc.prompt_token_ids = [int(x) for x in data[at + len(prompt_key):end].split(b",") if x]
        entry[1].append(data)
        at = data.find(key) if scan_ids else -1
        while at >= 0:
            end = data.find(b"]", at)
            ids = data[at + len(key):end]
            if ids:
                self.acc._choice(0).token_ids.extend(map(int, ids.split(b",")))
            at = data.find(key, end)

    def close(self: Any) -> None:
        entry = raw.pop(id(self), None)
        if entry is None:
            real_close(self)
            return
        tap, reads = entry
        acc = StreamAccumulator(started=tap.acc.started)
        parser = SSEParser(acc.add)
        SSEParser.feed(parser, b"".join(reads))
        real_close(parser)
        tap.acc, tap.parser = acc, parser

    upstream_tap.UpstreamTap.feed = feed  # type: ignore[method-assign]
    SSEParser.close = close  # type: ignore[method-assign]
    return entries.tracer


def _sampling_no_cancel_points() -> Any:
    import litellm_rllm.callbacks as entries
    from litellm_rllm.callbacks import finish

    finish.CANCEL_POINT_S = float("inf")
    return entries.sampling


_FACTORIES = {
    "pass_through_hook": PassThroughHook,
    "tracer_no_tee_parse": _tracer_no_tee_parse,
    "sampling_no_cancel_points": _sampling_no_cancel_points,
    "tracer_batch_parse": lambda: _tracer_batch_parse(scan_ids=False),
    "tracer_batch_parse_ids": lambda: _tracer_batch_parse(scan_ids=True),
}
_made: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    factory = _FACTORIES.get(name)
    if factory is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _made:
        _made[name] = factory()
    return _made[name]
