"""`PreparedCall`: the boundary between the proxy process and the build.

What `prepare` hands to `build_trace`, wherever that runs (the writer thread or the build
process): plain data, the stream's packed arrays and the body's reads as buffers. No LiteLLM
objects, no credentials (the request is trimmed to an allow-list, errors are redacted), so it
pickles cheaply and safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class PreparedCall:
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
    injected: dict[str, Any] = field(default_factory=dict)
    client_request: Optional[dict[str, Any]] = None  # allow-listed keys of the client's body
    upstream: Optional[dict[str, Any]] = None  # allow-listed keys of the deployment kwargs
    hidden: dict[str, Any] = field(default_factory=dict)  # cost, provider, api_base, model name
    error: Optional[dict[str, Any]] = None  # redacted
    response: Optional[dict[str, Any]] = None  # LiteLLM's response, snapshot (untapped calls)
    raw_body: Optional[list[Any]] = None  # the upstream's JSON body as buffers (tapped calls)
    stream_result: Any = None  # capture.stream.StreamAccumulator, for streams
    policy_version: Optional[dict[str, Any]] = None  # {"start", "end"}
