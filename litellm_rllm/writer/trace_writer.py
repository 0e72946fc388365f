"""Background trace writer: the proxy's event loop hands items over, one thread stores them.

Why: building a Trace (pydantic), serialising and packing it, and the SQLite commit cost tens
to hundreds of microseconds each; none of that may run on the event loop that serves requests.
``submit`` only appends to a deque (O(1), never blocks on I/O, never raises); a daemon thread
drains the deque in batches: an encoder turns each batch into encoded rows (in this thread, or
in a helper process: ``encoders.py``, ``build_process.py``), then one store transaction.

Ordering/barrier: the deque is FIFO and has one consumer, so ``flush`` appends a marker and
waits until the thread has passed it: everything submitted before the call is then handled
(written, spooled, held in memory, or definitively lost and counted).

Store calls run in a store-call thread (``store_call.py``): a call that hangs (a lock wait, a
silent server) is left running after ``spool_after`` seconds, or as soon as the queue passes
``spool_backlog``, and its batch goes to the spool, so the queue (what a SIGKILL loses) stays
bounded at any request rate.

Spool (optional, ``spool=``): a batch the store did not take (retries exhausted, the store
cannot be opened, a call that hangs) or that would wait too long (the queue is past
``spool_backlog``: the store is too slow) is appended to a local fsynced spool file instead,
and serving goes on. While traces wait, new batches go behind them (so per-session order,
hence ``seq``, is the submit order), and the thread replays the spool into the store, oldest
first, in batches of up to ``replay_batch`` traces per transaction, whenever the store answers
again: a probe every ``probe_interval`` seconds, and at every flush barrier. Replaying is
idempotent (the store skips known trace ids).

Held (in memory): a batch neither the store nor the spool takes (the spool's disk is full or
failing, ``spool_max_bytes`` reached, or no spool) waits in memory, in order, and goes to the
spool or the store as soon as either takes it again. The queue and the held traces together
are bounded by ``max_queue``; past it traces are lost: counted (``failed`` / ``dropped``) and
logged with their ids, and ``take_lost`` reports them once (the flush route's 409). Nothing is
dropped silently. ``pending_for(uid)`` counts a session's traces not in the store yet.
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

from litellm_rllm.store.base import EncodedWriteResult, TraceStore
from litellm_rllm.store.codec import EncodedTrace, TraceEncodeError
from litellm_rllm.writer.encoders import BuildFn, Encoder, InlineEncoder, trace_id_of
from litellm_rllm.writer.pending import SessionCounts, item_uids
from litellm_rllm.writer.spool import Spool, SpoolFile
from litellm_rllm.writer.store_call import StoreBusy, StoreCaller, StoreTimeout

logger = logging.getLogger(__name__)

StoreOrFactory = Union[TraceStore, Callable[[], TraceStore]]

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.1, 0.5, 2.0, 5.0)
_DROP_LOG_INTERVAL = 10.0  # seconds between "queue full" error lines (a full queue floods)
_ORPHAN_SCAN_INTERVAL = 60.0  # seconds between looks for spool files of dead processes
_STORE_CHECK_INTERVAL = 1.0  # seconds between an idle writer's store checks (a deleted file)
_SLOW_PROBE_S = 0.05  # a failed replay that took this long is a store that times out


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


def _store_stats(store: Optional[TraceStore]) -> dict[str, int]:
    """A store's own fault counters (reopened files, lost helper processes, ...), if it has any."""
    stats = getattr(store, "stats", None)
    if stats is None:
        return {}
    try:
        return dict(stats())
    except Exception:  # noqa: BLE001 - counters are best effort
        return {}


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
    also serves the queue; ``replay_batch`` / ``replay_bytes`` the most one replay transaction
    takes; ``replay_timeout`` how long the writer waits for one (less while a flush waits).
    ``spool_after`` also bounds every wait for a store call (module docstring).
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
        replay_batch: int = 2048,
        replay_bytes: int = 32 << 20,
        replay_timeout: float = 10.0,
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
        # While the writer lingers for a batch, a submit wakes it only once the batch would be
        # full: until this monotonic time, with room for this many more items.
        self._quiet_until = 0.0
        self._quiet_room = 0
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
        self._recovered = 0  # held in memory, then written
        self._spool_errors = 0
        self._lost_reported = 0  # `lost` at the last take_lost()
        # Batches neither the store nor the spool took (a full disk, a hung store without a
        # spool): kept in order, in memory, until one of them does. Bounded by max_queue.
        self._held: deque[list[EncodedTrace]] = deque()
        self._held_traces = 0
        self._pending = SessionCounts()  # rows spooled or held, per session uid
        self._counted_own = False
        self._caller = StoreCaller(name + "-store")
        self._replay_batch = replay_batch
        self._replay_bytes = replay_bytes
        self._replay_timeout = replay_timeout
        self._close_deadline: Optional[float] = None
        self._barriers_waiting = 0
        self._spool_retry_at = 0.0
        self._last_hold_log = float("-inf")
        self._last_spool_error_log = float("-inf")

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

    @property
    def thread(self) -> threading.Thread:
        """The writer's thread (benchmarks read its CPU clock)."""
        return self._thread

    def submit(self, item: Any) -> bool:
        """Queue ``item`` for writing. O(1); never blocks on I/O; never raises.

        Returns False (and counts ``dropped``) when the queue is full or the writer is closed.
        """
        try:
            with self._lock:
                if self._closed or len(self._queue) + self._held_traces >= self._max_queue:
                    self._dropped += 1
                    accepted = False
                else:
                    self._queue.append(item)
                    self._submitted += 1
                    accepted = True
            if accepted:
                # A lingering writer collects the queue at its deadline anyway: waking it per
                # call would cost a thread switch (and a GIL hand-over from the loop) each.
                if not self._wake.is_set() and (len(self._queue) >= self._quiet_room
                                                or time.monotonic() >= self._quiet_until):
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
        reason = "writer is closed" if self._closed else (
            f"queue is full (writer_max_queue {self._max_queue}, {self._held_traces} of them held in memory)")
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
            self._barriers_waiting += 1
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
        self._close_deadline = deadline if deadline is not None else time.monotonic() + 60.0
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
        ``spool_dropped`` did not fit in it nor in memory (also in ``failed``); ``adopted`` were
        replayed from spools that earlier or dead processes left behind (not in ``submitted``).

        Faults: ``held`` traces wait in memory (neither the store nor the spool took them),
        ``recovered`` were held and then written; ``lost`` = ``dropped`` + ``failed`` +
        ``build_errors``; ``store_calls_late`` store calls ended after the writer stopped
        waiting for them; ``store_call_running_ms`` is how long the current one has run; the
        store's own counters (``store_reopened``, ``store_process_lost``, ``wal_bytes``, ...)
        as of its last answer.
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
            "held": self._held_traces,
            "recovered": self._recovered,
            "spool_errors": self._spool_errors,
            "lost": self._lost_total(submitted_dropped=dropped),
            "store_calls_late": self._caller.late,
            "store_call_running_ms": int(self._caller.busy_for() * 1000),
            **self._encoder.stats(),
            **_store_stats(self._store),
        }

    def _lost_total(self, submitted_dropped: Optional[int] = None) -> int:
        dropped = self._dropped if submitted_dropped is None else submitted_dropped
        return dropped + self._failed + self._build_errors

    def take_lost(self) -> int:
        """Traces lost (``dropped`` + ``failed`` + ``build_errors``) since the previous call:
        the flush route reports each loss once."""
        with self._lock:
            total = self._lost_total()
            new, self._lost_reported = total - self._lost_reported, total
        return new

    def pending_for(self, uid: str) -> int:
        """Traces of session ``uid`` (its id or any nested uid) not in the store yet: spooled,
        held in memory, or still queued (read-back completeness)."""
        queued = sum(1 for item in list(self._queue) if type(item) is not _Barrier and uid in item_uids(item))
        return self._pending.get(uid) + queued

    @property
    def spool(self) -> Optional[Spool]:
        return self._spool

    @property
    def store(self) -> Optional[TraceStore]:
        """The store in use (None until a factory-made store has been created)."""
        return self._store

    # ------------------------------------------------------------------------- writer thread

    def _run(self) -> None:
        next_check = time.monotonic() + _STORE_CHECK_INTERVAL
        self._caller.start(self._open_store)  # a store process starts in ~1 s: not in a write's time
        while True:
            barriers: list[_Barrier] = []
            try:
                self._wake.clear()
                # While batches go to the spool, take larger ones: one fsync each keeps up with
                # any request rate (the SIGKILL loss bound is the queue plus one batch).
                items, barriers = self._take(max(self._batch_size, self._replay_batch) if self._has_backlog() else None)
                if items and not barriers:
                    barriers = self._linger_for_more(items)
                if items:
                    self._last_batch = time.monotonic()
                    self._process(items)
                if barriers and self._backlog_due():
                    self._drain(forced=True)
                if not items and not barriers:
                    if self._backlog_due():
                        self._drain()
                    now = time.monotonic()
                    if now >= next_check:  # an idle store still notices a deleted file
                        next_check = now + _STORE_CHECK_INTERVAL
                        self._check_store()
                    with self._lock:
                        if self._stopping and not self._queue:
                            self._exited = True
                            break
                    self._wake.wait(self._idle_wait(next_check))
            except BaseException:  # noqa: BLE001 - the thread must outlive any bug
                logger.exception("trace writer: unexpected error in the writer thread")
                time.sleep(self._poll)
            finally:
                for barrier in barriers:
                    barrier.release()
                if barriers:
                    with self._lock:
                        self._barriers_waiting -= len(barriers)
        try:
            self._exit_drain()
        except Exception:  # noqa: BLE001
            logger.exception("trace writer: draining at exit failed")
        self._close_owned_store()
        self._caller.stop()
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

    def _idle_wait(self, next_check: float) -> float:
        """How long an idle writer sleeps. A submit, a flush barrier and ``close`` set ``_wake``;
        only a backlog (retried every ``poll_interval``) and the periodic looks (the store's
        file, dead processes' spools) need the clock. Waking every ``poll_interval`` regardless
        cost ~2.7 ms of CPU a second in a process otherwise asleep, ~0.3 ms in an idle proxy
        (``benchmarks/writer_stages.py``, last line)."""
        if self._has_backlog():
            return self._poll
        until = next_check
        if self._spool is not None:
            until = min(until, self._next_orphan_scan)
        return max(self._poll, until - time.monotonic())

    def _linger_for_more(self, items: list[Any]) -> list[_Barrier]:
        """Group commit: a short batch waits up to `linger` seconds for more items, and until
        `commit_interval` after the previous batch (one transaction per call costs as much as
        building the call's trace, at moderate rates; a call after a quiet spell goes at once).
        A barrier, a full batch or shutdown ends the wait at once."""
        now = time.monotonic()
        deadline = max(now + self._linger, self._last_batch + self._commit_interval)
        try:
            while len(items) < self._batch_size and not self._stopping:
                if not self._queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._quiet_room = self._batch_size - len(items)
                    self._quiet_until = deadline  # submits no longer wake us (see submit)
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
        finally:
            self._quiet_until = 0.0

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
            self._place(rows)

    def _place(self, rows: list[EncodedTrace]) -> None:
        """One encoded batch to the store, the spool or memory, behind whatever already waits
        (so per-session order, hence ``seq``, is the submit order). While something waits the
        batch goes behind it first (durable in the spool before any replay), then the replay."""
        if not self._has_backlog() and self._backlog_due():
            self._drain()  # the periodic look for dead processes' spool files
        if self._has_backlog():
            if self._held:
                self._held_to_spool()
            if self._held:
                self._hold(rows, "older traces wait in memory")
            else:
                self._failover(rows, None)
            self._drain()
            return
        if self._spool is not None and len(self._queue) > self._spool_backlog:
            self._failover(rows, f"queue past {self._spool_backlog} (store too slow)")
            return
        self._write(rows)

    def _store_write(self, rows: Sequence[EncodedTrace]) -> EncodedWriteResult:
        """Runs in the store-call thread (the store is opened there too)."""
        return self._ensure_store().write_encoded(rows)

    def _backlog_too_long(self) -> bool:
        """A waiting writer gives up on a store call once the queue is past the spool backlog:
        the SIGKILL loss bound is the queue plus one batch, at any request rate."""
        return len(self._queue) > self._spool_backlog

    def _replay_give_up(self) -> Callable[[], bool]:
        """A replay may take longer than a write (large batches), but not while the queue grows
        past the backlog, nor past ``spool_after`` while a flush waits for an answer."""
        started = time.monotonic()
        return lambda: self._backlog_too_long() or (
            self._barriers_waiting > 0 and time.monotonic() - started > self._spool_after)

    def _write(self, traces: list[EncodedTrace]) -> None:
        """One batch, retried with backoff (exactly-once makes a retry after an unknown
        outcome safe), then handed to ``_failover``. Each try gets at most ``spool_after``
        seconds in all: a store call that hangs (busy waits, lock waits, a silent server) is
        left running and the batch spooled."""
        pending = traces
        attempt = 0
        if self._commit_delay:
            time.sleep(self._commit_delay)
        started = time.monotonic()
        while pending:
            try:
                result = self._caller.call(
                    self._store_write, pending, deadline=started + self._spool_after,
                    give_up=self._backlog_too_long if self._spool is not None else None,
                )
            except TraceEncodeError as exc:  # values the backend refuses (PostgreSQL)
                keep = [t for t in pending if t.trace_id not in exc.errors]
                if len(keep) < len(pending):
                    self._lose([t for t in pending if t.trace_id in exc.errors],
                               "the store refuses them: " + "; ".join(
                                   f"{k}: {v!r}" for k, v in list(exc.errors.items())[:5]))
                    pending = keep
                    continue
                error: BaseException = exc
            except Exception as exc:  # noqa: BLE001 - retried, then spooled or held
                error = exc
            else:
                duplicates = len(result.duplicates)
                self._duplicates += duplicates
                self._written += len(pending) - duplicates
                self._last_failure = None
                return
            self._last_failure = time.monotonic()
            hung = isinstance(error, (StoreTimeout, StoreBusy))
            spool_now = self._spool is not None and (
                hung or (attempt < len(self._retry_delays)
                         and self._last_failure - started + self._retry_delays[attempt] > self._spool_after)
            )
            if attempt >= len(self._retry_delays) or self._abort.is_set() or spool_now:
                self._failover(pending, repr(error))
                return
            delay = self._retry_delays[attempt]
            attempt += 1
            logger.warning(
                "trace writer: writing %d traces failed (attempt %d of %d), retrying in %.2fs: %r",
                len(pending), attempt, len(self._retry_delays) + 1, delay, error,
            )
            self._abort.wait(delay)

    # ------------------------------------------------------------------------- backlog

    def _failover(self, rows: list[EncodedTrace], reason: Optional[str]) -> None:
        """The store did not take ``rows`` (or must not yet): the spool, else memory."""
        if self._spool is not None and self._spool_batch(rows, reason):
            return
        self._hold(rows, reason or "the store is unavailable")

    def _hold(self, rows: list[EncodedTrace], reason: str) -> None:
        """Keep ``rows`` in memory until the store or the spool takes them; bounded by
        ``max_queue`` traces together with the queue (then lost: counted and logged)."""
        if self._held_traces + len(rows) > self._max_queue:
            if self._spool is not None:
                self._spool_dropped += len(rows)
            self._lose(rows, f"neither the store nor the spool takes traces and {self._held_traces} "
                             f"are held in memory already (writer_max_queue {self._max_queue})")
            return
        entering = not self._held
        self._held.append(rows)
        self._held_traces += len(rows)
        self._pending.add(rows)
        now = time.monotonic()
        if entering or now - self._last_hold_log >= _DROP_LOG_INTERVAL:
            self._last_hold_log = now
            logger.error(
                "trace writer: %d traces held in memory (%s; %s); %d held now, at most %d; they are "
                "written once the store or the spool takes them again",
                len(rows), reason, "no spool" if self._spool is None else "the spool cannot take them",
                self._held_traces, self._max_queue,
            )

    def _lose(self, rows: Sequence[EncodedTrace], why: str) -> None:
        self._failed += len(rows)
        logger.error("trace writer: %d traces lost (%s): %s", len(rows), why,
                     ", ".join(t.trace_id for t in rows))

    def _spool_batch(self, traces: list[EncodedTrace], reason: Optional[str] = None) -> bool:
        """Append ``traces`` to the spool (fsynced). False when the spool cannot take them (full,
        or a disk error): the caller holds them in memory. Unencodable ones are lost."""
        spool = self._spool
        assert spool is not None
        if self._spool_retry_at > time.monotonic():
            return False  # it failed a moment ago: don't pay an encoding per batch to fail again
        pending = traces
        while pending:
            try:
                stored = spool.append(pending)
            except TraceEncodeError as exc:
                self._lose([t for t in pending if t.trace_id in exc.errors], "cannot be encoded")
                pending = [t for t in pending if t.trace_id not in exc.errors]
                continue
            except Exception as exc:  # noqa: BLE001 - disk error: held in memory, never raised
                self._spool_failed(f"{exc!r}")
                return False
            if not stored:
                self._spool_failed(f"full: spool_max_bytes {spool.max_bytes}")
                return False
            self._spooled += len(pending)
            self._pending.add(pending)
            self._spool_retry_at = 0.0
            now = time.monotonic()
            entering = spool.pending_traces == len(pending)  # the spool was empty before
            if entering or now - self._last_spool_log >= _DROP_LOG_INTERVAL:
                self._last_spool_log = now
                logger.warning(
                    "trace writer: %d traces spooled to %s (%s); %d waiting there for the store",
                    len(pending), spool.own.path, reason or "the store is still unavailable",
                    spool.pending_traces,
                )
            return True
        return True

    def _spool_failed(self, why: str) -> None:
        self._spool_errors += 1
        self._spool_retry_at = time.monotonic() + self._probe_interval
        now = time.monotonic()
        if now - self._last_spool_error_log >= _DROP_LOG_INTERVAL:
            self._last_spool_error_log = now
            logger.error("trace writer: the spool %s cannot take traces (%s); retrying every %.1fs",
                         self._spool.own.path if self._spool else None, why, self._probe_interval)

    def _held_to_spool(self) -> None:
        """Move held batches to the spool, oldest first, while it takes them."""
        if self._spool is None:
            return
        while self._held:
            rows = self._held[0]
            if not self._spool_batch(rows, "held in memory until the spool could take them"):
                return
            self._held.popleft()
            self._held_traces -= len(rows)
            self._pending.remove(rows)  # counted again by _spool_batch

    def _has_backlog(self) -> bool:
        spool = self._spool
        return bool(self._held) or (spool is not None and spool.has_pending())

    def _backlog_due(self) -> bool:
        return self._has_backlog() or (self._spool is not None and time.monotonic() >= self._next_orphan_scan)

    def _drain(self, forced: bool = False) -> bool:
        """Replay what waits into the store, oldest first: dead processes' spools, ours, then
        the batches held in memory. True when nothing waits any more.

        Stops at the first store error, and after ``drain_budget`` seconds when items wait in
        the queue. After an error the next try waits ``probe_interval``; a flush barrier
        (``forced``) tries at once, unless the last failed try ended less than its own duration
        ago (a store that times out, not refuses). Meanwhile held batches go to the spool if it
        takes them again."""
        spool = self._spool
        now = time.monotonic()
        if spool is not None and now >= self._next_orphan_scan:
            self._next_orphan_scan = now + _ORPHAN_SCAN_INTERVAL
            self._adopt(spool)
        if not self._has_backlog():
            return True
        if self._last_failure is not None:
            # A flush tries at once, unless failed tries would then take over half the thread's
            # time (a store that times out rather than refuses); otherwise every probe_interval.
            slow = self._last_probe_cost if self._last_probe_cost >= _SLOW_PROBE_S else 0.0
            gap = slow if forced else max(self._probe_interval, self._last_probe_cost)
            hung = self._caller.busy and (not forced or self._caller.busy_for() > self._spool_after)
            if now - self._last_failure < gap or hung:
                self._held_to_spool()
                return False
        deadline = now + self._drain_budget
        if spool is not None:
            for source in spool.files():
                adopted = source is not spool.own
                if not self._drain_file(source, adopted=adopted, deadline=deadline):
                    if self._last_failure is not None and self._last_failure >= now:
                        self._last_probe_cost = self._last_failure - now
                    self._held_to_spool()
                    return False
                if adopted:
                    spool.release(source)
        while self._held:
            rows = self._held[0]
            try:
                result = self._caller.call(self._store_write, rows, deadline=time.monotonic() + self._replay_timeout,
                                           give_up=self._replay_give_up())
            except TraceEncodeError as exc:
                self._lose([t for t in rows if t.trace_id in exc.errors], "the store refuses them")
                self._pending.remove(rows)
                keep = [t for t in rows if t.trace_id not in exc.errors]
                self._held_traces -= len(rows) - len(keep)
                self._pending.add(keep)
                self._held[0] = keep
                if not keep:
                    self._held.popleft()
                continue
            except Exception as exc:  # noqa: BLE001 - the store is still down
                self._store_down(exc, "held in memory", self._held_traces)
                self._held_to_spool()
                return False
            self._last_failure = None
            self._held.popleft()
            self._held_traces -= len(rows)
            self._pending.remove(rows)
            duplicates = len(result.duplicates)
            self._written += len(rows) - duplicates
            self._duplicates += duplicates
            self._recovered += len(rows)
            if not self._held:
                logger.warning("trace writer: the traces held in memory are in the store (%d since start)",
                               self._recovered)
            if self._queue and time.monotonic() > deadline:
                return False
        return True

    def _adopt(self, spool: Spool) -> None:
        """Take dead processes' spool files (and, once, what ours inherited) into the pending
        counts."""
        try:
            if not self._counted_own:
                self._counted_own = True
                self._count_pending(spool.own)
            before = set(map(id, spool.adopted))
            spool.adopt_orphans()
            for source in spool.adopted:
                if id(source) not in before:
                    self._count_pending(source)
        except Exception:  # noqa: BLE001 - retried at the next scan
            logger.exception("trace writer: looking for orphaned spool files failed")

    def _count_pending(self, source: SpoolFile) -> None:
        for record in source.iter_records():
            self._pending.add(record.rows)

    def _drain_file(self, source: SpoolFile, *, adopted: bool, deadline: Optional[float]) -> bool:
        replayed = 0
        while True:
            try:
                records = source.peek_many(self._replay_batch, self._replay_bytes)
            except Exception:  # noqa: BLE001 - a corrupt record: counted, the file emptied
                lost = source.traces
                self._failed += lost
                self._pending.clear()  # recounted below from what is left
                logger.exception(
                    "trace writer: the spool %s is corrupt; its %d remaining traces are lost",
                    source.path, lost,
                )
                source.ack_all()
                self._recount()
                return True
            if not records:
                break
            rows = [row for record in records for row in record.rows]
            try:
                result = self._caller.call(self._store_write, rows, deadline=time.monotonic() + self._replay_timeout,
                                           give_up=self._replay_give_up())
            except TraceEncodeError as exc:  # values the backend refuses; never loop
                self._lose([t for t in rows if t.trace_id in exc.errors], "the store refuses them")
                try:
                    result = self._caller.call(self._store_write, [t for t in rows if t.trace_id not in exc.errors],
                                               deadline=time.monotonic() + self._replay_timeout)
                except Exception as exc2:  # noqa: BLE001
                    self._store_down(exc2, source.path, source.traces)
                    return False
                self._pending.remove(t for t in rows if t.trace_id in exc.errors)
                rows = [t for t in rows if t.trace_id not in exc.errors]
            except Exception as exc:  # noqa: BLE001 - the store is still down
                self._store_down(exc, source.path, source.traces)
                return False
            self._last_failure = None
            done_here = len(rows)
            duplicates = len(result.duplicates)
            inherited = sum(len(r.rows) for r in records if r.inherited)
            if adopted:
                self._adopted += done_here
            else:
                self._adopted += inherited
                own = done_here - inherited
                self._written += max(0, own - duplicates)
                self._duplicates += min(own, duplicates)
                self._replayed += own
            replayed += done_here
            source.ack_many(records)
            self._pending.remove(rows)
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

    def _recount(self) -> None:
        self._pending.clear()
        for rows in self._held:
            self._pending.add(rows)
        if self._spool is not None:
            for source in self._spool.files():
                self._count_pending(source)

    def _store_down(self, exc: BaseException, where: str, waiting: int) -> None:
        self._last_failure = time.monotonic()
        now = self._last_failure
        if now - self._last_spool_log >= _DROP_LOG_INTERVAL:
            self._last_spool_log = now
            logger.warning(
                "trace writer: the store is still unavailable (%r); %d traces wait in %s, "
                "next try in %.1fs",
                exc, waiting, where, self._probe_interval,
            )

    def _exit_drain(self) -> None:
        """At close: what waits goes to the store if it answers within the close budget (a
        store call still running is waited for; a store that refuses is not); held batches
        that neither the store nor the spool take then are lost, counted and logged."""
        deadline = self._close_deadline if self._close_deadline is not None else time.monotonic()
        while self._has_backlog() and not self._abort.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._caller.wait_idle(remaining):
                break
            self._last_failure = None
            if self._drain(forced=True):
                break
            if not self._caller.busy:  # it refused rather than hung: don't wait for it
                break
        if self._held:
            self._spool_retry_at = 0.0
            self._held_to_spool()
        if self._held:
            rows = [row for batch in self._held for row in batch]
            self._held.clear()
            self._held_traces = 0
            self._pending.remove(rows)
            self._lose(rows, "the writer stops and neither the store nor the spool takes them")

    def _check_store(self) -> None:
        """Let a store that can check itself (SQLite: is our file still the one at the path?)
        do so while no traffic does it."""
        store = self._store
        check = getattr(store, "check", None)
        if check is None or self._caller.busy:
            return
        try:
            self._caller.call(check, deadline=time.monotonic() + self._spool_after)
        except Exception as exc:  # noqa: BLE001 - the next write finds out too
            logger.debug("trace writer: store check failed: %r", exc)

    def _open_store(self) -> None:
        check = getattr(self._ensure_store(), "check", None)
        if check is not None:
            check()

    def _ensure_store(self) -> TraceStore:
        if self._store is None:
            assert self._factory is not None
            self._store = self._factory()
        return self._store

    def _close_owned_store(self) -> None:
        if self._factory is not None and self._store is not None:
            try:  # in the store-call thread: a store call still hanging must not hang the exit
                self._caller.call(self._store.close, deadline=time.monotonic() + 5.0)
            except StoreBusy:
                logger.warning("trace writer: a store call still hangs at exit; the store is left open")
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
