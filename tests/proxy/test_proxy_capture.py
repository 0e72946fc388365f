"""Non-streaming capture through the real, in-process LiteLLM proxy."""

from __future__ import annotations

import uuid

import openai
import pytest

from litellm_rllm.slug import encode
from tests.upstreams.common import chat_prompt_token_ids, sampled_logprob, word_id

EOS = 151645


def new_session(**extra: object) -> tuple[str, str]:
    sid = f"s-{uuid.uuid4().hex[:12]}"
    return sid, encode({"session_id": sid, **extra})


def test_vllm_call_is_stored_with_session_token_ids_and_logprobs(proxy, vllm_upstream):
    sid, slug = new_session(task="math", attempt=3)
    messages = [{"role": "user", "content": "what is two plus two"}]
    resp = proxy.openai(slug).chat.completions.create(model="policy", messages=messages)
    assert resp.choices[0].message.content == " ".join(f"tok{i}" for i in range(8))

    [trace] = proxy.traces(sid)
    assert trace.session_id == sid
    assert trace.metadata == {"task": "math", "attempt": 3}
    assert trace.seq == 0
    assert trace.status == "ok"
    assert trace.model == "policy"
    assert trace.provider == "hosted_vllm"
    assert trace.route == "/v1/chat/completions"
    assert trace.prompt_token_ids == chat_prompt_token_ids(messages, None)
    [choice] = trace.choices
    expected_ids = [word_id(f"tok{i}") for i in range(8)] + [EOS]
    assert choice.token_ids == expected_ids
    assert choice.logprobs == [sampled_logprob(0, j) for j in range(9)]
    assert choice.finish_reason == "stop"
    assert choice.completeness.ok
    assert trace.usage["completion_tokens"] == 9
    assert trace.injected["logprobs"] is True and trace.injected["return_token_ids"] is True
    # what reached the upstream: the policy's injections
    sent = vllm_upstream.requests[-1]["json"]
    assert sent["logprobs"] is True and sent["return_token_ids"] is True


def test_client_that_did_not_ask_gets_no_injected_fields(proxy, vllm_upstream):
    sid, slug = new_session()
    http = proxy.client.post(f"/meta/{slug}/v1/chat/completions",
                             json={"model": "policy", "messages": [{"role": "user", "content": "hi"}]})
    assert http.status_code == 200, http.text
    body = http.json()
    assert body["choices"][0].get("logprobs") is None
    assert "token_ids" not in body["choices"][0]
    assert body.get("prompt_token_ids") is None
    [trace] = proxy.traces(sid)
    assert trace.choices[0].token_ids and trace.choices[0].logprobs and trace.prompt_token_ids


def test_client_that_asked_for_logprobs_receives_them(proxy, vllm_upstream):
    sid, slug = new_session()
    resp = proxy.openai(slug).chat.completions.create(
        model="policy", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert [c.logprob for c in content] == [sampled_logprob(0, j) for j in range(9)]
    assert len(content[0].top_logprobs) == 2
    [trace] = proxy.traces(sid)
    assert "logprobs" not in trace.injected  # the client asked itself
    assert [len(t) for t in trace.choices[0].top_logprobs] == [2] * 9


def test_all_choices_are_captured_for_n_2(proxy, vllm_upstream):
    sid, slug = new_session()
    proxy.openai(slug).chat.completions.create(model="policy", n=2, messages=[{"role": "user", "content": "hi"}])
    [trace] = proxy.traces(sid)
    assert [c.index for c in trace.choices] == [0, 1]
    for c in trace.choices:
        assert c.token_ids == [word_id(f"tok{i}#{c.index}" if c.index else f"tok{i}") for i in range(8)] + [EOS]
        assert c.logprobs == [sampled_logprob(c.index, j) for j in range(9)]


def test_header_slug_works_like_the_url_prefix(proxy, vllm_upstream):
    sid, slug = new_session(kind="header")
    http = proxy.client.post("/v1/chat/completions", headers={"x-rllm-slug": slug},
                             json={"model": "policy", "messages": [{"role": "user", "content": "hi"}]})
    assert http.status_code == 200, http.text
    [trace] = proxy.traces(sid)
    assert trace.metadata == {"kind": "header"}


def test_calls_of_a_session_get_seq_in_request_order(proxy, vllm_upstream):
    sid, slug = new_session()
    client = proxy.openai(slug)
    for i in range(4):
        client.chat.completions.create(model="policy", messages=[{"role": "user", "content": f"step {i}"}])
    traces = proxy.traces(sid)
    assert [t.seq for t in traces] == [0, 1, 2, 3]
    assert [t.request["messages"][0]["content"] for t in traces] == [f"step {i}" for i in range(4)]


def test_nested_session_traces_are_found_by_the_outer_uid(proxy, vllm_upstream):
    outer, inner = f"outer-{uuid.uuid4().hex[:8]}", f"inner-{uuid.uuid4().hex[:8]}"
    client_outer = proxy.openai(encode({"session_uids": [outer]}))
    client_inner = proxy.openai(encode({"session_uids": [outer, inner]}))
    client_outer.chat.completions.create(model="policy", messages=[{"role": "user", "content": "a"}])
    client_inner.chat.completions.create(model="policy", messages=[{"role": "user", "content": "b"}])
    assert [t.request["messages"][0]["content"] for t in proxy.traces(outer)] == ["a", "b"]
    assert [t.request["messages"][0]["content"] for t in proxy.traces(inner)] == ["b"]


def test_upstream_500_is_traced_as_error_and_client_sees_litellm_error(proxy, vllm_upstream):
    sid, slug = new_session()
    with pytest.raises(openai.InternalServerError):
        proxy.openai(slug).chat.completions.create(model="policy-fail-500",
                                                   messages=[{"role": "user", "content": "hi"}])
    [trace] = proxy.traces(sid)
    assert trace.status == "error"
    assert trace.error.status_code == 500
    assert trace.choices == []


def test_upstream_timeout_is_traced_as_error(proxy, vllm_upstream):
    sid, slug = new_session()
    with pytest.raises((openai.APITimeoutError, openai.InternalServerError, openai.APIStatusError)):
        proxy.openai(slug).chat.completions.create(model="policy-slow",
                                                   messages=[{"role": "user", "content": "hi"}])
    [trace] = proxy.traces(sid)
    assert trace.status == "error"
    assert "Timeout" in (trace.error.type or "") or "timeout" in trace.error.message.lower()


@pytest.mark.parametrize("slug, problem", [
    ("rllm2:e30", "unknown slug version"),
    ("rllm1:!!!!", "base64url"),
    ("rllm1:" + "bm90IGpzb24", "JSON"),
    ("rllm1:WzEsMl0", "object"),
    ("rllm1:" + "A" * 9000, "limit"),
])
def test_bad_slug_gets_400_and_proxy_keeps_serving(proxy, slug, problem):
    http = proxy.client.post(f"/meta/{slug}/v1/chat/completions",
                             json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
    assert http.status_code == 400
    err = http.json()["error"]
    assert err["code"] == "rllm_invalid_slug" and err["type"] == "invalid_request_error"
    assert problem.lower() in err["message"].lower()
    ok = proxy.client.post("/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200


def test_meta_prefix_serves_models_and_keeps_auth(proxy):
    _, slug = new_session()
    assert proxy.client.get(f"/meta/{slug}/v1/models").status_code == 200
    # A wrong key is refused under the prefix exactly as without it (LiteLLM's own auth runs;
    # with no database LiteLLM answers 400 rather than 401).
    wrong = {"Authorization": "Bearer sk-wrong"}
    direct = proxy.client.get("/v1/models", headers=wrong)
    prefixed = proxy.client.get(f"/meta/{slug}/v1/models", headers=wrong)
    assert direct.status_code >= 400
    assert (prefixed.status_code, prefixed.json()) == (direct.status_code, direct.json())


def test_vllm_responses_stream_gap_is_flagged_in_the_trace(proxy, vllm_upstream):
    """vLLM's Responses stream drops the EOS logprob (the ids keep it): flagged, not hidden."""
    import uuid

    from litellm_rllm.slug import encode

    sid = f"gap-{uuid.uuid4().hex[:8]}"
    with proxy.client.stream("POST", f"/meta/{encode({'session_id': sid})}/v1/responses",
                             json={"model": "policy", "input": "hello", "stream": True}) as resp:
        assert resp.status_code == 200
        list(resp.iter_lines())
    [trace] = proxy.traces(sid)
    completeness = trace.choices[0].completeness
    assert len(trace.choices[0].token_ids) == 9 and len(trace.choices[0].logprobs) == 8
    assert not completeness.ok and "9 token ids but 8 logprobs" in completeness.problems
