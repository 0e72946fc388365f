"""`CallRecord` -> `Trace`, in the writer thread (the heavy part of capture: dumping LiteLLM
objects to dicts, walking logprobs, validating the schema)."""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

from .capture import choices_from_response, plain, prompt_ids_from, request_view
from .record import CallRecord
from .trace import Trace, TraceError

log = logging.getLogger("litellm_rllm")

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

# Keys of the slug metadata that are trace columns, not free-form metadata.
_SESSION_KEYS = ("session_id", "session_uids")


def build_trace(record: CallRecord) -> Trace:
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
    if not isinstance(cost, (int, float)) and usage and record.status == "ok":
        cost = _cost(upstream.get("model") or hidden.get("litellm_model_name"), usage)
    error = TraceError(**record.error) if record.error else None
    if error is not None:
        error.message = redact(error.message, secrets=(upstream.get("api_key"),))
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
    logging): its own price table, from the usage the upstream reported."""
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
