"""SQLite side of the trainer's tables (``trainer_store.py``): schema step 2, the feed append,
and the transaction primitives ``SqliteStore`` mixes in.

Every SQLite write holds the file's write lock (``BEGIN IMMEDIATE``) from its first statement to
COMMIT, so writers are serialised across threads and processes: a feed position taken as
``MAX(pos) + 1`` inside the transaction is in commit order by construction.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Sequence, TypeVar

from .trainer_store import FeedRow, TrainerStore

T = TypeVar("T")

# Schema step 2: the trainer's tables; traces stored before it join the feed in id order.
SQLITE_V2: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS feed (
        pos INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        ref INTEGER NOT NULL,
        session_key TEXT NOT NULL,
        model TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS feed_session ON feed(session_key, pos)",
    """CREATE TABLE IF NOT EXISTS rewards (
        id INTEGER PRIMARY KEY,
        session_key TEXT NOT NULL,
        trace_id TEXT,
        value TEXT NOT NULL,
        metadata TEXT,
        idempotency_key TEXT,
        body_hash TEXT NOT NULL,
        team_id TEXT,
        created_us INTEGER NOT NULL,
        UNIQUE (session_key, idempotency_key)
    )""",
    """CREATE TABLE IF NOT EXISTS finishes (
        id INTEGER PRIMARY KEY,
        session_key TEXT NOT NULL UNIQUE,
        value TEXT,
        metadata TEXT,
        body_hash TEXT NOT NULL,
        team_id TEXT,
        created_us INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS policy_versions (
        model TEXT PRIMARY KEY, version INTEGER NOT NULL, updated_us INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pauses (
        model TEXT PRIMARY KEY, mode TEXT NOT NULL, since_us INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS proxies (
        proxy_id TEXT PRIMARY KEY, state TEXT NOT NULL, updated_us INTEGER NOT NULL)""",
    "INSERT INTO feed (pos, kind, ref, session_key, model) SELECT id, 'trace', id, session_key, model"
    " FROM traces WHERE NOT EXISTS (SELECT 1 FROM feed) ORDER BY id",
)

_INSERT_FEED = "INSERT INTO feed (pos, kind, ref, session_key, model) VALUES (?, ?, ?, ?, ?)"


def feed_append(conn: sqlite3.Connection, rows: Sequence[FeedRow]) -> list[int]:
    """Next positions for ``rows`` (the caller holds the write lock)."""
    if not rows:
        return []
    top = int(conn.execute("SELECT COALESCE(MAX(pos), 0) FROM feed").fetchone()[0])
    conn.executemany(_INSERT_FEED, [(top + k, *row) for k, row in enumerate(rows, 1)])
    return list(range(top + 1, top + 1 + len(rows)))


class SqliteTrainerMixin(TrainerStore):
    """The primitives ``TrainerStore`` needs, on ``SqliteStore``'s connection and lock."""

    _lock: Any  # these three are SqliteStore's
    _conn: sqlite3.Connection
    _transaction: Callable[[], Any]
    _check_open: Callable[[], None]

    def _trainer_write(self, fn: Callable[[Any], T]) -> T:
        with self._lock, self._transaction() as conn:
            return fn(conn)

    def _trainer_read(self, fn: Callable[[Any], T]) -> T:
        """One read transaction: a WAL snapshot, so every query in ``fn`` sees one state."""
        with self._lock:
            conn = self._live()  # type: ignore[attr-defined] - the store's checked connection
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

    def _feed_append(self, cur: Any, rows: Sequence[FeedRow]) -> list[int]:
        return feed_append(cur, rows)


__all__ = ["SQLITE_V2", "SqliteTrainerMixin", "feed_append"]
