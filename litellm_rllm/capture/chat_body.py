"""A chat completion's JSON body (OpenAI / vLLM) decoded straight into trace choices.

Why: the writer parses the body of every non-streamed reply it captures from the upstream's
bytes. A vLLM reply with logprobs carries, per token, a `bytes` array (and one per
alternative) that a trace never keeps; a generic parse (orjson) builds every one of them as
Python ints and every position as a dict, and the choice then walks those dicts again.
msgspec decodes against the typed structs below instead: fields a trace does not keep are
skipped without being built, positions become small structs, and the types are checked as it
goes (`python benchmarks/writer_stages.py`: build of a 256-token reply ~2x faster).

Only for what fits the structs: anything else (text completions, Responses API objects, a
field of an unexpected type, a number out of range) returns None, and the caller takes the
generic path (`response.choices_from_response`), which gives the same choices.
"""

from __future__ import annotations

from typing import Any, Optional

import msgspec

from ..trace import TopColumns, TraceChoice
from .response import make_choice, ordered, prompt_ids_from

# The body is sent through this decoder only if it names itself a chat completion somewhere
# (`"object": "chat.completion"`): a cheap scan that spares other bodies a typed decode that
# would fail at the end. A false hit (the words inside a message) just fails and falls back.
_MARK = b'"chat.completion"'


class _Alternative(msgspec.Struct, gc=False):
    logprob: float
    token: Optional[str] = None


class _Position(msgspec.Struct, gc=False):
    logprob: float
    token: Optional[str] = None
    top_logprobs: Optional[list[_Alternative]] = None


class _Logprobs(msgspec.Struct):
    content: Optional[list[_Position]] = None


class _Choice(msgspec.Struct):
    message: dict[str, Any]
    index: Any = None
    logprobs: Optional[_Logprobs] = None
    finish_reason: Any = None
    stop_reason: Any = None
    token_ids: Any = None
    prompt_token_ids: Any = None
    provider_specific_fields: Any = None


class _ChatCompletion(msgspec.Struct):
    choices: list[_Choice]
    object: Any = None
    usage: Any = None
    prompt_token_ids: Any = None
    provider_specific_fields: Any = None


_DECODER = msgspec.json.Decoder(_ChatCompletion)


def decode_chat_completion(
    body: bytes, logprobs_requested: bool = False
) -> Optional[tuple[Any, list[TraceChoice], Optional[list[int]]]]:
    """`(usage, choices, prompt_token_ids)` of a chat completion body, as
    `choices_from_response` and `prompt_ids_from` give them; None if the body is not one this
    decoder reads (the caller parses it generically)."""
    if _MARK not in body:
        return None
    try:
        response = _DECODER.decode(body)
    except msgspec.DecodeError:  # ValidationError included: not in the expected shape
        return None
    if response.object == "response":  # a Responses API object, whatever else it holds
        return None
    usage = response.usage
    n_choices = len(response.choices)
    choices = []
    for i, ch in enumerate(response.choices):
        values, tokens, tops = _columns(ch.logprobs)
        # the generic path reads `stop_reason` / `token_ids` / `prompt_token_ids` from the
        # choice, else from `provider_specific_fields` (`fields.provider_field`): same here
        raw = {"stop_reason": ch.stop_reason, "token_ids": ch.token_ids, "prompt_token_ids": ch.prompt_token_ids,
               "provider_specific_fields": ch.provider_specific_fields, "message": ch.message}
        choices.append(make_choice(i, raw, index=ch.index, message=ch.message, text=None, logprobs=values,
                                   tokens=tokens, tops=tops, finish_reason=ch.finish_reason,
                                   usage=usage if n_choices == 1 else None, logprobs_requested=logprobs_requested))
    choices = ordered(choices)
    top = {"prompt_token_ids": response.prompt_token_ids,
           "provider_specific_fields": response.provider_specific_fields}
    return usage, choices, prompt_ids_from(top, choices)


def _columns(logprobs: Optional[_Logprobs]) -> tuple[Optional[list[float]], Optional[list[str]], Optional[TopColumns]]:
    """What `response.chat_logprobs` gives for the same JSON."""
    if logprobs is None or logprobs.content is None:
        return None, None, None
    content = logprobs.content
    values = [p.logprob for p in content]
    tokens: list[Any] = [p.token for p in content]
    alts_per_item = [p.top_logprobs or () for p in content]
    if not any(alts_per_item):
        return values, tokens, None
    top_tokens = [a.token for alts in alts_per_item for a in alts]
    top_lps = [a.logprob for alts in alts_per_item for a in alts]
    counts = [len(alts) for alts in alts_per_item]
    return values, tokens, TopColumns(top_tokens, top_lps, counts)


__all__ = ["decode_chat_completion"]
