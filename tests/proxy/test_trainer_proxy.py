"""The trainer's live interface through the real, in-process LiteLLM proxy (SQLite store):
rewards and finishes read back with the traces, idempotent rewards, bad bodies, the change
feed (long-poll, filters), policy version stamps, the pause gate."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from litellm_rllm import store as store_mod
from litellm_rllm.slug import encode
from tests.support import harness


def new_session(**extra: Any) -> tuple[str, str]:
    sid = f"tr-{uuid.uuid4().hex[:12]}"
    return sid, encode({"session_id": sid, **extra})


def call(proxy: Any, slug: str, model: str = "policy", content: str = "hi") -> Any:
    resp = proxy.client.post(f"/meta/{slug}/v1/chat/completions",
                             json={"model": model, "messages": [{"role": "user", "content": content}]})
    assert resp.status_code == 200, resp.text
    return resp


def open_store(proxy: Any) -> Any:
    return store_mod.open(proxy.store_url)


def test_episode_of_three_calls_with_a_trace_reward_and_a_final_reward_reads_back_with_its_traces(proxy, vllm_upstream):
    sid, slug = new_session(task="t1")
    for step in range(3):
        call(proxy, slug, content=f"step {step}")
    traces = proxy.traces(sid)
    assert [t.seq for t in traces] == [0, 1, 2]
    second = traces[1].trace_id

    key = {"Idempotency-Key": f"score-{sid}"}
    first = proxy.client.post(f"/rllm/sessions/{sid}/reward", headers=key,
                              json={"reward": 0.5, "trace_id": second, "metadata": {"judge": "unit"}})
    again = proxy.client.post(f"/rllm/sessions/{sid}/reward", headers=key,
                              json={"reward": 0.5, "trace_id": second, "metadata": {"judge": "unit"}})
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert again.json()["duplicate"] is True and again.json()["reward_id"] == first.json()["reward_id"]
    done = proxy.client.post(f"/rllm/sessions/{sid}/finish", json={"reward": {"pass": 1.0, "length": -0.25},
                                                                    "metadata": {"turns": 3}})
    assert done.status_code == 201, done.text

    body = proxy.client.get(f"/rllm/sessions/{sid}/traces").json()
    assert body["count"] == 3
    [reward] = body["rewards"]  # the retried POST is not a second reward
    assert reward["trace_id"] == second and reward["reward"] == 0.5 and reward["metadata"] == {"judge": "unit"}
    assert body["finished"]["reward"] == {"pass": 1.0, "length": -0.25}
    assert body["finished"]["metadata"] == {"turns": 3}

    with open_store(proxy) as st:
        got = st.rewards(sid)
        assert [r.reward for r in got.rewards] == [0.5] and got.by_trace() == {second: got.rewards}
        assert got.session_rewards() == [] and got.final() == {"pass": 1.0, "length": -0.25}
        # the feed has the episode in commit order: three traces, the reward, the finish
        page = st.changes(0, 100, session=sid)
        assert [c.kind for c in page.items] == ["trace", "trace", "trace", "reward", "finish"]
        assert [c.trace.trace_id for c in page.items[:3]] == [t.trace_id for t in traces]

    # the rewards ride into the training rows (per call here: the fake's turns don't extend)
    rows = proxy.client.get(f"/rllm/sessions/{sid}/trajectories", params={"view": "per-call"}).json()["rows"]
    by_id = {r["trace_id"]: r for r in rows}
    assert by_id[second]["reward"] == 0.5
    assert by_id[traces[-1].trace_id]["rewards"] == {"pass": 1.0, "length": -0.25}


def test_same_idempotency_key_with_another_body_is_a_409_and_stores_nothing(proxy):
    sid = f"tr-{uuid.uuid4().hex[:8]}"
    key = {"Idempotency-Key": "k-1"}
    assert proxy.client.post(f"/rllm/sessions/{sid}/reward", headers=key, json={"reward": 1}).status_code == 201
    clash = proxy.client.post(f"/rllm/sessions/{sid}/reward", headers=key, json={"reward": 2})
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "rllm_idempotency_conflict"
    # the same key in another session is another reward
    assert proxy.client.post(f"/rllm/sessions/{sid}-b/reward", headers=key, json={"reward": 2}).status_code == 201
    with open_store(proxy) as st:
        assert [r.reward for r in st.rewards(sid).rewards] == [1.0]


def test_a_session_finishes_once_the_same_finish_again_is_a_duplicate_another_is_a_409(proxy):
    sid = f"tr-{uuid.uuid4().hex[:8]}"
    url = f"/rllm/sessions/{sid}/finish"
    assert proxy.client.post(url, json={"reward": 1}).status_code == 201
    again = proxy.client.post(url, json={"reward": 1})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert proxy.client.post(url, json={"reward": 0}).status_code == 409
    empty = f"/rllm/sessions/{sid}-empty/finish"
    assert proxy.client.post(empty).status_code == 201  # no body: the episode is over, no final reward


@pytest.mark.parametrize(("path", "body", "field"), [
    ("reward", None, "reward"),
    ("reward", {"reward": "high"}, "reward"),
    ("reward", {"reward": True}, "reward"),
    ("reward", {"reward": {}}, "reward"),
    ("reward", {"reward": {"pass": "yes"}}, "reward.pass"),
    ("reward", {"reward": 1, "trace_id": 7}, "trace_id"),
    ("reward", {"reward": 1, "metadata": [1]}, "metadata"),
    ("reward", {"reward": 1, "score": 2}, "score"),
    ("reward", [1], "body"),
    ("finish", {"reward": "done"}, "reward"),
    ("finish", {"final": 1}, "final"),
])
def test_bad_reward_and_finish_bodies_get_a_400_naming_the_field(proxy, path, body, field):
    resp = proxy.client.post(f"/rllm/sessions/tr-bad/{path}", json=body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == field and err["message"].startswith(field + ":")


def test_unparsable_bodies_infinite_rewards_and_long_keys_get_a_400_naming_the_field(proxy):
    url = "/rllm/sessions/tr-bad/reward"
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), "body"),
        (dict(content=b'{"reward": 1e999}', headers={"content-type": "application/json"}), "reward"),
        (dict(json={"reward": 1}, headers={"Idempotency-Key": "k" * 300}), "Idempotency-Key"),
    ]
    for kwargs, field in cases:
        resp = proxy.client.post(url, **kwargs)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == field, resp.text


@pytest.mark.parametrize(("method", "path", "kwargs", "field"), [
    ("post", "/rllm/policy-version", {"json": {"model": "policy"}}, "version"),
    ("post", "/rllm/policy-version", {"json": {"model": "policy", "version": -1}}, "version"),
    ("post", "/rllm/policy-version", {"json": {"model": "policy", "version": "v2"}}, "version"),
    ("post", "/rllm/policy-version", {"json": {"version": 3}}, "model"),
    ("post", "/rllm/pause", {"json": {"model": "policy", "mode": "stop"}}, "mode"),
    ("post", "/rllm/pause", {"json": {}}, "model"),
    ("post", "/rllm/resume", {"json": {"model": 5}}, "model"),
    ("get", "/rllm/changes", {"params": {"limit": 0}}, "limit"),
    ("get", "/rllm/changes", {"params": {"after": "-3"}}, "after"),
    ("get", "/rllm/changes", {"params": {"wait": "soon"}}, "wait"),
    ("get", "/rllm/changes", {"params": {"finished": "maybe"}}, "finished"),
    ("get", "/rllm/sessions/x/traces", {"params": {"max_staleness": "-1"}}, "max_staleness"),
    ("get", "/rllm/sessions/x/traces", {"params": {"min_policy_version": "new"}}, "min_policy_version"),
])
def test_bad_control_requests_get_a_400_naming_the_field(proxy, method, path, kwargs, field):
    resp = getattr(proxy.client, method)(path, **kwargs)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == field


def test_trainer_routes_need_a_key_and_admin_for_control(proxy):
    anon = {"Authorization": ""}
    assert proxy.client.post("/rllm/sessions/x/reward", json={"reward": 1}, headers=anon).status_code == 401
    assert proxy.client.get("/rllm/changes", headers=anon).status_code == 401
    assert proxy.client.post("/rllm/pause", json={"model": "m"}, headers=anon).status_code == 401


def test_feed_long_poll_returns_as_soon_as_a_call_is_stored_while_the_proxy_keeps_serving(proxy, vllm_upstream):
    sid, slug = new_session()
    head = proxy.client.get("/rllm/changes", params={"after": "now"}).json()["next"]
    got: dict[str, Any] = {}

    def follower() -> None:
        start = time.monotonic()
        got["resp"] = proxy.client.get("/rllm/changes", params={"after": head, "wait": 20, "session": sid})
        got["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=follower)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # waiting: nothing of this session yet
    call(proxy, slug)  # served while the follower waits: the wait does not hold the event loop
    thread.join(15)
    assert not thread.is_alive()
    page = got["resp"].json()
    assert [i["kind"] for i in page["items"]] == ["trace"] and page["items"][0]["session_id"] == sid
    assert page["next"] == page["items"][0]["pos"] > head
    assert got["elapsed"] < 10
    # nothing after it: an empty page after `wait`, and the cursor stays put
    start = time.monotonic()
    empty = proxy.client.get("/rllm/changes", params={"after": page["next"], "wait": 0.3, "session": sid}).json()
    assert empty == {"items": [], "next": empty["next"]} and empty["next"] >= page["next"]
    assert 0.25 < time.monotonic() - start < 5


def test_finished_feed_gives_each_ended_episode_whole(proxy, vllm_upstream):
    sid, slug = new_session()
    head = proxy.client.get("/rllm/changes", params={"after": "now"}).json()["next"]
    call(proxy, slug)
    call(proxy, slug)
    proxy.flush()
    proxy.client.post(f"/rllm/sessions/{sid}/reward", json={"reward": {"format": 1}})
    proxy.client.post(f"/rllm/sessions/{sid}/finish", json={"reward": 2.5})
    page = proxy.client.get("/rllm/changes", params={"after": head, "finished": "true", "session": sid}).json()
    [item] = page["items"]
    assert item["kind"] == "finish" and item["reward"] == 2.5
    assert [t["seq"] for t in item["traces"]] == [0, 1] and [r["reward"] for r in item["rewards"]] == [{"format": 1.0}]


def test_every_trace_is_stamped_with_the_policy_version_it_ran_under(proxy, vllm_upstream):
    sid, slug = new_session()
    model = "teacher"  # a group no other test versions
    assert proxy.client.post("/rllm/policy-version", json={"model": model, "version": 41}).status_code == 200
    assert proxy.client.get("/rllm/policy-version").json()["versions"][model] == 41
    call(proxy, slug, model=model)
    proxy.client.post("/rllm/policy-version", json={"model": model, "version": 42})
    call(proxy, slug, model=model)
    tagged = encode({"session_id": sid, "policy_version": 7})  # a trainer that tags its calls itself
    call(proxy, tagged, model=model)
    traces = proxy.traces(sid)
    assert [t.policy_version.model_dump() for t in traces] == [
        {"start": 41, "end": 41}, {"start": 42, "end": 42}, {"start": 7, "end": 7}]
    with open_store(proxy) as st:
        assert [t.seq for t in st.traces(session=sid, max_staleness=0)] == [1]
        assert [t.seq for t in st.traces(session=sid, max_staleness=1)] == [0, 1]
        assert [t.seq for t in st.traces(session=sid, min_policy_version=8)] == [0, 1]
    body = proxy.client.get(f"/rllm/sessions/{sid}/traces", params={"max_staleness": 0}).json()
    assert [t["seq"] for t in body["traces"]] == [1]


def test_held_calls_reach_the_upstream_only_after_resume_and_all_succeed(proxy, vllm_upstream):
    sid, slug = new_session()
    model = "policy-long"
    assert proxy.client.post("/rllm/pause", json={"model": model, "mode": "hold"}).status_code == 200
    results: list[int] = []
    try:
        threads = [threading.Thread(target=lambda: results.append(proxy.client.post(
            f"/meta/{slug}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}).status_code))
            for _ in range(4)]
        for t in threads:
            t.start()
        assert harness.wait_for(lambda: proxy.client.get("/rllm/pause").json()["held"].get(model) == 4, 10)
        time.sleep(0.3)
        state = proxy.client.get("/rllm/pause").json()
        assert state["in_flight"].get(model, 0) == 0 and state["drained"] == {model: True}
        assert not [r for r in vllm_upstream.requests if r["path"] == "/v1/chat/completions"]
    finally:
        assert proxy.client.post("/rllm/resume", json={"model": model}).json()["resumed"] == [model]
    for t in threads:
        t.join(30)
    assert results == [200] * 4
    assert len(proxy.traces(sid)) == 4
