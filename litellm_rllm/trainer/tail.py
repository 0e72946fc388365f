"""`litellm-rllm traces tail`: print the change feed as JSON lines while it grows.

From a proxy (`--proxy URL`, long-polled, reconnecting: `remote.follow`) or straight from a
store (`--store URL`, polled). Starts at the end of the feed unless `--after` gives a cursor
(`0`: from the beginning); on exit (Ctrl-C, or `--idle-exit` seconds without news) it prints
`cursor: N` on stderr, the `--after` that resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterator, Optional


def _parse_after(text: str) -> Any:
    if text == "now":
        return "now"
    if not text.isdigit():
        raise ValueError("--after: a cursor (an integer >= 0) or 'now'")
    return int(text)


def _from_store(url: Optional[str], after: Any, filters: dict[str, Any], limit: int, idle: Optional[float],
                state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    from .. import store

    st = store.open(url)
    try:
        cursor = st.feed_head() if after == "now" else after
        state["cursor"] = cursor
        quiet_since = time.monotonic()
        while True:
            page = st.changes(cursor, limit, **filters)
            for item in page.items:
                state["cursor"] = item.pos
                yield item.to_json()
            cursor = state["cursor"] = page.next
            if page.items:
                quiet_since = time.monotonic()
                continue
            if idle is not None and time.monotonic() - quiet_since >= idle:
                return
            time.sleep(0.2)
    finally:
        st.close()


def _from_proxy(base: str, key: str, after: Any, filters: dict[str, Any], limit: int, idle: Optional[float],
                state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    from .remote import follow

    wait = 30.0 if idle is None else max(0.1, idle)
    follower = follow(base, key, after=after, limit=limit, wait=wait, stop_when_idle=idle is not None, **filters)
    try:
        for item in follower:
            state["cursor"] = follower.cursor
            yield item
        state["cursor"] = follower.cursor
    finally:
        follower.close()


def run_tail(args: Any) -> int:
    """The CLI verb (arguments from `cli.py`)."""
    try:
        after = _parse_after(args.after)
        if args.limit is not None and not 1 <= args.limit <= 1000:
            raise ValueError("--limit: from 1 to 1000")
        if args.idle_exit is not None and args.idle_exit < 0:
            raise ValueError("--idle-exit: seconds >= 0")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    filters = {"session": args.session, "finished": args.finished, "model": args.model,
               "team": getattr(args, "team", None)}
    limit = args.limit or 100
    state: dict[str, Any] = {"cursor": after}
    if args.proxy:
        key = args.key or os.environ.get("RLLM_API_KEY") or os.environ.get("LITELLM_MASTER_KEY")
        if not key:
            print("error: --proxy needs a key: --key, RLLM_API_KEY or LITELLM_MASTER_KEY", file=sys.stderr)
            return 2
        items = _from_proxy(args.proxy, key, after, filters, limit, args.idle_exit, state)
    else:
        items = _from_store(args.store, after, filters, limit, args.idle_exit, state)
    out = sys.stdout
    try:
        for item in items:
            out.write(json.dumps(item, separators=(",", ":")))
            out.write("\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head`
        return 0
    print(f"cursor: {state['cursor']}", file=sys.stderr)
    return 0


__all__ = ["run_tail"]
