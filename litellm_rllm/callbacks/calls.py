"""Per-call state: what the hooks learn about one client request before its trace is built,
keyed by LiteLLM's call id."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class CallState:
    """What the hooks learn about one client request before its trace is built."""

    call_id: str
    started: float = field(default_factory=time.perf_counter)
    started_wall: float = field(default_factory=time.time)
    client_request: Optional[dict[str, Any]] = None  # shallow copy of the body as the client sent it
    caller: Optional[dict[str, Any]] = None
    upstream: Optional[dict[str, Any]] = None  # deployment-hook kwargs: the request as sent upstream
    injected: dict[str, Any] = field(default_factory=dict)  # the policy's record, for the trace
    strip: tuple[str, ...] = ()  # injected fields the client did not ask for: hide them from it
    stream_wrapped: bool = False
    tap: Any = None  # upstream_tap.UpstreamTap: the stream as the upstream sent it
    ticket: Any = None  # trainer.pause.Ticket: counts the call in flight until it ends
    policy_start: Optional[int] = None  # the model group's policy version when sent upstream


class CallRegistry:
    """Calls in flight, keyed by LiteLLM's call id.

    The entries that keep per-call state `enroll` their role; the first to enroll is the
    `carrier`, the one entry whose final hooks serve every enrolled role and end the call
    (finish.enroll). Entries older than `ttl_s` are swept so a request whose final hook never
    ran can't leak memory.
    """

    def __init__(self, ttl_s: float = 3600.0, sweep_every: int = 1024, remember: int = 10_000) -> None:
        self.roles: set[str] = set()
        self.carrier: Optional[str] = None  # the role whose entry carries the final hooks
        self._calls: dict[str, CallState] = {}
        self._ended: dict[str, None] = {}  # insertion-ordered set of recently ended call ids
        self._remember = remember
        self._ttl_s = ttl_s
        self._sweep_every = sweep_every
        self._ops = 0

    def enroll(self, role: str) -> bool:
        """Add `role`; True when its entry is the carrier (the first role to enroll; asking
        again for the same role gives the same answer)."""
        self.roles.add(role)
        if self.carrier is None:
            self.carrier = role
        return self.carrier == role

    def get_or_create(self, call_id: str) -> CallState:
        state = self._calls.get(call_id)
        if state is None:
            state = self._calls[call_id] = CallState(call_id)
            self._ops += 1
            if self._ops % self._sweep_every == 0:
                self._sweep()
        return state

    def get(self, call_id: Optional[str]) -> Optional[CallState]:
        return self._calls.get(call_id) if call_id else None

    def end(self, call_id: Optional[str]) -> Optional[CallState]:
        """Remove and return the call's state; remember that it ended (a late hook is a no-op)."""
        if not call_id:
            return None
        self._ended[call_id] = None
        if len(self._ended) > self._remember:
            self._ended.pop(next(iter(self._ended)))
        state = self._calls.pop(call_id, None)
        if state is not None and state.ticket is not None:
            state.ticket.release()
        return state

    def ended(self, call_id: Optional[str]) -> bool:
        return bool(call_id) and call_id in self._ended

    def __len__(self) -> int:
        return len(self._calls)

    def _sweep(self) -> None:
        cutoff = time.perf_counter() - self._ttl_s
        for key in [k for k, s in self._calls.items() if s.started < cutoff]:
            state = self._calls.pop(key, None)
            if state is not None and state.ticket is not None:
                state.ticket.release()
