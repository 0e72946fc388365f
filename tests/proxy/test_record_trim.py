"""A queued call record holds only what its trace is built from, not LiteLLM's per-request
object graph: records wait up to the writer's commit interval for their batch, and whatever
they reference survives the young collections into the old generation (builder/prepare.py
`RECORD_UPSTREAM_KEYS`)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from litellm_rllm.builder.prepare import RECORD_CLIENT_KEYS, RECORD_HIDDEN_KEYS, RECORD_UPSTREAM_KEYS
from litellm_rllm.slug import encode


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from litellm_rllm.callbacks.plugin import plugin

    writer = plugin().writer
    seen: list[Any] = []
    real = writer.submit

    def spy(item: Any) -> bool:
        seen.append(item)
        return real(item)

    monkeypatch.setattr(writer, "submit", spy)
    return seen


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_queued_record_keeps_no_litellm_objects_beyond_the_trace_fields(proxy, submitted, stream):
    sid = f"trim-{uuid.uuid4().hex[:10]}"
    body = {"model": "policy", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    with proxy.client.stream("POST", f"/meta/{encode({'session_id': sid})}/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        resp.read()
    [record] = [r for r in submitted if (r.session or {}).get("session_id") == sid]
    assert record.upstream and set(record.upstream) <= RECORD_UPSTREAM_KEYS, set(record.upstream) - RECORD_UPSTREAM_KEYS
    assert "litellm_logging_obj" not in record.upstream and "metadata" not in record.upstream
    assert record.upstream["messages"] == body["messages"]
    assert set(record.client_request) <= RECORD_CLIENT_KEYS, set(record.client_request) - RECORD_CLIENT_KEYS
    assert set(record.hidden or {}) <= RECORD_HIDDEN_KEYS
    [trace] = proxy.traces(sid)  # and the trace is whole: request, provider, price
    assert trace.request["messages"] == body["messages"]
    assert trace.provider == "hosted_vllm" and trace.choices[0].token_ids
