"""`CallRecord`: what the event loop hands the writer for one finished call.

Built on the hot path, so it holds references (the request dict, the response's parts, the
stream's packed arrays), never copies or JSON. In the writer thread `builder.prepare` reduces it
to a `builder.PreparedCall` (plain data), which `builder.build_trace` turns into a `Trace`, in the
writer's build process or in the thread itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class CallRecord:
    call_id: str
    started_wall: float
    status: str = "ok"
    route: Optional[str] = None
    model: Optional[str] = None
    stream: bool = False
    latency_ms: Optional[float] = None
    ttft_ms: Optional[float] = None
    session: dict[str, Any] = field(default_factory=dict)  # decoded slug metadata
    caller: Optional[dict[str, Any]] = None
    client_request: Optional[dict[str, Any]] = None  # shallow copy of the proxy's request body
    upstream: Optional[dict[str, Any]] = None  # shallow copy of the deployment kwargs
    injected: dict[str, Any] = field(default_factory=dict)
    response: Optional[dict[str, Any]] = None  # shallow snapshot: top-level fields + choices
    raw_body: Optional[list[bytes]] = None  # the upstream's JSON response as read (tapped calls)
    hidden: dict[str, Any] = field(default_factory=dict)  # response._hidden_params
    stream_result: Any = None  # stream.StreamAccumulator, for streams
    error: Optional[dict[str, Any]] = None
    usage: Any = None  # LiteLLM's parsed usage of a tapped body: prices it when LiteLLM did not
    policy_version: Optional[dict[str, Any]] = None  # {"start", "end"}: trainer/versions.py
