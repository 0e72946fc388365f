"""The change feed on PostgreSQL when transactions commit in another order than they started:
a follower reading with small pages must see every committed item exactly once, never skip a
row that commits late (the classic bug of following an identity column). Real server
(tests/support/pg.py), several connections and processes."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any, Callable, Iterator

import pytest

import litellm_rllm.store as store_mod
from litellm_rllm.trace import Trace

psycopg = pytest.importorskip("psycopg")

from litellm_rllm.store.postgres import PostgresStore  # noqa: E402


@pytest.fixture()
def url(pg_fresh_url: str) -> str:
    return pg_fresh_url


@pytest.fixture()
def stores(url: str) -> Iterator[Callable[[], PostgresStore]]:
    opened: list[PostgresStore] = []

    def make() -> PostgresStore:
        st = store_mod.open(url)
        assert isinstance(st, PostgresStore)
        opened.append(st)
        return st

    yield make
    for st in opened:
        st.close()


class Follower(threading.Thread):
    """Reads the feed with `limit` items a page, as fast as it can, until stopped and caught up."""

    def __init__(self, url: str, limit: int = 1) -> None:
        super().__init__(daemon=True)
        self.url, self.limit = url, limit
        self.items: list[tuple[int, str, Any]] = []
        self.cursor = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with store_mod.open(self.url) as st:
                idle_after_done = 0
                while idle_after_done < 2:
                    page = st.changes(self.cursor, self.limit)
                    for c in page.items:
                        key = c.trace.trace_id if c.trace else (c.reward.reward_id if c.reward else c.session_id)
                        self.items.append((c.pos, c.kind, key))
                    self.cursor = page.next
                    if not page.items:
                        idle_after_done += self.done.is_set()
                        time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc


def _pause_inside(st: PostgresStore, before_feed: bool, reached: threading.Event, go: threading.Event) -> None:
    """Make `st`'s next feed append stop inside its transaction: before it takes the feed lock
    (its rows are written, its position not yet taken) or right after (position taken, not
    committed), until `go` is set."""
    real = st._feed_append

    def stalled(cur: Any, rows: Any) -> Any:
        if before_feed:
            reached.set()
            go.wait(30)
            return real(cur, rows)
        out = real(cur, rows)
        reached.set()
        go.wait(30)
        return out

    st._feed_append = stalled  # type: ignore[method-assign]


@pytest.mark.parametrize("before_feed", [True, False], ids=["stalled-before-its-position", "stalled-holding-its-position"])
def test_a_transaction_that_commits_late_is_not_skipped(url: str, stores: Any, before_feed: bool) -> None:
    slow, fast = stores(), stores()
    slow.write([Trace(trace_id="first", session_id="ep")])
    follower = Follower(url)
    follower.start()
    reached, go = threading.Event(), threading.Event()
    _pause_inside(slow, before_feed, reached, go)
    late = threading.Thread(target=lambda: slow.add_reward("ep", 1.0, idempotency_key="late"))
    late.start()
    assert reached.wait(10)  # the slow transaction holds its reward row (an earlier id) open

    committed: list[Any] = []
    writers = [threading.Thread(target=lambda i=i: committed.append(
        fast.write([Trace(trace_id=f"t{i}", session_id="ep")]) if i % 2 else fast.add_reward("ep", 2.0)))
        for i in range(6)]
    for w in writers:
        w.start()
    time.sleep(0.5)  # later transactions commit (or, behind a held position, wait for it)
    if before_feed:
        for w in writers:
            w.join(10)
        assert len(committed) == 6  # they committed before the slow one
    go.set()
    late.join(10)
    for w in writers:
        w.join(10)
    follower.done.set()
    follower.join(30)
    assert follower.error is None

    kinds = [(k, key) for _pos, k, key in follower.items]
    positions = [pos for pos, _k, _key in follower.items]
    assert positions == list(range(1, 9))  # every item once, in order, none skipped
    assert sorted(kinds, key=str) == sorted(
        [("trace", "first"), *[("trace", f"t{i}") for i in (1, 3, 5)], *[("reward", r.reward_id) for r in slow.rewards("ep").rewards]],
        key=str)
    rewards = slow.rewards("ep").rewards
    late_reward = next(r for r in rewards if r.idempotency_key == "late")
    late_pos = next(pos for pos, k, key in follower.items if k == "reward" and key == late_reward.reward_id)
    # the slow reward's row id came before the others', its feed position after them
    assert late_reward.reward_id == min(r.reward_id for r in rewards)
    if before_feed:
        assert late_pos == 8


def _write_mix(url: str, worker: int, n: int) -> None:
    st = store_mod.open(url)
    try:
        for i in range(0, n, 4):
            st.write([Trace(trace_id=f"w{worker}-{j}", session_id=f"ep{worker}-{j % 3}") for j in range(i, i + 4)])
            st.add_reward(f"ep{worker}-{i % 3}", float(i), idempotency_key=f"r{i}")
            st.add_reward(f"ep{worker}-{i % 3}", float(i), idempotency_key=f"r{i}")  # a retry: not a second item
    finally:
        st.close()


def test_three_processes_writing_traces_and_rewards_one_follower_sees_each_once(url: str, stores: Any) -> None:
    stores().close()  # create the schema once
    follower = Follower(url, limit=3)
    follower.start()
    workers, n = 3, 120
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_mix, args=(url, w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    follower.done.set()
    follower.join(60)
    assert follower.error is None
    traces = [key for _p, k, key in follower.items if k == "trace"]
    rewards = [key for _p, k, key in follower.items if k == "reward"]
    assert sorted(traces) == sorted(f"w{w}-{j}" for w in range(workers) for j in range(n))
    assert len(rewards) == len(set(rewards)) == workers * n // 4
    assert [p for p, _k, _key in follower.items] == list(range(1, len(follower.items) + 1))
