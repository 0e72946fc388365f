"""The trainer's live interface across two `litellm --config` proxies on one PostgreSQL store:
the change feed under concurrent load (exactly once, a follower restarted from its cursor),
policy versions reaching every proxy and stamping calls that straddle a bump, pauses shared
by the proxies (hold: nothing reaches the upstream, in-flight drains, held calls succeed;
reject: the official openai client's default retries carry an agent through)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any, Iterator

import httpx
import openai
import pytest
import yaml

from litellm_rllm import client as rllm
from litellm_rllm import store as store_mod
from litellm_rllm.slug import encode
from tests.support import harness
from tests.support.pg import unique_schema, with_schema

KEY = harness.MASTER_KEY
# Served names the fake vLLM reads: `slow-S` answers after S seconds.
SLOW_MODELS = {"policy-wait": "slow-5", "policy-hold": "slow-1"}


class Fleet:
    def __init__(self, procs: list[harness.ProxyProcess], store_url: str) -> None:
        self.a, self.b = procs
        self.procs = procs
        self.store_url = store_url

    def post(self, proc: harness.ProxyProcess, path: str, body: Any = None) -> httpx.Response:
        return httpx.post(proc.base_url + path, json=body, headers=harness.auth(), timeout=60)

    def get(self, proc: harness.ProxyProcess, path: str, **params: Any) -> httpx.Response:
        return httpx.get(proc.base_url + path, params=params, headers=harness.auth(), timeout=60)

    def flush(self) -> None:
        for p in self.procs:
            assert rllm.flush(p.base_url, KEY)["flushed"] is True

    def store(self) -> Any:
        return store_mod.open(self.store_url)

    def applied_everywhere(self, model: str, paused: bool = True) -> bool:
        """Every proxy's heartbeat shows the pause of `model` applied (or lifted)."""
        report = self.get(self.a, "/rllm/pause").json()
        proxies = [p for p in report["proxies"] if p["age_s"] < 3]
        return len(proxies) >= 2 and all((model in (p.get("applied") or {})) == paused for p in proxies)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, upstream_urls: dict[str, str], pg_server: Any) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleet")
    store_url = with_schema(pg_server.url(), unique_schema("fleet"))
    config = harness.write_config(folder, upstreams=upstream_urls, store_url=store_url,
                                  extra_settings={"spool_dir": "spool", "pause_hold_timeout_s": 60})
    cfg = yaml.safe_load(config.read_text())
    for name, served in SLOW_MODELS.items():
        cfg["model_list"].append({"model_name": name, "litellm_params": {
            "model": f"hosted_vllm/{served}", "api_base": upstream_urls["vllm"], "api_key": "fake-vllm-key"}})
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    procs = [harness.ProxyProcess(config) for _ in range(2)]
    try:
        for p in procs:
            p.wait_ready()
        yield Fleet(procs, store_url)
    finally:
        for p in procs:
            p.stop()


def upstream_calls(vllm_upstream: Any, served: str) -> int:
    return sum(1 for r in vllm_upstream.requests if (r.get("json") or {}).get("model") == served)


def chat(base_url: str, slug: str, model: str, content: str = "hi", timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{base_url}/meta/{slug}/v1/chat/completions", headers=harness.auth(), timeout=timeout,
                      json={"model": model, "messages": [{"role": "user", "content": content}]})


# ---------------------------------------------------------------------------- the feed under load


class FeedReader(threading.Thread):
    """`client.follow` through one proxy, small pages, until its cursor reaches `stop_at`;
    `restart_after`: close the follower after that many items and start a new one from the
    cursor it had (a trainer restarted mid-run)."""

    def __init__(self, base_url: str, limit: int, restart_after: int = 0) -> None:
        super().__init__(daemon=True)
        self.base_url, self.limit, self.restart_after = base_url, limit, restart_after
        self.items: list[dict[str, Any]] = []
        self.stop_at: int | None = None
        self.restarts = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            cursor: Any = 0
            while True:
                follower = rllm.follow(self.base_url, KEY, after=cursor, limit=self.limit, wait=1.0,
                                       stop_when_idle=True)
                restart = False
                for item in follower:
                    self.items.append(item)
                    if self.restart_after and len(self.items) == self.restart_after:
                        restart = True
                        break
                cursor = follower.cursor
                follower.close()
                if restart:
                    self.restarts += 1
                    continue
                if self.stop_at is not None and isinstance(cursor, int) and cursor >= self.stop_at:
                    return
        except BaseException as exc:  # noqa: BLE001
            self.error = exc


def test_two_proxies_1000_calls_a_follower_sees_every_trace_reward_and_finish_once(fleet: Fleet, vllm_upstream: Any) -> None:
    sessions, calls_per, concurrency = 200, 5, 10
    run = uuid.uuid4().hex[:6]
    readers = [FeedReader(fleet.a.base_url, limit=7), FeedReader(fleet.b.base_url, limit=5, restart_after=400)]
    for r in readers:
        r.start()
    served: dict[str, list[str]] = {}

    async def episode(http: httpx.AsyncClient, s: int) -> None:
        sid = f"load-{run}-{s}"
        mine, other = (fleet.a, fleet.b) if s % 2 else (fleet.b, fleet.a)
        slug = encode({"session_id": sid})
        ids = []
        for k in range(calls_per):
            resp = await http.post(f"{mine.base_url}/meta/{slug}/v1/chat/completions",
                                   json={"model": "policy", "messages": [{"role": "user", "content": f"{sid} {k}"}]})
            assert resp.status_code == 200, resp.text
            ids.append(resp.json()["id"])
        served[sid] = ids
        if s % 4 < 2:  # reward and finish through the proxy that served the calls: it orders them after its traces
            poster = mine
        else:  # through the other proxy (the store is shared), once the serving proxy's flush said its traces are in
            poster = other
            r = await http.post(f"{mine.base_url}/rllm/flush")
            assert r.status_code == 200 and r.json()["flushed"] is True, r.text
        r = await http.post(f"{poster.base_url}/rllm/sessions/{sid}/reward", json={"reward": s / 10},
                            headers={"Idempotency-Key": f"{sid}-r"})
        assert r.status_code == 201, r.text
        r = await http.post(f"{poster.base_url}/rllm/sessions/{sid}/finish", json={"reward": 1.0})
        assert r.status_code == 201, r.text

    async def load() -> None:
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(headers=harness.auth(), timeout=120,
                                     limits=httpx.Limits(max_connections=2 * concurrency)) as http:
            async def one(s: int) -> None:
                async with gate:
                    await episode(http, s)

            await asyncio.gather(*(one(s) for s in range(sessions)))

    started = time.monotonic()
    asyncio.run(load())
    elapsed = time.monotonic() - started
    fleet.flush()
    with fleet.store() as st:
        head = st.feed_head()
        every = []
        cursor = 0
        while cursor < head:
            page = st.changes(cursor, 1000)
            every += [(c.pos, c.kind) for c in page.items]
            cursor = page.next
    for r in readers:
        r.stop_at = head
    for r in readers:
        r.join(120)
        assert not r.is_alive() and r.error is None, r.error
    print(f"[feed load] {sessions * calls_per} calls in {elapsed:.1f}s; feed head {head}")
    for reader in readers:
        got = [(i["pos"], i["kind"]) for i in reader.items]
        assert got == every  # every committed item, once, in feed order: none skipped
        mine = [i for i in reader.items if str(i.get("session_id", "")).startswith(f"load-{run}-")]
        kinds = Counter(i["kind"] for i in mine)
        assert kinds == {"trace": 1000, "reward": 200, "finish": 200}
        assert len({i["trace_id"] for i in mine if i["kind"] == "trace"}) == 1000
    assert readers[1].restarts == 1
    # every session's items: its five traces in seq order, then its reward and its finish
    out_of_order = {}
    for s in range(sessions):
        one = [i for i in readers[0].items if i.get("session_id") == f"load-{run}-{s}"]
        got_order = ([i["kind"] for i in one], [i["seq"] for i in one if i["kind"] == "trace"])
        if got_order != (["trace"] * calls_per + ["reward", "finish"], list(range(calls_per))):
            out_of_order[s] = got_order
    assert not out_of_order, f"{len(out_of_order)} sessions out of order: {dict(list(out_of_order.items())[:5])}"


# ---------------------------------------------------------------------------- policy versions


def test_a_version_posted_to_one_proxy_reaches_the_other_within_a_second(fleet: Fleet) -> None:
    model = f"policy-v-{uuid.uuid4().hex[:6]}"
    assert fleet.post(fleet.a, "/rllm/policy-version", {"model": model, "version": 5}).status_code == 200
    started = time.monotonic()
    seen = harness.wait_for(lambda: fleet.get(fleet.b, "/rllm/policy-version").json()["versions"].get(model) == 5,
                            timeout=5, interval=0.02)
    assert seen and time.monotonic() - started < 1.0


def test_version_bump_with_50_calls_in_flight_stamps_every_trace_with_both_versions(fleet: Fleet, vllm_upstream: Any) -> None:
    model, served = "policy-wait", SLOW_MODELS["policy-wait"]
    run = uuid.uuid4().hex[:6]
    fleet.post(fleet.a, "/rllm/policy-version", {"model": model, "version": 100})
    assert harness.wait_for(lambda: fleet.get(fleet.b, "/rllm/policy-version").json()["versions"].get(model) == 100, 5)
    slug = {g: encode({"session_id": f"ver-{run}-{g}"}) for g in ("before", "straddle", "after")}

    def burst(group: str, n: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=lambda i=i: results[group].append(
            chat((fleet.a, fleet.b)[i % 2].base_url, slug[group], model).status_code)) for i in range(n)]
        for t in threads:
            t.start()
        return threads

    results: dict[str, list[int]] = {g: [] for g in slug}
    for t in burst("before", 4):
        t.join(60)
    straddlers = burst("straddle", 50)
    assert harness.wait_for(lambda: upstream_calls(vllm_upstream, served) == 54, timeout=20)  # all 50 upstream
    fleet.post(fleet.b, "/rllm/policy-version", {"model": model, "version": 101})
    assert harness.wait_for(lambda: fleet.get(fleet.a, "/rllm/policy-version").json()["versions"].get(model) == 101, 1)
    assert len(results["straddle"]) == 0  # both proxies have the new version; none finished yet (5 s upstream)
    after = burst("after", 6)
    for t in straddlers + after:
        t.join(60)
    assert {g: Counter(codes) for g, codes in results.items()} == {
        "before": {200: 4}, "straddle": {200: 50}, "after": {200: 6}}
    fleet.flush()
    with fleet.store() as st:
        spans = {g: Counter((t.policy_version.start, t.policy_version.end)
                            for t in st.traces(session=f"ver-{run}-{g}")) for g in slug}
        assert spans == {"before": {(100, 100): 4}, "straddle": {(100, 101): 50}, "after": {(101, 101): 6}}
        fresh = st.traces(max_staleness=0, session=None)
        assert {t.session_id for t in fresh if t.model == model} == {f"ver-{run}-after"}
        assert len(st.traces(session=f"ver-{run}-straddle", min_policy_version=101)) == 0
    body = fleet.get(fleet.b, f"/rllm/sessions/ver-{run}-straddle/traces", max_staleness=1).json()
    assert body["count"] == 50


# ---------------------------------------------------------------------------- pause


def test_hold_pause_shared_by_both_proxies_nothing_reaches_the_upstream_until_resume(fleet: Fleet, vllm_upstream: Any) -> None:
    model, served = "policy-hold", SLOW_MODELS["policy-hold"]
    slug = encode({"session_id": f"hold-{uuid.uuid4().hex[:6]}"})
    codes: list[int] = []

    def calls(n: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=lambda i=i: codes.append(
            chat((fleet.a, fleet.b)[i % 2].base_url, slug, model).status_code)) for i in range(n)]
        for t in threads:
            t.start()
        return threads

    early = calls(6)  # upstream for 1 s each when the pause comes
    assert harness.wait_for(lambda: upstream_calls(vllm_upstream, served) == 6, 20)
    try:
        assert fleet.post(fleet.a, "/rllm/pause", {"model": model, "mode": "hold"}).status_code == 200
        assert harness.wait_for(lambda: fleet.applied_everywhere(model), 5)
        flying = fleet.get(fleet.b, "/rllm/pause").json()["in_flight"].get(model, 0)
        held = calls(8)
        assert harness.wait_for(lambda: fleet.get(fleet.b, "/rllm/pause").json()["held"].get(model) == 8, 10)
        assert harness.wait_for(lambda: fleet.get(fleet.a, "/rllm/pause").json()["drained"].get(model), 10)
        report = fleet.get(fleet.b, "/rllm/pause").json()
        assert report["in_flight"].get(model, 0) == 0 and report["paused"][model]["mode"] == "hold"
        time.sleep(1.0)
        assert upstream_calls(vllm_upstream, served) == 6  # nothing held went upstream
        assert sorted(codes) == [200] * 6
    finally:
        assert fleet.post(fleet.b, "/rllm/resume", {"model": model}).json()["resumed"] == [model]
    for t in early + held:
        t.join(60)
    assert sorted(codes) == [200] * 14 and upstream_calls(vllm_upstream, served) == 14
    assert 0 < flying <= 6  # in flight when the pause came, then drained


def test_reject_pause_of_one_second_the_official_openai_client_retries_through_it(fleet: Fleet, vllm_upstream: Any) -> None:
    model = "policy"
    sid = f"reject-{uuid.uuid4().hex[:6]}"
    agent = rllm.wrap(openai.OpenAI(base_url=fleet.b.base_url + "/v1", api_key=KEY))  # default retries
    before = fleet.get(fleet.b, "/rllm/stats").json()["capture"].get("pause_rejected", 0)
    try:
        assert fleet.post(fleet.a, "/rllm/pause", {"model": model, "mode": "reject"}).status_code == 200
        assert harness.wait_for(lambda: fleet.applied_everywhere(model), 5)
        refused = httpx.post(f"{fleet.b.base_url}/v1/chat/completions", headers=harness.auth(), timeout=30,
                             json={"model": model, "messages": [{"role": "user", "content": "x"}]})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        result: dict[str, Any] = {}

        def run() -> None:
            with rllm.session(session_id=sid):
                result["resp"] = agent.chat.completions.create(model=model, messages=[{"role": "user", "content": "go"}])

        thread = threading.Thread(target=run)
        started = time.monotonic()
        thread.start()
        time.sleep(1.0)
    finally:
        fleet.post(fleet.a, "/rllm/resume", {"model": model})
    thread.join(30)
    assert result["resp"].choices[0].message.content.startswith("tok0")
    assert time.monotonic() - started < 10
    assert fleet.get(fleet.b, "/rllm/stats").json()["capture"]["pause_rejected"] >= before + 2
    fleet.flush()
    with fleet.store() as st:
        assert len(st.traces(session=sid)) == 1  # the refused attempts left no traces


def test_cli_tail_through_a_proxy_prints_an_episode_and_its_cursor(fleet: Fleet, vllm_upstream: Any) -> None:
    sid = f"tail-{uuid.uuid4().hex[:6]}"
    slug = encode({"session_id": sid})
    assert chat(fleet.a.base_url, slug, "policy").status_code == 200
    rllm.reward(fleet.b.base_url, KEY, sid, {"pass": 1})
    rllm.finish(fleet.a.base_url, KEY, sid, reward=1)
    fleet.flush()
    out = subprocess.run([sys.executable, "-m", "litellm_rllm.cli", "traces", "tail", "--proxy", fleet.b.base_url,
                          "--key", KEY, "--session", sid, "--after", "0", "--idle-exit", "1"],
                         capture_output=True, text=True, timeout=60, cwd=str(harness.REPO),
                         env=harness.proxy_env())
    assert out.returncode == 0, out.stderr
    kinds = [yaml.safe_load(line)["kind"] for line in out.stdout.splitlines()]
    assert kinds == ["trace", "reward", "finish"] and "cursor: " in out.stderr
    finished = subprocess.run([sys.executable, "-m", "litellm_rllm.cli", "traces", "tail", "--store", fleet.store_url,
                               "--finished", "--session", sid, "--after", "0", "--idle-exit", "0.5"],
                              capture_output=True, text=True, timeout=60, cwd=str(harness.REPO), env=harness.proxy_env())
    [line] = finished.stdout.splitlines()
    assert '"kind":"finish"' in line and f'"session_id":"{sid}"' in line
