"""Policies through the real proxy (`litellm --config` subprocesses, real HTTP) against local
upstreams in vLLM, OpenAI and Anthropic wire formats.

What reached each upstream is read from the fake servers' request logs; what the client got is
the HTTP response; what was stored is read back over `/rllm/sessions/{id}/traces`.

Two proxies: `drop_params: false` (the default) and `drop_params: true`; the matrix runs on both,
the rest on the first. The fake OpenAI refuses `logprobs` for reasoning models (name contains
o1 / o3 / gpt-5 / reasoning) and any unknown field such as `return_token_ids`; the fake Anthropic
refuses every unknown field: an injection that slipped through would be a 400 here.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import pytest
import yaml

from litellm_rllm.policy import sample_hit
from litellm_rllm.slug import encode
from tests.support import harness

INJECTABLE = ("logprobs", "top_logprobs", "return_token_ids", "prompt_logprobs")

POLICIES: dict[str, Any] = {
    "defaults": {"logprobs": "auto", "top_logprobs": 0, "return_token_ids": "auto", "sample_rate": 1.0,
                 "allow_request_override": True, "strip_from_response": True},
    "rules": [
        {"name": "locked", "match": {"model": "locked"}, "logprobs": True, "return_token_ids": True,
         "allow_request_override": False},
        {"name": "keep", "match": {"model": "keep"}, "logprobs": True, "top_logprobs": 2, "return_token_ids": True,
         "strip_from_response": False},
        {"name": "quarter", "match": {"model": "sampled"}, "logprobs": True, "return_token_ids": True,
         "sample_rate": 0.25},
        {"name": "prompt-lp", "match": {"model": "prompt-lp"}, "logprobs": True, "return_token_ids": True,
         "prompt_logprobs": 1},
        {"name": "trained-policy", "match": {"provider": "hosted_vllm"}, "logprobs": True, "top_logprobs": 2,
         "return_token_ids": True},
        # Asks for what Anthropic refuses: must be skipped, never sent.
        {"name": "no-logprobs-providers", "match": {"provider": "anthropic"}, "logprobs": True,
         "return_token_ids": True},
        {"name": "expensive-teachers", "match": {"provider": "openai", "min_output_cost_per_mtok": 5.0},
         "logprobs": True, "top_logprobs": 3},
        # return_token_ids: true on OpenAI must be skipped; reasoning models must get no logprobs.
        {"name": "openai-everything", "match": {"provider": "openai"}, "logprobs": True, "top_logprobs": 1,
         "return_token_ids": True},
    ],
}


def extra_models(urls: dict[str, str]) -> list[dict[str, Any]]:
    def openai(name: str, model: str, **info: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"model_name": name, "litellm_params": {
            "model": f"openai/{model}", "api_base": urls["openai"], "api_key": "sk-fake-openai-key"}}
        if info:
            entry["model_info"] = info
        return entry

    def vllm(name: str) -> dict[str, Any]:
        return {"model_name": name, "litellm_params": {"model": "hosted_vllm/policy", "api_base": urls["vllm"],
                                                       "api_key": "fake-vllm-key"}}

    return [
        openai("teacher-4o", "gpt-4o"),  # $10 / M output tokens: the expensive band
        # Reasoning models: litellm 1.108.5 thinks o1-mini and gpt-5-chat-latest accept logprobs.
        openai("reasoner-o1-mini", "o1-mini"),
        openai("reasoner-o3-mini", "o3-mini"),
        openai("reasoner-gpt-5-chat", "gpt-5-chat-latest"),
        openai("reasoner-custom", "acme-reasoning-large"),  # unknown to litellm entirely
        # One group over a vLLM and an OpenAI deployment.
        vllm("mixed"),
        openai("mixed", "gpt-4o-mini"),
        vllm("locked"),
        vllm("keep"),
        vllm("sampled"),
        vllm("prompt-lp"),
    ]


# (model group, upstream, what must reach it, rule, what the trace reports as skipped)
MATRIX = [
    ("policy", "vllm", {"logprobs": True, "top_logprobs": 2, "return_token_ids": True}, "trained-policy", set()),
    ("teacher", "openai", {"logprobs": True, "top_logprobs": 1}, "openai-everything", {"return_token_ids"}),
    ("teacher-4o", "openai", {"logprobs": True, "top_logprobs": 3}, "expensive-teachers", set()),
    ("claude", "anthropic", {}, "no-logprobs-providers", {"logprobs", "return_token_ids"}),
    ("reasoner-o1-mini", "openai", {}, "openai-everything", {"logprobs", "return_token_ids"}),
    ("reasoner-o3-mini", "openai", {}, "openai-everything", {"logprobs", "return_token_ids"}),
    ("reasoner-gpt-5-chat", "openai", {}, "expensive-teachers", {"logprobs"}),
    ("reasoner-custom", "openai", {}, "openai-everything", {"logprobs", "return_token_ids"}),
]


class Gateway:
    def __init__(self, proc: harness.ProxyProcess, folder: Path, drop_params: bool) -> None:
        self.proc, self.folder, self.drop_params = proc, folder, drop_params
        self.http = httpx.Client(base_url=proc.base_url, headers=harness.auth(), timeout=60)
        self.policies_path = folder / "policies.yaml"

    def chat(self, model: str, content: str = "hi", *, session: Optional[str] = None,
             sampling: Optional[dict[str, Any]] = None, call_id: Optional[str] = None,
             **body: Any) -> tuple[str, httpx.Response]:
        """POST /meta/{slug}/v1/chat/completions; returns (session id, response)."""
        sid = session or f"pp-{uuid.uuid4().hex[:12]}"
        meta: dict[str, Any] = {"session_id": sid}
        if sampling is not None:
            meta["sampling"] = sampling
        headers = {"x-litellm-call-id": call_id} if call_id else {}
        resp = self.http.post(f"/meta/{encode(meta)}/v1/chat/completions", headers=headers,
                              json={"model": model, "messages": [{"role": "user", "content": content}], **body})
        return sid, resp

    def traces(self, session: str) -> list[dict[str, Any]]:
        resp = self.http.get(f"/rllm/sessions/{session}/traces")
        assert resp.status_code == 200, resp.text
        return resp.json()["traces"]

    def trace(self, session: str) -> dict[str, Any]:
        [t] = self.traces(session)
        return t


def start_gateway(folder: Path, urls: dict[str, str], drop_params: bool) -> Iterator[Gateway]:
    config = harness.write_config(folder, upstreams=urls, store_url=f"sqlite:///{folder / 'traces.db'}",
                                  policies=POLICIES, litellm_settings={"drop_params": drop_params})
    data = yaml.safe_load(config.read_text())
    data["model_list"] += extra_models(urls)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with harness.ProxyProcess(config) as proc:
        gw = Gateway(proc, folder, drop_params)
        yield gw
        gw.http.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream_urls) -> Iterator[Gateway]:
    yield from start_gateway(tmp_path_factory.mktemp("policy-proxy"), upstream_urls, drop_params=False)


@pytest.fixture(scope="module")
def gateway_drop(tmp_path_factory, upstream_urls) -> Iterator[Gateway]:
    yield from start_gateway(tmp_path_factory.mktemp("policy-proxy-drop"), upstream_urls, drop_params=True)


@pytest.fixture
def ups(vllm_upstream, openai_upstream, anthropic_upstream) -> dict[str, Any]:
    """The fake upstreams, request logs cleared for this test."""
    return {"vllm": vllm_upstream, "openai": openai_upstream, "anthropic": anthropic_upstream}


def sent_to(ups: dict[str, Any], content: str) -> tuple[str, dict[str, Any]]:
    """(upstream kind, request body) of the one upstream request carrying `content`."""
    found = []
    for kind, up in ups.items():
        for req in up.requests:
            if content in json.dumps(req["json"]):
                found.append((kind, req["json"]))
    assert len(found) == 1, found
    return found[0]


def injected_params(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in INJECTABLE if body.get(k) is not None}


def sse_chunks(resp: httpx.Response) -> list[dict[str, Any]]:
    out = []
    for line in resp.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def assert_nothing_added_for_client(body: dict[str, Any], stream: bool) -> None:
    items = body if stream else [body]
    for item in items:
        assert item.get("prompt_token_ids") is None
        for ch in item.get("choices") or []:
            assert ch.get("logprobs") is None, ch
            assert ch.get("token_ids") is None and ch.get("prompt_token_ids") is None, ch
            msg = ch.get("message") or ch.get("delta") or {}
            assert msg.get("token_ids") is None
            assert "token_ids" not in json.dumps(ch.get("provider_specific_fields") or {})


# ---------------------------------------------------------------------------------------------
# The matrix: what reached the upstream matches the policy, nothing fails, on both drop_params
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["gateway", "gateway_drop"], ids=["drop_params=false", "drop_params=true"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("model, upstream, expected, rule, skipped", MATRIX, ids=[m[0] for m in MATRIX])
def test_matrix_upstream_gets_exactly_what_the_policy_says(request, ups, which, stream, model, upstream,
                                                          expected, rule, skipped):
    gw: Gateway = request.getfixturevalue(which)
    content = f"matrix {uuid.uuid4().hex}"
    sid, resp = gw.chat(model, content, stream=stream)
    assert resp.status_code == 200, resp.text  # an injection never turns a good request into an error

    kind, body = sent_to(ups, content)
    assert kind == upstream
    assert injected_params(body) == expected
    if upstream == "anthropic":
        assert not set(INJECTABLE) & set(body)

    assert_nothing_added_for_client(sse_chunks(resp) if stream else resp.json(), stream)

    trace = gw.trace(sid)
    assert trace["status"] == "ok"
    injected = dict(trace["injected"])
    assert injected.pop("rule") == rule
    assert set(injected.pop("skipped", {})) == skipped
    assert injected == expected
    choice = trace["choices"][0]
    if expected.get("logprobs"):
        assert choice["logprobs"] and len(choice["logprobs"]) == trace["usage"]["completion_tokens"]
    if expected.get("return_token_ids"):
        assert choice["token_ids"] and trace["prompt_token_ids"]


def test_anthropic_messages_route_and_legacy_completions_never_fail(gateway, ups):
    """/v1/messages to Anthropic and to vLLM, /v1/completions to vLLM (where `logprobs` is a count)."""
    for model, upstream, expected in [
        ("claude", "anthropic", {}),
        ("policy", "vllm", {"logprobs": True, "top_logprobs": 2, "return_token_ids": True}),
    ]:
        for stream in (False, True):
            content = f"messages {uuid.uuid4().hex}"
            resp = gateway.http.post("/v1/messages", json={"model": model, "max_tokens": 64, "stream": stream,
                                                           "messages": [{"role": "user", "content": content}]})
            assert resp.status_code == 200, resp.text
            kind, body = sent_to(ups, content)
            assert (kind, injected_params(body)) == (upstream, expected)

    content = f"complete {uuid.uuid4().hex}"
    sid = f"pp-{uuid.uuid4().hex[:12]}"
    resp = gateway.http.post(f"/meta/{encode({'session_id': sid})}/v1/completions",
                             json={"model": "policy", "prompt": content})
    assert resp.status_code == 200, resp.text
    kind, body = sent_to(ups, content)
    assert injected_params(body) == {"logprobs": 2, "return_token_ids": True}  # 2 alternatives, no top_logprobs
    assert_nothing_added_for_client(resp.json(), stream=False)
    trace = gateway.trace(sid)
    assert trace["injected"] == {"logprobs": 2, "return_token_ids": True, "rule": "trained-policy"}
    assert trace["choices"][0]["logprobs"] and trace["choices"][0]["token_ids"]  # the trace keeps them

    content = f"complete {uuid.uuid4().hex}"
    resp = gateway.http.post("/v1/completions", json={"model": "policy", "prompt": content, "stream": True})
    assert resp.status_code == 200, resp.text
    _, body = sent_to(ups, content)
    assert injected_params(body) == {"logprobs": 2, "return_token_ids": True}
    chunks = sse_chunks(resp)
    assert chunks
    assert_nothing_added_for_client(chunks, stream=True)


def test_prompt_logprobs_for_vllm_only_without_stream_and_hidden_from_the_client(gateway, ups):
    sid, resp = gateway.chat("prompt-lp")
    assert resp.status_code == 200, resp.text
    [req] = ups["vllm"].requests
    assert injected_params(req["json"]) == {"logprobs": True, "return_token_ids": True, "prompt_logprobs": 1}
    assert resp.json().get("prompt_logprobs") is None
    assert_nothing_added_for_client(resp.json(), stream=False)
    assert gateway.trace(sid)["injected"]["prompt_logprobs"] == 1

    ups["vllm"].clear()
    sid, resp = gateway.chat("prompt-lp", stream=True)  # vLLM refuses prompt_logprobs with stream
    assert resp.status_code == 200, resp.text
    [req] = ups["vllm"].requests
    assert injected_params(req["json"]) == {"logprobs": True, "return_token_ids": True}
    assert "stream" in gateway.trace(sid)["injected"]["skipped"]["prompt_logprobs"]


def test_responses_route_gets_the_policy_in_the_responses_api_names(gateway, ups):
    """/v1/responses takes logprobs as an `include` item plus `top_logprobs`, and vLLM's token
    ids via `enable_response_messages`; the client that asked for none of it sees none of it."""
    expected = {
        "policy": ("vllm", 2, True),  # trained-policy: logprobs, top 2, token ids
        "teacher": ("openai", 1, None),  # openai-everything: token ids skipped on OpenAI
    }
    for model, (upstream, top, messages) in expected.items():
        sid = f"resp-{model}-{uuid.uuid4().hex[:6]}"
        resp = gateway.http.post(f"/meta/{encode({'session_id': sid})}/v1/responses",
                                 json={"model": model, "input": "hello responses"})
        assert resp.status_code == 200, resp.text
        [req] = ups[upstream].requests
        body = req["json"]
        assert req["path"] == "/v1/responses"
        assert body["include"] == ["message.output_text.logprobs"] and body["top_logprobs"] == top
        assert body.get("enable_response_messages") is messages
        assert "logprobs" not in body and "return_token_ids" not in body
        client = resp.json()
        assert client.get("output_messages") is None and client.get("input_messages") is None
        # what the upstream echoes to a client that asked for nothing: vLLM null, OpenAI 0
        assert client["top_logprobs"] == (None if upstream == "vllm" else 0)
        assert all(not part.get("logprobs") for item in client["output"] for part in item.get("content") or [])
        trace = gateway.trace(sid)
        assert trace["choices"][0]["logprobs"]  # the trace keeps them
        assert bool(trace["choices"][0]["token_ids"]) is bool(messages)
        # `injected` says what was sent, in the Responses API's names
        sent = {"include": ["message.output_text.logprobs"], "top_logprobs": top}
        if messages:
            sent["enable_response_messages"] = True
        assert {k: v for k, v in trace["injected"].items() if k not in ("rule", "skipped")} == sent
        ups[upstream].clear()


# ---------------------------------------------------------------------------------------------
# One model group over a vLLM and an OpenAI deployment
# ---------------------------------------------------------------------------------------------


def test_load_balanced_group_gets_the_parameters_of_the_deployment_it_went_to(gateway, ups):
    by_kind: dict[str, int] = {"vllm": 0, "openai": 0}
    for i in range(24):  # P(all 24 on one deployment) = 2 * 0.5**24
        content = f"mixed {i} {uuid.uuid4().hex}"
        sid, resp = gateway.chat("mixed", content, stream=bool(i % 2))
        assert resp.status_code == 200, resp.text
        kind, body = sent_to(ups, content)
        by_kind[kind] += 1
        trace = gateway.trace(sid)
        if kind == "vllm":
            assert injected_params(body) == {"logprobs": True, "top_logprobs": 2, "return_token_ids": True}
            assert (trace["provider"], trace["injected"]["rule"]) == ("hosted_vllm", "trained-policy")
            assert trace["choices"][0]["token_ids"]
        else:
            assert injected_params(body) == {"logprobs": True, "top_logprobs": 1}
            assert (trace["provider"], trace["injected"]["rule"]) == ("openai", "openai-everything")
            assert "return_token_ids" in trace["injected"]["skipped"]
            assert trace["choices"][0]["token_ids"] is None
        assert trace["model"] == "mixed"
        assert trace["choices"][0]["logprobs"]
    assert by_kind["vllm"] and by_kind["openai"], by_kind


# ---------------------------------------------------------------------------------------------
# Strip: the client gets only what it asked for, the trace keeps everything
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_client_that_asked_receives_what_it_asked_and_no_more(gateway, ups, stream):
    sid, resp = gateway.chat("policy", stream=stream, logprobs=True)
    assert resp.status_code == 200, resp.text
    [req] = ups["vllm"].requests
    assert injected_params(req["json"]) == {"logprobs": True, "top_logprobs": 2, "return_token_ids": True}
    trace = gateway.trace(sid)
    assert trace["injected"] == {"top_logprobs": 2, "return_token_ids": True, "rule": "trained-policy"}
    assert [len(t) for t in trace["choices"][0]["top_logprobs"]] == [2] * 9
    assert trace["choices"][0]["token_ids"]

    if stream:
        chunks = sse_chunks(resp)
        entries = [e for c in chunks for ch in c["choices"] if ch.get("logprobs")
                   for e in ch["logprobs"]["content"]]
        assert not any(ch.get("token_ids") for c in chunks for ch in c["choices"])
    else:
        choice = resp.json()["choices"][0]
        entries = choice["logprobs"]["content"]
        assert choice.get("token_ids") is None and resp.json().get("prompt_token_ids") is None
    assert entries, "the client asked for logprobs"
    assert all(e["top_logprobs"] == [] for e in entries)  # alternatives were the plugin's idea


def test_client_that_asked_for_everything_receives_everything(gateway, ups):
    sid, resp = gateway.chat("policy", logprobs=True, top_logprobs=2, return_token_ids=True)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2
    choice = body["choices"][0]
    # LiteLLM serializes vLLM's choice-level token_ids under provider_specific_fields.
    assert choice.get("token_ids") or choice["provider_specific_fields"]["token_ids"]
    assert body["prompt_token_ids"]
    assert gateway.trace(sid)["injected"] == {"rule": "trained-policy"}  # nothing was added


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_strip_from_response_false_leaves_the_fields_in(gateway, ups, stream):
    sid, resp = gateway.chat("keep", stream=stream)
    assert resp.status_code == 200, resp.text
    if stream:
        chunks = sse_chunks(resp)
        lp = [e for c in chunks for ch in c["choices"] if ch.get("logprobs") for e in ch["logprobs"]["content"]]
        ids = [i for c in chunks for ch in c["choices"] for i in (ch.get("token_ids") or [])]
    else:
        choice = resp.json()["choices"][0]
        lp = choice["logprobs"]["content"]
        ids = choice.get("token_ids") or choice["provider_specific_fields"]["token_ids"]
        assert resp.json().get("prompt_token_ids")
    assert lp and all(len(e["top_logprobs"]) == 2 for e in lp)
    assert ids
    assert gateway.trace(sid)["injected"]["rule"] == "keep"


# ---------------------------------------------------------------------------------------------
# Per-request overrides from the slug's `sampling`
# ---------------------------------------------------------------------------------------------


def test_override_allowed_changes_what_is_sent(gateway, ups):
    sid, resp = gateway.chat("policy", sampling={"logprobs": False, "return_token_ids": False})
    assert resp.status_code == 200, resp.text
    [req] = ups["vllm"].requests
    assert injected_params(req["json"]) == {}
    assert gateway.trace(sid)["injected"] == {"rule": "trained-policy",
                                              "override": {"logprobs": False, "return_token_ids": False}}

    ups["vllm"].clear()
    sid, resp = gateway.chat("policy", sampling={"top_logprobs": 5})
    assert resp.status_code == 200, resp.text
    [req] = ups["vllm"].requests
    assert injected_params(req["json"]) == {"logprobs": True, "top_logprobs": 5, "return_token_ids": True}
    assert resp.json()["choices"][0].get("logprobs") is None  # still the plugin's, still stripped
    trace = gateway.trace(sid)
    assert trace["injected"]["top_logprobs"] == 5 and "override_refused" not in trace["injected"]
    assert [len(t) for t in trace["choices"][0]["top_logprobs"]] == [5] * 9


def test_override_refused_is_recorded_in_the_trace(gateway, ups):
    sid, resp = gateway.chat("locked", sampling={"logprobs": False, "return_token_ids": False})
    assert resp.status_code == 200, resp.text
    [req] = ups["vllm"].requests
    assert injected_params(req["json"]) == {"logprobs": True, "return_token_ids": True}  # the rule's values
    assert gateway.trace(sid)["injected"] == {
        "logprobs": True, "return_token_ids": True, "rule": "locked",
        "override": {"logprobs": False, "return_token_ids": False}, "override_refused": True}


def test_override_cannot_force_what_the_provider_refuses(gateway, ups):
    sid, resp = gateway.chat("reasoner-o1-mini", sampling={"logprobs": True, "top_logprobs": 3,
                                                            "return_token_ids": True})
    assert resp.status_code == 200, resp.text
    [req] = ups["openai"].requests
    assert injected_params(req["json"]) == {}
    assert set(gateway.trace(sid)["injected"]["skipped"]) == {"logprobs", "return_token_ids"}


# ---------------------------------------------------------------------------------------------
# sample_rate through the proxy: 0.25 over 400 calls, deterministic per call id
# ---------------------------------------------------------------------------------------------


def test_sample_rate_quarter_over_400_calls_and_same_call_ids_decide_the_same(gateway, ups):
    """The call id is LiteLLM's (`x-litellm-call-id` lets the client choose it, as a retrying
    client would). Binomial(400, 0.25): 100 +- 26 (3 sd); the exact set is `sample_hit`'s."""
    ids = [f"quarter-{i:03d}" for i in range(400)]  # fixed ids: a reproducible count (97)

    def run(call_id: str) -> tuple[str, bool]:
        _, resp = gateway.chat("sampled", f"sample {call_id}", call_id=call_id)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0].get("logprobs") is None
        return call_id, True

    def decisions(ids: list[str]) -> dict[str, bool]:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(run, ids))
        out = {}
        for req in ups["vllm"].requests:
            content = req["json"]["messages"][0]["content"]
            call_id = content.split(" ", 1)[1]
            assert call_id not in out
            params = injected_params(req["json"])
            assert params in ({}, {"logprobs": True, "return_token_ids": True})
            out[call_id] = bool(params)
        assert set(out) == set(ids)
        ups["vllm"].clear()
        return out

    first = decisions(ids)
    injected = sum(first.values())
    print(f"sample_rate 0.25: injected on {injected} of 400 calls")
    assert abs(injected - 100) <= 26, injected
    assert first == {i: sample_hit(i, 0.25) for i in ids}
    # The same call ids sent again decide the same way (every 4th id: 100 calls, hits included).
    again = ids[::4]
    assert decisions(again) == {i: first[i] for i in again}


# ---------------------------------------------------------------------------------------------
# Hot reload while serving
# ---------------------------------------------------------------------------------------------

RELOAD_INTERVAL_S = 1.0  # policies_reload_interval_s default
RELOAD_BOUND_S = RELOAD_INTERVAL_S + 2.0  # one watcher interval + slack for a loaded 2-core machine


def wait_behaviour(gateway: Gateway, ups: dict[str, Any], want: dict[str, Any], timeout: float) -> float:
    """Send calls to `policy` until the vLLM upstream receives `want`; seconds it took."""
    start = time.monotonic()
    while True:
        content = f"reload {uuid.uuid4().hex}"
        _, resp = gateway.chat("policy", content)
        assert resp.status_code == 200, resp.text
        _, body = sent_to(ups, content)
        if injected_params(body) == want:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"policy edit not in effect after {timeout}s: sent {injected_params(body)}")
        time.sleep(0.05)


def test_hot_reload_applies_edits_within_the_bound_and_ignores_broken_ones(gateway, ups):
    path = gateway.policies_path
    original = path.read_text()
    before = {"logprobs": True, "top_logprobs": 2, "return_token_ids": True}
    assert wait_behaviour(gateway, ups, before, 1) < 1

    edited = yaml.safe_load(original)
    rule = next(r for r in edited["rules"] if r["name"] == "trained-policy")
    rule.update(logprobs=False, top_logprobs=0)
    try:
        path.write_text(yaml.safe_dump(edited, sort_keys=False))
        took = wait_behaviour(gateway, ups, {"return_token_ids": True}, RELOAD_BOUND_S)
        assert took <= RELOAD_BOUND_S
        print(f"edit in effect after {took:.2f}s")

        # A broken edit: valid YAML, invalid value. Nothing changes, the error names file, line, key.
        broken = yaml.safe_dump(edited, sort_keys=False).replace("sample_rate: 0.25", "sample_rate: 4")
        assert broken != yaml.safe_dump(edited, sort_keys=False)
        path.write_text(broken)
        line = next(n for n, text in enumerate(broken.splitlines(), 1) if "sample_rate: 4" in text)
        expected_error = f"{path}:{line}: rules.2.sample_rate"
        deadline = time.monotonic() + RELOAD_BOUND_S + 2
        while expected_error not in gateway.proc.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = gateway.proc.log()
        assert expected_error in log and "keeping the last good policies" in log, log[-3000:]
        for _ in range(5):  # still the last good version, still serving
            assert wait_behaviour(gateway, ups, {"return_token_ids": True}, 0) >= 0
        # A broken YAML edit, likewise.
        path.write_text(original.replace("rules:", "rules: [", 1))
        time.sleep(RELOAD_INTERVAL_S * 2.5)
        assert wait_behaviour(gateway, ups, {"return_token_ids": True}, 0) >= 0
        assert "not valid YAML" in gateway.proc.log()
    finally:
        path.write_text(original)
    took = wait_behaviour(gateway, ups, before, RELOAD_BOUND_S)
    print(f"restore in effect after {took:.2f}s")


# ---------------------------------------------------------------------------------------------
# The adapter's view of a deployment (LiteLLM's facts, the reasoning-model deny list)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, call_type, logprobs, vllm", [
    ({"model": "hosted_vllm/policy"}, "acompletion", True, True),
    ({"model": "hosted_vllm/acme-reasoning-large"}, "acompletion", True, True),  # vLLM: any model
    ({"model": "openai/gpt-4o-mini"}, "acompletion", True, False),
    ({"model": "anthropic/claude-sonnet-4-5"}, "acompletion", False, False),
    ({"model": "openai/o1-mini"}, "acompletion", False, False),
    ({"model": "openai/o3"}, "acompletion", False, False),
    ({"model": "openai/gpt-5-chat-latest"}, "acompletion", False, False),
    ({"model": "openai/gpt-5.4"}, "acompletion", False, False),
    ({"model": "openai/ft:o4-mini-2025-04-16:acme"}, "acompletion", False, False),
    ({"model": "deepseek/deepseek-reasoner"}, "acompletion", False, False),
    ({"model": "openai/omni-moderation-latest"}, "acompletion", True, False),  # "o" + letter: not o-series
    # A custom-named Azure deployment of a reasoning model, known by LiteLLM's own `base_model`.
    ({"model": "azure/my-deployment", "model_info": {"base_model": "azure/o3-mini"}}, "acompletion", False, False),
    # An OpenAI-compatible deployment that is really vLLM.
    ({"model": "openai/my-reasoning-model", "model_info": {"rllm_backend": "vllm"}}, "acompletion", True, True),
])
def test_target_of_deployment(kwargs, call_type, logprobs, vllm):
    from litellm.types.utils import CallTypes

    from litellm_rllm.callbacks.deployment import target_of

    t = target_of(kwargs, CallTypes(call_type))
    assert ("logprobs" in t.supported_params) is logprobs
    assert t.vllm_family is vllm
    assert t.completions is False


def test_target_of_legacy_completions_and_price():
    from litellm.types.utils import CallTypes

    from litellm_rllm.callbacks.deployment import target_of

    t = target_of({"model": "hosted_vllm/policy", "metadata": {"model_group": "policy"}}, CallTypes.atext_completion)
    assert t.completions and t.model_group == "policy" and t.output_cost_per_mtok is None
    t = target_of({"model": "openai/gpt-4o", "metadata": {"model_group": "teacher-4o"}}, CallTypes.acompletion)
    assert t.output_cost_per_mtok == pytest.approx(10.0)
    t = target_of({"model": "hosted_vllm/policy", "model_info": {"output_cost_per_token": 2e-6}})
    assert t.output_cost_per_mtok == pytest.approx(2.0)
