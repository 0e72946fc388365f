"""Operating the plugin inside the in-process proxy: Prometheus metrics, stats, deletion."""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from litellm_rllm.slug import encode

CHAT = {"model": "policy", "messages": [{"role": "user", "content": "hi"}]}


def scrape(proxy: Any) -> dict[str, float]:
    resp = proxy.client.get("/metrics/")
    assert resp.status_code == 200, resp.text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_count_captured_written_and_per_route_calls(proxy: Any, vllm_upstream: Any) -> None:
    before = scrape(proxy)
    sid = f"metrics-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        assert proxy.client.post(f"/meta/{encode({'session_id': sid})}/v1/chat/completions",
                                 json=CHAT).status_code == 200
    assert proxy.client.post(f"/meta/{encode({'session_id': sid})}/v1/chat/completions",
                             json={**CHAT, "model": "policy-fail-500"}).status_code >= 500
    proxy.flush()
    after = scrape(proxy)

    def gained(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert gained("rllm_traces_captured_total") == 4
    assert gained("rllm_traces_written_total") == 4
    assert gained("rllm_calls_total{route=/v1/chat/completions,status=ok}") == 3
    assert gained("rllm_calls_total{route=/v1/chat/completions,status=error}") == 1
    assert after["rllm_writer_queue_depth"] == 0 and after["rllm_writer_lag_seconds"] == 0
    assert after["rllm_traces_failed_total"] == before.get("rllm_traces_failed_total", 0)
    assert "rllm_calls_in_flight" in after


def test_admin_deletes_a_session_and_its_nested_sessions(proxy: Any, vllm_upstream: Any) -> None:
    outer = f"del-{uuid.uuid4().hex[:8]}"
    for meta in ({"session_uids": [outer]}, {"session_uids": [outer, f"{outer}-inner"]}):
        assert proxy.client.post(f"/meta/{encode(meta)}/v1/chat/completions", json=CHAT).status_code == 200
    proxy.flush()
    assert len(proxy.traces(outer)) == 2
    resp = proxy.client.delete(f"/rllm/sessions/{outer}")
    assert resp.status_code == 200 and resp.json() == {"session": outer, "team": None, "deleted": 2}
    assert proxy.traces(outer) == [] and proxy.traces(f"{outer}-inner") == []
