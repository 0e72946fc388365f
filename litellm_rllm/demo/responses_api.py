"""Pieces of the OpenAI Responses API (``POST /v1/responses``) shared by the vLLM and OpenAI fakes.

Why: LiteLLM sends ``/v1/responses`` for ``hosted_vllm/`` and ``openai/`` deployments to the
upstream's own ``/v1/responses``, so the fakes must answer it with the same deterministic reply,
token ids and logprobs as their chat endpoints (a test can compare the two).

How a request is rendered (vLLM 0.33.0 ``vllm/entrypoints/openai/responses/utils.py``
``construct_input_messages``): ``instructions`` becomes a leading system message; a string
``input`` is one user message; a list ``input`` maps item by item: ``{"role", "content"}`` items
(with or without ``"type": "message"``) as they are, assistant ``output_text`` messages to their
text, ``function_call`` items to assistant ``tool_calls`` (merged into a preceding assistant
message), ``function_call_output`` items to ``tool`` messages, ``reasoning`` items to an empty
assistant turn. The resulting chat messages and the ``"type": "function"`` tools go through the
fake chat template (``chat_prompt_token_ids``), so prompt ids equal the chat endpoint's for the
equivalent ``messages``.
"""

from __future__ import annotations

from typing import Any, Optional

from litellm_rllm.demo.common import (
    Generation,
    alt_logprob,
    alt_token,
    chat_prompt_token_ids,
    message_text,
    sampled_logprob,
)

LOGPROBS_INCLUDE = "message.output_text.logprobs"


class UnsupportedInput(ValueError):
    """An ``input`` item the server cannot render (vLLM: ``Unsupported input item type: X``)."""


def _item_type(item: dict[str, Any]) -> Optional[str]:
    return item.get("type")


def input_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages a Responses request renders to (see the module docstring)."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
        return messages
    for item in given or []:
        if not isinstance(item, dict):
            raise UnsupportedInput(f"Unsupported input item type: {type(item).__name__}")
        prev = messages[-1] if messages and messages[-1].get("role") == "assistant" else None
        kind = _item_type(item)
        if kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")}}
            if prev is not None:
                prev.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append({"role": "tool", "content": item.get("output"), "tool_call_id": item.get("call_id")})
        elif kind == "reasoning":
            if prev is None or "reasoning" in prev:
                messages.append({"role": "assistant", "reasoning": "", "content": None})
        elif item.get("role") == "assistant":
            content = item.get("content")
            text = content if isinstance(content, str) else (
                (content[0] or {}).get("text") if isinstance(content, list) and content else None)
            if prev is not None and prev.get("content") is None:
                prev["content"] = text
            else:
                messages.append({"role": "assistant", "content": text})
        elif "role" in item:
            messages.append({"role": item["role"], "content": item.get("content")})
        else:
            raise UnsupportedInput(f"Unsupported input item type: {kind}")
    return messages


def function_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``"type": "function"`` tools (Responses tools are flat: ``{"type", "name", ...}``)."""
    return [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]


def prompt_token_ids(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[int]:
    return chat_prompt_token_ids(messages, tools or None)


def prompt_text(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """The rendered prompt text matching ``chat_prompt_token_ids`` (vLLM's ``input_messages[0].message``)."""
    out = ""
    if tools:
        out += "<|im_start|>tools\n" + " ".join(t.get("name") or "" for t in tools) + "<|im_end|>\n"
    for m in messages:
        out += f"<|im_start|>{m.get('role', '')}\n{' '.join(message_text(m).split())}<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


def tool_trigger_body(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A chat-shaped body for ``tool_call_trigger`` (function tools, tool_choice, rendered messages)."""
    return {"tools": function_tools(body), "tool_choice": body.get("tool_choice"), "messages": messages}


def wants_logprobs(body: dict[str, Any]) -> bool:
    include = body.get("include")
    return isinstance(include, list) and LOGPROBS_INCLUDE in include


def _item(token: str, logprob: float, stream: bool) -> dict[str, Any]:
    if stream:
        return {"token": token, "logprob": logprob}
    return {"token": token, "bytes": list(token.encode("utf-8")), "logprob": logprob}


def output_logprobs(gen: Generation, choice: int, top: int, start: int = 0, end: Optional[int] = None,
                    stream: bool = False) -> list[dict[str, Any]]:
    """``output_text.logprobs`` for tokens [start, end): the chat endpoint's values in the
    Responses shape. Non-streaming (``stream=False``): ``{token, bytes, logprob, top_logprobs:
    [{token, bytes, logprob}]}``; in ``output_text.delta`` events: ``{token, logprob,
    top_logprobs: [{token, logprob}]}`` (no ``bytes``). ``top_logprobs`` lists ``top`` entries,
    the sampled token first, then ``" alt1" ..``."""
    out = []
    end = len(gen.tokens) if end is None else end
    for j in range(start, end):
        token = gen.tokens[j].token
        lp = sampled_logprob(choice, j)
        tops = [_item(token, lp, stream)] if top else []
        tops += [_item(alt_token(r), alt_logprob(choice, j, r), stream) for r in range(1, top)]
        out.append({**_item(token, lp, stream), "top_logprobs": tops})
    return out


def to_stream_logprobs(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-streaming logprob items reshaped like ``output_text.delta`` ones (``bytes`` dropped)."""
    return [{"token": i["token"], "logprob": i["logprob"],
             "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in i["top_logprobs"]]}
            for i in items]


def sse_event(event_type: str, data: str) -> str:
    """One Responses-API server-sent event: ``event: <type>`` then ``data: <json>`` (no ``[DONE]``
    ends these streams)."""
    return f"event: {event_type}\ndata: {data}\n\n"


__all__ = [
    "LOGPROBS_INCLUDE",
    "UnsupportedInput",
    "function_tools",
    "input_messages",
    "output_logprobs",
    "prompt_text",
    "prompt_token_ids",
    "sse_event",
    "to_stream_logprobs",
    "tool_trigger_body",
    "wants_logprobs",
]
