"""The trainer's side of the storage contract (`store/trainer_store.py`): rewards, finishes, the
change feed, policy versions and their read filters, pauses, heartbeats. Part of
`StoreContract`, so every backend runs it (SQLite: tests/unit/test_store_sqlite.py,
PostgreSQL: tests/system/test_store_postgres.py)."""

from __future__ import annotations

from typing import Any

import pytest

import litellm_rllm.store as store_mod
from litellm_rllm.store import TraceStore
from litellm_rllm.trace import PolicyVersion, Trace
from litellm_rllm.trainer.schema import IdempotencyConflict, TrainerInputError


def traced(trace_id: str, session: str = "s", *, uids: list[str] | None = None, model: str = "policy",
           version: tuple[int | None, int | None] | None = None, **kw: Any) -> Trace:
    span = None if version is None else PolicyVersion(start=version[0], end=version[1])
    return Trace(trace_id=trace_id, session_id=session, session_uids=uids if uids is not None else [session],
                 model=model, policy_version=span, **kw)


def drain(st: TraceStore, after: int = 0, limit: int = 3, **filters: Any) -> tuple[list[Any], int]:
    """Every feed item after `after`, read `limit` at a time; and the final cursor."""
    items: list[Any] = []
    while True:
        page = st.changes(after, limit, **filters)
        assert page.next >= after
        items += page.items
        if page.next == after:
            return items, after
        after = page.next


class TrainerStoreContract:
    # ---------------------------------------------------------------------------- feed vs delete

    def test_a_deleted_sessions_feed_rows_never_point_at_a_later_sessions_traces(self, store: TraceStore) -> None:
        """Row ids are never reused: the feed's rows of a deleted trace must not come back as a
        new trace that took its id (SQLite once gave MAX(id)+1 again after deleting the last rows)."""
        store.write([traced("old-1", "old"), traced("old-2", "old")])
        assert store.delete(session="old") == 2
        store.write([traced("new-1", "new"), traced("new-2", "new")])
        items, _ = drain(store, session="new")
        assert [(i.kind, i.trace.trace_id if i.trace else None) for i in items] == [
            ("trace", "new-1"), ("trace", "new-2")]
        assert all(i.trace is None or i.trace.session_id != "old" for i in drain(store)[0])

    # ---------------------------------------------------------------------------- rewards

    def test_reward_with_a_used_idempotency_key_is_returned_not_stored_again(self, store: TraceStore) -> None:
        first = store.add_reward("ep", 1.5, idempotency_key="k1")
        again = store.add_reward("ep", 1.5, idempotency_key="k1")
        assert not first.duplicate and again.duplicate and again.reward_id == first.reward_id
        with pytest.raises(IdempotencyConflict):
            store.add_reward("ep", 2.0, idempotency_key="k1")
        store.add_reward("ep", 1.5)  # no key: every call is a reward
        store.add_reward("ep", 1.5)
        assert [r.reward for r in store.rewards("ep").rewards] == [1.5, 1.5, 1.5]
        assert store.add_reward("other-ep", 1.5, idempotency_key="k1").duplicate is False  # keys are per session

    def test_rewards_come_back_per_session_and_per_trace_named_or_plain(self, store: TraceStore) -> None:
        store.write([traced("t1", "ep"), traced("t2", "ep")])
        store.add_reward("ep", {"pass": 1, "style": 0.25}, trace_id="t2", metadata={"judge": "j"})
        store.add_reward("ep", -1)
        store.add_reward("ep2", 3)
        got = store.rewards("ep")
        assert [r.reward for r in got.session_rewards()] == [-1.0]
        [named] = got.by_trace()["t2"]
        assert named.reward == {"pass": 1.0, "style": 0.25} and named.metadata == {"judge": "j"}
        many = store.rewards_for(["ep", "ep2", "nothing"])
        assert [len(many[s].rewards) for s in ("ep", "ep2", "nothing")] == [2, 1, 0]
        assert many["nothing"].finish is None and not many["ep"].finished

    @pytest.mark.parametrize("bad", ["x", True, float("nan"), float("inf"), {}, {"a": "b"}, None])
    def test_a_reward_must_be_a_finite_number_or_named_finite_numbers(self, store: TraceStore, bad: Any) -> None:
        with pytest.raises(TrainerInputError) as info:
            store.add_reward("ep", bad)
        assert info.value.field.startswith("reward")
        assert store.rewards("ep").rewards == []

    def test_a_session_finishes_once(self, store: TraceStore) -> None:
        done = store.finish("ep", {"pass": 1.0}, metadata={"turns": 3})
        assert store.finish("ep", {"pass": 1.0}, metadata={"turns": 3}).duplicate
        with pytest.raises(IdempotencyConflict):
            store.finish("ep", 0.0)
        got = store.finished("ep")
        assert got is not None and got.reward == {"pass": 1.0} and got.created_at == done.created_at
        assert store.finished("other") is None

    # ---------------------------------------------------------------------------- the feed

    def test_feed_has_every_trace_reward_and_finish_once_in_commit_order(self, store: TraceStore) -> None:
        store.write([traced("a", "ep1"), traced("b", "ep2")])
        store.add_reward("ep1", 1, trace_id="a")
        store.write([traced("a", "ep1"), traced("c", "ep1")])  # "a" again: not a second item
        store.finish("ep1", 2)
        store.add_reward("ep1", 1, trace_id="a")  # a late reward after the finish is an item too
        items, cursor = drain(store, limit=2)
        got = [(c.pos, c.kind, c.session_id, c.trace.trace_id if c.trace else None) for c in items]
        assert got == [(1, "trace", "ep1", "a"), (2, "trace", "ep2", "b"), (3, "reward", "ep1", None),
                       (4, "trace", "ep1", "c"), (5, "finish", "ep1", None), (6, "reward", "ep1", None)]
        assert cursor == store.feed_head() == 6
        assert items[3].trace.seq == 1 and items[4].finish.reward == 2.0
        assert store.changes(6, 10).items == [] and store.changes(6, 10).next == 6

    def test_feed_filters_skip_rows_for_good_and_keep_nested_sessions(self, store: TraceStore) -> None:
        store.write([traced("o1", "inner", uids=["outer", "inner"]), traced("x1", "other", model="judge")])
        store.add_reward("other", 1)
        store.write([traced("o2", "outer")])
        store.finish("other")
        outer, cursor = drain(store, limit=1, session="outer")
        assert [c.trace.trace_id for c in outer] == ["o1", "o2"] and cursor == 5  # past the rows it examined
        judged, _ = drain(store, limit=1, model="judge")
        assert [c.kind for c in judged] == ["trace", "reward", "finish"]
        page = store.changes(0, 10, finished=True)
        [done] = page.items
        assert done.kind == "finish" and [t.trace_id for t in done.episode_traces] == ["x1"]
        assert [r.reward for r in done.episode_rewards] == [1.0] and page.next == 5

    def test_commits_call_the_listeners(self, store: TraceStore) -> None:
        calls: list[int] = []
        store.add_commit_listener(lambda: calls.append(1))
        store.write([traced("t", "ep")])
        store.write([traced("t", "ep")])  # a duplicate commits nothing new
        store.add_reward("ep", 1)
        store.finish("ep")
        assert len(calls) == 3

    def test_a_new_connection_continues_the_feed(self, store_url: str) -> None:
        with store_mod.open(store_url) as one:
            one.write([traced("t1", "ep")])
        with store_mod.open(store_url) as two:
            two.add_reward("ep", 1)
            assert [(c.pos, c.kind) for c in two.changes(0, 10).items] == [(1, "trace"), (2, "reward")]

    # ---------------------------------------------------------------------------- versions

    def test_policy_versions_per_group_with_a_star_default(self, store: TraceStore) -> None:
        assert store.policy_versions() == {}
        store.set_policy_version("policy", 3)
        store.set_policy_version("policy", 4)
        store.set_policy_version("*", 9)
        assert store.policy_versions() == {"policy": 4, "*": 9}
        with pytest.raises(TrainerInputError):
            store.set_policy_version("policy", "v5")

    def test_min_policy_version_and_max_staleness_filter_traces_before_the_limit(self, store: TraceStore) -> None:
        store.write([traced("old", version=(1, 1)), traced("straddle", version=(1, 2)), traced("new", version=(2, 2)),
                     traced("none"), traced("judge", model="judge", version=(5, 5)), traced("new2", version=(2, 2))])
        store.set_policy_version("policy", 2)
        store.set_policy_version("*", 5)
        ids = lambda **kw: [t.trace_id for t in store.traces(session="s", **kw)]  # noqa: E731
        assert ids(max_staleness=0) == ["new", "judge", "new2"]
        assert ids(max_staleness=1) == ["old", "straddle", "new", "judge", "new2"]
        assert ids(min_policy_version=2) == ["new", "judge", "new2"]
        assert ids(min_policy_version=2, limit=2) == ["new", "judge"]
        assert ids(max_staleness=0, min_policy_version=3) == ["judge"]
        assert [t.policy_version for t in store.traces(session="s", limit=2)] == [
            PolicyVersion(start=1, end=1), PolicyVersion(start=1, end=2)]

    # ---------------------------------------------------------------------------- pauses

    def test_pauses_and_heartbeats(self, store: TraceStore) -> None:
        held = store.set_pause("policy", "hold")
        assert store.set_pause("policy", "reject").since_us == held.since_us  # mode change keeps since
        store.set_pause("judge")
        assert {m: p.mode for m, p in store.pauses().items()} == {"policy": "reject", "judge": "hold"}
        versions, pauses, head = store.control_state()
        assert versions == {} and set(pauses) == {"policy", "judge"} and head == 0
        assert store.clear_pause("policy") == ["policy"]
        assert store.clear_pause() == ["judge"] and store.pauses() == {}
        store.heartbeat("p1", {"in_flight": {"policy": 2}})
        store.heartbeat("p1", {"in_flight": {}})
        [(age, state)] = store.heartbeats(60).values()
        assert state == {"in_flight": {}} and age < 60
