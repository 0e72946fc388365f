"""Client libraries nobody here wrote, talking to the real proxy (`litellm --config` with the
plugin) in front of the fake vLLM: the OpenAI Agents SDK on the Responses API and on chat
completions, the Anthropic SDK on `/v1/messages`, LangChain's ChatOpenAI streaming with tools.

For each: one trace per call, in call order, `ok` and complete, its token ids equal to what the
fake vLLM generated (its request log says, `"generated"`), and nothing the plugin added in what
the client received (read off the HTTP bytes the library got). The Agents SDK's Responses
tool-call turn is the exception the completeness check exists for: vLLM gives its token ids but
no logprobs, so it must be flagged, not `ok`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, Iterator

import httpx
import pytest

from litellm_rllm.slug import encode
from litellm_rllm.trace import Trace
from tests.support import harness

agents = pytest.importorskip("agents", reason="openai-agents is in the test extra (pyproject.toml)")
anthropic = pytest.importorskip("anthropic", reason="anthropic is in the test extra (pyproject.toml)")
langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is in the test extra")

QUESTION = "What is the weather in Paris?"
# Fields that carry what the plugin adds upstream; a client that asked for none must get none.
INJECTED_KEYS = ("token_ids", "prompt_token_ids", "input_messages", "output_messages", "prompt_logprobs")


@pytest.fixture(scope="module")
def proxy_proc(tmp_path_factory: pytest.TempPathFactory, upstream_urls: dict[str, str]) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("clients")
    store_url = f"sqlite:///{folder / 'traces.db'}"
    config = harness.write_config(folder, upstreams=upstream_urls, store_url=store_url)
    with harness.ProxyProcess(config) as proc:
        proc.store_url = store_url
        yield proc


class Recorder:
    """An async httpx transport that keeps every response body the client library received.
    `http` is the httpx flavour the library takes (`httpx`, or `httpx2` for the Anthropic SDK)."""

    def __init__(self, http: Any = httpx) -> None:
        self.http = http
        self.bodies: list[bytearray] = []
        recorder = self

        class Kept(http.AsyncByteStream):  # type: ignore[misc, name-defined]
            def __init__(self, inner: Any, body: bytearray) -> None:
                self.inner, self.body = inner, body

            async def __aiter__(self) -> Any:
                async for part in self.inner:
                    self.body.extend(part)
                    yield part

            async def aclose(self) -> None:
                await self.inner.aclose()

        class Transport(http.AsyncBaseTransport):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                self.inner = http.AsyncHTTPTransport()

            async def handle_async_request(self, request: Any) -> Any:
                response = await self.inner.handle_async_request(request)
                body = bytearray()
                recorder.bodies.append(body)
                response.stream = Kept(response.stream, body)
                return response

            async def aclose(self) -> None:
                await self.inner.aclose()

        self.transport = Transport()

    def client(self) -> Any:
        return self.http.AsyncClient(transport=self.transport, timeout=60)

    def payloads(self) -> list[Any]:
        """Each body as JSON, or each `data:` event of an event stream."""
        out: list[Any] = []
        for body in self.bodies:
            text = body.decode()
            if text.lstrip().startswith("{"):
                out.append(json.loads(text))
            else:
                out += [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")
                        and line[5:].strip().startswith("{")]
        return out


def injected_in(payload: Any, path: str = "") -> list[str]:
    """Where a payload holds something only the plugin's injection could have put there."""
    found: list[str] = []
    if isinstance(payload, dict):
        for key, value in payload.items():
            here = f"{path}.{key}"
            if key in INJECTED_KEYS and value is not None:
                found.append(here)
            elif key == "logprobs" and value not in (None, []):
                found.append(here)
            elif key == "top_logprobs" and value not in (None, [], 0):
                found.append(here)
            else:
                found += injected_in(value, here)
    elif isinstance(payload, list):
        for i, item in enumerate(payload):
            found += injected_in(item, f"{path}[{i}]")
    return found


def session(proc: Any) -> tuple[str, str]:
    sid = f"lib-{uuid.uuid4().hex[:10]}"
    return sid, f"{proc.base_url}/meta/{encode({'session_id': sid})}"


def traces_of(proc: Any, sid: str) -> list[Trace]:
    assert httpx.post(proc.base_url + "/rllm/flush", headers=harness.auth(), timeout=60).json()["flushed"]
    return harness.read_traces(proc.store_url, sid)


def generated(upstream: Any, path: str) -> list[dict[str, Any]]:
    """What the fake vLLM generated for each request on `path`, in arrival order."""
    return [r["generated"] for r in upstream.requests if r["path"] == path]


def assert_equal_to_truth(traces: list[Trace], truth: list[dict[str, Any]], *, flagged: tuple[int, ...] = ()) -> None:
    """One trace per upstream call, in order, with the upstream's prompt and completion ids."""
    assert len(traces) == len(truth), (len(traces), len(truth))
    for k, (trace, gen) in enumerate(zip(traces, truth)):
        [choice] = trace.choices
        assert trace.status == "ok", (k, trace.status, trace.error)
        assert trace.prompt_token_ids == gen["prompt_token_ids"], k
        assert choice.token_ids == gen["choices"][0]["token_ids"], k
        if k in flagged:
            assert not choice.completeness.ok and choice.logprobs is None, (k, choice.completeness)
            assert "logprobs were requested but the choice has none" in choice.completeness.problems[0]
        else:
            assert choice.completeness is not None and choice.completeness.ok, (k, choice.completeness)
            assert len(choice.logprobs or []) == len(choice.token_ids or []), k
    orders = [t.order for t in traces]
    assert orders == sorted(orders), orders


def weather(location: str) -> str:
    """Today's weather in a city."""
    return f"sunny in {location}"


# ---------------------------------------------------------------------------------------------
# OpenAI Agents SDK
# ---------------------------------------------------------------------------------------------


def run_agent(base: str, recorder: Recorder, model_kind: str) -> str:
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)  # the SDK would export its own traces to OpenAI

    async def main() -> str:
        client = AsyncOpenAI(base_url=f"{base}/v1", api_key=harness.MASTER_KEY, max_retries=0,
                             http_client=recorder.client())
        model_cls = agents.OpenAIResponsesModel if model_kind == "responses" else agents.OpenAIChatCompletionsModel
        agent = agents.Agent(name="forecaster", instructions="Answer with the tool.",
                             model=model_cls(model="policy", openai_client=client),
                             tools=[agents.function_tool(weather)])
        result = await agents.Runner.run(agent, QUESTION, max_turns=4)
        await client.close()
        return str(result.final_output)

    return asyncio.run(main())


def test_agents_sdk_on_the_responses_api_tool_call_turn_is_flagged(proxy_proc, vllm_upstream):
    sid, base = session(proxy_proc)
    recorder = Recorder()
    answer = run_agent(base, recorder, "responses")
    assert answer  # the loop ended: tool call, then an answer
    truth = generated(vllm_upstream, "/v1/responses")
    traces = traces_of(proxy_proc, sid)
    assert [t.route for t in traces] == ["/v1/responses"] * 2
    assert traces[0].choices[0].finish_reason == "tool_calls" and traces[1].choices[0].finish_reason == "stop"
    assert_equal_to_truth(traces, truth, flagged=(0,))  # vLLM's Responses tool-call turn has no logprobs
    assert set(traces[0].injected) >= {"include", "top_logprobs", "enable_response_messages"}
    assert injected_in(recorder.payloads()) == []
    assert all(p.get("top_logprobs") is None for p in recorder.payloads() if p.get("object") == "response")


def test_agents_sdk_on_chat_completions(proxy_proc, vllm_upstream):
    sid, base = session(proxy_proc)
    recorder = Recorder()
    assert run_agent(base, recorder, "chat")
    traces = traces_of(proxy_proc, sid)
    assert [t.choices[0].finish_reason for t in traces] == ["tool_calls", "stop"]
    assert_equal_to_truth(traces, generated(vllm_upstream, "/v1/chat/completions"))
    assert injected_in(recorder.payloads()) == []


# ---------------------------------------------------------------------------------------------
# Anthropic SDK on /v1/messages
# ---------------------------------------------------------------------------------------------


def test_anthropic_sdk_on_messages_plain_and_streamed(proxy_proc, vllm_upstream):
    """`/v1/messages` served by the vLLM deployment (LiteLLM turns it into a chat completion)."""
    sid, base = session(proxy_proc)
    recorder = Recorder(pytest.importorskip("httpx2"))  # anthropic 2.x runs on httpx2

    async def main() -> list[str]:
        client = anthropic.AsyncAnthropic(base_url=base, api_key=harness.MASTER_KEY, max_retries=0,
                                          http_client=recorder.client())
        texts = []
        msg = await client.messages.create(model="policy", max_tokens=64,
                                           messages=[{"role": "user", "content": "hello"}])
        texts.append("".join(b.text for b in msg.content if b.type == "text"))
        async with client.messages.stream(model="policy", max_tokens=64,
                                          messages=[{"role": "user", "content": "hello again"}]) as stream:
            texts.append("".join([piece async for piece in stream.text_stream]))
        await client.close()
        return texts

    texts = asyncio.run(main())
    truth = generated(vllm_upstream, "/v1/chat/completions")
    assert texts == [g["choices"][0]["text"] for g in truth]
    traces = traces_of(proxy_proc, sid)
    assert [(t.route, t.stream) for t in traces] == [("/v1/messages", False), ("/v1/messages", True)]
    assert_equal_to_truth(traces, truth)
    assert injected_in(recorder.payloads()) == []


# ---------------------------------------------------------------------------------------------
# LangChain ChatOpenAI, streaming, with tools
# ---------------------------------------------------------------------------------------------


def test_langchain_chat_openai_streaming_with_tools(proxy_proc, vllm_upstream):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    sid, base = session(proxy_proc)
    recorder = Recorder()
    get_weather = tool(weather)

    async def main() -> tuple[Any, Any]:
        llm = langchain_openai.ChatOpenAI(model="policy", base_url=f"{base}/v1", api_key=harness.MASTER_KEY,
                                          streaming=True, max_retries=0,
                                          http_async_client=recorder.client())
        with_tools = llm.bind_tools([get_weather])
        history: list[Any] = [HumanMessage(QUESTION)]
        call = await with_tools.ainvoke(history)
        history += [call, ToolMessage(weather("Paris"), tool_call_id=call.tool_calls[0]["id"])]
        answer = await with_tools.ainvoke(history)
        return call, answer

    call, answer = asyncio.run(main())
    assert call.tool_calls[0]["name"] == "weather" and call.tool_calls[0]["args"] == {"location": "Paris"}
    truth = generated(vllm_upstream, "/v1/chat/completions")
    assert answer.content == truth[1]["choices"][0]["text"]
    traces = traces_of(proxy_proc, sid)
    assert all(t.stream for t in traces)
    assert traces[0].choices[0].message["tool_calls"][0]["function"]["name"] == "weather"
    assert_equal_to_truth(traces, truth)  # the tool-call stream's empty-delta ids included
    assert injected_in(recorder.payloads()) == []
