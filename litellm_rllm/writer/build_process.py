"""Build and encode traces in a helper process, so the proxy's GIL stays with its event loop.

Why: the writer thread runs beside the event loop in one interpreter. While it runs Python the
loop waits for the GIL up to ``sys.getswitchinterval()`` (5 ms) per hand-over, and for the whole
of any single C call: parsing the 12 MB body of a 32,000-token reply with top_logprobs 5 is one
``orjson.loads`` of ~100 ms, and the objects a build allocates set off collections that walk
LiteLLM's whole heap. In a child process all of that runs beside the proxy instead of inside
it. The writer thread only pickles each prepared item (plain data: ``builder.prepare``; buffers
such as a body's reads go out of band, written by ``os.writev``, which releases the GIL) and
reads back the encoded row, then writes the store as before.

The child is ``python -m litellm_rllm.writer.build_process MODULE:FUNCTION``: it imports the
build function (LiteLLM is not needed there) and answers batches until its stdin closes, so it
ends with the proxy however the proxy ends. Wire format, both pipes::

    parent -> child   item:  b"I" u32 pickle_len u32 n_buffers n_buffers*u64 | pickle | buffers
                      batch end: b"E"
    child -> parent   u32 len | pickle   (hello once, then one result per item, in order)

Only items worth it go there: ``weight(item)`` estimates the bytes of upstream data a build
walks, and items under ``min_weight`` are built in the writer thread, as they would be without
this encoder. A short reply builds in well under a millisecond, less than the round trip
costs; and under saturation a second busy process and the GIL hand-overs around its pipe
I/O cost the proxy more CPU than they save (benchmarks/run.py --quick, 256-token replies, three
runs: 0.79-0.85x bare throughput with every call sent over, 0.91-0.98x building them in the
thread; run-to-run noise there is about 10%). The child is started on the first item that
needs it.

When the child cannot start, dies or stops answering, the batch's remaining items are built in
the writer thread and a new child is tried after a backoff; an item that cannot be pickled is
built there too. Nothing is lost either way, and ``stats()`` counts it.
"""

from __future__ import annotations

import gc
import importlib
import io
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
from array import array
from typing import Any, Callable, Optional, Sequence

from litellm_rllm.writer.encoders import BuildFn, Encoded, encode_in_thread, encode_item, trace_id_of
from litellm_rllm.writer.helper_process import start_helper

logger = logging.getLogger(__name__)

PROTOCOL = 5
_ITEM = struct.Struct("<cII")
_LEN = struct.Struct("<I")
_END = b"E"
_IOV_MAX = 512  # buffers per writev call (Linux allows 1024)
_RESTART_DELAYS = (1.0, 5.0, 30.0, 60.0)


def resolve(path: str) -> BuildFn:
    """``"package.module:function"`` -> the function."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"build function must be 'module:function', not {path!r}")
    return getattr(importlib.import_module(module), name)


_OUT_OF_BAND_BYTES = 1 << 16  # arrays larger than this travel as buffers, not copies


def _plain_value(value: Any) -> Any:
    """Unpickles a value the parent turned into plain data (see ``_Pickler``)."""
    return value


def _array_from(typecode: str, data: Any) -> array:
    out = array(typecode)
    out.frombytes(data)
    return out


class _Pickler(pickle.Pickler):
    """Pickles LiteLLM's (pydantic) response objects as the plain dicts they dump to, so the
    child needs neither LiteLLM nor its classes, and large arrays (a stream's token ids,
    logprobs, alternatives) out of band. Built-in types never come through here."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is array:
            if obj.itemsize * len(obj) <= _OUT_OF_BAND_BYTES:
                return NotImplemented
            return (_array_from, (obj.typecode, pickle.PickleBuffer(obj)))
        if callable(getattr(obj, "model_dump", None)) and not isinstance(obj, type):
            from litellm_rllm.capture.fields import plain

            return (_plain_value, (plain(obj),))
        return NotImplemented


def dumps(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``; ``PickleBuffer``s inside it come back apart (out of band)."""
    out = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    _Pickler(out, protocol=PROTOCOL, buffer_callback=buffers.append).dump(obj)
    return out.getvalue(), buffers


# ------------------------------------------------------------------------------- raw pipe I/O


def _write_all(fd: int, parts: Sequence[Any]) -> None:
    """Write every part (bytes-like) to ``fd``: writev releases the GIL and copies nothing."""
    views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
    while views:
        n = os.writev(fd, views[:_IOV_MAX])
        while n:
            size = len(views[0])
            if n >= size:
                n -= size
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


_F_SETPIPE_SZ = 1031  # Linux fcntl: a pipe's buffer size
_PIPE_BYTES = 1 << 20


def _widen(fd: int) -> None:
    """Grow the pipe's buffer from 64 KiB to 1 MiB (Linux's default ceiling for unprivileged
    processes): a 12 MB body then crosses in 12 wake-ups of the child instead of 190, which
    halves the CPU the copy costs. Best effort; the protocol works at any size."""
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except (OSError, ImportError, AttributeError):
        pass


class ChildGone(Exception):
    """The other end closed its pipe, or did not answer in time."""


def _read_exact(fd: int, n: int, deadline: Optional[float] = None) -> bytearray:
    """``n`` bytes from ``fd`` (os.read releases the GIL); ChildGone on EOF or past ``deadline``."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise ChildGone("no answer in time")
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise ChildGone("pipe closed")
        got += k
    return buf


def _read_frame(fd: int, deadline: Optional[float] = None) -> Any:
    (size,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


def _frame(obj: Any) -> list[bytes]:
    data = pickle.dumps(obj, protocol=PROTOCOL)
    return [_LEN.pack(len(data)), data]


# ------------------------------------------------------------------------------- parent side


class BuildProcess:
    """``build`` (a ``"module:function"`` path) and ``codec.encode`` in a child process.

    ``prepare`` runs in the writer thread on each item first (``builder.prepare`` for the
    proxy's call records: plain, picklable data). Items whose ``weight`` is below
    ``min_weight`` are built in the writer thread (module docstring). ``answer_timeout``
    bounds the wait for one item's result (a 32,000-token trace takes well under a second),
    ``start_timeout`` the child's start-up."""

    def __init__(
        self,
        build: str,
        *,
        prepare: Optional[Callable[[Any], Any]] = None,
        weight: Optional[Callable[[Any], int]] = None,
        min_weight: int = 0,
        answer_timeout: float = 60.0,
        start_timeout: float = 60.0,
        restart_delays: Sequence[float] = _RESTART_DELAYS,
        python: Optional[str] = None,
    ) -> None:
        self._build_path = build
        self._build = resolve(build)  # for the writer thread; also checks the path here
        self._prepare = prepare
        self._weight = weight
        self._min_weight = min_weight
        self._answer_timeout = answer_timeout
        self._start_timeout = start_timeout
        self._restart_delays = tuple(restart_delays) or (1.0,)
        self._python = python or sys.executable
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._failures = 0  # consecutive failed starts / lost children
        self._retry_at = 0.0
        self._closed = False
        self._counters = {
            "build_process_starts": 0, "build_process_lost": 0,
            "build_process_items": 0,  # built in the build process
            "build_thread_items": 0,  # built in the writer thread: below min_weight
            "build_fallback_items": 0,  # built in the writer thread: no process, or not picklable
        }

    # ---- lifecycle

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def _child(self) -> Optional[subprocess.Popen[bytes]]:
        """The running child, starting one if none runs and the backoff allows."""
        if self._proc is not None or self._closed or time.monotonic() < self._retry_at:
            return self._proc
        try:
            proc = start_helper(self._python, "litellm_rllm.writer.build_process", self._build_path)
        except OSError as exc:
            self._lost(f"cannot start {self._python}: {exc!r}")
            return None
        self._proc = proc
        self._counters["build_process_starts"] += 1
        for pipe in (proc.stdin, proc.stdout):
            _widen(pipe.fileno())  # type: ignore[union-attr]
        try:
            hello = _read_frame(proc.stdout.fileno(), time.monotonic() + self._start_timeout)  # type: ignore[union-attr]
            if not (isinstance(hello, tuple) and hello[0] == "hello"):
                raise ChildGone(f"unexpected greeting {hello!r:.80}")
        except Exception as exc:  # noqa: BLE001 - any start-up failure: build inline for now
            self._lost(f"did not start: {exc!r}")
            return None
        if self._failures:
            logger.warning("trace writer: build process is back (pid %d)", proc.pid)
        self._failures = 0
        return proc

    def _lost(self, why: str) -> None:
        """Drop the child (killing it if it still runs) and schedule the next try."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._counters["build_process_lost"] += 1
            _stop(proc, grace=0.0)
        delay = self._restart_delays[min(self._failures, len(self._restart_delays) - 1)]
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        logger.warning(
            "trace writer: build process %s; building traces in the writer thread, next try in %.0fs",
            why, delay,
        )

    def close(self) -> None:
        self._closed = True
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop(proc, grace=5.0)

    def stats(self) -> dict[str, int]:
        return {**self._counters, "build_process_running": int(self._proc is not None)}

    # ---- work

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        out: list[Optional[Encoded]] = [None] * len(items)
        prepared: list[Any] = list(items)
        if self._prepare is not None:
            for k, item in enumerate(items):
                try:
                    prepared[k] = self._prepare(item)
                except Exception:  # noqa: BLE001 - a build error of this item
                    out[k] = Encoded(trace_id_of(item), failure="build", detail=traceback.format_exc())
        heavy = [k for k in range(len(items)) if out[k] is None and self._heavy(prepared[k])]
        proc = self._child() if heavy else None
        if proc is not None:
            try:
                self._exchange(proc, prepared, heavy, out)
            except ChildGone as exc:
                self._lost(f"(pid {proc.pid}) stopped answering: {exc}")
            except OSError as exc:  # broken pipe: the child died
                self._lost(f"(pid {proc.pid}) is gone: {exc!r}")
            except Exception as exc:  # noqa: BLE001 - e.g. a frame that does not unpickle
                self._lost(f"(pid {proc.pid}) answered what this process cannot read: {exc!r}")
        sent = sum(1 for k in heavy if out[k] is not None)
        rest = [k for k in range(len(items)) if out[k] is None]
        self._counters["build_process_items"] += sent
        self._counters["build_fallback_items"] += len(heavy) - sent
        self._counters["build_thread_items"] += len(rest) - (len(heavy) - sent)
        for k, outcome in zip(rest, encode_in_thread([prepared[k] for k in rest], self._build)):
            out[k] = outcome
        return out  # type: ignore[return-value]

    def _heavy(self, item: Any) -> bool:
        if self._weight is None:
            return True
        try:
            return self._weight(item) >= self._min_weight
        except Exception:  # noqa: BLE001 - can't tell: the thread builds it, as it always could
            return False

    def _exchange(self, proc: subprocess.Popen[bytes], prepared: list[Any], indices: list[int],
                  out: list[Optional[Encoded]]) -> None:
        """Send the items at ``indices``, then read their results in order."""
        to_child, from_child = proc.stdin.fileno(), proc.stdout.fileno()  # type: ignore[union-attr]
        sent: list[int] = []
        for k in indices:
            try:
                data, buffers = dumps(prepared[k])
            except Exception:  # noqa: BLE001 - not picklable: built in this thread
                continue
            raws = [b.raw() for b in buffers]
            head = _ITEM.pack(b"I", len(data), len(raws)) + struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
            try:
                _write_all(to_child, [head, data, *raws])
            finally:  # end the exports at once: an exported array cannot grow
                for view in raws:
                    view.release()
                for buf in buffers:
                    buf.release()
            sent.append(k)
        if not sent:
            return
        _write_all(to_child, [_END])
        for k in sent:
            kind, payload = _read_frame(from_child, time.monotonic() + self._answer_timeout)
            if kind == "ok":
                out[k] = Encoded(payload.trace_id, row=payload)
            elif kind != "unreadable":  # "unreadable": the child could not unpickle it; the thread builds it
                out[k] = Encoded(trace_id_of(prepared[k]), failure=kind, detail=payload or "")


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Close the child's stdin (it exits at EOF); kill it if it is still there after ``grace``."""
    for pipe in (proc.stdin, proc.stdout):
        try:
            if pipe is not None:
                pipe.close()
        except OSError:
            pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------- child side


class _Unreadable:
    """An item this process could not unpickle (answered "unreadable": the parent builds it)."""


def _read_item(fd: int) -> Optional[Any]:
    """The next item of the batch, or None at the batch's end. ChildGone at EOF."""
    kind = bytes(_read_exact(fd, 1))
    if kind == _END:
        return None
    rest = _read_exact(fd, _ITEM.size - 1)
    _, size, n_buffers = _ITEM.unpack(kind + bytes(rest))
    sizes = struct.unpack(f"<{n_buffers}Q", _read_exact(fd, 8 * n_buffers)) if n_buffers else ()
    data = _read_exact(fd, size)
    buffers = [memoryview(_read_exact(fd, n)) for n in sizes]
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception:  # noqa: BLE001 - e.g. a class this process cannot import
        traceback.print_exc()
        return _Unreadable()


def _result(item: Any, build: BuildFn) -> tuple[str, Any]:
    if isinstance(item, _Unreadable):
        return ("unreadable", None)
    outcome = encode_item(item, build)
    if outcome.row is not None:
        return ("ok", outcome.row)
    return (outcome.failure or "build", outcome.detail)


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop: stdin EOF
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    build = resolve(args[0])
    # A build allocates thousands of short-lived, acyclic objects per trace: reference counting
    # frees them, and the cyclic collector would only rescan them (~15% of a build). So the
    # start-up heap is frozen, automatic collection is off, and one collection follows each
    # batch (for the odd cycle, e.g. an exception's traceback).
    gc.freeze()
    gc.disable()
    _write_all(out_fd, _frame(("hello", os.getpid())))
    in_fd = 0
    while True:
        batch: list[Any] = []
        try:
            while (item := _read_item(in_fd)) is not None:
                batch.append(item)
        except ChildGone:
            return 0
        for item in batch:
            _write_all(out_fd, _frame(_result(item, build)))
        del batch, item
        gc.collect()


if __name__ == "__main__":
    sys.exit(main())
