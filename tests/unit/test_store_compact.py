"""Compacted sessions, the parts a store's contract does not show: the write-side cache stays
within its bounds, small savings are not worth a base, and the read side never guesses.
(Round trips through both backends are in tests/support/store_contract.py.)"""

from __future__ import annotations

from typing import Any, Sequence

import pytest

from litellm_rllm.store.codec import CorruptTraceError, EncodedTrace, encode
from litellm_rllm.store.compact import Compactor, MissingBase, Rebuilder
from tests.support.store_contract import agent_session, make


def written(compactor: Compactor, rows: Sequence[EncodedTrace]) -> list[EncodedTrace]:
    """What a store would insert for ``rows`` (all new, every base still stored), remembered."""
    plans = compactor.plan(rows)
    out = compactor.choose(plans, list(range(len(rows))), lambda ids: set(ids))
    compactor.remember(plans, range(len(rows)))
    return out


def test_the_cache_keeps_its_byte_bound_and_its_count_exact() -> None:
    compactor = Compactor(cache_bytes=50_000, per_session=2)
    for s in range(20):
        for trace in agent_session(f"s{s}", 3, step=100):
            written(compactor, [encode(trace)])
    entries = [e for es in compactor._sessions.values() for e in es]
    assert compactor._bytes == sum(e.charged for e in entries) <= 50_000
    assert all(len(es) <= 2 for es in compactor._sessions.values())
    assert list(compactor._sessions)[-1] == "s19" and "s0" not in compactor._sessions  # least recent out
    compactor.forget()
    assert compactor._bytes == 0 and not compactor._sessions


def test_a_call_that_would_save_little_is_stored_whole() -> None:
    compactor = Compactor()
    first = make("a", prompt_token_ids=list(range(100)))
    second = make("b", prompt_token_ids=list(range(100)) + [7])  # shares 400 bytes of ids: below 512
    rows = written(compactor, [encode(first)]) + written(compactor, [encode(second)])
    assert [r.base_id for r in rows] == [None, None]
    third = make("c", prompt_token_ids=list(range(200)) + [7])
    fourth = make("d", prompt_token_ids=list(range(200)) + [8])
    assert [r.base_id for r in written(compactor, [encode(third), encode(fourth)])] == [None, "c"]


def test_calls_without_a_session_share_ids_but_never_messages() -> None:
    compactor = Compactor()
    messages = [{"role": "user", "content": "x " * 400}]
    a = make("a", None, prompt_token_ids=list(range(300)), request={"messages": messages})
    b = make("b", None, prompt_token_ids=list(range(300)), request={"messages": messages})
    rows = written(compactor, [encode(a), encode(b)])
    assert rows[1].base_id == "a" and '"messages":[{' in rows[1].doc  # its messages stay whole


def _reader(rows: Sequence[EncodedTrace]) -> Rebuilder:
    by_id = {r.trace_id: r for r in rows}

    def fetch(ids: list[str]) -> list[Any]:
        return [(0, 0, by_id[i].doc, by_id[i].arrays, by_id[i].detail, by_id[i].base_id, i) for i in ids if i in by_id]

    return Rebuilder(fetch)


def _row(enc: EncodedTrace) -> tuple[Any, ...]:
    return (0, 0, enc.doc, enc.arrays, enc.detail, enc.base_id, enc.trace_id)


def test_a_base_that_is_gone_is_an_error_naming_it() -> None:
    rows = written(Compactor(), [encode(t) for t in agent_session("g", 3)])
    assert rows[2].base_id == "g-1"
    with pytest.raises(MissingBase, match="g-1"):
        _reader([rows[0], rows[2]]).decode(_row(rows[2]))


def test_a_base_chain_that_loops_is_refused() -> None:
    rows = written(Compactor(), [encode(t) for t in agent_session("loop", 2)])
    looped = EncodedTrace(**{**{f: getattr(rows[0], f) for f in EncodedTrace.__dataclass_fields__},
                             "base_id": "loop-1", "doc": rows[1].doc.replace('"base":"loop-0"', '"base":"loop-1"')})
    with pytest.raises(CorruptTraceError):
        _reader([looped, rows[1]]).decode(_row(rows[1]))
