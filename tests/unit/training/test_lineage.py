"""Lineage from token ids: extends, drift, edited, new, retries and orphans."""

from __future__ import annotations

import pytest

from litellm_rllm.training import lineage_map
from litellm_rllm.training.lineage import common_prefix
from litellm_rllm.trace import pack_ids

from tests.unit.training.builders import HEADER, SYSTEM, Conversation, completion, trace, user


def test_each_exact_turn_extends_the_previous_call_and_the_first_is_new() -> None:
    conv = Conversation()
    for turn in range(10):
        ids = completion(turn)
        conv.call(f"t{turn}", [ids])
        conv.follow(ids, turn=turn + 1)
    records = lineage_map(conv.traces)
    assert records["t0"].relation == "new" and records["t0"].parent is None
    for turn in range(1, 10):
        assert (records[f"t{turn}"].relation, records[f"t{turn}"].parent, records[f"t{turn}"].choice) == (
            "extends", f"t{turn - 1}", 0)
    assert not any(r.orphan or r.retry_of for r in records.values())


def test_retokenized_completion_is_drift_at_the_first_differing_token() -> None:
    conv = Conversation()
    c0 = completion(0)
    conv.call("t0", [c0])
    conv.follow(c0, turn=1)
    c1 = completion(1, length=6)
    conv.call("t1", [c1])
    drift_at = len(conv.prompt) + 2  # the template re-renders tokens 2..3 of t1's text as one token
    conv.follow(c1, rendered=c1[:2] + [7777] + c1[4:], turn=2)
    conv.call("t2", [completion(2)])
    records = lineage_map(conv.traces)
    r = records["t2"]
    # t0's prompt + completion is also a prefix of t2's prompt: the drift from t1 still wins
    assert (r.relation, r.parent, r.choice, r.offset) == ("drift", "t1", 0, drift_at)
    prompt = conv.traces[2].prompt_token_ids
    sampled = conv.traces[1].prompt_token_ids + c1
    assert r.window_start == drift_at - 4
    assert r.expected == sampled[drift_at - 4 : drift_at + 4]
    assert r.actual == prompt[drift_at - 4 : drift_at + 4]
    assert r.expected[4] == c1[2] and r.actual[4] == 7777


def test_completion_dropped_by_the_template_is_drift_at_its_start() -> None:
    """A template that strips the model's reasoning re-renders none of its first tokens."""
    conv = Conversation()
    c0 = completion(0, length=5)
    conv.call("t0", [c0])
    start = len(conv.prompt)
    conv.follow(c0, rendered=c0[3:], turn=1)
    conv.call("t1", [completion(1)])
    r = lineage_map(conv.traces)["t1"]
    assert (r.relation, r.parent, r.offset) == ("drift", "t0", start)


def test_truncated_history_is_edited_and_a_fresh_conversation_is_new() -> None:
    conv = Conversation()
    for turn in range(4):
        ids = completion(turn)
        conv.call(f"t{turn}", [ids])
        conv.follow(ids, turn=turn + 1)
    opening = SYSTEM + user(0) + HEADER
    # the agent drops turns 0-1 and keeps the opening, turn 2's answer and what followed
    last = conv.traces[-1].prompt_token_ids
    kept = last[conv.spans[2][0]:]
    conv.traces.append(trace("t4", opening + kept, [completion(4)], seq=4))
    # same system prompt, another task: not an edit of this conversation
    conv.traces.append(trace("t5", SYSTEM + user(50) + HEADER, [completion(5)], seq=5))
    records = lineage_map(conv.traces)
    r = records["t4"]
    assert (r.relation, r.parent, r.offset) == ("edited", "t3", len(opening))
    assert r.expected == last[len(opening) - 4 : len(opening) + 4]
    assert r.actual == (opening + kept)[len(opening) - 4 : len(opening) + 4]
    assert (records["t5"].relation, records["t5"].parent) == ("new", None)


def test_call_after_an_edit_extends_the_edited_call() -> None:
    conv = Conversation()
    ids = completion(0)
    conv.call("t0", [ids])
    conv.follow(ids, turn=1)
    conv.call("t1", [completion(1)])
    summary = SYSTEM + user(0) + [2, 999, 3] + HEADER
    c2 = completion(2)
    traces = conv.traces + [
        trace("t2", summary, [c2], seq=2),
        trace("t3", summary + c2 + user(3) + HEADER, [completion(3)], seq=3),
    ]
    records = lineage_map(traces)
    assert records["t2"].relation == "edited"
    assert (records["t3"].relation, records["t3"].parent) == ("extends", "t2")


def test_retry_of_the_same_request_orphans_the_attempt_nothing_continued() -> None:
    conv = Conversation()
    c0 = completion(0)
    conv.call("t0", [c0])
    conv.follow(c0, turn=1)
    conv.call("t1", [completion(1)])  # the client timed out on this one ...
    retry = completion(1, branch=1)
    conv.call("t2", [retry])  # ... and sent the same request again
    conv.follow(retry, turn=2)
    conv.call("t3", [completion(2)])
    records = lineage_map(conv.traces)
    assert records["t2"].retry_of == "t1" and records["t2"].parent == "t0"
    assert records["t1"].orphan and not records["t2"].orphan
    assert (records["t3"].relation, records["t3"].parent) == ("extends", "t2")
    assert [t for t, r in records.items() if r.orphan] == ["t1"]


def test_an_attempt_stored_after_its_retry_and_later_turns_is_a_retry_and_the_orphan() -> None:
    """The client timed out on t0 and retried it (t1); t0's answer reached the store only after
    the next turns: same prompt as t1, so t1's sibling, not an edit of the last turn."""
    conv = Conversation()
    first_prompt, first_messages = list(conv.prompt), [dict(m) for m in conv.messages]
    retry = completion(0, branch=1)
    conv.call("t1", [retry])
    conv.follow(retry, turn=1)
    conv.call("t2", [completion(1)])
    late = trace("t0", first_prompt, [completion(0)], seq=conv.seq, messages=first_messages)
    records = lineage_map([*conv.traces, late])
    assert (records["t0"].relation, records["t0"].parent) == ("new", None)
    assert records["t0"].retry_of == "t1" and records["t0"].orphan
    assert not records["t1"].orphan and records["t2"].parent == "t1"


def test_last_attempt_is_kept_when_nothing_continued_any() -> None:
    conv = Conversation()
    conv.call("t0", [completion(0)])
    conv.call("t1", [completion(0, branch=1)])
    conv.call("t2", [None], status="error")  # a third attempt failed: nothing sampled
    records = lineage_map(conv.traces)
    assert records["t1"].retry_of == "t0" and records["t2"].retry_of == "t1"
    assert (records["t0"].orphan, records["t1"].orphan, records["t2"].orphan) == (True, False, True)


def test_failed_attempt_without_prompt_ids_is_retried() -> None:
    conv = Conversation()
    failed = trace("t0", None, [], status="error", messages=conv.messages)
    ok = trace("t1", conv.prompt, [completion(0)], seq=1, messages=conv.messages)
    records = lineage_map([failed, ok])
    assert records["t0"].relation is None
    assert records["t1"].retry_of == "t0" and records["t0"].orphan and not records["t1"].orphan


def test_same_request_with_another_parent_is_not_a_retry() -> None:
    """Two conversations that ask the same text at different points are not retries."""
    a = trace("a", SYSTEM + user(0) + HEADER, [completion(0)], seq=0, messages=[{"role": "user", "content": "x"}])
    b = trace("b", SYSTEM + user(0) + HEADER + completion(0) + user(1) + HEADER, [completion(1)], seq=1,
              messages=[{"role": "user", "content": "x"}])
    records = lineage_map([a, b])
    assert records["b"].parent == "a" and records["b"].retry_of is None


def test_policy_injected_parameters_do_not_hide_a_retry() -> None:
    first = trace("t0", SYSTEM + user(0) + HEADER, [completion(0)], seq=0, injected={"logprobs": True, "rule": "r"})
    first.request["logprobs"] = True
    second = trace("t1", SYSTEM + user(0) + HEADER, [completion(0, branch=1)], seq=1)
    second.request = {k: v for k, v in first.request.items() if k != "logprobs"}
    assert lineage_map([first, second])["t1"].retry_of == "t0"


def test_n2_children_name_the_choice_they_continue() -> None:
    conv = Conversation()
    a, b = completion(0, branch=0), completion(0, branch=1)
    conv.call("t0", [a, b])
    base = list(conv.prompt)
    t1 = trace("t1", base + a + user(1) + HEADER, [completion(1)], seq=1)
    t2 = trace("t2", base + b + user(1) + HEADER, [completion(1, branch=1)], seq=2)
    records = lineage_map(conv.traces + [t1, t2])
    assert (records["t1"].parent, records["t1"].choice) == ("t0", 0)
    assert (records["t2"].parent, records["t2"].choice) == ("t0", 1)


def test_calls_with_one_prompt_are_siblings_not_parent_and_child() -> None:
    p = SYSTEM + user(0) + HEADER
    traces = [trace(f"g{i}", p, [completion(0, branch=i)], seq=i, messages=[{"role": "user", "content": str(i)}])
              for i in range(3)]
    records = lineage_map(traces)
    assert all((r.relation, r.parent, r.retry_of) == ("new", None, None) for r in records.values())


def test_sessions_are_resolved_separately_in_any_order() -> None:
    one, two = Conversation("a"), Conversation("b")
    for turn in range(3):
        for conv in (one, two):
            ids = completion(turn)
            conv.call(f"{conv.session}{turn}", [ids])
            conv.follow(ids, turn=turn + 1)
    interleaved = [t for pair in zip(one.traces, two.traces) for t in pair]
    records = lineage_map(reversed(interleaved))  # seq puts each session back in order
    assert records["a2"].parent == "a1" and records["b2"].parent == "b1" and records["b0"].relation == "new"


def test_common_prefix_counts_equal_leading_tokens() -> None:
    a = pack_ids(list(range(5000)))
    for n in (0, 1, 63, 64, 65, 1000, 4999):
        b = pack_ids(list(range(n)) + [-1] + list(range(n + 1, 5000)))
        assert common_prefix(a, b) == n
    assert common_prefix(a, a) == 5000
    assert common_prefix(a, pack_ids([5, 6, 7]), 20, 0) == 3


def test_ids_outside_int32_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="t0: prompt_token_ids"):
        lineage_map([trace("t0", [2**40], [[1]])])


def test_session_lineage_gives_the_parent_as_each_call_is_added() -> None:
    """What a writer needs at write time: the parent from the calls stored before."""
    from litellm_rllm.training import SessionLineage
    from litellm_rllm.training.calls import call_of

    conv = Conversation()
    for turn in range(3):
        ids = completion(turn)
        conv.call(f"t{turn}", [ids])
        conv.follow(ids, turn=turn + 1)
    session = SessionLineage()
    parents = [session.add(call_of(t)).parent for t in conv.traces]
    assert parents == [None, "t0", "t1"]


def test_lineage_json_form_always_names_parent_relation_and_orphan() -> None:
    conv = Conversation()
    c0 = completion(0, length=5)
    conv.call("t0", [c0])
    conv.follow(c0, rendered=c0[:2] + [7777] + c0[3:], turn=1)
    conv.call("t1", [completion(1)])
    records = lineage_map(conv.traces)
    assert records["t0"].to_dict() == {"parent": None, "relation": "new", "orphan": False}
    drift = records["t1"].to_dict()
    assert set(drift) == {"parent", "relation", "choice", "offset", "window_start", "expected", "actual", "orphan"}
    assert lineage_map([trace("x", None, [])])["x"].to_dict() == {"parent": None, "relation": None, "orphan": False}
