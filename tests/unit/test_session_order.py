"""Session order is a function of the calls, not of the order their commits land in: any
batching and any commit order give the same read-back (SQLite here; the same code orders
PostgreSQL's writes, and the contract suite runs both)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_rllm.store import SqliteStore
from litellm_rllm.store.session_order import CLOCK_BOUND_US, OrderItem, call_context, place
from litellm_rllm.store.codec import encode
from litellm_rllm.trace import TraceChoice
from tests.support.store_contract import T0, make


@st.composite
def sessions(draw: st.DrawFn) -> tuple[list, list[list[int]]]:
    """An agent's turns (each extends the last: prompt + completion + a new message) and some
    unrelated calls, with clocks up to 300 ms off; then a random commit order in batches."""
    n_turns = draw(st.integers(1, 6))
    n_other = draw(st.integers(0, 4))
    calls, prompt, t = [], [1, 2, 3], 0
    for k in range(n_turns):
        t += draw(st.integers(1, 400))  # ms after the previous turn started
        skew = draw(st.integers(-300, 300))
        out = [100 + k, 200 + k]
        calls.append(make(f"turn-{k}", created_at=T0 + timedelta(milliseconds=t + skew), prompt_token_ids=list(prompt),
                          choices=[TraceChoice(index=0, token_ids=out)]))
        prompt = prompt + out + [7, 8]
    for j in range(n_other):
        calls.append(make(f"other-{j}", created_at=T0 + timedelta(milliseconds=draw(st.integers(0, t + 300))),
                          prompt_token_ids=[50 + j], choices=[TraceChoice(index=0, token_ids=[9])]))
    order = draw(st.permutations(range(len(calls))))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(calls) - 1)), max_size=3)))
    batches, start = [], 0
    for cut in [*cuts, len(calls)]:
        if cut > start:
            batches.append(list(order[start:cut]))
            start = cut
    return calls, batches


def _read(calls: list, batches: list[list[int]]) -> list[tuple[str, int]]:
    store = SqliteStore(":memory:")
    try:
        for batch in batches:
            store.write([calls[k].model_copy(deep=True) for k in batch])
        return [(t.trace_id, t.seq) for t in store.traces(session="s")]
    finally:
        store.close()


@settings(deadline=None)
@given(sessions())
def test_read_back_does_not_depend_on_commit_order(case: tuple[list, list[list[int]]]) -> None:
    calls, batches = case
    got = _read(calls, batches)
    assert got == _read(calls, [list(range(len(calls)))])  # as if all committed at once
    assert [seq for _, seq in got] == list(range(len(calls)))
    turns = [tid for tid, _ in got if tid.startswith("turn-")]
    assert turns == sorted(turns, key=lambda tid: int(tid.split("-")[1]))  # causal order, whatever the clocks


def test_context_is_prompt_plus_first_choice_and_prefix_checks_follow_it() -> None:
    parent = make("p", prompt_token_ids=[1, 2], choices=[TraceChoice(index=0, token_ids=[3]), TraceChoice(index=1, token_ids=[4])])
    ctx = call_context(encode(parent).arrays)
    assert ctx is not None and (ctx.prompt_len, ctx.ctx_len) == (2, 3)
    child_ok = OrderItem.new(1, "c", 0, encode(make("c", prompt_token_ids=[1, 2, 3, 9])).arrays)
    child_choice1 = OrderItem.new(2, "d", 0, encode(make("d", prompt_token_ids=[1, 2, 4, 9])).arrays)
    p = OrderItem.new(0, "p", CLOCK_BOUND_US // 2, encode(parent).arrays)
    placed = place(0, [], [p, child_ok, child_choice1], lambda rows: None)
    keys = {k: v[1] for k, v in placed.fresh.items()}
    assert keys[1] == keys[0] + 1  # extends choice 0: after its parent
    assert keys[2] == 0  # only choice 0 counts: its own start
    assert call_context(None) is None and call_context(encode(make("x")).arrays) is None
