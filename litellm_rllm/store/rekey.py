"""Schema step 5: traces stored before sessions were namespaced by team and found by name get
the keys ``sessions.py`` gives them today.

Why: from version 5 a trace written with a team's key is stored under its team's qualified
session key, and every trace is also found by its ``session_name``. Without this step a store
written earlier would split each team session in two across the upgrade (old calls under the
bare key, new ones under the qualified key) and old rLLM sessions could not be found by name.

What it does, in the migration's transaction:

* the traces whose doc names a team (``caller.team_id``) or a ``session_name`` (the only ones
  whose keys can change; found on the doc, a scan done once) get their ``session_key`` and
  their lookup keys (``trace_uids``) recomputed from the doc;
* every session key that lost or gained a trace has its ``seq`` re-ranked in session order
  (``order_us``, ``trace_id``), as schema step 2 did; PostgreSQL's ``session_seq`` counters
  of those keys are rebuilt;
* rewards and finishes posted by a team key move to the team's qualified key, and the change
  feed's rows follow their trace, reward or finish.

Plain SQL through a small dialect object; the backends call ``migrate_sqlite`` /
``migrate_postgres`` as their step 5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from litellm_rllm.sessions import lookup_keys, name_of, session_key, team_of

_PAGE = 1000


@dataclass(frozen=True)
class _Dialect:
    t: str  # table prefix ("" or '"schema".')
    mark: str  # placeholder
    candidates: str  # SQL condition on `doc`: a team or a session name is named
    sep: str  # SQL for the U+001F separator
    unqualified: str  # SQL condition on `session_key`: no separator in it
    key: Callable[[str], str]  # the stored form of a key (index columns)
    collate: str = ""  # trace ids compared by code point (session order's tie-break)


def keys_of(doc: Any) -> Optional[tuple[str, tuple[str, ...]]]:
    """(session key, lookup keys) of a stored doc by today's rules; None for an unreadable doc."""
    try:
        d = json.loads(doc if isinstance(doc, (str, bytes, bytearray)) else bytes(doc))
    except (TypeError, ValueError):
        return None
    if not isinstance(d, dict):
        return None
    sid = d.get("session_id") if isinstance(d.get("session_id"), str) else None
    uids = [u for u in d.get("session_uids") or [] if isinstance(u, str)]
    name = name_of(d.get("metadata") if isinstance(d.get("metadata"), dict) else None)
    team = team_of(d.get("caller") if isinstance(d.get("caller"), dict) else None)
    return session_key(sid, uids, name, team), lookup_keys(sid, uids, name, team)


def _run(cur: Any, d: _Dialect, many: Callable[[str, Sequence[Sequence[Any]]], None]) -> list[str]:
    """Re-key, re-rank, move rewards / finishes / feed rows; returns the session keys touched."""
    t, m = d.t, d.mark
    touched: set[str] = set()
    after = 0
    while True:
        rows = cur.execute(
            f"SELECT id, session_key, doc FROM {t}traces WHERE id > {m} AND ({d.candidates}) ORDER BY id LIMIT {m}",
            (after, _PAGE)).fetchall()
        if not rows:
            break
        after = int(rows[-1][0])
        moves, uid_rows, ids = [], [], []
        for row_id, old, doc in rows:
            found = keys_of(doc)
            if found is None:
                continue
            new, uids = d.key(found[0]), [d.key(u) for u in found[1]]
            ids.append((row_id,))
            uid_rows.extend((uid, row_id) for uid in dict.fromkeys(uids))
            if new != old:
                moves.append((new, row_id))
                touched.update((old, new))
        # seqs of moved rows out of the way first (row ids are unique): UNIQUE(session_key, seq) holds
        many(f"UPDATE {t}traces SET seq = -1 - id WHERE id = {m}", [(r,) for _, r in moves])
        many(f"UPDATE {t}traces SET session_key = {m} WHERE id = {m}", moves)
        many(f"DELETE FROM {t}trace_uids WHERE trace_row = {m}", ids)
        many(f"INSERT INTO {t}trace_uids (uid, trace_row) VALUES ({m}, {m}) ON CONFLICT DO NOTHING", uid_rows)
    keys = sorted(touched)
    many(f"UPDATE {t}traces SET seq = -1 - id WHERE session_key = {m}", [(k,) for k in keys])
    for k in keys:
        cur.execute(
            f"UPDATE {t}traces AS u SET seq = r.rank FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY order_us,"
            f" trace_id{d.collate}) - 1 AS rank FROM {t}traces WHERE session_key = {m}) AS r WHERE u.id = r.id", (k,))
    for table in ("rewards", "finishes"):
        cur.execute(f"UPDATE {t}{table} SET session_key = team_id || {d.sep} || session_key"
                    f" WHERE team_id IS NOT NULL AND team_id <> '' AND {d.unqualified}")
    for kind, table in (("trace", "traces"), ("reward", "rewards"), ("finish", "finishes")):
        cur.execute(f"UPDATE {t}feed AS f SET session_key = x.session_key FROM {t}{table} AS x"
                    f" WHERE f.kind = '{kind}' AND x.id = f.ref AND f.session_key <> x.session_key")
    return keys


def migrate_sqlite(conn: Any) -> None:
    """Step 5 on a SQLite connection (inside the migration's transaction)."""
    dialect = _Dialect(
        t="", mark="?", sep="char(31)", unqualified="instr(session_key, char(31)) = 0", key=lambda k: k,
        candidates="json_extract(doc, '$.caller.team_id') IS NOT NULL"
                   " OR json_extract(doc, '$.metadata.session_name') IS NOT NULL",
    )
    _run(conn, dialect, lambda sql, rows: conn.executemany(sql, rows) if rows else None)


def migrate_postgres(conn: Any, s: str, key: Callable[[str], str]) -> None:
    """Step 5 on a PostgreSQL connection (under the migration's advisory lock); ``key`` is the
    backend's ``index_key``."""
    t = f"{s}."
    dialect = _Dialect(
        t=t, mark="%s", sep="chr(31)", unqualified="strpos(session_key, chr(31)) = 0", key=key, collate=' COLLATE "C"',
        candidates="(doc::json -> 'caller' ->> 'team_id') IS NOT NULL"
                   " OR (doc::json -> 'metadata' ->> 'session_name') IS NOT NULL",
    )
    def many(sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with conn.cursor() as cur:
                cur.executemany(sql, rows)

    keys = _run(conn, dialect, many)
    if keys:  # the per-session counters follow the re-ranked keys
        conn.execute(f"DELETE FROM {t}session_seq WHERE session_key = ANY(%s)", (keys,))
        conn.execute(
            f"INSERT INTO {t}session_seq (session_key, next_seq, max_order_us)"
            f" SELECT session_key, MAX(seq) + 1, MAX(order_us) FROM {t}traces WHERE session_key = ANY(%s)"
            " GROUP BY session_key", (keys,))


__all__ = ["keys_of", "migrate_postgres", "migrate_sqlite"]
