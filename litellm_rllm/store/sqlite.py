"""SQLite backend: one file, WAL, several processes may write it at once.

Why it is shaped this way:

* ``BEGIN IMMEDIATE`` takes the write lock before ``seq`` is read, so two processes writing the
  same session serialise and ``seq`` stays gap-free; ``busy_timeout`` makes them wait, not fail.
* ``journal_mode=WAL`` + ``synchronous=NORMAL``: a commit survives a crash of the process (the
  WAL is in the OS page cache) but the last commits may be lost on power loss or an OS crash
  (never corrupting the file); the fsync happens at checkpoints. The right trade for
  training data at 10k traces/s.
* Row ids are assigned explicitly under the write lock (MAX(id)+1...), so ``trace_uids`` can
  point at integer row ids and a session read walks one index in write order.
* A small checkpointer thread (own connection) copies the WAL into the database after each
  MiB of commits, or 100 ms after a smaller one. That copy and its fsync are about a third of
  the cost of a write and release the GIL, so they overlap the writer's next batch; the writer
  connection checkpoints by itself only when the WAL passes 64 MiB (checkpointer lagging or
  gone).
* 16 KiB pages: a 10-20 KB trace takes 1-2 pages instead of 3-5 at the 4 KiB default.
* Faults (docs/storage-faults.md): every call first checks that the file the connection holds is
  still the one at the path (an ``os.stat``; a deleted or replaced folder is reopened, or, for a
  store opened with ``create=False``, reported as ``StoreMissing`` instead of recreated empty);
  a connection that failed with an I/O error is replaced on the next call; the checkpointer
  never stops on errors and truncates the WAL once checkpoints succeed again.

Layout (schema version 1)::

    traces(id INTEGER PRIMARY KEY,            -- global write order
           trace_id TEXT UNIQUE, session_key TEXT, seq INTEGER,   -- UNIQUE(session_key, seq)
           created_us INTEGER, status TEXT, model TEXT,            -- indexed
           doc TEXT, arrays BLOB, detail BLOB)                     -- see codec.py
    trace_uids(uid TEXT, trace_row INTEGER, PRIMARY KEY(uid, trace_row)) WITHOUT ROWID
    schema_version(version INTEGER)
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from typing import Any, Iterator, Optional, Sequence
from urllib.parse import quote

from litellm_rllm.store.base import EncodedWriteResult, SessionSummary, TraceStore, decode_row, sessions_from_rows
from litellm_rllm.store.codec import EncodedTrace
from litellm_rllm.trace import Trace

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PAGE_SIZE = 16384  # only applies when the file is created
CACHE_KIB = 32768  # a 256-trace batch (~5 MB) must fit, or SQLite spills pages mid-transaction
# The writer connection checkpoints by itself only as a fallback (checkpointer thread lagging or
# dead): at 16 KiB pages that is a 64 MiB WAL. A WAL file grown past the limit is cut back to it.
WRITER_AUTOCHECKPOINT_PAGES = 4096
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

# version -> statements that bring a store from version-1 to version. Each step must be
# idempotent (IF NOT EXISTS, ...) so re-running a half-known state is harmless.
MIGRATIONS: dict[int, Sequence[str]] = {1: _V1}

_COLS = "t.id, t.seq, t.doc, t.arrays, t.detail"
_INSERT_TRACE = (
    "INSERT INTO traces (id, trace_id, session_key, seq, created_us, status, model, doc, arrays,"
    " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
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


class StoreMissing(FileNotFoundError):
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


class SqliteStore(TraceStore):
    """One connection guarded by a lock: safe to share between the writer thread and readers.

    ``create=False`` (readers): a missing file is ``StoreMissing``, never a new empty store."""

    def __init__(
        self, path: str, *, busy_timeout: float = 30.0, background_checkpoint: bool = True,
        create: bool = True,
    ) -> None:
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
                raise StoreMissing(f"the SQLite trace store {path} does not exist") from None
            raise exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            _enable_wal(conn, busy_timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            if self._background_checkpoint:
                conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")
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
    def from_url(cls, url: str) -> "SqliteStore":
        return cls(path_from_url(url))

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # ------------------------------------------------------------------------- write

    def write_encoded(self, encoded: Sequence[EncodedTrace]) -> EncodedWriteResult:
        """See ``TraceStore.write_encoded``."""
        first: dict[str, int] = {}  # trace_id -> index of its first occurrence in this call
        for k, enc in enumerate(encoded):
            first.setdefault(enc.trace_id, k)
        seqs: dict[int, int] = {}  # input index -> assigned seq
        if encoded:
            with self._lock:
                for _attempt in range(2):
                    seqs.clear()
                    conn = self._live()
                    try:
                        with _Transaction(conn):
                            existing = _existing_ids(conn, list(first))
                            fresh = [k for tid, k in first.items() if tid not in existing]
                            if fresh:
                                self._insert(conn, [encoded[k] for k in fresh], fresh, seqs)
                    except sqlite3.Error as exc:
                        if _needs_new_connection(exc):  # e.g. a read-only or vanished file
                            self.reconnects += 1
                            self._wal_recovering = True  # the WAL may have grown meanwhile
                            self._drop_connection()
                        raise
                    if self._identity is None or _file_identity(self.path) == self._identity:
                        break
                    # The file went away while we wrote: these rows may be in the old one only.
                    self._reopen("the file was deleted or replaced during a write; writing the batch again")
        if seqs and self._background_checkpoint:
            self._poke_checkpointer(sum(_row_bytes(encoded[k]) for k in seqs))
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
    ) -> None:
        """Insert new traces (we hold the write lock): row ids and seqs continue the maxima."""
        row_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM traces").fetchone()[0]
        next_seq = _next_seqs(conn, list({enc.session_key: None for enc in fresh}))
        rows: list[tuple[Any, ...]] = []
        uid_rows: list[tuple[str, int]] = []
        for k, enc in zip(positions, fresh):
            seq = next_seq[enc.session_key]
            next_seq[enc.session_key] = seq + 1
            row_id += 1
            seqs[k] = seq
            rows.append(
                (row_id, enc.trace_id, enc.session_key, seq, enc.created_us, enc.status,
                 enc.model, enc.doc, enc.arrays, enc.detail)
            )
            uid_rows.extend((uid, row_id) for uid in enc.uids)
        conn.executemany(_INSERT_TRACE, rows)
        if uid_rows:
            conn.executemany(_INSERT_UID, uid_rows)

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._live())

    # ------------------------------------------------------------------------- read

    def _fetch_page(self, query: str, params: tuple[Any, ...], key: Any, n: int) -> list[Any]:
        with self._lock:
            self._check_open()
            if self._conn is None:
                self._conn = self._connect()
            return self._conn.execute(query, (*params, key, n)).fetchall()

    def _read_plan(
        self, session: Optional[str], since_us: Optional[int]
    ) -> Optional[tuple[str, tuple[Any, ...], int]]:
        """A keyset-paginated query (its last two parameters are ``key > ?`` and ``LIMIT ?``,
        the key being the first column it selects), its leading parameters, and the key to
        start after; None when nothing can match."""
        with self._lock:
            self._live()  # a read starts on the file that is at the path now
        # The unary + keeps SQLite walking the write-order index instead of created_us.
        time_sql = "" if since_us is None else " AND +t.created_us >= ?"
        time_params: tuple[Any, ...] = () if since_us is None else (since_us,)
        if session:
            query = (
                f"SELECT {_COLS} FROM trace_uids u JOIN traces t ON t.id = u.trace_row"
                f" WHERE u.uid = ?{time_sql} AND u.trace_row > ? ORDER BY u.trace_row LIMIT ?"
            )
            return query, (session, *time_params), 0
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
        with self._lock:
            row = self._live().execute(
                f"SELECT {_COLS} FROM traces t WHERE t.trace_id = ?", (trace_id,)
            ).fetchone()
        return None if row is None else decode_row(row)

    def sessions(self) -> list[SessionSummary]:
        with self._lock:
            rows = self._live().execute(
                "SELECT session_key, status, COUNT(*), MIN(seq), MAX(seq), MIN(created_us),"
                " MAX(created_us), MIN(id) FROM traces GROUP BY session_key, status"
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


def _next_seqs(conn: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
    """Next seq per session key (0 for a new session), read on the (session_key, seq) index."""
    out = dict.fromkeys(keys, 0)
    for chunk, marks in _chunks(keys):
        query = (
            f"SELECT session_key, MAX(seq) FROM traces WHERE session_key IN ({marks})"
            " GROUP BY session_key"
        )
        for key, top in conn.execute(query, chunk):
            out[key] = int(top) + 1
    return out


def _row_bytes(enc: EncodedTrace) -> int:
    return len(enc.doc) + len(enc.arrays or b"") + len(enc.detail or b"")


def open_sqlite(url: str) -> SqliteStore:
    return SqliteStore.from_url(url)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStore", "StoreMissing", "migrate", "open_sqlite", "path_from_url"]
