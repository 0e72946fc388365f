"""Session order is a function of the calls, not of the order their commits land in: any
batching and any commit order give the same read-back (SQLite here; the same code orders
PostgreSQL's writes, and the contract suite runs both)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_rllm.store import SqliteStore
from litellm_rllm.store.session_order import CLOCK_BOUND_US, OrderItem, after_window, call_context, place
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


def _read_by_many_writers(calls: list, batches: list[list[int]], folder: str) -> list[tuple[str, int]]:
    """Each batch from its own store object (another proxy): its window rows are not cached."""
    import os

    path = os.path.join(folder, f"{os.urandom(4).hex()}.db")
    for batch in batches:
        writer = SqliteStore(path)
        writer.write([calls[k].model_copy(deep=True) for k in batch])
        writer.close()
    reader = SqliteStore(path, create=False)
    try:
        return [(t.trace_id, t.seq) for t in reader.traces(session="s")]
    finally:
        reader.close()


@settings(deadline=None, max_examples=40)
@given(sessions())
def test_rows_of_other_writers_are_placed_as_our_own(tmp_path_factory, case: tuple[list, list[list[int]]]) -> None:
    calls, batches = case
    folder = str(tmp_path_factory.mktemp("writers"))
    assert _read_by_many_writers(calls, batches, folder) == _read(calls, [list(range(len(calls)))])


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6), st.integers(0, 2)), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6), st.integers(0, 2)), min_size=1, max_size=3))
def test_new_calls_that_follow_the_window_are_placed_without_it(stored_calls: list, new_calls: list) -> None:
    """``after_window`` says yes only where ``place`` with the window gives what it gives without
    it (prompts of equal ids, so calls often extend each other; starts close together)."""

    def item(k: int, start: int, prompt_len: int, out: int) -> OrderItem:
        arrays = encode(make(f"t{k}", prompt_token_ids=[1] * prompt_len,
                             choices=[TraceChoice(index=0, token_ids=[1] * out)])).arrays
        return OrderItem.new(k, f"t{k}", start, arrays)

    # the stored window as a write of those calls left it: keys and seqs from place itself
    calls = [item(k, start, plen, out) for k, (start, plen, out) in enumerate(stored_calls)]
    stored = place(5, [], calls, lambda rows: None).fresh
    window = sorted((OrderItem(c.trace_id, stored[c.index][1], seq=stored[c.index][0], row=100 + c.index,
                               prompt_len=c.prompt_len, ctx_len=c.ctx_len, ctx_hash=c.ctx_hash) for c in calls),
                    key=lambda w: w.seq)
    prompts = {w.row: c.prompt for w, c in ((w, calls[w.row - 100]) for w in window)}
    fresh = [item(50 + k, start, plen, out) for k, (start, plen, out) in enumerate(new_calls)]

    def load(rows: list[OrderItem]) -> None:
        for r in rows:
            r.prompt = prompts[r.row]

    if after_window(window[-1].key, [w.prompt_len for w in window], fresh):
        assert place(5, window, fresh, load) == place(5 + len(window), [], fresh, load)


@settings(deadline=None, max_examples=150)
@given(sessions(), st.integers(0, 5))
def test_extension_edges_are_every_pair_that_extends(case: tuple[list, list[list[int]]], forks: int) -> None:
    """`place` checks each call only against parents whose context fits in its prompt (a
    bisect, not every pair of the window): the same edges as checking every pair. Forks add
    calls that extend an earlier turn's context the same way (several children of one parent)."""
    from litellm_rllm.store.session_order import _edges, extends

    calls, _ = case
    turns = [c for c in calls if c.trace_id.startswith("turn-")]
    for j in range(min(forks, len(turns))):
        parent = turns[j]
        # odd forks add a message; even ones continue the context as is (prompt == its context)
        prompt = list(parent.prompt_token_ids or []) + list(parent.choices[0].token_ids or []) + [60 + j] * (j % 2)
        calls.append(make(f"fork-{j}", prompt_token_ids=prompt, choices=[TraceChoice(index=0, token_ids=[61])]))
    items = [OrderItem.new(k, c.trace_id, k, encode(c).arrays) for k, c in enumerate(calls)]
    brute = {(child.trace_id, parent.trace_id) for child in items for parent in items if extends(child, parent)}
    assert {(c.trace_id, p.trace_id) for c, p in _edges(items)} == brute
    # the turns chain: each turn extends the one before it, and a fork its turn
    assert all((f"turn-{k}", f"turn-{k - 1}") in brute for k in range(1, len(turns)))
    assert all((f"fork-{j}", f"turn-{j}") in brute for j in range(min(forks, len(turns))))
