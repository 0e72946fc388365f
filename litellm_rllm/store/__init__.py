"""Trace storage: ``open(url)`` picks a backend from the URL scheme::

    store = litellm_rllm.store.open("sqlite:///rllm_traces.db", create=False)   # read it
    store.traces(session="run-1")   # seq order, nested sessions included
    litellm_rllm.store.open("postgresql://user:pass@host/db?schema=rllm")   # many proxies

``sqlite:///rel.db`` is relative to the current folder, ``sqlite:////abs/x.db`` absolute
(SQLAlchemy's convention). Readers pass ``create=False``: a missing SQLite file is then a
``StoreNotFoundError`` naming the absolute path looked at, not a new empty store.

The proxy writes through ``litellm_rllm.writer.TraceWriter`` (off the event loop, batched).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from litellm_rllm.store.base import SessionSummary, TraceStore, WriteResult, parse_since
from litellm_rllm.store.codec import CorruptTraceError, TraceEncodeError
from litellm_rllm.store.errors import StoreNotFoundError
from litellm_rllm.store.sqlite import SqliteStore

ENV_URL = "RLLM_STORE_URL"
DEFAULT_URL = "sqlite:///rllm_traces.db"


def _open_sqlite(url: str, create: bool) -> TraceStore:
    return SqliteStore.from_url(url, create=create)


def _open_postgres(url: str, create: bool) -> TraceStore:
    """The PostgreSQL backend, imported here: psycopg (the ``postgres`` extra) is only needed
    by the URLs that use it, and its absence is a clear error naming the package. ``create``
    does not apply: the database must exist either way (the server makes databases, not us),
    and its tables are created at the first connection."""
    from litellm_rllm.store.postgres import PostgresStore

    return PostgresStore.from_url(url)


# scheme -> opener(url, create). A backend with an optional driver (PostgreSQL) imports it
# inside its opener, so a missing driver only matters to the URLs that need it.
OPENERS: dict[str, Callable[[str, bool], TraceStore]] = {
    "sqlite": _open_sqlite,
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
}


def resolve_url(url: Optional[str] = None) -> str:
    """The explicit URL, else ``$RLLM_STORE_URL``, else ``sqlite:///rllm_traces.db``."""
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


def open(url: Optional[str] = None, *, create: bool = True) -> TraceStore:  # noqa: A001 - the SPEC's name
    """Open the trace store at ``url`` (default: ``resolve_url``), migrating its schema if needed.

    ``create=True`` (writers, the proxy) makes a missing SQLite file and its folder.
    ``create=False`` (readers: the CLI, trainers) raises ``StoreNotFoundError`` instead, naming
    the absolute path looked at (and the four-slash URL when the user probably meant an
    absolute path). A URL of an unknown scheme is a ``ValueError`` naming the scheme only.
    """
    url = resolve_url(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    opener = OPENERS.get(scheme)
    if opener is None:
        # The URL itself may carry a password: name only its scheme.
        raise ValueError(
            f"unsupported trace store URL scheme {scheme!r}; "
            f"supported schemes: {', '.join(sorted(OPENERS))}"
        )
    return opener(url, create)


__all__ = [
    "DEFAULT_URL",
    "ENV_URL",
    "OPENERS",
    "CorruptTraceError",
    "SessionSummary",
    "SqliteStore",
    "StoreNotFoundError",
    "TraceEncodeError",
    "TraceStore",
    "WriteResult",
    "open",
    "parse_since",
    "resolve_url",
]
