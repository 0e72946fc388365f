"""The session read route's parameters: a bad `since` is the caller's error (400 naming it),
never a 503 "retry later" that a retrying client would repeat forever (issue 21, fault 7); and
the answer says whether the session is complete."""

from __future__ import annotations

from typing import Any

import pytest

from litellm_rllm import slug as slugs


@pytest.mark.parametrize("since", ["garbage", "2026-13-45T00:00:00Z", "9" * 10_000, "2026-01-01T00:00:00Z" + "x" * 10_000])
def test_bad_since_is_a_400_naming_the_parameter(proxy: Any, since: str) -> None:
    resp = proxy.client.get("/rllm/sessions/any/traces", params={"since": since})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "since" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("since:") and len(error["message"]) < 300  # never echoes 10 KB


def test_valid_since_reads_and_a_flushed_session_is_complete(proxy: Any) -> None:
    sid = "read-params-1"
    resp = proxy.client.post(f"/meta/{slugs.encode({'session_id': sid})}/v1/chat/completions",
                             json={"model": "policy", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    for since in ("2000-01-01T00:00:00Z", "2000-01-01T00:00:00+02:00", "2000-01-01"):
        read = proxy.client.get(f"/rllm/sessions/{sid}/traces", params={"since": since})
        assert read.status_code == 200, read.text
        body = read.json()
        assert body["count"] == 1 and body["complete"] is True and body["pending"] == 0
        assert read.headers["x-rllm-complete"] == "true" and read.headers["x-rllm-pending"] == "0"
    later = proxy.client.get(f"/rllm/sessions/{sid}/traces", params={"since": "2999-01-01T00:00:00Z"})
    assert later.status_code == 200 and later.json()["count"] == 0
