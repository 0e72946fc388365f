"""`LiveState`: this proxy's view of the store's control state (policy versions, pauses, the
feed head), kept fresh by one background thread, and this proxy's heartbeat to the others.

Why a thread and a cache: the hot path (a pre-call hook, a version stamp) must read the state
with a dict lookup, never a query; and every proxy on the store must see a change within a
second. The thread polls `store.control_state()` every `poll_s` (0.5 s: one small read), and
the feed head every `feed_poll_s` while a follower waits on this proxy (one index lookup), so a
commit by another proxy reaches a waiting follower within that interval; commits made by this
proxy wake followers at once (`feed.fire` from the writer). A change posted to this proxy is
applied to the cache at once (`apply_*`), before the store round trip of the others.

Failure: a poll that fails keeps the last known state and counts `live_poll_errors`; once the
state is older than `stale_after_s`, pauses are ignored (fail open: a store outage must not
stop serving) and each call admitted that way counts `pause_fail_open`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from typing import Any, Callable, Mapping, Optional

from .schema import PauseState
from .signal import Signal
from .versions import ALL_MODELS, version_for

log = logging.getLogger("litellm_rllm")

# Heartbeat pace while nothing is paused (every poll while something is). A proxy counts as live
# for `live_window_s`: an idle one must beat well within it, or a pause posted just then would
# be reported drained without it.
HEARTBEAT_IDLE_S = 1.0


def live_window_s(poll_s: float) -> float:
    """How recent a proxy's heartbeat must be for it to count in a drain report."""
    return max(3.0, 4 * poll_s, 2 * HEARTBEAT_IDLE_S)


class LiveState:
    """Cached control state + the poller thread. `open_store()` makes the thread's own store
    connection (opened in the thread, on first poll)."""

    def __init__(
        self,
        open_store: Callable[[], Any],
        *,
        poll_s: float = 0.5,
        feed_poll_s: float = 0.05,
        stale_after_s: float = 10.0,
        counters: Optional[Counter[str]] = None,
        heartbeat_state: Optional[Callable[[], dict[str, Any]]] = None,
    ) -> None:
        self._open_store = open_store
        self.poll_s, self.feed_poll_s, self.stale_after_s = poll_s, feed_poll_s, stale_after_s
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.heartbeat_state = heartbeat_state or (lambda: {})
        self.proxy_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.versions: dict[str, int] = {}
        self.pauses: dict[str, PauseState] = {}
        self.feed = Signal()  # fired when the feed may have new items
        self.control = Signal()  # fired when versions or pauses changed
        self.last_ok: Optional[float] = None  # monotonic time of the last good poll
        self.head = 0
        self.followers = 0  # feed requests waiting on this proxy (the head is polled meanwhile)
        self._local_changes = 0  # bumped by apply_*: a poll that read before one must not undo it
        self._store: Any = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._poll_now = False
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._last_beat = 0.0

    # ---- reads for the hot path ----------------------------------------------------------

    def version_for(self, model: Optional[str]) -> Optional[int]:
        return version_for(self.versions, model)

    def effective_pauses(self) -> Mapping[str, PauseState]:
        """The pauses to enforce: the last known ones, or none once they are stale."""
        if not self.pauses:
            return self.pauses
        if self.last_ok is not None and time.monotonic() - self.last_ok <= self.stale_after_s:
            return self.pauses
        self.counters["pause_fail_open"] += 1
        return {}

    def pause_for(self, model: Optional[str]) -> Optional[PauseState]:
        pauses = self.effective_pauses()
        if not pauses:
            return None
        return pauses.get(model or "") or pauses.get(ALL_MODELS)

    # ---- changes made through this proxy -------------------------------------------------

    def apply_version(self, model: str, version: int) -> None:
        self._local_changes += 1
        if self.versions.get(model) != version:
            self.versions = {**self.versions, model: version}
            self.control.fire()

    def apply_pauses(self, pauses: Mapping[str, PauseState]) -> None:
        self._local_changes += 1
        if dict(pauses) != self.pauses:
            self.pauses = dict(pauses)
            self.control.fire()
        self._poll_now = True  # heartbeat soon: the trainer is waiting for the drain
        self._wake.set()

    # ---- the thread ----------------------------------------------------------------------

    def start(self) -> "LiveState":
        with self._lock:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="litellm-rllm-live", daemon=True)
                self._thread.start()
        return self

    def poke(self) -> None:
        """A follower started waiting: start polling the feed head now, not at the next
        control poll."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception:  # noqa: BLE001 - closing at exit
                pass

    def stats(self) -> dict[str, Any]:
        age = None if self.last_ok is None else round(time.monotonic() - self.last_ok, 3)
        return {"proxy_id": self.proxy_id, "versions": dict(self.versions), "paused": sorted(self.pauses),
                "state_age_s": age, "feed_head": self.head}

    def _run(self) -> None:
        next_control = 0.0
        while not self._stopping:
            now = time.monotonic()
            if now >= next_control:
                self.poll_once()
                next_control = time.monotonic() + self.poll_s
            elif self.followers > 0 or self.feed.has_waiters():
                self._poll_head()
            if self._stopping:
                break
            wait = next_control - time.monotonic()
            if self.followers > 0 or self.feed.has_waiters():
                wait = min(wait, self.feed_poll_s)
            if self._wake.wait(max(0.0, wait)):
                self._wake.clear()
                if self._poll_now:
                    self._poll_now = False
                    next_control = 0.0

    def _get_store(self) -> Any:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def poll_once(self) -> bool:
        """Read versions, pauses and the feed head; heartbeat when due. False on a store error."""
        local = self._local_changes
        try:
            versions, pauses, head = self._get_store().control_state()
        except Exception as exc:  # noqa: BLE001 - keep serving with the last known state
            self._poll_failed(exc)
            return False
        self.last_ok = time.monotonic()
        if local != self._local_changes:  # a change posted here meanwhile: this read may predate it
            self._see_head(head)
            self._poll_now = True
            self._wake.set()
            return True
        if versions != self.versions:
            self.versions = versions
            self.control.fire()
        if pauses != self.pauses:
            self.pauses = pauses
            self.control.fire()
        self._see_head(head)
        if pauses or time.monotonic() - self._last_beat >= HEARTBEAT_IDLE_S:
            self._beat()
        return True

    def _poll_head(self) -> None:
        try:
            self._see_head(self._get_store().feed_head())
        except Exception as exc:  # noqa: BLE001
            self._poll_failed(exc)

    def _see_head(self, head: int) -> None:
        if head != self.head:
            self.head = head
            self.feed.fire()

    def _beat(self) -> None:
        state = dict(self.heartbeat_state())
        state["applied"] = {m: p.since_us for m, p in self.pauses.items()}
        try:
            self._get_store().heartbeat(self.proxy_id, state)
            self._last_beat = time.monotonic()
        except Exception as exc:  # noqa: BLE001
            self._poll_failed(exc)

    def _poll_failed(self, exc: BaseException) -> None:
        self.counters["live_poll_errors"] += 1
        if self.counters["live_poll_errors"] in (1, 10, 100) or self.counters["live_poll_errors"] % 1000 == 0:
            log.warning("litellm-rllm: reading the trainer state from the store failed (%s: %s); "
                        "serving with the last known state", type(exc).__name__, exc)
        store, self._store = self._store, None  # reconnect on the next poll
        if store is not None:
            try:
                store.close()
            except Exception:  # noqa: BLE001
                pass


__all__ = ["HEARTBEAT_IDLE_S", "LiveState", "live_window_s"]
