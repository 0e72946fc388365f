"""Errors of opening a trace store, shared by the backends and ``store.open``."""

from __future__ import annotations


class StoreNotFoundError(LookupError):
    """A store opened for reading (``create=False``) does not exist; the message names where
    it was looked for (the resolved absolute path for SQLite), so a typo is not read as an
    empty store."""
