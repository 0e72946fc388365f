"""Benchmark-only: parts of the plugin's stream path, each alone (`benchmarks/saturation.py`).

* `pass_through_hook`: a callback whose only override is a streaming iterator hook that yields
  every chunk unchanged. With it LiteLLM leaves its fast path for streams: each chunk goes
  through its hook layers and into the list of served chunks it keeps until the stream ends
  (`ProxyLogging.async_post_call_streaming_iterator_hook`), whose text it then gathers in a
  worker thread. That is LiteLLM's price of any callback that sees a stream chunk by chunk.
* `tracer_no_tee_parse`: the real tracer, but the tee keeps nothing of an SSE body (no parse,
  no accumulation; the streams' traces come out empty). The difference to the full plugin is
  what parsing the upstream's events costs the proxy, garbage collection included.
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


def _sampling_no_cancel_points() -> Any:
    import litellm_rllm.callbacks as entries
    from litellm_rllm.callbacks import finish

    finish.CANCEL_POINT_S = float("inf")
    return entries.sampling


_FACTORIES = {
    "pass_through_hook": PassThroughHook,
    "tracer_no_tee_parse": _tracer_no_tee_parse,
    "sampling_no_cancel_points": _sampling_no_cancel_points,
}
_made: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    factory = _FACTORIES.get(name)
    if factory is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _made:
        _made[name] = factory()
    return _made[name]
