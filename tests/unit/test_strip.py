"""Hiding injected fields from the client (`callbacks/strip.py`), without a proxy: plain dicts
as vLLM sends them and LiteLLM's own response objects, bodies and stream chunks."""

from __future__ import annotations

import copy
from typing import Any

from litellm.types.utils import ModelResponse, ModelResponseStream

from litellm_rllm.callbacks.strip import VLLM_FORMS, strip_chunk, strip_response

LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
                         "top_logprobs": [{"token": "Hi", "logprob": -0.1}, {"token": "Yo", "logprob": -2.0}]}]}


def vllm_body() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "policy",
        "prompt_token_ids": [1, 2, 3],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop",
                     "logprobs": copy.deepcopy(LOGPROBS), "token_ids": [42]}],
    }


def test_body_loses_exactly_the_injected_logprobs_and_token_ids() -> None:
    body = vllm_body()
    strip_response(body, ("logprobs", "return_token_ids"))
    assert "prompt_token_ids" not in body
    choice = body["choices"][0]
    assert choice["logprobs"] is None and "token_ids" not in choice
    assert choice["message"] == {"role": "assistant", "content": "Hi"}


def test_only_top_logprobs_injected_keeps_the_clients_logprobs_with_empty_alternatives() -> None:
    body = vllm_body()
    original = body["choices"][0]["logprobs"]
    strip_response(body, ("top_logprobs",))
    kept = body["choices"][0]["logprobs"]["content"][0]
    assert kept["logprob"] == -0.1 and kept["top_logprobs"] == []
    assert body["prompt_token_ids"] == [1, 2, 3] and body["choices"][0]["token_ids"] == [42]
    assert original["content"][0]["top_logprobs"][1]["token"] == "Yo"  # replaced, not mutated


def test_nothing_injected_changes_nothing() -> None:
    body = vllm_body()
    strip_response(body, ())
    assert body == vllm_body()


def test_litellm_response_object_loses_ids_also_from_provider_specific_fields() -> None:
    response = ModelResponse(**vllm_body())
    choice = response.choices[0]
    choice.provider_specific_fields = {"token_ids": [42], "stop_reason": None}
    strip_response(response, ("logprobs", "return_token_ids"))
    dumped = response.model_dump()
    assert "prompt_token_ids" not in dumped
    assert dumped["choices"][0].get("logprobs") is None
    assert "token_ids" not in dumped["choices"][0]
    assert "token_ids" not in (dumped["choices"][0].get("provider_specific_fields") or {})
    assert dumped["choices"][0]["message"]["content"] == "Hi"


def test_stream_chunk_dict_and_object_lose_injected_fields() -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "policy",
             "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": copy.deepcopy(LOGPROBS),
                          "token_ids": [42]}]}
    strip_chunk(chunk, ("logprobs", "return_token_ids"))
    assert chunk["choices"][0]["logprobs"] is None and "token_ids" not in chunk["choices"][0]
    obj = ModelResponseStream(id="c", model="policy",
                              choices=[{"index": 0, "delta": {"content": "Hi"}, "logprobs": LOGPROBS}])
    strip_chunk(obj, ("logprobs",))
    assert obj.choices[0].logprobs is None and obj.choices[0].delta.content == "Hi"


def test_responses_api_body_and_stream_events_lose_logprobs_and_vllm_messages() -> None:
    body = {"object": "response", "output": [{"type": "message", "content": [
        {"type": "output_text", "text": "Hi", "logprobs": [{"token": "Hi", "logprob": -0.1}]}]}],
        "input_messages": [{"tokens": [1, 2]}], "output_messages": [{"tokens": [42]}]}
    strip_response(body, ("logprobs", "return_token_ids"))
    assert body["output"][0]["content"][0]["logprobs"] == []  # OpenAI's form when not asked
    assert body["input_messages"] is None and body["output_messages"] is None  # vLLM's
    delta = {"type": "response.output_text.delta", "delta": "Hi", "logprobs": [{"token": "Hi", "logprob": -0.1}]}
    strip_chunk(delta, ("logprobs",))
    assert delta["logprobs"] == [] and delta["delta"] == "Hi"
    done = {"type": "response.completed", "response": copy.deepcopy(body) | {"output_messages": [{"tokens": [42]}]}}
    strip_chunk(done, ("return_token_ids",))
    assert done["response"]["output_messages"] is None


def test_responses_api_gets_back_what_the_upstream_sends_a_client_that_did_not_ask() -> None:
    """vLLM: null part logprobs and `top_logprobs: null`; OpenAI: `[]` and `0`."""
    def body() -> dict:
        return {"object": "response", "top_logprobs": 0, "output": [{"type": "message", "content": [
            {"type": "output_text", "text": "Hi", "logprobs": [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]}]}]}

    vllm = body()
    strip_response(vllm, ("logprobs", "top_logprobs", VLLM_FORMS))
    assert vllm["top_logprobs"] is None and vllm["output"][0]["content"][0]["logprobs"] is None
    openai = body() | {"top_logprobs": 2}
    strip_response(openai, ("logprobs", "top_logprobs"))
    assert openai["top_logprobs"] == 0 and openai["output"][0]["content"][0]["logprobs"] == []
    part_done = {"type": "response.content_part.done", "part": body()["output"][0]["content"][0]}
    strip_chunk(part_done, ("logprobs", "top_logprobs", VLLM_FORMS))
    assert part_done["part"]["logprobs"] is None


def test_responses_client_that_asked_for_logprobs_keeps_them_without_injected_alternatives() -> None:
    item = {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}, {"token": "Ho", "logprob": -2.0}]}
    body = {"object": "response", "top_logprobs": 2,
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi", "logprobs": [item]}]}]}
    strip_response(body, ("top_logprobs", VLLM_FORMS))
    assert body["output"][0]["content"][0]["logprobs"] == [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]
    assert body["top_logprobs"] is None
    assert len(item["top_logprobs"]) == 2  # replaced, not mutated: the trace's snapshot keeps them
