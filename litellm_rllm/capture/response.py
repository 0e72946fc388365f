"""Response -> trace choices: token ids, logprobs and top logprobs out of the formats we see.

Pure functions over plain dicts (a LiteLLM response after `model_dump()`, or a provider's JSON).
They run in the writer thread, never on the event loop. Formats handled:
- chat completions (OpenAI / vLLM): `choices[].logprobs.content[] = {token, logprob, top_logprobs}`,
  vLLM's `choices[].token_ids` (LiteLLM may move it to `provider_specific_fields`) and top-level
  `prompt_token_ids`;
- completions (vLLM / OpenAI legacy): `choices[].logprobs = {tokens, token_logprobs,
  top_logprobs: [{token: logprob}]}`, per-choice `prompt_token_ids` / `token_ids`.
"""

from __future__ import annotations

from operator import itemgetter
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from ..trace import Completeness, TopColumns, TraceChoice
from .fields import plain, provider_field as _psf

# What of the client's request body goes into the trace's `request` (an allow-list, so
# credentials and LiteLLM's internal fields can never slip in).
REQUEST_KEYS = frozenset(
    {
        "messages", "prompt", "input", "instructions", "system", "tools", "tool_choice", "functions",
        "function_call", "parallel_tool_calls", "response_format", "temperature", "top_p", "top_k",
        "min_p", "max_tokens", "max_completion_tokens", "max_output_tokens", "n", "best_of", "stop",
        "stop_sequences", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty",
        "logit_bias", "logprobs", "top_logprobs", "return_token_ids", "prompt_logprobs", "echo",
        "suffix", "stream", "stream_options", "reasoning_effort", "reasoning", "thinking",
        "skip_special_tokens", "include_stop_str_in_output", "chat_template_kwargs",
        "add_generation_prompt", "continue_final_message", "ignore_eos", "min_tokens",
        "truncate_prompt_tokens", "modalities", "text", "include", "previous_response_id",
    }
)


# The Responses API's way of asking for logprobs: an `include` item (plus `top_logprobs`).
RESPONSES_LOGPROBS = "message.output_text.logprobs"


def logprobs_requested(request: Mapping[str, Any]) -> bool:
    """Whether a request (as sent upstream, `request_view` form) asked for logprobs: chat
    `logprobs: true`, completions `logprobs: N` (0 = the sampled token only), Responses
    `include: ["message.output_text.logprobs"]`. The completeness check needs to know: a choice
    that came back without them is then a gap, not a provider that has none."""
    value = request.get("logprobs")
    if value is True or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return True
    include = request.get("include")
    return isinstance(include, (list, tuple)) and RESPONSES_LOGPROBS in include


def request_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """The trace's `request`: what was asked, with `extra_body` flattened the way it is sent."""
    out = {k: v for k, v in body.items() if k in REQUEST_KEYS and v is not None}
    extra = body.get("extra_body")
    if isinstance(extra, Mapping):
        out.update({k: v for k, v in extra.items() if k in REQUEST_KEYS and v is not None})
    return plain(out)


_LOGPROB = itemgetter("logprob")


def _ints(value: Any) -> Optional[list[int]]:
    if value is None:
        return None
    try:
        return list(map(int, value))
    except (TypeError, ValueError):
        return None


def chat_logprobs(logprobs: Any) -> tuple[Optional[list[float]], Optional[list[str]], Optional[TopColumns]]:
    """`logprobs.content[]` -> (logprob per token, token strings, top alternatives as columns)."""
    if not isinstance(logprobs, Mapping):
        return None, None, None
    content = logprobs.get("content")
    if content is None:
        return None, None, None
    # One comprehension (or C-level map) per column: this runs per token of every trace (the
    # writer's largest step for a short reply); ~100 us less per 256-token trace than one
    # append loop (benchmarks/writer_stages.py).
    try:
        values: list[float] = list(map(float, map(_LOGPROB, content)))  # C-level loops
    except KeyError:  # a position without a logprob fails the build, as float(None) does
        values = [float(item.get("logprob")) for item in content]
    tokens: list[str] = [item.get("token") for item in content]
    alts_per_item = [item.get("top_logprobs") or () for item in content]
    if not any(alts_per_item):
        return values, tokens, None
    top_tokens: list[Optional[str]] = [a.get("token") for alts in alts_per_item for a in alts]
    top_lps: list[float] = [float(a.get("logprob")) for alts in alts_per_item for a in alts]
    counts: list[int] = [len(alts) for alts in alts_per_item]
    return values, tokens, TopColumns(top_tokens, top_lps, counts)


def text_logprobs(logprobs: Any) -> tuple[Optional[list[float]], Optional[list[str]], Optional[TopColumns]]:
    """Completions' `{tokens, token_logprobs, top_logprobs: [{token: logprob}]}`."""
    if not isinstance(logprobs, Mapping) or logprobs.get("token_logprobs") is None:
        return None, None, None
    values = [float(v) if v is not None else float("nan") for v in logprobs["token_logprobs"]]
    tokens = list(logprobs.get("tokens") or []) or None
    raw_tops = logprobs.get("top_logprobs")
    if not raw_tops or not any(raw_tops):
        return values, tokens, None
    top_tokens: list[Optional[str]] = []
    top_lps: list[float] = []
    counts: list[int] = []
    for alt in raw_tops:
        alt = alt or {}
        counts.append(len(alt))
        for tok, lp in alt.items():
            top_tokens.append(tok)
            top_lps.append(float(lp))
    return values, tokens, TopColumns(top_tokens, top_lps, counts)


def anthropic_choice(response: Mapping[str, Any]) -> TraceChoice:
    """An Anthropic Messages response as one choice (no token ids or logprobs exist there)."""
    text, thinking, tool_calls = [], [], []
    for block in response.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use":
            import json

            tool_calls.append({"id": block.get("id"), "type": "function",
                               "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input"))}})
    message: dict[str, Any] = {"role": response.get("role") or "assistant", "content": "".join(text) or None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if tool_calls:
        message["tool_calls"] = tool_calls
    return TraceChoice(index=0, message={k: v for k, v in message.items() if v is not None},
                       finish_reason=response.get("stop_reason"), stop_reason=response.get("stop_sequence"))


def responses_choice(response: Mapping[str, Any]) -> TraceChoice:
    """A Responses API object (`/v1/responses`) as one choice.

    Logprobs come from `output[].content[].logprobs` (asked for with `include:
    ["message.output_text.logprobs"]`); token ids only from vLLM's `enable_response_messages`
    (`output_messages[].tokens`, EOS included).
    """
    text: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for item in response.get("output") or []:
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    text.append(part.get("text") or "")
                    items.extend(part.get("logprobs") or [])
        elif kind == "reasoning":
            for part in (item.get("content") or []) + (item.get("summary") or []):
                if part.get("text"):
                    reasoning.append(part["text"])
        elif kind == "function_call":
            tool_calls.append({"id": item.get("call_id") or item.get("id"), "type": "function",
                               "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}})
    values, tokens, tops = chat_logprobs({"content": items}) if items else (None, None, None)
    ids: Optional[list[int]] = None
    for raw in response.get("output_messages") or []:
        ids = (ids or []) + (_ints(raw.get("tokens")) or [])
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        message["tool_calls"] = tool_calls
    status = response.get("status")
    finish = {"completed": "tool_calls" if tool_calls else "stop", "incomplete": "length"}.get(status, status)
    choice = TraceChoice(index=0, message={k: v for k, v in message.items() if v is not None},
                         finish_reason=finish, token_ids=ids, logprobs=values, tokens=tokens)
    choice.set_top_columns(tops)
    return choice


def responses_prompt_ids(response: Mapping[str, Any]) -> Optional[list[int]]:
    ids: Optional[list[int]] = None
    for raw in response.get("input_messages") or []:
        ids = (ids or []) + (_ints(raw.get("tokens")) or [])
    return ids


def choices_from_response(response: Mapping[str, Any], usage: Optional[Mapping[str, Any]] = None,
                          logprobs_requested: bool = False) -> list[TraceChoice]:
    """Every choice of a chat or text completion, in index order. `logprobs_requested`: the
    request asked for logprobs (see `check_completeness`)."""
    if "choices" not in response:
        if response.get("type") == "message":
            choice = anthropic_choice(response)
            choice.completeness = check_completeness(choice, None, logprobs_requested)
            return [choice]
        if response.get("object") == "response":
            choice = responses_choice(response)
            choice.completeness = check_completeness(choice, response.get("usage"), logprobs_requested)
            return [choice]
    out: list[TraceChoice] = []
    n_choices = len(response.get("choices") or [])
    for i, ch in enumerate(response.get("choices") or []):
        message = ch.get("message")
        if message is not None:
            values, tokens, tops = chat_logprobs(ch.get("logprobs"))
            text = None
        else:
            values, tokens, tops = text_logprobs(ch.get("logprobs"))
            text = ch.get("text")
        out.append(make_choice(i, ch, index=ch.get("index"), message=message, text=text, logprobs=values,
                               tokens=tokens, tops=tops, finish_reason=ch.get("finish_reason"),
                               usage=usage if n_choices == 1 else None, logprobs_requested=logprobs_requested))
    return ordered(out)


def make_choice(position: int, fields: Mapping[str, Any], *, index: Any, message: Optional[Mapping[str, Any]],
                text: Optional[str], logprobs: Optional[list[float]], tokens: Optional[list[Any]],
                tops: Optional[TopColumns], finish_reason: Any, usage: Optional[Mapping[str, Any]],
                logprobs_requested: bool) -> TraceChoice:
    """One choice of a chat or text completion from its parts (the generic parse above and the
    typed one, `chat_body`): `fields` holds the choice's fields that vLLM sends and LiteLLM may
    move into `provider_specific_fields` (`stop_reason`, `token_ids`, `prompt_token_ids`);
    `usage` only when it counts this choice alone."""
    if message is not None:
        message = {k: v for k, v in message.items() if k != "provider_specific_fields" and v is not None}
    choice = TraceChoice(
        index=index if index is not None else position,
        message=message,
        text=text,
        finish_reason=finish_reason,
        stop_reason=_psf(fields, "stop_reason"),
        token_ids=_ints(_psf(fields, "token_ids")),
        prompt_token_ids=_ints(_psf(fields, "prompt_token_ids")),
        logprobs=logprobs,
        tokens=tokens,
    )
    choice.set_top_columns(tops)
    choice.completeness = check_completeness(choice, usage, logprobs_requested)
    return choice


def ordered(choices: list[TraceChoice]) -> list[TraceChoice]:
    """In index order (upstreams may send them in any)."""
    choices.sort(key=lambda c: c.index)
    return choices


def prompt_ids_from(response: Mapping[str, Any], choices: Iterable[TraceChoice] = ()) -> Optional[list[int]]:
    """Top-level `prompt_token_ids` (chat), else the first choice's (completions), else vLLM's
    Responses `input_messages`."""
    if response.get("object") == "response":
        return responses_prompt_ids(response)
    ids = _ints(response.get("prompt_token_ids"))
    if ids is None:
        ids = _ints((response.get("provider_specific_fields") or {}).get("prompt_token_ids"))
    if ids is None:
        for c in choices:
            if c.prompt_token_ids is not None:
                return c.prompt_token_ids
    return ids


def check_completeness(choice: TraceChoice, usage: Optional[Mapping[str, Any]],
                       logprobs_requested: bool = False) -> Optional[Completeness]:
    """Ids vs logprobs vs usage; a gap (e.g. vllm#27482's lost tool-call tokens) is flagged.

    When logprobs were requested (by the client or the policy), a choice without them, or with
    fewer than its token ids, is not ok: a trainer filtering on `ok` needs a logprob for every
    token it trains on (vLLM's Responses API gives none for tool-call turns, for example)."""
    n_ids = len(choice.token_ids) if choice.token_ids is not None else None
    n_lp = len(choice.logprobs) if choice.logprobs is not None else None
    if n_ids is None and n_lp is None and not logprobs_requested:
        return None
    n_usage = None
    reported = (usage or {}).get("completion_tokens", (usage or {}).get("output_tokens"))
    if reported is not None:
        n_usage = int(reported)
    problems: list[str] = []
    if logprobs_requested and n_lp is None:
        has = f" ({n_ids} token ids)" if n_ids is not None else ""
        problems.append(f"logprobs were requested but the choice has none{has}")
    if n_ids is not None and n_lp is not None and n_ids != n_lp:
        problems.append(f"{n_ids} token ids but {n_lp} logprobs")
    if n_usage is not None:
        for name, n in (("token ids", n_ids), ("logprobs", n_lp)):
            if n is not None and n != n_usage:
                problems.append(f"{n} {name} but usage says {n_usage} completion tokens")
    return Completeness(
        token_ids=n_ids, logprobs=n_lp, usage_completion_tokens=n_usage, ok=not problems, problems=problems
    )
