"""`build_trace`: a `PreparedCall` -> a `Trace`. The heavy step of capture (parsing the
upstream's body, walking logprobs, validating the schema), pure and free of LiteLLM, so it runs
in the writer thread or in the build process alike (`writer/build_process.py`)."""

from __future__ import annotations

from datetime import datetime, timezone
from collections.abc import Mapping
from typing import Any, Optional, Union

from ..capture.record import CallRecord
from ..capture.chat_body import decode_chat_completion
from ..capture.fields import plain
from ..capture.response import choices_from_response, logprobs_requested, prompt_ids_from, request_view
from ..trace import Trace, TraceError
from .prepare import prepare
from .prepared import PreparedCall

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads


def build_trace(record: Union[PreparedCall, CallRecord]) -> Trace:
    """A record straight from the proxy is prepared first (tests, tools)."""
    record = prepare(record)
    session = dict(record.session or {})
    session_id = session.pop("session_id", None)
    uids = session.pop("session_uids", None) or []
    request = request_view(record.upstream or {}) if record.upstream else {}
    if not request and record.client_request:
        request = request_view(record.client_request)
    # asked for by the client or added by the policy: a choice without them is then a gap
    wanted = logprobs_requested(request)

    usage: Optional[dict[str, Any]] = None
    choices = []
    prompt_ids = None
    if record.stream_result is not None:
        acc = record.stream_result
        usage = acc.usage_dict()
        choices = acc.choices(logprobs_requested=wanted)
        prompt_ids = acc.prompt_token_ids
        if prompt_ids is None:
            prompt_ids = next((c.prompt_token_ids for c in choices if c.prompt_token_ids is not None), None)
    elif record.raw_body is not None:
        body = b"".join(record.raw_body)
        typed = decode_chat_completion(body, logprobs_requested=wanted)  # the usual case, ~2x faster
        if typed is not None:
            usage, choices, prompt_ids = typed
        else:
            usage, choices, prompt_ids = _generic(_loads(body), wanted)
    elif record.response is not None:
        usage, choices, prompt_ids = _generic(plain(record.response), wanted)

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
        cached_tokens=cached_tokens_of(usage),
        cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
        stream=record.stream,
        latency_ms=record.latency_ms,
        ttft_ms=record.ttft_ms,
        status=record.status,  # type: ignore[arg-type]
        error=error,
        caller=record.caller,
        policy_version=record.policy_version,
        created_at=datetime.fromtimestamp(record.started_wall, tz=timezone.utc),
    )


def _generic(response: Mapping[str, Any], wanted: bool) -> tuple[Any, list[Any], Optional[list[int]]]:
    """Usage, choices and prompt ids of any response format `capture.response` reads."""
    usage = response.get("usage")
    choices = choices_from_response(response, usage, logprobs_requested=wanted)
    return usage, choices, prompt_ids_from(response, choices)


def cached_tokens_of(usage: Optional[Mapping[str, Any]]) -> Optional[int]:
    """``usage.prompt_tokens_details.cached_tokens`` (OpenAI, vLLM with prefix caching) or
    Anthropic's ``cache_read_input_tokens``; None where the upstream reports neither."""
    if not isinstance(usage, Mapping):
        return None
    details = usage.get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, Mapping) else None
    if value is None:
        value = usage.get("cache_read_input_tokens")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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


