"""See the upstream's response exactly as the server sent it.

LiteLLM's parsing loses what RL needs: from vLLM streams the role chunk's top-level
`prompt_token_ids`, whole `"delta": {}` chunks with their token ids and logprobs and the finish
chunk's EOS id (see shared/notes/litellm.md); on translated routes (`/v1/messages` served by a
vLLM deployment) everything but the text. So for calls to OpenAI-format upstreams the
deployment hook hands LiteLLM an HTTP client of ours, through LiteLLM's documented `client`
parameter: its httpx transport is LiteLLM's own (`create_async_transport`) wrapped in a tee that
forwards every byte unchanged and keeps what it needs: an SSE body is parsed as it passes
(`SSEParser` -> `StreamAccumulator`, packed arrays), a JSON body is kept as bytes for the writer
thread to parse. A private header carries the call id from the hook to the transport and is
removed before the request leaves the process. No LiteLLM code is patched.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import OrderedDict
from typing import Any, Optional

import httpx

from ..capture.sse import SSEParser
from ..capture.stream import StreamAccumulator
from .plugin import plugin

log = logging.getLogger("litellm_rllm")

TAG_HEADER = "x-litellm-rllm-call"

# (provider, LiteLLM call type) -> which client LiteLLM expects in `client` there. Only pairs
# verified against LiteLLM's handlers are tapped: a wrong client type would fail the call.
_HANDLER, _OPENAI = "handler", "openai"
CLIENT_KIND: dict[tuple[str, str], str] = {
    ("hosted_vllm", "acompletion"): _HANDLER,
    ("hosted_vllm", "atext_completion"): _OPENAI,
    ("openai", "acompletion"): _OPENAI,
    ("openai", "atext_completion"): _OPENAI,
    ("hosted_vllm", "aresponses"): _HANDLER,
    ("openai", "aresponses"): _HANDLER,
}
MAX_RAW_BODY = 512 << 20  # a non-streamed body larger than this is not kept (LiteLLM's copy is used)
# An SSE read larger than this is parsed in slices of it with the event loop free between them:
# ~0.5 ms of parsing each, so one read never holds the loop for milliseconds.
PARSE_SLICE = 16 << 10


class UpstreamTap:
    """One attempt's upstream response: a stream parsed into packed arrays as it arrives, or a
    JSON body kept as bytes."""

    __slots__ = ("acc", "parser", "status_code", "finished", "error", "is_sse", "body", "body_size", "stream",
                 "stopped")

    def __init__(self, started: float, status_code: int, is_sse: bool) -> None:
        self.status_code = status_code
        self.is_sse = is_sse
        self.acc = StreamAccumulator(started=started) if is_sse else None
        self.parser = SSEParser(self.acc.add) if self.acc is not None else None
        # A JSON body as the reads arrived (joined in the writer thread: growing one buffer
        # would copy megabytes on the event loop each time it reallocates).
        self.body: Optional[list[bytes]] = None if is_sse else []
        self.body_size = 0
        self.finished = False  # the body ended normally
        self.error: Optional[str] = None
        self.stream: Optional["TeeStream"] = None
        self.stopped = False  # the client went away: nothing more is kept, the upstream is closed

    def feed(self, data: bytes) -> None:
        if self.stopped:
            return
        if self.parser is not None:
            self.parser.feed(data)
        elif self.body is not None:
            self.body_size += len(data)
            if self.body_size > MAX_RAW_BODY:
                self.body = None
            else:
                self.body.append(data)

    def stop(self) -> None:
        """The client went away (or the stream failed): keep what was read until now, and close
        the upstream connection so the server stops generating for nobody. LiteLLM closes it
        too, but only once its stream task gets cancelled, which an overloaded event loop can
        put off until the upstream has sent everything (tests/system/test_disconnects.py)."""
        if self.stopped:
            return
        self.stopped = True  # feed() keeps nothing more: the trace has what was read until now
        stream = self.stream
        if stream is not None and not self.finished:
            plugin().spawn(stream.aclose())

    def json_body(self) -> Optional[list[bytes]]:
        """The complete 2xx JSON body as its reads (the writer thread joins and parses), or None."""
        if self.is_sse or not self.finished or self.body is None or not (200 <= self.status_code < 300):
            return None
        return self.body


class TeeStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, tap: UpstreamTap) -> None:
        self._inner = inner
        self._tap = tap
        self._closed = False
        tap.stream = self

    async def __aiter__(self) -> Any:
        tap = self._tap
        if tap.finished or tap.error is not None:  # a second read of a replayable body: pass it on only
            async for data in self._inner:
                yield data
            return
        try:
            async for data in self._inner:
                if tap.parser is not None and len(data) > PARSE_SLICE:
                    await self._feed_in_slices(data)
                else:
                    self._feed(data)
                yield data
        except BaseException as exc:
            tap.error = f"{type(exc).__name__}: {exc}"
            raise
        if tap.parser is not None:
            tap.parser.close()
        tap.finished = True

    def _feed(self, data: bytes) -> None:
        try:
            self._tap.feed(data)
        except Exception:  # capture must never break the response
            log.exception("litellm-rllm: could not read upstream response bytes")

    async def _feed_in_slices(self, data: bytes) -> None:
        """Parse a large read a slice at a time, letting the loop run in between: one read can
        hold hundreds of events (a fast upstream, a slow reader), ~30 us of parsing per KB."""
        last = len(data) - PARSE_SLICE
        for start in range(0, len(data), PARSE_SLICE):
            self._feed(data[start:start + PARSE_SLICE])
            if start < last:
                await asyncio.sleep(0)

    async def aclose(self) -> None:
        if self._closed:  # the tap's stop() and LiteLLM may both close it
            return
        self._closed = True
        await self._inner.aclose()


class _TeeTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call_id = request.headers.get(TAG_HEADER)
        if call_id is None:
            return await self._inner.handle_async_request(request)
        del request.headers[TAG_HEADER]
        request.headers["accept-encoding"] = "identity"  # the tee parses plain SSE text
        response = await self._inner.handle_async_request(request)
        state = plugin().calls.get(call_id)
        if state is not None:
            is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
            tap = UpstreamTap(state.started, response.status_code, is_sse)
            state.tap = tap  # a retried attempt replaces the failed one's
            response.stream = TeeStream(response.stream, tap)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _LoopClients:
    """Clients bound to one event loop (httpx pools must not cross loops)."""

    def __init__(self) -> None:
        self.handlers: dict[Any, Any] = {}
        self.openai: "OrderedDict[tuple[Any, ...], Any]" = OrderedDict()
        self.httpx: dict[Any, httpx.AsyncClient] = {}


_per_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients]" = weakref.WeakKeyDictionary()


def _loop_clients() -> _LoopClients:
    loop = asyncio.get_running_loop()
    clients = _per_loop.get(loop)
    if clients is None:
        clients = _per_loop[loop] = _LoopClients()
    return clients


def _transport(ssl_verify: Any) -> httpx.AsyncBaseTransport:
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    # Public from LiteLLM 1.106; `_create_async_transport` before (same signature).
    factory = (getattr(AsyncHTTPHandler, "create_async_transport", None)
               or getattr(AsyncHTTPHandler, "_create_async_transport", None))
    inner = factory(ssl_verify=ssl_verify if isinstance(ssl_verify, bool) else None) if factory is not None else None
    return _TeeTransport(inner or httpx.AsyncHTTPTransport(verify=ssl_verify if ssl_verify is not None else True))


def _vllm_client(ssl_verify: Any) -> Any:
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    clients = _loop_clients()
    key = ssl_verify if isinstance(ssl_verify, (bool, str)) else None
    handler = clients.handlers.get(key)
    if handler is None:
        handler = clients.handlers[key] = AsyncHTTPHandler(transport=_transport(ssl_verify))
    return handler


def _openai_client(kwargs: dict[str, Any]) -> Any:
    from openai import AsyncOpenAI

    clients = _loop_clients()
    ssl_verify = kwargs.get("ssl_verify")
    key_ssl = ssl_verify if isinstance(ssl_verify, (bool, str)) else None
    http = clients.httpx.get(key_ssl)
    if http is None:
        http = clients.httpx[key_ssl] = httpx.AsyncClient(transport=_transport(ssl_verify), timeout=None,
                                                         follow_redirects=True)
    api_base = kwargs.get("api_base") or None
    api_key = kwargs.get("api_key") or None
    organization = kwargs.get("organization") or None
    cache_key = (api_base, hash(api_key), organization, key_ssl)
    client = clients.openai.get(cache_key)
    if client is None:
        client = AsyncOpenAI(api_key=api_key or "none", base_url=api_base, organization=organization,
                             http_client=http, max_retries=0)
        clients.openai[cache_key] = client
        if len(clients.openai) > 256:
            clients.openai.popitem(last=False)
    else:
        clients.openai.move_to_end(cache_key)
    return client


def install(kwargs: dict[str, Any], provider: Optional[str], call_type: Any) -> bool:
    """Route this attempt through the tee; False where we don't (or can't) tap."""
    kind = CLIENT_KIND.get((provider or "", str(getattr(call_type, "value", call_type))))
    if kind is None or kwargs.get("client") is not None:
        return False
    call_id = kwargs.get("litellm_call_id")
    if not call_id:
        return False
    kwargs["client"] = _vllm_client(kwargs.get("ssl_verify")) if kind == _HANDLER else _openai_client(kwargs)
    headers = dict(kwargs.get("extra_headers") or {})
    headers[TAG_HEADER] = str(call_id)
    kwargs["extra_headers"] = headers
    return True
