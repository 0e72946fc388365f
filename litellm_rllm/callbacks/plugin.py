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
    from ..trainer.live import LiveState
    from ..trainer.pause import PauseGate
    from ..store.base import TraceStore
    from ..writer import TraceWriter

log = logging.getLogger("litellm_rllm")

# How long the writer may take to make the queue durable at shutdown.
SHUTDOWN_TIMEOUT_S = 30.0
# gc.freeze() this long after the plugin starts: LiteLLM's start-up (which imports us) is over.
GC_FREEZE_DELAY_S = 5.0
RETENTION_INTERVAL_S = 3600.0
# The start-up line is logged this long after the first entry loads: every entry has loaded.
ANNOUNCE_DELAY_S = 1.0


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
        self.route_counts: Counter[tuple[Optional[str], str]] = Counter()  # (route, status) -> calls
        self.entries: dict[str, Any] = {}  # the YAML entries' callback instances, by name
        self._metrics_collector: Any = None
        self.affinity: Any = None  # the session pinner, when the affinity entry is registered
        self._lock = threading.Lock()
        self._writer: Optional[TraceWriter] = None
        self._reader: Optional[TraceStore] = None
        self._policies: Optional[PolicyFile] = None
        self._live: Optional[LiveState] = None
        self._gate: Optional[PauseGate] = None
        self._closed = False
        self._stop = threading.Event()
        self._retention: Optional[threading.Thread] = None
        self._tasks: set[asyncio.Task[Any]] = set()  # background work on the event loop (spawn)
        self.check_slug: Callable[[str], SlugMetadata] = functools.lru_cache(maxsize=4096)(self._check_slug)
        atexit.register(self.close)
        self._schedule_gc_freeze()
        self._schedule(ANNOUNCE_DELAY_S, self.announce)

    # ---- start-up -----------------------------------------------------------------------

    @staticmethod
    def _schedule(delay: float, fn: Callable[[], Any]) -> None:
        """Run `fn` once LiteLLM's start-up is over (our entries are imported during it): on
        the event loop `delay` seconds from now; at once where there is no loop (scripts)."""
        try:
            asyncio.get_running_loop().call_later(delay, fn)
        except RuntimeError:
            fn()

    def _schedule_gc_freeze(self) -> None:
        """`gc_freeze_after_start`: move LiteLLM's start-up heap out of the collector's sight,
        once, after start-up."""
        if self.settings.gc_freeze_after_start:
            self._schedule(GC_FREEZE_DELAY_S, _freeze_heap)

    def announce(self) -> None:
        """The start-up line (store, policies, routes, non-default settings)."""
        try:
            log.info("%s", self.describe())
        except Exception:  # noqa: BLE001 - a log line must not break anything
            log.exception("litellm-rllm: could not describe the plugin's set-up")

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
            lambda: self._feeding(open_for_proxy(url, isolate=isolate)),
            encoder=encoder,
            batch_size=cfg.writer_batch_size,
            max_queue=cfg.writer_max_queue,
            spool=cfg.spool_path(),
            spool_max_bytes=cfg.spool_max_bytes or None,
            close_at_exit=False,  # the plugin's close() is the one shutdown path
            commit_delay=cfg.writer_commit_delay_s,
            commit_interval=cfg.writer_commit_interval_s,
        )

    @property
    def reader(self) -> "TraceStore":
        """One store connection for the read routes, opened on first read, shared by them."""
        if self._reader is not None:
            return self._reader
        self.live  # created outside the lock (it takes it)
        with self._lock:
            if self._reader is None:
                from ..writer.store_process import open_for_proxy  # never creates a missing SQLite file

                self._reader = self._feeding(open_for_proxy(self.settings.store, reader=True,
                                                            isolate=self.settings.store_process))
            return self._reader

    def _feeding(self, st: "TraceStore") -> "TraceStore":
        """A store whose commits wake this proxy's feed followers at once."""
        st.add_commit_listener(self.live.feed.fire)
        return st

    @property
    def live(self) -> "LiveState":
        """Policy versions and pauses as the store has them (polled; started by the tracer)."""
        if self._live is None:
            with self._lock:
                if self._live is None:
                    from ..trainer.live import LiveState
                    from ..writer.store_process import open_for_proxy

                    cfg, url = self.settings, self.settings.store
                    self._live = LiveState(lambda: open_for_proxy(url, isolate=cfg.store_process),
                                           poll_s=cfg.live_poll_interval_s,
                                           feed_poll_s=cfg.feed_poll_interval_s, stale_after_s=cfg.live_stale_after_s,
                                           counters=self.counters, heartbeat_state=lambda: self.gate.snapshot())
        return self._live

    @property
    def gate(self) -> "PauseGate":
        """The pause gate of the tracer's pre-call hook (and the in-flight counts)."""
        if self._gate is None:
            from ..trainer.pause import PauseGate

            live, cfg = self.live, self.settings
            with self._lock:
                if self._gate is None:
                    self._gate = PauseGate(live, hold_timeout_s=cfg.pause_hold_timeout_s,
                                           retry_after_s=cfg.pause_retry_after_s, counters=self.counters)
        return self._gate

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

    def writer_stats(self) -> dict[str, Any]:
        """The writer's counters, or none before a writer exists (a proxy without the tracer)."""
        return self._writer.stats() if self._writer is not None else {}

    def spawn(self, work: Any) -> None:
        """Run a coroutine on the running event loop without waiting for it (closing an
        upstream the client no longer reads); held here until done, its failure logged."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: "asyncio.Task[Any]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("litellm-rllm: background task failed: %r", task.exception())

    def stats(self) -> dict[str, Any]:
        out = {"writer": self.writer.stats(), "capture": dict(self.counters), "in_flight": len(self.calls),
               "calls": [{"route": r, "status": st, "count": n} for (r, st), n in self.route_counts.items()]}
        if self.affinity is not None:
            out["affinity"] = {"in_flight": dict(self.affinity.in_flight), "diverted": self.affinity.diverted}
        out["trainer"] = {**self.live.stats(), **self.gate.snapshot()}
        return out

    # ---- retention ----------------------------------------------------------------------

    def start_retention(self) -> None:
        """With `retention_days`, delete older traces now and then once an hour, in a thread."""
        days = self.settings.retention_days
        if days is None or self._retention is not None:
            return
        self._retention = threading.Thread(target=self._retain, args=(days,), name="rllm-retention", daemon=True)
        self._retention.start()

    def _retain(self, days: float) -> None:
        from datetime import datetime, timedelta, timezone

        while not self._stop.is_set():
            try:
                deleted = self.reader.delete(before=datetime.now(timezone.utc) - timedelta(days=days))
                if deleted:
                    log.info("litellm-rllm: retention deleted %d traces older than %s days", deleted, days)
            except Exception as exc:  # noqa: BLE001 - the store may be down: try again later
                log.warning("litellm-rllm: retention pass failed: %s", exc)
            self._stop.wait(RETENTION_INTERVAL_S)

    # ---- start-up summary ---------------------------------------------------------------

    def describe(self) -> str:
        """One line for the proxy's log at start: where traces go and what is in effect."""
        from ..settings import Settings

        cfg = self.settings
        parts = [f"entries {', '.join(sorted(self.entries)) or '-'}", f"store {_describe_store(cfg.store)}"]
        if self._policies is not None:
            path = cfg.policies_path()
            rules = len(self._policies.current.rules)
            parts.append(f"policies {path if path is not None else '(built-in)'} ({rules} rules)")
        parts.append("routes /meta/{slug}/..., /rllm/*" + (", /metrics" if cfg.metrics else ""))
        defaults = Settings()
        changed = sorted(k for k in Settings.model_fields
                         if k not in ("store", "policies_file", "config_file", "slug_secret", "slug_secrets_previous")
                         and getattr(cfg, k) != getattr(defaults, k))
        if changed:
            parts.append("settings " + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in changed))
        return "litellm-rllm: " + "; ".join(parts)

    # ---- shutdown ------------------------------------------------------------------------

    def close(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Make every queued trace durable and release what the plugin holds. Idempotent; the
        one shutdown path (atexit, LiteLLM's shutdown event on SIGTERM)."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            self._stop.set()
            writer, reader, policies, live = self._writer, self._reader, self._policies, self._live
        ok = True
        if live is not None:
            live.stop()
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


def _describe_store(url: str) -> str:
    """The store URL as a log line may show it: a SQLite file by its absolute path, a
    PostgreSQL URL without its password."""
    if url.startswith("sqlite:///"):
        import os

        path = url[len("sqlite:///"):].split("?", 1)[0]
        return f"sqlite {path if path == ':memory:' else os.path.abspath(path)}"
    from ..store.postgres import redact

    return redact(url)


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
