"""A streamed call is priced in the writer from the usage the upstream reported (LiteLLM prices
streams only after them, in its logging), from LiteLLM's own price table."""

from __future__ import annotations

import litellm

from litellm_rllm.builder.prepare import _cost


def test_an_unpriced_model_costs_nothing_until_it_is_registered_then_its_price() -> None:
    model = "hosted_vllm/rllm-test-unpriced-model"
    usage = {"prompt_tokens": 10, "completion_tokens": 20}
    assert _cost(model, usage) is None
    assert _cost(model, usage) is None  # the answer is remembered for this price table
    litellm.register_model({model: {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
                                    "litellm_provider": "hosted_vllm", "mode": "chat"}})
    try:
        assert abs(_cost(model, usage) - (10 * 1e-6 + 20 * 2e-6)) < 1e-12
    finally:
        litellm.model_cost.pop(model, None)


def test_a_priced_model_is_priced_from_the_reported_usage() -> None:
    cost = _cost("gpt-4o-mini", {"prompt_tokens": 1000, "completion_tokens": 1000})
    assert cost is not None and cost > 0
    assert _cost("gpt-4o-mini", {"input_tokens": 1000, "output_tokens": 1000}) == cost


def test_a_model_registered_without_prices_costs_zero() -> None:
    model = "hosted_vllm/rllm-test-free-model"
    litellm.register_model({model: {"litellm_provider": "hosted_vllm", "mode": "chat"}})
    try:
        assert _cost(model, {"prompt_tokens": 10, "completion_tokens": 20}) == 0.0
    finally:
        litellm.model_cost.pop(model, None)


def test_a_model_given_prices_later_is_priced_though_the_table_kept_its_size() -> None:
    """The kind of a model (unknown / free / priced) is remembered per price table; re-registering
    a model with prices changes its entry in place, not the table's size."""
    model = "hosted_vllm/rllm-test-repriced-model"
    usage = {"prompt_tokens": 10, "completion_tokens": 20}
    litellm.register_model({model: {"litellm_provider": "hosted_vllm", "mode": "chat"}})
    try:
        assert _cost(model, usage) == 0.0
        size = len(litellm.model_cost)
        litellm.register_model({model: {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
                                        "litellm_provider": "hosted_vllm", "mode": "chat"}})
        assert len(litellm.model_cost) == size
        assert abs(_cost(model, usage) - (10 * 1e-6 + 20 * 2e-6)) < 1e-12
    finally:
        litellm.model_cost.pop(model, None)
