"""Make the proxy's traces durable on SIGTERM, before the process exits.

Why not only ``atexit``: uvicorn (0.29 and later, which LiteLLM runs) handles SIGTERM
gracefully (stops accepting, lets in-flight requests finish, runs the ASGI lifespan shutdown)
and then restores the default SIGTERM handler and raises the signal again, so the process dies
*by the signal*: ``atexit`` handlers never run and the writer's queue would be lost. So the
writer is also closed from LiteLLM's own shutdown: its lifespan teardown calls
``proxy_server.proxy_shutdown_event`` by its module-global name after in-flight requests have
drained, so a wrapper installed there runs at exactly the right moment, in every uvicorn worker.
``atexit`` stays for the other exits (SIGINT, gunicorn, scripts, tests); ``close`` is idempotent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Callable

log = logging.getLogger("litellm_rllm")

_MARK = "_litellm_rllm_close_writer"


def install_shutdown_close(close: Callable[[], Any]) -> bool:
    """Run ``close()`` (in a thread) at the start of LiteLLM's ``proxy_shutdown_event``.

    Idempotent; False when not inside a LiteLLM proxy (then ``atexit`` is all there is)."""
    try:
        from litellm.proxy import proxy_server
    except Exception:  # noqa: BLE001 - the SDK alone, or an incompatible LiteLLM
        return False
    original = getattr(proxy_server, "proxy_shutdown_event", None)
    if original is None or not asyncio.iscoroutinefunction(original):
        log.warning("litellm-rllm: LiteLLM has no proxy_shutdown_event; traces are flushed at exit only")
        return False
    if getattr(original, _MARK, None) is not None:
        setattr(original, _MARK, close)  # a re-import: the newest writer wins
        return True

    @functools.wraps(original)
    async def proxy_shutdown_event(*args: Any, **kwargs: Any) -> Any:
        closer = getattr(proxy_shutdown_event, _MARK, None)
        if closer is not None:
            try:
                ok = await asyncio.to_thread(closer)
                if ok is False:
                    log.error("litellm-rllm: shutdown with traces not yet durable (see the writer's log)")
            except Exception:  # noqa: BLE001 - LiteLLM's own shutdown must still run
                log.exception("litellm-rllm: closing the trace writer at shutdown failed")
        return await original(*args, **kwargs)

    setattr(proxy_shutdown_event, _MARK, close)
    proxy_server.proxy_shutdown_event = proxy_shutdown_event
    return True


__all__ = ["install_shutdown_close"]
