"""Pytest fixtures serving the fake upstreams; import them with ``from tests.upstreams.fixtures import *``.

Why session scope: starting uvicorn costs ~30 ms and LiteLLM configs need a fixed api_base, so
one server per kind serves the whole session; the function-scoped fixtures clear the request
log (and ``flaky-N`` counters) before each test so assertions see only that test's traffic.
Tests that need another reply length or pacing use ``start_upstream`` (stopped after the test).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from litellm_rllm.demo import server
from litellm_rllm.demo.common import FakeUpstream
from litellm_rllm.demo.vllm import FakeVLLM
from tests.upstreams.anthropic_api import FakeAnthropic
from tests.upstreams.openai_api import FakeOpenAI

__all__ = [
    "vllm_upstream_session",
    "openai_upstream_session",
    "anthropic_upstream_session",
    "vllm_upstream",
    "openai_upstream",
    "anthropic_upstream",
    "start_upstream",
]


@pytest.fixture(scope="session")
def vllm_upstream_session() -> Iterator[server.RunningServer]:
    with server.start(FakeVLLM()) as running:
        yield running


@pytest.fixture(scope="session")
def openai_upstream_session() -> Iterator[server.RunningServer]:
    with server.start(FakeOpenAI()) as running:
        yield running


@pytest.fixture(scope="session")
def anthropic_upstream_session() -> Iterator[server.RunningServer]:
    with server.start(FakeAnthropic()) as running:
        yield running


@pytest.fixture
def vllm_upstream(vllm_upstream_session: server.RunningServer) -> server.RunningServer:
    """The session's fake vLLM (8-token reply), request log cleared for this test."""
    vllm_upstream_session.clear()
    return vllm_upstream_session


@pytest.fixture
def openai_upstream(openai_upstream_session: server.RunningServer) -> server.RunningServer:
    """The session's fake OpenAI (8-token reply), request log cleared for this test."""
    openai_upstream_session.clear()
    return openai_upstream_session


@pytest.fixture
def anthropic_upstream(anthropic_upstream_session: server.RunningServer) -> server.RunningServer:
    """The session's fake Anthropic (8-token reply), request log cleared for this test."""
    anthropic_upstream_session.clear()
    return anthropic_upstream_session


@pytest.fixture
def start_upstream() -> Iterator[Callable[[FakeUpstream], server.RunningServer]]:
    """``start_upstream(FakeVLLM(tokens=100, tokens_per_step=4))`` -> a running server, stopped
    when the test ends."""
    started: list[server.RunningServer] = []

    def start(app: FakeUpstream, **kwargs: Any) -> server.RunningServer:
        running = server.start(app, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
