"""The storage contract (`litellm_rllm.store.base.TraceStore`) as one suite, run against every
backend: a backend's test module subclasses `StoreContract` and provides the fixtures
`store_url` (a fresh, empty store), `store` (it, opened) and `raw_blob` (reads or overwrites a
stored row's `arrays` column behind the store's back)."""

from __future__ import annotations

import json
import struct
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

import pytest

import litellm_rllm.store as store_mod
from litellm_rllm.store import CorruptTraceError, TraceEncodeError, TraceStore
from litellm_rllm.store.codec import to_utc_micros
from litellm_rllm.trace import TopLogprob, Trace, TraceChoice, TraceError
from tests.support.trainer_contract import TrainerStoreContract

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)

# raw_blob(store, trace_id, new_value=None) -> the stored (doc, arrays, detail) before any change
RawBlob = Callable[..., tuple[Any, Optional[bytes], Optional[bytes]]]


def f32(value: float) -> float:
    """The float32 value a float is stored as."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def make(trace_id: str, session: str | None = "s", *, uids: list[str] | None = None, **kw: Any) -> Trace:
    return Trace(
        trace_id=trace_id,
        session_id=session,
        session_uids=uids if uids is not None else ([session] if session else []),
        created_at=kw.pop("created_at", T0),
        **kw,
    )


def full_trace() -> Trace:
    """Every field set, including the awkward ones: nulls vs empty lists, extras, top_logprobs."""
    return Trace(
        trace_id="chatcmpl-full",
        session_id="inner",
        session_uids=["outer", "inner"],
        metadata={"task": "t1", "nested": {"k": [1, 2.5, None, "é"]}},
        route="/v1/chat/completions",
        model="policy",
        provider="hosted_vllm",
        deployment_model="hosted_vllm/Qwen/Qwen2.5-0.5B",
        api_base="http://vllm:8000/v1",
        request={"messages": [{"role": "user", "content": "hi \u2603"}], "temperature": 0.7},
        injected={"logprobs": True, "return_token_ids": True, "rule": 0},
        prompt_token_ids=[151644, 872, 0, -1, 2**31 - 1],
        choices=[
            TraceChoice(
                index=0,
                message={"role": "assistant", "content": "Hello"},
                finish_reason="stop",
                stop_reason=151645,
                token_ids=[9707, 0, 151645],
                prompt_token_ids=[],
                logprobs=[-0.1, 0.0, -12.345678901234],
                tokens=["Hello", "", "<|im_end|>"],
                top_logprobs=[
                    [
                        TopLogprob(token="Hello", logprob=-0.1, token_id=9707, bytes=[72, 101]),
                        TopLogprob(token="Hi", logprob=-2.5),
                    ],
                    [],
                    [TopLogprob(token=None, logprob=-9999.0, token_id=151645)],
                ],
                custom_choice_extra={"a": 1},
            ),
            TraceChoice(index=1, text="plain", finish_reason="length"),
        ],
        usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        cost_usd=1.5e-06,
        stream=True,
        latency_ms=123.4,
        ttft_ms=12.5,
        status="error",
        error=TraceError(type="APIError", message="boom", status_code=502),
        caller={"user": "u"},
        created_at=datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
        custom_top_level_extra="kept",
    )



# ------------------------------------------------------------------------------ growing sessions

HEADER = [151644, 77091, 198]  # "<|im_start|>assistant\n"


def agent_session(sid: str, turns: int, step: int = 40, *, ids: bool = True, start: int = 0,
                  created: datetime = T0, retokenize: frozenset[int] = frozenset(),
                  tag: str = "") -> list[Trace]:
    """An agent session as a vLLM chat template renders it: each prompt is the previous prompt +
    the ids the model sampled (re-tokenized at the turns in ``retokenize``) + a user turn + the
    assistant header; the messages grow by the reply and the user turn. Every field a capture
    fills is set (logprobs, tokens, top logprobs, usage), so a round trip checks them all."""
    prompt = [151644, 8948, 198, *range(1000, 1000 + 3 * step), 151645, 198, *HEADER]
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are an agent. " * 20},
                                      {"role": "user", "content": f"task {sid}"}]
    out = []
    for turn in range(start, start + turns):
        sampled = [20000 + 100 * turn + j for j in range(step)] + [151645]
        lps = [-(j % 64 + 1) / 64 for j in range(len(sampled))]
        out.append(Trace(
            trace_id=f"{sid}-{turn}{tag}", session_id=sid, session_uids=["run", sid],
            metadata={"task": sid}, route="/v1/chat/completions", model="policy", provider="hosted_vllm",
            request={"messages": [dict(m) for m in messages], "tools": [{"type": "function"}], "temperature": 1.0},
            injected={"logprobs": True, "return_token_ids": True},
            prompt_token_ids=list(prompt) if ids else None,
            choices=[TraceChoice(
                index=0, message={"role": "assistant", "content": f"reply {turn}"}, finish_reason="stop",
                token_ids=sampled if ids else None, logprobs=lps if ids else None,
                tokens=[f"w{j}" for j in range(len(sampled))],
                top_logprobs=[[TopLogprob(token=f"w{j}", logprob=lp)] for j, lp in enumerate(lps)])],
            usage={"prompt_tokens": len(prompt), "completion_tokens": len(sampled)},
            created_at=created + timedelta(seconds=turn)))
        rendered = sampled[:-1] if turn not in retokenize else [sampled[0], 7, *sampled[3:-1]]
        prompt = prompt + rendered + [151645, 198, 151644, 872, 198, *range(30000 + turn, 30000 + turn + step),
                                      151645, 198, *HEADER]
        messages += [{"role": "assistant", "content": f"reply {turn}"},
                     {"role": "user", "content": f"result of turn {turn}: " + "data " * step}]
    return out


def as_read(traces: list[Trace]) -> list[str]:
    """What a store gives back for traces written in order into fresh sessions: JSON per trace,
    seq in write order per session, `order` its start (these calls start one after another),
    logprobs as float32."""
    seqs: dict[str, int] = {}
    out = []
    for trace in traces:
        copy = trace.model_copy(deep=True)
        copy.order = to_utc_micros(trace.created_at)
        copy.seq = seqs.setdefault(trace.session_key(), 0)
        seqs[trace.session_key()] += 1
        for choice in copy.choices:
            choice.logprobs = None if choice.logprobs is None else [f32(v) for v in choice.logprobs]
        out.append(copy.model_dump_json())
    return out


def stored_bytes(store: TraceStore, raw_blob: RawBlob, trace_ids: list[str]) -> int:
    total = 0
    for trace_id in trace_ids:
        doc, arrays, detail = raw_blob(store, trace_id)
        total += len(doc.encode() if isinstance(doc, str) else doc) + len(arrays or b"") + len(detail or b"")
    return total


def is_compacted(store: TraceStore, raw_blob: RawBlob, trace_id: str) -> bool:
    doc = raw_blob(store, trace_id)[0]
    return '"_compact"' in (doc if isinstance(doc, str) else bytes(doc).decode())


class StoreContract(TrainerStoreContract):
    """Every backend passes these, unchanged (the trainer's tables: `trainer_contract.py`)."""

    # ---------------------------------------------------------------------------- round trip

    def test_full_trace_round_trips_value_by_value_through_a_fresh_connection(self, store_url: str) -> None:
        original = full_trace()
        expected = original.model_copy(deep=True)
        expected.seq = 0
        c0 = expected.choices[0]
        c0.logprobs = [f32(v) for v in c0.logprobs or []]
        for pos in c0.top_logprobs or []:
            for alt in pos:
                alt.logprob = f32(alt.logprob)
        with store_mod.open(store_url) as writer:
            writer.write([original])
        with store_mod.open(store_url) as reader:
            got = reader.get("chatcmpl-full")
            assert got is not None and isinstance(got.order, int)
            expected.order = got.order  # the row's place in the store's write order
            assert reader.traces(session="inner") == [expected]
            assert reader.traces(session="outer") == [expected]
        assert got == expected
        assert got is not None
        assert got.choices[0].prompt_token_ids == []  # [] stays []
        assert got.choices[1].token_ids is None  # None stays None
        assert got.choices[1].logprobs is None and got.choices[1].top_logprobs is None
        assert got.choices[0].top_logprobs is not None
        assert got.choices[0].top_logprobs[0][0].model_extra == {"bytes": [72, 101]}
        assert got.choices[0].top_logprobs[0][1].token_id is None
        assert got.created_at == original.created_at

    @pytest.mark.parametrize("ids", [[1, 2, 3], [None, None, None], [1, None, 3]])
    def test_top_logprobs_round_trip_whatever_token_ids_they_carry(
        self, store: TraceStore, ids: list[int | None]
    ) -> None:
        top = [[TopLogprob(token=f"t{j}", logprob=-0.25 * j, token_id=i)] for j, i in enumerate(ids)]
        top.append([])
        trace = make("top", choices=[TraceChoice(index=0, top_logprobs=top), TraceChoice(index=1)])
        store.write([trace])
        got = store.get("top")
        assert got is not None
        assert got.choices[0].top_logprobs == top  # -0.25 * j is exact in float32
        assert got.choices[0].tokens is None and got.choices[1].top_logprobs is None

    def test_trace_without_any_token_data_round_trips(self, store: TraceStore) -> None:
        bare = make("bare", None, choices=[TraceChoice(index=0, message={"content": "x"})])
        store.write([bare])
        got = store.get("bare")
        assert got is not None and got.prompt_token_ids is None and got.choices[0].token_ids is None
        assert got.session_key() == ""
        assert got.model_dump(exclude={"seq", "order"}) == bare.model_dump(exclude={"seq", "order"})

    def test_token_arrays_are_stored_packed_not_as_json(self, store: TraceStore, raw_blob: RawBlob) -> None:
        n = 1000
        trace = make("packed", prompt_token_ids=list(range(10)),
                     choices=[TraceChoice(index=0, token_ids=list(range(n)), logprobs=[-0.5] * n)])
        store.write([trace])
        doc, arrays, detail = raw_blob(store, "packed")
        # 1-byte format + u32 count + 4 i32 counts + 10 prompt ids + n ids + n f32 logprobs
        assert arrays is not None and len(arrays) == 5 + 4 * 4 + 4 * 10 + 8 * n
        text = doc if isinstance(doc, str) else str(doc)
        assert "token_ids" not in text and "logprobs" not in text and "999" not in text
        assert detail is None  # no tokens / top_logprobs: nothing to compress

    def test_corrupt_arrays_blob_is_reported_not_misread(self, store: TraceStore, raw_blob: RawBlob) -> None:
        store.write([make("c", choices=[TraceChoice(index=0, token_ids=[1, 2, 3])])])
        _, arrays, _ = raw_blob(store, "c")
        assert arrays is not None
        raw_blob(store, "c", arrays[:10])
        with pytest.raises(CorruptTraceError):
            store.get("c")

    def test_unencodable_trace_raises_and_writes_nothing(self, store: TraceStore) -> None:
        good = make("good")
        bad = make("bad", metadata={"obj": object()})
        with pytest.raises(TraceEncodeError) as info:
            store.write([good, bad])
        assert set(info.value.errors) == {"bad"}
        assert store.count() == 0
        assert good.seq is None

    # ---------------------------------------------------------------------------- exactly once, seq

    def test_duplicate_trace_id_is_not_a_second_row_and_consumes_no_seq(self, store: TraceStore) -> None:
        first = store.write([make("a"), make("b")])
        again = store.write([make("a", metadata={"changed": True}), make("c")])
        within = store.write([make("d"), make("d")])
        assert [t.seq for t in first] == [0, 1]
        assert [(t.trace_id, t.seq, t.metadata) for t in again] == [("a", 0, {}), ("c", 2, {})]
        assert again.duplicates == ["a"]
        assert [t.seq for t in within] == [3, 3] and within.duplicates == ["d"]
        assert store.count() == 4
        assert [t.seq for t in store.traces(session="s")] == [0, 1, 2, 3]

    def test_same_id_under_another_session_key_is_a_duplicate_and_leaves_no_gap(self, store: TraceStore) -> None:
        store.write([make("same", "s1")])
        result = store.write([make("same", "s2"), make("other", "s2")])
        assert result.duplicates == ["same"] and result[0].session_id == "s1"
        assert [t.seq for t in store.traces(session="s2")] == [0]

    def test_seq_is_per_session_in_write_order_across_batches(self, store: TraceStore) -> None:
        keys = ["x", "y", "x", "", "z-only-uid", "x", "y", ""]
        batch = []
        for i, key in enumerate(keys):
            if key == "z-only-uid":
                batch.append(make(f"t{i}", None, uids=["outer", "z-only-uid"]))
            else:
                batch.append(make(f"t{i}", key or None))
        store.write(batch[:3])
        store.write(batch[3:])
        seqs = {t.trace_id: (t.session_key(), t.seq) for t in store.traces()}
        assert seqs == {
            "t0": ("x", 0), "t1": ("y", 0), "t2": ("x", 1), "t3": ("", 0),
            "t4": ("z-only-uid", 0), "t5": ("x", 2), "t6": ("y", 1), "t7": ("", 1),
        }
        assert [t.trace_id for t in store.traces()] == [f"t{i}" for i in range(8)]

    # ---------------------------------------------------------------------------- read-back

    def test_lookup_by_outer_uid_returns_the_nested_sessions_traces(self, store: TraceStore) -> None:
        calls = [("o1", None, ["outer"]), ("i1", "inner-a", ["outer", "inner-a"]), ("other", "elsewhere", None),
                 ("i2", None, ["outer", "inner-b"]), ("i3", "inner-a", ["outer", "inner-a"])]
        store.write([make(tid, sid, uids=uids, created_at=T0 + timedelta(seconds=k))
                     for k, (tid, sid, uids) in enumerate(calls)])
        assert [t.trace_id for t in store.traces(session="outer")] == ["o1", "i1", "i2", "i3"]
        assert [t.trace_id for t in store.traces(session="inner-a")] == ["i1", "i3"]
        assert [t.trace_id for t in store.traces(session="inner-b")] == ["i2"]
        assert [t.seq for t in store.traces(session="inner-a")] == [0, 1]
        assert store.traces(session="nope") == []

    def test_nested_lookup_comes_back_in_call_order_with_an_order_key_that_says_so(self, store: TraceStore) -> None:
        """`seq` counts per innermost session (so a merged view reads [0, 0, 1]); `order` is the
        session-order key (the call's start, causal order first): a lookup that merges several
        session keys is sorted by it, whatever order the commits came in."""
        at = lambda ms: T0 + timedelta(milliseconds=ms)  # noqa: E731
        store.write([make("noise-1", "elsewhere", created_at=at(5))])
        store.write([make("c", None, uids=["outer", "inner"], created_at=at(30))])  # committed first
        store.write([make("a", None, uids=["outer"], created_at=at(10)), make("noise-2", "elsewhere", created_at=at(0))])
        store.write([make("b", None, uids=["outer", "inner"], created_at=at(20))])
        merged = store.traces(session="outer")
        assert [t.trace_id for t in merged] == ["a", "b", "c"]
        assert [t.seq for t in merged] == [0, 0, 1]
        orders = [t.order for t in merged]
        assert orders == [to_utc_micros(at(ms)) for ms in (10, 20, 30)]
        everything = {t.trace_id: t.order for t in store.traces()}  # write order, each with its key
        assert list(everything) == ["noise-1", "c", "a", "noise-2", "b"] and everything["b"] == merged[1].order
        got = store.get("c")
        assert got is not None and got.order == merged[2].order
        store.write([make("no-session", None, uids=[], created_at=at(40))])
        [alone] = store.traces(session="")
        assert alone.order == to_utc_micros(at(40))  # every read path sets it

    def test_rllm_session_is_found_by_its_name_and_by_each_uid(self, store: TraceStore) -> None:
        """rLLM's SDK sends `session_name` and `session_uids` (outer to inner), never a `session_id`."""
        def rllm(trace_id: str, *uids: str, name: str = "sess_rllm") -> Trace:
            return make(trace_id, None, uids=list(uids), metadata={"session_name": name})

        store.write([rllm("r1", "ctx_outer"), rllm("x1", "ctx_other", name="sess_other")])
        store.write([rllm("r2", "ctx_outer", "ctx_inner"), rllm("r3", "ctx_outer", "ctx_inner")])
        store.write([rllm("r4", "ctx_outer")])
        by_name = store.traces(session="sess_rllm")
        assert [t.trace_id for t in by_name] == ["r1", "r2", "r3", "r4"]
        assert [t.order for t in by_name] == sorted(t.order for t in by_name)
        assert [t.trace_id for t in store.traces(session="ctx_outer")] == ["r1", "r2", "r3", "r4"]
        assert [(t.trace_id, t.seq) for t in store.traces(session="ctx_inner")] == [("r2", 0), ("r3", 1)]
        assert [t.trace_id for t in store.traces(session="sess_other")] == ["x1"]
        assert by_name[0].session_id is None and by_name[0].metadata["session_name"] == "sess_rllm"
        # a name alone is a session too: seq counts within it
        store.write([make("n1", None, uids=[], metadata={"session_name": "only-a-name"}),
                     make("n2", None, uids=[], metadata={"session_name": "only-a-name"})])
        assert [t.seq for t in store.traces(session="only-a-name")] == [0, 1]

    def test_sessions_are_namespaced_by_the_callers_team(self, store: TraceStore) -> None:
        """A team key naming another team's session (id, uid or name) writes its own session."""
        def call(trace_id: str, team: str | None, **kw: Any) -> Trace:
            return make(trace_id, kw.pop("sid", "shared"), caller={"team_id": team} if team else {"key_alias": "admin"},
                        **kw)

        store.write([call("a1", "team-a"), call("b1", "team-b"), call("n1", None), call("a2", "team-a")])
        store.write([call("b2", "team-b", sid=None, uids=["shared", "b-inner"])])
        assert [(t.trace_id, t.seq) for t in store.traces(session="shared", team="team-a")] == [("a1", 0), ("a2", 1)]
        assert [(t.trace_id, t.seq) for t in store.traces(session="shared", team="team-b")] == [("b1", 0), ("b2", 0)]
        assert [t.trace_id for t in store.traces(session="shared")] == ["n1"]  # no team: its own namespace
        assert store.traces(session="shared", team="team-c") == []
        assert store.traces(session="b-inner") == []
        summaries = {(s.team, s.session_id): s.traces for s in store.sessions()}
        assert summaries == {("team-a", "shared"): 2, ("team-b", "shared"): 1, (None, "shared"): 1,
                             ("team-b", "b-inner"): 1}

    def test_session_lookup_by_session_id_not_in_uids(self, store: TraceStore) -> None:
        store.write([make("a", "sid", uids=[]), make("b", None, uids=[])])
        assert [t.trace_id for t in store.traces(session="sid")] == ["a"]
        assert [t.trace_id for t in store.traces(session="")] == ["b"]

    def test_since_keeps_traces_created_at_or_after(self, store: TraceStore) -> None:
        times = [T0 + timedelta(minutes=m) for m in (0, 10, 5, 20)]  # not monotonic in write order
        store.write([make(f"t{i}", created_at=t) for i, t in enumerate(times)])
        cut = T0 + timedelta(minutes=5)
        assert [t.trace_id for t in store.traces(since=cut)] == ["t1", "t2", "t3"]
        assert [t.trace_id for t in store.traces(since="2025-03-01T12:05:00Z")] == ["t1", "t2", "t3"]
        naive = datetime(2025, 3, 1, 12, 10)  # naive = UTC
        assert [t.trace_id for t in store.traces(since=naive)] == ["t1", "t3"]
        paris = timezone(timedelta(hours=1))
        assert [t.trace_id for t in store.traces(since=datetime(2025, 3, 1, 13, 20, tzinfo=paris))] == ["t3"]
        assert [t.trace_id for t in store.traces(since=cut)] == ["t1", "t2", "t3"]  # write order
        assert [t.trace_id for t in store.traces(session="s", since=cut)] == ["t2", "t1", "t3"]  # call order
        assert [t.seq for t in store.traces(session="s", since=cut)] == [1, 2, 3]
        assert store.traces(since=T0 + timedelta(days=1)) == []
        with pytest.raises(ValueError, match="ISO 8601"):
            store.traces(since="yesterday")

    def test_limit_and_paging_keep_write_order(self, store: TraceStore) -> None:
        n = 800  # every query below spans more than one read page (256)
        for start in range(0, n, 100):
            store.write([make(f"t{i:04d}", f"s{i % 3}" if i % 3 else None) for i in range(start, start + 100)])
        assert [t.trace_id for t in store.traces()] == [f"t{i:04d}" for i in range(n)]
        assert [t.trace_id for t in store.traces(limit=300)] == [f"t{i:04d}" for i in range(300)]
        assert [t.seq for t in store.traces(session="s1")] == list(range(267))
        no_session = store.traces(session="")
        assert [t.seq for t in no_session] == list(range(267))
        assert [t.trace_id for t in no_session] == [f"t{i:04d}" for i in range(0, n, 3)]
        assert len(store.traces(session="s1", limit=5)) == 5
        assert store.traces(limit=0) == []

    def test_sessions_summarise_each_session_key(self, store: TraceStore) -> None:
        store.write([
            make("a", "s1", created_at=T0),
            make("b", "s2", created_at=T0 + timedelta(seconds=1)),
            make("c", "s1", created_at=T0 + timedelta(seconds=2), status="error"),
        ])
        summaries = {s.session_id: s for s in store.sessions()}
        assert [s.session_id for s in store.sessions()] == ["s1", "s2"]
        s1 = summaries["s1"]
        assert (s1.traces, s1.first_seq, s1.last_seq) == (2, 0, 1)
        assert (s1.first_at, s1.last_at) == (T0, T0 + timedelta(seconds=2))
        assert s1.statuses == {"ok": 1, "error": 1}
        assert store.count() == 3
        assert store.get("missing") is None

    # ---------------------------------------------------------------------------- growing sessions

    def test_a_growing_session_reads_back_identical_and_stores_each_token_about_once(
        self, store: TraceStore, raw_blob: RawBlob
    ) -> None:
        traces = agent_session("grow", 50, step=200)  # the final prompt: ~20,000 tokens
        for trace in traces[:40]:  # as the writer does at a moderate rate: one call a batch
            store.write([trace.model_copy(deep=True)])
        store.write([t.model_copy(deep=True) for t in traces[40:]])  # a batch: bases inside it
        expected = as_read(traces)
        assert [t.model_dump_json() for t in store.traces(session="grow")] == expected
        assert [t.model_dump_json() for t in store.traces(session="run")] == expected
        assert [store.get(t.trace_id).model_dump_json() for t in traces] == expected  # type: ignore[union-attr]
        late = store.traces(since=traces[45].created_at)  # the bases of these are not read with them
        assert [t.model_dump_json() for t in late] == expected[45:]
        ids = [t.trace_id for t in traces]
        assert [is_compacted(store, raw_blob, i) for i in ids] == [False] + [True] * 49
        from litellm_rllm.store.codec import encode

        last = encode(traces[-1])
        whole_last = len(last.doc.encode()) + len(last.arrays or b"") + len(last.detail or b"")
        assert stored_bytes(store, raw_blob, ids) <= 2 * whole_last

    def test_compaction_can_be_turned_off(self, store: TraceStore, raw_blob: RawBlob) -> None:
        store.compact_sessions = False
        traces = agent_session("off", 3)
        for trace in traces:
            store.write([trace])
        assert not any(is_compacted(store, raw_blob, t.trace_id) for t in traces)

    def test_a_retokenized_turn_keeps_the_shared_prefix_out_and_reads_back_exactly(
        self, store: TraceStore, raw_blob: RawBlob
    ) -> None:
        traces = agent_session("drift", 6, retokenize=frozenset({2}))
        for trace in traces:
            store.write([trace.model_copy(deep=True)])
        assert [t.model_dump_json() for t in store.traces(session="drift")] == as_read(traces)
        doc = raw_blob(store, "drift-3")[0]
        prompt2 = traces[2].prompt_token_ids or []
        # stored from the first re-tokenized id on: the prompt of turn 2 + 1 sampled id are shared
        assert f'"prompt_tokens":{len(prompt2) + 1}' in (doc if isinstance(doc, str) else doc.decode())

    def test_n2_branches_are_each_stored_against_the_choice_they_continue(
        self, store: TraceStore, raw_blob: RawBlob
    ) -> None:
        root = agent_session("tree", 1)[0]
        root.choices.append(TraceChoice(index=1, token_ids=[9000 + j for j in range(50)], logprobs=[-1.0] * 50))
        children = []
        for k, choice in enumerate(root.choices):
            prompt = (root.prompt_token_ids or []) + (choice.token_ids or []) + [872, 198] * 100
            children.append(make(f"tree-b{k}", "tree", prompt_token_ids=prompt,
                                 choices=[TraceChoice(index=0, token_ids=[5, 6])], created_at=T0 + timedelta(seconds=k + 1)))
        for trace in [root, *children]:
            store.write([trace.model_copy(deep=True)])
        assert [t.model_dump_json() for t in store.traces(session="tree")] == as_read([root, *children])
        for k in (0, 1):
            doc = raw_blob(store, f"tree-b{k}")[0]
            assert f'"choice":{k}' in (doc if isinstance(doc, str) else doc.decode())

    def test_messages_alone_are_compacted_for_calls_without_token_ids(
        self, store: TraceStore, raw_blob: RawBlob
    ) -> None:
        traces = agent_session("noids", 8, step=80, ids=False)
        for trace in traces:
            store.write([trace.model_copy(deep=True)])
        assert [t.model_dump_json() for t in store.traces(session="noids")] == as_read(traces)
        text, arrays, detail = raw_blob(store, "noids-7")
        doc = json.loads(text)
        # a reader that ignores compaction (an older plugin) fails on the row, never misreads it
        assert arrays == b"\x02\x00\x00\x00\x00"
        from litellm_rllm.store.codec import decode

        with pytest.raises(CorruptTraceError):
            decode(text, arrays, detail, 0)
        # the 14 messages of the base, then its reply as the client sent it back, then the new turn
        assert doc["_compact"] == {"base": "noids-6", "messages": 14, "reply": 0}
        assert doc["request"]["messages"] == [None, {"role": "user", "content": "result of turn 6: " + "data " * 80}]

    def test_a_call_whose_base_another_store_object_wrote_is_stored_whole(
        self, store_url: str, raw_blob: RawBlob
    ) -> None:
        traces = agent_session("two", 5)
        with store_mod.open(store_url) as a, store_mod.open(store_url) as b:
            for trace in traces[:3]:
                a.write([trace.model_copy(deep=True)])
            b.write([traces[3].model_copy(deep=True)])  # another proxy: it never saw turn 2
            b.write([traces[4].model_copy(deep=True)])
            assert not is_compacted(b, raw_blob, "two-3") and is_compacted(b, raw_blob, "two-4")
            assert [t.model_dump_json() for t in b.traces(session="two")] == as_read(traces)

    def test_a_base_deleted_before_its_child_is_written_leaves_the_child_whole(
        self, store_url: str, raw_blob: RawBlob
    ) -> None:
        traces = agent_session("gone", 3, created=T0)
        with store_mod.open(store_url) as a, store_mod.open(store_url) as b:
            a.write([traces[0].model_copy(deep=True)])
            a.write([traces[1].model_copy(deep=True)])
            assert b.delete(before=traces[1].created_at + timedelta(microseconds=1)) == 2  # a still has them cached
            a.write([traces[2].model_copy(deep=True)])
            assert not is_compacted(a, raw_blob, "gone-2")
            [got] = a.traces(session="gone")
            assert got.model_copy(update={"seq": 2}).model_dump_json() == as_read(traces)[2]

    def test_pruning_the_start_of_a_session_makes_the_first_survivor_whole(
        self, store: TraceStore, raw_blob: RawBlob
    ) -> None:
        traces = agent_session("prune", 10) + agent_session("other", 3)
        for trace in traces:
            store.write([trace.model_copy(deep=True)])
        before = store._rows_by_id(["prune-5"])[0]  # a reader that fetched this row before the prune
        assert store.delete(before=traces[5].created_at) == 5 + 3
        expected = as_read(traces)[5:10]
        assert [t.model_dump_json() for t in store.traces(session="prune")] == expected
        assert [is_compacted(store, raw_blob, f"prune-{k}") for k in range(5, 10)] == [False] + [True] * 4
        assert store._rebuilder().decode(before).model_dump_json() == expected[0]
        assert store.delete(session="prune") == 5 and store.count() == 0

    def test_deleting_a_nested_session_keeps_the_outer_calls_that_extend_it(
        self, store: TraceStore, raw_blob: RawBlob
    ) -> None:
        traces = agent_session("mix", 4)
        traces[1].session_uids = ["run", "mix", "sub"]  # one call inside a nested block
        for trace in traces:
            store.write([trace.model_copy(deep=True)])
        assert store.delete(session="sub") == 1
        expected = as_read(traces)
        kept = [e for k, e in enumerate(expected) if k != 1]
        assert [t.model_dump_json() for t in store.traces(session="mix")] == kept
        assert not is_compacted(store, raw_blob, "mix-2")

    def test_a_compacted_row_that_no_longer_decodes_is_reported_not_misread(
        self, store: TraceStore, raw_blob: RawBlob
    ) -> None:
        for trace in agent_session("bad", 2):
            store.write([trace])
        _, arrays, _ = raw_blob(store, "bad-1")
        assert arrays is not None and arrays[0] == 2  # format 2: the prompt is a suffix
        raw_blob(store, "bad-1", b"\x01" + arrays[1:])  # claims to be whole: it is not
        with pytest.raises(CorruptTraceError):
            store.get("bad-1")

    def test_a_duplicate_id_with_other_content_is_never_a_base(self, store: TraceStore) -> None:
        [first] = agent_session("dup", 1)
        store.write([first.model_copy(deep=True)])
        impostor = agent_session("dup", 1, step=41)[0]  # same id, other ids: a client bug
        [child] = agent_session("dup", 2, step=41)[1:]
        store.write([impostor, child.model_copy(deep=True)])
        assert store.get("dup-1").model_dump_json() == as_read([first, child])[1]  # type: ignore[union-attr]

    def test_chains_are_cut_at_the_depth_limit(self, store: TraceStore, raw_blob: RawBlob) -> None:
        store.compactor.max_depth = 3
        traces = agent_session("deep", 9)
        for trace in traces:
            store.write([trace.model_copy(deep=True)])
        depth = {}
        for trace in traces:
            meta = json.loads(raw_blob(store, trace.trace_id)[0]).get("_compact")
            depth[trace.trace_id] = 0 if meta is None else depth[meta["base"]] + 1
        assert max(depth.values()) == 3 and list(depth.values()).count(0) >= 2
        assert [store.get(t.trace_id).model_dump_json() for t in traces] == as_read(traces)  # type: ignore[union-attr]

    # ---------------------------------------------------------------------------- deletion, retention

    def test_prune_before_a_time_leaves_exactly_the_newer_traces(self, store: TraceStore) -> None:
        store.write([make(f"t{m}", f"s{m % 2}", created_at=T0 + timedelta(minutes=m)) for m in range(10)])
        assert store.delete(before=T0 + timedelta(minutes=4)) == 4
        assert [t.trace_id for t in store.traces()] == [f"t{m}" for m in range(4, 10)]
        assert [t.trace_id for t in store.traces(session="s0")] == ["t4", "t6", "t8"]
        assert store.count() == 6 and store.delete(before=T0) == 0

    def test_deleting_a_session_removes_it_and_its_nested_sessions_only(self, store: TraceStore) -> None:
        store.write([
            make("o1", None, uids=["outer"]),
            make("i1", "inner", uids=["outer", "inner"]),
            make("x1", "other"),
            make("n1", None, uids=[]),
        ])
        assert store.delete(session="outer") == 2
        assert [t.trace_id for t in store.traces()] == ["x1", "n1"]
        assert store.traces(session="inner") == [] and store.get("i1") is None
        assert store.delete(session="") == 1 and store.delete(session="nope") == 0
        store.write([make("x2", "other")])  # the remaining session goes on
        assert [t.seq for t in store.traces(session="other")] == [0, 1]
        with pytest.raises(ValueError, match="session"):
            store.delete()

    def test_sessions_sum_the_cached_prompt_tokens(self, store: TraceStore) -> None:
        store.write([make("a", "s1", cached_tokens=30), make("b", "s1", cached_tokens=12),
                     make("c", "s1", status="error"), make("d", "s2")])
        sums = {s.session_id: s.cached_tokens for s in store.sessions()}
        assert sums == {"s1": 42, "s2": 0}
        got = store.get("a")
        assert got is not None and got.cached_tokens == 30

    # ---------------------------------------------------------------------------- session order

    def test_session_reads_in_call_order_whatever_the_commit_order(self, store: TraceStore) -> None:
        calls = [make(f"c{k}", "s", created_at=T0 + timedelta(milliseconds=250 * k)) for k in range(10)]
        for batch in ([calls[1], calls[0]], [calls[3]], [calls[2], calls[5]], [calls[4]], calls[6:][::-1]):
            store.write(batch)
        got = store.traces(session="s")
        assert [t.trace_id for t in got] == [f"c{k}" for k in range(10)]
        assert [t.seq for t in got] == list(range(10))
        assert {t.trace_id: t.seq for t in store.traces()} == {f"c{k}": k for k in range(10)}
        assert [s.last_seq for s in store.sessions()] == [9]

    def test_late_commit_of_an_earlier_call_takes_its_rank_and_shifts_the_later_ones(self, store: TraceStore) -> None:
        first = store.write([make("a", created_at=T0), make("c", created_at=T0 + timedelta(seconds=2))])
        assert [t.seq for t in first] == [0, 1]
        late = store.write([make("b", created_at=T0 + timedelta(seconds=1))])
        assert late[0].seq == 1
        assert [(t.trace_id, t.seq) for t in store.traces(session="s")] == [("a", 0), ("b", 1), ("c", 2)]
        moved = store.get("c")
        assert moved is not None and moved.seq == 2
        store.write([make("d", created_at=T0 + timedelta(seconds=3))])  # after the shift: the next rank
        assert [t.seq for t in store.traces(session="s")] == [0, 1, 2, 3]

    def test_calls_that_start_together_are_ordered_by_trace_id(self, store: TraceStore) -> None:
        store.write([make("b"), make("c")])
        store.write([make("a")])
        assert [(t.trace_id, t.seq) for t in store.traces(session="s")] == [("a", 0), ("b", 1), ("c", 2)]

    def test_a_call_that_extends_another_goes_after_it_whatever_the_clocks(self, store: TraceStore) -> None:
        """Prompt + completion of one call begin the next one's prompt: causal order wins over a
        proxy clock that is 60 ms behind, in every commit order."""
        def calls(session: str) -> list[Trace]:
            turn = lambda tid, ms, prompt, out: make(  # noqa: E731
                f"{session}-{tid}", session, created_at=T0 + timedelta(milliseconds=ms), prompt_token_ids=prompt,
                choices=[TraceChoice(index=0, token_ids=out)])
            return [
                turn("p-first", 100, [1, 2, 3], [4, 5]),
                turn("q-second", 40, [1, 2, 3, 4, 5, 6], [7]),  # its proxy's clock is behind
                turn("r-third", 60, [1, 2, 3, 4, 5, 6, 7, 8], [9]),
                turn("u-unrelated", 70, [42], [43]),
            ]

        import itertools

        for n, perm in enumerate(itertools.permutations(range(4))):
            session = f"perm{n}"
            made = calls(session)
            for k in perm:
                store.write([made[k]])
            got = store.traces(session=session)
            assert [t.trace_id[len(session) + 1:] for t in got] == ["u-unrelated", "p-first", "q-second", "r-third"], perm
            assert [t.seq for t in got] == [0, 1, 2, 3]
        together = calls("one-batch")
        store.write(together[::-1])
        assert [t.trace_id for t in store.traces(session="one-batch")] == [
            "one-batch-u-unrelated", "one-batch-p-first", "one-batch-q-second", "one-batch-r-third"]

    def test_closed_store_refuses_work_and_close_is_idempotent(self, store_url: str) -> None:
        st = store_mod.open(store_url)
        st.write([make("a")])
        st.close()
        st.close()
        with pytest.raises(RuntimeError, match="closed"):
            st.count()
