"""A fake OpenAI Chat Completions + Responses API: OpenAI's shapes, no token ids, OpenAI's refusals.

Why: the plugin must never turn a request that would succeed into an upstream error. This fake
refuses what OpenAI refuses, so a test sees the 400 if the plugin injects ``return_token_ids``
into an OpenAI deployment, or ``logprobs`` into a reasoning model.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/responses``, ``GET /v1/models``,
``GET|DELETE /_fake/requests``.

Responses API (``/v1/responses``, OpenAI's documented shape): the chat reply for the rendered
input (``litellm_rllm/demo/responses_api.py``), no EOS; ``output`` holds one ``message``
(``content: [{"type": "output_text", "annotations": [], "logprobs": [...], "text"}]``) or one
``function_call`` item (``fc_...`` id, ``call_...`` call_id); logprobs with ``include:
["message.output_text.logprobs"]`` + ``top_logprobs`` (``[]`` otherwise); usage
``{input_tokens, input_tokens_details: {cached_tokens, cache_write_tokens}, output_tokens,
output_tokens_details: {reasoning_tokens}, total_tokens}``; ``status: "incomplete"`` when cut by
``max_output_tokens``. Streams: ``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``, one ``response.output_text.delta``
per token (``logprobs`` + ``obfuscation`` unless ``stream_options.include_obfuscation`` is false),
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``,
``response.completed`` / ``response.incomplete``; tool calls stream ``function_call_arguments``
deltas instead. ``stream-error`` sends ``response.failed``. Refusals: any unknown field
(``Unknown parameter: 'return_token_ids'.``, ``code: "unknown_parameter"``), ``max_output_tokens``
below 16, ``top_logprobs`` above 20 or on a reasoning model.

Shapes: ``system_fingerprint``, ``service_tier: "default"``, ``message.refusal`` /
``annotations``, ``logprobs: {"content": [...], "refusal": null}`` with ``bytes``; usage with
``prompt_tokens_details`` / ``completion_tokens_details``. Streams: role chunk
``{"role": "assistant", "content": "", "refusal": null}``, one token per chunk, a finish chunk
with ``"delta": {}``; with ``stream_options.include_usage`` every chunk has ``"usage": null``
and a last chunk has ``choices: []`` plus usage; every chunk has an ``obfuscation`` string
unless ``stream_options.include_obfuscation`` is false.

Tokens and logprobs follow the shared rules (``litellm_rllm/demo/__init__.py``) except that no
EOS token is counted or listed: OpenAI's logprobs stop at the last text token.

Refusals (HTTP 400, OpenAI's bodies):
  - any top-level field OpenAI does not know, e.g. ``return_token_ids``:
    ``Unrecognized request argument supplied: return_token_ids`` (``param``/``code`` null);
  - ``logprobs`` / ``top_logprobs`` when the model name contains ``o1``, ``o3``, ``gpt-5`` or
    ``reasoning``: ``Unsupported parameter: 'logprobs' is not supported with this model.``
    (``param: "logprobs"``, ``code: "unsupported_parameter"``);
  - ``top_logprobs`` above 20.

Tool calls: as for the vLLM fake (``tools`` + "weather" in the last user message), with
``call_...`` ids and the arguments streamed in fragments after a first delta holding the name.

Failure triggers in the model name, as for the vLLM fake: ``fail-NNN``, ``flaky-N``,
``slow-S``, ``drip-S``, ``break-stream``, ``stream-error``, ``tokens-K``; error bodies are
OpenAI's (``{"error": {"message", "type", "param", "code"}}``).

Run standalone: ``python -m tests.upstreams.openai_api --port N [--tokens K] [--reply TEXT]``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator, Iterable, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from litellm_rllm.demo import responses_api as rapi
from litellm_rllm.demo import server
from litellm_rllm.demo.common import (
    BREAK_AFTER_ROUNDS,
    MAX_LOGPROBS,
    BrokenBody,
    FakeUpstream,
    Generation,
    Handler,
    Triggers,
    chat_prompt_token_ids,
    dumps,
    hosted_generation,
    logprob_content,
    paced_rounds,
    sse,
    stream_steps,
    text_generation,
    tool_call_trigger,
    tool_generation,
)

KNOWN_PARAMS = frozenset({
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias",
    "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities", "n",
    "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice",
    "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
REASONING_MARKERS = ("o1", "o3", "gpt-5", "reasoning")
SYSTEM_FINGERPRINT = "fp_fake0a1b2c"
OBFUSCATION = "Xq3vT"
_ERRORS = {  # status -> (type, code, message) of OpenAI's error bodies
    400: ("invalid_request_error", None, "Injected failure (model name asks for HTTP 400)"),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}


def error_response(status: int, message: str, err_type: str = "invalid_request_error",
                   param: Optional[str] = None, code: Optional[str] = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": err_type, "param": param, "code": code}}, status)


def check_request(body: dict[str, Any]) -> Optional[Response]:
    """OpenAI's refusals that a proxy's parameter injection could trigger; None if accepted."""
    unknown = sorted(k for k in body if k not in KNOWN_PARAMS)
    if unknown:
        noun = "argument" if len(unknown) == 1 else "arguments"
        return error_response(400, f"Unrecognized request {noun} supplied: {', '.join(unknown)}")
    model = str(body.get("model") or "")
    if any(m in model for m in REASONING_MARKERS):
        for param in ("logprobs", "top_logprobs"):
            if body.get(param) is not None:
                return error_response(400, f"Unsupported parameter: '{param}' is not supported with this model.",
                                      param=param, code="unsupported_parameter")
    top = body.get("top_logprobs")
    if top is not None and top > MAX_LOGPROBS:
        return error_response(400, f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= "
                              f"{MAX_LOGPROBS}, but got {top} instead.", param="top_logprobs",
                              code="integer_above_max_value")
    return None

KNOWN_RESPONSES_PARAMS = frozenset({
    "input", "model", "access_programs", "background", "background_options", "context_management",
    "conversation", "image", "include", "instructions", "max_output_tokens", "max_tool_calls", "metadata",
    "moderation", "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key",
    "prompt_cache_options", "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store",
    "stream", "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p",
    "truncation", "user",
})  # openai-python's ResponseCreateParams
MIN_OUTPUT_TOKENS = 16  # the Responses API refuses a smaller max_output_tokens


def check_responses_request(body: dict[str, Any]) -> Optional[Response]:
    """The Responses API's refusals a proxy's parameter injection could trigger; None if accepted."""
    for key in body:
        if key not in KNOWN_RESPONSES_PARAMS:
            return error_response(400, f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    model = str(body.get("model") or "")
    if any(m in model for m in REASONING_MARKERS) and body.get("top_logprobs") is not None:
        return error_response(400, "Unsupported parameter: 'top_logprobs' is not supported with this model.",
                              param="top_logprobs", code="unsupported_parameter")
    top = body.get("top_logprobs")
    if top is not None and top > MAX_LOGPROBS:
        return error_response(400, f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= "
                              f"{MAX_LOGPROBS}, but got {top} instead.", param="top_logprobs",
                              code="integer_above_max_value")
    limit = body.get("max_output_tokens")
    if limit is not None and limit < MIN_OUTPUT_TOKENS:
        return error_response(400, f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                              f"{MIN_OUTPUT_TOKENS}, but got {limit} instead.", param="max_output_tokens",
                              code="integer_below_min_value")
    return None


def _given(body: dict[str, Any], key: str, default: Any) -> Any:
    """The request's value for ``key``, or the API's default when absent or null."""
    value = body.get(key)
    return default if value is None else value

def _long_id(prefix: str) -> str:
    return prefix + (uuid.uuid4().hex + uuid.uuid4().hex)[:48]


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


class FakeOpenAI(FakeUpstream):
    """The fake OpenAI server (an ASGI app); settings as for ``FakeUpstream``."""

    def routes(self) -> Iterable[tuple[str, str, Handler]]:
        return [("POST", "/v1/chat/completions", self.chat_completions), ("POST", "/v1/responses", self.responses),
                ("GET", "/v1/models", self.models)]

    async def models(self, request: Request, body: dict[str, Any]) -> Response:
        now = int(time.time())
        data = [{"id": m, "object": "model", "created": now, "owned_by": "system"} for m in ("gpt-4o-mini", "o1")]
        return JSONResponse({"object": "list", "data": data})

    def generation(self, body: dict[str, Any], triggers: Triggers, choice: int,
                   max_tokens: Optional[int], tool: Optional[str]) -> Generation:
        """The shared reply rules, as OpenAI reports them (no EOS token)."""
        if tool is not None:
            return hosted_generation(tool_generation(tool), max_tokens)
        stop = body.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        return hosted_generation(text_generation(self.words(triggers, choice), None, stop), max_tokens)

    async def chat_completions(self, request: Request, body: dict[str, Any]) -> Response:
        refusal = check_request(body)
        if refusal is not None:
            return refusal
        model = str(body.get("model") or "gpt-4o-mini")
        triggers, status = await self.pre_answer(model)
        if status:
            err_type, code, message = _ERRORS.get(status, ("server_error", None, f"Injected HTTP {status}"))
            return error_response(status, message, err_type, None, code)

        n = int(body.get("n") or 1)
        logprobs = bool(body.get("logprobs"))
        top = int(body.get("top_logprobs") or 0) if logprobs else 0
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        tool = tool_call_trigger(body)
        gens = [self.generation(body, triggers, i, max_tokens, tool) for i in range(n)]
        prompt_tokens = len(chat_prompt_token_ids(body.get("messages") or [], body.get("tools")))
        usage = _usage(prompt_tokens, sum(len(g.tokens) for g in gens))
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:29]}", int(time.time())
        call_ids = [f"call_{uuid.uuid4().hex[:24]}" for _ in gens]

        if body.get("stream"):
            opts = body.get("stream_options") or {}
            envelope = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT}
            events = self._stream(envelope, gens, call_ids, logprobs, top, usage, triggers,
                                  bool(opts.get("include_usage")), opts.get("include_obfuscation") is not False)
            return StreamingResponse(events, media_type="text/event-stream")

        choices = []
        for i, g in enumerate(gens):
            message: dict[str, Any] = {"role": "assistant", "content": g.text}
            if g.finish_reason == "tool_calls":
                message["content"] = None
                message["tool_calls"] = [{"id": call_ids[i], "type": "function",
                                          "function": {"name": g.tool_name, "arguments": g.tool_arguments}}]
            message.update(refusal=None, annotations=[])
            lps = {"content": logprob_content(g, i, top), "refusal": None} if logprobs else None
            choices.append({"index": i, "message": message, "logprobs": lps, "finish_reason": g.finish_reason})
        body_out = {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
                    "usage": usage, "service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT}
        cls = BrokenBody if triggers.break_stream else Response
        return cls(dumps(body_out).encode(), media_type="application/json")

    def _stream(self, envelope: dict[str, Any], gens: list[Generation], call_ids: list[str], logprobs: bool,
                top: int, usage: dict[str, Any], triggers: Triggers, include_usage: bool,
                obfuscate: bool) -> AsyncIterator[str]:
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            out = {**envelope, "choices": choices}
            if include_usage:
                out["usage"] = None
            out.update(extra)
            if obfuscate:
                out["obfuscation"] = OBFUSCATION
            return sse(dumps(out))

        def steps(i: int, g: Generation) -> list[str]:
            out = []
            if g.tool_name is not None and g.finish_reason == "tool_calls":
                first = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, "id": call_ids[i],
                         "type": "function", "function": {"name": g.tool_name, "arguments": ""}}], "refusal": None}
                out.append(chunk([{"index": i, "delta": first, "logprobs": None, "finish_reason": None}]))
                for frag in (s[1] for s in g.tool_steps if s and s[0] == "args"):
                    delta = {"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}
                    out.append(chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}]))
            else:
                role = {"role": "assistant", "content": "", "refusal": None}
                out.append(chunk([{"index": i, "delta": role, "logprobs": None, "finish_reason": None}]))
                entries = logprob_content(g, i, top) if logprobs else []
                for start, end in stream_steps(len(g.tokens), self.tokens_per_step):
                    lps = {"content": entries[start:end], "refusal": None} if logprobs else None
                    delta = {"content": "".join(t.text for t in g.tokens[start:end])}
                    out.append(chunk([{"index": i, "delta": delta, "logprobs": lps, "finish_reason": None}]))
            out.append(chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": g.finish_reason}]))
            return out

        per_choice = [steps(i, g) for i, g in enumerate(gens)]
        rounds: list[list[str]] = [
            [events[k] for events in per_choice if k < len(events)]
            for k in range(max(len(e) for e in per_choice))
        ]
        if include_usage:
            rounds.append([chunk([], usage=usage)])
        rounds.append([sse("[DONE]")])
        err = {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                         "type": "server_error", "param": None, "code": None}}
        return paced_rounds(rounds, triggers, self.step_delay, sse(dumps(err)))

    # --- Responses API ----------------------------------------------------------------------

    async def responses(self, request: Request, body: dict[str, Any]) -> Response:
        """``POST /v1/responses`` in OpenAI's documented shape (see ``_responses_stream`` for events)."""
        refusal = check_responses_request(body)
        if refusal is not None:
            return refusal
        model = str(body.get("model") or "gpt-4o-mini")
        triggers, status = await self.pre_answer(model)
        if status:
            err_type, code, message = _ERRORS.get(status, ("server_error", None, f"Injected HTTP {status}"))
            return error_response(status, message, err_type, None, code)
        try:
            messages = rapi.input_messages(body)
        except rapi.UnsupportedInput as exc:
            return error_response(400, str(exc), param="input")

        logprobs = rapi.wants_logprobs(body)
        top = int(body.get("top_logprobs") or 0)
        tools = rapi.function_tools(body)
        tool = tool_call_trigger(rapi.tool_trigger_body(body, messages))
        gen = self.generation({}, triggers, 0, body.get("max_output_tokens"), tool)
        prompt_tokens = len(rapi.prompt_token_ids(messages, tools))
        usage = {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                 "output_tokens": len(gen.tokens), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": prompt_tokens + len(gen.tokens)}
        final_status = "incomplete" if gen.finish_reason == "length" else "completed"
        rid, created = _long_id("resp_"), int(time.time())
        item_id = _long_id("fc_" if gen.tool_name is not None else "msg_")
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        lps = rapi.output_logprobs(gen, 0, top) if logprobs else []

        def response(state: str, output: list[Any]) -> dict[str, Any]:
            done = state != "in_progress"
            tool_list = [{"type": "function", "description": t.get("description"), "name": t.get("name"),
                          "parameters": t.get("parameters"), "strict": t.get("strict", True)} for t in tools]
            text = body.get("text") or {}
            return {
                "id": rid, "object": "response", "created_at": created, "status": state, "background": False,
                "billing": {"payer": "developer"}, "completed_at": created if done else None, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if state == "incomplete" else None,
                "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
                "max_tool_calls": body.get("max_tool_calls"), "model": model, "output": output,
                "parallel_tool_calls": _given(body, "parallel_tool_calls", True), "previous_response_id": None,
                "prompt_cache_key": body.get("prompt_cache_key"), "prompt_cache_retention": None,
                "reasoning": {"effort": None, "summary": None}, "safety_identifier": body.get("safety_identifier"),
                "service_tier": "default", "store": _given(body, "store", True),
                "temperature": float(_given(body, "temperature", 1.0)),
                "text": {"format": text.get("format") or {"type": "text"},
                         "verbosity": _given(text, "verbosity", "medium")},
                "tool_choice": _given(body, "tool_choice", "auto"), "tools": tool_list, "top_logprobs": top,
                "top_p": float(_given(body, "top_p", 1.0)), "truncation": _given(body, "truncation", "disabled"),
                "usage": usage if done else None, "user": body.get("user"), "metadata": body.get("metadata") or {},
            }

        def function_call(arguments: str, state: str) -> dict[str, Any]:
            return {"id": item_id, "type": "function_call", "status": state, "arguments": arguments,
                    "call_id": call_id, "name": gen.tool_name}

        def message(text: str, entries: Optional[list[Any]], state: str) -> dict[str, Any]:
            content = [] if entries is None else [
                {"type": "output_text", "annotations": [], "logprobs": entries, "text": text}]
            return {"id": item_id, "type": "message", "status": state, "content": content, "role": "assistant"}

        if gen.tool_name is not None and gen.finish_reason == "tool_calls":
            final_item = function_call(gen.tool_arguments, "completed")
        else:
            final_item = message(gen.text, lps, final_status)
        if not body.get("stream"):
            cls = BrokenBody if triggers.break_stream else Response
            return cls(dumps(response(final_status, [final_item])).encode(), media_type="application/json")

        opts = body.get("stream_options") or {}
        obfuscate = opts.get("include_obfuscation") is not False
        initial = response("in_progress", [])
        rounds: list[list[tuple[str, dict[str, Any]]]] = [
            [("response.created", {"response": initial}), ("response.in_progress", {"response": initial})]]
        if final_item["type"] == "function_call":
            added = {"output_index": 0, "item": function_call("", "in_progress")}
            rounds.append([("response.output_item.added", added)])
            for frag in (s[1] for s in gen.tool_steps if s and s[0] == "args"):
                fragment: dict[str, Any] = {"item_id": item_id, "output_index": 0, "delta": frag}
                rounds.append([("response.function_call_arguments.delta",
                                {**fragment, "obfuscation": OBFUSCATION} if obfuscate else fragment)])
            close = [("response.function_call_arguments.done",
                      {"item_id": item_id, "output_index": 0, "name": final_item.get("name"),
                       "arguments": gen.tool_arguments})]
        else:
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            added = {"output_index": 0, "item": message("", None, "in_progress")}
            rounds.append([("response.output_item.added", added),
                           ("response.content_part.added",
                            {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part})])
            stream_lps = rapi.to_stream_logprobs(lps)
            for start, end in stream_steps(len(gen.tokens), self.tokens_per_step):
                delta: dict[str, Any] = {"item_id": item_id, "output_index": 0, "content_index": 0,
                         "delta": "".join(t.text for t in gen.tokens[start:end]), "logprobs": stream_lps[start:end]}
                if obfuscate:
                    delta["obfuscation"] = OBFUSCATION
                rounds.append([("response.output_text.delta", delta)])
            close = [
                ("response.output_text.done",
                 {"item_id": item_id, "output_index": 0, "content_index": 0, "text": gen.text, "logprobs": lps}),
                ("response.content_part.done", {"item_id": item_id, "output_index": 0, "content_index": 0,
                                                "part": final_item["content"][0]}),
            ]
        close.append(("response.output_item.done", {"output_index": 0, "item": final_item}))
        terminal = "response.incomplete" if final_status == "incomplete" else "response.completed"
        close.append((terminal, {"response": response(final_status, [final_item])}))
        rounds.append(close)

        def serialize(event_type: str, seq: int, payload: dict[str, Any]) -> str:
            return rapi.sse_event(event_type, dumps({"type": event_type, "sequence_number": seq, **payload}))

        seq, text_rounds = 0, []
        for events in rounds:
            text_rounds.append([serialize(t, seq + k, p) for k, (t, p) in enumerate(events)])
            seq += len(events)
        strike = min(BREAK_AFTER_ROUNDS, len(rounds) - 1)
        failed = {**response("failed", []), "usage": None, "completed_at": None,
                  "error": {"code": "server_error", "message": _ERRORS[500][2]}}
        error_event = serialize("response.failed", sum(len(r) for r in rounds[:strike]), {"response": failed})
        return StreamingResponse(paced_rounds(text_rounds, triggers, self.step_delay, error_event),
                                 media_type="text/event-stream")


def main(argv: Optional[list[str]] = None) -> None:
    server.main(__doc__.splitlines()[0], lambda reply, args: FakeOpenAI(**reply), argv)


if __name__ == "__main__":
    main()
