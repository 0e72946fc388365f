"""The session list behind `GET /rllm/sessions` (`TraceStore.session_page`), one contract run
against SQLite and PostgreSQL: newest activity first, every session exactly once across pages,
filters, team scope, the summary's counts and flags, bad parameters named."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest

from litellm_rllm import store
from litellm_rllm.capture.response import check_completeness
from litellm_rllm.store import listing
from litellm_rllm.store.listing import SessionQuery, SessionQueryError
from litellm_rllm.trace import Trace, TraceChoice

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgres"])
def st(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'list.db'}"
    else:
        pytest.importorskip("psycopg")
        url = request.getfixturevalue("pg_fresh_url")
    s = store.open(url)
    yield s
    s.close()


def trace(tid: str, session: str, minute: float, *, status: str = "ok", model: str = "policy",
          team: str | None = None, meta: dict[str, Any] | None = None, gap: bool = False, **extra: Any) -> Trace:
    choice = TraceChoice(index=0, message={"role": "assistant", "content": "x"}, token_ids=[1, 2, 3],
                         logprobs=[-0.1, -0.2] if gap else [-0.1, -0.2, -0.3])
    choice.completeness = check_completeness(choice, {"completion_tokens": 3})
    return Trace(trace_id=tid, session_id=session, model=model, status=status, metadata=meta or {},
                 caller={"team_id": team} if team else None, choices=[choice],
                 created_at=T0 + timedelta(minutes=minute), **extra)


def ids(page: listing.SessionPage) -> list[str]:
    return [s.session_id for s in page.sessions]


def test_pages_list_every_session_once_most_recently_active_first(st: Any) -> None:
    # 30 sessions written in order, then s05 gets a new call: it moves to the top
    st.write([trace(f"t{i}", f"s{i:02d}", i) for i in range(30)])
    st.write([trace("late", "s05", 100)])
    seen, cursor = [], None
    while True:
        page = st.session_page(SessionQuery(limit=7, cursor=listing.decode_cursor(cursor)))
        seen += ids(page)
        cursor = page.next
        if cursor is None:
            break
    expected = ["s05"] + [f"s{i:02d}" for i in range(29, -1, -1) if i != 5]
    assert seen == expected
    first = st.session_page(SessionQuery(limit=3))
    assert first.total == 30 and ids(first) == ["s05", "s29", "s28"]
    s05 = first.sessions[0]
    assert s05.traces == 2 and s05.last_seq == 1 and s05.last_at == T0 + timedelta(minutes=100)
    assert s05.first_at == T0 + timedelta(minutes=5)
    # writes while a client pages never list a session twice: s28 moves up, page 2 goes on below
    st.write([trace("later", "s28", 200)])
    second = st.session_page(SessionQuery(limit=3, cursor=listing.decode_cursor(first.next)))
    assert ids(second) == ["s27", "s26", "s25"]


def test_summary_counts_statuses_models_errors_and_completeness(st: Any) -> None:
    st.write([
        trace("a1", "agent", 0, meta={"task": "swe"}),
        trace("a2", "agent", 1, status="error", model="policy-b"),
        trace("a3", "agent", 2, gap=True, meta={"task": "swe", "step": 3}, lineage={"relation": "drift"}),
        trace("a4", "agent", 3, status="incomplete", lineage={"relation": "extends"}),
    ])
    [s] = st.session_page(SessionQuery()).sessions
    assert s.traces == 4 and s.models == ["policy", "policy-b"]
    assert s.statuses == {"ok": 2, "error": 1, "incomplete": 1} and s.errors == 1
    assert s.completeness_failed == 1 and s.drift == 1
    assert s.metadata == {}  # the last call's metadata
    st.write([trace("b1", "plain", 5, meta={"k": "v"})])
    [plain] = st.session_page(SessionQuery(limit=1)).sessions
    assert plain.drift is None and plain.metadata == {"k": "v"} and plain.reward is None


def test_filters_by_status_model_search_metadata_and_time(st: Any) -> None:
    st.write([
        trace("1", "alpha-run", 0, meta={"task": "swe", "n": 3, "flag": True}),
        trace("2", "beta-run", 10, status="error", meta={"task": "math"}),
        trace("3", "gamma", 20, model="teacher", meta={"task": "swe", "owner": "Zoë"}),
        trace("4", "alpha-run", 30, meta={"task": "swe", "n": 3, "flag": True}),
    ])

    def q(**kw: Any) -> list[str]:
        return ids(st.session_page(SessionQuery.parse(**kw)))

    assert q() == ["alpha-run", "gamma", "beta-run"]
    assert q(status="error") == ["beta-run"]
    assert q(model="teacher") == ["gamma"]
    assert q(q="RUN") == ["alpha-run", "beta-run"]
    assert q(q="zoë") == ["gamma"]
    assert q(meta=["task:swe"]) == ["alpha-run", "gamma"]
    assert q(meta=["task:swe", "n:3", "flag:true"]) == ["alpha-run"]
    assert q(meta=["task:nothing"]) == []
    assert q(since=(T0 + timedelta(minutes=15)).isoformat()) == ["alpha-run", "gamma"]
    assert q(until=(T0 + timedelta(minutes=25)).isoformat()) == ["gamma", "beta-run"]
    assert q(session="gamma") == ["gamma"] and q(session="nope") == []


def test_team_scope_lists_and_summarises_only_the_teams_calls(st: Any) -> None:
    st.write([
        trace("a1", "shared", 0, team="team-a"),
        trace("b1", "shared", 1, team="team-b", status="error", meta={"secret": "b"}),
        trace("a2", "only-a", 2, team="team-a"),
        trace("n1", "no-team", 3),
    ])
    a = st.session_page(SessionQuery(team="team-a"))
    assert ids(a) == ["only-a", "shared"] and a.total is None
    shared = a.sessions[1]
    assert shared.traces == 1 and shared.errors == 0 and shared.metadata == {}
    assert ids(st.session_page(SessionQuery(team="team-b"))) == ["shared"]
    assert ids(st.session_page(SessionQuery(team="team-c"))) == []
    assert ids(st.session_page(SessionQuery(team="team-b", session="only-a"))) == []


def test_a_filter_that_matches_little_is_time_boxed_and_resumes_from_its_cursor(st: Any,
                                                                              monkeypatch: Any) -> None:
    st.write([trace(f"t{i}", f"s{i:03d}", i) for i in range(300)])
    monkeypatch.setattr(listing, "WALK_WINDOW", 16)
    found, cursor = [], None
    while True:
        page = st.session_page(SessionQuery(limit=5, q="s00", cursor=listing.decode_cursor(cursor)))
        found += ids(page)
        cursor = page.next
        if cursor is None:
            break
    assert found == [f"s{i:03d}" for i in range(9, -1, -1)]

    def slow_walk(*args: Any, **kw: Any) -> Any:
        return real_walk(*args[:4], budget_s=0.0)

    real_walk = listing.walk
    monkeypatch.setattr(listing, "walk", slow_walk)
    short = st.session_page(SessionQuery(limit=5, q="s00"))
    assert short.sessions == [] and short.next is not None  # out of time: an empty page that goes on


@pytest.mark.parametrize("kw, field", [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"cursor": "42"}, "cursor"), ({"since": "last week"}, "since"), ({"until": "2026-13-01"}, "until"),
    ({"meta": ["task"]}, "meta"), ({"meta": ['a"b:1']}, "meta"), ({"q": "x" * 1001}, "q"),
])
def test_bad_parameters_name_their_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(SessionQueryError) as err:
        SessionQuery.parse(**kw)
    assert err.value.field == field and str(err.value).startswith(field + ":")
