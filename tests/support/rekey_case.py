"""Schema step 5 (store/rekey.py) on a store that version 4 wrote: shared by the SQLite and
PostgreSQL tests. `write_v4_store` writes through today's store, then puts the keys back the
way version 4 stored them (no team namespaces, no name lookups, seq per bare key)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Callable

from litellm_rllm.sessions import split_key
from litellm_rllm.store import TraceStore
from tests.support.store_contract import T0, make


def _caller(team: str | None) -> dict[str, Any]:
    return {"team_id": team} if team else {"key_alias": "admin"}


def write_v4_store(store: TraceStore, run: Callable[[str, tuple[Any, ...]], list[Any]], mark: str, t: str) -> None:
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    store.write([
        make("a1", "shared", caller=_caller("team-a"), created_at=at(0)),
        make("b1", "shared", caller=_caller("team-b"), created_at=at(1)),
        make("a2", "shared", caller=_caller("team-a"), created_at=at(2)),
        make("n1", None, uids=["ctx_o"], metadata={"session_name": "sess_n"}, created_at=at(3)),
        make("n2", None, uids=["ctx_o", "ctx_i"], metadata={"session_name": "sess_n"}, created_at=at(4)),
    ])
    store.add_reward("shared", 1.0, team_id="team-a", team="team-a")  # type: ignore[attr-defined]
    for row_id, doc in run(f"SELECT id, doc FROM {t}traces", ()):
        d = json.loads(doc)
        old = d.get("session_id") or (d["session_uids"][-1] if d.get("session_uids") else "")
        run(f"UPDATE {t}traces SET session_key = {mark}, seq = -1 - id WHERE id = {mark}", (old, row_id))
        run(f"DELETE FROM {t}trace_uids WHERE trace_row = {mark}", (row_id,))
        for uid in dict.fromkeys([u for u in (d.get("session_id"), *d.get("session_uids", [])) if u]):
            run(f"INSERT INTO {t}trace_uids (uid, trace_row) VALUES ({mark}, {mark})", (uid, row_id))
    run(f"UPDATE {t}traces AS u SET seq = r.rank FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY session_key"
        f" ORDER BY order_us, trace_id) - 1 AS rank FROM {t}traces) AS r WHERE u.id = r.id", ())
    for rid, key in run(f"SELECT id, session_key FROM {t}rewards", ()):
        run(f"UPDATE {t}rewards SET session_key = {mark} WHERE id = {mark}", (split_key(key)[1], rid))
    for kind, table in (("trace", "traces"), ("reward", "rewards")):
        run(f"UPDATE {t}feed AS f SET session_key = x.session_key FROM {t}{table} AS x"
            f" WHERE f.kind = '{kind}' AND x.id = f.ref", ())


def check_upgraded(store: TraceStore) -> None:
    """What version 5 reads from that store."""
    assert [(x.trace_id, x.seq) for x in store.traces(session="shared", team="team-a")] == [("a1", 0), ("a2", 1)]
    assert [(x.trace_id, x.seq) for x in store.traces(session="shared", team="team-b")] == [("b1", 0)]
    assert store.traces(session="shared") == []
    assert [x.trace_id for x in store.traces(session="sess_n")] == ["n1", "n2"]
    assert [x.trace_id for x in store.traces(session="ctx_o")] == ["n1", "n2"]
    assert [r.reward for r in store.rewards("shared", team="team-a").rewards] == [1.0]  # type: ignore[attr-defined]
    assert store.rewards("shared").rewards == []  # type: ignore[attr-defined]
    feed = store.changes(0, 100, session="shared", team="team-a")  # type: ignore[attr-defined]
    assert [(i.kind, i.session_id) for i in feed.items] == [("trace", "shared"), ("trace", "shared"), ("reward", "shared")]
    [a3] = store.write([make("a3", "shared", caller=_caller("team-a"), created_at=T0 + timedelta(seconds=9))])
    assert a3.seq == 2
