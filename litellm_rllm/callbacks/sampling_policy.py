"""`litellm_rllm.callbacks.sampling`: add logprobs / top_logprobs / return_token_ids /
prompt_logprobs per deployment, by the YAML policies, and hide them from clients that didn't ask.

The decision is made in `async_pre_call_deployment_hook`, after LiteLLM's router has chosen the
deployment: a model group may balance over a vLLM server and a hosted API, and only the chosen
deployment says which parameters are safe to add.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any, Mapping, Optional

import litellm
from litellm.integrations.custom_logger import CustomLogger

from ..policy import INJECTABLE, Target, decide
from . import pipeline, runtime
from .pipeline import SAMPLING, calls

log = logging.getLogger("litellm_rllm")

VLLM_PROVIDERS = frozenset({"hosted_vllm", "vllm"})
# Parameters vLLM takes that are not OpenAI's: they travel in `extra_body`.
_NON_OPENAI = frozenset({"return_token_ids", "prompt_logprobs"})

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

# LiteLLM call types whose request takes chat-style sampling params (`/v1/messages` to a
# non-Anthropic deployment is turned into a chat completion), and the legacy completions API.
# Everything else (embeddings, responses, images, audio, rerank, ...) is sent unchanged.
_CHAT_CALLS = frozenset({"completion", "acompletion", "anthropic_messages", "aanthropic_messages"})
_TEXT_CALLS = frozenset({"text_completion", "atext_completion"})
# The Responses API names the same things differently: logprobs are an `include` item (with
# `top_logprobs`), vLLM's token ids come with `enable_response_messages` (input/output
# messages with their `tokens`); there are no prompt logprobs.
_RESPONSES_CALLS = frozenset({"responses", "aresponses"})
RESPONSES_LOGPROBS = "message.output_text.logprobs"


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
        completions=_call_type_name(call_type) in _TEXT_CALLS,
    )


def _call_type_name(call_type: Any) -> Optional[str]:
    value = getattr(call_type, "value", call_type)
    return value if isinstance(value, str) else None


def _asked(client: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    extra = kwargs.get("extra_body") if isinstance(kwargs.get("extra_body"), Mapping) else {}
    return {k: client.get(k, extra.get(k)) for k in INJECTABLE}


def _responses_asked(client: Mapping[str, Any]) -> dict[str, Any]:
    """What a Responses API client asked for itself, in the policy's terms."""
    extra = client.get("extra_body") if isinstance(client.get("extra_body"), Mapping) else {}
    include = client.get("include") or ()
    return {
        "logprobs": True if RESPONSES_LOGPROBS in include else None,
        "top_logprobs": client.get("top_logprobs"),
        "return_token_ids": client.get("enable_response_messages", extra.get("enable_response_messages")),
        "prompt_logprobs": None,
    }


def _apply_chat(kwargs: dict[str, Any], params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        if key in _NON_OPENAI:
            body = dict(kwargs.get("extra_body") or {})
            body[key] = value
            kwargs["extra_body"] = body
        else:
            kwargs[key] = value


def _apply_responses(kwargs: dict[str, Any], params: Mapping[str, Any]) -> None:
    if params.get("logprobs"):
        kwargs["include"] = [*(kwargs.get("include") or ()), RESPONSES_LOGPROBS]
        kwargs.setdefault("top_logprobs", params.get("top_logprobs") or 0)
    elif params.get("top_logprobs"):
        kwargs["top_logprobs"] = params["top_logprobs"]
    if params.get("return_token_ids"):
        body = dict(kwargs.get("extra_body") or {})
        body["enable_response_messages"] = True
        kwargs["extra_body"] = body


@pipeline.with_final_hooks
class SamplingPolicyCallback(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.policies = runtime.policies()  # a bad policies file stops the start here
        calls.enroll(SAMPLING)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> Any:
        pipeline.begin(data, user_api_key_dict)
        return data

    async def async_pre_call_deployment_hook(self, kwargs: dict, call_type: Any) -> Optional[dict]:
        try:
            self._inject(kwargs, call_type)
        except Exception:  # a policy bug must not fail the request: send it as the client sent it
            pipeline.counters["capture_errors"] += 1
            log.exception("litellm-rllm: policy decision failed; request sent unchanged")
        return None

    def _inject(self, kwargs: dict, call_type: Any = None) -> None:
        cid = pipeline.call_id_of(kwargs)
        if cid is None:
            return
        name = _call_type_name(call_type)
        if name is not None and name not in _CHAT_CALLS | _TEXT_CALLS | _RESPONSES_CALLS:
            return  # embeddings, images, audio, ...: no sampling params to add
        responses = name in _RESPONSES_CALLS
        state = calls.get_or_create(cid)
        client = state.client_request if state.client_request is not None else kwargs
        asked = _responses_asked(client) if responses else _asked(client, kwargs)
        override = pipeline.session_of(kwargs).get("sampling") if kwargs else None
        target = target_of(kwargs, call_type)
        decision = decide(
            self.policies.current,
            target,
            call_id=cid,
            client_params=asked,
            override=override if isinstance(override, Mapping) else None,
        )
        if responses:
            decision.params.pop("prompt_logprobs", None)
            _apply_responses(kwargs, decision.params)
        else:
            _apply_chat(kwargs, decision.params)
        state.injected = decision.injected()
        state.strip = tuple(decision.params) if decision.strip else ()
        state.upstream = kwargs
