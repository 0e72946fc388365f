"""Trajectory views: per-call rows and merged chains with exact loss masks."""

from __future__ import annotations

import pytest

from litellm_rllm.training import MergedRow, PerCallRow, trajectories

from tests.unit.training.builders import HEADER, Conversation, completion, logprobs_for, trace, user


def ten_turns(session: str = "s1", tool_every: int = 0) -> Conversation:
    conv = Conversation(session)
    for turn in range(10):
        ids = completion(turn, length=3 + turn % 4)
        tool = bool(tool_every) and turn % tool_every == 0
        conv.call(f"{session}-t{turn}", [ids], finish_reason="tool_calls" if tool else "stop")
        conv.follow(ids, turn=turn + 1, tool=tool)
    return conv


def expected_mask(length: int, spans: list[tuple[int, int]]) -> list[int]:
    mask = [0] * length
    for start, end in spans:
        for i in range(start, end):
            mask[i] = 1
    return mask


def test_ten_exact_turns_merge_into_one_row_with_the_sampled_tokens_masked() -> None:
    conv = ten_turns()
    rows = list(trajectories(conv.traces, view="merged"))
    assert len(rows) == 1
    row = rows[0]
    assert isinstance(row, MergedRow)
    last = conv.traces[-1]
    assert row.input_ids == last.prompt_token_ids + last.choices[0].token_ids
    spans = conv.spans  # where each turn's completion went in the history that followed
    assert spans[-1] == (len(last.prompt_token_ids), len(row.input_ids))
    assert row.spans == [list(s) for s in spans]
    assert row.loss_mask == expected_mask(len(row.input_ids), spans)
    # each sampled token sits where its call put it, with that call's logprob
    for t, (start, end) in zip(conv.traces, spans):
        assert row.input_ids[start:end] == t.choices[0].token_ids
        assert row.logprobs[start:end] == logprobs_for(t.choices[0].token_ids)
    assert all(lp == 0.0 for lp, m in zip(row.logprobs, row.loss_mask) if not m)
    assert row.trace_ids == [t.trace_id for t in conv.traces] and row.choices == [0] * 10
    assert (row.session_id, row.status, row.root_relation, row.metadata) == ("s1", "ok", "new", {"task": "s1", "attempt": 1})


def test_tool_turns_merge_and_tool_results_are_not_masked() -> None:
    conv = ten_turns(tool_every=2)
    (row,) = trajectories(conv.traces)
    tool_tokens = {600 + turn for turn in range(1, 11)}
    assert any(i in tool_tokens for i in row.input_ids)
    assert all(m == 0 for i, m in zip(row.input_ids, row.loss_mask) if i in tool_tokens)
    assert sum(row.loss_mask) == sum(len(t.choices[0].token_ids) for t in conv.traces)


def test_drift_splits_the_chain_instead_of_merging_wrong_ids() -> None:
    conv = Conversation()
    for turn in range(4):
        ids = completion(turn, length=5)
        conv.call(f"t{turn}", [ids])
        # turn 1's text comes back re-tokenized
        conv.follow(ids, rendered=(ids[:1] + [7777] + ids[3:]) if turn == 1 else None, turn=turn + 1)
    rows = list(trajectories(conv.traces))
    assert [r.trace_ids for r in rows] == [["t0", "t1"], ["t2", "t3"]]
    assert [r.root_relation for r in rows] == ["new", "drift"]
    # the second row never claims t1's sampled ids: only t2 and t3's spans are masked
    second = rows[1]
    t2, t3 = conv.traces[2], conv.traces[3]
    spans = [(len(t2.prompt_token_ids), len(t2.prompt_token_ids) + 5), (len(t3.prompt_token_ids), len(second.input_ids))]
    assert second.loss_mask == expected_mask(len(second.input_ids), spans)
    per_call = list(trajectories(conv.traces, view="per-call"))
    assert [r.relation for r in per_call] == ["new", "extends", "drift", "extends"]


def test_retry_orphan_is_left_out_and_counted() -> None:
    conv = Conversation()
    c0 = completion(0)
    conv.call("t0", [c0])
    conv.follow(c0, turn=1)
    conv.call("t1", [completion(1)])
    retry = completion(1, branch=1)
    conv.call("t2", [retry])
    conv.follow(retry, turn=2)
    conv.call("t3", [completion(2)])
    rows = trajectories(conv.traces)
    assert [r.trace_ids for r in rows] == [["t0", "t2", "t3"]]
    assert rows.skipped_orphans == 1
    with_orphans = list(trajectories(conv.traces, include_orphans=True))
    assert [(r.trace_ids, r.orphan) for r in with_orphans] == [(["t0", "t1"], True), (["t0", "t2", "t3"], False)]
    per_call = trajectories(conv.traces, view="per-call")
    assert [r.trace_id for r in per_call] == ["t0", "t2", "t3"] and per_call.skipped_orphans == 1


def test_n2_gives_two_leaves_sharing_a_prefix() -> None:
    conv = Conversation()
    c0 = completion(0)
    conv.call("t0", [c0])
    conv.follow(c0, turn=1)
    a, b = completion(1, branch=0), completion(1, branch=1)
    conv.call("t1", [a, b])
    base = list(conv.prompt)
    t2 = trace("t2", base + a + user(2) + HEADER, [completion(2)], seq=2)
    rows = list(trajectories(conv.traces + [t2]))
    assert [(r.trace_ids, r.choices) for r in rows] == [(["t0", "t1"], [0, 1]), (["t0", "t1", "t2"], [0, 0, 0])]
    short, long = rows
    assert short.input_ids == base + b and long.input_ids[: len(base)] == base
    assert short.loss_mask[: len(base)] == long.loss_mask[: len(base)]
    assert short.spans[-1] == [len(base), len(base) + len(b)]
    per_call = list(trajectories(conv.traces + [t2], view="per-call"))
    assert [(r.trace_id, r.choice) for r in per_call] == [("t0", 0), ("t1", 0), ("t1", 1), ("t2", 0)]


def test_per_call_rows_carry_prompt_response_logprobs_and_a_mask_of_ones() -> None:
    conv = ten_turns()
    rows = list(trajectories(conv.traces, view="per-call"))
    assert len(rows) == 10 and all(isinstance(r, PerCallRow) for r in rows)
    for row, t in zip(rows, conv.traces):
        assert (row.trace_id, row.seq, row.choice) == (t.trace_id, t.seq, 0)
        assert row.prompt_ids == t.prompt_token_ids and row.response_ids == t.choices[0].token_ids
        assert row.response_logprobs == t.choices[0].logprobs and row.response_mask == [1] * len(row.response_ids)
        assert (row.reward, row.policy_version) == (None, None)


def test_missing_or_misaligned_logprobs_give_none_not_wrong_values() -> None:
    conv = Conversation()
    c0 = completion(0)
    conv.call("t0", [c0])
    conv.follow(c0, turn=1)
    t1 = conv.call("t1", [completion(1)], logprobs=False)
    (row,) = trajectories(conv.traces)
    assert row.logprobs is None and sum(row.loss_mask) == len(c0) + 4
    t1.choices[0].logprobs = [-0.5]  # one value for four ids
    per_call = list(trajectories(conv.traces, view="per-call"))
    assert per_call[0].response_logprobs is not None and per_call[1].response_logprobs is None


def test_calls_without_token_ids_are_left_out_and_counted() -> None:
    conv = Conversation()
    c0 = completion(0)
    conv.call("t0", [c0])
    conv.follow(c0, turn=1)
    conv.call("t1", [None], status="error")
    no_prompt = trace("t2", None, [completion(9)], seq=2, messages=[{"role": "user", "content": "other"}])
    rows = trajectories(conv.traces + [no_prompt])
    assert [r.trace_ids for r in rows] == [["t0"]]
    assert rows.skipped_without_ids == 2


def test_reward_and_policy_versions_are_read_where_the_trace_has_them() -> None:
    conv = Conversation()
    c0 = completion(0)
    conv.call("t0", [c0], policy_version={"start": 3, "end": 4})
    conv.follow(c0, turn=1)
    conv.call("t1", [completion(1)], reward=0.5, policy_version={"start": 4, "end": 4})
    (row,) = trajectories(conv.traces)
    assert row.reward == 0.5
    assert row.policy_versions == [{"start": 3, "end": 4}, {"start": 4, "end": 4}]
    assert row.policy_version == {"start": 3, "end": 4}


def test_interleaved_sessions_give_the_rows_of_grouped_ones() -> None:
    one, two = ten_turns("a"), ten_turns("b")
    interleaved = [t for pair in zip(one.traces, two.traces) for t in pair]
    grouped = one.traces + two.traces
    rows = [r.to_dict() for r in trajectories(interleaved)]
    assert rows == [r.to_dict() for r in trajectories(grouped, order="session")]
    assert [r["session_id"] for r in rows] == ["a", "b"]
    with pytest.raises(ValueError, match="not grouped by session"):
        list(trajectories(interleaved, order="session"))


def test_session_order_reads_one_session_before_yielding_its_rows() -> None:
    consumed: list[str] = []

    def source():
        for name in ("a", "b", "c"):
            for t in ten_turns(name).traces:
                consumed.append(t.session_id)
                yield t

    rows = trajectories(source(), order="session")
    first = next(rows)
    assert first.session_id == "a" and consumed.count("c") == 0 and consumed.count("b") == 1
    assert [r.session_id for r in rows] == ["b", "c"] and rows.sessions == 3 and rows.traces_read == 30


def test_bad_view_and_order_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="view: must be one of merged, per-call"):
        trajectories([], view="steps")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="order: must be one of"):
        trajectories([], order="random")  # type: ignore[arg-type]
