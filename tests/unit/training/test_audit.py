"""The drift audit: per-session and total counts, boundaries with their ids, text and JSON."""

from __future__ import annotations

import json

from litellm_rllm.training import audit

from tests.unit.training.builders import HEADER, SYSTEM, Conversation, completion, trace, user


def drifting_session() -> Conversation:
    conv = Conversation("drifty")
    for turn in range(3):
        ids = completion(turn, length=5)
        conv.call(f"d{turn}", [ids])
        conv.follow(ids, rendered=ids[:2] + [7777] + ids[3:] if turn == 0 else None, turn=turn + 1)
    return conv


def messy_session() -> Conversation:
    conv = Conversation("messy")
    c0 = completion(0)
    conv.call("m0", [c0])
    conv.follow(c0, turn=1)
    conv.call("m1", [completion(1)])
    retry = completion(1, branch=1)
    conv.call("m2", [retry], problems=["token_ids: 3 ids but usage says 4"])
    conv.follow(retry, turn=2)
    conv.call("m3", [completion(2)])
    conv.traces.append(trace("m4", SYSTEM + user(0) + [2, 999, 3] + HEADER, [completion(5)], session="messy", seq=4))
    conv.traces.append(trace("m5", None, [], session="messy", seq=5, status="error"))
    return conv


def test_audit_counts_each_boundary_per_session_and_in_total() -> None:
    report = audit(drifting_session().traces + messy_session().traces)
    drifty, messy = report.sessions
    assert drifty.session_id == "drifty" and drifty.counts.relations == {"new": 1, "extends": 1, "drift": 1, "edited": 0}
    (d,) = drifty.drifts
    assert (d.trace_id, d.parent, d.offset) == ("d1", "d0", 13 + 2)
    assert d.expected[d.offset - d.window_start] == completion(0, length=5)[2]
    assert d.actual[d.offset - d.window_start] == 7777
    assert messy.counts.relations == {"new": 1, "extends": 3, "drift": 0, "edited": 1}
    assert (messy.counts.retries, messy.counts.orphans, messy.counts.incomplete, messy.counts.without_ids) == (1, 1, 1, 1)
    assert [(r.trace_id, r.retry_of) for r in messy.retries] == [("m2", "m1")]
    assert messy.orphans == ["m1"] and [e.trace_id for e in messy.edits] == ["m4"]
    assert messy.incomplete[0].trace_id == "m2" and "usage says 4" in messy.incomplete[0].problems[0]
    assert report.total.calls == 9 and report.total.relations["extends"] == 4 and report.total.orphans == 1
    assert not drifty.clean and not messy.clean


def test_audit_report_is_json_and_text() -> None:
    report = audit(drifting_session().traces + messy_session().traces)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total"]["relations"]["drift"] == 1 and data["sessions"][1]["orphans"] == ["m1"]
    text = report.render_text()
    assert "CHECK session drifty: 3 calls, 1 extends, 1 drift, 0 edited, 1 new" in text
    assert "drift  d1 <- d0 choice 0 at token 15: expected" in text
    assert "retry  m2 retries m1" in text and "orphan m1" in text and "incomplete m2: choice 0: token_ids" in text
    assert text.rstrip().splitlines()[-1].startswith("total: 2 sessions, 9 calls, 4 extends, 1 drift, 1 edited, 2 new")


def test_clean_session_says_ok() -> None:
    conv = Conversation("fine")
    for turn in range(3):
        ids = completion(turn)
        conv.call(f"f{turn}", [ids])
        conv.follow(ids, turn=turn + 1)
    report = audit(conv.traces)
    assert report.sessions[0].clean
    assert report.render_text().startswith("ok    session fine: 3 calls, 2 extends, 0 drift, 0 edited, 1 new, 0 retries")
