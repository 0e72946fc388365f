"""PostgreSQL backend: many proxies, one store; ``postgresql://user:pass@host:5432/db?schema=rllm``.

Why it is shaped this way:

* Its own schema (``rllm`` unless ``?schema=NAME``), so it can live in the database a LiteLLM
  deployment already has (LiteLLM's Prisma tables are in ``public``).
* Schema creation and upgrades run on open, under a transaction-scoped advisory lock, so proxies
  starting together migrate once; a current schema is only read (no lock).
* ``seq``: a ``session_seq(session_key PRIMARY KEY, next_seq, max_order_us)`` row per session,
  upserted at the start of the write transaction (keys in sorted order, so two writers never
  deadlock). The row lock serialises the writers of one session across every proxy until
  COMMIT: ``seq`` is gap-free, the rank in session order (``session_order.py``: call start,
  causal prefix order first); ``max_order_us`` tells whether any stored trace reaches into a
  new one's window, so the common write reads nothing more. A late commit of an earlier call
  shifts the later rows' seq in the same transaction.
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

Layout (schema version 2), in schema S::

    S.traces(id bigint identity PRIMARY KEY,                  -- global write order
             trace_id text UNIQUE, session_key text, seq bigint, -- UNIQUE(session_key, seq)
             created_us bigint, status text, model text,        -- indexed
             doc text, arrays bytea, detail bytea,              -- see codec.py
             base_id text)                      -- v2, indexed: stored relative to (compact.py)
    S.trace_uids(uid text, trace_row bigint, PRIMARY KEY(uid, trace_row))
    S.session_seq(session_key text PRIMARY KEY, next_seq bigint)
    S.schema_version(version integer, applied_at timestamptz)

Version 2 adds ``traces.order_us / prompt_len / ctx_len / ctx_hash`` (session order and the
call's context), ``traces.cached_tokens``, ``session_seq.max_order_us`` and the index
``(session_key, order_us, trace_id COLLATE "C")`` that session reads walk.
Version 3 adds the trainer's tables (``trainer_postgres.py``: feed, rewards, finishes,
policy_versions, pauses, proxies); every trace write appends its feed rows as its last step,
under the feed's advisory lock, so feed positions are committed in order.
Version 5 re-keys existing traces by team namespace and session name (``rekey.py``).

Reading with several writers active: ``id`` is taken at INSERT, rows become visible at
COMMIT, so a reader walking ``id`` order may see row N+1 before row N commits; the flush
barrier (``/rllm/flush``) is what makes a read complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from litellm_rllm.store.base import (
    SESSION_START, EncodedWriteResult, SessionSummary, TraceStore, _as_bytes, sessions_from_rows,
)
from litellm_rllm.store.codec import EncodedTrace, TraceEncodeError
from litellm_rllm.store.rekey import migrate_postgres as migrate_rekey
from litellm_rllm.store.session_order import OrderItem, call_context, place, window_start
from litellm_rllm.store.trainer_postgres import PostgresTrainerMixin, migrate_v2 as migrate_trainer
from litellm_rllm.trace import Trace

try:  # the `postgres` extra; only the URLs that need it need it
    import psycopg
except ImportError:  # pragma: no cover - exercised by the "missing driver" test via a flag
    psycopg = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 5
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

if TYPE_CHECKING:
    from litellm_rllm.store.listing import SessionPage, SessionQuery

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


def _migrate_v2(conn: "psycopg.Connection[Any]", s: str) -> None:
    """Session order by call start (``store/session_order.py``): the order key and the call's
    context columns, the index a session is read on (trace ids in code-point order, as SQLite
    and Python compare them), existing seqs renumbered as ranks in that order, and each
    session's largest order key next to its counter. ``cached_tokens`` for the session sums."""
    conn.execute(
        f"ALTER TABLE {s}.traces ADD COLUMN IF NOT EXISTS order_us bigint,"
        " ADD COLUMN IF NOT EXISTS prompt_len integer, ADD COLUMN IF NOT EXISTS ctx_len integer,"
        " ADD COLUMN IF NOT EXISTS ctx_hash bigint, ADD COLUMN IF NOT EXISTS cached_tokens bigint"
    )
    conn.execute(f"ALTER TABLE {s}.session_seq ADD COLUMN IF NOT EXISTS max_order_us bigint")
    conn.execute(f"UPDATE {s}.traces SET order_us = created_us WHERE order_us IS NULL")
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS traces_session_order ON {s}.traces"
        ' (session_key, order_us, trace_id COLLATE "C")'
    )
    conn.execute(f"UPDATE {s}.traces SET seq = -1 - seq")  # UNIQUE(session_key, seq) holds throughout
    conn.execute(
        f"UPDATE {s}.traces t SET seq = r.rank FROM (SELECT id, row_number() OVER (PARTITION BY"
        f' session_key ORDER BY order_us, trace_id COLLATE "C") - 1 AS rank FROM {s}.traces) r'
        " WHERE t.id = r.id"
    )
    conn.execute(
        f"UPDATE {s}.session_seq c SET max_order_us = m.hi FROM (SELECT session_key,"
        f" MAX(order_us) AS hi FROM {s}.traces GROUP BY session_key) m WHERE c.session_key = m.session_key"
    )


def _migrate_compact(conn: "psycopg.Connection[Any]", s: str) -> None:
    """Compacted sessions (store/compact.py): the trace id a row is stored relative to."""
    conn.execute(f"ALTER TABLE {s}.traces ADD COLUMN IF NOT EXISTS base_id text")
    conn.execute(f"CREATE INDEX IF NOT EXISTS traces_base ON {s}.traces (base_id) WHERE base_id IS NOT NULL")


# version -> step (connection, quoted schema) that brings a store from version-1 to version.
# Each step must be idempotent (IF NOT EXISTS, ...); they run under the advisory lock.
MIGRATIONS: dict[int, Callable[["psycopg.Connection[Any]", str], None]] = {
    1: _migrate_v1, 2: _migrate_v2, 3: migrate_trainer, 4: _migrate_compact,  # order, trainer, compaction
    5: lambda conn, s: migrate_rekey(conn, s, index_key),  # team namespaces, names (store/rekey.py)
}


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
        self._cols = "t.id, t.order_us, t.seq, t.doc, t.arrays, t.detail, t.base_id, t.trace_id"  # see base.decode_row
        self._sql_lock_sessions = (
            f"INSERT INTO {s}.session_seq AS c (session_key, next_seq)"
            " SELECT k, 0 FROM unnest(%b::text[]) AS k ORDER BY k"
            " ON CONFLICT (session_key) DO UPDATE SET next_seq = c.next_seq"
            " RETURNING session_key, next_seq, max_order_us"
        )
        self._sql_window = (
            "SELECT t.session_key, t.id, t.trace_id, t.order_us, t.seq, t.prompt_len, t.ctx_len, t.ctx_hash"
            f" FROM unnest(%b::text[], %b::bigint[]) AS v(k, lo) JOIN {s}.traces t"
            ' ON t.session_key = v.k AND t.order_us >= v.lo ORDER BY t.order_us, t.trace_id COLLATE "C"'
        )
        self._sql_arrays = f"SELECT id, arrays FROM {s}.traces WHERE id = ANY(%b::bigint[])"
        self._sql_move = (
            f"UPDATE {s}.traces t SET seq = v.seq, order_us = v.o"
            " FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[]) AS v(id, seq, o) WHERE t.id = v.id"
        )
        self._sql_unmove = f"UPDATE {s}.traces SET seq = -1 - seq WHERE id = ANY(%b::bigint[])"
        self._sql_existing = f"SELECT trace_id FROM {s}.traces WHERE trace_id = ANY(%b::text[])"
        self._sql_insert = (
            f"INSERT INTO {s}.traces"
            " (trace_id, session_key, seq, created_us, status, model, doc, arrays, detail,"
            " order_us, prompt_len, ctx_len, ctx_hash, cached_tokens, base_id)"
            " SELECT trace_id, session_key, seq, created_us, status, model, doc, arrays, detail,"
            " order_us, prompt_len, ctx_len, ctx_hash, cached_tokens, base_id"
            " FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::text[],"
            " %b::text[], %b::text[], %b::bytea[], %b::bytea[], %b::bigint[], %b::integer[],"
            " %b::integer[], %b::bigint[], %b::bigint[], %b::text[]) WITH ORDINALITY"
            " AS r(trace_id, session_key, seq, created_us, status, model, doc, arrays, detail,"
            " order_us, prompt_len, ctx_len, ctx_hash, cached_tokens, base_id, ord)"
            " ORDER BY ord"
            " ON CONFLICT (trace_id) DO NOTHING"
            " RETURNING id, trace_id"
        )
        self._sql_next = (
            f"UPDATE {s}.session_seq c SET next_seq = v.n, max_order_us = GREATEST(c.max_order_us, v.hi)"
            " FROM unnest(%b::text[], %b::bigint[], %b::bigint[]) AS v(k, n, hi) WHERE c.session_key = v.k"
        )
        # a compacted row's base must exist when it commits: the lock makes a delete of the base
        # wait for this write (or this write wait for the delete, then find the base gone)
        self._sql_bases = f"SELECT trace_id FROM {s}.traces WHERE trace_id = ANY(%b::text[]) FOR KEY SHARE"
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
        plans = self._compaction_plans(safe) if safe else None
        if safe:
            with self._lock:
                for attempt in range(_CONFLICT_RETRIES + 1):
                    conn = self._connection()
                    seqs.clear()
                    try:
                        self._write_tx(conn, safe, first, seqs, plans)
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
            if plans is not None:
                self.compactor.remember(plans, seqs)
        return EncodedWriteResult(
            [seqs.get(k) for k in range(len(safe))],
            [enc.trace_id for k, enc in enumerate(encoded) if k not in seqs],
        )

    def _delete(self, session: Optional[str], before_us: Optional[int]) -> int:
        s = self._s
        where, params = [], []
        if session == "":
            where.append("t.session_key = ''")
        elif session is not None:
            where.append(f"t.id IN (SELECT trace_row FROM {s}.trace_uids WHERE uid = %s)")
            params.append(index_key(session))
        if before_us is not None:
            where.append("t.created_us < %s")
            params.append(before_us)
        cond = " AND ".join(where)
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    # lock first (a write compacting against one of these holds FOR KEY SHARE:
                    # wait for it), then make the surviving children of these rows whole
                    doomed = conn.execute(f"SELECT t.id FROM {s}.traces t WHERE {cond} FOR UPDATE", params)
                    ids = [row[0] for row in doomed.fetchall()]
                    if not ids:
                        return 0
                    doomed_ids = set(ids)
                    kept = [row[0] for row in conn.execute(
                        f"SELECT t.id FROM {s}.traces p JOIN {s}.traces t ON t.base_id = p.trace_id"
                        " WHERE p.id = ANY(%s)", (ids,)).fetchall() if row[0] not in doomed_ids]
                    children: list[Any] = []
                    if kept:
                        with conn.cursor(binary=True) as cur:
                            cur.execute(f"SELECT {self._cols} FROM {s}.traces t WHERE t.id = ANY(%s)", (kept,))
                            children = cur.fetchall()
                    for trace_id, doc, arrays in self._relinked(children):
                        conn.execute(f"UPDATE {s}.traces SET doc = %s, arrays = %s, base_id = NULL"
                                     " WHERE trace_id = %s", (doc, arrays, trace_id))
                    conn.execute(f"DELETE FROM {s}.trace_uids WHERE trace_row = ANY(%s)", (ids,))
                    conn.execute(f"DELETE FROM {s}.traces WHERE id = ANY(%s)", (ids,))
            except BaseException as exc:
                self._on_error(exc)
                raise
        self.compactor.forget()
        return len(ids)

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
        plans: Optional[list[Any]] = None,
    ) -> None:
        """One transaction; fills ``seqs`` (input index -> seq). Raises ``_Conflict`` (rolled
        back) when an id was taken concurrently. ``plans``: compacted forms (compact.py)."""
        with conn.transaction(), conn.cursor(binary=True) as cur:
            keys = sorted({encoded[k].session_key for k in first.values()})
            cur.execute(self._sql_lock_sessions, (keys,))
            counters = {key: (int(n), hi) for key, n, hi in cur.fetchall()}
            cur.execute(self._sql_existing, (list(first),))
            existing = {row[0] for row in cur.fetchall()}
            fresh = [k for tid, k in first.items() if tid not in existing]
            if fresh:
                def bases(ids: list[str]) -> set[str]:
                    cur.execute(self._sql_bases, (ids,))
                    return {row[0] for row in cur.fetchall()}

                # a call's context for session order comes from its whole row (a compacted one holds a suffix)
                items = {k: OrderItem.new(k, encoded[k].trace_id, encoded[k].created_us, encoded[k].arrays)
                         for k in fresh}
                placed, moved, top = self._place(cur, encoded, items, counters)
                if moved:  # shifted rows go negative first: UNIQUE(session_key, seq) holds at every row
                    cur.execute(self._sql_move, ([r for r, _, _ in moved], [-1 - q for _, q, _ in moved],
                                                 [o for _, _, o in moved]))
                rows = [encoded[k] for k in fresh] if plans is None else self.compactor.choose(plans, fresh, bases)
                cols: list[list[Any]] = [[] for _ in range(15)]
                for k, enc in zip(fresh, rows):
                    seq, order_us = placed[k]
                    seqs[k] = seq
                    for col, value in zip(
                        cols,
                        (enc.trace_id, enc.session_key, seq, enc.created_us, enc.status,
                         enc.model, enc.doc, enc.arrays, enc.detail, order_us, *items[k].columns(),
                         enc.cached_tokens, enc.base_id),
                    ):
                        col.append(value)
                cur.execute(self._sql_insert, cols)
                row_of = {trace_id: int(row_id) for row_id, trace_id in cur.fetchall()}
                if len(row_of) != len(fresh):
                    raise _Conflict()  # leaves the transaction block: ROLLBACK
                if moved:
                    cur.execute(self._sql_unmove, ([r for r, _, _ in moved],))
                touched = sorted({encoded[k].session_key for k in fresh})
                count = Counter(encoded[k].session_key for k in fresh)
                cur.execute(self._sql_next, (touched, [counters[key][0] + count[key] for key in touched],
                                             [top[key] for key in touched]))
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

    def _place(
        self,
        cur: "psycopg.Cursor[Any]",
        encoded: list[EncodedTrace],
        items: dict[int, OrderItem],
        counters: dict[str, tuple[int, Optional[int]]],
    ) -> tuple[dict[int, tuple[int, int]], list[tuple[int, int, int]], dict[str, int]]:
        """Session order for the new traces (``session_order.place``), per session: one query
        fetches the windows of the sessions whose stored traces reach into them (none in the
        common case: the new call started after the session's last one). Returns the new
        traces' (seq, order key), the moved rows, and each session's largest new order key."""
        groups: dict[str, list[OrderItem]] = {}
        for k, item in items.items():
            groups.setdefault(encoded[k].session_key, []).append(item)
        los = {key: window_start(group) for key, group in groups.items()}
        hot = sorted(key for key in groups if counters[key][1] is None and counters[key][0] > 0
                     or counters[key][1] is not None and counters[key][1] >= los[key])
        windows: dict[str, list[OrderItem]] = {key: [] for key in groups}
        if hot:
            cur.execute(self._sql_window, (hot, [los[key] for key in hot]))
            for key, row, trace_id, order_us, seq, plen, clen, chash in cur.fetchall():
                windows[key].append(OrderItem(trace_id, int(order_us), seq=int(seq), row=int(row),
                                              prompt_len=plen, ctx_len=clen, ctx_hash=chash))

        def load(rows: list[OrderItem]) -> None:
            cur.execute(self._sql_arrays, ([item.row for item in rows],))
            blobs = {int(row): blob for row, blob in cur.fetchall()}
            for item in rows:
                ctx = call_context(_as_bytes(blobs.get(item.row)))
                item.prompt = None if ctx is None else ctx.prompt

        placed: dict[int, tuple[int, int]] = {}
        moved: list[tuple[int, int, int]] = []
        top: dict[str, int] = {}
        for key, group in groups.items():
            window = windows[key]
            placement = place(counters[key][0] - len(window), window, group, load)
            placed.update(placement.fresh)
            moved.extend(placement.moved)
            top[key] = max([o for _, o in placement.fresh.values()] + [o for _, _, o in placement.moved])
        return placed, moved, top

    # ------------------------------------------------------------------------- read

    def _fetch_page(self, query: str, params: tuple[Any, ...], key: Any, n: int) -> list[Any]:
        def run(conn: "psycopg.Connection[Any]") -> list[Any]:
            with conn.cursor(binary=True) as cur:
                cur.execute(query, (*params, *key, n))
                return cur.fetchall()

        return self._read(run)

    def _read_plan(
        self, session: Optional[str], since_us: Optional[int]
    ) -> Optional[tuple[str, tuple[Any, ...], Any]]:
        """Keyset-paginated query (last parameters: the key to start after and ``LIMIT %s``,
        the key being the columns before the last seven), its leading parameters, and the key
        to start after."""
        s, cols = self._s, self._cols
        time_sql = "" if since_us is None else " AND t.created_us >= %s"
        time_params: tuple[Any, ...] = () if since_us is None else (since_us,)
        if session:
            # Session order (call start, trace id in code-point order): paged on that pair.
            query = (
                f"SELECT t.order_us, t.trace_id, {cols[len('t.id, '):]} FROM {s}.trace_uids u"
                f" JOIN {s}.traces t ON t.id = u.trace_row WHERE u.uid = %s{time_sql}"
                ' AND (t.order_us, t.trace_id COLLATE "C") > (%s::bigint, %s::text COLLATE "C")'
                ' ORDER BY t.order_us, t.trace_id COLLATE "C" LIMIT %s'
            )
            return query, (index_key(session), *time_params), SESSION_START
        if session == "":
            query = (
                f"SELECT t.seq, {cols[len('t.id, '):]} FROM {s}.traces t"
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
        rows = self._rows_by_id([index_key(trace_id)])
        return self._rebuilder().decode(rows[0]) if rows else None

    def _rows_by_id(self, trace_ids: list[str]) -> list[Any]:
        """By the stored (index-safe) trace id."""
        def fetch(conn: "psycopg.Connection[Any]") -> Any:
            with conn.cursor(binary=True) as cur:
                cur.execute(f"SELECT {self._cols} FROM {self._s}.traces t WHERE t.trace_id = ANY(%s)", (trace_ids,))
                return cur.fetchall()

        return self._read(fetch)

    def sessions(self) -> list[SessionSummary]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT session_key, status, COUNT(*), MIN(seq), MAX(seq), MIN(created_us),"
                f" MAX(created_us), MIN(id), SUM(cached_tokens) FROM {self._s}.traces"
                " GROUP BY session_key, status"
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

    # ------------------------------------------------------------------------- session list

    def session_page(self, query: "SessionQuery") -> "SessionPage":
        """See ``TraceStore.session_page`` and ``store/listing.py`` (the walk). Uses the
        primary key and the ``(session_key, seq)`` index only; doc fields are read for the rows
        walked and for the page's sessions."""
        from litellm_rllm.store import listing

        s = self._s

        def run(sql: str, params: Sequence[Any]) -> list[Any]:
            return self._read(lambda conn: conn.execute(sql, tuple(params)).fetchall())

        team_sql, team_params = "", []
        if query.team is not None:
            team_sql, team_params = " AND ({a}.doc::json -> 'caller' ->> 'team_id') = %s", [query.team]
        total = None
        if query.session is not None:
            rows = run(
                f"SELECT t.id, t.session_key, (t.doc::json -> 'metadata')::text FROM {s}.traces t"
                f" WHERE t.session_key = %s{team_sql.format(a='t')} ORDER BY t.seq DESC LIMIT 1",
                [index_key(query.session), *team_params],
            )
            nxt = None
        else:
            where, params = [
                "t.session_key <> ''",
                # the session's last trace (the team's last, under a team key): one index probe
                f"NOT EXISTS (SELECT 1 FROM {s}.traces u WHERE u.session_key = t.session_key"
                f" AND u.seq > t.seq{team_sql.format(a='u')})",
            ], [*team_params]
            if query.team is not None:
                where.append(team_sql.format(a="t")[5:])
                params.append(query.team)
            for column, value in (("status", query.status), ("model", query.model)):
                if value is not None:
                    where.append(
                        f"EXISTS (SELECT 1 FROM {s}.traces m WHERE m.session_key = t.session_key"
                        f" AND m.{column} = %s{team_sql.format(a='m')})"
                    )
                    params += [index_key(value), *team_params]
            if query.since_us is not None:
                where.append("t.created_us >= %s")
                params.append(query.since_us)
            if query.until_us is not None:
                where.append("t.created_us < %s")
                params.append(query.until_us)
            if query.q is not None:
                where.append(
                    "(strpos(lower(t.session_key), lower(%s)) > 0"
                    " OR strpos(lower((t.doc::json -> 'metadata')::text), lower(%s)) > 0)"
                )
                params += [query.q, query.q]
            for key, value in query.meta.items():
                where.append("((t.doc::json -> 'metadata') ->> %s) = %s")
                params += [key, value]
            sql = (
                f"SELECT t.id, t.session_key, (t.doc::json -> 'metadata')::text FROM {s}.traces t"
                f" WHERE {' AND '.join(where)} AND t.id < %s AND t.id >= %s ORDER BY t.id DESC LIMIT %s"
            )
            start, bottom = listing.id_window(lambda q, p: run(q, p)[0][0], f"{s}.traces", "%s", query)
            rows, nxt = listing.walk(lambda hi, lo, n: run(sql, [*params, hi, lo, n]), start, bottom, query.limit)
            if query.cursor is None and not query.filtered:
                # one row per session key ever written: cheaper than counting distinct keys
                total = run(f"SELECT count(*) FROM {s}.session_seq WHERE session_key <> ''", ())[0][0]
        keys = [row[1] for row in rows]
        facts: list[Any] = []
        if keys:
            facts = run(
                "SELECT t.session_key, t.status, t.model, t.created_us, t.seq,"
                " EXISTS (SELECT 1 FROM json_array_elements(t.doc::json -> 'choices') c"
                "   WHERE (c -> 'completeness' ->> 'ok') = 'false'),"
                " (t.doc::json -> 'lineage' ->> 'relation')"
                f" FROM {s}.traces t WHERE t.session_key = ANY(%s){team_sql.format(a='t')}",
                [keys, *team_params],
            )
        metadata = {row[1]: _json_object(row[2]) for row in rows}
        return listing.SessionPage(
            sessions=listing.summaries(keys, facts, metadata, self.session_rewards(keys) if keys else {}),
            next=listing.encode_cursor(None if nxt is None else int(nxt)),
            total=None if total is None else int(total),
        )


def _json_object(text: Optional[str]) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


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
