"""The writer's build process: same rows as building in the writer thread, and nothing lost
when the process fails, hangs or is given what it cannot take."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from typing import Any, Iterator

import httpx
import pytest

from litellm_rllm.builder import build_trace, prepare
from litellm_rllm.capture.record import CallRecord
from litellm_rllm.capture.sse import SSEParser
from litellm_rllm.writer.build_process import BuildProcess
from litellm_rllm.writer.encoders import InlineEncoder

FAST_RESTART = (0.05,)


@pytest.fixture()
def encoder() -> Iterator[BuildProcess]:
    enc = BuildProcess("tests.support.encoder_helpers:build", restart_delays=FAST_RESTART)
    yield enc
    enc.close()


def item(name: str, **kw: Any) -> dict[str, Any]:
    return {"id": name, "parent_pid": os.getpid(), **kw}


def _vllm_records(api_base: str) -> list[CallRecord]:
    """Call records as the proxy makes them, from the fake vLLM's real bytes: a JSON body as its
    reads, an SSE stream through the tee's parser, LiteLLM's parsed response, an error."""
    import litellm

    from litellm_rllm.callbacks.finish import snapshot
    from litellm_rllm.capture.stream import StreamAccumulator

    body = {"model": "fake-vllm", "messages": [{"role": "user", "content": "Tell me a story."}],
            "logprobs": True, "top_logprobs": 3, "return_token_ids": True, "max_tokens": 40, "n": 2}
    upstream = {**body, "model": "hosted_vllm/fake-vllm", "custom_llm_provider": "hosted_vllm",
                "api_base": api_base, "api_key": "sk-upstream-secret-123456", "client": object(),
                "litellm_logging_obj": threading.Lock()}
    common = dict(started_wall=1_700_000_000.0, route="/v1/chat/completions", model="policy", latency_ms=12.5,
                  session={"session_id": "enc-1", "session_uids": ["run", "enc-1"], "task": "t"},
                  caller={"team_id": "team-a"}, client_request=dict(body, metadata={"x": object()}),
                  upstream=upstream, injected={"logprobs": True, "rule": "trained-policy"})
    with httpx.Client(base_url=api_base, timeout=30) as http:
        raw = http.post("/chat/completions", json=body)
        raw.raise_for_status()
        with http.stream("POST", "/chat/completions",
                         json={**body, "stream": True, "stream_options": {"include_usage": True}}) as resp:
            acc = StreamAccumulator()
            parser = SSEParser(acc.add)
            for chunk in resp.iter_raw():
                parser.feed(chunk)
            parser.close()
    data = raw.content
    parts = [data[k:k + 1000] for k in range(0, len(data), 1000)]
    parsed = litellm.ModelResponse(**raw.json())
    return [
        CallRecord(call_id="enc-raw", raw_body=parts, hidden={"response_cost": 0.25}, **common),
        CallRecord(call_id="enc-stream", stream=True, stream_result=acc, ttft_ms=3.0, **common),
        CallRecord(call_id="enc-parsed", response=snapshot(parsed), hidden={"custom_llm_provider": "hosted_vllm"},
                   **common),
        CallRecord(call_id="enc-error", status="error", error={"type": "APIError", "status_code": 500,
                   "message": "upstream said: bad key sk-upstream-secret-123456"}, **common),
    ]


def test_build_process_gives_the_rows_the_writer_thread_gives(vllm_upstream: Any) -> None:
    records = _vllm_records(vllm_upstream.api_base)
    inline = InlineEncoder(build_trace).encode(records)
    process = BuildProcess("litellm_rllm.builder:build_trace", prepare=prepare)
    try:
        remote = process.encode(records)
        stats = process.stats()
        assert (stats["build_process_items"], stats["build_fallback_items"]) == (4, 0)
    finally:
        process.close()
    assert [o.failure for o in inline] == [None] * 4, [o.detail for o in inline]
    for here, there in zip(inline, remote):
        assert there.row == here.row  # doc, packed arrays and top-logprob detail, byte for byte
    raw, stream, parsed, error = (o.row for o in remote)
    assert raw.arrays and raw.detail and stream.arrays and stream.detail and parsed.detail
    assert '"cost_usd":0.25' in raw.doc and '"session_id":"enc-1"' in raw.doc
    assert "sk-upstream-secret" not in error.doc and "[redacted]" in error.doc


def test_build_process_needs_no_litellm(vllm_upstream: Any) -> None:
    records = _vllm_records(vllm_upstream.api_base)
    process = BuildProcess("tests.support.encoder_helpers:build_trace_probe", prepare=prepare)
    try:
        outcomes = process.encode(records)
    finally:
        process.close()
    assert all(o.row is not None for o in outcomes), [o.detail for o in outcomes]
    assert all('"litellm_imported":false' in o.row.doc for o in outcomes)


def test_out_of_band_buffers_arrive_whole(encoder: BuildProcess) -> None:
    parts = [os.urandom(1 << 16) for _ in range(40)] + [b"", b"tail"]  # 2.6 MB, more than a pipe holds
    [out] = encoder.encode([item("big", parts=[pickle.PickleBuffer(p) for p in parts])])
    assert out.row is not None and '"built_in":"child"' in out.row.doc
    assert f'"payload_bytes":{sum(map(len, parts))}' in out.row.doc


def test_build_errors_and_skips_come_back_per_item_in_order(encoder: BuildProcess) -> None:
    outcomes = encoder.encode([item("a"), item("b", **{"raise": True}), item("c", skip=True), item("d")])
    assert [(o.item_id, o.failure) for o in outcomes] == [("a", None), ("b", "build"), ("c", "skip"), ("d", None)]
    assert "RuntimeError: build refused b" in outcomes[1].detail and "Traceback" in outcomes[1].detail
    assert encoder.stats()["build_fallback_items"] == 0


def test_item_that_cannot_be_pickled_is_built_in_the_writer_thread(encoder: BuildProcess) -> None:
    outcomes = encoder.encode([item("a"), item("lock", lock=threading.Lock()), item("c")])
    assert [o.failure for o in outcomes] == [None, None, None]
    assert ['"built_in":"child"' in o.row.doc for o in outcomes] == [True, False, True]
    assert encoder.stats()["build_fallback_items"] == 1


def test_killed_process_is_replaced_and_nothing_is_lost(encoder: BuildProcess) -> None:
    assert encoder.encode([item("first")])[0].row is not None
    first_pid = encoder.pid
    os.kill(first_pid, signal.SIGKILL)
    time.sleep(0.1)
    outcomes = encoder.encode([item(f"during-{k}") for k in range(5)])
    assert all(o.row is not None for o in outcomes)  # built in this thread meanwhile
    assert all('"built_in":"parent"' in o.row.doc for o in outcomes)
    stats = encoder.stats()
    assert (stats["build_process_lost"], stats["build_fallback_items"]) == (1, 5)
    assert stats["build_process_items"] == 1
    time.sleep(0.1)  # past the restart backoff
    [after] = encoder.encode([item("after")])
    assert '"built_in":"child"' in after.row.doc
    assert encoder.pid not in (None, first_pid)
    assert encoder.stats()["build_process_starts"] == 2


def test_process_that_stops_answering_is_killed_and_its_batch_built_here() -> None:
    encoder = BuildProcess("tests.support.encoder_helpers:build", answer_timeout=0.5, restart_delays=FAST_RESTART)
    try:
        assert encoder.encode([item("warm")])[0].row is not None
        hung_pid = encoder.pid
        started = time.monotonic()
        outcomes = encoder.encode([item("ok-1"), item("hang", hang_in_child=True), item("ok-2")])
        assert time.monotonic() - started < 10
        assert [o.item_id for o in outcomes] == ["ok-1", "hang", "ok-2"]
        assert all(o.row is not None for o in outcomes)
        assert ['"built_in":"child"' in o.row.doc for o in outcomes] == [True, False, False]
        with pytest.raises(ProcessLookupError):  # the hung child was killed, not left behind
            os.kill(hung_pid, 0)
        assert encoder.stats()["build_process_lost"] == 1
    finally:
        encoder.close()


def test_python_that_cannot_start_means_building_here(tmp_path: Any) -> None:
    encoder = BuildProcess("tests.support.encoder_helpers:build", python=str(tmp_path / "no-such-python"))
    try:
        [out] = encoder.encode([item("x")])
        assert out.row is not None and '"built_in":"parent"' in out.row.doc
        assert encoder.stats()["build_process_running"] == 0
    finally:
        encoder.close()


def test_close_ends_the_process(encoder: BuildProcess) -> None:
    encoder.encode([item("x")])
    pid = encoder.pid
    encoder.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    [out] = encoder.encode([item("after-close")])  # a closed encoder still builds, here
    assert '"built_in":"parent"' in out.row.doc


def test_small_items_are_built_in_the_writer_thread_and_large_ones_in_the_process() -> None:
    encoder = BuildProcess("tests.support.encoder_helpers:build", weight=lambda it: len(it.get("parts", ())),
                             min_weight=2, restart_delays=FAST_RESTART)
    try:
        outcomes = encoder.encode([item("small"), item("large", parts=[b"a", b"b"]), item("small-2", parts=[b"a"])])
        assert [o.item_id for o in outcomes] == ["small", "large", "small-2"]  # order kept across both
        assert ['"built_in":"child"' in o.row.doc for o in outcomes] == [False, True, False]
        stats = encoder.stats()
        assert (stats["build_process_items"], stats["build_thread_items"], stats["build_fallback_items"]) == (1, 2, 0)
        [only_small] = encoder.encode([item("s")])
        assert '"built_in":"parent"' in only_small.row.doc
    finally:
        encoder.close()


def test_build_process_starts_only_when_an_item_needs_it() -> None:
    encoder = BuildProcess("tests.support.encoder_helpers:build", weight=lambda it: 0, min_weight=1)
    try:
        encoder.encode([item("a"), item("b")])
        assert encoder.pid is None and encoder.stats()["build_process_starts"] == 0
    finally:
        encoder.close()


def test_weight_is_the_body_size_or_the_stream_entries_as_json_bytes(vllm_upstream: Any) -> None:
    from litellm_rllm.builder import weight

    raw, stream, parsed, error = _vllm_records(vllm_upstream.api_base)
    assert weight(raw) == sum(len(p) for p in raw.raw_body)
    assert weight(prepare(raw)) == weight(raw)  # the same once the reads are buffers
    built = build_trace(stream).choices
    entries = sum(len(c.logprobs) + sum(c.top_columns().counts) for c in built)
    assert len(built) == 2 and all(set(c.top_columns().counts) == {3} for c in built)  # n=2, top 3
    assert weight(stream) == 64 * entries
    assert weight(parsed) == weight(error) == 0


def test_proxy_builds_long_replies_in_the_build_process_and_short_ones_in_its_thread(proxy: Any, vllm_upstream: Any) -> None:
    from litellm_rllm import slug as slugs

    before = proxy.client.get("/rllm/stats").json()["writer"]
    sid = f"enc-proxy-{os.getpid()}-{time.monotonic_ns()}"
    oai = proxy.openai(slugs.encode({"session_id": sid}))
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    oai.chat.completions.create(model="policy", **ask)  # a few kB: the writer thread
    oai.chat.completions.create(model="policy-long", **ask)  # ~140 KB of body: the build process
    list(oai.chat.completions.create(model="policy-long", **ask, stream=True))
    proxy.flush()
    after = proxy.client.get("/rllm/stats").json()["writer"]
    gained = {k: after[k] - before.get(k, 0) for k in ("build_process_items", "build_thread_items",
                                                       "build_fallback_items")}
    assert gained == {"build_process_items": 2, "build_thread_items": 1, "build_fallback_items": 0}, after
    assert after["build_process_running"] == 1
    traces = proxy.traces(sid)
    assert [len(t.choices[0].token_ids) for t in traces][1:] == [1501, 1501]  # 1,500 tokens + EOS
    assert all(len(t.choices[0].logprobs) == len(t.choices[0].token_ids) for t in traces)
