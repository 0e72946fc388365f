"""Training data end to end: a tool-using agent talks to `litellm --config` (the three callbacks)
in front of a vLLM-format upstream whose chat template renders the history; what the store
gives a trainer is compared token by token with what the upstream itself logged (its
`token_log`: the prompt ids it rendered and the ids it sampled, per request).

`template-exact` renders the model's earlier output as the ids it sampled, so each prompt
extends the previous prompt + completion; `template-retokenize` re-renders it differently
(drift). See `litellm_rllm.demo.common.assistant_ids`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator, Optional

import openai
import pytest

from litellm_rllm import client as rllm
from litellm_rllm import store
from litellm_rllm.demo import server
from litellm_rllm.demo.common import sampled_logprob
from litellm_rllm.demo.vllm import FakeVLLM
from litellm_rllm.training import to_record
from tests.support import harness

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "today's weather",
                                           "parameters": {"type": "object", "properties": {}}}}]
SYSTEM = {"role": "system", "content": "You are a travel agent. Use tools when asked about the weather."}
TOOL_RESULT = "sunny, 21 degrees, light wind"
STALL_S = 3.0


@pytest.fixture(scope="module")
def template_upstream() -> Iterator[server.RunningServer]:
    with server.start(FakeVLLM()) as running:
        yield running


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory, upstream_urls: dict[str, str],
         template_upstream: server.RunningServer) -> Iterator[harness.ProxyProcess]:
    folder = tmp_path_factory.mktemp("training-e2e")
    store_url = f"sqlite:///{folder / 'traces.db'}"

    def vllm(name: str, served: str) -> dict[str, Any]:
        return {"model_name": name, "litellm_params": {"model": f"hosted_vllm/{served}", "api_base":
                                                        template_upstream.api_base, "api_key": "fake-vllm-key"}}

    config = harness.write_config(folder, upstreams=upstream_urls, store_url=store_url, extra_models=[
        vllm("agent-exact", "template-exact"),
        vllm("agent-retokenize", "template-retokenize"),
        vllm("agent-stall", f"template-exact-stall-{STALL_S}"),
    ])
    with harness.ProxyProcess(config) as running:
        running.store_url = store_url  # type: ignore[attr-defined]
        yield running


@pytest.fixture
def upstream(template_upstream: server.RunningServer) -> server.RunningServer:
    template_upstream.clear()  # the token log and the stall counter: this test's only
    return template_upstream


def _client(proc: harness.ProxyProcess, **kwargs: Any) -> openai.OpenAI:
    options = {"max_retries": 0, "timeout": 60.0, **kwargs}
    return rllm.wrap(openai.OpenAI(base_url=proc.base_url + "/v1", api_key=harness.MASTER_KEY, **options))


def _ask(oai: openai.OpenAI, model: str, messages: list[dict[str, Any]], stream: bool, **extra: Any) -> list[dict[str, Any]]:
    """One call; each choice's reply as an assistant message to put into the history."""
    if not stream:
        response = oai.chat.completions.create(model=model, messages=messages, tools=TOOLS, **extra)
        out = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            message: dict[str, Any] = {"role": "assistant", "content": choice.message.content}
            if choice.message.tool_calls:
                message["tool_calls"] = [{"id": c.id, "type": "function",
                                          "function": {"name": c.function.name, "arguments": c.function.arguments}}
                                         for c in choice.message.tool_calls]
            out.append(message)
        return out
    content: dict[int, str] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    for chunk in oai.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True, **extra):
        for choice in chunk.choices:
            content[choice.index] = content.get(choice.index, "") + (choice.delta.content or "")
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(choice.index, {}).setdefault(
                    delta.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["function"]["name"] += delta.function.name or ""
                    call["function"]["arguments"] += delta.function.arguments or ""
    out = []
    for index in sorted(content):
        message = {"role": "assistant", "content": content[index] or None}
        if index in calls:
            message["tool_calls"] = [calls[index][k] for k in sorted(calls[index])]
        out.append(message)
    return out


def _next_user(reply: dict[str, Any], turn: int) -> list[dict[str, Any]]:
    """What the agent adds after a reply: a tool result (then a question that needs no tool),
    or a question that needs the tool again."""
    if reply.get("tool_calls"):
        return [{"role": "tool", "tool_call_id": reply["tool_calls"][0]["id"], "content": TOOL_RESULT},
                {"role": "user", "content": f"Thanks. What should I pack for day {turn}?"}]
    return [{"role": "user", "content": f"And the weather on day {turn + 1}?"}]


def _agent(proc: harness.ProxyProcess, model: str, turns: int, stream: bool, oai: Optional[openai.OpenAI] = None,
           **metadata: Any) -> str:
    """A tool-using agent session of `turns` calls; returns its session id."""
    oai = oai or _client(proc)
    messages: list[dict[str, Any]] = [SYSTEM, {"role": "user", "content": "What is the weather in Paris?"}]
    with rllm.session(session_id=f"agent-{os.urandom(4).hex()}", **metadata) as sess:
        for turn in range(turns):
            [reply] = _ask(oai, model, messages, stream)
            messages += [reply, *_next_user(reply, turn)]
    return sess.session_id


def _flush(proc: harness.ProxyProcess) -> None:
    assert rllm.flush(proc.base_url + "/v1", harness.MASTER_KEY)["flushed"] is True


def _open(proc: harness.ProxyProcess) -> Any:
    return store.open(proc.store_url, create=False)  # type: ignore[attr-defined]


def _expected_mask(log: list[dict[str, Any]]) -> tuple[list[int], list[int], list[list[int]]]:
    """From the upstream's own log of one chain of calls: the last prompt + completion, the mask
    of every sampled token along the chain, and each call's [start, end) span."""
    last = log[-1]
    input_ids = last["prompt_token_ids"] + last["completion_token_ids"][0]
    mask = [0] * len(input_ids)
    spans = []
    for entry in log:
        start = len(entry["prompt_token_ids"])
        sampled = entry["completion_token_ids"][0]
        assert input_ids[start: start + len(sampled)] == sampled  # the upstream's history is exact
        mask[start: start + len(sampled)] = [1] * len(sampled)
        spans.append([start, start + len(sampled)])
    return input_ids, mask, spans


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_ten_turn_tool_session_with_an_exact_template_is_one_merged_row_equal_to_the_upstreams_tokens(
        proc, upstream, stream, tmp_path):
    sid = _agent(proc, "agent-exact", 10, stream, task="weather")
    _flush(proc)
    log = upstream.app.token_log
    assert len(log) == 10 and all(entry["stream"] is stream for entry in log)
    assert sum(1 for e in log if e["completion_token_ids"][0][0] == 151657) == 5  # 5 tool calls, 5 texts
    with _open(proc) as st:
        traces = st.traces(session=sid)
        # every trace holds exactly the ids the upstream rendered and sampled
        assert [t.prompt_token_ids for t in traces] == [e["prompt_token_ids"] for e in log]
        assert [t.choices[0].token_ids for t in traces] == [e["completion_token_ids"][0] for e in log]
        relations = [t.lineage["relation"] for t in st.traces_with_lineage(session=sid)]
        assert relations == ["new"] + ["extends"] * 9
        rows = st.trajectories(session=sid, view="merged")
        [row] = list(rows)
        assert rows.skipped_orphans == 0
    input_ids, mask, spans = _expected_mask(log)
    assert row.input_ids == input_ids  # the upstream's own last prompt + completion, token by token
    assert row.loss_mask == mask  # 1 exactly on the tokens the model sampled, 0 on template / tool / user
    assert row.spans == spans and row.trace_ids == [t.trace_id for t in traces]
    assert row.logprobs == [sampled_logprob(0, k - start) if m else 0.0
                            for k, m, start in zip(range(len(mask)), mask, _span_starts(spans, len(mask)))]
    assert row.metadata["task"] == "weather" and row.status == "ok" and row.root_relation == "new"


def _span_starts(spans: list[list[int]], n: int) -> list[int]:
    """Per position, the start of the span it lies in (0 outside spans)."""
    out = [0] * n
    for start, end in spans:
        out[start:end] = [start] * (end - start)
    return out


def test_the_exact_session_exported_to_parquet_reads_back_equal_with_pyarrow_and_datasets(proc, upstream, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    sid = _agent(proc, "agent-exact", 10, False)
    _flush(proc)
    with _open(proc) as st:
        for view in ("merged", "per-call"):
            out = tmp_path / f"{view}.parquet"
            result = st.export(out, session=sid, view=view, format="parquet")
            api_rows = [to_record(r) for r in st.trajectories(session=sid, view=view)]
            assert len(api_rows) == (1 if view == "merged" else 10) and result.rows == len(api_rows)
            assert pq.read_table(out).to_pylist() == api_rows
            loaded = datasets.load_dataset("parquet", data_files=str(out), split="train",
                                           cache_dir=str(tmp_path / "hf-cache"))
            assert loaded.to_list() == api_rows


def test_a_retokenizing_template_gives_drift_at_the_upstreams_offset_and_no_wrong_merge(proc, upstream):
    sid = _agent(proc, "agent-retokenize", 4, False)
    _flush(proc)
    log = upstream.app.token_log
    offsets = [_first_difference(a["prompt_token_ids"] + a["completion_token_ids"][0], b["prompt_token_ids"])
               for a, b in zip(log, log[1:])]
    assert [o - len(a["prompt_token_ids"]) for o, a in zip(offsets, log)] == [0, 2, 0]  # inside the sampled ids
    with _open(proc) as st:
        traces = list(st.traces_with_lineage(session=sid))
        lineage = [t.lineage for t in traces]
        assert [entry["relation"] for entry in lineage] == ["new", "drift", "drift", "drift"]
        assert [entry["parent"] for entry in lineage[1:]] == [t.trace_id for t in traces[:-1]]
        assert [entry["offset"] for entry in lineage[1:]] == offsets
        for entry, before, after in zip(lineage[1:], log, log[1:]):
            sampled = before["prompt_token_ids"] + before["completion_token_ids"][0]
            start = entry["window_start"]
            assert entry["expected"] == sampled[start: entry["offset"] + 4]
            assert entry["actual"] == after["prompt_token_ids"][start: entry["offset"] + 4]
        rows = list(st.trajectories(session=sid, view="merged"))
        report = st.audit(session=sid)
    # one row per call, each its own prompt + completion: nothing merged across a drift
    assert [row.trace_ids for row in rows] == [[t.trace_id] for t in traces]
    assert [row.input_ids for row in rows] == [e["prompt_token_ids"] + e["completion_token_ids"][0] for e in log]
    assert [row.root_relation for row in rows] == ["new", "drift", "drift", "drift"]
    assert report.total.relations["drift"] == 3
    assert [d.offset for d in report.sessions[0].drifts] == offsets


def test_a_client_timeout_retry_leaves_one_orphan_that_the_merged_view_leaves_out(proc, upstream):
    # the first request waits STALL_S upstream; the client gives up after 1 s and retries it
    oai = _client(proc, timeout=1.0, max_retries=1)
    sid = _agent(proc, "agent-stall", 3, False, oai=oai)
    log_has_all = harness.wait_for(lambda: len(upstream.app.token_log) == 4, timeout=STALL_S + 10)
    assert log_has_all, upstream.app.token_log
    time.sleep(0.5)  # the timed-out attempt's answer reaches the proxy, which records the call
    _flush(proc)
    with _open(proc) as st:
        traces = list(st.traces_with_lineage(session=sid))
        first_prompt = traces[0].request["messages"]
        attempts = [t for t in traces if t.request["messages"] == first_prompt]
        assert len(attempts) == 2 and len(traces) == 4
        orphans = [t for t in traces if t.lineage["orphan"]]
        assert len(orphans) == 1 and orphans[0] in attempts
        kept = next(t for t in attempts if t is not orphans[0])
        # the orphan is the attempt the client gave up on: it started first (and was stored last;
        # session order is call order, so it reads back first)
        assert orphans[0].created_at < kept.created_at and orphans[0] is traces[0]
        assert kept.lineage["retry_of"] == orphans[0].trace_id and orphans[0].choices[0].token_ids
        rows = st.trajectories(session=sid, view="merged")
        [row] = list(rows)
        assert rows.skipped_orphans == 1
        assert orphans[0].trace_id not in row.trace_ids and row.trace_ids[0] == kept.trace_id
        assert len(row.trace_ids) == 3


def test_n2_gives_two_leaves_sharing_the_prompt_prefix(proc, upstream):
    oai = _client(proc)
    messages: list[dict[str, Any]] = [SYSTEM, {"role": "user", "content": "Plan a day in Paris."}]
    with rllm.session(session_id=f"tree-{os.urandom(4).hex()}") as sess:
        branches = _ask(oai, "agent-exact", messages, False, n=2)
        assert len(branches) == 2
        for k, reply in enumerate(branches):  # tree search: continue each sample
            _ask(oai, "agent-exact", [*messages, reply, {"role": "user", "content": f"Go on with plan {k}."}], False)
    _flush(proc)
    log = upstream.app.token_log
    root, followups = log[0], log[1:]
    with _open(proc) as st:
        rows = sorted(st.trajectories(session=sess.session_id, view="merged"), key=lambda r: r.choices)
    assert [row.choices for row in rows] == [[0, 0], [1, 0]]
    shared = len(root["prompt_token_ids"])
    for row, choice, entry in zip(rows, (0, 1), followups):
        input_ids, mask, spans = _expected_mask([_only_choice(root, choice), entry])
        assert row.input_ids == input_ids and row.loss_mask == mask and row.spans == spans
        assert row.trace_ids[0] == rows[0].trace_ids[0]
    assert rows[0].input_ids[:shared] == rows[1].input_ids[:shared] == root["prompt_token_ids"]
    assert rows[0].input_ids[shared] != rows[1].input_ids[shared]


def _only_choice(entry: dict[str, Any], choice: int) -> dict[str, Any]:
    return {**entry, "completion_token_ids": [entry["completion_token_ids"][choice]]}
