"""The pause gate: while a model group is paused for a weight sync, new calls to it wait
(`hold`) or are turned away (`reject`); calls already upstream finish. It also counts the calls
in flight per model group, which is how a trainer knows the servers are drained.

Plain asyncio, no LiteLLM: the tracer's pre-call hook calls `admit` and turns a `PauseRefused`
into the HTTP answer. The state comes from `LiveState` (a dict lookup); the gate never queries
the store, so a store error cannot fail a request (stale state is ignored: `live.py`).

- hold: the call waits until the group is resumed, at most `hold_timeout_s`, then 503 with
  `Retry-After`. Resumes posted to any proxy reach the waiting calls through the store poll.
- reject: 429 with `Retry-After` (and `x-should-retry: true`): the official OpenAI clients
  retry 429s after the delay the header gives (2 retries by default), so `retry_after_s = 1`
  carries an agent through a pause of about two seconds without an error.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Optional

from .live import LiveState


class PauseRefused(Exception):
    """The call is not admitted: answer `status` with `Retry-After`."""

    def __init__(self, status: int, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s))),
                "retry-after-ms": str(int(self.retry_after_s * 1000)), "x-should-retry": "true"}


class Ticket:
    """One admitted call; `release()` (once) when it ends."""

    __slots__ = ("_gate", "model", "_done")

    def __init__(self, gate: "PauseGate", model: str) -> None:
        self._gate, self.model, self._done = gate, model, False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._gate._release(self.model)


class PauseGate:
    """Admission per model group, and the in-flight / held counts of this proxy."""

    def __init__(self, live: LiveState, *, hold_timeout_s: float = 60.0, retry_after_s: float = 1.0,
                 counters: Optional[Counter[str]] = None) -> None:
        self.live = live
        self.hold_timeout_s = hold_timeout_s
        self.retry_after_s = retry_after_s
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.in_flight: dict[str, int] = {}
        self.held: dict[str, int] = {}

    async def admit(self, model: Optional[str]) -> Ticket:
        """A ticket for the call, after any hold; raises `PauseRefused`."""
        group = model or ""
        pause = self.live.pause_for(group)
        if pause is None:  # the common case: one dict lookup
            return self._ticket(group)
        if pause.mode == "reject":
            raise self._reject(group)
        return await self._hold(group)

    async def _hold(self, group: str) -> Ticket:
        deadline = time.monotonic() + self.hold_timeout_s
        self.held[group] = self.held.get(group, 0) + 1
        self.counters["pause_held"] += 1
        try:
            while True:
                seen = self.live.control.generation
                pause = self.live.pause_for(group)
                if pause is None:
                    return self._ticket(group)
                if pause.mode == "reject":
                    raise self._reject(group)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.counters["pause_hold_timeouts"] += 1
                    raise PauseRefused(503, f"model group {group!r} is paused for a weight update; still paused"
                                            f" after {self.hold_timeout_s:g}s", self.retry_after_s)
                # re-check at least every second: a stale state must end the hold (fail open)
                await self.live.control.wait(seen, min(remaining, 1.0))
        finally:
            left = self.held.get(group, 1) - 1
            if left:
                self.held[group] = left
            else:
                self.held.pop(group, None)

    def _reject(self, group: str) -> PauseRefused:
        self.counters["pause_rejected"] += 1
        return PauseRefused(429, f"model group {group!r} is paused for a weight update; retry shortly",
                            self.retry_after_s)

    def _ticket(self, group: str) -> Ticket:
        self.in_flight[group] = self.in_flight.get(group, 0) + 1
        return Ticket(self, group)

    def _release(self, group: str) -> None:
        left = self.in_flight.get(group, 1) - 1
        if left > 0:
            self.in_flight[group] = left
        else:
            self.in_flight.pop(group, None)

    def snapshot(self) -> dict[str, Any]:
        """This proxy's counts (copied: the poller thread reads them while the loop writes)."""
        return {"in_flight": dict(self.in_flight), "held": dict(self.held)}


def drain_report(
    pauses: dict[str, Any],
    proxies: dict[str, tuple[float, dict[str, Any]]],
    local_id: str,
    local: dict[str, Any],
) -> dict[str, Any]:
    """`GET /rllm/pause`'s answer from the store's pauses and the live proxies' heartbeats
    (this proxy's own counts are taken fresh). A paused group is drained when every live
    proxy has applied that pause (its heartbeat names the pause's `since`) and has no call
    of the group in flight."""
    proxies = dict(proxies)
    proxies[local_id] = (0.0, local)
    in_flight: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for _age, state in proxies.values():
        in_flight.update(state.get("in_flight") or {})
        held.update(state.get("held") or {})
    drained: dict[str, bool] = {}
    for model, pause in pauses.items():
        ok = True
        for _age, state in proxies.values():
            applied = (state.get("applied") or {}).get(model)
            flying = state.get("in_flight") or {}
            busy = sum(flying.values()) if model == "*" else flying.get(model, 0)
            if applied != pause.since_us or busy:
                ok = False
                break
        drained[model] = ok
    return {
        "paused": {m: {"mode": p.mode, "since": p.since.isoformat()} for m, p in pauses.items()},
        "in_flight": dict(in_flight),
        "held": dict(held),
        "drained": drained,
        "proxies": [{"proxy_id": pid, "age_s": round(age, 3), "self": pid == local_id, **state}
                    for pid, (age, state) in sorted(proxies.items())],
    }


__all__ = ["PauseGate", "PauseRefused", "Ticket", "drain_report"]
