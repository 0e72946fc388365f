"""Facts about the deployment LiteLLM's router picked for a call: its provider, whether it is
a vLLM-family backend, which OpenAI parameters it accepts (logprobs or not), its output price.

Plain reads of `litellm`'s provider tables (no proxy), cached per deployment; used by the
sampling entry (what may be injected), the tracer (which upstreams can be tapped) and
`litellm-rllm policy explain`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Optional

import litellm

from ..policy import Target

VLLM_PROVIDERS = frozenset({"hosted_vllm", "vllm"})
# Reasoning models refuse `logprobs` / `top_logprobs` with a 400 ("Unsupported parameter:
# 'logprobs' is not supported with this model"), and `litellm.get_supported_openai_params` does
# not know all of them (1.108.5 says o1-mini, gpt-5-chat-latest, gpt-5.x accept logprobs). So,
# for every backend that is not vLLM (vLLM returns logprobs for any model it serves), a model
# name (or its `model_info.base_model`) of these families is treated as not accepting them:
# OpenAI's o-series (`o1`, `o3-mini`, `ft:o4-mini-...`), `gpt-5*`, `codex*`, `computer-use*`,
# and any name containing "reason" (`deepseek-reasoner`, `...-reasoning-...`); on `openai` /
# `azure`, also every model `litellm.model_cost` marks `supports_reasoning`. A wrong guess costs
# logprobs on one deployment; the opposite costs the request.
NO_LOGPROBS_MODEL = re.compile(r"^(?:ft:)?(?:o\d+(?:$|[-.:_])|gpt-5|codex|computer-use)|reason", re.IGNORECASE)
_REASONING_FLAG_PROVIDERS = frozenset({"openai", "azure", "text-completion-openai"})
_LOGPROB_PARAMS = frozenset({"logprobs", "top_logprobs"})

# LiteLLM call types of the legacy completions API (`logprobs` is a count there).
TEXT_CALLS = frozenset({"text_completion", "atext_completion"})


def logprobs_denied(model: Optional[str], provider: Optional[str]) -> bool:
    """True if this (non-vLLM) deployment model is known or presumed to refuse logprobs."""
    if not model or provider in VLLM_PROVIDERS:
        return False
    bare = model.rsplit("/", 1)[-1]
    if NO_LOGPROBS_MODEL.search(bare):
        return True
    if provider in _REASONING_FLAG_PROVIDERS:
        for key in (model, bare, f"{provider}/{bare}"):
            info = litellm.model_cost.get(key)
            if info and info.get("supports_reasoning"):
                return True
    return False


@functools.lru_cache(maxsize=4096)
def _provider_facts(model: str, provider: Optional[str], api_base: Optional[str]) -> tuple[str, frozenset[str], Optional[float]]:
    """(provider, supported OpenAI params, output USD per million tokens) for a deployment."""
    try:
        _, resolved, _, _ = litellm.get_llm_provider(model=model, custom_llm_provider=provider, api_base=api_base)
    except Exception:
        resolved = provider or (model.split("/", 1)[0] if "/" in model else "")
    try:
        supported = frozenset(litellm.get_supported_openai_params(model=model, custom_llm_provider=resolved) or ())
    except Exception:
        supported = frozenset()
    if logprobs_denied(model, resolved):
        supported -= _LOGPROB_PARAMS
    price = None
    bare = model.split("/", 1)[1] if "/" in model else model
    for key in (model, bare, f"{resolved}/{bare}"):
        info = litellm.model_cost.get(key)
        if info and info.get("output_cost_per_token") is not None:
            price = float(info["output_cost_per_token"]) * 1e6
            break
    return resolved, supported, price


def provider_of(kwargs: Mapping[str, Any]) -> str:
    """LiteLLM's provider for the deployment in these kwargs (`hosted_vllm`, `openai`, ...)."""
    provider = kwargs.get("custom_llm_provider")
    api_base = kwargs.get("api_base")
    return _provider_facts(str(kwargs.get("model") or ""), provider if isinstance(provider, str) else None,
                           api_base if isinstance(api_base, str) else None)[0]


def target_of(kwargs: Mapping[str, Any], call_type: Any = None) -> Target:
    """Describe the deployment LiteLLM's router picked for this call."""
    model = str(kwargs.get("model") or "")
    provider = kwargs.get("custom_llm_provider")
    api_base = kwargs.get("api_base")
    resolved, supported, price = _provider_facts(model, provider if isinstance(provider, str) else None,
                                                 api_base if isinstance(api_base, str) else None)
    model_info = kwargs.get("model_info") or {}
    if isinstance(model_info, Mapping) and model_info.get("output_cost_per_token") is not None:
        price = float(model_info["output_cost_per_token"]) * 1e6
    meta = kwargs.get("metadata") if isinstance(kwargs.get("metadata"), Mapping) else kwargs.get("litellm_metadata")
    group = (meta or {}).get("model_group") if isinstance(meta, Mapping) else None
    backend = model_info.get("rllm_backend") if isinstance(model_info, Mapping) else None
    deployment = model if "/" in model or not resolved else f"{resolved}/{model}"
    base_model = model_info.get("base_model") if isinstance(model_info, Mapping) else None
    if isinstance(base_model, str) and logprobs_denied(base_model, resolved):
        supported -= _LOGPROB_PARAMS
    return Target(
        model_group=group or model,
        provider=resolved,
        deployment_model=deployment,
        output_cost_per_mtok=price,
        supported_params=supported | (_LOGPROB_PARAMS if backend == "vllm" else frozenset()),
        vllm_family=resolved in VLLM_PROVIDERS or backend == "vllm",
        stream=bool(kwargs.get("stream")),
        completions=call_type_name(call_type) in TEXT_CALLS,
    )


def call_type_name(call_type: Any) -> Optional[str]:
    value = getattr(call_type, "value", call_type)
    return value if isinstance(value, str) else None


