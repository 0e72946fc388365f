"""A fake Anthropic Messages API (``POST /v1/messages``), streaming and not.

Why: the plugin must capture ``/v1/messages`` traffic and must never inject sampling fields
Anthropic refuses. Anthropic validates the body strictly, so an injected ``logprobs`` gets
``400 invalid_request_error: "logprobs: Extra inputs are not permitted"`` here, as it does there.

Shapes: ``{"id": "msg_...", "type": "message", "role": "assistant", "model", "content": [...],
"stop_reason", "stop_sequence", "usage": {...}}``; streams as SSE with ``event:`` lines:
``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta`` /
``input_json_delta``), ``content_block_stop``, ``message_delta`` (stop reason, output tokens),
``message_stop``. Errors: ``{"type": "error", "error": {"type", "message"}, "request_id"}``.

Replies follow the shared rules (``litellm_rllm/demo/__init__.py``) with no EOS token:
``input_tokens`` = len of the fake chat template over system + messages (+ tool names),
``output_tokens`` = reply words. ``stop_reason``: ``end_turn``, ``max_tokens``,
``stop_sequence`` (a reply word equal to one of ``stop_sequences``) or ``tool_use``.

Tool use: ``tools`` non-empty, ``tool_choice`` not ``{"type": "none"}`` and "weather" in the last
user message -> one ``tool_use`` block calling the first tool with ``{"location": "Paris"}``.

Refusals (400): any unknown top-level field (``<field>: Extra inputs are not permitted``),
missing ``model`` / ``messages`` / ``max_tokens`` (``<field>: Field required``).

Failure triggers in the model name, as for the vLLM fake: ``fail-NNN`` (529 =
``overloaded_error``), ``flaky-N``, ``slow-S``, ``drip-S``, ``break-stream``, ``stream-error``
(an ``event: error`` with ``overloaded_error``), ``tokens-K``.

Run standalone: ``python -m tests.upstreams.anthropic_api --port N [--tokens K] [--reply TEXT]``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, AsyncIterator, Iterable, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from litellm_rllm.demo import server
from litellm_rllm.demo.common import (
    BrokenBody,
    FakeUpstream,
    Generation,
    Handler,
    TOOL_ARGUMENTS,
    Triggers,
    anthropic_prompt_token_ids,
    dumps,
    hosted_generation,
    paced_rounds,
    stream_steps,
    text_generation,
    tool_call_trigger,
    tool_generation,
)

KNOWN_FIELDS = frozenset({
    "model", "messages", "max_tokens", "container", "context_management", "mcp_servers", "metadata",
    "service_tier", "stop_sequences", "stream", "system", "temperature", "thinking", "tool_choice",
    "tools", "top_k", "top_p",
})
REQUIRED_FIELDS = ("max_tokens", "messages", "model")
_ERRORS = {
    400: ("invalid_request_error", "Injected failure (model name asks for HTTP 400)"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


def error_response(status: int, err_type: str, message: str) -> JSONResponse:
    rid = _request_id()
    body = {"type": "error", "error": {"type": err_type, "message": message}, "request_id": rid}
    return JSONResponse(body, status, headers={"request-id": rid})


def check_request(body: dict[str, Any]) -> Optional[Response]:
    """Anthropic's strict body validation; None if accepted."""
    for field in sorted(body):
        if field not in KNOWN_FIELDS:
            return error_response(400, "invalid_request_error", f"{field}: Extra inputs are not permitted")
    for field in REQUIRED_FIELDS:
        if field not in body:
            return error_response(400, "invalid_request_error", f"{field}: Field required")
    return None


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens, "service_tier": "standard",
    }


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {dumps(data)}\n\n"


class FakeAnthropic(FakeUpstream):
    """The fake Anthropic server (an ASGI app); settings as for ``FakeUpstream``."""

    def routes(self) -> Iterable[tuple[str, str, Handler]]:
        return [("POST", "/v1/messages", self.messages)]

    def bad_json(self) -> Response:
        return error_response(400, "invalid_request_error", "There was an error parsing the body of your request.")

    def generation(self, body: dict[str, Any], triggers: Triggers) -> Generation:
        choice = body.get("tool_choice") or {}
        tool = None if choice.get("type") == "none" else tool_call_trigger({**body, "tool_choice": None})
        if tool is not None:
            return hosted_generation(tool_generation(tool), body["max_tokens"])
        stop = tuple(body.get("stop_sequences") or ())
        return hosted_generation(text_generation(self.words(triggers), None, stop), body["max_tokens"])

    async def messages(self, request: Request, body: dict[str, Any]) -> Response:
        refusal = check_request(body)
        if refusal is not None:
            return refusal
        model = str(body["model"])
        triggers, status = await self.pre_answer(model)
        if status:
            err_type, message = _ERRORS.get(status, ("api_error", f"Injected HTTP {status}"))
            return error_response(status, err_type, message)

        gen = self.generation(body, triggers)
        input_tokens = len(anthropic_prompt_token_ids(body))
        stop_reason = "stop_sequence" if gen.stop_reason is not None else _STOP_REASONS[gen.finish_reason]
        tool_use = gen.finish_reason == "tool_calls"
        msg_id, tool_id = f"msg_{uuid.uuid4().hex[:24]}", f"toolu_{uuid.uuid4().hex[:24]}"
        headers = {"request-id": _request_id()}

        if body.get("stream"):
            events = self._stream(model, msg_id, tool_id, gen, input_tokens, stop_reason, triggers)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)

        if tool_use:
            content = [{"type": "tool_use", "id": tool_id, "name": gen.tool_name, "input": json.loads(TOOL_ARGUMENTS)}]
        else:
            content = [{"type": "text", "text": gen.text}]
        out = {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
               "stop_reason": stop_reason, "stop_sequence": gen.stop_reason,
               "usage": _usage(input_tokens, len(gen.tokens))}
        cls = BrokenBody if triggers.break_stream else Response
        return cls(dumps(out).encode(), media_type="application/json", headers=headers)

    def _stream(self, model: str, msg_id: str, tool_id: str, gen: Generation, input_tokens: int,
                stop_reason: str, triggers: Triggers) -> AsyncIterator[str]:
        start = {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
                 "stop_reason": None, "stop_sequence": None, "usage": _usage(input_tokens, 1)}
        rounds: list[list[str]] = [[_event("message_start", {"type": "message_start", "message": start})]]
        if gen.finish_reason == "tool_calls":
            block = {"type": "tool_use", "id": tool_id, "name": gen.tool_name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [{"type": "input_json_delta", "partial_json": s[1]} for s in gen.tool_steps if s and s[0] == "args"]
        else:
            block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": "".join(t.text for t in gen.tokens[a:b])}
                      for a, b in stream_steps(len(gen.tokens), self.tokens_per_step)]
        rounds.append([_event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
                       _event("ping", {"type": "ping"})])
        rounds += [[_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})]
                   for d in deltas]
        rounds.append([
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": stop_reason, "stop_sequence": gen.stop_reason},
                                     "usage": {"output_tokens": len(gen.tokens)}}),
            _event("message_stop", {"type": "message_stop"}),
        ])
        err = _event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        return paced_rounds(rounds, triggers, self.step_delay, err)


def main(argv: Optional[list[str]] = None) -> None:
    server.main(__doc__.splitlines()[0], lambda reply, args: FakeAnthropic(**reply), argv)


if __name__ == "__main__":
    main()
