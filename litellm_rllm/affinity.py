"""A stateless session pin: every proxy of a fleet sends a session to the same replica without
sharing anything, and a new session avoids a replica that is already far busier than the rest.

Why it is shaped this way:

* Rendezvous (highest-random-weight) hashing of the session id over the model group's healthy
  deployments: every proxy computes the same order from the same inputs, so no shared state
  (no Redis) is needed; when a replica leaves the healthy set (LiteLLM's cooldown after failed
  calls) only its own sessions move, each to its next choice, and they come back when it does.
* Bounded load (consistent hashing with bounded loads): a session's *first* call (no assistant
  or tool message yet) skips replicas whose in-flight calls through this proxy would exceed
  ``load_factor`` x the group's average (and at least ``min_load``). A diverted session is
  remembered here and keeps its replica on this proxy; another proxy that has not seen it
  sends it to its rendezvous replica, so in a round-robin fleet a diverted session is split.
  Hence the loose default bound: it only acts on real hot spots. With LiteLLM's Redis-backed
  ``session_affinity`` the pin is shared instead (docs/fleet.md).
* Plain Python, no LiteLLM: ``callbacks/session_affinity.py`` adapts it to LiteLLM's router.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, OrderedDict
from typing import Iterable, Optional, Sequence


def rendezvous_order(session: str, deployments: Iterable[str]) -> list[str]:
    """``deployments`` by descending weight for ``session``; the first is its replica."""
    def weight(deployment: str) -> bytes:
        return hashlib.blake2b(f"{session}\x00{deployment}".encode("utf-8", "surrogatepass"), digest_size=8).digest()

    return sorted(deployments, key=lambda d: (weight(d), d), reverse=True)


class SessionPinner:
    """Picks the deployment of a session's call and counts this proxy's calls in flight."""

    def __init__(self, load_factor: float = 1.5, min_load: int = 8, max_pins: int = 100_000,
                 pin_ttl_s: float = 3600.0, call_ttl_s: float = 900.0) -> None:
        if load_factor < 1:
            raise ValueError("load_factor must be >= 1")
        self.load_factor = load_factor
        self.min_load = min_load
        self.in_flight: Counter[str] = Counter()
        self._calls: dict[str, tuple[str, float]] = {}  # call id -> (deployment, started)
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()  # diverted sessions only
        self._max_pins = max_pins
        self._pin_ttl_s = pin_ttl_s
        self._call_ttl_s = call_ttl_s
        self.diverted = 0

    def bound(self, deployments: Sequence[str]) -> int:
        """The most calls a deployment may have in flight and still take a new session."""
        total = sum(self.in_flight[d] for d in deployments)
        return max(self.min_load, math.ceil(self.load_factor * (total + 1) / max(len(deployments), 1)))

    def choose(self, session: str, deployments: Sequence[str], new: bool) -> str:
        """The deployment for a call of ``session`` among the healthy ``deployments``."""
        now = time.monotonic()
        pinned = self._pins.get(session)
        if pinned is not None:
            if pinned[0] in deployments and now - pinned[1] < self._pin_ttl_s:
                self._pins[session] = (pinned[0], now)
                self._pins.move_to_end(session)
                return pinned[0]
            del self._pins[session]
        order = rendezvous_order(session, deployments)
        if not new:
            return order[0]
        limit = self.bound(deployments)
        choice = next((d for d in order if self.in_flight[d] + 1 <= limit), order[0])
        if choice != order[0]:
            self.diverted += 1
            self._pins[session] = (choice, now)
            if len(self._pins) > self._max_pins:
                self._pins.popitem(last=False)
        return choice

    def started(self, call_id: Optional[str], deployment: str) -> None:
        """A call went to ``deployment`` (a retry of the same call replaces its first try)."""
        if not call_id:
            return
        self.finished(call_id)
        now = time.monotonic()
        self._calls[call_id] = (deployment, now)
        self.in_flight[deployment] += 1
        if len(self._calls) % 1024 == 0:
            for cid in [c for c, (_, t) in self._calls.items() if now - t > self._call_ttl_s]:
                self.finished(cid)  # an end we never heard of: don't count it forever

    def finished(self, call_id: Optional[str]) -> None:
        entry = self._calls.pop(call_id, None) if call_id else None
        if entry is not None:
            self.in_flight[entry[0]] -= 1
            if self.in_flight[entry[0]] <= 0:
                del self.in_flight[entry[0]]


def is_first_call(messages: Optional[Sequence[object]]) -> bool:
    """A chat request with no assistant or tool message: the session's first call."""
    if not messages:
        return False
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role in ("assistant", "tool", "function"):
            return False
    return True


__all__ = ["SessionPinner", "is_first_call", "rendezvous_order"]
