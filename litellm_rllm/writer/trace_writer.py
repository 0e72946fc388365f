"""Background trace writer: the proxy's event loop hands items over, one thread stores them.

Why: building a Trace (pydantic), serialising and packing it, and the SQLite commit cost tens
to hundreds of microseconds each; none of that may run on the event loop that serves requests.
``submit`` only appends to a deque (O(1), never blocks on I/O, never raises); a daemon thread
drains the deque in batches: an encoder turns each batch into encoded rows (in this thread, or
in a helper process: ``encoders.py``, ``build_process.py``), then one store transaction.

Ordering/barrier: the deque is FIFO and has one consumer, so ``flush`` appends a marker and
waits until the thread has passed it: everything submitted before the call is then durable
(written, spooled, or definitively failed and counted).

Spool (optional, ``spool=``): a batch the store did not take (retries exhausted, or the store
cannot be opened) or that would wait too long (the queue is past ``spool_backlog``: the store is
too slow) is appended to a local fsynced spool file instead, and serving goes on. While the
spool holds traces, new batches go behind them in the spool (so per-session order, hence
``seq``, is the submit order), and the thread replays the spool into the store, oldest first,
whenever the store answers again: a probe every ``probe_interval`` seconds, and at every flush
barrier. Replaying is idempotent (the store skips known trace ids). A batch the spool cannot
take (full: ``spool_max_bytes``; or a disk error) is counted as ``failed`` /
``spool_dropped`` and its trace ids logged: nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, Sequence, Union

from litellm_rllm.store.base import TraceStore
from litellm_rllm.store.codec import EncodedTrace, TraceEncodeError
from litellm_rllm.writer.encoders import BuildFn, Encoder, InlineEncoder, trace_id_of
from litellm_rllm.writer.spool import Spool, SpoolFile

logger = logging.getLogger(__name__)

StoreOrFactory = Union[TraceStore, Callable[[], TraceStore]]

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.1, 0.5, 2.0, 5.0)
_DROP_LOG_INTERVAL = 10.0  # seconds between "queue full" error lines (a full queue floods)
_ORPHAN_SCAN_INTERVAL = 60.0  # seconds between looks for spool files of dead processes


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


class TraceWriter:
    """Batches submitted items into a TraceStore from one background daemon thread.

    ``store`` is a store, or a factory called lazily in the writer thread (then the writer owns
    it and closes it on ``close``). ``build`` turns a submitted item into a Trace in the writer
    thread (None = skip); without it items must already be Traces. Or ``encoder`` does that
    and the encoding (e.g. ``build_process.BuildProcess``, in a helper process); the
    writer closes it when it stops.

    The writer registers ``close(exit_timeout)`` with ``atexit`` unless ``close_at_exit=False``
    (and unregisters it on ``close``), so a normal interpreter exit drains the queue.

    ``commit_interval``: group commit; a batch starts at most this long after the previous one
    (waiting for more items), unless a flush marker, a full batch or shutdown ends the wait.

    ``spool``: a ``Spool`` (or its folder) makes failed and backlogged batches durable on local
    disk instead of failing them (module docstring). With a spool, a failing batch is retried
    for at most ``spool_after`` seconds before it is spooled; ``spool_backlog`` is the queue
    depth past which batches are spooled rather than waiting for a slow store (default:
    8 batches, at least 2,048 items); ``probe_interval`` the seconds between replay attempts
    while the store is down; ``drain_budget`` the seconds a replay may run before the thread
    also serves the queue.
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
        spool: Union[Spool, str, "os.PathLike[str]", None] = None,
        spool_max_bytes: Optional[int] = None,
        spool_after: float = 1.0,
        spool_backlog: Optional[int] = None,
        probe_interval: float = 1.0,
        drain_budget: float = 1.0,
        linger: float = 0.005,
        encoder: Optional[Encoder] = None,
        commit_delay: float = 0.0,
        commit_interval: float = 0.0,
    ) -> None:
        if batch_size < 1 or max_queue < 1:
            raise ValueError("batch_size and max_queue must be >= 1")
        if build is not None and encoder is not None:
            raise ValueError("give build or encoder, not both")
        if isinstance(store, TraceStore):
            self._store: Optional[TraceStore] = store
            self._factory: Optional[Callable[[], TraceStore]] = None
        elif callable(store):
            self._store, self._factory = None, store
        else:
            raise TypeError(f"store must be a TraceStore or a factory, not {type(store).__name__}")
        self._encoder: Encoder = encoder if encoder is not None else InlineEncoder(build)
        self._batch_size = batch_size
        self._max_queue = max_queue
        self._retry_delays = tuple(retry_delays)
        self._poll = poll_interval
        self._linger = linger
        self._commit_delay = commit_delay  # fault drills: a writer whose commits land late
        self._commit_interval = commit_interval  # group commit: batches start at most this often
        self._last_batch = float("-inf")  # monotonic time the last batch was taken for writing
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
        self._spooled = 0
        self._spool_dropped = 0
        self._replayed = 0
        self._adopted = 0

        self._spool: Optional[Spool] = None
        if isinstance(spool, Spool):
            self._spool = spool
        elif spool is not None:
            try:
                kwargs = {} if spool_max_bytes is None else {"max_bytes": spool_max_bytes}
                self._spool = Spool(str(spool), **kwargs)
            except Exception:  # noqa: BLE001 - serve without a spool rather than not at all
                logger.exception(
                    "trace writer: cannot use the spool folder %s; traces the store does not "
                    "take will be counted as failed",
                    spool,
                )
        self._spool_after = spool_after
        self._spool_backlog = (
            spool_backlog if spool_backlog is not None else max(8 * batch_size, 2048)
        )
        self._probe_interval = probe_interval
        self._drain_budget = drain_budget
        self._last_failure: Optional[float] = None  # monotonic time of the last failed store call
        self._next_orphan_scan = 0.0  # look for dead processes' spool files right away
        self._last_probe_cost = 0.0  # seconds the last failed replay attempt took
        self._last_spool_log = float("-inf")

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
        """Block until everything submitted before this call is durable (in the store, or in the
        spool when the store is down: see ``stats()["spool_pending"]``) or has definitively
        failed. False on timeout (or when called from the writer thread itself).

        At the barrier the thread first tries to replay the spool, so a flush after the store
        came back returns with everything in the store."""
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

    def stats(self) -> dict[str, Any]:
        """Counters since start. ``submitted`` counts accepted items; each ends up ``written``,
        ``duplicates``, ``failed``, ``build_errors`` or ``skipped``, or is still queued
        (``queue_depth``, which also counts pending flush markers) or in the spool.

        Spool: ``spooled`` traces were appended to it; once replayed they count in ``written``
        or ``duplicates`` (and in ``replayed``); ``spool_pending`` are in it now, not yet in the
        store (``spool_bytes`` on disk, including files adopted from dead processes);
        ``spool_dropped`` did not fit (also in ``failed``); ``adopted`` were replayed from
        spools that earlier or dead processes left behind (not in ``submitted``).
        ``oldest_queued_s``: seconds since the call at the head of the queue ended (the
        writer's lag; 0 when the queue is empty or holds no call records)."""
        with self._lock:
            submitted, dropped, depth = self._submitted, self._dropped, len(self._queue)
            head = self._queue[0] if self._queue else None
        spool = self._spool
        return {
            "oldest_queued_s": _queued_age(head),
            "submitted": submitted,
            "written": self._written,
            "duplicates": self._duplicates,
            "failed": self._failed,
            "dropped": dropped,
            "build_errors": self._build_errors,
            "skipped": self._skipped,
            "queue_depth": depth,
            "spooled": self._spooled,
            "spool_pending": spool.pending_traces if spool is not None else 0,
            "spool_bytes": spool.pending_bytes if spool is not None else 0,
            "spool_dropped": self._spool_dropped,
            "replayed": self._replayed,
            "adopted": self._adopted,
            **self._encoder.stats(),
        }

    @property
    def spool(self) -> Optional[Spool]:
        return self._spool

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
                if items and not barriers:
                    barriers = self._linger_for_more(items)
                if items:
                    self._last_batch = time.monotonic()
                    self._process(items)
                if barriers and self._spool_has_work():
                    self._drain_spool(forced=True)
                if not items and not barriers:
                    if self._spool_has_work():
                        self._drain_spool()
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
        try:
            self._encoder.close()
        except Exception:  # noqa: BLE001
            logger.exception("trace writer: closing the encoder failed")
        if self._spool is not None:
            if self._spool.has_pending():
                logger.warning(
                    "trace writer: stopping with %d traces in the spool %s; they are replayed "
                    "on the next start",
                    self._spool.pending_traces,
                    self._spool.own.path,
                )
            try:
                self._spool.close()
            except Exception:  # noqa: BLE001
                logger.exception("trace writer: closing the spool failed")

    def _linger_for_more(self, items: list[Any]) -> list[_Barrier]:
        """Group commit: a short batch waits up to `linger` seconds for more items, and until
        `commit_interval` after the previous batch (one transaction per call costs as much as
        building the call's trace, at moderate rates; a call after a quiet spell goes at once).
        A barrier, a full batch or shutdown ends the wait at once."""
        now = time.monotonic()
        deadline = max(now + self._linger, self._last_batch + self._commit_interval)
        while len(items) < self._batch_size and not self._stopping:
            if not self._queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                if not self._queue:
                    self._wake.wait(remaining)
                if not self._queue:
                    break
            more, barriers = self._take(self._batch_size - len(items))
            items.extend(more)
            if barriers:
                return barriers
        return []

    def _take(self, limit: Optional[int] = None) -> tuple[list[Any], list[_Barrier]]:
        """Up to batch_size items, stopping at a barrier so it is released right after them."""
        items: list[Any] = []
        queue = self._queue
        limit = self._batch_size if limit is None else limit
        while len(items) < limit:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if type(item) is _Barrier:
                return items, [item]
            items.append(item)
        return items, []

    def _process(self, items: list[Any]) -> None:
        rows: list[EncodedTrace] = []
        try:
            outcomes = self._encoder.encode(items)
        except Exception:  # noqa: BLE001 - an encoder bug: counted and logged with the ids
            self._build_errors += len(items)
            logger.exception("trace writer: encoding a batch failed; traces not stored: %s",
                             ", ".join(str(trace_id_of(item)) for item in items))
            return
        for out in outcomes:
            if out.row is not None:
                rows.append(out.row)
            elif out.failure == "skip":
                self._skipped += 1
            elif out.failure == "encode":  # can never be stored: not retried
                self._failed += 1
                logger.error("trace writer: trace %s cannot be stored, dropped: %s", out.item_id, out.detail)
            else:
                self._build_errors += 1
                logger.error("trace writer: building trace %s failed: %s", out.item_id, out.detail)
        if rows:
            self._write(rows)

    def _write(self, traces: list[EncodedTrace]) -> None:
        """One batch, retried with backoff (exactly-once makes a retry after an unknown
        outcome safe), then handed to ``_handle_failed_batch``. With a spool: behind what is
        already spooled, or straight to the spool when the queue shows the store too slow."""
        if self._spool is not None:
            if self._spool_has_work():
                self._drain_spool()
            if self._spool.has_pending():
                self._spool_batch(traces)
                return
            if len(self._queue) > self._spool_backlog:
                self._spool_batch(traces, reason=f"queue past {self._spool_backlog} (store too slow)")
                return
        pending = traces
        attempt = 0
        if self._commit_delay:
            time.sleep(self._commit_delay)
        started = time.monotonic()
        while pending:
            try:
                result = self._ensure_store().write_encoded(pending)
            except TraceEncodeError as exc:  # values the backend refuses (PostgreSQL)
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
                duplicates = len(result.duplicates)
                self._duplicates += duplicates
                self._written += len(pending) - duplicates
                self._last_failure = None
                return
            self._last_failure = time.monotonic()
            spool_now = self._spool is not None and (
                attempt < len(self._retry_delays)
                and self._last_failure - started + self._retry_delays[attempt] > self._spool_after
            )
            if attempt >= len(self._retry_delays) or self._abort.is_set() or spool_now:
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

    def _handle_failed_batch(self, traces: list[EncodedTrace], error: BaseException) -> None:
        """The retries are exhausted for ``traces``: spooled when there is a spool, else
        counted as ``failed`` with their ids logged."""
        if self._spool is not None:
            self._spool_batch(traces, reason=repr(error))
            return
        self._failed += len(traces)
        logger.error(
            "trace writer: giving up on %d traces after %d attempts (%r); trace ids: %s",
            len(traces),
            len(self._retry_delays) + 1,
            error,
            ", ".join(t.trace_id for t in traces),
        )

    # ------------------------------------------------------------------------- spool

    def _spool_batch(self, traces: list[EncodedTrace], reason: Optional[str] = None) -> None:
        """Append ``traces`` to the spool (fsynced); what it cannot take is counted and logged."""
        spool = self._spool
        assert spool is not None
        pending = traces
        while pending:
            try:
                stored = spool.append(pending)
            except TraceEncodeError as exc:
                keep = [t for t in pending if t.trace_id not in exc.errors]
                self._failed += len(pending) - len(keep)
                for trace_id, err in exc.errors.items():
                    logger.error("trace writer: trace %s cannot be stored, dropped: %r", trace_id, err)
                pending = keep
                continue
            except Exception as exc:  # noqa: BLE001 - disk error: counted, logged, never raised
                self._failed += len(pending)
                self._spool_dropped += len(pending)
                logger.error(
                    "trace writer: the spool %s cannot take %d traces (%r); dropped: %s",
                    spool.own.path, len(pending), exc, ", ".join(t.trace_id for t in pending),
                )
                return
            if not stored:
                self._failed += len(pending)
                self._spool_dropped += len(pending)
                logger.error(
                    "trace writer: the spool %s is full (%d bytes max, spool_max_bytes); "
                    "%d traces dropped (%d so far): %s",
                    spool.own.path, spool.max_bytes, len(pending), self._spool_dropped,
                    ", ".join(t.trace_id for t in pending),
                )
                return
            self._spooled += len(pending)
            now = time.monotonic()
            entering = spool.pending_traces == len(pending)  # the spool was empty before
            if entering or now - self._last_spool_log >= _DROP_LOG_INTERVAL:
                self._last_spool_log = now
                logger.warning(
                    "trace writer: %d traces spooled to %s (%s); %d waiting there for the store",
                    len(pending), spool.own.path, reason or "the store is still unavailable",
                    spool.pending_traces,
                )
            return

    def _spool_has_work(self) -> bool:
        spool = self._spool
        if spool is None:
            return False
        return spool.has_pending() or time.monotonic() >= self._next_orphan_scan

    def _drain_spool(self, forced: bool = False) -> bool:
        """Replay spooled batches, oldest first (dead processes' spools, then ours).

        Returns True when nothing is left. Stops at the first store error, and after
        ``drain_budget`` seconds when items wait in the queue. After an error the next try waits
        ``probe_interval``; a flush barrier (``forced``) tries at once, unless the last failed
        try ended less than its own duration ago (a store that times out, not refuses)."""
        spool = self._spool
        if spool is None:
            return True
        now = time.monotonic()
        if now >= self._next_orphan_scan:
            self._next_orphan_scan = now + _ORPHAN_SCAN_INTERVAL
            try:
                spool.adopt_orphans()
            except Exception:  # noqa: BLE001 - retried at the next scan
                logger.exception("trace writer: looking for orphaned spool files failed")
        if not spool.has_pending():
            return True
        if self._last_failure is not None:
            # A flush tries at once, unless failed tries would then take over half the thread's
            # time (a store that times out rather than refuses); otherwise every probe_interval.
            gap = self._last_probe_cost if forced else max(self._probe_interval, self._last_probe_cost)
            if now - self._last_failure < gap:
                return False
        deadline = now + self._drain_budget
        for source in spool.files():
            adopted = source is not spool.own
            if not self._drain_file(source, adopted=adopted, deadline=deadline):
                if self._last_failure is not None and self._last_failure >= now:
                    self._last_probe_cost = self._last_failure - now
                return False
            if adopted:
                spool.release(source)
        return True

    def _drain_file(self, source: SpoolFile, *, adopted: bool, deadline: Optional[float]) -> bool:
        replayed = 0
        while True:
            try:
                record = source.peek()
            except Exception:  # noqa: BLE001 - a corrupt record: counted, the file emptied
                lost = source.traces
                self._failed += lost
                logger.exception(
                    "trace writer: the spool %s is corrupt; its %d remaining traces are lost",
                    source.path, lost,
                )
                source.ack_all()
                return True
            if record is None:
                break
            try:
                result = self._ensure_store().write_encoded(record.rows)
            except TraceEncodeError as exc:  # values the backend refuses; never loop
                keep = [t for t in record.rows if t.trace_id not in exc.errors]
                self._failed += len(record.rows) - len(keep)
                logger.error("trace writer: spooled traces cannot be stored, dropped: %s", list(exc.errors))
                try:
                    result = self._ensure_store().write_encoded(keep)
                except Exception as exc2:  # noqa: BLE001
                    self._store_down(exc2, source)
                    return False
            except Exception as exc:  # noqa: BLE001 - the store is still down
                self._store_down(exc, source)
                return False
            self._last_failure = None
            done_here = len(result.seqs)
            duplicates = len(result.duplicates)
            if adopted or record.inherited:
                self._adopted += done_here
            else:
                self._written += done_here - duplicates
                self._duplicates += duplicates
                self._replayed += done_here
            replayed += done_here
            source.ack(record)
            if deadline is not None and time.monotonic() > deadline and self._queue:
                break
        done = source.records == 0
        now = time.monotonic()
        if replayed and (done or now - self._last_spool_log >= _DROP_LOG_INTERVAL):
            self._last_spool_log = now
            logger.warning(
                "trace writer: spooled traces replayed into the store from %s (%d replayed "
                "since start); %d left",
                source.path, self._replayed + self._adopted, source.traces,
            )
        return done

    def _store_down(self, exc: BaseException, source: SpoolFile) -> None:
        self._last_failure = time.monotonic()
        now = self._last_failure
        if now - self._last_spool_log >= _DROP_LOG_INTERVAL:
            self._last_spool_log = now
            logger.warning(
                "trace writer: the store is still unavailable (%r); %d traces wait in %s, "
                "next try in %.1fs",
                exc, source.traces, source.path, self._probe_interval,
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


def _queued_age(item: Any) -> float:
    """Seconds since a queued call record's call ended (its start + latency)."""
    started = getattr(item, "started_wall", None)
    if not isinstance(started, (int, float)):
        return 0.0
    latency = getattr(item, "latency_ms", None) or 0.0
    return max(0.0, time.time() - started - latency / 1000.0)
