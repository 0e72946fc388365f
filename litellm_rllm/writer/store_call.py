"""Store calls with a deadline: the writer thread hands each call to a helper thread and waits
for it only so long.

Why: a store call can hang: SQLite waiting out its busy timeout behind another process's write
lock, PostgreSQL waiting on a row or table lock, a server that stopped answering. The writer
thread must keep moving the queue to the spool meanwhile (the SIGKILL loss bound is the queue
plus one batch), so it never waits on the store itself: ``StoreCaller.call`` runs the call in
the helper thread and gives up at the deadline, or as soon as ``give_up()`` says the backlog
has grown too large. The call goes on in the background; its outcome is unknown to the writer,
which spools the batch (a late commit of the same rows makes the replay a no-op: the store
skips known trace ids). Until it ends, every new call fails at once with ``StoreBusy``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

POLL_S = 0.02  # how often a waiting writer looks at its queue


class StoreBusy(ConnectionError):
    """The previous store call is still running (the store hangs); nothing was started."""


class StoreTimeout(ConnectionError):
    """The call did not end in time; it goes on in the background, outcome unknown."""


class _Job:
    __slots__ = ("fn", "args", "done", "result", "error", "started", "abandoned", "on_late")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.started = time.monotonic()
        self.abandoned = False
        self.on_late: Optional[Callable[[Any, Optional[BaseException]], None]] = None


class StoreCaller:
    """One helper thread that runs one store call at a time (see the module docstring)."""

    def __init__(self, name: str = "litellm-rllm-store-call") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._job: Optional[_Job] = None  # the job running or about to run
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.late = 0  # calls that ended after the writer gave up on them

    @property
    def busy(self) -> bool:
        job = self._job
        return job is not None and not job.done.is_set()

    def busy_for(self) -> float:
        """Seconds the running call has taken so far (0 when idle)."""
        job = self._job
        return 0.0 if job is None or job.done.is_set() else time.monotonic() - job.started

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        deadline: Optional[float] = None,
        give_up: Optional[Callable[[], bool]] = None,
        on_late: Optional[Callable[[Any, Optional[BaseException]], None]] = None,
    ) -> Any:
        """``fn(*args)`` in the helper thread; its result, or its exception re-raised.

        Raises ``StoreBusy`` if an earlier call still runs at the deadline, ``StoreTimeout`` past
        ``deadline`` (monotonic) or once ``give_up()`` is true. ``on_late(result, error)`` is
        called in the helper thread if the call ends after the writer gave up on it."""
        while True:
            with self._lock:
                previous = self._job
                if previous is None or previous.done.is_set():
                    job = self._job = _Job(fn, args)
                    job.on_late = on_late
                    self._ensure_thread()
                    break
            # an earlier call still runs (one the writer gave up on, or the store's opening):
            # wait for it within this call's own time
            if previous.done.wait(POLL_S):
                continue
            if (deadline is not None and time.monotonic() >= deadline) or (give_up is not None and give_up()) \
                    or deadline is None:
                raise StoreBusy(f"the previous store call has been running for {self.busy_for():.1f}s")
        self._wake.set()
        while not job.done.wait(POLL_S):
            now = time.monotonic()
            if (deadline is not None and now >= deadline) or (give_up is not None and give_up()):
                with self._lock:
                    if not job.done.is_set():
                        job.abandoned = True
                        raise StoreTimeout(
                            f"no answer from the store after {now - job.started:.1f}s; the call goes on"
                        )
                break
        if job.error is not None:
            raise job.error
        return job.result

    def start(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` without waiting for it (opening the store at start); False if a
        call is running. Its outcome is only logged if it fails."""
        with self._lock:
            if self.busy:
                return False
            job = self._job = _Job(fn, args)
            job.abandoned = True
            job.on_late = _log_failure
            self._ensure_thread()
        self._wake.set()
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call runs (True) or ``timeout`` passes (False)."""
        job = self._job
        return job is None or job.done.wait(timeout)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(1.0)
            self._wake.clear()
            job = self._job
            if job is None or job.done.is_set():
                continue
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                job.error = exc
            with self._lock:
                job.done.set()
                late = job.abandoned
            if late and job.on_late is _log_failure:
                _log_failure(job.result, job.error)
            elif late:
                self.late += 1
                took = time.monotonic() - job.started
                logger.warning(
                    "trace writer: a store call the writer gave up on ended after %.1fs (%s)",
                    took, "ok" if job.error is None else repr(job.error),
                )
                if job.on_late is not None:
                    try:
                        job.on_late(job.result, job.error)
                    except Exception:  # noqa: BLE001
                        logger.exception("trace writer: handling a late store answer failed")


def _log_failure(_result: Any, error: Optional[BaseException]) -> None:
    if error is not None:
        logger.warning("trace writer: opening the store failed (%r); retried with the first write", error)


__all__ = ["POLL_S", "StoreBusy", "StoreCaller", "StoreTimeout"]
