"""Client helpers: sessions over contextvars and the per-request slug header on OpenAI clients."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import json
import random
from collections.abc import Callable
from types import ModuleType
from typing import Any

import openai
import pytest

from litellm_rllm import client as C
from litellm_rllm.slug import HEADER, SlugError, decode, split_path


# ---------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------


def test_outside_any_session() -> None:
    assert C.current_metadata() == {}
    assert C.current_slug() is None
    assert C.current_session() is None
    assert C.proxied_base_url("http://p/v1") == "http://p/v1"


def test_single_session() -> None:
    with C.session(task="t1", session_name="solver") as s:
        assert len(s.uid) == 32 and s.session_id == s.uid  # no explicit id: the root uid
        assert C.current_metadata() == {
            "task": "t1",
            "session_name": "solver",
            "session_id": s.uid,
            "session_uids": [s.uid],
        }
        assert s.metadata == C.current_metadata()
        assert C.current_session() is s
        assert decode(C.current_slug() or "").as_dict() == C.current_metadata()
        assert s.slug() == C.current_slug()
    assert C.current_metadata() == {}


def test_nested_sessions_merge_and_extend_uids() -> None:
    with C.session(session_id="rollout-1", task="t", temperature_hint=1) as outer:
        with C.session(step=3, task="t-inner") as inner:
            meta = C.current_metadata()
            assert meta["session_uids"] == [outer.uid, inner.uid]
            assert meta["session_id"] == "rollout-1" == inner.session_id  # inherited
            assert meta["task"] == "t-inner" and meta["step"] == 3 and meta["temperature_hint"] == 1
            with C.session(session_id="sub") as innermost:
                assert C.current_metadata()["session_id"] == "sub" == innermost.session_id
                assert C.current_metadata()["session_uids"] == [outer.uid, inner.uid, innermost.uid]
            assert C.current_metadata()["session_id"] == "rollout-1"
        assert C.current_metadata()["session_uids"] == [outer.uid]
        assert "step" not in C.current_metadata()
    assert C.current_metadata() == {}


def test_nested_default_session_id_is_the_root_uid() -> None:
    with C.session() as outer, C.session() as inner:
        assert inner.session_id == outer.uid != inner.uid
        assert C.current_metadata()["session_uids"] == [outer.uid, inner.uid]


def test_every_session_gets_a_fresh_uid() -> None:
    uids = set()
    for _ in range(100):
        with C.session() as s:
            uids.add(s.uid)
    assert len(uids) == 100


def test_session_restored_after_exception() -> None:
    with pytest.raises(KeyError):
        with C.session(a=1):
            raise KeyError("boom")
    assert C.current_metadata() == {}


def test_session_objects_are_single_use() -> None:
    s = C.session()
    with s:
        pass
    with pytest.raises(RuntimeError, match="only be entered once"):
        with s:
            pass
    with pytest.raises(RuntimeError, match="enter the session"):
        C.session().slug()


def test_session_metadata_is_validated_on_entry() -> None:
    with pytest.raises(SlugError, match="'model' is reserved"):
        with C.session(model="gpt-4"):
            pass
    with pytest.raises(SlugError, match="not JSON-serialisable"):
        with C.session(obj=object()):
            pass
    with pytest.raises(SlugError, match="sampling"):
        with C.session(sampling={"temperature": 1}):
            pass
    with pytest.raises(TypeError, match="session_uids is managed"):
        C.session(session_uids=["x"])
    assert C.current_metadata() == {}


def test_none_session_id_means_not_given() -> None:
    with C.session(session_id="a"), C.session(session_id=None) as inner:
        assert inner.session_id == "a"


def test_sampling_override_travels_in_the_slug() -> None:
    with C.session(sampling={"logprobs": True, "top_logprobs": 2}):
        got = decode(C.current_slug() or "")
    assert got.sampling is not None and got.sampling.logprobs is True and got.sampling.top_logprobs == 2


def test_current_metadata_is_a_copy() -> None:
    with C.session(cfg={"a": 1}):
        C.current_metadata()["cfg"]["a"] = 2
        assert C.current_metadata()["cfg"] == {"a": 1}


def test_signed_current_slug() -> None:
    with C.session(a=1):
        assert decode(C.current_slug(secret="k") or "", secrets=["k"], require_signed=True).signed


def test_proxied_base_url_helper() -> None:
    with C.session(task="t") as s:
        url = C.proxied_base_url("http://proxy:4000/v1")
    slug, rest = split_path(url.removeprefix("http://proxy:4000"))
    assert rest == "/v1" and decode(slug or "").session_uids == [s.uid]
    explicit = C.proxied_base_url("http://proxy:4000/v1", {"job": "x"})
    assert decode(split_path(explicit.removeprefix("http://proxy:4000"))[0] or "").as_dict() == {"job": "x"}
    signed = C.proxied_base_url("http://proxy:4000", {"job": "x"}, secret="k")
    assert decode(split_path(signed.removeprefix("http://proxy:4000"))[0] or "", secrets=["k"]).signed


async def test_async_with_and_task_isolation() -> None:
    async def worker(i: int) -> tuple[int, list[str], str]:
        async with C.session(task=i) as s:
            await asyncio.sleep(random.random() / 100)
            meta = C.current_metadata()
            return meta["task"], meta["session_uids"], s.uid

    async with C.session(job="outer") as outer:
        results = await asyncio.gather(*(worker(i) for i in range(20)))
        assert C.current_metadata()["session_uids"] == [outer.uid]  # children did not leak
    for i, (task, uids, uid) in enumerate(results):
        assert task == i and uids == [outer.uid, uid]


def test_threads_see_the_context_they_are_given() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with C.session(a=1), ThreadPoolExecutor(2) as pool:
        bare = pool.submit(C.current_metadata).result()
        ctx = contextvars.copy_context()
        carried = pool.submit(ctx.run, C.current_metadata).result()
    assert bare == {} and carried["a"] == 1


# ---------------------------------------------------------------------------------------
# The wrapper, against a mock transport that records what went over the wire
# ---------------------------------------------------------------------------------------


def _http_modules() -> list[ModuleType]:
    """httpx and/or httpx2, whichever this openai release accepts as http_client."""
    found = []
    for name in ("httpx", "httpx2"):
        try:
            mod = importlib.import_module(name)
            openai.OpenAI(api_key="k", base_url="http://p/v1", http_client=mod.Client())
        except Exception:
            continue
        found.append(mod)
    return found


HTTP = _http_modules()


def _body_for(path: str) -> dict[str, Any]:
    """A minimal well-formed reply for each endpoint, so the SDK parses it happily."""
    if path.endswith("/embeddings"):
        return {"object": "list", "model": "m", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]}
    if path.endswith("/models"):
        return {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]}
    if path.endswith("/responses"):
        return {"id": "r", "object": "response", "created_at": 0, "model": "m", "output": [], "status": "completed"}
    if path.endswith("/completions") and "/chat/" not in path:
        return {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": []}
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
    }


class Recorder:
    """Records (path, slug header, request body) per request; optionally fails the first N."""

    def __init__(self, fail_first: int = 0, delay: bool = False) -> None:
        self.seen: list[tuple[str, str | None, dict[str, Any]]] = []
        self.fail_first = fail_first
        self.delay = delay

    def _record(self, mod: ModuleType, request: Any) -> Any:
        body = json.loads(request.content) if request.content else {}
        self.seen.append((request.url.path, request.headers.get(HEADER), body))
        if self.fail_first > 0:
            self.fail_first -= 1
            return mod.Response(500, json={"error": {"message": "try again"}})
        return mod.Response(200, json=_body_for(request.url.path))

    def sync(self, mod: ModuleType) -> Any:
        return mod.Client(transport=mod.MockTransport(lambda r: self._record(mod, r)))

    def async_(self, mod: ModuleType) -> Any:
        async def handler(request: Any) -> Any:
            if self.delay:
                await asyncio.sleep(random.random() / 200)  # interleave the tasks
            return self._record(mod, request)

        return mod.AsyncClient(transport=mod.MockTransport(handler))


def _sync_client(rec: Recorder, mod: ModuleType, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url="http://proxy/v1", http_client=rec.sync(mod), **kw)


def _async_client(rec: Recorder, mod: ModuleType, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="k", base_url="http://proxy/v1", http_client=rec.async_(mod), **kw)


def _all_endpoints(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    client.completions.create(model="m", prompt="x")
    client.responses.create(model="m", input="x")
    client.embeddings.create(model="m", input="x")
    client.models.list()


def _metadata_of(header: str | None) -> dict[str, Any]:
    assert header is not None
    return decode(header).as_dict()


@pytest.mark.parametrize("mod", HTTP, ids=lambda m: m.__name__)
def test_sync_client_every_endpoint(mod: ModuleType) -> None:
    rec = Recorder()
    client = C.wrap(_sync_client(rec, mod))
    with C.session(task="t") as s:
        _all_endpoints(client)
    _all_endpoints(client)  # outside: no header

    paths = [p for p, _, _ in rec.seen]
    assert paths[:5] == ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/models"]
    for _, header, _ in rec.seen[:5]:
        assert _metadata_of(header) == {"task": "t", "session_id": s.uid, "session_uids": [s.uid]}
    assert [h for _, h, _ in rec.seen[5:]] == [None] * 5
    assert paths[5:] == paths[:5]  # URL untouched: the slug travels in the header


@pytest.mark.parametrize("mod", HTTP, ids=lambda m: m.__name__)
def test_sync_client_follows_the_session_per_request(mod: ModuleType) -> None:
    rec = Recorder()
    client = C.wrap(_sync_client(rec, mod))
    with C.session(n=1):
        client.models.list()
        with C.session(n=2) as inner:
            client.models.list()
        client.models.list()
    assert [_metadata_of(h)["n"] for _, h, _ in rec.seen] == [1, 2, 1]
    assert _metadata_of(rec.seen[1][1])["session_uids"][-1] == inner.uid


@pytest.mark.parametrize("mod", HTTP, ids=lambda m: m.__name__)
async def test_async_client_shared_by_50_concurrent_sessions(mod: ModuleType) -> None:
    rec = Recorder(delay=True)
    client = C.wrap(_async_client(rec, mod))

    async def agent(i: int) -> str:
        async with C.session(task=i) as s:
            for turn in range(3):
                await asyncio.sleep(random.random() / 200)
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"{i}:{turn}"}]
                )
            return s.uid

    uids = await asyncio.gather(*(agent(i) for i in range(50)))
    assert len(rec.seen) == 150
    for _, header, body in rec.seen:
        task = int(body["messages"][0]["content"].split(":")[0])
        meta = _metadata_of(header)
        assert meta["task"] == task and meta["session_uids"] == [uids[task]]


@pytest.mark.parametrize("mod", HTTP, ids=lambda m: m.__name__)
async def test_async_client_every_endpoint_and_streaming(mod: ModuleType) -> None:
    rec = Recorder()
    client = C.wrap(_async_client(rec, mod))
    async with C.session(task="a"):
        await client.chat.completions.create(model="m", messages=[])
        await client.completions.create(model="m", prompt="x")
        await client.responses.create(model="m", input="x")
        await client.embeddings.create(model="m", input="x")
        await client.models.list()
        async with client.chat.completions.with_streaming_response.create(model="m", messages=[]) as resp:
            await resp.read()
    assert len(rec.seen) == 6
    assert all(_metadata_of(h)["task"] == "a" for _, h, _ in rec.seen)


@pytest.mark.parametrize("mod", HTTP, ids=lambda m: m.__name__)
def test_retries_carry_the_header(mod: ModuleType) -> None:
    rec = Recorder(fail_first=2)
    client = C.wrap(_sync_client(rec, mod, max_retries=2))
    client._calculate_retry_timeout = lambda *a, **k: 0.0  # type: ignore[method-assign]
    with C.session(task="r"):
        client.models.list()
    assert len(rec.seen) == 3
    assert all(_metadata_of(h)["task"] == "r" for _, h, _ in rec.seen)


@pytest.mark.parametrize("mod", HTTP, ids=lambda m: m.__name__)
def test_copies_share_the_hook_and_explicit_header_wins(mod: ModuleType) -> None:
    rec = Recorder()
    client = C.wrap(_sync_client(rec, mod))
    with C.session(task="c"):
        client.with_options(timeout=5).models.list()
        client.models.list(extra_headers={HEADER: "rllm1:e30"})
    assert _metadata_of(rec.seen[0][1])["task"] == "c"
    assert rec.seen[1][1] == "rllm1:e30"


@pytest.mark.parametrize("mod", HTTP, ids=lambda m: m.__name__)
def test_signed_wrap_rewrap_and_unwrap(mod: ModuleType) -> None:
    rec = Recorder()
    client = _sync_client(rec, mod)
    assert C.wrap(client, secret="k") is client
    C.wrap(client, secret="k2")  # replaces, never stacks
    assert sum(1 for h in client._client.event_hooks["request"] if getattr(h, C._HOOK_MARK, False)) == 1
    with C.session(task="s"):
        client.models.list()
        C.unwrap(client)
        client.models.list()
    assert decode(rec.seen[0][1] or "", secrets=["k2"], require_signed=True).extra == {"task": "s"}
    assert rec.seen[1][1] is None


@pytest.mark.parametrize("mod", HTTP, ids=lambda m: m.__name__)
def test_wrap_keeps_user_hooks(mod: ModuleType) -> None:
    calls: list[str] = []
    rec = Recorder()
    http = rec.sync(mod)
    http.event_hooks = {"request": [lambda r: calls.append("user")], "response": []}
    client = C.wrap(openai.OpenAI(api_key="k", base_url="http://proxy/v1", http_client=http))
    with C.session():
        client.models.list()
    assert calls == ["user"] and rec.seen[0][1] is not None


def test_wrap_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="openai.OpenAI or openai.AsyncOpenAI"):
        C.wrap(object())


def test_wrap_default_http_client() -> None:
    """Without http_client= the SDK builds its own; wrap() must hook that one too."""
    for cls in (openai.OpenAI, openai.AsyncOpenAI):
        client = C.wrap(cls(api_key="k", base_url="http://proxy/v1"))
        hooks: list[Callable[..., Any]] = client._client.event_hooks["request"]
        assert any(getattr(h, C._HOOK_MARK, False) for h in hooks)
        assert asyncio.iscoroutinefunction(hooks[-1]) is (cls is openai.AsyncOpenAI)
