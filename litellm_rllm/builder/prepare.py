"""`prepare`: a `CallRecord` (references, made on the event loop) -> a `PreparedCall`.

Runs in the proxy process (the writer thread), because only there are LiteLLM's price table,
the deployment's key and the records' live objects: it keeps what the trace is built from,
trims the request to the allow-listed fields, prices the call and redacts credentials from an
error. The `PreparedCall` it returns holds plain data and buffers only, so it pickles for the
build process (`writer/build_process.py`), where `build.trace_builder.build_trace` runs.
"""

from __future__ import annotations

import functools
import os
import re
from pickle import PickleBuffer
from collections.abc import Mapping
from typing import Any, Optional, Union

from ..capture.record import CallRecord
from ..capture.fields import plain
from ..capture.response import REQUEST_KEYS
from .prepared import PreparedCall

# What of the deployment kwargs / the client's body a trace is built from (`request_view` reads
# REQUEST_KEYS and `extra_body`; the rest names the deployment).
_UPSTREAM_KEYS = REQUEST_KEYS | {"extra_body", "model", "custom_llm_provider", "api_base"}
_CLIENT_KEYS = REQUEST_KEYS | {"extra_body"}
_HIDDEN_KEYS = frozenset({"response_cost", "custom_llm_provider", "api_base", "litellm_model_name"})
# What a queued `CallRecord` keeps of LiteLLM's dicts (`callbacks/finish.py` trims them when it
# makes the record, on the loop): what `prepare` reads, plus the deployment's key for
# redaction. Why there: the rest (the logging object, the proxy's request, metadata) is
# LiteLLM's per-request object graph; a record waiting up to the writer's commit interval for
# its batch would keep it alive past the young collections, into the old generation, and the
# full collections that follow walk it (measured in benchmarks/run.py: GC per request +2 ms).
RECORD_UPSTREAM_KEYS = _UPSTREAM_KEYS | {"api_key"}
RECORD_CLIENT_KEYS = _CLIENT_KEYS
RECORD_HIDDEN_KEYS = _HIDDEN_KEYS


def keep(d: Optional[Mapping[str, Any]], keys: frozenset[str]) -> Optional[dict[str, Any]]:
    """``d``'s items under ``keys`` (a new dict), or None."""
    return None if d is None else {k: v for k, v in d.items() if k in keys}


def prepare(record: Union[CallRecord, PreparedCall]) -> PreparedCall:
    """The record reduced to what `build_trace` reads, priced and redacted (module docstring).
    Cheap: dict comprehensions over top-level keys; large parts are shared, not copied."""
    if isinstance(record, PreparedCall):
        return record
    upstream = record.upstream or {}
    hidden = keep(record.hidden, _HIDDEN_KEYS) or {}
    if not isinstance(hidden.get("response_cost"), (int, float)) and record.status == "ok":
        usage = _known_usage(record)
        if usage:
            hidden["response_cost"] = _cost(upstream.get("model") or hidden.get("litellm_model_name"), usage)
    error = record.error
    if error is not None:
        error = {**error, "message": redact(str(error.get("message") or ""), secrets=(upstream.get("api_key"),))}
    return PreparedCall(
        call_id=record.call_id,
        started_wall=record.started_wall,
        status=record.status,
        route=record.route,
        model=record.model,
        stream=record.stream,
        latency_ms=record.latency_ms,
        ttft_ms=record.ttft_ms,
        session=record.session,
        caller=record.caller,
        injected=record.injected,
        upstream=keep(record.upstream, _UPSTREAM_KEYS),
        client_request=keep(record.client_request, _CLIENT_KEYS),
        hidden=hidden,
        error=error,
        response=record.response,
        # the body's reads as buffers: pickled for the build process, they travel out of band
        raw_body=[PickleBuffer(part) for part in record.raw_body] if record.raw_body is not None else None,
        stream_result=record.stream_result,
        policy_version=record.policy_version,
    )


# Bytes of upstream JSON per logprob entry (a position or one of its alternatives): vLLM sends
# 62-94 bytes per entry, so a stream is weighed as the body it would have been.
_BYTES_PER_ENTRY = 64


def weight(record: Union[CallRecord, PreparedCall]) -> int:
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


def _cost(model: Any, usage: Mapping[str, Any]) -> Optional[float]:
    """USD for a call LiteLLM didn't price yet (streams are priced after the stream, in its
    logging): its own price table, from the usage the upstream reported. Proxy process only."""
    if not isinstance(model, str):
        return None
    import litellm

    entry = litellm.model_cost.get(model)
    prices = None
    if isinstance(entry, dict):  # numbers only: the memo's key must hash
        prices = tuple(v if isinstance(v, (int, float)) else None
                       for v in (entry.get("input_cost_per_token"), entry.get("output_cost_per_token")))
    kind = _price_kind(model, len(litellm.model_cost), prices)
    if kind != "priced":
        return 0.0 if kind == "free" else None
    try:
        prompt = int(usage.get("prompt_tokens", usage.get("input_tokens")) or 0)
        completion = int(usage.get("completion_tokens", usage.get("output_tokens")) or 0)
        p_cost, c_cost = litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion)
        return float(p_cost + c_cost)
    except Exception:
        return None


@functools.lru_cache(maxsize=1024)
def _price_kind(model: str, table_size: int, prices: Any) -> str:
    """What LiteLLM's price table says of `model`: "unknown" (it raises), "free" (it prices
    1,000 + 1,000 tokens at zero: a self-hosted deployment the router registered without
    prices) or "priced". Asked once per model, table size (a model registered later grows the
    table) and the model's own entry's per-token prices (one registered again with prices
    changes its entry in place): `litellm.cost_per_token` takes ~170 us, and streamed traces
    are priced here."""
    import litellm

    try:
        p_cost, c_cost = litellm.cost_per_token(model=model, prompt_tokens=1000, completion_tokens=1000)
    except Exception:
        return "unknown"
    return "free" if p_cost == 0 and c_cost == 0 else "priced"


# Provider and LiteLLM key shapes: an upstream error may echo the key it was sent.
_KEY_PATTERN = re.compile(r"\b(sk-(?:ant-)?|rk-|AIza|xai-|gsk_)[A-Za-z0-9_\-]{6,}")


def redact(text: str, secrets: tuple[Any, ...] = ()) -> str:
    """Remove credentials from text that goes into the store (error messages)."""
    for secret in (*secrets, os.environ.get("LITELLM_MASTER_KEY")):
        if isinstance(secret, str) and len(secret) >= 6 and secret in text:
            text = text.replace(secret, "[redacted]")
    return _KEY_PATTERN.sub(lambda m: m.group(1) + "[redacted]", text)
