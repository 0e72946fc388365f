"""A fake OpenAI Chat Completions API: OpenAI's shapes, no token ids, OpenAI's refusals.

Why: the plugin must never turn a request that would succeed into an upstream error. This fake
refuses what OpenAI refuses, so a test sees the 400 if the plugin injects ``return_token_ids``
into an OpenAI deployment, or ``logprobs`` into a reasoning model.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET|DELETE /_fake/requests``.

Shapes: ``system_fingerprint``, ``service_tier: "default"``, ``message.refusal`` /
``annotations``, ``logprobs: {"content": [...], "refusal": null}`` with ``bytes``; usage with
``prompt_tokens_details`` / ``completion_tokens_details``. Streams: role chunk
``{"role": "assistant", "content": "", "refusal": null}``, one token per chunk, a finish chunk
with ``"delta": {}``; with ``stream_options.include_usage`` every chunk has ``"usage": null``
and a last chunk has ``choices: []`` plus usage; every chunk has an ``obfuscation`` string
unless ``stream_options.include_obfuscation`` is false.

Tokens and logprobs follow the shared rules (``tests/upstreams/__init__.py``) except that no
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

from tests.upstreams import server
from tests.upstreams.common import (
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
        return [("POST", "/v1/chat/completions", self.chat_completions), ("GET", "/v1/models", self.models)]

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


def main(argv: Optional[list[str]] = None) -> None:
    server.main(__doc__.splitlines()[0], lambda reply, args: FakeOpenAI(**reply), argv)


if __name__ == "__main__":
    main()
