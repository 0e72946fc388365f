"""A fake vLLM OpenAI-compatible server that speaks vLLM's wire format byte for byte.

Why: tests and benchmarks of the capture plugin need an upstream that sends exactly what vLLM
sends (``prompt_token_ids`` only on the role chunk, ``"delta": {}`` chunks carrying ids for
tool-call control tokens, ``stop_reason``, usage chunk with ``choices: []``, ...), with token ids
and logprobs a test can compute in advance. See ``/work/shared/notes/vllm.md``.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/responses``,
``GET /v1/models``, ``GET /health``; plus ``GET|DELETE /_fake/requests`` (the request log, for
subprocess tests). A chat or Responses request's log entry also says what it generated
(``"generated"``: prompt ids, each choice's ids; see ``common.note_generated``) and, streamed, how
far the stream got and whether the client left (``"stream"``; see ``common.paced_rounds``).

``/v1/responses`` follows vLLM 0.33.0 (``vllm/entrypoints/openai/responses/``) for a non-harmony
model served with a tool parser: the same reply, ids and logprobs as chat for the rendered input
(``litellm_rllm/demo/responses_api.py``). Logprobs come with ``include:
["message.output_text.logprobs"]`` (+ ``top_logprobs``) as ``output[].content[].logprobs``;
``return_token_ids`` / ``logprobs`` do not exist there (ignored like any unknown field). Token ids
come only with ``enable_response_messages: true``: ``input_messages`` / ``output_messages`` =
``[{"message": <text>, "tokens": [ids], "type": "raw_message_tokens"}]`` (prompt ids; completion
ids with EOS), on the non-streaming body or the final ``response.completed`` event. Usage is
``{input_tokens, input_tokens_details, output_tokens, output_tokens_details, total_tokens}``.
Streams are ``event:``/``data:`` pairs with ``sequence_number`` and no ``[DONE]``; see
``FakeVLLM._responses_stream`` for the event order and vLLM's quirks (a lone EOS step's logprob is
never streamed). Also rejected like vLLM: missing ``input``, an unknown ``include`` value,
``top_logprobs`` above 20 with logprobs included, ``tool_choice: "required"`` without tools,
``background`` (400); ``previous_response_id`` (404: vLLM's store is off by default).

Serialization follows vLLM: non-streaming bodies carry every field (nulls included); stream
chunks carry only the fields vLLM sets explicitly (``token_ids``/``logprobs`` appear as
``null`` when not asked for; ``prompt_token_ids`` only on role chunks); the usage chunk omits
nulls.

Honoured request fields: ``n``, ``max_tokens`` / ``max_completion_tokens`` (completions default
16, like vLLM), ``stop`` (matched per word), ``stop_token_ids``, ``logprobs``, ``top_logprobs``
(-1 = 20), ``prompt_logprobs`` (non-streaming; the prompt token only, rank 1),
``return_token_ids``, ``stream``, ``stream_options.include_usage`` (``{}`` means true, like
vLLM), ``stream_interval``, ``tools`` / ``tool_choice``, ``add_generation_prompt``. Ignored:
sampling knobs (temperature, seed, ...), ``echo``, ``continuous_usage_stats``.
Rejected with vLLM's 400 body: ``stream_options`` without ``stream``; ``top_logprobs`` without
``logprobs``; logprobs above 20; ``prompt_logprobs`` with ``stream``; ``tools: []``; an empty
completions prompt; missing ``messages``.

Tool calls: when ``tools`` is non-empty, ``tool_choice`` is not "none", the last user message
contains "weather" and the last message is not a tool result, every choice calls the first tool (hermes format, arguments
``{"location": "Paris"}``), ``finish_reason: "tool_calls"``. Streaming sends ``"delta": {}``
chunks for control/buffered tokens when ``logprobs`` or ``return_token_ids`` is on (vLLM after
vllm#27482) and skips them otherwise.

Failure triggers, read from the request's ``model`` (combinable, e.g. ``slow-0.2-fail-500``):
  ``fail-400``      400 like vLLM's request validation error (``type: "Bad Request"``).
  ``fail-NNN``      HTTP NNN with ``{"error": {"message", "type", "param": null, "code": NNN}}``.
  ``flaky-N``       the first N requests naming this exact model get a 500, later ones succeed
                    (counter reset by ``clear()``).
  ``slow-S``        sleep S seconds (float) before answering (before any header).
  ``drip-S``        sleep S seconds between stream steps (for client-disconnect tests).
  ``break-stream``  streams 3 rounds (chat: the role chunks + 2 token steps; completions: 3
                    token steps; fewer in shorter streams), then drops the connection: no
                    finish chunk, no ``[DONE]``. Non-streaming: headers + half the body, then drops.
  ``stream-error``  at the same point sends vLLM's in-stream error event
                    ``data: {"error": {...}}`` then ``data: [DONE]``.
                    (``/v1/responses``: drops the connection instead, as vLLM 0.33.0 does.)
  ``tokens-K``      reply with the K-token reply ``tok0 .. tok{K-1}`` whatever the server default.
  ``stall-S``       the first request naming this exact model waits S seconds, later ones answer
                    at once (a client that timed out and retried gets its retry served first).

History-rendering chat templates, also read from the model name (chat only):
  ``template-exact``       assistant messages render as the ids the server sampled for them
                           (tool calls included), so each prompt extends the last prompt +
                           completion exactly.
  ``template-retokenize``  assistant messages render as ids it did not sample (words 2 and 3 of
                           the text merged, tool calls as plain words): the next prompt drifts.
  (``common.assistant_ids``.) ``token_log`` (``GET /_fake/tokens``) keeps, per chat request, the
  token truth: ``{"model", "stream", "prompt_token_ids", "completion_token_ids": [per choice]}``.

Token and logprob rules: see ``litellm_rllm/demo/__init__.py``.

Run standalone: ``python -m litellm_rllm.demo.vllm --port N [--tokens K] [--reply TEXT]
[--tokens-per-step S] [--step-delay SEC] [--model-name NAME]`` (``--port 0`` picks a free port;
the server prints ``READY http://127.0.0.1:PORT`` when it accepts connections).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import time
import uuid
from http import HTTPStatus
from typing import Any, Callable, Iterable, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from litellm_rllm.demo import responses_api as rapi
from litellm_rllm.demo import server
from litellm_rllm.demo.common import (
    ID_TO_TOKEN,
    MAX_LOGPROBS,
    BrokenBody,
    FakeUpstream,
    Generation,
    Handler,
    Triggers,
    alt_logprob,
    alt_token,
    chat_logprob_entries,
    chat_prompt_token_ids,
    completion_prompt_token_ids,
    dumps,
    note_generated,
    paced_rounds,
    prompt_logprob,
    sampled_logprob,
    sse,
    stream_steps,
    text_generation,
    tool_call_trigger,
    tool_generation,
)

TOOL_ID_MARK = "@@TOOL_CALL_ID@@"  # replaced per request inside cached stream fragments
PROMPT_IDS_MARK = "@@PROMPT_TOKEN_IDS@@"  # likewise, for completions' per-choice prompt ids
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # vLLM's CompletionRequest default
_SERVER_ERROR_TYPES = {500: "InternalServerError", 404: "NotFoundError", 501: "NotImplementedError"}


class ValidationFailure(Exception):
    """A request vLLM would refuse at validation (HTTP 400)."""

    def __init__(self, message: str, param: Optional[str] = None, pydantic: bool = True) -> None:
        super().__init__(message)
        self.message, self.param, self.pydantic = message, param, pydantic


def error_body(status: int, message: str, err_type: str, param: Optional[str] = None) -> dict[str, Any]:
    """vLLM's ``ErrorResponse``: ``{"error": {"message", "type", "param", "code": <int>}}``."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def validation_error(failure: ValidationFailure, body: dict[str, Any]) -> JSONResponse:
    """400 the way vLLM's handlers build it (pydantic validator vs. sampling-params error)."""
    if not failure.pydantic:
        return JSONResponse(error_body(400, failure.message, "BadRequestError", failure.param), 400)
    detail = {"type": "value_error", "loc": "body", "msg": f"Value error, {failure.message}",
              "input": f"<dict of {len(body)} items>"}
    message = f"1 validation error:\n  {detail}"
    return JSONResponse(error_body(400, message, HTTPStatus.BAD_REQUEST.phrase, failure.param), 400)


def injected_error(status: int, body: dict[str, Any]) -> Response:
    if status == 400:
        return validation_error(ValidationFailure("injected failure (model name contains 'fail-400')", "model"), body)
    err_type = _SERVER_ERROR_TYPES.get(status) or HTTPStatus(status).phrase
    return JSONResponse(error_body(status, f"Injected failure (model name asks for HTTP {status})", err_type), status)


def _check_common(body: dict[str, Any], logprobs_key: str) -> None:
    if body.get("stream_options") and not body.get("stream"):
        raise ValidationFailure("Stream options can only be defined when `stream=True`.", "stream_options")
    pl = body.get("prompt_logprobs")
    if pl is not None:
        if body.get("stream") and (pl > 0 or pl == -1):
            raise ValidationFailure("`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs")
        if pl < 0 and pl != -1:
            raise ValidationFailure("`prompt_logprobs` must be a positive value or -1.", "prompt_logprobs")
    k = body.get(logprobs_key)
    if k is not None and k < 0 and k != -1:
        raise ValidationFailure(f"`{logprobs_key}` must be a positive value or -1.", logprobs_key)


def _check_max_logprobs(k: int) -> None:
    if k > MAX_LOGPROBS:
        raise ValidationFailure(
            f"Requested sample logprobs of {k}, which is greater than max allowed: {MAX_LOGPROBS}",
            pydantic=False,
        )


def check_chat(body: dict[str, Any]) -> None:
    """The subset of vLLM's ``ChatCompletionRequest`` validators that can bite a proxy."""
    if not isinstance(body.get("messages"), list):
        raise ValidationFailure("Field required: messages", "messages")
    _check_common(body, "top_logprobs")
    top = body.get("top_logprobs")
    if top is not None and (top == -1 or top > 0) and not body.get("logprobs"):
        raise ValidationFailure("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
    if body.get("logprobs"):
        _check_max_logprobs(top or 0)
    if body.get("tools") == []:
        raise ValidationFailure(
            "`tools` must not be an empty array. Either provide at least one tool or omit the field entirely.",
            "tools",
        )


def check_completion(body: dict[str, Any]) -> None:
    """The subset of vLLM's ``CompletionRequest`` validators that can bite a proxy."""
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise ValidationFailure("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    _check_common(body, "logprobs")
    if body.get("logprobs") is not None:
        _check_max_logprobs(body["logprobs"])


RESPONSES_INCLUDABLE = (
    "code_interpreter_call.outputs", "computer_call_output.output.image_url", "file_search_call.results",
    "message.input_image.image_url", "message.output_text.logprobs", "reasoning.encrypted_content",
)
RESPONSES_BACKGROUND_MESSAGE = (
    "This vLLM engine does not support `store=True` and therefore does not support the background mode. "
    "To enable these features, set the environment variable `VLLM_ENABLE_RESPONSES_API_STORE=1` when "
    "launching the vLLM server."
)


def check_responses(body: dict[str, Any]) -> None:
    """The subset of vLLM's ``ResponsesRequest`` validators that can bite a proxy."""
    if body.get("input") is None:
        raise ValidationFailure("Field required: input", "input")
    for value in body.get("include") or []:
        if value not in RESPONSES_INCLUDABLE:
            allowed = ", ".join(f"'{v}'" for v in RESPONSES_INCLUDABLE)
            raise ValidationFailure(f"Input should be {allowed}", "include")
    if body.get("prompt") is not None:
        raise ValidationFailure("prompt template is not supported", "prompt")
    if body.get("background") and body.get("store", True) is False:
        raise ValidationFailure("background can only be used when `store` is true", "background")
    tool_choice = body.get("tool_choice", "auto")
    if not body.get("tools"):
        if tool_choice == "required":
            raise ValidationFailure("Tool choice 'required' must be specified with 'tools' parameter.", "tool_choice")
        if isinstance(tool_choice, dict) and tool_choice.get("type") in ("function", "custom"):
            raise ValidationFailure("Tool choice 'function' not found in 'tools' parameter.", "tool_choice")


def _top_count(k: Optional[int]) -> int:
    return MAX_LOGPROBS if k == -1 else int(k or 0)


# --- cached JSON fragments (keyed by Generation identity, so cheap to look up) ------------------


def _chat_logprobs_json(gen: Generation, choice: int, top: int, start: int, end: int) -> str:
    return '{"content":[' + ",".join(chat_logprob_entries(gen, choice, top)[start:end]) + "]}"


@functools.lru_cache(maxsize=4096)
def chat_full_logprobs(gen: Generation, choice: int, top: int) -> str:
    return _chat_logprobs_json(gen, choice, top, 0, len(gen.tokens))


@functools.lru_cache(maxsize=4096)
def token_ids_json(gen: Generation) -> str:
    return dumps(gen.token_ids)


def _tool_delta(gen: Generation, start: int, end: int) -> Optional[dict[str, Any]]:
    """What vLLM's hermes parser emits for tokens [start, end): a tool-call delta or None."""
    name, args = None, ""
    for step in gen.tool_steps[start:end]:
        if step and step[0] == "name":
            name = step[1]
        elif step:
            args += step[1]
    if name is not None:
        fn = {"name": name, **({"arguments": args} if args else {})}
        return {"tool_calls": [{"id": TOOL_ID_MARK, "type": "function", "index": 0, "function": fn}]}
    if args:
        return {"tool_calls": [{"index": 0, "function": {"arguments": args}}]}
    return None


@functools.lru_cache(maxsize=4096)
def chat_stream_fragments(
    gen: Generation, choice: int, logprobs: bool, top: int, return_token_ids: bool, per_step: int
) -> tuple[str, ...]:
    """The JSON of the single choice of each content/finish chunk of one choice's stream."""
    out = []
    steps = stream_steps(len(gen.tokens), per_step)
    for k, (start, end) in enumerate(steps):
        last = k == len(steps) - 1
        if gen.tool_name is None:
            delta: Optional[dict[str, Any]] = {"content": "".join(t.text for t in gen.tokens[start:end])}
        else:
            delta = _tool_delta(gen, start, end)
            if delta is None and not last and not logprobs and not return_token_ids:
                continue  # vLLM skips buffered tokens when no per-token metadata was asked for
        parts = [f'{{"index":{choice},"delta":{dumps(delta or {})}']
        parts.append(',"logprobs":' + (_chat_logprobs_json(gen, choice, top, start, end) if logprobs else "null"))
        if last:
            parts.append(f',"finish_reason":{dumps(gen.finish_reason)},"stop_reason":{dumps(gen.stop_reason)}')
        else:
            parts.append(',"finish_reason":null')
        ids = dumps([t.id for t in gen.tokens[start:end]]) if return_token_ids else "null"
        parts.append(f',"token_ids":{ids}}}')
        out.append("".join(parts))
    return tuple(out)


def completion_logprobs(gen: Generation, choice: int, top: int, start: int, end: int, offset: int) -> dict[str, Any]:
    """vLLM completions logprobs: offsets by token-string length; sampled + ``top`` alternatives."""
    text_offset, token_logprobs, tokens, tops = [], [], [], []
    for j in range(start, end):
        t = gen.tokens[j]
        lp = sampled_logprob(choice, j)
        text_offset.append(offset)
        offset += len(t.token)
        token_logprobs.append(lp)
        tokens.append(t.token)
        entry = {t.token: lp}
        for r in range(1, top + 1):
            entry[alt_token(r)] = alt_logprob(choice, j, r)
        tops.append(entry)
    return {"text_offset": text_offset, "token_logprobs": token_logprobs, "tokens": tokens, "top_logprobs": tops}


@functools.lru_cache(maxsize=4096)
def completion_stream_fragments(
    gen: Generation, choice: int, index: int, logprobs: Optional[int], return_token_ids: bool, per_step: int
) -> tuple[str, ...]:
    """Per step, the JSON of the choice after ``prompt_token_ids`` (which is spliced per request)."""
    out, text_len = [], 0
    steps = stream_steps(len(gen.tokens), per_step)
    for k, (start, end) in enumerate(steps):
        last = k == len(steps) - 1
        text = "".join(t.text for t in gen.tokens[start:end])
        lps = dumps(completion_logprobs(gen, choice, logprobs, start, end, text_len)) if logprobs is not None else "null"
        text_len += len(text)
        finish = (dumps(gen.finish_reason), dumps(gen.stop_reason)) if last else ("null", "null")
        ids = dumps([t.id for t in gen.tokens[start:end]]) if return_token_ids else "null"
        out.append(
            f'{{"index":{index},"text":{dumps(text)},"logprobs":{lps},"finish_reason":{finish[0]},'
            f'"stop_reason":{finish[1]},"prompt_token_ids":{PROMPT_IDS_MARK},"token_ids":{ids}}}'
        )
    return tuple(out)


def prompt_logprobs_value(prompt_ids: list[int]) -> list[Any]:
    """``[null, {"<id>": {"logprob", "rank": 1, "decoded_token"}}, ...]`` (the prompt token only)."""
    out: list[Any] = [None]
    for p, tid in enumerate(prompt_ids[1:], start=1):
        out.append({str(tid): {"logprob": prompt_logprob(p), "rank": 1, "decoded_token": ID_TO_TOKEN.get(tid, "")}})
    return out


def _stop_params(body: dict[str, Any]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    return stop, tuple(body.get("stop_token_ids") or ())


class FakeVLLM(FakeUpstream):
    """The fake vLLM server (an ASGI app). Serve it with ``litellm_rllm.demo.server.start``.

    ``model_name`` is what ``/v1/models`` lists; ``reply``, ``tokens``, ``tokens_per_step``,
    ``step_delay``, ``max_recorded`` as for ``FakeUpstream``. ``prefix_cache_block`` > 0 acts
    like vLLM's automatic prefix caching with ``--enable-prompt-tokens-details``: chat prompts
    are cached in blocks of that many tokens (per server), and usage reports
    ``prompt_tokens_details.cached_tokens``, the full blocks of the prompt seen before.
    """

    def __init__(self, model_name: str = "fake-vllm", max_model_len: int = 32768, prefix_cache_block: int = 0,
                 **reply: Any) -> None:
        self.model_name, self.max_model_len = model_name, max_model_len
        self.prefix_cache_block = prefix_cache_block
        self._cached_blocks: set[int] = set()
        super().__init__(**reply)
        self._token_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=self._requests.maxlen)

    unrecorded_paths = frozenset({"/health", "/_fake/tokens"})

    @property
    def token_log(self) -> list[dict[str, Any]]:
        """Per chat request, in arrival order: the prompt ids it rendered and the ids each
        choice sampled (whatever the request asked to see): what tests compare traces with."""
        with self._lock:
            return list(self._token_log)

    def clear(self) -> None:
        super().clear()
        with self._lock:
            self._token_log.clear()

    async def _tokens(self, request: Request, body: dict[str, Any]) -> Response:
        return JSONResponse(self.token_log)

    def cached_tokens(self, prompt_ids: list[int]) -> Optional[int]:
        """Tokens of ``prompt_ids`` in cached full blocks (then caches its own blocks); None when
        caching is off."""
        block = self.prefix_cache_block
        if block <= 0:
            return None
        hit, chain, counting = 0, 0, True
        for end in range(block, len(prompt_ids) + 1, block):
            chain = hash((chain, tuple(prompt_ids[end - block:end])))
            if counting and chain in self._cached_blocks:
                hit = end
            else:
                counting = False
                self._cached_blocks.add(chain)
        return hit

    def routes(self) -> Iterable[tuple[str, str, Handler]]:
        return [
            ("GET", "/_fake/tokens", self._tokens),
            ("POST", "/v1/chat/completions", self.chat_completions),
            ("POST", "/v1/completions", self.completions),
            ("POST", "/v1/responses", self.responses),
            ("GET", "/v1/models", self.models),
            ("GET", "/health", self.health),
        ]

    # --- what a request generates -----------------------------------------------------------

    def generation(self, body: dict[str, Any], triggers: Triggers, choice: int, max_tokens: Optional[int],
                   tool: Optional[str] = None) -> Generation:
        if tool is not None:
            return tool_generation(tool, max_tokens)
        stop, stop_ids = _stop_params(body)
        return text_generation(self.words(triggers, choice), max_tokens, stop, stop_ids)

    def per_step(self, body: dict[str, Any]) -> int:
        return max(self.tokens_per_step, int(body.get("stream_interval") or 1))

    # --- endpoints --------------------------------------------------------------------------

    async def health(self, request: Request, body: dict[str, Any]) -> Response:
        return Response(status_code=200)

    async def models(self, request: Request, body: dict[str, Any]) -> Response:
        now = int(time.time())
        permission = {
            "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": now,
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
            "organization": "*", "group": None, "is_blocking": False,
        }
        card = {"id": self.model_name, "object": "model", "created": now, "owned_by": "vllm",
                "root": self.model_name, "parent": None, "max_model_len": self.max_model_len,
                "permission": [permission]}
        return JSONResponse({"object": "list", "data": [card]})

    async def chat_completions(self, request: Request, body: dict[str, Any]) -> Response:
        try:
            check_chat(body)
        except ValidationFailure as failure:
            return validation_error(failure, body)
        model = str(body.get("model") or self.model_name)
        triggers, status = await self.pre_answer(model)
        if status:
            return injected_error(status, body)

        n = int(body.get("n") or 1)
        logprobs = bool(body.get("logprobs"))
        top = _top_count(body.get("top_logprobs")) if logprobs else 0
        rti = bool(body.get("return_token_ids"))
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        tool = tool_call_trigger(body)
        prompt_ids = chat_prompt_token_ids(body["messages"], body.get("tools"),
                                           body.get("add_generation_prompt", True) is not False, triggers.template)
        gens = [self.generation(body, triggers, i, max_tokens, tool) for i in range(n)]
        with self._lock:
            self._token_log.append({"model": model, "stream": bool(body.get("stream")), "prompt_token_ids": prompt_ids,
                                    "completion_token_ids": [g.token_ids for g in gens]})
        note_generated(prompt_ids, gens)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def head(obj: str) -> str:
            return f'{{"id":"{rid}","object":"{obj}","created":{created},"model":{dumps(model)},"choices":['

        usage = (len(prompt_ids), sum(len(g.tokens) for g in gens))
        cached = self.cached_tokens(prompt_ids)

        if body.get("stream"):
            chunk_head, prompt_json = head("chat.completion.chunk"), dumps(prompt_ids) if rti else "null"
            roles = [  # prompt_token_ids ride on each choice's role chunk, and only there
                sse(f'{chunk_head}{{"index":{i},"delta":{{"role":"assistant","content":""}},"logprobs":null,'
                    f'"finish_reason":null}}],"prompt_token_ids":{prompt_json},"prompt_text":null}}')
                for i in range(n)
            ]
            per_step = self.per_step(body)
            per_choice = [chat_stream_fragments(g, i, logprobs, top, rti, per_step) for i, g in enumerate(gens)]
            tool_ids = [f"chatcmpl-tool-{uuid.uuid4().hex[:16]}" for _ in gens]
            return self._stream(chunk_head, roles, per_choice, lambda i, frag: frag.replace(TOOL_ID_MARK, tool_ids[i]),
                                _include_usage(body), usage, triggers, cached)

        choices = []
        for i, g in enumerate(gens):
            if g.finish_reason == "tool_calls":
                call = {"id": f"chatcmpl-tool-{uuid.uuid4().hex[:16]}", "type": "function",
                        "function": {"name": g.tool_name, "arguments": g.tool_arguments}}
                message = {"role": "assistant", "content": None, "refusal": None, "annotations": None,
                           "audio": None, "function_call": None, "tool_calls": [call], "reasoning": None}
            else:
                message = {"role": "assistant", "content": g.text, "refusal": None, "annotations": None,
                           "audio": None, "function_call": None, "reasoning": None}
            lps = chat_full_logprobs(g, i, top) if logprobs else "null"
            ids = token_ids_json(g) if rti else "null"
            choices.append(
                f'{{"index":{i},"message":{dumps(message)},"logprobs":{lps},"finish_reason":{dumps(g.finish_reason)},'
                f'"stop_reason":{dumps(g.stop_reason)},"token_ids":{ids},"routed_experts":null}}'
            )
        prompt_lps = dumps(prompt_logprobs_value(prompt_ids)) if body.get("prompt_logprobs") is not None else "null"
        text = (
            head("chat.completion") + ",".join(choices) + '],"service_tier":null,"system_fingerprint":null,'
            + _usage_json(*usage, nulls=True, cached=cached)
            + f',"prompt_logprobs":{prompt_lps},"prompt_token_ids":{dumps(prompt_ids) if rti else "null"},'
            '"prompt_text":null,"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}'
        )
        return self._body(text, triggers)

    def _stream(self, head: str, lead: list[str], per_choice: list[tuple[str, ...]], fix: Callable[[int, str], str],
                include_usage: bool, usage: tuple[int, int], triggers: Triggers,
                cached: Optional[int] = None) -> StreamingResponse:
        """SSE response: ``lead`` events, then step k of every choice in index order (one choice
        per chunk), then step k+1, ..., then the usage chunk and ``[DONE]``."""
        rounds = [lead] if lead else []
        for k in range(max((len(f) for f in per_choice), default=0)):
            rounds.append([sse(head + fix(i, frags[k]) + "]}") for i, frags in enumerate(per_choice) if k < len(frags)])
        if include_usage:
            rounds.append([sse(head + "]," + _usage_json(*usage, nulls=False, cached=cached) + "}")])
        rounds.append([sse("[DONE]")])
        err = error_body(500, "Injected in-stream failure (model name contains 'stream-error')", "InternalServerError")
        events = paced_rounds(rounds, triggers, self.step_delay, sse(dumps(err)) + sse("[DONE]"))
        return StreamingResponse(events, media_type="text/event-stream")

    async def completions(self, request: Request, body: dict[str, Any]) -> Response:
        try:
            check_completion(body)
        except ValidationFailure as failure:
            return validation_error(failure, body)
        model = str(body.get("model") or self.model_name)
        triggers, status = await self.pre_answer(model)
        if status:
            return injected_error(status, body)

        prompt = body["prompt"]
        prompts = [prompt] if isinstance(prompt, str) or all(isinstance(x, int) for x in prompt) else list(prompt)
        prompt_ids = [completion_prompt_token_ids(p) for p in prompts]
        n = int(body.get("n") or 1)
        logprobs = body.get("logprobs")
        logprobs = _top_count(logprobs) if logprobs is not None else None
        rti = bool(body.get("return_token_ids"))
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
        # (index, choice-within-prompt, prompt ids, generation) in vLLM's index order
        outs = [(p * n + i, i, ids, self.generation(body, triggers, i, max_tokens))
                for p, ids in enumerate(prompt_ids) for i in range(n)]
        rid = f"cmpl-{uuid.uuid4().hex}"
        head = f'{{"id":"{rid}","object":"text_completion","created":{int(time.time())},"model":{dumps(model)},"choices":['
        usage = (sum(len(ids) for ids in prompt_ids), sum(len(o[3].tokens) for o in outs))

        if body.get("stream"):
            per_step = self.per_step(body)
            per_choice = [completion_stream_fragments(g, i, idx, logprobs, rti, per_step) for idx, i, _, g in outs]
            first = [dumps(ids) if rti else "null" for _, _, ids, _ in outs]
            seen: set[int] = set()

            def fix(c: int, frag: str) -> str:  # prompt ids ride on each choice's first chunk
                ids = "null" if c in seen else first[c]
                seen.add(c)
                return frag.replace(PROMPT_IDS_MARK, ids)

            return self._stream(head, [], per_choice, fix, _include_usage(body), usage, triggers)

        choices = []
        for idx, i, ids, g in outs:
            lps = dumps(completion_logprobs(g, i, logprobs, 0, len(g.tokens), 0)) if logprobs is not None else "null"
            prompt_lps = dumps(prompt_logprobs_value(ids)) if body.get("prompt_logprobs") is not None else "null"
            choices.append(
                f'{{"index":{idx},"text":{dumps(g.text)},"logprobs":{lps},"finish_reason":{dumps(g.finish_reason)},'
                f'"stop_reason":{dumps(g.stop_reason)},"token_ids":{token_ids_json(g) if rti else "null"},'
                f'"prompt_logprobs":{prompt_lps},"prompt_token_ids":{dumps(ids) if rti else "null"},'
                '"routed_experts":null}'
            )
        text = (head + ",".join(choices) + '],"service_tier":null,"system_fingerprint":null,'
                + _usage_json(*usage, nulls=True)
                + ',"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}')
        return self._body(text, triggers)

    async def responses(self, request: Request, body: dict[str, Any]) -> Response:
        """``POST /v1/responses`` as vLLM 0.33.0 serves it for a non-harmony model with a tool
        parser (``vllm/entrypoints/openai/responses/``): see ``_responses_stream`` for events."""
        try:
            check_responses(body)
            messages = rapi.input_messages(body)
        except ValidationFailure as failure:
            return validation_error(failure, body)
        except rapi.UnsupportedInput as exc:
            return JSONResponse(error_body(400, str(exc), "BadRequestError", "input"), 400)
        if body.get("background"):
            err = error_body(400, RESPONSES_BACKGROUND_MESSAGE, "invalid_request_error", "background")
            return JSONResponse(err, 400)
        if body.get("previous_response_id"):  # the store is off by default, so nothing is ever found
            message = f"Response with id '{body['previous_response_id']}' not found."
            return JSONResponse(error_body(404, message, "invalid_request_error", "response_id"), 404)
        logprobs = rapi.wants_logprobs(body)
        top = int(body.get("top_logprobs") or 0)
        if logprobs:
            try:
                _check_max_logprobs(top)
            except ValidationFailure as failure:
                return validation_error(failure, body)
        model = str(body.get("model") or self.model_name)
        triggers, status = await self.pre_answer(model)
        if status:
            return injected_error(status, body)

        tools = rapi.function_tools(body)
        prompt_ids = rapi.prompt_token_ids(messages, tools)
        limit = self.max_model_len - len(prompt_ids)
        asked = body.get("max_output_tokens")
        max_tokens = limit if asked is None else min(int(asked), limit)
        tool = tool_call_trigger(rapi.tool_trigger_body(body, messages))
        gen = self.generation(body, triggers, 0, max_tokens, tool)
        note_generated(prompt_ids, [gen])
        final_status = "incomplete" if gen.finish_reason == "length" else "completed"
        usage = {
            "input_tokens": len(prompt_ids),
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0, "input_tokens_per_turn": [],
                                     "cached_tokens_per_turn": []},
            "output_tokens": len(gen.tokens),
            "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0, "output_tokens_per_turn": [],
                                      "tool_output_tokens_per_turn": []},
            "total_tokens": len(prompt_ids) + len(gen.tokens),
        }
        raw: Optional[tuple[Any, Any]] = None
        if body.get("enable_response_messages"):  # vLLM's only token-id channel on this endpoint
            raw_in = {"message": rapi.prompt_text(messages, tools), "tokens": prompt_ids, "type": "raw_message_tokens"}
            raw_out = {"message": gen.text, "tokens": gen.token_ids, "type": "raw_message_tokens"}
            raw = ([raw_in], [raw_out] if gen.tokens else None)
        rid, created = f"resp_{_random_uuid()}", int(time.time())

        def response(state: str, output: list[Any], final: bool) -> dict[str, Any]:
            return _responses_object(body, rid, created, model, state, output, usage if final else None,
                                     max_tokens, top if logprobs else None, raw if final else None)

        if body.get("stream"):
            return self._responses_stream(gen, self.per_step(body), logprobs, top, final_status, response, triggers)
        if gen.finish_reason == "tool_calls":
            output = [_function_call_item(f"fc_{_random_uuid()}", f"chatcmpl-tool-{_random_uuid()}",
                                          gen.tool_name or "", gen.tool_arguments, final_status)]
        elif gen.text:
            part = {"annotations": [], "text": gen.text, "type": "output_text",
                    "logprobs": rapi.output_logprobs(gen, 0, top) if logprobs else None}
            output = [_message_item(f"msg_{_random_uuid()}", [part], final_status)]
        else:
            output = []
        return self._body(dumps(response(final_status, output, True)), triggers)

    def _responses_stream(self, gen: Generation, per_step: int, logprobs: bool, top: int, status: str,
                          response: Callable[[str, list[Any], bool], dict[str, Any]],
                          triggers: Triggers) -> StreamingResponse:
        """vLLM's simple (non-harmony) Responses stream: ``response.created``,
        ``response.in_progress``, then per engine step the parser's events (a message opens with
        ``output_item.added`` + ``content_part.added`` at the first non-empty text; a tool call
        opens with a ``function_call`` item when the parser emits its name, then
        ``function_call_arguments.delta`` fragments), then the closing events and
        ``response.completed`` (``response.incomplete`` when cut by ``max_output_tokens``).

        vLLM quirks kept: a step whose text is empty (a lone EOS or stop-word token) emits nothing,
        so its logprob never reaches the client (nor the final response, which reuses the streamed
        items); ``output_text.done`` carries ``logprobs: []``; the ``content_part.done`` part
        carries the accumulated logprobs (``null`` when none); tool-call tokens have no logprobs.
        ``stream-error``: vLLM 0.33.0 cannot validate its error payload as a stream event and the
        stream dies, so the connection is dropped like ``break-stream``."""
        rounds: list[list[tuple[str, dict[str, Any]]]] = []
        initial = response("in_progress", [], False)
        rounds.append([("response.created", {"response": initial}), ("response.in_progress", {"response": initial})])
        state, item_id, call_id, text, args = "", "", "", "", ""
        accumulated: list[dict[str, Any]] = []
        for start, end in stream_steps(len(gen.tokens), per_step):
            events: list[tuple[str, dict[str, Any]]] = []
            if gen.tool_name is not None:
                name = next((s[1] for s in gen.tool_steps[start:end] if s and s[0] == "name"), None)
                fragment = "".join(s[1] for s in gen.tool_steps[start:end] if s and s[0] == "args")
                if name is not None and state != "tool":
                    state, item_id, call_id = "tool", f"fc_{_random_uuid()}", f"chatcmpl-tool-{_random_uuid()}"
                    item = {**_function_call_item(item_id, call_id, name, "", "in_progress"), "created_by": None}
                    events.append(("response.output_item.added", {"item": item, "output_index": 0}))
                if fragment and state == "tool":
                    args += fragment
                    events.append(("response.function_call_arguments.delta",
                                   {"delta": fragment, "item_id": item_id, "output_index": 0}))
            else:
                piece = "".join(t.text for t in gen.tokens[start:end])
                if piece:
                    if state != "content":
                        state, item_id = "content", f"msg_{_random_uuid()}"
                        events.append(("response.output_item.added",
                                       {"item": _message_item(item_id, [], "in_progress"), "output_index": 0}))
                        events.append(("response.content_part.added", {
                            "content_index": 0, "item_id": item_id, "output_index": 0,
                            "part": {"annotations": [], "text": "", "type": "output_text", "logprobs": []}}))
                    lps = rapi.output_logprobs(gen, 0, top, start, end) if logprobs else []
                    accumulated += lps
                    text += piece
                    events.append(("response.output_text.delta", {
                        "content_index": 0, "delta": piece, "item_id": item_id,
                        "logprobs": rapi.to_stream_logprobs(lps), "output_index": 0}))
            rounds.append(events)
        close: list[tuple[str, dict[str, Any]]] = []
        items: list[dict[str, Any]] = []
        if state == "content":
            part = {"annotations": [], "text": text, "type": "output_text", "logprobs": accumulated or None}
            items.append(_message_item(item_id, [part] if text else [], status))
            close += [
                ("response.output_text.done",
                 {"content_index": 0, "item_id": item_id, "logprobs": [], "output_index": 0, "text": text}),
                ("response.content_part.done",
                 {"content_index": 0, "item_id": item_id, "output_index": 0, "part": part}),
                ("response.output_item.done", {"item": items[-1], "output_index": 0}),
            ]
        elif state == "tool":
            items.append(_function_call_item(item_id, call_id, gen.tool_name or "", args, status))
            close += [
                ("response.function_call_arguments.done",
                 {"arguments": args, "item_id": item_id, "output_index": 0, "name": gen.tool_name}),
                ("response.output_item.done", {"item": items[-1], "output_index": 0}),
            ]
        terminal = "response.incomplete" if status == "incomplete" else "response.completed"
        close.append((terminal, {"response": response(status, items, True)}))
        rounds[-1].extend(close)

        seq = 0
        text_rounds: list[list[str]] = []
        for events in rounds:
            out = []
            for event_type, payload in events:
                data = {**payload, "sequence_number": seq, "type": event_type}
                ordered = {k: data[k] for k in sorted(data) if k != "name"}  # openai's field order
                if "name" in data:  # an extra field vLLM sets on function_call_arguments.done
                    ordered["name"] = data["name"]
                out.append(rapi.sse_event(event_type, dumps(ordered)))
                seq += 1
            text_rounds.append(out)
        if triggers.stream_error:
            triggers = dataclasses.replace(triggers, break_stream=True, stream_error=False)
        events_iter = paced_rounds(text_rounds, triggers, self.step_delay, "")
        return StreamingResponse(events_iter, media_type="text/event-stream")

    @staticmethod
    def _body(text: str, triggers: Triggers) -> Response:
        cls = BrokenBody if triggers.break_stream else Response
        return cls(text.encode(), media_type="application/json")


def _random_uuid() -> str:
    """vLLM's ``random_uuid()``: 16 hex characters."""
    return f"{uuid.uuid4().int & ((1 << 64) - 1):016x}"


def _message_item(item_id: str, content: list[Any], status: str) -> dict[str, Any]:
    """An ``openai`` ``ResponseOutputMessage`` as vLLM serializes it (every field, nulls included)."""
    return {"id": item_id, "content": content, "role": "assistant", "status": status, "type": "message", "phase": None}


def _function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    """An ``openai`` ``ResponseFunctionToolCall`` as vLLM serializes it."""
    return {"arguments": arguments, "call_id": call_id, "name": name, "type": "function_call", "id": item_id,
            "async": None, "caller": None, "namespace": None, "status": status}


def _responses_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A request tool echoed back: function tools in ``openai``'s ``FunctionTool`` field order."""
    if tool.get("type") != "function":
        return tool
    keys = ("name", "parameters", "strict", "type", "allowed_callers", "async", "defer_loading", "description",
            "output_schema")
    return {k: tool.get(k) for k in keys}


def _responses_object(body: dict[str, Any], rid: str, created: int, model: str, status: str, output: list[Any],
                      usage: Optional[dict[str, Any]], max_tokens: int, top_logprobs: Optional[int],
                      raw: Optional[tuple[Any, Any]]) -> dict[str, Any]:
    """vLLM's ``ResponsesResponse`` (``model_dump(mode="json")``: every field, nulls included;
    ``metrics`` omitted when off). ``input_messages`` / ``output_messages`` are set only with
    ``enable_response_messages`` and only on the final object."""
    tools = body.get("tools") or []
    tool_choice = body.get("tool_choice", "auto")
    if not tools and tool_choice in ("auto", "none"):
        tool_choice = "none"  # vLLM's check_tool_usage rewrites it

    def num(key: str, default: float) -> float:
        value = body.get(key)
        return float(default if value is None else value)

    cache_options = body.get("prompt_cache_options")
    if isinstance(cache_options, dict):
        cache_options = {"mode": cache_options.get("mode", "implicit"), "ttl": cache_options.get("ttl", "30m"),
                         "comparison_response_id": cache_options.get("comparison_response_id")}
    parallel = body.get("parallel_tool_calls")
    return {
        "id": rid, "created_at": created,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "metadata": body.get("metadata"), "model": model,
        "object": "response", "output": output, "parallel_tool_calls": True if parallel is None else parallel,
        "temperature": num("temperature", 1.0), "tool_choice": tool_choice,
        "tools": [_responses_tool(t) for t in tools], "top_p": num("top_p", 1.0),
        "background": bool(body.get("background") or False), "max_output_tokens": max_tokens,
        "max_tool_calls": body.get("max_tool_calls"), "previous_response_id": body.get("previous_response_id"),
        "prompt": None, "prompt_cache_options": cache_options, "prompt_cache_key": body.get("prompt_cache_key"),
        "prompt_cache_retention": body.get("prompt_cache_retention"), "reasoning": body.get("reasoning"),
        "safety_identifier": body.get("safety_identifier"), "service_tier": body.get("service_tier") or "auto",
        "status": status, "text": body.get("text"), "top_logprobs": top_logprobs,
        "truncation": body.get("truncation") or "disabled", "usage": usage, "user": body.get("user"),
        "presence_penalty": num("presence_penalty", 0.0), "frequency_penalty": num("frequency_penalty", 0.0),
        "kv_transfer_params": None, "ec_transfer_params": None,
        "input_messages": raw[0] if raw else None, "output_messages": raw[1] if raw else None,
    }


def _include_usage(body: dict[str, Any]) -> bool:
    """vLLM: ``stream_options`` present (even ``{}``) and ``include_usage`` not false."""
    opts = body.get("stream_options")
    return opts is not None and opts.get("include_usage", True) is not False


def _usage_json(prompt: int, completion: int, nulls: bool, cached: Optional[int] = None) -> str:
    tail = ',"prompt_tokens_details":null,"completion_tokens_details":null' if nulls else ""
    if cached is not None:
        tail = f',"prompt_tokens_details":{{"cached_tokens":{cached}}}' + (',"completion_tokens_details":null' if nulls else "")
    return f'"usage":{{"prompt_tokens":{prompt},"total_tokens":{prompt + completion},"completion_tokens":{completion}{tail}}}'


def main(argv: Optional[list[str]] = None) -> None:
    def add_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model-name", default="fake-vllm", help="the model /v1/models lists")

    server.main(__doc__.splitlines()[0], lambda reply, args: FakeVLLM(args.model_name, **reply), argv, add_args)


if __name__ == "__main__":
    main()
