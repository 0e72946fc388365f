"""The fake upstreams speak the wire formats the capture plugin is tested against."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from litellm_rllm.demo.common import (
    EOS,
    NEWLINE,
    TOOL_CALL_END,
    TOOL_CALL_START,
    chat_prompt_token_ids,
    sampled_logprob,
    tool_generation,
    word_id,
)
from litellm_rllm.demo.vllm import FakeVLLM
from tests.upstreams.fixtures import *  # noqa: F401,F403

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
REPLY_IDS = [word_id(f"tok{j}") for j in range(8)] + [EOS]


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def chat(up: Any, http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post(up.url("/v1/chat/completions"), json={"model": "m", "messages": MESSAGES, **body})


def events(up: Any, http: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """The ``data:`` payloads of a stream, JSON-decoded ("[DONE]" kept as a string)."""
    out = []
    with http.stream("POST", up.url(path), json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def chat_stream(up: Any, http: httpx.Client, **body: Any) -> list[Any]:
    return events(up, http, "/v1/chat/completions", {"model": "m", "messages": MESSAGES, "stream": True, **body})


def is_float32(x: float) -> bool:
    return struct.unpack("<f", struct.pack("<f", x))[0] == x


# --- vLLM chat, non-streaming ---------------------------------------------------------------


def test_vllm_chat_response_carries_every_field_with_nulls(vllm_upstream, http):
    body = chat(vllm_upstream, http).json()
    assert list(body) == ["id", "object", "created", "model", "choices", "service_tier", "system_fingerprint",
                          "usage", "prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params",
                          "ec_transfer_params", "metrics"]
    assert body["prompt_token_ids"] is None and body["prompt_logprobs"] is None
    choice = body["choices"][0]
    assert list(choice) == ["index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids",
                            "routed_experts"]
    assert choice["token_ids"] is None and choice["logprobs"] is None and choice["stop_reason"] is None
    assert choice["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
    assert "tool_calls" not in choice["message"]
    prompt = len(chat_prompt_token_ids(MESSAGES))
    assert prompt == 17  # 7 per message + 3 for the generation prompt
    assert body["usage"] == {"prompt_tokens": prompt, "total_tokens": prompt + 9, "completion_tokens": 9,
                             "prompt_tokens_details": None, "completion_tokens_details": None}


def test_vllm_chat_returns_the_documented_ids_and_logprobs(vllm_upstream, http):
    body = chat(vllm_upstream, http, logprobs=True, top_logprobs=3, return_token_ids=True).json()
    assert body["prompt_token_ids"] == chat_prompt_token_ids(MESSAGES)
    assert body["prompt_token_ids"][:3] == [151644, word_id("system"), NEWLINE]
    choice = body["choices"][0]
    assert choice["token_ids"] == REPLY_IDS
    content = choice["logprobs"]["content"]
    assert [c["logprob"] for c in content] == [sampled_logprob(0, j) for j in range(9)] == \
        [-(j + 1) / 64 for j in range(9)]
    assert [c["token"] for c in content] == ["tok0"] + [f" tok{j}" for j in range(1, 8)] + ["<|im_end|>"]
    assert all(is_float32(c["logprob"]) for c in content)
    first = content[1]
    assert first["bytes"] == list(b" tok1")
    assert [t["token"] for t in first["top_logprobs"]] == [" tok1", " alt1", " alt2"]
    assert [t["logprob"] for t in first["top_logprobs"]] == [-2 / 64, -2 / 64 - 1, -2 / 64 - 2]


def test_vllm_top_logprobs_zero_gives_empty_lists(vllm_upstream, http):
    content = chat(vllm_upstream, http, logprobs=True).json()["choices"][0]["logprobs"]["content"]
    assert all(c["top_logprobs"] == [] for c in content)


def test_vllm_prompt_logprobs_start_with_null(vllm_upstream, http):
    body = chat(vllm_upstream, http, prompt_logprobs=1, return_token_ids=True).json()
    ids, lps = body["prompt_token_ids"], body["prompt_logprobs"]
    assert lps[0] is None and len(lps) == len(ids)
    assert lps[2] == {str(ids[2]): {"logprob": -3 / 64, "rank": 1, "decoded_token": "\n"}}


def test_vllm_max_tokens_cuts_the_reply_with_length(vllm_upstream, http):
    choice = chat(vllm_upstream, http, max_tokens=3, return_token_ids=True).json()["choices"][0]
    assert choice["message"]["content"] == "tok0 tok1 tok2"
    assert choice["token_ids"] == REPLY_IDS[:3]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("length", None)


def test_vllm_stop_word_sets_stop_reason_and_keeps_its_token(vllm_upstream, http):
    choice = chat(vllm_upstream, http, stop=["tok2"], return_token_ids=True).json()["choices"][0]
    assert choice["message"]["content"] == "tok0 tok1"
    assert choice["token_ids"] == REPLY_IDS[:3]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "tok2")
    by_id = chat(vllm_upstream, http, stop_token_ids=[word_id("tok1")]).json()["choices"][0]
    assert by_id["stop_reason"] == word_id("tok1")


def test_vllm_n2_choices_differ_and_are_indexed(vllm_upstream, http):
    body = chat(vllm_upstream, http, n=2, logprobs=True, return_token_ids=True).json()
    c0, c1 = body["choices"]
    assert (c0["index"], c1["index"]) == (0, 1)
    assert c1["message"]["content"].split()[0] == "tok0#1"
    assert c1["token_ids"][0] == word_id("tok0#1")
    assert c1["logprobs"]["content"][0]["logprob"] == sampled_logprob(1, 0)
    assert body["usage"]["completion_tokens"] == 18


def test_vllm_tool_call_non_streaming_is_a_tool_calls_message(vllm_upstream, http):
    body = http.post(vllm_upstream.url("/v1/chat/completions"), json={
        "model": "m", "messages": WEATHER, "tools": TOOLS, "return_token_ids": True}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("chatcmpl-tool-") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"location": "Paris"}'}
    assert choice["token_ids"] == tool_generation("get_weather").token_ids
    assert choice["token_ids"][0] == TOOL_CALL_START and choice["token_ids"][-2:] == [TOOL_CALL_END, EOS]
    assert body["prompt_token_ids"] == chat_prompt_token_ids(WEATHER, TOOLS)


def test_vllm_tool_choice_none_answers_in_text(vllm_upstream, http):
    body = http.post(vllm_upstream.url("/v1/chat/completions"), json={
        "model": "m", "messages": WEATHER, "tools": TOOLS, "tool_choice": "none"}).json()
    assert body["choices"][0]["finish_reason"] == "stop"


# --- vLLM chat, streaming -------------------------------------------------------------------


def test_vllm_stream_sends_prompt_token_ids_only_on_the_role_chunk(vllm_upstream, http):
    chunks = chat_stream(vllm_upstream, http, return_token_ids=True)
    assert chunks[-1] == "[DONE]"
    role, rest = chunks[0], chunks[1:-1]
    assert role["prompt_token_ids"] == chat_prompt_token_ids(MESSAGES)
    assert role["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}]
    assert all("prompt_token_ids" not in c for c in rest)


def test_vllm_stream_chunks_carry_only_the_fields_vllm_sets(vllm_upstream, http):
    chunks = chat_stream(vllm_upstream, http)
    assert list(chunks[0]) == ["id", "object", "created", "model", "choices", "prompt_token_ids", "prompt_text"]
    assert chunks[0]["prompt_token_ids"] is None
    middle, finish = chunks[1], chunks[-2]
    assert list(middle) == ["id", "object", "created", "model", "choices"]
    assert middle["object"] == "chat.completion.chunk"
    assert middle["choices"] == [{"index": 0, "delta": {"content": "tok0"}, "logprobs": None,
                                  "finish_reason": None, "token_ids": None}]
    assert finish["choices"][0] == {"index": 0, "delta": {"content": ""}, "logprobs": None,
                                    "finish_reason": "stop", "stop_reason": None, "token_ids": None}
    assert len({c["id"] for c in chunks[:-1]}) == 1


def test_vllm_stream_adds_up_to_the_non_streaming_answer(vllm_upstream, http):
    chunks = chat_stream(vllm_upstream, http, logprobs=True, top_logprobs=2, return_token_ids=True)
    choices = [c["choices"][0] for c in chunks[1:-1]]
    assert "".join(c["delta"]["content"] for c in choices) == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
    assert [i for c in choices for i in c["token_ids"]] == REPLY_IDS
    streamed = [e for c in choices for e in c["logprobs"]["content"]]
    whole = chat(vllm_upstream, http, logprobs=True, top_logprobs=2).json()["choices"][0]["logprobs"]["content"]
    assert streamed == whole


def test_vllm_stream_finish_chunk_carries_the_eos_token_with_empty_content(vllm_upstream, http):
    finish = chat_stream(vllm_upstream, http, logprobs=True, return_token_ids=True)[-2]["choices"][0]
    assert finish["delta"] == {"content": ""}
    assert finish["token_ids"] == [EOS]
    assert finish["logprobs"]["content"][0]["token"] == "<|im_end|>"
    assert (finish["finish_reason"], finish["stop_reason"]) == ("stop", None)


def test_vllm_stream_n2_interleaves_one_choice_per_chunk(vllm_upstream, http):
    chunks = chat_stream(vllm_upstream, http, n=2, return_token_ids=True)[:-1]
    assert all(len(c["choices"]) == 1 for c in chunks)
    indexes = [c["choices"][0]["index"] for c in chunks]
    assert indexes == [0, 1] * 10  # 2 role chunks, then 9 token steps, alternating
    assert [c["prompt_token_ids"] is not None for c in chunks[:2]] == [True, True]
    ids1 = [i for c in chunks[2:] if c["choices"][0]["index"] == 1 for i in c["choices"][0]["token_ids"]]
    assert ids1 == [word_id(f"tok{j}#1") for j in range(8)] + [EOS]


def test_vllm_stream_usage_chunk_has_empty_choices(vllm_upstream, http):
    chunks = chat_stream(vllm_upstream, http, n=2, stream_options={"include_usage": True})
    usage = chunks[-2]
    assert usage["choices"] == [] and chunks[-1] == "[DONE]"
    prompt = len(chat_prompt_token_ids(MESSAGES))
    assert usage["usage"] == {"prompt_tokens": prompt, "total_tokens": prompt + 18, "completion_tokens": 18}
    assert all("usage" not in c for c in chunks[:-2])


def test_vllm_stream_usage_follows_vllm_defaults(vllm_upstream, http):
    assert chat_stream(vllm_upstream, http, stream_options={})[-2]["choices"] == []  # include_usage defaults on
    assert chat_stream(vllm_upstream, http)[-2]["choices"] != []
    assert chat_stream(vllm_upstream, http, stream_options={"include_usage": False})[-2]["choices"] != []


def test_vllm_stream_groups_tokens_per_step_after_a_lone_first_token(start_upstream, http):
    up = start_upstream(FakeVLLM(tokens_per_step=3))
    steps = [c["choices"][0]["token_ids"] for c in chat_stream(up, http, return_token_ids=True)[1:-1]]
    assert steps == [REPLY_IDS[:1], REPLY_IDS[1:4], REPLY_IDS[4:7], REPLY_IDS[7:9]]
    by_request = chat_stream(up, http, return_token_ids=True, stream_interval=4)[1:-1]
    assert [len(c["choices"][0]["token_ids"]) for c in by_request] == [1, 4, 4]


def test_vllm_tool_call_stream_sends_empty_deltas_that_carry_ids(vllm_upstream, http):
    chunks = chat_stream(vllm_upstream, http, messages=WEATHER, tools=TOOLS, logprobs=True, return_token_ids=True)
    choices = [c["choices"][0] for c in chunks[1:-1]]
    empty = [c for c in choices if c["delta"] == {}]
    assert empty and all(c["token_ids"] and len(c["logprobs"]["content"]) == len(c["token_ids"]) for c in empty)
    assert choices[0]["delta"] == {} and choices[0]["token_ids"] == [TOOL_CALL_START]
    named = [c for c in choices if c["delta"].get("tool_calls") and "id" in c["delta"]["tool_calls"][0]]
    (first,) = named
    call = first["delta"]["tool_calls"][0]
    assert call["id"].startswith("chatcmpl-tool-") and call["type"] == "function" and call["index"] == 0
    assert call["function"] == {"name": "get_weather"}
    args = "".join(c["delta"]["tool_calls"][0]["function"].get("arguments", "")
                   for c in choices if c["delta"].get("tool_calls"))
    assert json.loads(args) == {"location": "Paris"}
    assert [i for c in choices for i in c["token_ids"]] == tool_generation("get_weather").token_ids
    assert choices[-1]["finish_reason"] == "tool_calls" and choices[-1]["token_ids"] == [EOS]


def test_vllm_tool_call_stream_skips_empty_deltas_without_ids_or_logprobs(vllm_upstream, http):
    chunks = chat_stream(vllm_upstream, http, messages=WEATHER, tools=TOOLS)
    choices = [c["choices"][0] for c in chunks[1:-1]]
    assert [c["delta"] == {} for c in choices] == [False, False, False, False, True]  # name, 3 args, finish
    assert choices[-1]["finish_reason"] == "tool_calls"
    assert all(c["token_ids"] is None for c in choices)


# --- vLLM completions -----------------------------------------------------------------------


def test_vllm_completions_use_vllm_logprobs_and_per_choice_ids(vllm_upstream, http):
    body = http.post(vllm_upstream.url("/v1/completions"), json={
        "model": "m", "prompt": "say hi", "logprobs": 2, "return_token_ids": True}).json()
    assert body["object"] == "text_completion" and "prompt_token_ids" not in body
    choice = body["choices"][0]
    assert choice["prompt_token_ids"] == [word_id("say"), word_id("hi")]
    assert choice["token_ids"] == REPLY_IDS
    lp = choice["logprobs"]
    assert list(lp) == ["text_offset", "token_logprobs", "tokens", "top_logprobs"]
    assert lp["tokens"][:2] == ["tok0", " tok1"] and lp["text_offset"][:3] == [0, 4, 9]
    assert lp["token_logprobs"] == [sampled_logprob(0, j) for j in range(9)]
    assert lp["top_logprobs"][1] == {" tok1": -2 / 64, " alt1": -2 / 64 - 1, " alt2": -2 / 64 - 2}


def test_vllm_completions_default_to_16_tokens_like_vllm(vllm_upstream, http):
    body = http.post(vllm_upstream.url("/v1/completions"), json={"model": "tokens-40", "prompt": "x"}).json()
    assert body["usage"]["completion_tokens"] == 16 and body["choices"][0]["finish_reason"] == "length"


def test_vllm_completions_stream_sends_prompt_ids_on_each_choice_first_chunk(vllm_upstream, http):
    chunks = events(vllm_upstream, http, "/v1/completions", {
        "model": "m", "prompt": [5, 6, 7], "n": 2, "stream": True, "return_token_ids": True,
        "stream_options": {"include_usage": True}})
    body = chunks[:-2]
    assert [c["choices"][0]["index"] for c in body] == [0, 1] * 9
    assert [c["choices"][0]["prompt_token_ids"] for c in body[:3]] == [[5, 6, 7], [5, 6, 7], None]
    assert all(set(c["choices"][0]) == {"index", "text", "logprobs", "finish_reason", "stop_reason",
                                        "prompt_token_ids", "token_ids"} for c in body)
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["prompt_tokens"] == 3


# --- failure injection and validation ---------------------------------------------------------


def test_fail_500_returns_a_vllm_error_body(vllm_upstream, http):
    resp = chat(vllm_upstream, http, model="hosted-fail-500")
    assert resp.status_code == 500
    assert resp.json()["error"]["type"] == "InternalServerError" and resp.json()["error"]["code"] == 500


def test_fail_400_looks_like_a_vllm_validation_error(vllm_upstream, http):
    resp = chat(vllm_upstream, http, model="fail-400")
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "Bad Request" and err["code"] == 400 and err["message"].startswith("1 validation error")


def test_vllm_rejects_what_vllm_rejects(vllm_upstream, http):
    bad = [dict(top_logprobs=2), dict(stream=True, prompt_logprobs=1), dict(stream_options={"include_usage": True}),
           dict(tools=[]), dict(logprobs=True, top_logprobs=21)]
    for params in bad:
        resp = chat(vllm_upstream, http, **params)
        assert resp.status_code == 400, params
        assert resp.json()["error"]["code"] == 400
    assert chat(vllm_upstream, http, logprobs=True, top_logprobs=20, return_token_ids=True).status_code == 200


def test_slow_delays_the_answer(vllm_upstream, http):
    start = time.monotonic()
    assert chat(vllm_upstream, http, model="slow-0.3").status_code == 200
    assert time.monotonic() - start >= 0.3


def test_drip_paces_the_stream(vllm_upstream, http):
    start = time.monotonic()
    chunks = chat_stream(vllm_upstream, http, model="drip-0.02")
    assert time.monotonic() - start >= 0.02 * (len(chunks) - 2)


def _agent_turns(up: Any, http: httpx.Client, model: str) -> list[dict[str, Any]]:
    """Three turns of a tool-using agent; returns the server's token log."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "you are an agent"}, *WEATHER]
    for follow_up in ("thanks, and tomorrow?", "ok"):
        body = chat(up, http, model=model, messages=messages, tools=TOOLS).json()
        message = body["choices"][0]["message"]
        messages.append({"role": "assistant", "content": message["content"], "tool_calls": message.get("tool_calls")})
        if message.get("tool_calls"):
            messages.append({"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "sunny 20C"})
        messages.append({"role": "user", "content": follow_up})
    chat(up, http, model=model, messages=messages, tools=TOOLS)
    return http.get(up.url("/_fake/tokens")).json()


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_template_exact_renders_the_sampled_ids_so_each_prompt_extends_the_last(vllm_upstream, http):
    log = _agent_turns(vllm_upstream, http, "template-exact")
    assert len(log) == 3 and log[0]["completion_token_ids"][0] == tool_generation("get_weather").token_ids
    for before, after in zip(log, log[1:]):
        sampled = before["prompt_token_ids"] + before["completion_token_ids"][0]
        assert after["prompt_token_ids"][: len(sampled)] == sampled


def test_template_retokenize_drifts_inside_the_sampled_region(vllm_upstream, http):
    log = _agent_turns(vllm_upstream, http, "template-retokenize")
    offsets = []
    for before, after in zip(log, log[1:]):
        prompt = before["prompt_token_ids"]
        assert after["prompt_token_ids"][: len(prompt)] == prompt  # the earlier prompt is kept
        offsets.append(_first_difference(prompt + before["completion_token_ids"][0], after["prompt_token_ids"])
                       - len(prompt))
    assert offsets == [0, 2]  # a tool call re-rendered as words; a text with two words merged


def test_stall_delays_only_the_first_request_of_a_model(vllm_upstream, http):
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post(vllm_upstream.url("/v1/chat/completions"), json={"model": "stall-1.5", "messages": MESSAGES},
                  timeout=0.5)
    assert chat(vllm_upstream, http, model="stall-1.5").status_code == 200
    assert time.monotonic() - started < 1.2
    assert [r["path"] for r in vllm_upstream.requests] == ["/v1/chat/completions"] * 2


def test_flaky_fails_the_first_requests_then_succeeds(vllm_upstream, http):
    codes = [chat(vllm_upstream, http, model="flaky-2").status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    vllm_upstream.clear()
    assert chat(vllm_upstream, http, model="flaky-2").status_code == 500


def test_break_stream_drops_the_connection_without_done(vllm_upstream, http):
    seen = []
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", vllm_upstream.url("/v1/chat/completions"), json={
                "model": "break-stream", "messages": MESSAGES, "stream": True}) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    seen.append(line)
    assert len(seen) == 3 and all("[DONE]" not in s and "finish_reason\":\"stop" not in s for s in seen)
    with pytest.raises(httpx.RemoteProtocolError):
        chat(vllm_upstream, http, model="break-stream")
    assert chat(vllm_upstream, http).status_code == 200  # the server survives


def test_stream_error_sends_vllm_error_event_then_done(vllm_upstream, http):
    chunks = chat_stream(vllm_upstream, http, model="stream-error")
    assert chunks[-1] == "[DONE]" and chunks[-2]["error"]["code"] == 500
    assert [c for c in chunks if c == "[DONE]"] == ["[DONE]"]


def test_tokens_k_in_model_name_sets_reply_length(vllm_upstream, http):
    body = chat(vllm_upstream, http, model="tokens-3").json()
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2"


# --- request log, models, health ----------------------------------------------------------------


def test_requests_are_recorded_with_path_headers_and_json(vllm_upstream, http):
    http.get(vllm_upstream.url("/health"))
    chat(vllm_upstream, http, logprobs=True)
    (req,) = vllm_upstream.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["content-type"] == "application/json"
    assert req["json"]["logprobs"] is True
    assert http.get(vllm_upstream.url("/_fake/requests")).json() == [req]
    assert http.delete(vllm_upstream.url("/_fake/requests")).status_code == 204
    assert vllm_upstream.requests == []


def test_models_and_health_answer_like_vllm(vllm_upstream, http):
    assert http.get(vllm_upstream.url("/health")).status_code == 200
    card = http.get(vllm_upstream.url("/v1/models")).json()["data"][0]
    assert card["id"] == "fake-vllm" and card["owned_by"] == "vllm" and card["max_model_len"] == 32768


# --- OpenAI ---------------------------------------------------------------------------------


def test_openai_rejects_return_token_ids_as_unrecognized(openai_upstream, http):
    resp = chat(openai_upstream, http, model="gpt-4o-mini", return_token_ids=True)
    assert resp.status_code == 400
    assert resp.json() == {"error": {"message": "Unrecognized request argument supplied: return_token_ids",
                                     "type": "invalid_request_error", "param": None, "code": None}}
    assert openai_upstream.requests[-1]["json"]["return_token_ids"] is True


def test_openai_reasoning_models_reject_logprobs(openai_upstream, http):
    for model in ("o1-mini", "my-reasoning-model"):
        resp = chat(openai_upstream, http, model=model, logprobs=True)
        assert resp.status_code == 400
        err = resp.json()["error"]
        assert err["message"] == "Unsupported parameter: 'logprobs' is not supported with this model."
        assert (err["param"], err["code"]) == ("logprobs", "unsupported_parameter")
    assert chat(openai_upstream, http, model="o1-mini").status_code == 200


def test_openai_response_has_openai_shape_and_no_token_ids(openai_upstream, http):
    body = chat(openai_upstream, http, model="gpt-4o-mini", logprobs=True, top_logprobs=2).json()
    assert body["system_fingerprint"].startswith("fp_") and body["service_tier"] == "default"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7",
                                 "refusal": None, "annotations": []}
    assert "token_ids" not in choice and "prompt_token_ids" not in body
    content = choice["logprobs"]["content"]
    assert len(content) == 8 and choice["logprobs"]["refusal"] is None
    assert content[0] == {"token": "tok0", "logprob": -1 / 64, "bytes": list(b"tok0"),
                          "top_logprobs": [{"token": "tok0", "logprob": -1 / 64, "bytes": list(b"tok0")},
                                           {"token": " alt1", "logprob": -1 / 64 - 1, "bytes": list(b" alt1")}]}
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_openai_stream_has_null_usage_on_chunks_and_a_final_usage_chunk(openai_upstream, http):
    chunks = chat_stream(openai_upstream, http, model="gpt-4o-mini", logprobs=True,
                         stream_options={"include_usage": True})
    assert chunks[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all(c["usage"] is None and "obfuscation" in c for c in chunks[:-2])
    assert chunks[-3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["total_tokens"] > 8
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-2] if c["choices"])
    assert text == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
    assert not any("token_ids" in c["choices"][0] for c in chunks[:-2] if c["choices"])


def test_openai_tool_call_stream_starts_with_name_then_argument_fragments(openai_upstream, http):
    chunks = chat_stream(openai_upstream, http, model="gpt-4o", messages=WEATHER, tools=TOOLS)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    assert deltas[0]["tool_calls"][0]["id"].startswith("call_")
    args = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls"))
    assert json.loads(args) == {"location": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


# --- Responses API (/v1/responses) ------------------------------------------------------------

RESPONSES_INPUT = [{"role": "user", "content": "hello there"}]  # + instructions "be brief" == MESSAGES
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
LOGPROBS = ["message.output_text.logprobs"]
VLLM_RESPONSE_KEYS = [
    "id", "created_at", "incomplete_details", "instructions", "metadata", "model", "object", "output",
    "parallel_tool_calls", "temperature", "tool_choice", "tools", "top_p", "background", "max_output_tokens",
    "max_tool_calls", "previous_response_id", "prompt", "prompt_cache_options", "prompt_cache_key",
    "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "status", "text", "top_logprobs",
    "truncation", "usage", "user", "presence_penalty", "frequency_penalty", "kv_transfer_params",
    "ec_transfer_params", "input_messages", "output_messages",
]
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"] + ["response.output_text.delta"] * 8 + [
               "response.output_text.done", "response.content_part.done", "response.output_item.done",
               "response.completed"]


def respond(up: Any, http: httpx.Client, **body: Any) -> httpx.Response:
    payload = {"model": "m", "instructions": "be brief", "input": RESPONSES_INPUT}
    return http.post(up.url("/v1/responses"), json={**payload, **body})


def respond_stream(up: Any, http: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    """The events of a Responses stream; checks each ``event:`` line names its ``data`` type."""
    payload = {"model": "m", "instructions": "be brief", "input": RESPONSES_INPUT, "stream": True, **body}
    out, name = [], None
    with http.stream("POST", up.url("/v1/responses"), json=payload) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                event = json.loads(line[len("data: "):])
                assert event["type"] == name
                out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def test_vllm_responses_match_chat_ids_and_logprobs(vllm_upstream, http):
    body = respond(vllm_upstream, http, include=LOGPROBS, top_logprobs=3, enable_response_messages=True).json()
    assert list(body) == VLLM_RESPONSE_KEYS
    assert (body["object"], body["status"], body["top_logprobs"], body["tool_choice"]) == ("response", "completed", 3,
                                                                                          "none")
    assert body["id"].startswith("resp_") and body["incomplete_details"] is None
    (item,) = body["output"]
    assert item["type"] == "message" and item["id"].startswith("msg_") and item["status"] == "completed"
    (part,) = item["content"]
    assert part["type"] == "output_text" and part["text"] == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
    choice_body = chat(vllm_upstream, http, logprobs=True, top_logprobs=3, return_token_ids=True).json()
    choice = choice_body["choices"][0]
    assert part["logprobs"] == choice["logprobs"]["content"]  # same values, EOS included (key order differs)
    assert list(part["logprobs"][1]) == ["token", "bytes", "logprob", "top_logprobs"]
    (raw_in,) = body["input_messages"]
    (raw_out,) = body["output_messages"]
    assert raw_in["tokens"] == choice_body["prompt_token_ids"] == chat_prompt_token_ids(MESSAGES)
    assert raw_in["message"].startswith("<|im_start|>system\nbe brief<|im_end|>\n")
    assert raw_out == {"message": part["text"], "tokens": choice["token_ids"], "type": "raw_message_tokens"}
    assert body["usage"]["input_tokens"] == 17 and body["usage"]["output_tokens"] == 9
    assert body["usage"]["total_tokens"] == 26 and body["usage"]["input_tokens_details"]["cached_tokens"] == 0


def test_vllm_responses_without_include_have_no_logprobs_or_token_ids(vllm_upstream, http):
    body = http.post(vllm_upstream.url("/v1/responses"), json={"model": "m", "input": "hello there"}).json()
    assert body["output"][0]["content"][0]["logprobs"] is None and body["top_logprobs"] is None
    assert body["input_messages"] is None and body["output_messages"] is None
    assert body["usage"]["input_tokens"] == len(chat_prompt_token_ids([{"role": "user", "content": "hello there"}]))
    assert body["max_output_tokens"] == 32768 - body["usage"]["input_tokens"]  # vLLM's default: the rest of the context


def test_vllm_responses_stream_event_order_and_logprobs(vllm_upstream, http):
    events = respond_stream(vllm_upstream, http, include=LOGPROBS, top_logprobs=2, enable_response_messages=True)
    assert [e["type"] for e in events] == TEXT_EVENTS
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    item_id = events[2]["item"]["id"]
    assert events[2]["item"] == {"id": item_id, "content": [], "role": "assistant", "status": "in_progress",
                                 "type": "message", "phase": None}
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert all(e["item_id"] == item_id and e["content_index"] == 0 for e in deltas)
    assert "".join(e["delta"] for e in deltas) == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
    assert deltas[1]["logprobs"] == [{"token": " tok1", "logprob": -2 / 64, "top_logprobs": [
        {"token": " tok1", "logprob": -2 / 64}, {"token": " alt1", "logprob": -2 / 64 - 1}]}]
    assert events[-4]["logprobs"] == [] and events[-4]["text"] == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"] == [events[-2]["item"]]
    whole = respond(vllm_upstream, http, include=LOGPROBS, top_logprobs=2).json()["output"][0]["content"][0]
    # vLLM quirk: the EOS step has no text, emits no event, and its logprob is lost in streams
    assert final["output"][0]["content"][0]["logprobs"] == whole["logprobs"][:-1]
    assert [t for d in deltas for t in d["logprobs"]] == [
        {"token": e["token"], "logprob": e["logprob"],
         "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in e["top_logprobs"]]}
        for e in whole["logprobs"][:-1]]
    assert final["output_messages"][0]["tokens"] == REPLY_IDS  # ids (EOS included) only on the final event
    assert final["usage"]["output_tokens"] == 9


def test_vllm_responses_stream_keeps_the_eos_logprob_when_it_shares_a_step(start_upstream, http):
    up = start_upstream(FakeVLLM(tokens_per_step=4))
    events = respond_stream(up, http, include=LOGPROBS)
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert [len(d["logprobs"]) for d in deltas] == [1, 4, 4]
    assert deltas[-1]["logprobs"][-1]["token"] == "<|im_end|>"


def test_vllm_responses_tool_call(vllm_upstream, http):
    weather = {"input": "What is the weather in Paris?", "tools": RESPONSES_TOOLS}
    body = respond(vllm_upstream, http, **weather, enable_response_messages=True).json()
    (call,) = body["output"]
    assert call["type"] == "function_call" and call["status"] == "completed" and call["id"].startswith("fc_")
    assert call["call_id"].startswith("chatcmpl-tool-") and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"location": "Paris"}
    assert body["output_messages"][0]["tokens"] == tool_generation("get_weather").token_ids
    assert body["input_messages"][0]["tokens"] == chat_prompt_token_ids(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": weather["input"]}], TOOLS)
    assert body["tools"][0]["name"] == "get_weather" and body["tool_choice"] == "auto"
    events = respond_stream(vllm_upstream, http, **weather)
    types = [e["type"] for e in events]
    assert types == ["response.created", "response.in_progress", "response.output_item.added"] + [
        "response.function_call_arguments.delta"] * 3 + ["response.function_call_arguments.done",
                                                         "response.output_item.done", "response.completed"]
    added = events[2]["item"]
    assert (added["type"], added["status"], added["arguments"]) == ("function_call", "in_progress", "")
    assert events[-3]["arguments"] == '{"location": "Paris"}' and events[-3]["name"] == "get_weather"
    assert events[-1]["response"]["output"] == [events[-2]["item"]]
    assert events[-2]["item"]["call_id"] == added["call_id"]


def test_vllm_responses_render_instructions_and_input_items_like_chat(vllm_upstream, http):
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
             {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]
    body = respond(vllm_upstream, http, input=items, enable_response_messages=True).json()
    expected = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"},
                {"role": "assistant", "content": "hi", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "content": "sunny"}]
    assert body["input_messages"][0]["tokens"] == chat_prompt_token_ids(expected)


def test_vllm_responses_max_output_tokens_make_it_incomplete(vllm_upstream, http):
    body = respond(vllm_upstream, http, max_output_tokens=3).json()
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["output"][0]["content"][0]["text"] == "tok0 tok1 tok2"
    assert body["max_output_tokens"] == 3 and body["usage"]["output_tokens"] == 3
    events = respond_stream(vllm_upstream, http, max_output_tokens=3)
    assert events[-1]["type"] == "response.incomplete" and events[-2]["item"]["status"] == "incomplete"


def test_vllm_responses_reject_what_vllm_rejects(vllm_upstream, http):
    url = vllm_upstream.url("/v1/responses")
    assert http.post(url, json={"model": "m"}).status_code == 400  # no input
    for params in (dict(include=["logprobs"]), dict(include=LOGPROBS, top_logprobs=21), dict(tool_choice="required"),
                   dict(background=True)):
        resp = respond(vllm_upstream, http, **params)
        assert resp.status_code == 400, params
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    resp = respond(vllm_upstream, http, previous_response_id="resp_123")
    assert resp.status_code == 404 and resp.json()["error"]["message"] == "Response with id 'resp_123' not found."
    # unknown fields are ignored (vLLM only logs them): return_token_ids does not exist here
    assert respond(vllm_upstream, http, return_token_ids=True, logprobs=True).status_code == 200


def test_vllm_responses_failure_triggers(vllm_upstream, http):
    resp = respond(vllm_upstream, http, model="fail-503")
    assert resp.status_code == 503 and resp.json()["error"]["code"] == 503
    for model in ("break-stream", "stream-error"):  # vLLM cannot send an in-stream error here: the stream dies
        seen = []
        with pytest.raises(httpx.RemoteProtocolError):
            with http.stream("POST", vllm_upstream.url("/v1/responses"), json={
                    "model": model, "input": "hi", "stream": True}) as resp:
                for line in resp.iter_lines():
                    seen += [line] if line.startswith("data: ") else []
        assert seen and not any("response.completed" in s for s in seen)
    with pytest.raises(httpx.RemoteProtocolError):
        respond(vllm_upstream, http, model="break-stream")
    assert respond(vllm_upstream, http, model="tokens-2").json()["output"][0]["content"][0]["text"] == "tok0 tok1"
    assert [r["path"] for r in vllm_upstream.requests][-1] == "/v1/responses"


def test_responses_bodies_and_events_parse_as_openai_types(vllm_upstream, openai_upstream, http):
    from openai.types.responses import Response as OpenAIResponse
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    adapter = TypeAdapter(ResponseStreamEvent)
    for up in (vllm_upstream, openai_upstream):
        for extra in ({}, {"input": "What is the weather in Paris?", "tools": RESPONSES_TOOLS}):
            OpenAIResponse.model_validate(respond(up, http, model="gpt-4o-mini", include=LOGPROBS, **extra).json())
            for event in respond_stream(up, http, model="gpt-4o-mini", include=LOGPROBS, **extra):
                adapter.validate_python(event)


def test_openai_responses_shape_and_logprobs_match_chat(openai_upstream, http):
    body = respond(openai_upstream, http, model="gpt-4o-mini", include=LOGPROBS, top_logprobs=2).json()
    assert body["object"] == "response" and body["status"] == "completed" and body["top_logprobs"] == 2
    assert body["id"].startswith("resp_") and "input_messages" not in body
    (item,) = body["output"]
    assert list(item) == ["id", "type", "status", "content", "role"] and item["id"].startswith("msg_")
    (part,) = item["content"]
    assert list(part) == ["type", "annotations", "logprobs", "text"]
    chat_lps = chat(openai_upstream, http, model="gpt-4o-mini", logprobs=True, top_logprobs=2).json()
    assert part["logprobs"] == chat_lps["choices"][0]["logprobs"]["content"]  # no EOS on OpenAI
    assert body["usage"] == {"input_tokens": 17, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                             "output_tokens": 8,
                             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 25}
    plain = respond(openai_upstream, http, model="gpt-4o-mini").json()
    assert plain["output"][0]["content"][0]["logprobs"] == [] and plain["top_logprobs"] == 0


def test_openai_responses_refusals(openai_upstream, http):
    resp = respond(openai_upstream, http, model="gpt-4o-mini", return_token_ids=True)
    assert resp.status_code == 400
    assert resp.json() == {"error": {"message": "Unknown parameter: 'return_token_ids'.",
                                     "type": "invalid_request_error", "param": "return_token_ids",
                                     "code": "unknown_parameter"}}
    assert respond(openai_upstream, http, model="gpt-4o-mini", max_output_tokens=8).status_code == 400
    assert respond(openai_upstream, http, model="o3-mini", top_logprobs=2).status_code == 400
    assert respond(openai_upstream, http, model="gpt-4o-mini", top_logprobs=21).status_code == 400
    assert respond(openai_upstream, http, model="gpt-4o-mini-fail-429").status_code == 429


def test_openai_responses_stream(openai_upstream, http):
    events = respond_stream(openai_upstream, http, model="gpt-4o-mini", include=LOGPROBS, top_logprobs=1)
    assert [e["type"] for e in events] == TEXT_EVENTS
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert all("obfuscation" in d and len(d["logprobs"]) == 1 for d in deltas)
    assert deltas[0]["logprobs"] == [{"token": "tok0", "logprob": -1 / 64,
                                      "top_logprobs": [{"token": "tok0", "logprob": -1 / 64}]}]
    assert len(events[-1]["response"]["output"][0]["content"][0]["logprobs"]) == 8
    assert events[-1]["response"]["usage"]["output_tokens"] == 8
    quiet = respond_stream(openai_upstream, http, model="gpt-4o-mini",
                           stream_options={"include_obfuscation": False})
    assert not any("obfuscation" in e for e in quiet)
    tool = respond_stream(openai_upstream, http, model="gpt-4o", input="What is the weather in Paris?",
                          tools=RESPONSES_TOOLS)
    assert tool[2]["item"]["type"] == "function_call" and tool[2]["item"]["call_id"].startswith("call_")
    args = "".join(e["delta"] for e in tool if e["type"] == "response.function_call_arguments.delta")
    assert json.loads(args) == {"location": "Paris"} and tool[-1]["type"] == "response.completed"
    failed = respond_stream(openai_upstream, http, model="gpt-4o-mini-stream-error")
    assert failed[-1]["type"] == "response.failed" and failed[-1]["response"]["error"]["code"] == "server_error"


# --- Anthropic ------------------------------------------------------------------------------


def messages(up: Any, http: httpx.Client, **body: Any) -> httpx.Response:
    payload = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    return http.post(up.url("/v1/messages"), json={**payload, **body})


def test_anthropic_rejects_logprobs_as_extra_input(anthropic_upstream, http):
    resp = messages(anthropic_upstream, http, logprobs=True)
    assert resp.status_code == 400
    body = resp.json()
    assert body["type"] == "error" and body["request_id"].startswith("req_")
    assert body["error"] == {"type": "invalid_request_error", "message": "logprobs: Extra inputs are not permitted"}


def test_anthropic_message_shape_and_usage(anthropic_upstream, http):
    body = messages(anthropic_upstream, http, system="be brief").json()
    assert body["type"] == "message" and body["id"].startswith("msg_")
    assert body["content"] == [{"type": "text", "text": "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"}]
    assert (body["stop_reason"], body["stop_sequence"]) == ("end_turn", None)
    expected_input = len(chat_prompt_token_ids([{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "hi"}]))
    assert body["usage"]["input_tokens"] == expected_input and body["usage"]["output_tokens"] == 8
    cut = messages(anthropic_upstream, http, max_tokens=2).json()
    assert cut["stop_reason"] == "max_tokens" and cut["usage"]["output_tokens"] == 2


def test_anthropic_stream_sends_the_event_sequence(anthropic_upstream, http):
    names, datas = [], []
    with http.stream("POST", anthropic_upstream.url("/v1/messages"), json={
            "model": "claude", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as resp:
        for line in resp.iter_lines():
            if line.startswith("event: "):
                names.append(line[7:])
            elif line.startswith("data: "):
                datas.append(json.loads(line[6:]))
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 8 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert [d["type"] for d in datas] == names
    assert "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta") == \
        "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
    assert datas[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert datas[-2]["usage"] == {"output_tokens": 8}


def test_anthropic_tool_use_for_weather(anthropic_upstream, http):
    body = messages(anthropic_upstream, http, tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
                    messages=[{"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]}]).json()
    assert body["stop_reason"] == "tool_use"
    (block,) = body["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", {"location": "Paris"})


def test_anthropic_failure_triggers_use_anthropic_errors(anthropic_upstream, http):
    resp = messages(anthropic_upstream, http, model="claude-fail-529")
    assert resp.status_code == 529 and resp.json()["error"]["type"] == "overloaded_error"


# --- server lifecycle -------------------------------------------------------------------------


def test_servers_start_fast_and_stop_cleanly(start_upstream, http):
    start = time.monotonic()
    up = start_upstream(FakeVLLM())
    assert time.monotonic() - start < 2
    assert up.base_url.startswith("http://127.0.0.1:") and up.api_base == up.base_url + "/v1"
    assert chat(up, http).status_code == 200
    up.stop()
    assert not up._thread.is_alive()
    with pytest.raises(httpx.TransportError):
        httpx.get(up.url("/health"), timeout=1)


def test_standalone_process_serves_until_terminated():
    cmd = [sys.executable, "-m", "tests.upstreams.vllm", "--port", "0", "--tokens", "3"]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}) as proc:
        try:
            line = proc.stdout.readline().strip()
            assert line.startswith("READY http://127.0.0.1:")
            url = line.split()[1]
            body = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}).json()
            assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2"
            assert httpx.get(url + "/_fake/requests").json()[0]["path"] == "/v1/chat/completions"
        finally:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_a_paced_stream_records_how_far_it_got_and_whether_the_client_left(vllm_upstream):
    """What the disconnect tests read: `stream.end` is `client_gone` when the client hangs up."""
    body = {"model": "drip-0.05-tokens-100", "stream": True, "messages": MESSAGES}
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", vllm_upstream.url("/v1/chat/completions"), json=body) as resp:
            for n, _ in enumerate(resp.iter_lines()):
                if n > 6:
                    break
        client.post(vllm_upstream.url("/v1/chat/completions"), json={**body, "model": "tokens-3"})
    left, whole = vllm_upstream.requests
    assert harness_wait(lambda: left["stream"]["end"]) == "client_gone"
    assert 0 < left["stream"]["sent"] < left["stream"]["rounds"] and left["stream"]["ended_at"] > 0
    assert whole["stream"]["end"] == "complete" and whole["stream"]["sent"] == whole["stream"]["rounds"]


def harness_wait(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()
