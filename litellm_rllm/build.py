"""`CallRecord` -> `Trace`, off the event loop: the heavy part of capture (parsing the body,
walking logprobs, validating the schema).

Two steps, so the heavy one can run in the writer's build process (`store/build_process.py`):

* `prepare(record)` runs where the record was made (the writer thread of the proxy): it keeps
  only what the trace is built from, trims the request to the allow-listed fields, prices the
  call (LiteLLM's price table and the deployment's own prices live in the proxy process) and
  redacts the deployment's key from an error. What it returns holds no credentials and no
  LiteLLM machinery, so it can be pickled.
* `build_trace(record)` runs anywhere, LiteLLM not needed: parse, walk, validate.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import replace
from pickle import PickleBuffer
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

from .capture import REQUEST_KEYS, choices_from_response, plain, prompt_ids_from, request_view
from .record import CallRecord
from .trace import Trace, TraceError

log = logging.getLogger("litellm_rllm")

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

# What of the deployment kwargs / the client's body a trace is built from (`request_view` reads
# REQUEST_KEYS and `extra_body`; the rest names the deployment).
_UPSTREAM_KEYS = REQUEST_KEYS | {"extra_body", "model", "custom_llm_provider", "api_base"}
_CLIENT_KEYS = REQUEST_KEYS | {"extra_body"}
_HIDDEN_KEYS = ("response_cost", "custom_llm_provider", "api_base", "litellm_model_name")


def prepare(record: CallRecord) -> CallRecord:
    """The record reduced to what `build_trace` reads, priced and redacted (module docstring).
    Cheap: dict comprehensions over top-level keys; large parts are shared, not copied."""
    if record.prepared:
        return record
    upstream = record.upstream or {}
    hidden = {k: record.hidden[k] for k in _HIDDEN_KEYS if k in (record.hidden or {})}
    if not isinstance(hidden.get("response_cost"), (int, float)) and record.status == "ok":
        usage = _known_usage(record)
        if usage:
            hidden["response_cost"] = _cost(upstream.get("model") or hidden.get("litellm_model_name"), usage)
    error = record.error
    if error is not None:
        error = {**error, "message": redact(str(error.get("message") or ""), secrets=(upstream.get("api_key"),))}
    return replace(
        record,
        prepared=True,
        upstream={k: v for k, v in upstream.items() if k in _UPSTREAM_KEYS} if record.upstream is not None else None,
        client_request=({k: v for k, v in record.client_request.items() if k in _CLIENT_KEYS}
                        if record.client_request is not None else None),
        hidden=hidden,
        error=error,
        usage=None,
        # the body's reads as buffers: pickled for the build process, they travel out of band
        raw_body=[PickleBuffer(part) for part in record.raw_body] if record.raw_body is not None else None,
    )


# Bytes of upstream JSON per logprob entry (a position or one of its alternatives): vLLM sends
# 62-94 bytes per entry, so a stream is weighed as the body it would have been.
_BYTES_PER_ENTRY = 64


def weight(record: CallRecord) -> int:
    """About how many bytes of upstream data `build_trace` walks for this record, which is what
    its cost grows with (~1.5 ms per 100 KB). Only the tee's data counts: a response LiteLLM
    parsed is dumped to plain data in this process whichever side builds it."""
    if record.raw_body is not None:
        return sum(memoryview(part).nbytes for part in record.raw_body)
    if record.stream_result is not None:
        return _BYTES_PER_ENTRY * record.stream_result.logprob_entries()
    return 0


def _known_usage(record: CallRecord) -> Optional[Mapping[str, Any]]:
    """The call's usage where the proxy process has it without parsing the body: the stream's
    accumulation, LiteLLM's parsed response, or (tapped body) LiteLLM's usage of it."""
    if record.stream_result is not None:
        return record.stream_result.usage_dict()
    if record.response is not None and record.response.get("usage") is not None:
        return plain(record.response.get("usage"))
    return plain(record.usage) if record.usage is not None else None


def build_trace(record: CallRecord) -> Trace:
    record = prepare(record)
    session = dict(record.session or {})
    session_id = session.pop("session_id", None)
    uids = session.pop("session_uids", None) or []
    request = request_view(record.upstream or {}) if record.upstream else {}
    if not request and record.client_request:
        request = request_view(record.client_request)

    usage: Optional[dict[str, Any]] = None
    choices = []
    prompt_ids = None
    if record.stream_result is not None:
        acc = record.stream_result
        usage = acc.usage_dict()
        choices = acc.choices()
        prompt_ids = acc.prompt_token_ids
        if prompt_ids is None:
            prompt_ids = next((c.prompt_token_ids for c in choices if c.prompt_token_ids is not None), None)
    elif record.raw_body is not None or record.response is not None:
        response = _loads(b"".join(record.raw_body)) if record.raw_body is not None else plain(record.response)
        usage = response.get("usage")
        choices = choices_from_response(response, usage)
        prompt_ids = prompt_ids_from(response, choices)

    hidden = record.hidden or {}
    upstream = record.upstream or {}
    cost = hidden.get("response_cost")
    error = TraceError(**record.error) if record.error else None
    return Trace(
        trace_id=record.call_id,
        session_id=str(session_id) if session_id is not None else None,
        session_uids=[str(u) for u in uids],
        metadata=session,
        route=record.route,
        model=record.model,
        provider=hidden.get("custom_llm_provider") or upstream.get("custom_llm_provider") or _provider(upstream),
        deployment_model=_deployment_model(upstream, hidden),
        api_base=hidden.get("api_base") or upstream.get("api_base"),
        request=request,
        injected=dict(record.injected or {}),
        prompt_token_ids=prompt_ids,
        choices=choices,
        usage=usage,
        cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
        stream=record.stream,
        latency_ms=record.latency_ms,
        ttft_ms=record.ttft_ms,
        status=record.status,  # type: ignore[arg-type]
        error=error,
        caller=record.caller,
        created_at=datetime.fromtimestamp(record.started_wall, tz=timezone.utc),
    )


def _deployment_model(upstream: Mapping[str, Any], hidden: Mapping[str, Any]) -> Optional[str]:
    model = upstream.get("model")
    provider = upstream.get("custom_llm_provider") or hidden.get("custom_llm_provider")
    if isinstance(model, str) and provider and not model.startswith(f"{provider}/"):
        return f"{provider}/{model}"
    return model if isinstance(model, str) else None


def _provider(upstream: Mapping[str, Any]) -> Optional[str]:
    model = upstream.get("model")
    if isinstance(model, str) and "/" in model:
        return model.split("/", 1)[0]
    return None


def _cost(model: Any, usage: Mapping[str, Any]) -> Optional[float]:
    """USD for a call LiteLLM didn't price yet (streams are priced after the stream, in its
    logging): its own price table, from the usage the upstream reported. Proxy process only."""
    if not isinstance(model, str):
        return None
    try:
        import litellm

        prompt = int(usage.get("prompt_tokens", usage.get("input_tokens")) or 0)
        completion = int(usage.get("completion_tokens", usage.get("output_tokens")) or 0)
        p_cost, c_cost = litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion)
        return float(p_cost + c_cost)
    except Exception:
        return None


# Provider and LiteLLM key shapes: an upstream error may echo the key it was sent.
_KEY_PATTERN = re.compile(r"\b(sk-(?:ant-)?|rk-|AIza|xai-|gsk_)[A-Za-z0-9_\-]{6,}")


def redact(text: str, secrets: tuple[Any, ...] = ()) -> str:
    """Remove credentials from text that goes into the store (error messages)."""
    for secret in (*secrets, os.environ.get("LITELLM_MASTER_KEY")):
        if isinstance(secret, str) and len(secret) >= 6 and secret in text:
            text = text.replace(secret, "[redacted]")
    return _KEY_PATTERN.sub(lambda m: m.group(1) + "[redacted]", text)
