"""The end of a call, shared by the tracer and the sampling entries.

Both entries need the final response: the tracer to capture it, the sampling entry to hide
what it injected. So one entry per proxy, the first to enroll, carries the final hooks and
does every enrolled part in the right order (capture, then strip) and ends the call; the
other has none (`enroll` says why). Streams likewise get one wrapper.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Mapping, Optional

from ..builder.prepare import RECORD_CLIENT_KEYS, RECORD_HIDDEN_KEYS, RECORD_UPSTREAM_KEYS, keep
from ..capture.fields import fields_of
from ..capture.record import CallRecord
from ..capture.sse import SSEParser
from ..capture.stream import StreamAccumulator
from ..trainer.versions import call_span, slug_version
from .calls import CallState
from .plugin import plugin
from .request_data import call_id_of, caller_of, error_of, route_of, session_of
from .stream_ids import ClientTokenIds, asked_for_token_ids
from .strip import strip_chunk, strip_response

log = logging.getLogger("litellm_rllm")

TRACER = "tracer"
SAMPLING = "sampling"

# The stream wrapper yields to the event loop once every this many seconds of a stream. Why:
# when a client goes away, Starlette cancels the task that serves its stream, and anyio
# delivers that cancel only once the task lets other tasks run. A stream the proxy is behind on
# (an overloaded loop, the upstream's bytes already buffered) may never wait on a pending
# future, so the cancel was put off until the upstream had sent everything: the server
# generated for nobody and the trace held the whole reply (measured: 100 streams of 200 tokens,
# 20 leaving; bare LiteLLM has the same problem there, tests/system/test_disconnects.py).
# `sleep(0)` lets the disconnect listener run, and the cancel lands at the task's next step.
# By time, not chunk count: a `sleep(0)` every 8th chunk cost a pass through the loop and the
# whole generator chain ~32 times per 256-token stream. A stream's wall time grows with the
# loop's load (8 streams at a time on a full core: ~1 s each), so do its yields, each resuming
# the generator chain from a cold cache: at 50 ms the sampling entry alone served 0.966x bare
# LiteLLM's saturated streams, at 200 ms 0.997x (benchmarks/saturation.py --together, docs/
# benchmarks.md). 200 ms delays a cancel on an overloaded loop by as much.
CANCEL_POINT_S = 0.2


def begin(data: dict[str, Any], user_api_key_dict: Any) -> Optional[CallState]:
    """Register the call (from any callback's pre-call hook); idempotent."""
    cid = call_id_of(data)
    if cid is None:
        return None
    state = plugin().calls.get_or_create(cid)
    if state.client_request is None:
        state.client_request = dict(data)
        state.caller = caller_of(user_api_key_dict)
    return state


def _record(state: CallState, data: Mapping[str, Any], status: str) -> CallRecord:
    """The call as the writer needs it; LiteLLM's dicts trimmed to what a trace is built from,
    so a record waiting for its group commit doesn't keep the request's object graph alive
    (`builder.prepare.RECORD_UPSTREAM_KEYS` says why)."""
    end = time.perf_counter()
    client = state.client_request or dict(data)
    session = call_session(data)
    return CallRecord(
        call_id=state.call_id,
        started_wall=state.started_wall,
        status=status,
        route=route_of(data),
        model=client.get("model") if isinstance(client.get("model"), str) else None,
        stream=bool(client.get("stream")),
        latency_ms=(end - state.started) * 1000.0,
        session=session,
        caller=state.caller,
        client_request=keep(client, RECORD_CLIENT_KEYS),
        upstream=keep(state.upstream, RECORD_UPSTREAM_KEYS),
        injected=dict(state.injected),
        policy_version=_policy_version(state, client.get("model"), session),
    )


def _policy_version(state: CallState, model: Any, session: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """`{start, end}`: the group's version when the call went upstream and now (trainer/versions.py)."""
    span = call_span(state.policy_start, plugin().live.version_for(model if isinstance(model, str) else None),
                     slug_version(session))
    return None if span is None else {"start": span.start, "end": span.end}


def call_session(data: Mapping[str, Any]) -> dict[str, Any]:
    """The call's slug metadata (as the metadata entry stored it, else from the header)."""
    p = plugin()
    return session_of(data, p.settings.slug_header, p.check_slug)


def _submit(record: CallRecord) -> None:
    p = plugin()
    p.route_counts[(record.route, record.status)] += 1
    try:
        p.writer.submit(record)
        p.counters["submitted"] += 1
    except Exception:  # capture must never break a request
        p.counters["capture_errors"] += 1
        log.exception("litellm-rllm: could not queue trace %s", record.call_id)


def snapshot(obj: Any) -> dict[str, Any]:
    """Top-level fields and per-choice fields by reference: cheap, and immune to the strip
    step, which replaces fields rather than mutating them."""
    fields = fields_of(obj)
    if fields.get("choices") is not None:
        fields["choices"] = [fields_of(c) for c in fields["choices"]]
    return fields


def finish_success(data: dict[str, Any], response: Any) -> None:
    """Non-streaming success: capture (tracer), then hide injected fields (sampling)."""
    p = plugin()
    cid = call_id_of(data)
    state = p.calls.end(cid)
    if state is None:
        return
    if TRACER in p.calls.roles:
        try:
            record = _record(state, data, "ok")
            raw = state.tap.json_body() if state.tap is not None else None
            if raw is not None:
                record.raw_body = raw  # the upstream's own JSON: parsed off the event loop
                record.usage = getattr(response, "usage", None)  # prices it if LiteLLM did not
            else:
                record.response = snapshot(response)
            record.hidden = keep(getattr(response, "_hidden_params", None) or {}, RECORD_HIDDEN_KEYS)
            _submit(record)
        except Exception:
            p.counters["capture_errors"] += 1
            log.exception("litellm-rllm: capture failed for call %s", cid)
    if SAMPLING in p.calls.roles and state.strip:
        try:
            strip_response(response, state.strip)
        except Exception:
            p.counters["strip_errors"] += 1
            log.exception("litellm-rllm: could not strip injected fields for call %s", cid)


def finish_failure(data: dict[str, Any], exc: BaseException) -> None:
    """A failed call that reached our pre-call hooks (so LiteLLM had authenticated it) becomes
    an `error` trace. Requests refused before that (no or wrong key) are not traced: anyone who
    can reach the proxy could fill the store with them."""
    p = plugin()
    state = p.calls.end(call_id_of(data))
    if state is None or TRACER not in p.calls.roles:
        return
    try:
        record = _record(state, data, "error")
        record.error = error_of(exc)
        _submit(record)
    except Exception:
        p.counters["capture_errors"] += 1
        log.exception("litellm-rllm: capture failed for call %s", state.call_id)


async def wrap_stream(response: AsyncIterator[Any], data: dict[str, Any]) -> AsyncIterator[Any]:
    """One wrapper per stream: accumulate each chunk (tracer), strip it (sampling), pass it on.

    The trace is submitted once, in `finally`: `ok` after the last chunk, `error` if the
    upstream broke, `incomplete` if the client went away (the generator is closed/cancelled).
    Then a tapped upstream is stopped: the trace keeps what was read until then, and the
    upstream connection is closed so the server stops generating (`UpstreamTap.stop`).
    """
    p = plugin()
    calls, counters = p.calls, p.counters
    cid = call_id_of(data)
    state = calls.get(cid)
    if state is None or state.stream_wrapped:  # not ours, or an entry listed twice in the config
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
    # A client that asked for token ids gets every one the upstream sent (stream_ids.py).
    ids = (ClientTokenIds(state.tap.acc)
           if tapped and "return_token_ids" not in strip and asked_for_token_ids(state.client_request) else None)
    status, error = "incomplete", None
    clock = time.monotonic
    cancel_point = clock() + CANCEL_POINT_S
    try:
        async for chunk in response:
            if clock() >= cancel_point:
                await asyncio.sleep(0)  # where a client's disconnect can cancel us (see above)
                cancel_point = clock() + CANCEL_POINT_S
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
            if ids is not None:
                try:
                    ids.annotate(chunk)
                except Exception:
                    counters["capture_errors"] += 1
                    log.exception("litellm-rllm: could not add token ids to a chunk of call %s", cid)
                    ids = None
            yield chunk
        status = "ok"
    except Exception as exc:
        status, error = "error", error_of(exc)
        raise
    finally:
        calls.end(cid)
        if status != "ok" and state.tap is not None:
            state.tap.stop()  # keep what was streamed until now; close the upstream
        if tracing:
            try:
                record = _record(state, data, status)
                record.stream = True
                source = getattr(response, "_source", response)
                record.hidden = keep(getattr(source, "_hidden_params", None) or {}, RECORD_HIDDEN_KEYS)
                # LiteLLM prices a stream in its logging, after the stream: the wrapper's
                # `response_cost` is a placeholder here (0.0 on 1.108.5); `prepare` prices the
                # call from the usage the upstream reported.
                record.hidden.pop("response_cost", None)
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


def _stream_hook(self: Any, user_api_key_dict: Any, response: Any, request_data: dict) -> AsyncIterator[Any]:
    """`wrap_stream`'s generator itself (LiteLLM iterates and closes what the hook returns):
    a generator around it would be one more frame per chunk."""
    return wrap_stream(response, request_data)


_FINAL_HOOKS: dict[str, Any] = {
    "async_post_call_success_hook": _success_hook,
    "async_post_call_failure_hook": _failure_hook,
    "async_post_call_streaming_iterator_hook": _stream_hook,
}


def enroll(entry: Any, role: str) -> None:
    """Enroll the entry's `role`; give the final hooks to its class if it is the carrier (the
    first entry to enroll with this `Plugin`), take them from its class if not.

    Why one carrier: LiteLLM wraps a stream once per callback whose class has the streaming
    iterator hook in its own `__dict__` (`vars(type(callback))`; an inherited one is skipped),
    each layer costing per chunk a boundary iterator, an enrichment generator and ours, and it
    awaits every callback's success or failure hook. With both entries carrying the hooks every
    chunk went through two stacks, the second a pass-through. Hence the hooks live in (or are
    removed from) the class `__dict__`, decided at each entry's `__init__`: a new `Plugin`
    (another proxy in the process, another config) decides again for its own entries.
    """
    carrier = plugin().calls.enroll(role)
    cls = type(entry)
    for name, hook in _FINAL_HOOKS.items():
        if carrier:
            setattr(cls, name, hook)
        elif name in vars(cls):
            delattr(cls, name)
