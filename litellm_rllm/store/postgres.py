"""PostgreSQL backend: many proxies, one store; ``postgresql://user:pass@host:5432/db?schema=rllm``.

Why it is shaped this way:

* Its own schema (``rllm`` unless ``?schema=NAME``), so it can live in the database a LiteLLM
  deployment already has (LiteLLM's Prisma tables are in ``public``).
* Schema creation and upgrades run on open, under a transaction-scoped advisory lock, so proxies
  starting together migrate once; a current schema is only read (no lock).
* ``seq``: a ``session_seq(session_key PRIMARY KEY, next_seq)`` counter row per session,
  upserted at the start of the write transaction (keys in sorted order, so two writers never
  deadlock). The row lock serialises the writers of one session across every proxy until
  COMMIT: ``seq`` is gap-free and in commit order, and each trace row is inserted after its
  session's lock is held, so within a session the global ``id`` order is the ``seq`` order.
* Exactly once: ``trace_id`` is UNIQUE. Known ids are filtered out under the session locks
  before any seq is handed out, so a duplicate uses no seq; the INSERT still says ``ON CONFLICT
  DO NOTHING`` and, if another writer inserted one of the ids under a different session key in
  the meantime (same id, different session: a client bug), the transaction is redone.
* One statement per table per batch (``unnest`` of arrays): a 256-trace batch is 5 round trips.
* No value can make a batch unwritable: index columns hold an index-safe form of their value
  (``index_key``: no NUL, long values as prefix + SHA-256), and a batch the server still refuses
  for a value (a ``DataError``, ...) is searched trace by trace in a rolled-back transaction;
  the culprits come back as ``TraceEncodeError`` (the writer drops and logs them, stores the rest).
* Payload columns are codec.py's: ``doc`` text (LZ4-compressed where the server has it),
  ``arrays`` / ``detail`` bytea (``arrays`` stored uncompressed: packed numbers don't compress).
  Batch parameters go in PostgreSQL's binary format (text-escaping 10 KB blobs costs more CPU
  than everything else in a write).
* One connection per store, guarded by a lock (the writer thread and readers may share it);
  a broken connection (server restart) is replaced on the next call. Reads retry once on a
  fresh connection; writes are retried (then spooled) by ``TraceWriter``.

Layout (schema version 1), in schema S::

    S.traces(id bigint identity PRIMARY KEY,                  -- global write order
             trace_id text UNIQUE, session_key text, seq bigint, -- UNIQUE(session_key, seq)
             created_us bigint, status text, model text,        -- indexed
             doc text, arrays bytea, detail bytea)              -- see codec.py
    S.trace_uids(uid text, trace_row bigint, PRIMARY KEY(uid, trace_row))
    S.session_seq(session_key text PRIMARY KEY, next_seq bigint)
    S.schema_version(version integer, applied_at timestamptz)

Schema version 2 adds the trainer's tables (``trainer_postgres.py``: feed, rewards, finishes,
policy_versions, pauses, proxies); every trace write appends its feed rows as its last step,
under the feed's advisory lock, so feed positions are committed in order.

Reading with several writers active: ``id`` is taken at INSERT, rows become visible at
COMMIT, so a reader walking ``id`` order may see row N+1 before row N commits; the flush
barrier (``/rllm/flush``) is what makes a read complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import threading
from typing import Any, Callable, Optional, Sequence, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from litellm_rllm.store.base import EncodedWriteResult, SessionSummary, TraceStore, decode_row, sessions_from_rows
from litellm_rllm.store.codec import EncodedTrace, TraceEncodeError
from litellm_rllm.store.trainer_postgres import PostgresTrainerMixin, migrate_v2
from litellm_rllm.trace import Trace

try:  # the `postgres` extra; only the URLs that need it need it
    import psycopg
except ImportError:  # pragma: no cover - exercised by the "missing driver" test via a flag
    psycopg = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DEFAULT_SCHEMA = "rllm"
INSTALL_HINT = "pip install 'litellm-rllm[postgres]' (or: pip install 'psycopg[binary]')"
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_CONFLICT_RETRIES = 5
# libpq defaults when the URL does not set them: fail fast when the server is down or gone
# (the writer spools instead of hanging), and notice a dead peer within about half a minute.
_CONN_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
    "application_name": "litellm-rllm",
}

T = TypeVar("T")


def _v1(s: str) -> tuple[str, ...]:
    return (
        f"""CREATE TABLE IF NOT EXISTS {s}.traces (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            trace_id text NOT NULL UNIQUE,
            session_key text NOT NULL,
            seq bigint NOT NULL,
            created_us bigint NOT NULL,
            status text NOT NULL,
            model text,
            doc text NOT NULL,
            arrays bytea,
            detail bytea,
            CONSTRAINT traces_session_seq UNIQUE (session_key, seq)
        )""",
        # The packed arrays are incompressible: don't let TOAST try pglz on them.
        f"ALTER TABLE {s}.traces ALTER COLUMN arrays SET STORAGE EXTERNAL",
        f"CREATE INDEX IF NOT EXISTS traces_created ON {s}.traces (created_us)",
        f"CREATE INDEX IF NOT EXISTS traces_status ON {s}.traces (status)",
        f"CREATE INDEX IF NOT EXISTS traces_model ON {s}.traces (model)",
        f"""CREATE TABLE IF NOT EXISTS {s}.trace_uids (
            uid text NOT NULL,
            trace_row bigint NOT NULL REFERENCES {s}.traces (id) ON DELETE CASCADE,
            PRIMARY KEY (uid, trace_row)
        )""",
        f"CREATE INDEX IF NOT EXISTS trace_uids_row ON {s}.trace_uids (trace_row)",
        f"""CREATE TABLE IF NOT EXISTS {s}.session_seq (
            session_key text PRIMARY KEY,
            next_seq bigint NOT NULL
        )""",
    )


def _migrate_v1(conn: "psycopg.Connection[Any]", s: str) -> None:
    for statement in _v1(s):
        conn.execute(statement)
    # The JSON doc (messages, text) is 5-20 KB and compressible: LZ4 (PostgreSQL 14+, when the
    # server has it) compresses it about as well as the default pglz at twice the write rate.
    lz4 = conn.execute(
        "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
        " AND 'lz4' = ANY(enumvals)"
    ).fetchone()
    if lz4:
        conn.execute(f"ALTER TABLE {s}.traces ALTER COLUMN doc SET COMPRESSION lz4")


# version -> step (connection, quoted schema) that brings a store from version-1 to version.
# Each step must be idempotent (IF NOT EXISTS, ...); they run under the advisory lock.
MIGRATIONS: dict[int, Callable[["psycopg.Connection[Any]", str], None]] = {1: _migrate_v1, 2: migrate_v2}


# Index columns hold a form of the value PostgreSQL always accepts: no NUL character (text
# cannot hold one) and at most _KEY_MAX_BYTES (a btree entry must fit in a third of a page,
# about 2.7 KB). Longer values keep a prefix plus their SHA-256; lookups map their argument
# the same way. The trace's own fields (the doc) keep the exact values.
_KEY_MAX_BYTES = 1024
_KEY_PREFIX_BYTES = 900


def index_key(value: str) -> str:
    """The form of ``value`` stored in (and looked up in) the index columns."""
    if len(value) <= _KEY_MAX_BYTES // 4 and "\x00" not in value:
        return value  # the common case: short, no NUL
    clean = value.replace("\x00", "\ufffd")
    raw = clean.encode("utf-8")
    if len(raw) <= _KEY_MAX_BYTES:
        return clean
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    prefix = raw[:_KEY_PREFIX_BYTES].decode("utf-8", "ignore")
    return f"{prefix}...sha256:{digest}"


def _index_safe(enc: EncodedTrace) -> EncodedTrace:
    keys = (enc.trace_id, enc.session_key, enc.status, enc.model or "", *enc.uids)
    if all(len(v) <= _KEY_MAX_BYTES // 4 and "\x00" not in v for v in keys):
        return enc
    return dataclasses.replace(
        enc,
        trace_id=index_key(enc.trace_id),
        session_key=index_key(enc.session_key),
        status=index_key(enc.status),
        model=None if enc.model is None else index_key(enc.model),
        uids=tuple(dict.fromkeys(index_key(u) for u in enc.uids)),
    )


class _Conflict(Exception):
    """Another writer inserted one of our ids between our check and our INSERT."""


if psycopg is not None:
    # What a bad value (not a bad connection) raises: the batch is searched for the culprits.
    _DATA_ERRORS: tuple[type[BaseException], ...] = (
        psycopg.DataError,
        psycopg.IntegrityError,
        psycopg.errors.ProgramLimitExceeded,
    )
else:  # pragma: no cover
    _DATA_ERRORS = ()


def _require_psycopg() -> None:
    if psycopg is None:
        raise ImportError(f"the PostgreSQL trace store needs the psycopg driver: {INSTALL_HINT}")


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return url.split("://", 1)[0] + "://***"


def parse_url(url: str) -> tuple[str, str]:
    """``(conninfo URL for libpq, schema)``: our ``schema`` parameter is taken out of the query,
    every other parameter (``sslmode``, ``connect_timeout``, ...) goes to libpq, and
    ``_CONN_DEFAULTS`` fill in what the URL does not set."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {redact(url)!r}")
    params = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    rest: list[tuple[str, str]] = []
    for key, value in params:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if not _SCHEMA_RE.match(schema):
        raise ValueError(
            f"bad schema name {schema!r} in the store URL: letters, digits and _ only, "
            "not starting with a digit, at most 63 characters"
        )
    given = {k for k, _ in rest}
    defaults = dict(_CONN_DEFAULTS)
    if psycopg is not None and psycopg.pq.version() < 120000:
        defaults.pop("tcp_user_timeout")  # libpq < 12 rejects the option
    rest += [(k, v) for k, v in defaults.items() if k not in given]
    return urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest))), schema


def _lock_key(schema: str) -> int:
    """A stable signed 64-bit advisory lock key per schema."""
    digest = hashlib.blake2b(f"litellm_rllm.schema:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def migrate(conn: "psycopg.Connection[Any]", schema: str) -> int:
    """Bring ``schema`` to ``SCHEMA_VERSION``; safe from many processes at once.

    Returns the version found before (0 for a new store). ``conn`` must be in autocommit mode.
    """
    q = _quote(schema)
    found = _current_version(conn, schema)
    if found == SCHEMA_VERSION:
        return found
    _check_not_newer(found)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(schema),))
        # CREATE SCHEMA checks the CREATE privilege even when the schema exists: ask first,
        # so a role that may only use an existing schema can open it.
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {q}.schema_version ("
            " version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute(f"SELECT MAX(version) FROM {q}.schema_version").fetchone()
        found = int(row[0]) if row and row[0] is not None else 0
        _check_not_newer(found)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](conn, q)
            conn.execute(f"INSERT INTO {q}.schema_version (version) VALUES (%s)", (version,))
    return found


def _current_version(conn: "psycopg.Connection[Any]", schema: str) -> int:
    q = _quote(schema)
    exists = conn.execute("SELECT to_regclass(%s)", (f"{q}.schema_version",)).fetchone()
    if not exists or exists[0] is None:
        return 0
    row = conn.execute(f"SELECT MAX(version) FROM {q}.schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _check_not_newer(found: int) -> None:
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"trace store schema version {found} is newer than this litellm-rllm "
            f"supports ({SCHEMA_VERSION}); upgrade litellm-rllm"
        )


def _quote(schema: str) -> str:
    return '"' + schema + '"'  # validated by _SCHEMA_RE: no quotes inside


class PostgresStore(PostgresTrainerMixin, TraceStore):
    """See the module docstring. Thread-safe: one connection behind a lock."""

    def __init__(self, url: str, *, connect: bool = True) -> None:
        _require_psycopg()
        self.url = url
        self._conninfo, self.schema = parse_url(url)
        s = self._s = _quote(self.schema)
        self._lock = threading.RLock()
        self._closed = False
        self._conn: Optional["psycopg.Connection[Any]"] = None
        self._cols = "t.id, t.seq, t.doc, t.arrays, t.detail"
        self._sql_lock_sessions = (
            f"INSERT INTO {s}.session_seq AS c (session_key, next_seq)"
            " SELECT k, 0 FROM unnest(%b::text[]) AS k ORDER BY k"
            " ON CONFLICT (session_key) DO UPDATE SET next_seq = c.next_seq"
            " RETURNING session_key, next_seq"
        )
        self._sql_existing = f"SELECT trace_id FROM {s}.traces WHERE trace_id = ANY(%b::text[])"
        self._sql_insert = (
            f"INSERT INTO {s}.traces"
            " (trace_id, session_key, seq, created_us, status, model, doc, arrays, detail)"
            " SELECT trace_id, session_key, seq, created_us, status, model, doc, arrays, detail"
            " FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::text[],"
            " %b::text[], %b::text[], %b::bytea[], %b::bytea[]) WITH ORDINALITY"
            " AS r(trace_id, session_key, seq, created_us, status, model, doc, arrays, detail, ord)"
            " ORDER BY ord"
            " ON CONFLICT (trace_id) DO NOTHING"
            " RETURNING id, trace_id"
        )
        self._sql_next = (
            f"UPDATE {s}.session_seq c SET next_seq = v.n"
            " FROM unnest(%b::text[], %b::bigint[]) AS v(k, n) WHERE c.session_key = v.k"
        )
        self._sql_uids = (
            f"INSERT INTO {s}.trace_uids (uid, trace_row)"
            " SELECT * FROM unnest(%b::text[], %b::bigint[]) ON CONFLICT DO NOTHING"
        )
        if connect:
            with self._lock:
                self._connection()

    @classmethod
    def from_url(cls, url: str) -> "PostgresStore":
        return cls(url)

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    # ------------------------------------------------------------------------- connection

    def _connection(self) -> "psycopg.Connection[Any]":
        """The live connection (call with the lock held); a new one after a failure."""
        self._check_open()
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop_connection()
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            migrate(conn, self.schema)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass

    def _on_error(self, exc: BaseException) -> None:
        """After a failed statement: a connection that is no longer usable is dropped."""
        conn = self._conn
        if conn is None:
            return
        if conn.broken or conn.closed or isinstance(exc, psycopg.OperationalError):
            self._drop_connection()

    def _read(self, fn: Callable[["psycopg.Connection[Any]"], T]) -> T:
        """Run a read; once more on a fresh connection if the old one had gone bad (e.g. the
        server restarted since the last call)."""
        with self._lock:
            for attempt in (0, 1):
                conn = self._connection()
                try:
                    return fn(conn)
                except psycopg.OperationalError as exc:
                    was_broken = conn.broken or conn.closed
                    self._on_error(exc)
                    if attempt or not was_broken:
                        raise
            raise AssertionError("unreachable")

    # ------------------------------------------------------------------------- write

    def write_encoded(self, encoded: Sequence[EncodedTrace]) -> EncodedWriteResult:
        """See ``TraceStore.write_encoded``."""
        safe = [_index_safe(enc) for enc in encoded]
        first: dict[str, int] = {}  # (index-safe) trace_id -> its first index in this call
        for k, enc in enumerate(safe):
            first.setdefault(enc.trace_id, k)
        seqs: dict[int, int] = {}
        if safe:
            with self._lock:
                for attempt in range(_CONFLICT_RETRIES + 1):
                    conn = self._connection()
                    seqs.clear()
                    try:
                        self._write_tx(conn, safe, first, seqs)
                        if seqs:
                            self._committed()
                        break
                    except _Conflict:
                        if attempt == _CONFLICT_RETRIES:
                            raise RuntimeError(
                                "trace ids keep colliding with concurrent writes under other "
                                "session keys; batch not written"
                            ) from None
                    except _DATA_ERRORS as exc:
                        # Some value the server refuses: find which traces, so the writer can
                        # drop those and store the rest (never a batch that blocks forever).
                        bad = self._find_bad(conn, encoded, safe, first)
                        if bad:
                            raise TraceEncodeError(bad) from exc
                        raise
                    except BaseException as exc:
                        self._on_error(exc)
                        raise
        return EncodedWriteResult(
            [seqs.get(k) for k in range(len(safe))],
            [enc.trace_id for k, enc in enumerate(encoded) if k not in seqs],
        )

    def _find_bad(
        self,
        conn: "psycopg.Connection[Any]",
        encoded: Sequence[EncodedTrace],
        safe: list[EncodedTrace],
        first: dict[str, int],
    ) -> dict[str, BaseException]:
        """Write each trace alone in a savepoint of a transaction that is rolled back: the
        ones the server refuses (by their own ids). Nothing is written."""
        bad: dict[str, BaseException] = {}
        try:
            with conn.transaction(force_rollback=True):
                for k in first.values():
                    try:
                        self._write_tx(conn, [safe[k]], {safe[k].trace_id: 0}, {})
                    except _DATA_ERRORS as exc:
                        bad[encoded[k].trace_id] = exc
                    except _Conflict:
                        pass
        except Exception as exc:  # noqa: BLE001 - the connection itself failed: not data
            self._on_error(exc)
            return {}
        return bad

    def _write_tx(
        self,
        conn: "psycopg.Connection[Any]",
        encoded: list[EncodedTrace],
        first: dict[str, int],
        seqs: dict[int, int],
    ) -> None:
        """One transaction; fills ``seqs`` (input index -> seq). Raises ``_Conflict`` (rolled
        back) when an id was taken concurrently."""
        with conn.transaction(), conn.cursor(binary=True) as cur:
            keys = sorted({encoded[k].session_key for k in first.values()})
            cur.execute(self._sql_lock_sessions, (keys,))
            next_seq = {key: int(n) for key, n in cur.fetchall()}
            cur.execute(self._sql_existing, (list(first),))
            existing = {row[0] for row in cur.fetchall()}
            fresh = [k for tid, k in first.items() if tid not in existing]
            if fresh:
                cols: list[list[Any]] = [[] for _ in range(9)]
                for k in fresh:
                    enc = encoded[k]
                    seq = next_seq[enc.session_key]
                    next_seq[enc.session_key] = seq + 1
                    seqs[k] = seq
                    for col, value in zip(
                        cols,
                        (enc.trace_id, enc.session_key, seq, enc.created_us, enc.status,
                         enc.model, enc.doc, enc.arrays, enc.detail),
                    ):
                        col.append(value)
                cur.execute(self._sql_insert, cols)
                row_of = {trace_id: int(row_id) for row_id, trace_id in cur.fetchall()}
                if len(row_of) != len(fresh):
                    raise _Conflict()  # leaves the transaction block: ROLLBACK
                touched = {encoded[k].session_key for k in fresh}
                cur.execute(self._sql_next, (sorted(touched), [next_seq[k] for k in sorted(touched)]))
                uid_col: list[str] = []
                row_col: list[int] = []
                for k in fresh:
                    enc = encoded[k]
                    row_id = row_of[enc.trace_id]
                    for uid in enc.uids:
                        uid_col.append(uid)
                        row_col.append(row_id)
                if uid_col:
                    cur.execute(self._sql_uids, (uid_col, row_col))
                # last: it takes the feed lock, held until COMMIT (trainer_postgres.py)
                self._feed_append(cur, [("trace", row_of[encoded[k].trace_id], encoded[k].session_key,
                                         encoded[k].model) for k in fresh])

    # ------------------------------------------------------------------------- read

    def _fetch_page(self, query: str, params: tuple[Any, ...], key: Any, n: int) -> list[Any]:
        def run(conn: "psycopg.Connection[Any]") -> list[Any]:
            with conn.cursor(binary=True) as cur:
                cur.execute(query, (*params, int(key), n))
                return cur.fetchall()

        return self._read(run)

    def _read_plan(
        self, session: Optional[str], since_us: Optional[int]
    ) -> Optional[tuple[str, tuple[Any, ...], int]]:
        """Keyset-paginated query (last two parameters: ``key > %s`` and ``LIMIT %s``, the key
        being the first column), its leading parameters, and the key to start after."""
        s, cols = self._s, self._cols
        time_sql = "" if since_us is None else " AND t.created_us >= %s"
        time_params: tuple[Any, ...] = () if since_us is None else (since_us,)
        if session:
            query = (
                f"SELECT {cols} FROM {s}.trace_uids u JOIN {s}.traces t ON t.id = u.trace_row"
                f" WHERE u.uid = %s{time_sql} AND u.trace_row > %s ORDER BY u.trace_row LIMIT %s"
            )
            return query, (index_key(session), *time_params), 0
        if session == "":
            query = (
                f"SELECT t.seq, t.seq, t.doc, t.arrays, t.detail FROM {s}.traces t"
                f" WHERE t.session_key = ''{time_sql} AND t.seq > %s ORDER BY t.seq LIMIT %s"
            )
            return query, time_params, -1
        start = 0
        if since_us is not None:
            row = self._read(
                lambda conn: conn.execute(
                    f"SELECT MIN(id) FROM {s}.traces WHERE created_us >= %s", (since_us,)
                ).fetchone()
            )
            if row is None or row[0] is None:
                return None
            start = int(row[0]) - 1
        query = (
            f"SELECT {cols} FROM {s}.traces t WHERE true{time_sql} AND t.id > %s"
            " ORDER BY t.id LIMIT %s"
        )
        return query, time_params, start

    def get(self, trace_id: str) -> Optional[Trace]:
        def fetch(conn: "psycopg.Connection[Any]") -> Any:
            with conn.cursor(binary=True) as cur:
                cur.execute(
                    f"SELECT {self._cols} FROM {self._s}.traces t WHERE t.trace_id = %s",
                    (index_key(trace_id),),
                )
                return cur.fetchone()

        row = self._read(fetch)
        return None if row is None else decode_row(row)

    def sessions(self) -> list[SessionSummary]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT session_key, status, COUNT(*), MIN(seq), MAX(seq), MIN(created_us),"
                f" MAX(created_us), MIN(id) FROM {self._s}.traces GROUP BY session_key, status"
            ).fetchall()
        )
        return sessions_from_rows(rows)

    def count(self) -> int:
        row = self._read(lambda conn: conn.execute(f"SELECT COUNT(*) FROM {self._s}.traces").fetchone())
        return int(row[0])

    def schema_version(self) -> int:
        return self._read(lambda conn: _current_version(conn, self.schema))

    # ------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drop_connection()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")


def open_postgres(url: str) -> PostgresStore:
    return PostgresStore.from_url(url)


__all__ = [
    "DEFAULT_SCHEMA",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "PostgresStore",
    "migrate",
    "open_postgres",
    "parse_url",
    "redact",
]
