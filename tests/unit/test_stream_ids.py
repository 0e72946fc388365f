"""A streaming client that asked for token ids gets the upstream's sequence exactly, each id on
its own chunk where LiteLLM kept it, and the ids of chunks LiteLLM dropped on the next one served."""

from __future__ import annotations

import random

from litellm_rllm.callbacks.stream_ids import ClientTokenIds, next_end
from litellm_rllm.capture.stream import StreamAccumulator

EOS = 99


def event(ids: list[int], text: str = "x", finish: str | None = None) -> dict:
    """One upstream (vLLM) event as the tee parses it."""
    return {"choices": [{"index": 0, "delta": {"content": text} if text else {}, "token_ids": ids,
                         "finish_reason": finish}]}


def served(ids: list[int] | None, finish: str | None = None) -> dict:
    """The chunk LiteLLM serves for an event: its ids if it kept them, None if it lost them."""
    choice = {"index": 0, "delta": {"content": "x"}, "finish_reason": finish}
    if ids is not None:
        choice["token_ids"] = ids
    return {"choices": [choice]}


def handed(chunk: dict) -> list[int]:
    return list(chunk["choices"][0].get("token_ids") or [])


def test_chunks_that_lost_nothing_are_left_as_litellm_made_them():
    acc = StreamAccumulator()
    ids = ClientTokenIds(acc)
    for i in (1, 2, 3):
        acc.add(event([i]))
        chunk = served([i])
        own = chunk["choices"][0]["token_ids"]
        ids.annotate(chunk)
        assert chunk["choices"][0]["token_ids"] is own  # not replaced


def test_ids_of_a_dropped_chunk_ride_on_the_next_chunk_served():
    acc = StreamAccumulator()
    ids = ClientTokenIds(acc)
    acc.add(event([1]))
    first = served([1])
    ids.annotate(first)
    acc.add(event([7], text=""))  # `delta: {}`: LiteLLM drops the whole chunk
    acc.add(event([2]))
    second = served([2])
    ids.annotate(second)
    assert handed(first) == [1] and handed(second) == [7, 2]


def test_a_chunk_keeps_its_own_ids_when_the_tee_has_read_ahead():
    acc = StreamAccumulator()
    ids = ClientTokenIds(acc)
    for i in (1, 2, 3):  # one upstream read held three events
        acc.add(event([i]))
    chunks = [served([i]) for i in (1, 2, 3)]
    for chunk in chunks:
        ids.annotate(chunk)
    assert [handed(c) for c in chunks] == [[1], [2], [3]]


def test_the_finish_chunk_gets_every_id_left_its_eos_id_too():
    acc = StreamAccumulator()
    ids = ClientTokenIds(acc)
    acc.add(event([1]))
    acc.add(event([EOS], text="", finish="stop"))
    first, last = served([1]), served(None, finish="stop")  # LiteLLM lost the EOS id
    ids.annotate(first)
    ids.annotate(last)
    assert handed(first) == [1] and handed(last) == [EOS]


def test_prompt_ids_go_on_the_first_chunk_only():
    acc = StreamAccumulator()
    ids = ClientTokenIds(acc)
    acc.add({"prompt_token_ids": [5, 6], **event([], text="")})
    first, second = served(None), served(None)
    ids.annotate(first)
    ids.annotate(second)
    assert first["prompt_token_ids"] == [5, 6] and "prompt_token_ids" not in second
    assert "token_ids" not in first["choices"][0] and "token_ids" not in second["choices"][0]


def test_ids_that_disagree_with_the_upstream_are_replaced_by_the_upstreams():
    acc = StreamAccumulator()
    ids = ClientTokenIds(acc)
    acc.add(event([1, 2]))
    chunk = served([8, 9])  # never sent upstream
    ids.annotate(chunk)
    assert handed(chunk) == [1, 2]


def test_next_end_finds_own_ids_after_dropped_ones():
    assert next_end([1, 7, 7, 2, 3], 1, [2, 3], finish=False) == 5
    assert next_end([1, 7, 2], 1, None, finish=False) == 1
    assert next_end([1, 7, 2], 1, None, finish=True) == 3


def test_concatenated_ids_are_the_upstreams_sequence_whatever_litellm_drops_and_the_tee_reads_ahead():
    rng = random.Random(7)
    for _ in range(300):
        acc = StreamAccumulator()
        client = ClientTokenIds(acc)
        n = rng.randint(1, 30)
        upstream = [[rng.randint(0, 5) for _ in range(rng.choice((1, 1, 1, 2)))] for _ in range(n)]
        upstream[-1] = upstream[-1] + [EOS]
        got: list[int] = []
        pending: list[dict] = []
        for k, toks in enumerate(upstream):
            last = k == n - 1
            acc.add(event(toks, finish="stop" if last else None))
            kept = last or rng.random() > 0.3  # LiteLLM drops some chunks; never the finish
            if kept:
                pending.append(served(None if last else toks, finish="stop" if last else None))
            if rng.random() < 0.5 or last:  # LiteLLM serves what it parsed, sometimes later
                for chunk in pending:
                    client.annotate(chunk)
                    got.extend(handed(chunk))
                pending = []
        assert got == [i for toks in upstream for i in toks]
