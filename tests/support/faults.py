"""Helpers for the store-fault system tests (tests/system/test_store_faults.py, issue 21): a
loaded proxy, its flush answers over time, a small disk, and the check that every answered call
is in the store exactly once."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import httpx
import pytest

from litellm_rllm import store as store_mod
from litellm_rllm.trace import Trace
from tests.support import harness


def flush(base_url: str, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    resp = httpx.post(base_url + "/rllm/flush", headers=harness.auth(), params={"timeout": timeout},
                      timeout=timeout + 30)
    return resp.status_code, resp.json()


def writer_stats(base_url: str) -> dict[str, Any]:
    return httpx.get(base_url + "/rllm/stats", headers=harness.auth(), timeout=60).json()["writer"]


def flush_until_200(base_url: str, timeout: float = 40.0) -> list[tuple[int, dict[str, Any]]]:
    """Flush until it answers 200; every answer on the way (the last one is the 200)."""
    seen: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while True:
        status, body = flush(base_url)
        seen.append((status, body))
        if status == 200:
            return seen
        assert time.monotonic() < deadline, f"the flush never answered 200: {seen[-3:]}"
        time.sleep(0.5)


@dataclass
class FlushWatch:
    """Calls the flush route every ``interval`` seconds in a thread; keeps (time, status, body)."""

    base_url: str
    interval: float = 1.0
    answers: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def __enter__(self) -> "FlushWatch":
        def run() -> None:
            while not self._stop.wait(self.interval):
                started = time.time()
                try:
                    status, body = flush(self.base_url, timeout=10)
                except httpx.HTTPError as exc:
                    status, body = -1, {"error": repr(exc)}
                self.answers.append((started, status, body))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def statuses(self) -> list[int]:
        return [status for _, status, _ in self.answers]


def marker(trace: Trace) -> str:
    """The load generator's per-call marker: the message it sent (`<session> call <index>`)."""
    return str(trace.request["messages"][0]["content"])


def stored_markers(store_url: str) -> dict[str, list[Trace]]:
    st = store_mod.open(store_url)
    try:
        out: dict[str, list[Trace]] = {}
        for t in st.traces():
            out.setdefault(marker(t), []).append(t)
        return out
    finally:
        st.close()


def check_stored_once(store_url: str, answered: list[dict[str, Any]],
                      may_miss: Callable[[dict[str, Any]], bool] = lambda a: False) -> list[dict[str, Any]]:
    """No call stored twice; every answered call stored unless ``may_miss(answer)``; per
    session seq 0..n-1. Returns the answered calls that are missing (all ``may_miss``)."""
    stored = stored_markers(store_url)
    doubles = {m: len(v) for m, v in stored.items() if len(v) > 1}
    assert not doubles, f"calls stored twice: {list(doubles.items())[:5]}"
    by_session: dict[str, list[Trace]] = {}
    for traces in stored.values():
        by_session.setdefault(traces[0].session_id or "", []).append(traces[0])
    for sid, items in by_session.items():
        assert sorted(t.seq for t in items) == list(range(len(items))), f"seq of {sid} is not 0..n-1"
    missing = [a for a in answered if a.get("status") == 200 and f"{a['session']} call {a['index']}" not in stored]
    unexplained = [a for a in missing if not may_miss(a)]
    assert not unexplained, f"{len(unexplained)} answered calls have no trace, e.g. {unexplained[:3]}"
    return missing


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only; the test is skipped otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs for the disk-full test (needs root / CAP_SYS_ADMIN): "
                    f"{result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(folder: Path) -> Path:
    """Write a file until the filesystem is full; delete it to give the space back."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


def immutable(paths: list[Path], on: bool) -> bool:
    """chattr +i / -i; False where the filesystem or the user can't."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return False
    result = subprocess.run(["chattr", "+i" if on else "-i", *existing], capture_output=True, text=True)
    return result.returncode == 0


def pids_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


__all__ = ["FlushWatch", "check_stored_once", "fill_disk", "flush", "flush_until_200", "immutable", "marker",
           "pids_alive", "small_disk", "stored_markers", "writer_stats"]
