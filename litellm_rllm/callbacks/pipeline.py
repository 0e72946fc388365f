"""The end of a call, shared by the tracer and the sampling callback.

Both callbacks need the final response: the tracer to capture it, the sampling callback to hide
what it injected. LiteLLM runs their hooks in list order and each may see the other's output,
so instead of each doing its part, the first final hook to run for a call (whichever callback
it belongs to) does every enrolled part in the right order (capture, then strip) and ends the
call; later hooks for that call pass through. Streams likewise get one wrapper.
"""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncIterator, Mapping, Optional

from ..record import CallRecord
from ..slug import SlugError
from ..sse import SSEParser
from ..stream import StreamAccumulator
from . import runtime
from .runtime import CallState, calls

log = logging.getLogger("litellm_rllm")

TRACER = "tracer"
SAMPLING = "sampling"
RLLM_META_KEY = "rllm"  # where the decoded slug sits inside LiteLLM's request metadata

counters: dict[str, int] = {"capture_errors": 0, "strip_errors": 0, "submitted": 0}


def call_id_of(data: Mapping[str, Any]) -> Optional[str]:
    cid = data.get("litellm_call_id")
    return str(cid) if cid else None


def metadata_slot(data: Mapping[str, Any]) -> str:
    """LiteLLM's metadata key for this request: `litellm_metadata` on /v1/messages,
    /v1/responses, ...; `metadata` elsewhere (there the body's `metadata` is the provider's)."""
    if isinstance(data.get("litellm_metadata"), dict):
        return "litellm_metadata"
    return "metadata"


def request_headers(data: Mapping[str, Any]) -> Mapping[str, Any]:
    psr = data.get("proxy_server_request")
    headers = psr.get("headers") if isinstance(psr, Mapping) else None
    return headers if isinstance(headers, Mapping) else {}


def route_of(data: Mapping[str, Any]) -> Optional[str]:
    psr = data.get("proxy_server_request")
    url = psr.get("url") if isinstance(psr, Mapping) else None
    if not isinstance(url, str):
        return None
    path = url.split("://", 1)[-1]
    path = path[path.find("/"):] if "/" in path else "/"
    return path.split("?", 1)[0]


def session_of(data: Mapping[str, Any]) -> dict[str, Any]:
    """The call's slug metadata: as the metadata callback stored it, else from the header."""
    for slot in ("litellm_metadata", "metadata"):
        meta = data.get(slot)
        if isinstance(meta, Mapping) and isinstance(meta.get(RLLM_META_KEY), Mapping):
            return dict(meta[RLLM_META_KEY])
    slug = request_headers(data).get(runtime.settings().slug_header)
    if not slug:
        return {}
    try:
        return runtime.check_slug(slug).as_dict()
    except SlugError:
        return {}


def caller_of(user_api_key_dict: Any) -> Optional[dict[str, Any]]:
    """Who called, as LiteLLM resolved it; never the key itself."""
    if user_api_key_dict is None:
        return None
    out = {
        "key_alias": getattr(user_api_key_dict, "key_alias", None),
        "team_id": getattr(user_api_key_dict, "team_id", None),
        "user_id": getattr(user_api_key_dict, "user_id", None),
    }
    return {k: v for k, v in out.items() if v is not None} or None


_gc_frozen = False


def _freeze_startup_heap() -> None:
    global _gc_frozen
    _gc_frozen = True
    if runtime.settings().gc_freeze_after_start:
        import gc

        gc.freeze()
        log.info("litellm-rllm: gc.freeze() after start-up (%d objects moved out of collection)",
                 gc.get_freeze_count())


def begin(data: dict[str, Any], user_api_key_dict: Any) -> Optional[CallState]:
    """Register the call (from any callback's pre-call hook); idempotent."""
    if not _gc_frozen:
        _freeze_startup_heap()
    cid = call_id_of(data)
    if cid is None:
        return None
    state = calls.get_or_create(cid)
    if state.client_request is None:
        state.client_request = dict(data)
        state.caller = caller_of(user_api_key_dict)
    return state


def _record(state: CallState, data: Mapping[str, Any], status: str) -> CallRecord:
    end = time.perf_counter()
    client = state.client_request or dict(data)
    return CallRecord(
        call_id=state.call_id,
        started_wall=state.started_wall,
        status=status,
        route=route_of(data),
        model=client.get("model") if isinstance(client.get("model"), str) else None,
        stream=bool(client.get("stream")),
        latency_ms=(end - state.started) * 1000.0,
        session=session_of(data),
        caller=state.caller,
        client_request=client,
        upstream=dict(state.upstream) if state.upstream is not None else None,
        injected=dict(state.injected),
    )


def _submit(record: CallRecord) -> None:
    try:
        runtime.writer().submit(record)
        counters["submitted"] += 1
    except Exception:  # capture must never break a request
        counters["capture_errors"] += 1
        log.exception("litellm-rllm: could not queue trace %s", record.call_id)


def _snapshot(obj: Any) -> dict[str, Any]:
    """Top-level fields and per-choice fields by reference: cheap, and immune to the strip
    step below, which replaces fields rather than mutating them."""
    if isinstance(obj, Mapping):
        fields = dict(obj)
    else:
        fields = dict(getattr(obj, "__dict__", {}) or {})
        extra = getattr(obj, "__pydantic_extra__", None)
        if extra:
            fields.update(extra)
    if fields.get("choices") is not None:
        fields["choices"] = [
            dict(c) if isinstance(c, Mapping)
            else {**dict(getattr(c, "__dict__", {}) or {}), **(getattr(c, "__pydantic_extra__", None) or {})}
            for c in fields["choices"]
        ]
    return fields


def finish_success(data: dict[str, Any], response: Any) -> None:
    """Non-streaming success: capture (tracer), then hide injected fields (sampling)."""
    cid = call_id_of(data)
    state = calls.end(cid)
    if state is None:
        return
    if TRACER in calls.roles:
        try:
            record = _record(state, data, "ok")
            raw = state.tap.json_body() if state.tap is not None else None
            if raw is not None:
                record.raw_body = raw  # the upstream's own JSON: parsed off the event loop
                record.usage = getattr(response, "usage", None)  # prices it if LiteLLM did not
            else:
                record.response = _snapshot(response)
            record.hidden = dict(getattr(response, "_hidden_params", None) or {})
            _submit(record)
        except Exception:
            counters["capture_errors"] += 1
            log.exception("litellm-rllm: capture failed for call %s", cid)
    if SAMPLING in calls.roles and state.strip:
        try:
            strip_response(response, state.strip)
        except Exception:
            counters["strip_errors"] += 1
            log.exception("litellm-rllm: could not strip injected fields for call %s", cid)


def finish_failure(data: dict[str, Any], exc: BaseException) -> None:
    """A failed call that reached our pre-call hooks (so LiteLLM had authenticated it) becomes
    an `error` trace. Requests refused before that (no or wrong key) are not traced: anyone who
    can reach the proxy could fill the store with them."""
    state = calls.end(call_id_of(data))
    if state is None or TRACER not in calls.roles:
        return
    try:
        record = _record(state, data, "error")
        record.error = error_of(exc)
        _submit(record)
    except Exception:
        counters["capture_errors"] += 1
        log.exception("litellm-rllm: capture failed for call %s", state.call_id)


def error_of(exc: BaseException) -> dict[str, Any]:
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc)
    return {
        "type": type(exc).__name__,
        "message": str(message)[:4000],
        "status_code": status if isinstance(status, int) else None,
    }


async def wrap_stream(response: AsyncIterator[Any], data: dict[str, Any]) -> AsyncIterator[Any]:
    """One wrapper per stream: accumulate each chunk (tracer), strip it (sampling), pass it on.

    The trace is submitted once, in `finally`: `ok` after the last chunk, `error` if the
    upstream broke, `incomplete` if the client went away (the generator is closed/cancelled).
    """
    cid = call_id_of(data)
    state = calls.get(cid)
    if state is None or state.stream_wrapped:
        async for chunk in response:
            yield chunk
        return
    state.stream_wrapped = True
    tracing = TRACER in calls.roles
    strip = state.strip if SAMPLING in calls.roles else ()
    # LiteLLM's chunks are accumulated only where the upstream bytes aren't tapped.
    tapped = state.tap is not None and state.tap.is_sse
    acc = StreamAccumulator(started=state.started) if tracing and not tapped else None
    # Routes that stream pre-encoded SSE to the client (`/v1/messages`) yield bytes/str chunks.
    sse = SSEParser(acc.add) if acc is not None else None
    status, error = "incomplete", None
    try:
        async for chunk in response:
            if acc is not None:
                try:
                    if isinstance(chunk, (bytes, str)):
                        sse.feed(chunk if isinstance(chunk, bytes) else chunk.encode("utf-8"))
                    else:
                        acc.add(chunk)
                except Exception:
                    counters["capture_errors"] += 1
                    log.exception("litellm-rllm: chunk capture failed for call %s", cid)
                    acc = None
            if strip:
                try:
                    strip_chunk(chunk, strip)
                except Exception:
                    counters["strip_errors"] += 1
            yield chunk
        status = "ok"
    except Exception as exc:
        status, error = "error", error_of(exc)
        raise
    finally:
        calls.end(cid)
        if tracing:
            try:
                record = _record(state, data, status)
                record.stream = True
                source = getattr(response, "_source", response)
                record.hidden = dict(getattr(source, "_hidden_params", None) or {})
                tap = state.tap
                if tap is not None and tap.is_sse:
                    acc = tap.acc
                    if tap.parser.error is not None and record.error is None:
                        record.status = "error"
                        error = error or {"type": "UpstreamStreamError",
                                          "message": str(tap.parser.error.get("message", tap.parser.error))}
                record.error = error
                if acc is not None:
                    record.stream_result = acc
                    record.ttft_ms = acc.ttft_ms()
                _submit(record)
            except Exception:
                counters["capture_errors"] += 1
                log.exception("litellm-rllm: capture failed for call %s", cid)


# ---------------------------------------------------------------------------------------
# The final hooks, shared by the tracer and the sampling callback
# ---------------------------------------------------------------------------------------


async def _success_hook(self: Any, data: dict, user_api_key_dict: Any, response: Any) -> Any:
    finish_success(data, response)
    return response


async def _failure_hook(self: Any, request_data: dict, original_exception: Exception, user_api_key_dict: Any,
                        traceback_str: Optional[str] = None) -> Any:
    finish_failure(request_data, original_exception)
    return None


async def _stream_hook(self: Any, user_api_key_dict: Any, response: Any, request_data: dict) -> Any:
    async for chunk in wrap_stream(response, request_data):
        yield chunk


def with_final_hooks(cls: type) -> type:
    """Give a callback class the shared end-of-call hooks.

    They are set in the class's own `__dict__` on purpose: LiteLLM calls the streaming
    iterator hook only when it is in `vars(type(callback))`, so an inherited one (a mixin)
    would be skipped silently.
    """
    cls.async_post_call_success_hook = _success_hook  # type: ignore[attr-defined]
    cls.async_post_call_failure_hook = _failure_hook  # type: ignore[attr-defined]
    cls.async_post_call_streaming_iterator_hook = _stream_hook  # type: ignore[attr-defined]
    return cls


# ---------------------------------------------------------------------------------------
# Hiding injected fields from the client. Fields are replaced, never mutated in place, so a
# snapshot taken before (the trace) keeps them.
# ---------------------------------------------------------------------------------------


def _drop(obj: Any, key: str) -> None:
    if obj is None:
        return
    if isinstance(obj, dict):
        obj.pop(key, None)
        return
    extra = getattr(obj, "__pydantic_extra__", None)
    if extra and key in extra:
        del extra[key]
    if key in getattr(obj, "__dict__", {}):
        try:
            delattr(obj, key)
        except Exception:
            try:
                setattr(obj, key, None)
            except Exception:
                pass
    psf = obj.get("provider_specific_fields") if isinstance(obj, dict) else getattr(obj, "provider_specific_fields", None)
    if isinstance(psf, dict) and key in psf:
        setattr(obj, "provider_specific_fields", {k: v for k, v in psf.items() if k != key} or None)


def _set_none(obj: Any, key: str) -> None:
    if isinstance(obj, dict):
        if key in obj:
            obj[key] = None
    elif getattr(obj, key, None) is not None:
        setattr(obj, key, None)


def _without_top(logprobs: Any) -> dict[str, Any]:
    """A copy of chat logprobs with empty alternatives (a copy: the trace holds the original)."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else getattr(logprobs, "content", None)
    items = []
    for item in content or ():
        fields = dict(item) if isinstance(item, dict) else dict(getattr(item, "__dict__", {}))
        fields["top_logprobs"] = []
        items.append(fields)
    return {"content": items}


def strip_response(response: Any, fields: tuple[str, ...]) -> None:
    """Remove what the plugin added and the client did not ask for."""
    if _field(response, "output") is not None and _field(response, "choices") is None:
        _strip_responses(response, fields)
        return
    choices = response.get("choices") if isinstance(response, dict) else getattr(response, "choices", None)
    if "return_token_ids" in fields:
        _drop(response, "prompt_token_ids")
    if "prompt_logprobs" in fields:
        _drop(response, "prompt_logprobs")
    for ch in choices or ():
        if "logprobs" in fields:
            _set_none(ch, "logprobs")
        elif "top_logprobs" in fields:
            lp = ch.get("logprobs") if isinstance(ch, dict) else getattr(ch, "logprobs", None)
            if lp is not None:
                if isinstance(ch, dict):
                    ch["logprobs"] = _without_top(lp)
                else:
                    setattr(ch, "logprobs", _without_top(lp))
        if "return_token_ids" in fields:
            _drop(ch, "token_ids")
            _drop(ch, "prompt_token_ids")
            message = ch.get("message") if isinstance(ch, dict) else getattr(ch, "message", None)
            _drop(message, "token_ids")


def _field(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _strip_responses(response: Any, fields: tuple[str, ...]) -> None:
    """The Responses API shape: logprobs inside `output[].content[]`, vLLM's token ids in
    `input_messages` / `output_messages`. (Tapped calls are traced from the upstream's bytes,
    so editing LiteLLM's object here costs the trace nothing.)"""
    if "return_token_ids" in fields:
        _drop(response, "input_messages")
        _drop(response, "output_messages")
    if "logprobs" in fields or "top_logprobs" in fields:
        for item in _field(response, "output") or ():
            for part in _field(item, "content") or ():
                _empty_logprobs(part)


def _empty_logprobs(obj: Any) -> None:
    if obj is not None and _field(obj, "logprobs"):
        if isinstance(obj, dict):
            obj["logprobs"] = []
        else:
            setattr(obj, "logprobs", [])


def strip_chunk(chunk: Any, fields: tuple[str, ...]) -> None:
    kind = _field(chunk, "type")
    kind = getattr(kind, "value", kind)
    if isinstance(kind, str) and kind.startswith("response."):  # a Responses API stream event
        if "logprobs" in fields or "top_logprobs" in fields:
            _empty_logprobs(chunk)  # output_text.delta / .done
            _empty_logprobs(_field(chunk, "part"))  # content_part.done
            for part in _field(_field(chunk, "item"), "content") or ():  # output_item.done
                _empty_logprobs(part)
        inner = _field(chunk, "response")
        if inner is not None:
            _strip_responses(inner, fields)
        return
    strip_response(chunk, fields)
