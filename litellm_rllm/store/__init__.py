"""Trace storage: ``open(url)`` picks a backend from the URL scheme::

    store = litellm_rllm.store.open("sqlite:///rllm_traces.db")
    store.traces(session="run-1")   # seq order, nested sessions included
    litellm_rllm.store.open("postgresql://user:pass@host/db?schema=rllm")   # many proxies

The proxy writes through ``litellm_rllm.writer.TraceWriter`` (off the event loop, batched).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from litellm_rllm.store.base import SessionSummary, TraceStore, WriteResult, parse_since
from litellm_rllm.store.codec import CorruptTraceError, TraceEncodeError
from litellm_rllm.store.sqlite import SqliteStore

ENV_URL = "RLLM_STORE_URL"
DEFAULT_URL = "sqlite:///rllm_traces.db"


def _open_postgres(url: str) -> TraceStore:
    """The PostgreSQL backend, imported here: psycopg (the ``postgres`` extra) is only needed
    by the URLs that use it, and its absence is a clear error naming the package."""
    from litellm_rllm.store.postgres import PostgresStore

    return PostgresStore.from_url(url)


# scheme -> opener. A backend with an optional driver (PostgreSQL) imports it inside its opener,
# so a missing driver only matters to the URLs that need it.
OPENERS: dict[str, Callable[[str], TraceStore]] = {
    "sqlite": SqliteStore.from_url,
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
}


def resolve_url(url: Optional[str] = None) -> str:
    """The explicit URL, else ``$RLLM_STORE_URL``, else ``sqlite:///rllm_traces.db``."""
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


def open(url: Optional[str] = None) -> TraceStore:  # noqa: A001 - the public name in the SPEC
    """Open (creating/migrating if needed) the trace store at ``url``."""
    url = resolve_url(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    opener = OPENERS.get(scheme)
    if opener is None:
        # The URL itself may carry a password: name only its scheme.
        raise ValueError(
            f"unsupported trace store URL scheme {scheme!r}; "
            f"supported schemes: {', '.join(sorted(OPENERS))}"
        )
    return opener(url)


__all__ = [
    "DEFAULT_URL",
    "ENV_URL",
    "OPENERS",
    "CorruptTraceError",
    "SessionSummary",
    "SqliteStore",
    "TraceEncodeError",
    "TraceStore",
    "WriteResult",
    "open",
    "parse_since",
    "resolve_url",
]
