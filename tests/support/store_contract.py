"""The storage contract (`litellm_rllm.store.base.TraceStore`) as one suite, run against every
backend: a backend's test module subclasses `StoreContract` and provides the fixtures
`store_url` (a fresh, empty store), `store` (it, opened) and `raw_blob` (reads or overwrites a
stored row's `arrays` column behind the store's back)."""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

import pytest

import litellm_rllm.store as store_mod
from litellm_rllm.store import CorruptTraceError, TraceEncodeError, TraceStore
from litellm_rllm.trace import TopLogprob, Trace, TraceChoice, TraceError

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


class StoreContract:
    """Every backend passes these, unchanged."""

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
        store.write([
            make("o1", None, uids=["outer"]),
            make("i1", "inner-a", uids=["outer", "inner-a"]),
            make("other", "elsewhere"),
            make("i2", None, uids=["outer", "inner-b"]),
            make("i3", "inner-a", uids=["outer", "inner-a"]),
        ])
        assert [t.trace_id for t in store.traces(session="outer")] == ["o1", "i1", "i2", "i3"]
        assert [t.trace_id for t in store.traces(session="inner-a")] == ["i1", "i3"]
        assert [t.trace_id for t in store.traces(session="inner-b")] == ["i2"]
        assert [t.seq for t in store.traces(session="inner-a")] == [0, 1]
        assert store.traces(session="nope") == []

    def test_nested_lookup_comes_back_in_write_order_with_an_order_key_that_says_so(self, store: TraceStore) -> None:
        """`seq` counts per innermost session (so a merged view reads [0, 0, 1]); `order` is the
        store-wide write order, increasing along any lookup's result."""
        store.write([make("noise-1", "elsewhere")])
        store.write([make("a", None, uids=["outer"]), make("noise-2", "elsewhere")])
        store.write([make("b", None, uids=["outer", "inner"])])
        store.write([make("c", None, uids=["outer", "inner"])])
        merged = store.traces(session="outer")
        assert [t.trace_id for t in merged] == ["a", "b", "c"]
        assert [t.seq for t in merged] == [0, 0, 1]
        orders = [t.order for t in merged]
        assert all(isinstance(o, int) for o in orders) and orders == sorted(set(orders))
        everything = store.traces()
        assert [t.order for t in everything] == sorted({t.order for t in everything})
        assert {t.trace_id: t.order for t in everything}["b"] == merged[1].order
        got = store.get("c")
        assert got is not None and got.order == merged[2].order
        store.write([make("no-session", None, uids=[])])
        [alone] = store.traces(session="")
        assert isinstance(alone.order, int) and alone.order > max(orders)  # every read path sets it

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
        assert [t.trace_id for t in store.traces(session="s", since=cut)] == ["t1", "t2", "t3"]
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

    def test_closed_store_refuses_work_and_close_is_idempotent(self, store_url: str) -> None:
        st = store_mod.open(store_url)
        st.write([make("a")])
        st.close()
        st.close()
        with pytest.raises(RuntimeError, match="closed"):
            st.count()
