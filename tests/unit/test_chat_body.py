"""The typed chat-completion decoder (`capture.chat_body`) gives exactly what the generic parse
gives (`capture.response`), and hands every body it does not read back to it."""

from __future__ import annotations

import json
from typing import Any, Optional

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_rllm.builder import build_trace
from litellm_rllm.capture import chat_body
from litellm_rllm.capture.chat_body import decode_chat_completion
from litellm_rllm.capture.record import CallRecord
from litellm_rllm.capture.response import choices_from_response, prompt_ids_from


def _generic(body: bytes, requested: bool) -> tuple[Any, list[Any], Optional[list[int]]]:
    response = orjson.loads(body)
    usage = response.get("usage")
    choices = choices_from_response(response, usage, logprobs_requested=requested)
    return usage, choices, prompt_ids_from(response, choices)


def _outcome(fn: Any) -> Any:
    """A result as comparable plain data, or the exception type it raised."""
    try:
        usage, choices, prompt_ids = fn()
    except Exception as exc:  # noqa: BLE001 - compared between the two paths
        return type(exc).__name__
    cols = []
    for c in choices:
        top = c.top_columns()
        cols.append(None if top is None else (list(top.tokens), list(top.logprobs), list(top.counts)))
    return usage, [c.model_dump() for c in choices], cols, prompt_ids


def _alt(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def vllm_body(n_tokens: int = 4, top: int = 2) -> dict[str, Any]:
    positions = [{**_alt(f"t{i}", -0.5 * i), "top_logprobs": [_alt(f"a{i}{k}", -1.0 - k) for k in range(top)]}
                 for i in range(n_tokens)]
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "policy",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "t0 t1", "tool_calls": [],
                                             "reasoning_content": None},
                     "logprobs": {"content": positions}, "finish_reason": "length", "stop_reason": None,
                     "token_ids": list(range(10, 10 + n_tokens))}],
        "usage": {"prompt_tokens": 3, "completion_tokens": n_tokens, "total_tokens": 3 + n_tokens},
        "prompt_token_ids": [1, 2, 3], "prompt_logprobs": None, "kv_transfer_params": None,
    }


def test_a_vllm_reply_decodes_to_the_generic_parse_choices_columns_and_prompt_ids() -> None:
    body = orjson.dumps(vllm_body())
    typed = decode_chat_completion(body, logprobs_requested=True)
    assert typed is not None
    assert _outcome(lambda: typed) == _outcome(lambda: _generic(body, True))
    usage, choices, prompt_ids = typed
    assert prompt_ids == [1, 2, 3] and usage["completion_tokens"] == 4
    assert choices[0].token_ids == [10, 11, 12, 13] and choices[0].logprobs == [0.0, -0.5, -1.0, -1.5]
    assert choices[0].completeness.ok and choices[0].top_columns().counts == [2, 2, 2, 2]


def test_fields_litellm_moves_into_provider_specific_fields_are_read_there_too() -> None:
    raw = vllm_body()
    choice = raw["choices"][0]
    ids = choice.pop("token_ids")
    choice["provider_specific_fields"] = {"token_ids": ids, "stop_reason": 7}
    raw["provider_specific_fields"] = {"prompt_token_ids": raw.pop("prompt_token_ids")}
    body = orjson.dumps(raw)
    typed = decode_chat_completion(body)
    assert typed is not None and typed[1][0].token_ids == ids and typed[1][0].stop_reason == 7
    assert typed[2] == [1, 2, 3]
    assert _outcome(lambda: typed) == _outcome(lambda: _generic(body, False))


@pytest.mark.parametrize("body", [
    {"object": "text_completion", "choices": [{"index": 0, "text": "hi", "logprobs": None}]},  # completions
    {"object": "response", "output": []},  # Responses API
    {"type": "message", "role": "assistant", "content": []},  # Anthropic
    {"object": "chat.completion", "choices": [{"index": 0, "message": None}]},
    {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant"},
                                               "logprobs": {"content": [{"token": "a", "logprob": None}]}}]},
    {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant"},
                                               "logprobs": {"content": [{"token": "a", "logprob": True}]}}]},
    {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant"},
                                               "logprobs": {"content": [{"token": "a"}]}}]},
    {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant"},
                                               "logprobs": "none"}]},
    {"id": "no-object-named", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]},
], ids=["text-completion", "responses", "anthropic", "null-message", "null-logprob", "bool-logprob",
        "missing-logprob", "logprobs-not-an-object", "unmarked"])
def test_bodies_outside_the_typed_shape_go_back_to_the_generic_parse(body: dict[str, Any]) -> None:
    assert decode_chat_completion(json.dumps(body).encode()) is None


def test_numbers_out_of_float_range_and_malformed_json_go_back_to_the_generic_parse() -> None:
    big = b'{"object":"chat.completion","choices":[{"message":{},"logprobs":{"content":[{"token":"a","logprob":-1e999}]}}]}'
    assert decode_chat_completion(big) is None
    assert decode_chat_completion(b'{"object":"chat.completion","choices":[') is None


def test_build_trace_gives_the_same_trace_through_either_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = orjson.dumps(vllm_body(n_tokens=6, top=3))
    request = {"model": "policy", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
               "top_logprobs": 3, "return_token_ids": True}

    def record() -> CallRecord:
        r = CallRecord(call_id="c1", started_wall=1.7e9, route="/v1/chat/completions", model="policy",
                       session={"session_id": "s"}, client_request=dict(request),
                       upstream={**request, "model": "hosted_vllm/policy", "custom_llm_provider": "hosted_vllm"})
        r.raw_body = [raw[:100], raw[100:]]
        r.hidden = {"response_cost": 0.0}
        return r

    typed = build_trace(record())
    monkeypatch.setattr(chat_body, "_MARK", b"\x00never\x00")  # every body takes the generic parse
    generic = build_trace(record())
    assert typed.choices[0].top_columns() is not None
    for t in (typed, generic):
        for c in t.choices:
            c.materialize()
    assert typed.model_dump() == generic.model_dump()


# ------------------------------------------------------------------ any body of the chat shape

_token = st.one_of(st.none(), st.text(max_size=4))
_number = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64), st.integers(-5, 0))
_alternative = st.fixed_dictionaries({"logprob": _number}, optional={"token": _token, "bytes": st.lists(st.integers(0, 255), max_size=3)})
_position = st.fixed_dictionaries(  # a token missing or null fails both parses alike (rarely drawn)
    {"logprob": _number, "token": st.integers(0, 19).flatmap(lambda k: st.none() if k == 0 else st.text(max_size=4))},
    optional={"bytes": st.lists(st.integers(0, 255), max_size=3),
              "top_logprobs": st.one_of(st.none(), st.lists(_alternative, max_size=3))})
_ids = st.one_of(st.none(), st.lists(st.integers(0, 2**31 - 1), max_size=5))
_message = st.fixed_dictionaries(
    {"role": st.just("assistant")},
    optional={"content": st.one_of(st.none(), st.text(max_size=8)), "reasoning_content": st.none(),
              "tool_calls": st.just([{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]),
              "provider_specific_fields": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"token_ids": _ids}))})
_content = st.lists(_position, min_size=1, max_size=5)
_choice = st.fixed_dictionaries(
    {"message": _message,
     "logprobs": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"content": st.one_of(st.none(), _content)}),
                           st.fixed_dictionaries({"content": _content}), st.fixed_dictionaries({"content": _content}))},
    optional={"index": st.one_of(st.none(), st.integers(0, 3)),
              "finish_reason": st.one_of(st.none(), st.sampled_from(["stop", "length", "tool_calls"])),
              "stop_reason": st.one_of(st.none(), st.integers(0, 9), st.text(max_size=2)),
              "token_ids": _ids,
              "provider_specific_fields": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
                  "token_ids": _ids, "stop_reason": st.integers(0, 9), "prompt_token_ids": _ids}))})
_body = st.fixed_dictionaries(
    {"object": st.just("chat.completion"), "choices": st.lists(_choice, max_size=3)},
    optional={"usage": st.one_of(st.none(), st.fixed_dictionaries({"completion_tokens": st.integers(0, 6)})),
              "prompt_token_ids": _ids, "id": st.text(max_size=5),
              "provider_specific_fields": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"prompt_token_ids": _ids}))})


@settings(max_examples=300, deadline=None)
@given(body=_body, requested=st.booleans())
def test_any_chat_body_decodes_to_what_the_generic_parse_gives(body: dict[str, Any], requested: bool) -> None:
    raw = orjson.dumps(body)
    # every generated body is of the typed shape: a None would not unpack and so not match
    typed = _outcome(lambda: decode_chat_completion(raw, logprobs_requested=requested))
    assert typed == _outcome(lambda: _generic(raw, requested))
