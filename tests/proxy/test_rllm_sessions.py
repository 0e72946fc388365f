"""rLLM SDK sessions through the real proxy: found by their name and by each uid, in call order.

rLLM's SDK (`rllm` on PyPI) is not installable here, so this test sends what its
`TrackedChatClient` sends, read off its source (rllm/sdk/proxy/metadata_slug.py,
rllm/sdk/session/contextvar.py): per request the base URL becomes `/meta/{slug}/v1`
(`build_proxied_base_url`), the slug being `encode_metadata_slug` of the session's metadata plus
`session_name` (the outermost session's name, `sess_<16 hex>` unless given; nested sessions
inherit it) and `session_uids` (one `ctx_<16 hex>` per active session, outer to inner), never a
`session_id`. `litellm_rllm.slug.encode` is byte-compatible with `encode_metadata_slug`
(tests/unit/test_slug.py checks it against values computed outside Python), and
`slug.proxied_base_url` has the same layout as `build_proxied_base_url`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import openai

from litellm_rllm.slug import encode, proxied_base_url
from tests.support import harness


class RllmSessions:
    """The slug rLLM's SDK builds for the innermost active session (`assemble_routing_metadata`)."""

    def __init__(self, name: str, **metadata: Any) -> None:
        self.name, self.metadata, self.uids = name, metadata, [f"ctx_{uuid.uuid4().hex[:16]}"]

    def nested(self) -> "RllmSessions":
        inner = RllmSessions(self.name, **self.metadata)
        inner.uids = [*self.uids, f"ctx_{uuid.uuid4().hex[:16]}"]
        return inner

    def base_url(self, base: str) -> str:
        return proxied_base_url(base, encode({**self.metadata, "session_name": self.name,
                                              "session_uids": self.uids}))


def call(proxy: Any, session: RllmSessions, text: str) -> str:
    client = openai.OpenAI(base_url=session.base_url("http://testserver/v1"), api_key=harness.MASTER_KEY,
                           http_client=proxy.client, max_retries=0)
    resp = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": text}])
    return resp.id


def test_rllm_nested_session_is_found_by_name_and_each_uid_in_call_order(proxy, vllm_upstream):
    outer = RllmSessions(f"sess_{uuid.uuid4().hex[:16]}", task="gsm8k-17")
    inner = outer.nested()
    calls = [call(proxy, outer, "plan"), call(proxy, inner, "step 1"), call(proxy, inner, "step 2"),
             call(proxy, outer, "answer")]
    prompts = [r["json"]["messages"][-1]["content"] for r in vllm_upstream.requests
               if r["path"] == "/v1/chat/completions"]
    assert prompts == ["plan", "step 1", "step 2", "answer"]

    by_name = proxy.traces(outer.name)
    assert [t.request["messages"][-1]["content"] for t in by_name] == prompts  # call order
    assert [t.seq for t in by_name] == [0, 0, 1, 1]  # seq counts per innermost uid ...
    orders = [t.order for t in by_name]
    assert orders == sorted(set(orders))  # ... `order` orders the merged view
    assert all(t.session_id is None and t.metadata["session_name"] == outer.name for t in by_name)
    assert [t.trace_id for t in proxy.traces(outer.uids[0])] == [t.trace_id for t in by_name]
    assert [t.request["messages"][-1]["content"] for t in proxy.traces(inner.uids[-1])] == ["step 1", "step 2"]
    assert len(calls) == len(by_name)

    exported = subprocess.run([sys.executable, "-m", "litellm_rllm.cli", "traces", "export", "--store",
                               proxy.store_url, "--session", outer.name],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    assert [json.loads(line)["trace_id"] for line in exported] == [t.trace_id for t in by_name]
    assert [json.loads(line)["order"] for line in exported] == orders
    http = proxy.client.get(f"/rllm/sessions/{outer.name}/traces").json()
    assert [t["trace_id"] for t in http["traces"]] == [t.trace_id for t in by_name]
