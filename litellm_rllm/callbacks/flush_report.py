"""What `/rllm/flush` and the session read answer about durability, so a trainer can't take a
partial or lossy state for a complete one.

The flush barrier (`POST /rllm/flush`), once everything finished before it has been handled:

* 200 `{"flushed": true}`: every finished call is in the store.
* 503 `{"flushed": false, "durable": ..., "spooled": N, "held": M}` + `Retry-After`: the store
  does not take traces now; N wait in the local spool (fsynced), M in memory (neither the store
  nor the spool takes them: a full disk). Retry: they are written when the store is back.
* 409 `{"flushed": false, "lost": N, ...}` + an error log line: N traces were lost since the
  previous flush answer (queue full, store and spool full past `writer_max_queue`, a trace the
  store refuses, a build failure); the log lines before it name them. Reported once: the next
  flush answers for what happened after this one. Not a 5xx, so an HTTP client that retries
  server errors can't turn it into a 200 behind the trainer's back.

A session read (`GET /rllm/sessions/{id}/traces`) says `complete: false, pending: N` (and
`X-RLLM-Complete` / `X-RLLM-Pending` headers) while N traces of that session wait outside the
store (spooled, held or queued): poll `POST /rllm/flush` until 200, then read again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ..writer import TraceWriter

log = logging.getLogger("litellm_rllm")

SINCE_MAX_CHARS = 64  # an ISO 8601 date/time with offset and microseconds is 32


def bad_param(param: str, message: str) -> Any:
    """A 400 naming the parameter (the proxy's error shape)."""
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=400, content={"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": "rllm_invalid_param"}})


def check_since(since: Optional[str]) -> Optional[str]:
    """None when `since` is absent or a valid ISO 8601 date/time, else the problem."""
    if since is None:
        return None
    from ..store.base import parse_since

    if len(since) > SINCE_MAX_CHARS:
        return f"since: too long ({len(since)} characters); give an ISO 8601 date/time such as 2026-01-01T00:00:00Z"
    try:
        parse_since(since)
    except (ValueError, OverflowError):
        return f"since: not an ISO 8601 date/time: {since!r}; e.g. 2026-01-01T00:00:00Z"
    return None


def flush_answer(writer: "TraceWriter", in_time: bool, timeout: float) -> tuple[int, dict[str, Any]]:
    """The flush route's status and body (module docstring). Logs each loss once."""
    lost = writer.take_lost()
    stats = writer.stats()
    spooled = int(stats.get("spool_pending", 0) or 0)
    held = int(stats.get("held", 0) or 0)
    counts = {"spooled": spooled, "held": held, "lost_total": int(stats.get("lost", 0) or 0), "writer": stats}
    if lost:
        log.error("litellm-rllm: %d traces lost since the last flush (%d since start; failed %d, dropped %d, "
                  "build_errors %d); the log lines before this one name them", lost, counts["lost_total"],
                  stats.get("failed", 0), stats.get("dropped", 0), stats.get("build_errors", 0))
        return 409, {"flushed": False, "lost": lost, "error": f"{lost} traces were lost since the last flush", **counts}
    if not in_time:
        return 504, {"flushed": False, "error": f"traces not durable within {timeout}s", **counts}
    if spooled or held:
        return 503, {"flushed": False, "durable": held == 0, **counts}
    return 200, {"flushed": True, **counts}


def completeness(writer: "TraceWriter", session: str, flushed: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """Fields and headers of a session read: how many of its traces wait outside the store.
    Taken before the read (a trace written meanwhile only makes the answer cautious)."""
    pending = writer.pending_for(session)
    complete = pending == 0 and flushed
    fields: dict[str, Any] = {"complete": complete, "pending": pending}
    if not complete:
        fields["wait"] = "POST /rllm/flush until it answers 200, then read again"
    return fields, {"X-RLLM-Complete": "true" if complete else "false", "X-RLLM-Pending": str(pending)}


__all__ = ["SINCE_MAX_CHARS", "bad_param", "check_since", "completeness", "flush_answer"]
