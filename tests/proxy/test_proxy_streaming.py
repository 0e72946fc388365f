"""Streaming capture through the real in-process proxy: one complete trace per stream."""

from __future__ import annotations

import uuid

import pytest

from litellm_rllm.slug import encode
from tests.upstreams.common import sampled_logprob, tool_generation, word_id

EOS = 151645
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                           "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]

# Fields that legitimately differ between a streamed and a non-streamed call of one exchange.
VOLATILE = {"trace_id", "session_id", "seq", "order", "stream", "latency_ms", "ttft_ms", "created_at", "request", "cost_usd"}


def new_session() -> tuple[str, str]:
    sid = f"st-{uuid.uuid4().hex[:12]}"
    return sid, encode({"session_id": sid})


def comparable(trace) -> dict:
    data = trace.model_dump(mode="json", exclude=VOLATILE)
    data["usage"] = {k: data["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    for c in data["choices"]:
        if c.get("message"):
            c["message"] = {k: v for k, v in c["message"].items() if v not in (None, [], "")}
            for tc in c["message"].get("tool_calls") or []:
                tc.pop("id", None)
    return data


def run_both(proxy, **kwargs) -> tuple:
    (sid_a, slug_a), (sid_b, slug_b) = new_session(), new_session()
    proxy.openai(slug_a).chat.completions.create(**kwargs)
    stream = proxy.openai(slug_b).chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    chunks = list(stream)
    [plain] = proxy.traces(sid_a)
    [streamed] = proxy.traces(sid_b)
    return plain, streamed, chunks


def test_streamed_trace_equals_non_streamed_trace_field_by_field(proxy, vllm_upstream):
    plain, streamed, chunks = run_both(proxy, model="policy", messages=[{"role": "user", "content": "count please"}])
    assert streamed.stream is True and streamed.status == "ok"
    assert streamed.ttft_ms is not None and streamed.ttft_ms <= streamed.latency_ms
    assert comparable(streamed) == comparable(plain)
    assert streamed.prompt_token_ids == plain.prompt_token_ids and streamed.prompt_token_ids
    assert streamed.choices[0].token_ids[-1] == EOS  # the finish chunk's id, which LiteLLM drops
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message["content"]


def test_streamed_tool_call_keeps_empty_delta_ids_and_logprobs(proxy, vllm_upstream):
    kwargs = dict(model="policy", tools=TOOLS, messages=[{"role": "user", "content": "weather in Paris?"}])
    plain, streamed, _ = run_both(proxy, **kwargs)
    expected = tool_generation("get_weather").token_ids
    assert streamed.choices[0].token_ids == list(expected) == plain.choices[0].token_ids
    assert streamed.choices[0].logprobs == [sampled_logprob(0, j) for j in range(len(expected))]
    assert streamed.choices[0].finish_reason == "tool_calls"
    call = streamed.choices[0].message["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"].replace(" ", "") == '{"location":"Paris"}'
    assert streamed.choices[0].completeness.ok
    assert comparable(streamed) == comparable(plain)


def test_n_2_stream_keeps_each_choice_apart(proxy, vllm_upstream):
    plain, streamed, _ = run_both(proxy, model="policy", n=2, messages=[{"role": "user", "content": "hi"}])
    assert [c.index for c in streamed.choices] == [0, 1]
    for c in streamed.choices:
        words = [f"tok{i}#{c.index}" if c.index else f"tok{i}" for i in range(8)]
        assert c.token_ids == [word_id(w) for w in words] + [EOS]
        assert c.logprobs == [sampled_logprob(c.index, j) for j in range(9)]
    assert comparable(streamed) == comparable(plain)


def test_stream_client_that_did_not_ask_gets_no_injected_fields(proxy, vllm_upstream):
    sid, slug = new_session()
    with proxy.client.stream("POST", f"/meta/{slug}/v1/chat/completions",
                             json={"model": "policy", "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]}) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: {")]
    assert lines
    for line in lines:
        assert '"token_ids"' not in line and '"prompt_token_ids"' not in line
        assert '"logprobs": {' not in line and '"logprobs":{' not in line
    [trace] = proxy.traces(sid)
    assert trace.choices[0].token_ids and trace.choices[0].logprobs


def test_upstream_breaking_mid_stream_is_an_error_trace_with_partial_content(proxy, vllm_upstream):
    sid, slug = new_session()
    with pytest.raises(Exception):
        list(proxy.openai(slug).chat.completions.create(model="policy-break-stream", stream=True,
                                                        messages=[{"role": "user", "content": "hi"}]))
    [trace] = proxy.traces(sid)
    assert trace.status == "error"
    assert trace.choices and trace.choices[0].token_ids  # what arrived before the break


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["text", "tool-call"])
def test_stream_client_that_asked_for_token_ids_gets_every_id_the_upstream_sent(proxy, vllm_upstream, tools):
    """LiteLLM drops the prompt ids, the `delta: {}` chunks' ids and the EOS id on the way to the
    client; a client that asked gets all of them, in order, as the upstream sent them."""
    import json

    sid, slug = new_session()
    body = {"model": "policy", "stream": True, "return_token_ids": True,
            "messages": [{"role": "user", "content": "weather in Paris?" if tools else "count please"}]}
    if tools:
        body["tools"] = tools
    with proxy.client.stream("POST", f"/meta/{slug}/v1/chat/completions", json=body) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    got = [i for e in events for c in e.get("choices") or () for i in c.get("token_ids") or ()]
    prompt = [e["prompt_token_ids"] for e in events if e.get("prompt_token_ids")]
    [trace] = proxy.traces(sid)
    assert got == trace.choices[0].token_ids and got[-1] == EOS
    if tools:
        assert got == list(tool_generation("get_weather").token_ids)
    assert prompt == [trace.prompt_token_ids] and trace.prompt_token_ids
