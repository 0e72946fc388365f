"""Which sessions have traces that are not in the store yet (spooled or held in memory).

Why: a trainer reading a session back while some of its traces wait in the spool gets a partial
session that looks complete. The writer counts, per session uid, the rows it has spooled or
holds and not yet written, and the read route reports ``complete: false, pending: N``.

Counted per uid of each row (``EncodedTrace.uids``: the session id and every nested session
uid), because a session read matches any of them. Written by the writer thread only; read from
any thread (a dict lookup).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from litellm_rllm.store.codec import EncodedTrace


class SessionCounts:
    """uid -> rows of that session waiting outside the store."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, rows: Iterable[EncodedTrace]) -> None:
        counts = self._counts
        for row in rows:
            for uid in row.uids:
                counts[uid] = counts.get(uid, 0) + 1

    def remove(self, rows: Iterable[EncodedTrace]) -> None:
        counts = self._counts
        for row in rows:
            for uid in row.uids:
                left = counts.get(uid, 0) - 1
                if left > 0:
                    counts[uid] = left
                else:
                    counts.pop(uid, None)

    def get(self, uid: str) -> int:
        return self._counts.get(uid, 0)

    def clear(self) -> None:
        self._counts = {}

    def __len__(self) -> int:
        return len(self._counts)


def item_uids(item: Any) -> Sequence[str]:
    """The session uids of a queued item (a call record, a Trace or an encoded row), best
    effort: an item of another shape has none."""
    if isinstance(item, EncodedTrace):
        return item.uids
    session = getattr(item, "session", None)  # capture.record.CallRecord: the slug's metadata
    if isinstance(session, dict):
        sid: Optional[Any] = session.get("session_id")
        uids = session.get("session_uids") or ()
    else:
        sid = getattr(item, "session_id", None)  # a Trace
        uids = getattr(item, "session_uids", None) or ()
    out = [str(sid)] if sid else []
    if isinstance(uids, (list, tuple)):
        out.extend(str(u) for u in uids if u)
    return out


__all__ = ["SessionCounts", "item_uids"]
