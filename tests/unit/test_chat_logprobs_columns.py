"""`chat_logprobs`: a chat response's `logprobs.content` -> per-token columns and top columns."""

from __future__ import annotations

import pytest

from litellm_rllm.capture.response import chat_logprobs


def test_positions_with_and_without_alternatives_keep_their_counts_in_order() -> None:
    content = [
        {"token": "a", "logprob": -0.5, "top_logprobs": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1}]},
        {"token": "c", "logprob": -0.25, "top_logprobs": []},
        {"token": "d", "logprob": 0, "top_logprobs": [{"token": "e", "logprob": -2.5}]},
    ]
    values, tokens, tops = chat_logprobs({"content": content})
    assert values == [-0.5, -0.25, 0.0] and all(type(v) is float for v in values)
    assert tokens == ["a", "c", "d"]
    assert tops is not None
    assert tops.tokens == ["a", "b", "e"]
    assert list(tops.logprobs) == [-0.5, -1.0, -2.5]
    assert list(tops.counts) == [2, 0, 1]


def test_no_alternatives_anywhere_gives_no_top_columns() -> None:
    values, tokens, tops = chat_logprobs({"content": [{"token": "a", "logprob": -1}, {"token": "b", "logprob": -2,
                                                                                     "top_logprobs": None}]})
    assert (values, tokens, tops) == ([-1.0, -2.0], ["a", "b"], None)


def test_a_missing_logprob_is_an_error_not_a_silent_gap() -> None:
    with pytest.raises(TypeError):
        chat_logprobs({"content": [{"token": "a"}]})
