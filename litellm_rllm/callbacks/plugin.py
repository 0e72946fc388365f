"""The one object that holds the plugin's process state.

Settings, policies, the writer, the calls in flight, the counters and the slug check live on a
`Plugin`, created once per process (`plugin()`) and reached from the three YAML entries. Each
entry works alone, so none of them owns this state: the writer opens the store on first use
(a proxy without the tracer opens none), the policies file is read on first use (a proxy
without the sampling callback reads none). Start-up work (the optional `gc.freeze`) is
scheduled at start, and `close()` is the one shutdown path (atexit and LiteLLM's shutdown
event both call it; it is idempotent).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..settings import Settings, load_settings
from ..slug import SlugLimits, SlugMetadata, decode
from .calls import CallRegistry

if TYPE_CHECKING:
    from ..policy import PolicyFile
    from ..store.base import TraceStore
    from ..writer import TraceWriter

log = logging.getLogger("litellm_rllm")

# How long the writer may take to make the queue durable at shutdown.
SHUTDOWN_TIMEOUT_S = 30.0
# gc.freeze() this long after the plugin starts: LiteLLM's start-up (which imports us) is over.
GC_FREEZE_DELAY_S = 5.0


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


class Plugin:
    """Process state of litellm-rllm inside one LiteLLM proxy process."""

    def __init__(self, settings: Optional[Settings] = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.calls = CallRegistry()
        # capture_errors: a trace could not be captured; strip_errors: an injected field could
        # not be hidden; policy_errors: a policy decision failed (the request went unchanged).
        self.counters: Counter[str] = Counter(capture_errors=0, strip_errors=0, policy_errors=0, submitted=0)
        self.entries: dict[str, Any] = {}  # the YAML entries' callback instances, by name
        self._lock = threading.Lock()
        self._writer: Optional[TraceWriter] = None
        self._reader: Optional[TraceStore] = None
        self._policies: Optional[PolicyFile] = None
        self._closed = False
        self.check_slug: Callable[[str], SlugMetadata] = functools.lru_cache(maxsize=4096)(self._check_slug)
        atexit.register(self.close)
        self._schedule_gc_freeze()

    # ---- start-up -----------------------------------------------------------------------

    def _schedule_gc_freeze(self) -> None:
        """`gc_freeze_after_start`: move LiteLLM's start-up heap out of the collector's sight,
        once, after start-up (the callbacks are imported during LiteLLM's start-up)."""
        if not self.settings.gc_freeze_after_start:
            return
        try:
            asyncio.get_running_loop().call_later(GC_FREEZE_DELAY_S, _freeze_heap)
        except RuntimeError:  # no loop (a script, the CLI): now is after start-up
            _freeze_heap()

    # ---- the parts, created on first use ------------------------------------------------

    def _check_slug(self, slug: str) -> SlugMetadata:
        """Decode and validate a slug with this proxy's limits and secrets (raises SlugError).
        Cached per instance: an agent sends the same slug on every call of its session; the
        result is immutable and errors are not cached."""
        cfg = self.settings
        limits = SlugLimits(max_bytes=cfg.slug_max_bytes, max_depth=cfg.slug_max_depth, max_keys=cfg.slug_max_keys)
        return decode(slug, limits=limits, secrets=cfg.slug_secrets(), require_signed=cfg.require_signed_slugs)

    @property
    def writer(self) -> "TraceWriter":
        """The background writer; a bad store URL fails here (the tracer calls it at start)."""
        if self._writer is not None:
            return self._writer
        with self._lock:
            if self._writer is None:
                self._writer = self._make_writer()
                from .shutdown import install_shutdown_close  # SIGTERM: uvicorn skips atexit

                install_shutdown_close(self.close)
            return self._writer

    def _make_writer(self) -> "TraceWriter":
        from ..builder import build_trace, prepare, weight
        from ..writer import TraceWriter
        from ..writer.encoders import InlineEncoder

        cfg = self.settings
        if cfg.writer_build_process:
            from ..writer.build_process import BuildProcess

            encoder: Any = BuildProcess("litellm_rllm.builder:build_trace", prepare=prepare, weight=weight,
                                        min_weight=cfg.writer_build_process_min_bytes)
        else:
            encoder = InlineEncoder(build_trace)
        from ..writer.store_process import open_for_proxy

        url, isolate = cfg.store, cfg.store_process
        return TraceWriter(
            lambda: open_for_proxy(url, isolate=isolate),
            encoder=encoder,
            batch_size=cfg.writer_batch_size,
            max_queue=cfg.writer_max_queue,
            spool=cfg.spool_path(),
            spool_max_bytes=cfg.spool_max_bytes or None,
            close_at_exit=False,  # the plugin's close() is the one shutdown path
        )

    @property
    def reader(self) -> "TraceStore":
        """One store connection for the read routes, opened on first read, shared by them."""
        if self._reader is not None:
            return self._reader
        with self._lock:
            if self._reader is None:
                from ..writer.store_process import open_for_proxy  # never creates a missing SQLite file

                self._reader = open_for_proxy(self.settings.store, reader=True, isolate=self.settings.store_process)
            return self._reader

    @property
    def policies(self) -> "PolicyFile":
        """The policies file, watched for edits; a bad file fails here (at the sampling
        callback's start)."""
        if self._policies is not None:
            return self._policies
        with self._lock:
            if self._policies is None:
                from ..policy import PolicyFile

                pf = PolicyFile(self.settings.policies_path(), interval_s=self.settings.policies_reload_interval_s)
                pf.start()
                self._policies = pf
            return self._policies

    def stats(self) -> dict[str, Any]:
        return {"writer": self.writer.stats(), "capture": dict(self.counters), "in_flight": len(self.calls)}

    # ---- shutdown ------------------------------------------------------------------------

    def close(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Make every queued trace durable and release what the plugin holds. Idempotent; the
        one shutdown path (atexit, LiteLLM's shutdown event on SIGTERM)."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            writer, reader, policies = self._writer, self._reader, self._policies
        ok = True
        if writer is not None:
            ok = writer.close(timeout)
            if not ok:
                log.error("litellm-rllm: exit with traces not yet durable: %s", writer.stats())
        if policies is not None:
            policies.stop()
        if reader is not None:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - closing a broken connection at exit
                pass
        return ok


def _freeze_heap() -> None:
    import gc

    gc.freeze()
    log.info("litellm-rllm: gc.freeze() after start-up (%d objects moved out of collection)", gc.get_freeze_count())


_ensure_log_handler()

_current: Optional[Plugin] = None
_current_lock = threading.Lock()


def plugin() -> Plugin:
    """This process's `Plugin`, created on first use (LiteLLM may import our callbacks module
    several times across config reloads: there is still one)."""
    global _current
    if _current is None:
        with _current_lock:
            if _current is None:
                _current = Plugin()
    return _current


__all__ = ["Plugin", "plugin"]
