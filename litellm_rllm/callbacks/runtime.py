"""Process-wide state the three callbacks share: settings, the writer, policies, calls in flight.

Each callback works alone, so none of them owns this state; whichever needs a piece first
creates it. Everything here is created at most once per process (LiteLLM may import the
callbacks module several times across config reloads).
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..policy import PolicyFile
from ..settings import Settings, load_settings
from ..store.writer import TraceWriter

log = logging.getLogger("litellm_rllm")


def _ensure_log_handler() -> None:
    """Inside the proxy nobody configures our logger; give it LiteLLM's look (time, level) at
    INFO unless the deployment configured logging itself (a root handler or one of ours)."""
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s - litellm_rllm:%(levelname)s: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


_ensure_log_handler()

_lock = threading.Lock()
_settings: Optional[Settings] = None
_writer: Optional[TraceWriter] = None
_policies: Optional[PolicyFile] = None


def settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _settings = load_settings()
        return _settings


@functools.lru_cache(maxsize=4096)
def check_slug(slug: str) -> Any:
    """Decode and validate a slug with this proxy's limits and secrets (raises SlugError).

    Cached: an agent sends the same slug on every call of its session, and the route and the
    metadata hook both need it decoded. The result (`SlugMetadata`) is immutable; errors are
    not cached. Settings are fixed for the process's life, so they can't go stale."""
    from ..slug import SlugLimits, decode

    cfg = settings()
    limits = SlugLimits(max_bytes=cfg.slug_max_bytes, max_depth=cfg.slug_max_depth, max_keys=cfg.slug_max_keys)
    return decode(slug, limits=limits, secrets=cfg.slug_secrets(), require_signed=cfg.require_signed_slugs)


def writer() -> TraceWriter:
    """The background writer; built on first use so a proxy without the tracer opens no store."""
    global _writer
    if _writer is not None:
        return _writer
    cfg = settings()
    with _lock:
        if _writer is None:
            from .. import store

            url = cfg.store
            _writer = TraceWriter(
                lambda: store.open(url),
                encoder=_encoder(cfg),
                batch_size=cfg.writer_batch_size,
                max_queue=cfg.writer_max_queue,
                spool=cfg.spool_path(),
                spool_max_bytes=cfg.spool_max_bytes or None,
            )
            atexit.register(_writer.close)
            from .shutdown import install_shutdown_close  # SIGTERM: uvicorn skips atexit

            install_shutdown_close(_writer.close)
        return _writer


def _encoder(cfg: Settings) -> Any:
    """Call records -> stored rows: in the build process, or in the writer thread."""
    from ..build import build_trace, prepare, weight
    from ..store.encoders import InlineEncoder

    if not cfg.writer_build_process:
        return InlineEncoder(build_trace)
    from ..store.encoder_process import ProcessEncoder

    return ProcessEncoder("litellm_rllm.build:build_trace", prepare=prepare, weight=weight,
                          min_weight=cfg.writer_build_process_min_bytes)


def policies() -> PolicyFile:
    global _policies
    if _policies is not None:
        return _policies
    cfg = settings()
    with _lock:
        if _policies is None:
            pf = PolicyFile(cfg.policies_path(), interval_s=cfg.policies_reload_interval_s)
            pf.start()
            _policies = pf
        return _policies


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


class CallRegistry:
    """Calls in flight, keyed by LiteLLM's call id.

    The callbacks that keep per-call state `enroll` their role, so the first final hook to run
    (whichever callback it belongs to) can serve every active role and end the call; the
    callbacks then don't depend on the order LiteLLM runs them in. Entries older than `ttl_s`
    are swept so a request whose final hook never ran can't leak memory.
    """

    def __init__(self, ttl_s: float = 3600.0, sweep_every: int = 1024, remember: int = 10_000) -> None:
        self.roles: set[str] = set()
        self._calls: dict[str, CallState] = {}
        self._ended: dict[str, None] = {}  # insertion-ordered set of recently ended call ids
        self._remember = remember
        self._ttl_s = ttl_s
        self._sweep_every = sweep_every
        self._ops = 0

    def enroll(self, role: str) -> None:
        self.roles.add(role)

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
        return self._calls.pop(call_id, None)

    def ended(self, call_id: Optional[str]) -> bool:
        return bool(call_id) and call_id in self._ended

    def __len__(self) -> int:
        return len(self._calls)

    def _sweep(self) -> None:
        cutoff = time.perf_counter() - self._ttl_s
        for key in [k for k, s in self._calls.items() if s.started < cutoff]:
            self._calls.pop(key, None)


calls = CallRegistry()
