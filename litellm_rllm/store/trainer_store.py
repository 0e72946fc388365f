"""The trainer's tables, one implementation for every backend (``TraceStore`` inherits it).

Tables (created by each backend's schema step 2; ``{t}`` is the backend's table prefix):

* ``feed(pos, kind, ref, session_key, model)``: the change feed. Every committed trace, reward
  and finish has one row; ``pos`` is its place in the store-wide order. Positions are handed
  out inside the writing transaction, under a lock that is the last one the transaction
  takes and that is held until it commits, so **positions are committed in order**: when a
  reader sees position p, every position below p is committed and visible too. A follower
  that reads ``pos > cursor`` and moves its cursor to the last position it saw never skips a
  row that commits late (see ``docs/trainer.md``). SQLite: writers are serialised by the
  file's write lock. PostgreSQL: a transaction-scoped advisory lock
  (``postgres_trainer.feed_append``).
* ``rewards``: one row per reward (session, optional trace id, a number or named numbers,
  metadata, the poster's team, the idempotency key and a fingerprint of the body).
  ``UNIQUE(session_key, idempotency_key)``: a retried POST finds the first one.
* ``finishes``: one row per ended session (``UNIQUE(session_key)``), optional final reward.
* ``policy_versions(model, version)``, ``pauses(model, mode, since_us)``: the control state
  every proxy polls (``trainer/live.py``).
* ``proxies(proxy_id, state, updated_us)``: each proxy's heartbeat (in-flight calls per model
  group, the pauses it has applied), so any proxy can say whether the fleet is drained.

A backend provides ``_trainer_write(fn)`` (one write transaction), ``_trainer_read(fn)`` (one
consistent snapshot), ``_feed_append(cur, rows)``, ``_sql(text)`` (placeholders) and
``_tp`` (table prefix); SQL here is written with ``?`` placeholders and ``{t}`` prefixes.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

from ..trace import Trace
from ..trainer.schema import (
    Change,
    ChangePage,
    Finish,
    IdempotencyConflict,
    PauseMode,
    PauseState,
    Reward,
    SessionRewards,
    body_hash,
    parse_idempotency_key,
    parse_metadata,
    parse_model,
    parse_reward_value,
    parse_session,
    parse_trace_id,
    parse_version,
)

from litellm_rllm.sessions import qualify, split_key

T = TypeVar("T")
FeedRow = tuple[str, int, str, Optional[str]]  # kind, ref (row id), session key, model

_IN_CHUNK = 500
_REWARD_COLS = "id, session_key, trace_id, value, metadata, idempotency_key, team_id, created_us"
_FINISH_COLS = "id, session_key, value, metadata, team_id, created_us"
HEARTBEAT_RETENTION_S = 24 * 3600.0


def now_us() -> int:
    return time.time_ns() // 1000


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(int(us) / 1e6, tz=timezone.utc)


def _loads(text: Any) -> Any:
    return None if text is None else json.loads(text)


def _reward(row: Sequence[Any], duplicate: bool = False) -> Reward:
    rid, session, trace_id, value, meta, key, team, us = row
    return Reward(reward_id=int(rid), session_id=split_key(session)[1], trace_id=trace_id, reward=_loads(value),
                  metadata=_loads(meta) or {}, idempotency_key=key, team_id=team, created_at=_dt(us),
                  duplicate=duplicate)


def _finish(row: Sequence[Any], duplicate: bool = False) -> Finish:
    _id, session, value, meta, team, us = row
    return Finish(session_id=split_key(session)[1], reward=_loads(value), metadata=_loads(meta) or {}, team_id=team,
                  created_at=_dt(us), duplicate=duplicate)


class TrainerStore:
    """Rewards, episode ends, policy versions, pauses, heartbeats and the change feed."""

    # ---- what a backend provides ---------------------------------------------------------

    _tp = ""  # table prefix ("" for SQLite, '"schema".' for PostgreSQL)

    def _sql(self, text: str) -> str:
        """``text`` with ``{t}`` table prefixes filled in and the backend's placeholders."""
        return text.replace("{t}", self._tp)

    def _key(self, value: str) -> str:
        """The form of a session key / model name stored in index columns."""
        return value

    def _trainer_write(self, fn: Callable[[Any], T]) -> T:
        raise NotImplementedError(f"{type(self).__name__} has no trainer tables")

    def _trainer_read(self, fn: Callable[[Any], T]) -> T:
        raise NotImplementedError(f"{type(self).__name__} has no trainer tables")

    def _feed_append(self, cur: Any, rows: Sequence[FeedRow]) -> list[int]:
        """Give ``rows`` the next feed positions, in order; the last statement of a write."""
        raise NotImplementedError(f"{type(self).__name__} has no change feed")

    # ---- commit listeners (the proxy's feed waiters) -------------------------------------

    def add_commit_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (in the writing thread) after each commit that added feed items."""
        listeners = self.__dict__.setdefault("_commit_listeners", [])
        listeners.append(fn)

    def _committed(self) -> None:
        for fn in self.__dict__.get("_commit_listeners", ()):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a listener must not turn a commit into an error
                pass

    # ---- rewards and episode ends --------------------------------------------------------

    def add_reward(
        self,
        session: str,
        reward: Any,
        *,
        trace_id: Optional[str] = None,
        metadata: Optional[dict[str, Any]] = None,
        idempotency_key: Optional[str] = None,
        team_id: Optional[str] = None,
        team: Optional[str] = None,
    ) -> Reward:
        """Store a reward for ``session`` (or one of its traces), in ``team``'s namespace
        (``sessions.py``; ``team_id`` is the poster's). With an ``idempotency_key`` already used
        in this session, the stored reward comes back (``duplicate=True``) and nothing is added;
        with a different body, ``IdempotencyConflict``."""
        session = parse_session(session)
        value = parse_reward_value(reward)
        trace_id = parse_trace_id(trace_id)
        meta = parse_metadata(metadata)
        key = parse_idempotency_key(idempotency_key, "idempotency_key")
        fingerprint = body_hash(value, trace_id, meta)
        skey = self._key(qualify(team, session))
        created = now_us()

        def tx(cur: Any) -> Reward:
            row = cur.execute(self._sql(
                "INSERT INTO {t}rewards (session_key, trace_id, value, metadata, idempotency_key, body_hash,"
                " team_id, created_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (session_key, idempotency_key) DO NOTHING RETURNING id"),
                (skey, trace_id, json.dumps(value), json.dumps(meta) if meta else None, key, fingerprint,
                 team_id, created)).fetchone()
            if row is None:  # the key was used before (or by a writer that just committed)
                found = cur.execute(self._sql(
                    f"SELECT {_REWARD_COLS}, body_hash FROM {{t}}rewards"
                    " WHERE session_key = ? AND idempotency_key = ?"), (skey, key)).fetchone()
                if found[-1] != fingerprint:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {key!r} was used for another reward body in session {session!r}")
                return _reward(found[:-1], duplicate=True)
            self._feed_append(cur, [("reward", int(row[0]), skey, None)])
            return Reward(reward_id=int(row[0]), session_id=session, trace_id=trace_id, reward=value,
                          metadata=meta, idempotency_key=key, team_id=team_id, created_at=_dt(created))

        result = self._trainer_write(tx)
        if not result.duplicate:
            self._committed()
        return result

    def finish(
        self,
        session: str,
        reward: Any = None,
        *,
        metadata: Optional[dict[str, Any]] = None,
        team_id: Optional[str] = None,
        team: Optional[str] = None,
    ) -> Finish:
        """Mark the episode ``session`` (in ``team``'s namespace) over, with an optional final reward. A session ends
        once: the same call again returns the stored finish (``duplicate=True``); a different
        one raises ``IdempotencyConflict``."""
        session = parse_session(session)
        value = None if reward is None else parse_reward_value(reward)
        meta = parse_metadata(metadata)
        fingerprint = body_hash(value, meta)
        skey = self._key(qualify(team, session))
        created = now_us()

        def tx(cur: Any) -> Finish:
            row = cur.execute(self._sql(
                "INSERT INTO {t}finishes (session_key, value, metadata, body_hash, team_id, created_us)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_key) DO NOTHING RETURNING id"),
                (skey, None if value is None else json.dumps(value), json.dumps(meta) if meta else None,
                 fingerprint, team_id, created)).fetchone()
            if row is None:
                found = cur.execute(self._sql(
                    f"SELECT {_FINISH_COLS}, body_hash FROM {{t}}finishes WHERE session_key = ?"), (skey,)).fetchone()
                if found[-1] != fingerprint:
                    raise IdempotencyConflict(f"session {session!r} was already finished with another body")
                return _finish(found[:-1], duplicate=True)
            self._feed_append(cur, [("finish", int(row[0]), skey, None)])
            return Finish(session_id=session, reward=value, metadata=meta, team_id=team_id, created_at=_dt(created))

        result = self._trainer_write(tx)
        if not result.duplicate:
            self._committed()
        return result

    def rewards(self, session: str, team: Optional[str] = None) -> SessionRewards:
        """The session's rewards (storage order) and its finish, if any (in ``team``'s namespace)."""
        key = qualify(team, session)
        return self.rewards_for([key])[key]

    def rewards_for(self, sessions: Iterable[str]) -> dict[str, SessionRewards]:
        """``rewards`` for many sessions at once (trajectory views, exports), by stored session
        key (``Trace.session_key()``: qualified with its team)."""
        wanted = list(dict.fromkeys(sessions))
        keyed = {self._key(s): s for s in wanted}
        out = {s: SessionRewards(session_id=split_key(s)[1]) for s in wanted}

        def read(cur: Any) -> None:
            keys = list(keyed)
            for start in range(0, len(keys), _IN_CHUNK):
                chunk = keys[start:start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in cur.execute(self._sql(
                        f"SELECT {_REWARD_COLS} FROM {{t}}rewards WHERE session_key IN ({marks}) ORDER BY id"),
                        chunk).fetchall():
                    r = _reward(row)
                    out[keyed[row[1]]].rewards.append(r)
                for row in cur.execute(self._sql(
                        f"SELECT {_FINISH_COLS} FROM {{t}}finishes WHERE session_key IN ({marks})"), chunk).fetchall():
                    f = _finish(row)
                    out[keyed[row[1]]].finish = f

        if wanted:
            self._trainer_read(read)
        return out

    def finished(self, session: str, team: Optional[str] = None) -> Optional[Finish]:
        """The session's finish, or None while the episode runs."""
        return self.rewards(session, team).finish

    # ---- the change feed -----------------------------------------------------------------

    def feed_head(self) -> int:
        """The last committed feed position (0: empty feed)."""
        return self._trainer_read(
            lambda cur: int(cur.execute(self._sql("SELECT COALESCE(MAX(pos), 0) FROM {t}feed")).fetchone()[0]))

    def changes(
        self,
        after: int = 0,
        limit: int = 100,
        *,
        session: Optional[str] = None,
        finished: bool = False,
        model: Optional[str] = None,
        team: Optional[str] = None,
    ) -> ChangePage:
        """Feed items with ``pos > after`` in feed order, at most ``limit``, and the cursor
        to continue from (``next``: past every row this read examined, so filtered-out rows
        are not read again).

        ``session``: items of that session, in ``team``'s namespace (traces also by any of
        their session uids and their session name).
        ``model``: traces of that model group, and the rewards/finishes of sessions that
        have one. ``finished``: only ``finish`` items, each with the whole episode (its
        traces in ``seq`` order and its rewards)."""
        after = max(0, int(after))
        limit = max(1, int(limit))
        where, params = ["f.pos > ?"], [after]
        if finished:
            where.append("f.kind = 'finish'")
        if session:
            key = self._key(qualify(team, session))
            where.append("(f.session_key = ? OR (f.kind = 'trace' AND EXISTS (SELECT 1 FROM {t}trace_uids u"
                         " WHERE u.uid = ? AND u.trace_row = f.ref)))")
            params += [key, key]
        if model:
            mkey = self._key(model)
            where.append("((f.kind = 'trace' AND f.model = ?) OR (f.kind <> 'trace' AND EXISTS (SELECT 1 FROM"
                         " {t}traces t WHERE t.session_key = f.session_key AND t.model = ?)))")
            params += [mkey, mkey]
        query = self._sql(f"SELECT f.pos, f.kind, f.ref, f.session_key FROM {{t}}feed f WHERE {' AND '.join(where)}"
                          " ORDER BY f.pos LIMIT ?")

        def read(cur: Any) -> ChangePage:
            rows = cur.execute(query, (*params, limit)).fetchall()
            if len(rows) == limit:
                nxt = int(rows[-1][0])
            else:  # the same snapshot: every position up to the head is committed and was examined
                head = int(cur.execute(self._sql("SELECT COALESCE(MAX(pos), 0) FROM {t}feed")).fetchone()[0])
                nxt = max(after, head)
            items = self._load_changes(cur, rows)
            if finished:
                stored = {int(row[0]): row[3] for row in rows}  # the session's stored (qualified) key
                for item in items:
                    item.episode_traces = self._session_traces(cur, stored[item.pos])
                    item.episode_rewards = self._session_rewards(cur, stored[item.pos])
            return ChangePage(items=items, next=nxt)

        return self._trainer_read(read)

    def _load_changes(self, cur: Any, rows: Sequence[Sequence[Any]]) -> list[Change]:
        refs: dict[str, list[int]] = {"trace": [], "reward": [], "finish": []}
        for _pos, kind, ref, _skey in rows:
            refs[kind].append(int(ref))
        loaded: dict[tuple[str, int], Any] = {}
        rebuild = self._rebuilder()  # type: ignore[attr-defined] - a compacted trace is read whole
        table = {"trace": ("traces", "id, order_us, seq, doc, arrays, detail, base_id, trace_id", rebuild.decode),
                 "reward": ("rewards", _REWARD_COLS, _reward), "finish": ("finishes", _FINISH_COLS, _finish)}
        for kind, ids in refs.items():
            name, cols, make = table[kind]
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start:start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in cur.execute(self._sql(f"SELECT {cols} FROM {{t}}{name} WHERE id IN ({marks})"),
                                       chunk).fetchall():
                    loaded[(kind, int(row[0]))] = make(row)
        out: list[Change] = []
        for pos, kind, ref, skey in rows:
            body = loaded.get((kind, int(ref)))
            if body is None:  # deleted since (pruned): the position is passed over
                continue
            out.append(Change(pos=int(pos), kind=kind, session_id=split_key(skey)[1], **{kind: body}))
        return out

    def _session_traces(self, cur: Any, session: str) -> list[Trace]:
        rows = cur.execute(self._sql(
            "SELECT t.id, t.order_us, t.seq, t.doc, t.arrays, t.detail, t.base_id, t.trace_id FROM {t}trace_uids u"
            " JOIN {t}traces t ON t.id = u.trace_row"
            " WHERE u.uid = ? ORDER BY t.order_us, t.trace_id"), (self._key(session),)).fetchall()
        rebuild = self._rebuilder()  # type: ignore[attr-defined] - a compacted trace is read whole
        return [rebuild.decode(row) for row in rows]

    def _session_rewards(self, cur: Any, session: str) -> list[Reward]:
        rows = cur.execute(self._sql(f"SELECT {_REWARD_COLS} FROM {{t}}rewards WHERE session_key = ? ORDER BY id"),
                           (self._key(session),)).fetchall()
        return [_reward(row) for row in rows]

    # ---- policy versions -----------------------------------------------------------------

    def set_policy_version(self, model: str, version: Any) -> int:
        """Announce ``model``'s current weights version (``"*"``: every group without its own)."""
        model, version = parse_model(model), parse_version(version)
        self._trainer_write(lambda cur: cur.execute(self._sql(
            "INSERT INTO {t}policy_versions (model, version, updated_us) VALUES (?, ?, ?)"
            " ON CONFLICT (model) DO UPDATE SET version = excluded.version, updated_us = excluded.updated_us"),
            (model, version, now_us())))
        return version

    def policy_versions(self) -> dict[str, int]:
        """Every announced version, by model group."""
        rows = self._trainer_read(lambda cur: cur.execute(
            self._sql("SELECT model, version FROM {t}policy_versions")).fetchall())
        return {m: int(v) for m, v in rows}

    # ---- pauses --------------------------------------------------------------------------

    def set_pause(self, model: str, mode: PauseMode = "hold") -> PauseState:
        """Pause ``model`` (``"*"``: every group) for a weight sync; a paused group keeps its
        first ``since`` when only the mode changes."""
        model = parse_model(model)
        if mode not in ("hold", "reject"):
            raise ValueError("mode must be 'hold' or 'reject'")
        since = now_us()

        def tx(cur: Any) -> PauseState:
            row = cur.execute(self._sql(
                "INSERT INTO {t}pauses (model, mode, since_us) VALUES (?, ?, ?)"
                " ON CONFLICT (model) DO UPDATE SET mode = excluded.mode RETURNING since_us"),
                (model, mode, since)).fetchone()
            return PauseState(model=model, mode=mode, since_us=int(row[0]))

        return self._trainer_write(tx)

    def clear_pause(self, model: Optional[str] = None) -> list[str]:
        """Resume ``model`` (None: every paused group); returns the groups resumed."""

        def tx(cur: Any) -> list[str]:
            if model is None:
                rows = cur.execute(self._sql("DELETE FROM {t}pauses RETURNING model")).fetchall()
            else:
                rows = cur.execute(self._sql("DELETE FROM {t}pauses WHERE model = ? RETURNING model"),
                                   (model,)).fetchall()
            return sorted(r[0] for r in rows)

        return self._trainer_write(tx)

    def pauses(self) -> dict[str, PauseState]:
        rows = self._trainer_read(lambda cur: cur.execute(
            self._sql("SELECT model, mode, since_us FROM {t}pauses")).fetchall())
        return {m: PauseState(model=m, mode=mode, since_us=int(us)) for m, mode, us in rows}

    def control_state(self) -> tuple[dict[str, int], dict[str, PauseState], int]:
        """Versions, pauses and the feed head in one snapshot (what each proxy polls)."""

        def read(cur: Any) -> tuple[dict[str, int], dict[str, PauseState], int]:
            versions = {m: int(v) for m, v in cur.execute(
                self._sql("SELECT model, version FROM {t}policy_versions")).fetchall()}
            pauses = {m: PauseState(model=m, mode=mode, since_us=int(us)) for m, mode, us in cur.execute(
                self._sql("SELECT model, mode, since_us FROM {t}pauses")).fetchall()}
            head = int(cur.execute(self._sql("SELECT COALESCE(MAX(pos), 0) FROM {t}feed")).fetchone()[0])
            return versions, pauses, head

        return self._trainer_read(read)

    # ---- heartbeats ----------------------------------------------------------------------

    def heartbeat(self, proxy_id: str, state: dict[str, Any]) -> None:
        """Publish one proxy's live state (in-flight calls, applied pauses)."""
        stamp = now_us()

        def tx(cur: Any) -> None:
            cur.execute(self._sql(
                "INSERT INTO {t}proxies (proxy_id, state, updated_us) VALUES (?, ?, ?)"
                " ON CONFLICT (proxy_id) DO UPDATE SET state = excluded.state, updated_us = excluded.updated_us"),
                (proxy_id, json.dumps(state), stamp))
            cur.execute(self._sql("DELETE FROM {t}proxies WHERE updated_us < ?"),
                        (stamp - int(HEARTBEAT_RETENTION_S * 1e6),))

        self._trainer_write(tx)

    def heartbeats(self, max_age_s: float) -> dict[str, tuple[float, dict[str, Any]]]:
        """``proxy_id -> (age in seconds, state)`` of the proxies heard from in ``max_age_s``."""
        stamp = now_us()
        rows = self._trainer_read(lambda cur: cur.execute(self._sql(
            "SELECT proxy_id, state, updated_us FROM {t}proxies WHERE updated_us >= ?"),
            (stamp - int(max_age_s * 1e6),)).fetchall())
        return {pid: (max(0.0, (stamp - int(us)) / 1e6), json.loads(state)) for pid, state, us in rows}


__all__ = ["FeedRow", "TrainerStore", "now_us"]
