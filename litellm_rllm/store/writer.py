"""Background trace writer: the proxy's event loop hands items over, one thread stores them.

Why: building a Trace (pydantic), serialising and packing it, and the SQLite commit cost tens
to hundreds of microseconds each; none of that may run on the event loop that serves requests.
``submit`` only appends to a deque (O(1), never blocks on I/O, never raises); a daemon thread
drains the deque in batches, one store transaction per batch.

Ordering/barrier: the deque is FIFO and has one consumer, so ``flush`` appends a marker and
waits until the thread has passed it: everything submitted before the call is then durable
(written, or definitively failed and counted).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, Sequence, Union

from litellm_rllm.store.base import TraceStore
from litellm_rllm.store.codec import TraceEncodeError
from litellm_rllm.trace import Trace

logger = logging.getLogger(__name__)

StoreOrFactory = Union[TraceStore, Callable[[], TraceStore]]
BuildFn = Callable[[Any], Optional[Trace]]

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.1, 0.5, 2.0, 5.0)
_DROP_LOG_INTERVAL = 10.0  # seconds between "queue full" error lines (a full queue floods)


class _Barrier:
    """A marker in the queue; released once every item before it has been handled."""

    __slots__ = ("event", "_loop", "_future")

    def __init__(
        self,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        future: Optional["asyncio.Future[bool]"] = None,
    ) -> None:
        self.event = threading.Event()
        self._loop = loop
        self._future = future

    def release(self) -> None:
        self.event.set()
        if self._loop is not None and self._future is not None:
            try:
                self._loop.call_soon_threadsafe(_resolve, self._future)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


def _resolve(future: "asyncio.Future[bool]") -> None:
    if not future.done():
        future.set_result(True)


def trace_id_of(item: Any) -> Optional[str]:
    """Best-effort id of a submitted item, for log lines about it."""
    candidates = item if isinstance(item, (tuple, list)) else (item,)
    for obj in candidates:
        for name in ("trace_id", "litellm_call_id", "id"):
            value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
            if isinstance(value, str) and value:
                return value
    return None


class TraceWriter:
    """Batches submitted items into a TraceStore from one background daemon thread.

    ``store`` is a store, or a factory called lazily in the writer thread (then the writer owns
    it and closes it on ``close``). ``build`` turns a submitted item into a Trace in the writer
    thread (None = skip); without it items must already be Traces.

    The writer registers ``close(exit_timeout)`` with ``atexit`` unless ``close_at_exit=False``
    (and unregisters it on ``close``), so a normal interpreter exit drains the queue.
    """

    def __init__(
        self,
        store: StoreOrFactory,
        build: Optional[BuildFn] = None,
        batch_size: int = 256,
        max_queue: int = 100_000,
        *,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        poll_interval: float = 0.05,
        close_at_exit: bool = True,
        exit_timeout: float = 10.0,
        name: str = "litellm-rllm-trace-writer",
    ) -> None:
        if batch_size < 1 or max_queue < 1:
            raise ValueError("batch_size and max_queue must be >= 1")
        if isinstance(store, TraceStore):
            self._store: Optional[TraceStore] = store
            self._factory: Optional[Callable[[], TraceStore]] = None
        elif callable(store):
            self._store, self._factory = None, store
        else:
            raise TypeError(f"store must be a TraceStore or a factory, not {type(store).__name__}")
        self._build = build
        self._batch_size = batch_size
        self._max_queue = max_queue
        self._retry_delays = tuple(retry_delays)
        self._poll = poll_interval
        self._exit_timeout = exit_timeout

        self._queue: deque[Any] = deque()
        self._lock = threading.Lock()  # submit-side state: queue bound, counters, closed/exited
        self._wake = threading.Event()
        self._abort = threading.Event()  # close timed out: stop retrying, drain fast
        self._closed = False
        self._stopping = False
        self._exited = False
        self._last_drop_log = float("-inf")
        # submit side (under _lock)
        self._submitted = 0
        self._dropped = 0
        # writer-thread side (only that thread writes them)
        self._written = 0
        self._duplicates = 0
        self._failed = 0
        self._build_errors = 0
        self._skipped = 0

        self._close_at_exit = close_at_exit
        if close_at_exit:
            atexit.register(self._close_at_interpreter_exit)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------- producer side

    def submit(self, item: Any) -> bool:
        """Queue ``item`` for writing. O(1); never blocks on I/O; never raises.

        Returns False (and counts ``dropped``) when the queue is full or the writer is closed.
        """
        try:
            with self._lock:
                if self._closed or len(self._queue) >= self._max_queue:
                    self._dropped += 1
                    accepted = False
                else:
                    self._queue.append(item)
                    self._submitted += 1
                    accepted = True
            if accepted:
                if not self._wake.is_set():
                    self._wake.set()
                return True
            self._log_drop(item)
        except Exception:  # noqa: BLE001 - the request path must never see our failure
            try:
                logger.exception("trace writer: submit failed")
            except Exception:  # noqa: BLE001
                pass
        return False

    def _log_drop(self, item: Any) -> None:
        now = time.monotonic()
        if now - self._last_drop_log < _DROP_LOG_INTERVAL:
            return
        self._last_drop_log = now
        reason = "writer is closed" if self._closed else f"queue is full ({self._max_queue})"
        logger.error(
            "trace writer: %s, trace %s dropped (%d dropped so far; next report in %.0fs)",
            reason,
            trace_id_of(item),
            self._dropped,
            _DROP_LOG_INTERVAL,
        )

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Block until everything submitted before this call is durable or has definitively
        failed. False on timeout (or when called from the writer thread itself)."""
        if threading.current_thread() is self._thread:
            return False
        barrier = _Barrier()
        done = self._enqueue_barrier(barrier)
        if done is not None:
            return done
        return barrier.event.wait(timeout)

    async def aflush(self, timeout: Optional[float] = None) -> bool:
        """``flush`` for coroutines: waits on a future, never blocks the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        done = self._enqueue_barrier(_Barrier(loop, future))
        if done is not None:
            return done
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _enqueue_barrier(self, barrier: _Barrier) -> Optional[bool]:
        """Queue the barrier; or, if the thread has exited, the flush answer right away."""
        with self._lock:
            if self._exited:  # nothing pops any more; list() copies the deque atomically
                return not any(type(x) is not _Barrier for x in list(self._queue))
            self._queue.append(barrier)
        self._wake.set()
        return None

    def close(self, timeout: Optional[float] = 30.0) -> bool:
        """Flush, then stop the thread (and close the store if the writer created it).

        Idempotent. Returns whether everything was flushed within ``timeout``; on timeout the
        thread stops retrying and drains what is left with one attempt per batch.
        """
        with self._lock:
            first = not self._closed
            self._closed = True
        if first and self._close_at_exit:
            atexit.unregister(self._close_at_interpreter_exit)
        deadline = None if timeout is None else time.monotonic() + timeout
        ok = self.flush(timeout)
        if not ok:
            self._abort.set()
        self._stopping = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._thread.join(remaining)
        return ok

    def _close_at_interpreter_exit(self) -> None:
        if not self.close(self._exit_timeout):
            logger.error("trace writer: exit with traces not yet durable: %s", self.stats())

    def stats(self) -> dict[str, int]:
        """Counters since start. ``submitted`` counts accepted items; each ends up ``written``,
        ``duplicates``, ``failed``, ``build_errors`` or ``skipped``, or is still queued
        (``queue_depth``, which also counts pending flush markers)."""
        with self._lock:
            submitted, dropped, depth = self._submitted, self._dropped, len(self._queue)
        return {
            "submitted": submitted,
            "written": self._written,
            "duplicates": self._duplicates,
            "failed": self._failed,
            "dropped": dropped,
            "build_errors": self._build_errors,
            "skipped": self._skipped,
            "queue_depth": depth,
        }

    @property
    def store(self) -> Optional[TraceStore]:
        """The store in use (None until a factory-made store has been created)."""
        return self._store

    # ------------------------------------------------------------------------- writer thread

    def _run(self) -> None:
        while True:
            barriers: list[_Barrier] = []
            try:
                self._wake.clear()
                items, barriers = self._take()
                if items:
                    self._process(items)
                elif not barriers:
                    with self._lock:
                        if self._stopping and not self._queue:
                            self._exited = True
                            break
                    self._wake.wait(self._poll)
            except BaseException:  # noqa: BLE001 - the thread must outlive any bug
                logger.exception("trace writer: unexpected error in the writer thread")
                time.sleep(self._poll)
            finally:
                for barrier in barriers:
                    barrier.release()
        self._close_owned_store()

    def _take(self) -> tuple[list[Any], list[_Barrier]]:
        """Up to batch_size items, stopping at a barrier so it is released right after them."""
        items: list[Any] = []
        queue = self._queue
        while len(items) < self._batch_size:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if type(item) is _Barrier:
                return items, [item]
            items.append(item)
        return items, []

    def _process(self, items: list[Any]) -> None:
        build = self._build
        traces: list[Trace] = []
        for item in items:
            if build is None:
                trace = item
            else:
                try:
                    trace = build(item)
                except Exception:  # noqa: BLE001 - logged and counted, never propagated
                    self._build_errors += 1
                    logger.exception("trace writer: building trace %s failed", trace_id_of(item))
                    continue
                if trace is None:
                    self._skipped += 1
                    continue
            if not isinstance(trace, Trace):
                self._build_errors += 1
                logger.error(
                    "trace writer: got %s instead of a Trace (item %s)",
                    type(trace).__name__,
                    trace_id_of(item),
                )
                continue
            traces.append(trace)
        if traces:
            self._write(traces)

    def _write(self, traces: list[Trace]) -> None:
        """One batch, retried with backoff (exactly-once makes a retry after an unknown
        outcome safe), then handed to ``_handle_failed_batch``."""
        pending = traces
        attempt = 0
        while pending:
            try:
                result = self._ensure_store().write(pending)
            except TraceEncodeError as exc:
                keep = [t for t in pending if t.trace_id not in exc.errors]
                if len(keep) < len(pending):
                    self._failed += len(pending) - len(keep)
                    for trace_id, error in exc.errors.items():
                        logger.error(
                            "trace writer: trace %s cannot be stored, dropped: %r", trace_id, error
                        )
                    pending = keep
                    continue
                error: BaseException = exc
            except Exception as exc:  # noqa: BLE001 - retried, then counted
                error = exc
            else:
                duplicates = len(getattr(result, "duplicates", ()))
                self._duplicates += duplicates
                self._written += len(pending) - duplicates
                return
            if attempt >= len(self._retry_delays) or self._abort.is_set():
                self._handle_failed_batch(pending, error)
                return
            delay = self._retry_delays[attempt]
            attempt += 1
            logger.warning(
                "trace writer: writing %d traces failed (attempt %d of %d), retrying in %.2fs: %r",
                len(pending),
                attempt,
                len(self._retry_delays) + 1,
                delay,
                error,
            )
            self._abort.wait(delay)

    def _handle_failed_batch(self, traces: list[Trace], error: BaseException) -> None:
        """SPOOL SEAM (issue 5): the retries are exhausted for ``traces``.

        Today the traces are counted as ``failed`` and their ids logged; the disk spool will
        persist them here for a later replay instead.
        """
        self._failed += len(traces)
        logger.error(
            "trace writer: giving up on %d traces after %d attempts (%r); trace ids: %s",
            len(traces),
            len(self._retry_delays) + 1,
            error,
            ", ".join(t.trace_id for t in traces),
        )

    def _ensure_store(self) -> TraceStore:
        if self._store is None:
            assert self._factory is not None
            self._store = self._factory()
        return self._store

    def _close_owned_store(self) -> None:
        if self._factory is not None and self._store is not None:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001
                logger.exception("trace writer: closing the store failed")


__all__ = ["DEFAULT_RETRY_DELAYS", "TraceWriter", "trace_id_of"]
