"""Shared fixtures. LiteLLM reads some settings at import, so the environment is set first."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.pop("RLLM_STORE_URL", None)

from pathlib import Path  # noqa: E402
from typing import Any, Iterator, Optional  # noqa: E402

import pytest  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

# Property tests: a few hundred examples in a developer's run of the fast tier, 10,000 in
# scripts/test.sh (CI), which sets HYPOTHESIS_PROFILE=thorough.
hypothesis_settings.register_profile("dev", max_examples=300)
hypothesis_settings.register_profile("thorough", max_examples=10_000)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

from tests.support import harness  # noqa: E402
from tests.upstreams.fixtures import *  # noqa: E402,F401,F403

# Provider cassettes (tests/proxy/test_cassettes.py): the --record-cassettes option and the
# `cassette_use` fixture come from this plugin module.
pytest_plugins = ["tests.support.cassette_support", "tests.support.pg", "tests.support.redis_server"]


class InProcessProxy:
    """The real LiteLLM proxy app in this process, driven through Starlette's TestClient."""

    def __init__(self, client: Any, store_url: str, config: Path) -> None:
        self.client = client
        self.store_url = store_url
        self.config = config

    def flush(self, timeout: float = 10.0) -> None:
        from litellm_rllm.callbacks.plugin import plugin

        assert plugin().writer.flush(timeout), "writer did not flush in time"

    def traces(self, session: Optional[str] = None) -> list[Any]:
        self.flush()
        return harness.read_traces(self.store_url, session)

    def openai(self, slug: Optional[str] = None, **kwargs: Any) -> Any:
        """An official `openai` client whose HTTP goes through the in-process app."""
        import openai

        base = f"http://testserver/meta/{slug}/v1" if slug else "http://testserver/v1"
        return openai.OpenAI(base_url=base, api_key=harness.MASTER_KEY, http_client=self.client,
                             max_retries=0, **kwargs)


@pytest.fixture(scope="session")
def upstream_urls(vllm_upstream_session: Any, openai_upstream_session: Any,
                  anthropic_upstream_session: Any) -> dict[str, str]:
    return {
        "vllm": vllm_upstream_session.api_base,
        "openai": openai_upstream_session.api_base,
        "anthropic": anthropic_upstream_session.base_url,
    }


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream_urls: dict[str, str]) -> Iterator[InProcessProxy]:
    """One in-process proxy for the session (LiteLLM keeps global state; one config per
    process). Tests isolate themselves by session id."""
    folder = tmp_path_factory.mktemp("proxy")
    store_url = f"sqlite:///{folder / 'traces.db'}"
    config = harness.write_config(folder, upstreams=upstream_urls, store_url=store_url)
    os.environ["CONFIG_FILE_PATH"] = str(config)
    os.environ["LITELLM_MASTER_KEY"] = harness.MASTER_KEY
    from fastapi.testclient import TestClient
    from litellm.proxy.proxy_server import app

    with TestClient(app) as client:
        client.headers.update(harness.auth())
        yield InProcessProxy(client, store_url, config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Close LiteLLM's pooled aiohttp clients while the interpreter is whole: collected at exit
    instead, their `__del__` runs against half-torn-down modules and prints tracebacks."""
    import asyncio
    import gc

    try:
        from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

        asyncio.run(close_litellm_async_clients())
    except Exception:  # noqa: BLE001 - LiteLLM without it, or nothing to close
        pass
    _dispose_leftover_aiohttp_sessions()
    gc.collect()


def _dispose_leftover_aiohttp_sessions() -> None:
    """Sessions bound to the in-process proxies' closed loops can't be closed by the above (it
    awaits on a new loop): dispose them synchronously, as LiteLLM's transport does for a
    recycled session (`BaseConnector._close`, aiohttp's own finalizer step), and drop LiteLLM's
    cached clients so their transports are collected now, while the modules their `__del__`
    reads still exist."""
    import gc

    try:
        import aiohttp
        import litellm
    except ImportError:
        return
    try:
        from litellm.llms.custom_httpx.aiohttp_transport import LiteLLMAiohttpTransport
    except ImportError:
        LiteLLMAiohttpTransport = ()  # type: ignore[assignment,misc]
    for obj in gc.get_objects():
        if isinstance(obj, aiohttp.ClientSession) and not obj.closed:
            close = getattr(getattr(obj, "_connector", None), "_close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - best effort at exit
                    pass
        elif isinstance(obj, LiteLLMAiohttpTransport):
            # its session is disposed above; a transport still referenced at exit would run its
            # __del__ against torn-down modules (an isinstance on None): it owns nothing now
            obj._owns_session = False
    cache = getattr(getattr(litellm, "in_memory_llm_clients_cache", None), "cache_dict", None)
    if isinstance(cache, dict):
        cache.clear()
