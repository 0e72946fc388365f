"""The proxy's SQLite store in a child process, so a fault in SQLite's shared memory can't kill
the proxy.

Why: in WAL mode every SQLite connection maps the ``-shm`` file (the WAL index) with
``mmap(MAP_SHARED)`` and writes it through that mapping. When a page of the mapping cannot be
backed any more (the file truncated by someone, made immutable, a filesystem that cannot
allocate the page) the kernel answers the write with SIGBUS, which no Python code can catch:
the process dies. Inside the proxy that is LiteLLM itself. In this child it is one store
connection: the parent sees its pipe close, counts ``store_process_lost``, logs which signal
ended it, and starts a new child for the next call (backoff 0.5-5 s); the writer meanwhile
spools, as for any store that is down. The alternatives were worse: ``locking_mode=EXCLUSIVE``
keeps the WAL index in heap memory but lets one process alone use the file (two proxies on one
file, and every reader such as the CLI, would be locked out); a rollback journal has no ``-shm``
but blocks readers during commits and fsyncs twice per commit. See docs/storage-faults.md.

The child, ``python -m litellm_rllm.writer.store_process``, gets its settings in a first frame
on stdin (never on the command line), opens the store lazily (a missing or full disk is an
error per call, not a dead child) and answers calls until its stdin closes, so it ends with the
proxy however the proxy ends (after finishing a write in progress). It ignores SIGINT/SIGTERM:
the proxy decides when it stops, after its writer has flushed. Wire format, both pipes: ``u32
length | pickle`` frames; a call is ``(method, args)``, an answer ``("ok", result, stats)`` or
``("err", exception, stats)``; the first answer is ``("hello", pid)``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional, Sequence

from litellm_rllm.store.base import EncodedWriteResult, SessionSummary, TraceStore
from litellm_rllm.store.codec import EncodedTrace
from litellm_rllm.trace import Trace
from litellm_rllm.writer.build_process import ChildGone, _frame, _read_frame, _widen, _write_all
from litellm_rllm.writer.helper_process import start_helper

logger = logging.getLogger(__name__)

_RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0)
# What the parent may ask: the store contract's calls, plus the fault hooks.
_CALLS = frozenset({"write_encoded", "_read_plan", "_fetch_page", "get", "sessions", "count", "checkpoint",
                    "check", "stats"})
# The trainer's store calls (store/trainer_store.py) and the other reads the proxy makes, run in
# the child like the rest (their answers are plain data or pydantic models: they pickle).
_FORWARDED = frozenset({
    "_delete", "_rows_by_id", "session_page", "add_reward", "finish", "rewards", "rewards_for", "finished",
    "feed_head", "changes", "set_policy_version", "policy_versions", "set_pause", "clear_pause", "pauses",
    "control_state", "heartbeat", "heartbeats",
})


class StoreProcessLost(ConnectionError):
    """The child died or stopped answering; the call's outcome is unknown."""


def _signal_name(returncode: Optional[int]) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class StoreProcess(TraceStore):
    """A ``SqliteStore`` (``path``, ``create``) whose every call runs in a child process.

    One call at a time (a lock). ``answer_timeout`` bounds one call (the store's own busy
    timeout is 30 s; past this the child is killed and replaced)."""

    def __init__(self, path: str, *, create: bool = True, answer_timeout: float = 60.0,
                 restart_delays: Sequence[float] = _RESTART_DELAYS, python: Optional[str] = None) -> None:
        self.path = path
        self._create = create
        self._answer_timeout = answer_timeout
        self._restart_delays = tuple(restart_delays) or (1.0,)
        self._python = python or sys.executable
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._failures = 0
        self._retry_at = 0.0
        self._closed = False
        self._child_stats: dict[str, int] = {}
        self._listeners: list[Any] = []  # add_commit_listener
        self.lost = 0  # children that died or hung
        self.starts = 0
        self.last_loss = ""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "StoreProcess":
        from litellm_rllm.store.sqlite import path_from_url

        return cls(path_from_url(url), **kwargs)

    def __repr__(self) -> str:
        return f"StoreProcess({self.path!r})"

    # ---- the child

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def _child(self) -> subprocess.Popen[bytes]:
        if self._proc is not None:
            return self._proc
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise StoreProcessLost(f"the SQLite store process is restarting (next try in {wait:.1f}s; {self.last_loss})")
        try:
            proc = start_helper(self._python, "litellm_rllm.writer.store_process")
        except OSError as exc:
            self._lost(None, f"cannot start {self._python}: {exc!r}")
            raise StoreProcessLost(self.last_loss) from exc
        self._proc = proc
        self.starts += 1
        for pipe in (proc.stdin, proc.stdout):
            _widen(pipe.fileno())  # type: ignore[union-attr]
        try:
            _write_all(proc.stdin.fileno(), _frame({"path": self.path, "create": self._create}))  # type: ignore[union-attr]
            hello = _read_frame(proc.stdout.fileno(), time.monotonic() + 60.0)  # type: ignore[union-attr]
            if not (isinstance(hello, tuple) and hello[0] == "hello"):
                raise ChildGone(f"unexpected greeting {hello!r:.80}")
        except Exception as exc:  # noqa: BLE001
            self._lost(proc, f"did not start: {exc!r}")
            raise StoreProcessLost(self.last_loss) from exc
        if self._failures:
            logger.warning("SQLite store process for %s is back (pid %d)", self.path, proc.pid)
        self._failures = 0
        return proc

    def _lost(self, proc: Optional[subprocess.Popen[bytes]], why: str) -> None:
        self._proc = None
        if proc is not None:
            self.lost += 1
            for pipe in (proc.stdin, proc.stdout):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass
            try:
                proc.wait(0.5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            why = f"(pid {proc.pid}) {why}: {_signal_name(proc.returncode)}"
        delay = self._restart_delays[min(self._failures, len(self._restart_delays) - 1)]
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        self.last_loss = why
        hint = (" (SIGBUS: a page of SQLite's shared-memory file could not be written: a full or "
                "read-only disk, or the -shm file truncated or made immutable)") if "SIGBUS" in why else ""
        logger.error("SQLite store process for %s %s%s; a new one in %.1fs", self.path, why, hint, delay)

    # ---- calls

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            proc = self._child()
            try:
                _write_all(proc.stdin.fileno(), _frame((method, args, kwargs)))  # type: ignore[union-attr]
                kind, value, stats = _read_frame(proc.stdout.fileno(), time.monotonic() + self._answer_timeout)  # type: ignore[union-attr]
            except ChildGone as exc:
                if proc.poll() is None and "in time" in str(exc):
                    proc.kill()
                    self._lost(proc, f"gave no answer within {self._answer_timeout:.0f}s (killed)")
                else:
                    self._lost(proc, "died")
                raise StoreProcessLost(self.last_loss) from None
            except OSError:  # broken pipe: it died before reading the call
                self._lost(proc, "died")
                raise StoreProcessLost(self.last_loss) from None
            self._child_stats = stats
        if kind == "err":
            raise value
        return value

    def write_encoded(self, encoded: Sequence[EncodedTrace]) -> EncodedWriteResult:
        result = self._call("write_encoded", list(encoded))
        if result.inserted:
            self._committed()
        return result

    def _delete(self, session: Optional[str], before_us: Optional[int]) -> int:
        return self._call("_delete", session, before_us)

    def _rows_by_id(self, trace_ids: Sequence[str]) -> Any:
        return self._call("_rows_by_id", list(trace_ids))

    def add_commit_listener(self, fn: Any) -> None:
        """Call ``fn()`` after each of this proxy's commits (the feed's followers wake at once)."""
        self._listeners.append(fn)

    def _committed(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a listener must not turn a commit into an error
                pass



    def _read_plan(self, session: Optional[str], since_us: Optional[int]) -> Any:
        return self._call("_read_plan", session, since_us)

    def _fetch_page(self, query: str, params: tuple[Any, ...], key: Any, n: int) -> Sequence[Sequence[Any]]:
        return self._call("_fetch_page", query, params, key, n)

    def get(self, trace_id: str) -> Optional[Trace]:
        return self._call("get", trace_id)

    def sessions(self) -> list[SessionSummary]:
        return self._call("sessions")

    def count(self) -> int:
        return self._call("count")

    def checkpoint(self) -> None:
        self._call("checkpoint")

    def check(self) -> None:
        self._call("check")

    def stats(self) -> dict[str, int]:
        """The child's counters as of its last answer (never waits for it), and ours."""
        return {**self._child_stats, "store_process_lost": self.lost, "store_process_starts": self.starts,
                "store_process_running": int(self._proc is not None)}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            proc.wait(10.0)  # it checkpoints and closes its connection at EOF
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Forwarded writes that add feed items: this proxy's followers are woken after them, as after
# ``write_encoded`` (the child's store has no listeners; they live here).
_FEED_WRITES = frozenset({"add_reward", "finish"})


def _forwarder(name: str) -> Any:
    def call(self: StoreProcess, *args: Any, **kwargs: Any) -> Any:
        result = self._call(name, *args, **kwargs)
        if name in _FEED_WRITES and not getattr(result, "duplicate", True):
            self._committed()
        return result

    call.__name__ = name
    call.__doc__ = f"``{name}`` of the SQLite store, run in the store process."
    return call


# The trainer's store calls (inherited from TrainerStore, whose own versions need the tables in
# this process) and the other forwarded reads: each runs in the child.
for _name in _FORWARDED:
    setattr(StoreProcess, _name, _forwarder(_name))


def open_for_proxy(url: str, *, reader: bool = False, isolate: bool = True) -> TraceStore:
    """The store a proxy process uses: SQLite in a ``StoreProcess`` (``isolate``), other
    backends as ``store.open`` gives them. A reader never creates the SQLite file."""
    from litellm_rllm import store
    from litellm_rllm.store.sqlite import SqliteStore, path_from_url

    if not url.startswith("sqlite:///"):
        return store.open(url)
    path = path_from_url(url)
    if path == ":memory:" or not isolate:
        return SqliteStore(path, create=not reader or path == ":memory:")
    return StoreProcess(path, create=not reader)


# ------------------------------------------------------------------------------- child side


def _answer(kind: str, value: Any, stats: dict[str, int]) -> list[bytes]:
    try:
        return _frame((kind, value, stats))
    except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
        return _frame(("err", RuntimeError(f"{type(value).__name__}: {value} ({exc!r})"), stats))


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop: stdin EOF
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - litellm_rllm store process:%(levelname)s: %(message)s")
    from litellm_rllm.store.sqlite import SqliteStore

    try:
        config = _read_frame(0)
    except ChildGone:
        return 0
    _write_all(out_fd, _frame(("hello", os.getpid())))
    store: Optional[SqliteStore] = None
    while True:
        try:
            method, args, *rest = _read_frame(0)
        except ChildGone:
            break
        kwargs = rest[0] if rest else {}
        try:
            if method not in _CALLS and method not in _FORWARDED:
                raise ValueError(f"not a store call: {method!r}")
            if store is None:  # opened per call until it opens: a full disk is an error, not a crash
                store = SqliteStore(config["path"], create=config["create"])
            result: Any = getattr(store, method)(*args, **kwargs)
            reply = _answer("ok", result, store.stats())
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            reply = _answer("err", exc, store.stats() if store is not None else {})
        try:
            _write_all(out_fd, reply)
        except OSError:  # the parent is gone
            break
    if store is not None:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["StoreProcess", "StoreProcessLost", "open_for_proxy"]
