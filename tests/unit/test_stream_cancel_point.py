"""A stream whose upstream never makes it wait (bytes already buffered, the loop behind) still
gives a client's disconnect a chance to cancel it: the wrapper yields to the loop every
`CANCEL_POINT_S`, so the server stops generating for nobody."""

from __future__ import annotations

import asyncio
import time

import pytest

from litellm_rllm.callbacks import finish
from litellm_rllm.callbacks import plugin as plugin_module
from litellm_rllm.callbacks.plugin import Plugin
from litellm_rllm.settings import Settings


class Sampling:
    pass


async def test_a_stream_that_never_waits_is_cancelled_soon_after_its_client_leaves(monkeypatch):
    p = Plugin(Settings())
    monkeypatch.setattr(plugin_module, "_current", p)
    finish.enroll(Sampling(), finish.SAMPLING)
    data = {"litellm_call_id": "never-waits"}
    p.calls.get_or_create("never-waits")
    served = 0

    async def buffered_upstream():  # every chunk ready at once: no await ever suspends
        for i in range(5000):
            time.sleep(0.001)  # 1 ms of work per chunk: 5 s in all
            yield i

    async def serve() -> None:
        nonlocal served
        async for _ in finish.wrap_stream(buffered_upstream(), data):
            served += 1

    started = time.monotonic()
    task = asyncio.create_task(serve())
    await asyncio.sleep(0.2)  # runs only when the stream lets the loop go round
    task.cancel()  # what anyio does when Starlette sees the client leave
    with pytest.raises(asyncio.CancelledError):
        await task
    waited = time.monotonic() - started
    assert waited < 0.2 + 4 * finish.CANCEL_POINT_S + 0.2, waited
    assert served < 1000
