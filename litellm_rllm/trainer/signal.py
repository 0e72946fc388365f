"""`Signal`: wake the coroutines waiting for "something changed", from any thread.

Why not `asyncio.Event`: the changes are seen by threads (the writer after a commit, the store
poller) and the waiters are coroutines on the proxy's event loop; and a waiter must not miss a
change that happened between its last look and its wait. A generation counter closes that gap:
a waiter reads `generation`, looks at the state, then `wait(seen, timeout)` returns at once if
anything fired since it read the counter.
"""

from __future__ import annotations

import asyncio
import threading


def _wake(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class Signal:
    """A generation counter with waiting coroutines (of any event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict["asyncio.Future[None]", asyncio.AbstractEventLoop] = {}
        self.generation = 0

    def fire(self) -> None:
        """Something changed: wake every waiter. Cheap when nobody waits; any thread."""
        with self._lock:
            self.generation += 1
            if not self._waiters:
                return
            waiters, self._waiters = self._waiters, {}
        for future, loop in waiters.items():
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass

    def has_waiters(self) -> bool:
        return bool(self._waiters)

    async def wait(self, seen: int, timeout: float) -> bool:
        """Until the generation moves past `seen` or `timeout` seconds pass; True if it moved."""
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[None]" = loop.create_future()
        with self._lock:
            if self.generation != seen:
                return True
            self._waiters[future] = loop
        try:
            await asyncio.wait_for(asyncio.shield(future), max(0.0, timeout))
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.pop(future, None)
        return self.generation != seen


__all__ = ["Signal"]
