"""One entry carries the end-of-call hooks (callbacks/finish.py `enroll`).

LiteLLM wraps a stream once per callback whose class has the streaming iterator hook in its own
`__dict__`, and awaits every callback's success/failure hook. With the sampling entry and the
tracer both configured only the first to enroll may carry them, or every chunk goes through two
stacks; and each entry configured alone must still carry them (strip, resp. capture).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import pytest

from litellm_rllm.slug import encode
from tests.support import harness

HOOKS = ("async_post_call_success_hook", "async_post_call_failure_hook", "async_post_call_streaming_iterator_hook")
SAMPLING = "litellm_rllm.callbacks.sampling"
TRACER = "litellm_rllm.callbacks.tracer"
EOS = 151645


def new_session() -> tuple[str, str]:
    sid = f"fh-{uuid.uuid4().hex[:12]}"
    return sid, encode({"session_id": sid})


def stream_events(client: Any, slug: Optional[str], model: str = "policy") -> list[dict[str, Any]]:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "count please"}]}
    with client.stream("POST", f"/meta/{slug}/v1/chat/completions" if slug else "/v1/chat/completions",
                       json=body) as resp:
        assert resp.status_code == 200, resp.read()
        return [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]


def assert_no_injected_fields(items: list[dict[str, Any]]) -> None:
    assert items
    for item in items:
        assert item.get("prompt_token_ids") is None
        for ch in item.get("choices") or ():
            assert ch.get("logprobs") is None and ch.get("token_ids") is None, ch
            assert "token_ids" not in json.dumps(ch.get("provider_specific_fields") or {}), ch


def upstream_asked_for_ids(vllm_upstream: Any) -> bool:
    """The chat request that reached the upstream carried what the sampling policy injects."""
    [body] = [r["json"] for r in vllm_upstream.requests if isinstance(r.get("json"), dict) and r["json"].get("messages")]
    return bool(body.get("logprobs")) and bool(body.get("return_token_ids"))


# ---------------------------------------------------------------------------------------------
# Both entries (the session's in-process proxy: metadata, sampling, tracer)
# ---------------------------------------------------------------------------------------------


def test_with_both_entries_exactly_one_class_carries_the_final_hooks(proxy):
    import litellm

    from litellm_rllm.callbacks.plugin import plugin

    entries = plugin().entries
    ours = [cb for cb in litellm.callbacks if any(cb is e for e in entries.values())]
    assert {id(entries["sampling"]), id(entries["tracer"])} <= {id(cb) for cb in ours}
    for hook in HOOKS:
        carriers = [type(cb).__name__ for cb in ours if hook in vars(type(cb))]
        assert carriers == ["SamplingPolicyCallback"], (hook, carriers)  # the first entry to enroll


def test_with_both_entries_litellm_wraps_a_stream_once_and_it_is_captured_and_stripped(proxy, vllm_upstream):
    """LiteLLM makes one `_UpstreamStreamBoundary` + enrichment layer per entry of its
    `iterator_overrides` (proxy/utils.py `async_post_call_streaming_iterator_hook`)."""
    from litellm.proxy.utils import ProxyLogging

    from litellm_rllm.callbacks.plugin import plugin

    sid, slug = new_session()
    events = stream_events(proxy.client, slug)
    entries = plugin().entries
    layers = [cb for cb, _kind in ProxyLogging.callback_capabilities().iterator_overrides
              if any(cb is e for e in entries.values())]
    assert layers == [entries["sampling"]]
    assert upstream_asked_for_ids(vllm_upstream)
    assert_no_injected_fields(events)
    [trace] = proxy.traces(sid)
    assert trace.stream is True and trace.status == "ok"
    assert trace.choices[0].token_ids[-1] == EOS and len(trace.choices[0].logprobs) == len(trace.choices[0].token_ids)
    text = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices") or ())
    assert text and text == trace.choices[0].message["content"]


def test_with_both_entries_a_plain_call_is_captured_once_and_stripped(proxy, vllm_upstream):
    sid, slug = new_session()
    resp = proxy.client.post(f"/meta/{slug}/v1/chat/completions",
                             json={"model": "policy", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    assert upstream_asked_for_ids(vllm_upstream)
    assert_no_injected_fields([resp.json()])
    [trace] = proxy.traces(sid)
    assert trace.status == "ok" and trace.choices[0].token_ids and trace.choices[0].logprobs


# ---------------------------------------------------------------------------------------------
# Each entry alone (`litellm --config` subprocesses)
# ---------------------------------------------------------------------------------------------


def start_alone(folder: Path, urls: dict[str, str], entry: str) -> Iterator[tuple[httpx.Client, str]]:
    store_url = f"sqlite:///{folder / 'traces.db'}"
    config = harness.write_config(folder, upstreams=urls, store_url=store_url, callbacks=[entry])
    with harness.ProxyProcess(config) as proc:
        with httpx.Client(base_url=proc.base_url, headers=harness.auth(), timeout=60) as http:
            yield http, store_url


@pytest.fixture(scope="module")
def sampling_alone(tmp_path_factory, upstream_urls) -> Iterator[tuple[httpx.Client, str]]:
    yield from start_alone(tmp_path_factory.mktemp("sampling-alone"), upstream_urls, SAMPLING)


@pytest.fixture(scope="module")
def tracer_alone(tmp_path_factory, upstream_urls) -> Iterator[tuple[httpx.Client, str]]:
    yield from start_alone(tmp_path_factory.mktemp("tracer-alone"), upstream_urls, TRACER)


def test_sampling_alone_strips_injected_fields_from_streams_and_plain_replies(sampling_alone, vllm_upstream):
    http, _ = sampling_alone  # without the tracer or metadata entry /meta/{slug}/ is not routed
    assert_no_injected_fields(stream_events(http, None))
    assert upstream_asked_for_ids(vllm_upstream)
    vllm_upstream.clear()
    resp = http.post("/v1/chat/completions", json={"model": "policy", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    assert upstream_asked_for_ids(vllm_upstream)
    assert_no_injected_fields([resp.json()])


def test_tracer_alone_captures_streams_plain_replies_and_failures(tracer_alone, vllm_upstream):
    http, store_url = tracer_alone
    sid, slug = new_session()
    events = stream_events(http, slug)
    resp = http.post(f"/meta/{slug}/v1/chat/completions",
                     json={"model": "policy", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    failed = http.post(f"/meta/{slug}/v1/chat/completions",
                       json={"model": "policy-fail-500", "messages": [{"role": "user", "content": "hi"}]})
    assert failed.status_code >= 500
    assert http.post("/rllm/flush").status_code == 200
    traces = harness.wait_for(lambda: len(harness.read_traces(store_url, sid)) == 3 and harness.read_traces(store_url, sid))
    assert traces, "three traces expected"
    by_status = sorted((t.stream, t.status) for t in traces)
    assert by_status == [(False, "error"), (False, "ok"), (True, "ok")]
    streamed = next(t for t in traces if t.stream)
    text = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices") or ())
    assert text and text == streamed.choices[0].message["content"]
    assert streamed.usage["completion_tokens"] == 9  # 8 words and the EOS, as the upstream counted them
