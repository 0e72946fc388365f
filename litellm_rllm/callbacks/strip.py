"""Hiding what the policy injected from the client: response bodies and stream chunks.

The plugin adds logprobs / top_logprobs / token ids upstream that the client did not ask for;
these functions remove exactly those from what the client receives. Fields are replaced, never
mutated in place, so a snapshot taken before (the trace) keeps them.
"""

from __future__ import annotations

from typing import Any

from ..capture.fields import field as _field


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
    psf = _field(obj, "provider_specific_fields")
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
    choices = _field(response, "choices")
    if "return_token_ids" in fields:
        _drop(response, "prompt_token_ids")
    if "prompt_logprobs" in fields:
        _drop(response, "prompt_logprobs")
    for ch in choices or ():
        if "logprobs" in fields:
            _set_none(ch, "logprobs")
        elif "top_logprobs" in fields:
            lp = _field(ch, "logprobs")
            if lp is not None:
                if isinstance(ch, dict):
                    ch["logprobs"] = _without_top(lp)
                else:
                    setattr(ch, "logprobs", _without_top(lp))
        if "return_token_ids" in fields:
            _drop(ch, "token_ids")
            _drop(ch, "prompt_token_ids")
            message = _field(ch, "message")
            _drop(message, "token_ids")


# A marker among the strip fields of a Responses call to a vLLM-family deployment: what vLLM
# sends a client that did not ask is `logprobs: null` in content parts and `top_logprobs: null`;
# OpenAI sends `[]` and `0`.
VLLM_FORMS = "vllm_forms"


def _strip_responses(response: Any, fields: tuple[str, ...]) -> None:
    """The Responses API shape: logprobs inside `output[].content[]`, vLLM's token ids in
    `input_messages` / `output_messages`, the `top_logprobs` echo. Each goes back to what the
    upstream sends a client that did not ask (see VLLM_FORMS). (Tapped calls
    are traced from the upstream's bytes, so editing LiteLLM's object here costs the trace
    nothing.)"""
    if "return_token_ids" in fields:
        _set_none(response, "input_messages")
        _set_none(response, "output_messages")
    if "top_logprobs" in fields and _field(response, "top_logprobs") is not None:
        _replace(response, "top_logprobs", None if VLLM_FORMS in fields else 0)
    for item in _field(response, "output") or ():
        for part in _field(item, "content") or ():
            _hide_part_logprobs(part, fields)


def _hide_part_logprobs(part: Any, fields: tuple[str, ...]) -> None:
    """An `output_text` part: its logprobs as if not asked (`logprobs` injected), or without the
    alternatives (only `top_logprobs` injected: the client asked for logprobs itself)."""
    if part is None or not _field(part, "logprobs"):
        return
    if "logprobs" in fields:
        _replace(part, "logprobs", None if VLLM_FORMS in fields else [])
    elif "top_logprobs" in fields:
        _replace(part, "logprobs", _without_alternatives(_field(part, "logprobs")))


def _hide_event_logprobs(event: Any, fields: tuple[str, ...]) -> None:
    """`output_text.delta` / `.done` events carry `logprobs: []` when not asked, on every upstream."""
    if event is None or not _field(event, "logprobs"):
        return
    if "logprobs" in fields:
        _replace(event, "logprobs", [])
    elif "top_logprobs" in fields:
        _replace(event, "logprobs", _without_alternatives(_field(event, "logprobs")))


def _without_alternatives(items: Any) -> list[dict[str, Any]]:
    out = []
    for item in items or ():
        fields = dict(item) if isinstance(item, dict) else dict(getattr(item, "__dict__", {}))
        fields["top_logprobs"] = []
        out.append(fields)
    return out


def _replace(obj: Any, key: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    else:
        setattr(obj, key, value)


def strip_chunk(chunk: Any, fields: tuple[str, ...]) -> None:
    kind = _field(chunk, "type")
    kind = getattr(kind, "value", kind)
    if isinstance(kind, str) and kind.startswith("response."):  # a Responses API stream event
        if "logprobs" in fields or "top_logprobs" in fields:
            _hide_event_logprobs(chunk, fields)  # output_text.delta / .done
            _hide_part_logprobs(_field(chunk, "part"), fields)  # content_part.done
            for part in _field(_field(chunk, "item"), "content") or ():  # output_item.done
                _hide_part_logprobs(part, fields)
        inner = _field(chunk, "response")
        if inner is not None:
            _strip_responses(inner, fields)
        return
    strip_response(chunk, fields)
