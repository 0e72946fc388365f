"""SQLite backend: one file, WAL, several processes may write it at once.

Why it is shaped this way:

* ``BEGIN IMMEDIATE`` takes the write lock before ``seq`` is read, so two processes writing the
  same session serialise and ``seq`` stays gap-free; ``busy_timeout`` makes them wait, not fail.
  ``seq`` is the rank in session order (``session_order.py``): a late commit of an earlier
  call shifts the later rows' seq in the same transaction.
* ``journal_mode=WAL`` + ``synchronous=NORMAL``: a commit survives a crash of the process (the
  WAL is in the OS page cache) but the last commits may be lost on power loss or an OS crash
  (never corrupting the file); the fsync happens at checkpoints. The right trade for
  training data at 10k traces/s.
* Row ids are assigned explicitly under the write lock (MAX(id)+1...), so ``trace_uids`` can
  point at integer row ids and a session read walks one index in write order. Never reused:
  past the feed's last trace row too, so a deleted trace's feed row (kept: the feed is
  history) can't come back as a later trace that took its id.
* A small checkpointer thread (own connection) copies the WAL into the database after each
  MiB of commits, or 100 ms after a smaller one. That copy and its fsync are about a third of
  the cost of a write and release the GIL, so they overlap the writer's next batch; the writer
  connection checkpoints by itself only when the WAL passes 64 MiB (checkpointer lagging or
  gone).
* 4 KiB pages (SQLite's default) for new files; files made with 16 KiB pages keep them. A
  commit writes every page it touched to the WAL whole: the table's last page and ~8 index
  pages (trace id, session, order, created, status, model, uids, feed). For one ~5 KB trace a
  commit, the proxy's case at moderate rates, 16 KiB pages cost ~210 us of COMMIT against ~100
  at 4 KiB (~110 us a trace less in all); 256-trace batches of 25 KB rows pay ~10% more CPU
  per trace, and writing a 32,000-token trace ~0.5 ms more (4.7 vs 4.2 ms); reading it is the
  same (docs/benchmarks.md).
* Faults (docs/storage-faults.md): every call first checks that the file the connection holds is
  still the one at the path (an ``os.stat``; a deleted or replaced folder is reopened, or, for a
  store opened with ``create=False``, reported as ``StoreMissing`` instead of recreated empty);
  a connection that failed with an I/O error is replaced on the next call; the checkpointer
  never stops on errors and truncates the WAL once checkpoints succeed again.

Layout (schema version 2)::

    traces(id INTEGER PRIMARY KEY,            -- global write order
           trace_id TEXT UNIQUE, session_key TEXT, seq INTEGER,   -- UNIQUE(session_key, seq)
           created_us INTEGER, status TEXT, model TEXT,            -- indexed
           doc TEXT, arrays BLOB, detail BLOB,                     -- see codec.py
           base_id TEXT)                          -- v2, indexed: stored relative to (compact.py)
    trace_uids(uid TEXT, trace_row INTEGER, PRIMARY KEY(uid, trace_row)) WITHOUT ROWID
    schema_version(version INTEGER)

Version 2 adds to ``traces`` the session order key and the call's context (``order_us``,
``prompt_len``, ``ctx_len``, ``ctx_hash``: see session_order.py), ``cached_tokens``, and the
index ``(session_key, order_us, trace_id)`` that session reads walk.
Version 3 adds the trainer's tables (feed, rewards, finishes, policy_versions, pauses,
proxies: ``trainer_sqlite.py``); every trace insert also appends its feed row.
Version 5 re-keys existing traces by team namespace and session name (``rekey.py``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence
from urllib.parse import quote

from litellm_rllm.store.base import (
    SESSION_START, EncodedWriteResult, SessionSummary, TraceStore, sessions_from_rows,
)
from litellm_rllm.store.codec import EncodedTrace
from litellm_rllm.store.errors import StoreNotFoundError
from litellm_rllm.store.rekey import migrate_sqlite as migrate_rekey
from litellm_rllm.store.session_order import (
    ContextCache, OrderItem, Placement, after_window, call_context, place, window_start,
)
from litellm_rllm.store.trainer_sqlite import SQLITE_V2, SqliteTrainerMixin, feed_append
from litellm_rllm.trace import Trace

if TYPE_CHECKING:
    from litellm_rllm.store.listing import SessionPage, SessionQuery

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 5
PAGE_SIZE = 4096  # only applies when the file is created
CACHE_KIB = 32768  # a 256-trace batch (~5 MB) must fit, or SQLite spills pages mid-transaction
# The writer connection checkpoints by itself only as a fallback (checkpointer thread lagging or
# dead): when the WAL passes 64 MiB, whatever the file's page size. A WAL file grown past the
# limit is cut back to it.
WRITER_AUTOCHECKPOINT_BYTES = 64 << 20
WAL_SIZE_LIMIT = 4 * 1024 * 1024  # the WAL is cut back to this whenever it restarts
CHECKPOINT_BYTES = 1 << 20  # the checkpointer's pace (see _Checkpointer)
CHECKPOINT_MAX_WAIT_S = 0.1
CHECKPOINT_RETRY_S = 0.5  # a failing checkpointer tries again this often (a full disk)
CHECKPOINT_TRUNCATE_BUSY_MS = 100  # a TRUNCATE checkpoint waits this long for readers/writers
CHECKPOINT_TRUNCATE_TRIES = 20  # then it gives up truncating (PASSIVE again; journal_size_limit)
_IN_CHUNK = 500  # stay far below SQLite's bound-parameter limit

_V1 = (
    """CREATE TABLE IF NOT EXISTS traces (
        id INTEGER PRIMARY KEY,
        trace_id TEXT NOT NULL UNIQUE,
        session_key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created_us INTEGER NOT NULL,
        status TEXT NOT NULL,
        model TEXT,
        doc TEXT NOT NULL,
        arrays BLOB,
        detail BLOB
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS traces_session_seq ON traces(session_key, seq)",
    "CREATE INDEX IF NOT EXISTS traces_created ON traces(created_us)",
    "CREATE INDEX IF NOT EXISTS traces_status ON traces(status)",
    "CREATE INDEX IF NOT EXISTS traces_model ON traces(model)",
    """CREATE TABLE IF NOT EXISTS trace_uids (
        uid TEXT NOT NULL,
        trace_row INTEGER NOT NULL,
        PRIMARY KEY (uid, trace_row)
    ) WITHOUT ROWID""",
)



def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Session order by call start (``store/session_order.py``): the order key and the call's
    context columns, the index a session is read on, and the seqs of existing traces renumbered
    as ranks in that order. ``cached_tokens`` for the session sums."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(traces)")}
    for column in ("order_us", "prompt_len", "ctx_len", "ctx_hash", "cached_tokens"):
        if column not in have:
            conn.execute(f"ALTER TABLE traces ADD COLUMN {column} INTEGER")
    conn.execute("UPDATE traces SET order_us = created_us WHERE order_us IS NULL")
    conn.execute("CREATE INDEX IF NOT EXISTS traces_session_order ON traces(session_key, order_us, trace_id)")
    conn.execute("UPDATE traces SET seq = -1 - seq")  # two steps: UNIQUE(session_key, seq) holds throughout
    conn.execute(
        "UPDATE traces SET seq = r.rank FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY session_key"
        " ORDER BY order_us, trace_id) - 1 AS rank FROM traces) AS r WHERE traces.id = r.id"
    )


def _add_base_id(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(traces)")}
    if "base_id" not in columns:
        conn.execute("ALTER TABLE traces ADD COLUMN base_id TEXT")


# v4: compacted sessions (store/compact.py): the trace id a row is stored relative to.
_V4_COMPACT = (_add_base_id, "CREATE INDEX IF NOT EXISTS traces_base ON traces(base_id) WHERE base_id IS NOT NULL")

# version -> statements (or callables on the connection) that bring a store from version-1 to
# version. Each step must be idempotent (IF NOT EXISTS, ...) so re-running a half-known state
# is harmless. 2: session order (store/session_order.py), 3: the trainer's tables, 4: compaction,
# 5: session keys namespaced by team and found by name (store/rekey.py).
MIGRATIONS: dict[int, Any] = {1: _V1, 2: _migrate_v2, 3: SQLITE_V2, 4: _V4_COMPACT, 5: migrate_rekey}

# a read row: its key columns, then the trace (order_us becomes its `order`; see base.decode_row)
_COLS = "t.id, t.order_us, t.seq, t.doc, t.arrays, t.detail, t.base_id, t.trace_id"
_INSERT_TRACE = (
    "INSERT INTO traces (id, trace_id, session_key, seq, created_us, status, model, doc, arrays,"
    " detail, order_us, prompt_len, ctx_len, ctx_hash, cached_tokens, base_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SESSION_LAST = (
    "SELECT seq, order_us FROM traces WHERE session_key = ? ORDER BY order_us DESC, trace_id DESC LIMIT 1"
)
# index only (traces_session_order holds the row id): a row's seq is its rank, base + position
_SESSION_WINDOW = (
    "SELECT id, trace_id, order_us FROM traces WHERE session_key = ? AND order_us >= ? ORDER BY order_us, trace_id"
)
_INSERT_UID = "INSERT OR IGNORE INTO trace_uids (uid, trace_row) VALUES (?, ?)"


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; safe to call on every open, from any process.

    Returns the version found before migrating (0 for a new file). A current file is only
    read: opening a store for reading must not queue behind the writers for the write lock.
    """
    try:
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        if row and row[0] == SCHEMA_VERSION:
            return SCHEMA_VERSION
    except sqlite3.OperationalError:  # no such table: a new file
        pass
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        found = int(row[0]) if row and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"trace store schema version {found} is newer than this litellm-rllm "
                f"supports ({SCHEMA_VERSION}); upgrade litellm-rllm"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            step = MIGRATIONS[version]
            if callable(step):
                step(conn)
                continue
            for statement in step:
                statement(conn) if callable(statement) else conn.execute(statement)
        if found < SCHEMA_VERSION:
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def _enable_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch to WAL. Switching takes an exclusive lock and SQLite does not always apply the
    busy timeout to it: processes opening a new file together retry here instead of failing."""
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() not in ("wal", "memory"):  # ":memory:" databases stay in memory
                raise RuntimeError(f"SQLite refused WAL mode (got {mode!r})")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db`` (cwd-relative), ``sqlite:////abs.db`` -> ``/abs.db``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            f"bad SQLite store URL {url!r}: use sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    path = url[len(prefix) :].split("?", 1)[0]
    return path if path == ":memory:" else os.path.expanduser(path)


def missing_store_message(path: str) -> str:
    """``no trace store at /abs/path``, plus the URL the user probably meant: in
    ``sqlite:///tmp/x.db`` the path is relative (three slashes; four for an absolute path)."""
    absolute = os.path.abspath(path)
    message = f"no trace store at {absolute} (file not found)"
    if not os.path.isabs(path):
        rooted = "/" + path
        if os.path.isfile(rooted):
            message += (f"; sqlite:///{path} is relative to the current folder (three slashes:"
                        f" relative, four: absolute): did you mean sqlite:///{rooted}?")
    return message


class StoreMissing(StoreNotFoundError, FileNotFoundError):
    """A store opened with ``create=False`` has no file at its path (deleted, or never made)."""


def _file_identity(path: str) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _needs_new_connection(exc: BaseException) -> bool:
    """An error after which this connection is not worth keeping (read-only or vanished
    file, I/O error, full disk), unlike a busy or locked database."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.Error) and "locked" not in text and "busy" not in text


def _next_row_base(conn: sqlite3.Connection) -> int:
    """The highest row id ever given: the table's, or a deleted one the feed still names (its
    rows are appended in id order, so the last trace row holds it; a pos-index walk back)."""
    top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM traces").fetchone()[0]
    fed = conn.execute("SELECT ref FROM feed WHERE kind = 'trace' ORDER BY pos DESC LIMIT 1").fetchone()
    return max(int(top), int(fed[0]) if fed else 0)


class SqliteStore(SqliteTrainerMixin, TraceStore):
    """One connection guarded by a lock: safe to share between the writer thread and readers.

    ``create=False`` (readers): a missing file is ``StoreMissing``, never a new empty store."""

    def __init__(
        self, path: str, *, busy_timeout: float = 30.0, background_checkpoint: bool = True,
        create: bool = True,
    ) -> None:
        """``create=False`` opens an existing file only (readers): a missing one raises
        ``StoreNotFoundError`` naming the absolute path, and neither the file nor its folder
        is made. Writers (the proxy) create both."""
        self.path = path
        self._busy_timeout = busy_timeout
        self._checkpointer: Optional[_Checkpointer] = None
        self._background_checkpoint = background_checkpoint and path != ":memory:"
        self._create = create
        self._lock = threading.RLock()
        self._closed = False
        self._identity: Optional[tuple[int, int]] = None
        self.reopened = 0  # times the file was found deleted or replaced, and opened anew
        self.reconnects = 0  # connections replaced after an I/O error
        self._checkpoint_errors = 0  # of checkpointers replaced with their connection
        self._wal_recovering = False  # the next checkpointer starts with TRUNCATE checkpoints
        self._contexts = ContextCache()  # session-order columns of rows by id (session_order.py)
        self._conn: Optional[sqlite3.Connection] = self._connect()

    def _connect(self) -> sqlite3.Connection:
        path, busy_timeout = self.path, self._busy_timeout
        target, uri = path, False
        if path != ":memory:":
            if self._create:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            else:
                target, uri = "file:" + quote(os.path.abspath(path)) + "?mode=rw", True
        try:
            conn = sqlite3.connect(
                target, timeout=busy_timeout, isolation_level=None, check_same_thread=False, uri=uri
            )
        except sqlite3.OperationalError as exc:
            if not self._create and not os.path.exists(path):
                raise StoreMissing(f"{missing_store_message(path)}: the SQLite trace store does not exist") from None
            raise exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            _enable_wal(conn, busy_timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            if self._background_checkpoint:
                page = int(conn.execute("PRAGMA page_size").fetchone()[0]) or PAGE_SIZE
                conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_BYTES // page}")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._identity = None if path == ":memory:" else _file_identity(path)
        return conn

    def _live(self) -> sqlite3.Connection:
        """The connection, after checking that its file is still the one at the path (one
        ``os.stat``): a deleted or replaced file is reopened (``create=False``: StoreMissing
        when there is none). Call with the lock held."""
        self._check_open()
        if self._identity is not None and _file_identity(self.path) != self._identity:
            self._reopen("the file this store had open is no longer at its path (deleted or replaced)")
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _reopen(self, why: str) -> None:
        self._drop_connection()
        self.reopened += 1
        self._identity = None
        action = "a new file is created there" if self._create else "reading the file now there, if any"
        logger.error("SQLite trace store %s: %s; %s (traces committed to the old file since are not in it)",
                     self.path, why, action)
        self._conn = self._connect()

    def _drop_connection(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
            self._checkpoint_errors += checkpointer.errors
            self._wal_recovering = self._wal_recovering or checkpointer.failing
        conn, self._conn = self._conn, None
        self._contexts.clear()  # row ids are only unique within one file
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def check(self) -> None:
        """Is our file still the one at the path? Reopens it if not (see ``_live``)."""
        with self._lock:
            self._live()

    def stats(self) -> dict[str, int]:
        checkpointer = self._checkpointer
        try:
            wal = os.path.getsize(self.path + "-wal") if self.path != ":memory:" else 0
        except OSError:
            wal = 0
        return {"store_reopened": self.reopened, "store_reconnects": self.reconnects, "wal_bytes": wal,
                "checkpoint_errors": self._checkpoint_errors + (checkpointer.errors if checkpointer is not None else 0)}

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> "SqliteStore":
        return cls(path_from_url(url), create=create)

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # ------------------------------------------------------------------------- write

    def write_encoded(self, encoded: Sequence[EncodedTrace]) -> EncodedWriteResult:
        """See ``TraceStore.write_encoded``."""
        first: dict[str, int] = {}  # trace_id -> index of its first occurrence in this call
        for k, enc in enumerate(encoded):
            first.setdefault(enc.trace_id, k)
        seqs: dict[int, int] = {}  # input index -> assigned seq
        plans = self._compaction_plans(encoded) if encoded else None
        rows: list[EncodedTrace] = []
        known: list[tuple[int, str, Any]] = []  # (row id, trace id, order columns) of inserted rows
        if encoded:
            with self._lock:
                for _attempt in range(2):
                    seqs.clear()
                    known.clear()
                    conn = self._live()
                    try:
                        with _Transaction(conn):
                            existing = _existing_ids(conn, list(first))
                            fresh = [k for tid, k in first.items() if tid not in existing]
                            if fresh:
                                whole = [encoded[k] for k in fresh]
                                rows = whole if plans is None else self.compactor.choose(
                                    plans, fresh, lambda ids: _existing_ids(conn, ids))
                                known = self._insert(conn, rows, fresh, seqs, whole, self._contexts)
                    except sqlite3.Error as exc:
                        if _needs_new_connection(exc):  # e.g. a read-only or vanished file
                            self.reconnects += 1
                            self._wal_recovering = True  # the WAL may have grown meanwhile
                            self._drop_connection()
                        raise
                    if self._identity is None or _file_identity(self.path) == self._identity:
                        for entry in known:
                            self._contexts.put(*entry)
                        break
                    # The file went away while we wrote: these rows may be in the old one only.
                    self._reopen("the file was deleted or replaced during a write; writing the batch again")
            if plans is not None:
                self.compactor.remember(plans, seqs)
        if seqs:
            self._committed()
        if seqs and self._background_checkpoint:
            self._poke_checkpointer(sum(_row_bytes(enc) for enc in rows))
        return EncodedWriteResult(
            [seqs.get(k) for k in range(len(encoded))],
            [enc.trace_id for k, enc in enumerate(encoded) if k not in seqs],
        )

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        fresh: list[EncodedTrace],
        positions: list[int],
        seqs: dict[int, int],
        whole: Optional[list[EncodedTrace]],
        contexts: ContextCache,
    ) -> list[tuple[int, str, Any]]:
        """Insert new traces (we hold the write lock): row ids continue the maximum, each session's
        seqs are ranks in session order (``session_order.place``; later rows may shift).
        Returns (row id, trace id, order columns) of the new rows, for ``contexts`` after COMMIT."""
        row_id = _next_row_base(conn)
        # a call's context for session order comes from its whole row (a compacted one holds a suffix)
        items = [OrderItem.new(k, enc.trace_id, enc.created_us, enc.arrays) for k, enc in enumerate(whole or fresh)]
        by_key: dict[str, list[OrderItem]] = {}
        for enc, item in zip(fresh, items):
            by_key.setdefault(enc.session_key, []).append(item)
        placed: dict[int, tuple[int, int]] = {}
        moved: list[tuple[int, int, int]] = []
        for key, group in by_key.items():
            placement = _place(conn, key, group, contexts)
            placed.update(placement.fresh)
            moved.extend(placement.moved)
        # Shifted rows go to negative seqs first: UNIQUE(session_key, seq) holds at every row.
        conn.executemany("UPDATE traces SET seq = ?, order_us = ? WHERE id = ?",
                         [(-1 - seq, key, row) for row, seq, key in moved])
        rows: list[tuple[Any, ...]] = []
        uid_rows: list[tuple[str, int]] = []
        for k, (enc, item) in enumerate(zip(fresh, items)):
            seq, order_us = placed[k]
            row_id += 1
            seqs[positions[k]] = seq
            rows.append(
                (row_id, enc.trace_id, enc.session_key, seq, enc.created_us, enc.status,
                 enc.model, enc.doc, enc.arrays, enc.detail, order_us, *item.columns(), enc.cached_tokens, enc.base_id)
            )
            uid_rows.extend((uid, row_id) for uid in enc.uids)
        conn.executemany(_INSERT_TRACE, rows)
        if moved:
            conn.executemany("UPDATE traces SET seq = -1 - seq WHERE id = ?", [(row,) for row, _, _ in moved])
        if uid_rows:
            conn.executemany(_INSERT_UID, uid_rows)
        feed_append(conn, [("trace", r[0], r[2], r[6]) for r in rows])
        return [(r[0], r[1], item.columns()) for r, item in zip(rows, items)]

    def _delete(self, session: Optional[str], before_us: Optional[int]) -> int:
        where, params = [], []
        if session == "":
            where.append("session_key = ''")
        elif session is not None:
            where.append("id IN (SELECT trace_row FROM trace_uids WHERE uid = ?)")
            params.append(session)
        if before_us is not None:
            where.append("created_us < ?")
            params.append(before_us)
        cond = " AND ".join(where)
        with self._lock, self._transaction() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY)")
            conn.execute("DELETE FROM doomed")
            conn.execute(f"INSERT INTO doomed SELECT id FROM traces WHERE {cond}", params)
            # compacted rows that stay but whose base goes are first made whole (store/compact.py)
            children = conn.execute(
                f"SELECT {_COLS} FROM doomed d JOIN traces p ON p.id = d.id JOIN traces t ON t.base_id = p.trace_id"
                " WHERE t.id NOT IN (SELECT id FROM doomed)").fetchall()
            conn.executemany("UPDATE traces SET doc = ?, arrays = ?, base_id = NULL WHERE trace_id = ?",
                             [(doc, arrays, tid) for tid, doc, arrays in self._relinked(children)])
            conn.execute("DELETE FROM trace_uids WHERE trace_row IN (SELECT id FROM doomed)")
            deleted = conn.execute("DELETE FROM traces WHERE id IN (SELECT id FROM doomed)").rowcount
        self.compactor.forget()
        return deleted

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._live())

    # ------------------------------------------------------------------------- read

    def _fetch_page(self, query: str, params: tuple[Any, ...], key: Any, n: int) -> list[Any]:
        with self._lock:
            return self._live().execute(query, (*params, *key, n)).fetchall()

    def _read_plan(
        self, session: Optional[str], since_us: Optional[int]
    ) -> Optional[tuple[str, tuple[Any, ...], Any]]:
        """A keyset-paginated query (its last parameters are the key to start after and
        ``LIMIT ?``, the key being the columns before the last seven it selects), its leading
        parameters, and the key to start after; None when nothing can match."""
        with self._lock:
            self._live()  # a read starts on the file that is at the path now
        # The unary + keeps SQLite walking the write-order index instead of created_us.
        time_sql = "" if since_us is None else " AND +t.created_us >= ?"
        time_params: tuple[Any, ...] = () if since_us is None else (since_us,)
        if session:
            # Session order (call start, trace id): paged on that pair.
            query = (
                f"SELECT t.order_us, t.trace_id, {_COLS[len('t.id, '):]} FROM trace_uids u"
                f" JOIN traces t ON t.id = u.trace_row WHERE u.uid = ?{time_sql}"
                " AND (t.order_us, t.trace_id) > (?, ?) ORDER BY t.order_us, t.trace_id LIMIT ?"
            )
            return query, (session, *time_params), SESSION_START
        if session == "":
            # Within one session seq order is write order: page on the (session_key, seq) index.
            query = (
                f"SELECT t.seq, {_COLS[len('t.id, '):]} FROM traces t"
                f" WHERE t.session_key = ''{time_sql} AND t.seq > ? ORDER BY t.seq LIMIT ?"
            )
            return query, time_params, -1
        start = 0
        if since_us is not None:
            # created_at is only roughly monotonic in write order: start the walk at the
            # first matching row (found on the created_us index), then filter row by row.
            with self._lock:
                first = self._live().execute(
                    "SELECT MIN(id) FROM traces WHERE created_us >= ?", (since_us,)
                ).fetchone()[0]
            if first is None:
                return None
            start = first - 1
        query = f"SELECT {_COLS} FROM traces t WHERE 1{time_sql} AND t.id > ? ORDER BY t.id LIMIT ?"
        return query, time_params, start

    def get(self, trace_id: str) -> Optional[Trace]:
        rows = self._rows_by_id([trace_id])
        return self._rebuilder().decode(rows[0]) if rows else None

    def _rows_by_id(self, trace_ids: list[str]) -> list[Any]:
        out: list[Any] = []
        with self._lock:
            for chunk, marks in _chunks(trace_ids):
                out += self._live().execute(f"SELECT {_COLS} FROM traces t WHERE t.trace_id IN ({marks})", chunk)
        return out

    def sessions(self) -> list[SessionSummary]:
        with self._lock:
            rows = self._live().execute(
                "SELECT session_key, status, COUNT(*), MIN(seq), MAX(seq), MIN(created_us),"
                " MAX(created_us), MIN(id), SUM(cached_tokens) FROM traces GROUP BY session_key, status"
            ).fetchall()
        return sessions_from_rows(rows)

    def count(self) -> int:
        with self._lock:
            return int(self._live().execute("SELECT COUNT(*) FROM traces").fetchone()[0])

    # ------------------------------------------------------------------------- lifecycle

    def checkpoint(self) -> None:
        """Fold the WAL into the main file (benchmarks, backups); optional."""
        with self._lock:
            self._live().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _poke_checkpointer(self, committed_bytes: int) -> None:
        """Never raises: the data is committed already, and without the thread the writer
        connection's own autocheckpoint still bounds the WAL."""
        try:
            if self._checkpointer is None:
                with self._lock:
                    if self._checkpointer is None and not self._closed:
                        self._checkpointer = _Checkpointer(self.path, self._busy_timeout,
                                                           recovering=self._wal_recovering)
                        self._wal_recovering = False
            if self._checkpointer is not None:
                self._checkpointer.poke(committed_bytes)
        except Exception:  # noqa: BLE001 - e.g. no new threads at interpreter shutdown
            self._background_checkpoint = False
            logger.warning("SQLite background checkpointer unavailable", exc_info=True)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
        with self._lock:
            self._drop_connection()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    # ------------------------------------------------------------------------- session list

    def session_page(self, query: "SessionQuery") -> "SessionPage":
        """See ``TraceStore.session_page`` and ``store/listing.py`` (the walk)."""
        from litellm_rllm.store import listing

        def run(sql: str, params: Sequence[Any]) -> list[Any]:
            with self._lock:
                return self._live().execute(sql, tuple(params)).fetchall()

        team_sql, team_params = "", []
        if query.team is not None:
            team_sql, team_params = " AND json_extract({a}.doc, '$.caller.team_id') = ?", [query.team]
        total = None
        if query.session is not None:
            rows = run(
                "SELECT t.id, t.session_key, json_extract(t.doc, '$.metadata') FROM traces t"
                f" WHERE t.session_key = ?{team_sql.format(a='t')} ORDER BY t.seq DESC LIMIT 1",
                [query.session, *team_params],
            )
            nxt = None
        else:
            where, params = [
                "t.session_key <> ''",
                # the session's last trace (the team's last, under a team key): one index probe
                "NOT EXISTS (SELECT 1 FROM traces u WHERE u.session_key = t.session_key"
                f" AND u.seq > t.seq{team_sql.format(a='u')})",
            ], [*team_params]
            if query.team is not None:
                where.append(team_sql.format(a="t")[5:])
                params.append(query.team)
            for column, value in (("status", query.status), ("model", query.model)):
                if value is not None:
                    where.append(
                        "EXISTS (SELECT 1 FROM traces m WHERE m.session_key = t.session_key"
                        f" AND +m.{column} = ?{team_sql.format(a='m')})"  # + : walk the session index
                    )
                    params += [value, *team_params]
            if query.since_us is not None:
                where.append("t.created_us >= ?")
                params.append(query.since_us)
            if query.until_us is not None:
                where.append("t.created_us < ?")
                params.append(query.until_us)
            if query.q is not None:
                where.append(
                    "(instr(lower(t.session_key), lower(?)) > 0"
                    " OR instr(lower(json_extract(t.doc, '$.metadata')), lower(?)) > 0)"
                )
                params += [query.q, query.q]
            for key, value in query.meta.items():
                path = f'$.metadata."{key}"'
                where.append(
                    "(CASE json_type(t.doc, ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'"
                    " WHEN 'null' THEN 'null' ELSE CAST(json_extract(t.doc, ?) AS TEXT) END) = ?"
                )
                params += [path, path, value]
            sql = (
                "SELECT t.id, t.session_key, json_extract(t.doc, '$.metadata') FROM traces t"
                f" WHERE {' AND '.join(where)} AND t.id < ? AND t.id >= ? ORDER BY t.id DESC LIMIT ?"
            )
            start, bottom = listing.id_window(lambda q, p: run(q, p)[0][0], "traces", "?", query)
            rows, nxt = listing.walk(lambda hi, lo, n: run(sql, [*params, hi, lo, n]), start, bottom, query.limit)
            if query.cursor is None and not query.filtered:
                total = run("SELECT COUNT(DISTINCT session_key) FROM traces WHERE session_key <> ''", ())[0][0]
        keys = [row[1] for row in rows]
        facts: list[Any] = []
        for chunk, marks in _chunks(keys):
            facts += run(
                "SELECT t.session_key, t.status, t.model, t.created_us, t.seq,"
                " EXISTS (SELECT 1 FROM json_each(t.doc, '$.choices') c"
                "   WHERE json_extract(c.value, '$.completeness.ok') = 0),"
                " json_extract(t.doc, '$.lineage.relation')"
                f" FROM traces t WHERE t.session_key IN ({marks}){team_sql.format(a='t')}",
                [*chunk, *team_params],
            )
        metadata = {row[1]: _json_object(row[2]) for row in rows}
        return listing.SessionPage(
            sessions=listing.summaries(keys, facts, metadata, self.session_rewards(keys) if keys else {}),
            next=listing.encode_cursor(nxt),
            total=total,
        )


def _json_object(text: Optional[str]) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class _Checkpointer:
    """Runs WAL checkpoints on its own connection and thread, poked after each commit.

    Why: copying the WAL into the database file and its fsync are half the cost of a write,
    and they release the GIL; done here they overlap the writer's encoding of the next batch
    instead of stalling it. PASSIVE never blocks the writer; a checkpoint that completes
    between two commits lets the next commit restart the WAL from its beginning.

    Pace: once ``batch_bytes`` have been committed since the last checkpoint it runs at once
    (large batches: the WAL stays small and is rewound often); smaller commits gather for up
    to ``max_wait``. At moderate rates every call is its own commit, and a checkpoint for each
    cost about as much CPU as the commit itself (~0.4 ms). ``max_wait`` is also how long a
    commit may wait for its fsync (power loss or an OS crash only; a process crash loses
    nothing once COMMIT returned).
    """

    def __init__(self, path: str, busy_timeout: float, batch_bytes: int = CHECKPOINT_BYTES,
                 max_wait: float = CHECKPOINT_MAX_WAIT_S, recovering: bool = False) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._batch_bytes = batch_bytes
        self._max_wait = max_wait
        self._pending = 0  # bytes committed since the last checkpoint (written by the writer only)
        self._wake = threading.Event()
        self._enough = threading.Event()
        self._stopping = False
        self.errors = 0
        self.failing = recovering  # after errors (here or in the connection before): TRUNCATE first
        self._thread = threading.Thread(
            target=self._run, name="litellm-rllm-sqlite-checkpointer", daemon=True
        )
        self._thread.start()

    def poke(self, committed_bytes: int) -> None:
        self._pending += committed_bytes
        if self._pending >= self._batch_bytes and not self._enough.is_set():
            self._enough.set()
        if not self._wake.is_set():
            self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._enough.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        """Never stops on an error (a full disk, a vanished file): it logs, reconnects and tries
        again every ``CHECKPOINT_RETRY_S``; the first checkpoint after errors is a TRUNCATE,
        so the WAL grown meanwhile goes back to zero bytes once space returns."""
        conn: Optional[sqlite3.Connection] = None
        failing_since: Optional[float] = time.monotonic() if self.failing else None
        busy_tries = 0
        last_log = float("-inf")
        while not self._stopping:
            if failing_since is None:
                self._wake.wait(1.0)
                self._wake.clear()
                if self._stopping:
                    break
                self._enough.wait(self._max_wait)  # small commits: let more join this checkpoint
                self._enough.clear()
            else:
                self._wake.wait(CHECKPOINT_RETRY_S)
                self._wake.clear()
                if self._stopping:
                    break
            self._pending = 0
            try:
                if conn is None:
                    conn = self._connect()
                if failing_since is None:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    continue
                busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy:  # readers or a writer in the way: again in a moment, a few times
                    busy_tries += 1
                    if busy_tries < CHECKPOINT_TRUNCATE_TRIES:
                        continue
                    logger.warning("SQLite checkpointer for %s: checkpoints work again; the WAL stays in use "
                                   "by readers, journal_size_limit cuts it back when it restarts", self._path)
                    failing_since, self.failing, busy_tries = None, False, 0
                    continue
                logger.warning("SQLite checkpointer for %s: checkpoints work again after errors; WAL truncated",
                               self._path)
                failing_since = None
                self.failing = False
            except Exception as exc:  # noqa: BLE001 - never stop: the WAL would grow unbounded
                self.errors += 1
                now = time.monotonic()
                self.failing = True
                if failing_since is None:
                    failing_since = now
                if now - last_log >= 10.0:
                    last_log = now
                    logger.error("SQLite checkpointer for %s: checkpoint failed (%r, %d errors so far); "
                                 "retrying every %.1fs", self._path, exc, self.errors, CHECKPOINT_RETRY_S)
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                    conn = None
        if conn is not None:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        if not os.path.exists(self._path):  # never create a file here: that is the store's call
            raise FileNotFoundError(self._path)
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_TRUNCATE_BUSY_MS}")
        return conn


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` / ``ROLLBACK`` (the sqlite3 module's own implicit
    transactions are off: ``isolation_level=None``)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Optional[type], *rest: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def _chunks(values: list[str]) -> Iterator[tuple[list[str], str]]:
    """``values`` in chunks with their ``?,?,...`` placeholder lists, for ``IN (...)``."""
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start : start + _IN_CHUNK]
        yield chunk, ",".join("?" * len(chunk))


def _existing_ids(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk, marks in _chunks(ids):
        query = f"SELECT trace_id FROM traces WHERE trace_id IN ({marks})"
        found.update(row[0] for row in conn.execute(query, chunk))
    return found


def _place(conn: sqlite3.Connection, key: str, fresh: list[OrderItem], contexts: ContextCache) -> Placement:
    """Where the new traces of one session go: its last trace tells the count (seqs are ranks)
    and whether any stored trace is in the window (``session_order``). The window comes from
    the index; the order columns of its rows from ``contexts``, else from the rows."""
    last = conn.execute(_SESSION_LAST, (key,)).fetchone()
    count = 0 if last is None else int(last[0]) + 1
    lo = window_start(fresh)
    window: list[OrderItem] = []
    if last is not None and last[1] >= lo:
        stored = conn.execute(_SESSION_WINDOW, (key, lo)).fetchall()
        known = contexts.lookup(stored)
        if None not in known and after_window(last[1], (c[0] for c in known), fresh):  # type: ignore[index]
            return place(count, [], fresh, lambda rows: None)
        window = [OrderItem(trace_id, order_us, row=row) for row, trace_id, order_us in stored]
        missing: dict[int, OrderItem] = {}
        for rank, (item, columns) in enumerate(zip(window, known), count - len(window)):
            item.seq = rank
            if columns is None:
                missing[item.row] = item  # type: ignore[index]
            else:
                item.prompt_len, item.ctx_len, item.ctx_hash = columns
        for chunk, marks in _chunks(list(missing)):  # type: ignore[arg-type]
            query = f"SELECT id, prompt_len, ctx_len, ctx_hash FROM traces WHERE id IN ({marks})"
            for row, plen, clen, chash in conn.execute(query, chunk):
                item = missing[row]
                item.prompt_len, item.ctx_len, item.ctx_hash = plen, clen, chash
                contexts.put(row, item.trace_id, (plen, clen, chash))

    def load(rows: list[OrderItem]) -> None:
        for item in rows:
            blob = conn.execute("SELECT arrays FROM traces WHERE id = ?", (item.row,)).fetchone()[0]
            ctx = call_context(blob)
            item.prompt = None if ctx is None else ctx.prompt

    return place(count - len(window), window, fresh, load)


def _row_bytes(enc: EncodedTrace) -> int:
    return len(enc.doc) + len(enc.arrays or b"") + len(enc.detail or b"")


def open_sqlite(url: str, *, create: bool = True) -> SqliteStore:
    return SqliteStore.from_url(url, create=create)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStore", "StoreMissing", "migrate", "open_sqlite", "path_from_url"]
