"""`litellm_rllm.callbacks.sampling`: add logprobs / top_logprobs / return_token_ids /
prompt_logprobs per deployment, by the YAML policies, and hide them from clients that didn't ask.

The decision is made in `async_pre_call_deployment_hook`, after LiteLLM's router has chosen the
deployment: a model group may balance over a vLLM server and a hosted API, and only the chosen
deployment says which parameters are safe to add.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

from litellm.integrations.custom_logger import CustomLogger

from ..capture.response import RESPONSES_LOGPROBS
from ..policy import INJECTABLE, decide
from .deployment import TEXT_CALLS, call_type_name, target_of
from .finish import SAMPLING, begin, call_session, enroll
from .plugin import plugin
from .request_data import call_id_of
from .strip import VLLM_FORMS

log = logging.getLogger("litellm_rllm")

# Parameters vLLM takes that are not OpenAI's: they travel in `extra_body`.
_NON_OPENAI = frozenset({"return_token_ids", "prompt_logprobs"})

# LiteLLM call types whose request takes chat-style sampling params (`/v1/messages` to a
# non-Anthropic deployment is turned into a chat completion), and the legacy completions API.
# Everything else (embeddings, responses, images, audio, rerank, ...) is sent unchanged.
_CHAT_CALLS = frozenset({"completion", "acompletion", "anthropic_messages", "aanthropic_messages"})
# The Responses API names the same things differently: logprobs are an `include` item (with
# `top_logprobs`), vLLM's token ids come with `enable_response_messages` (input/output
# messages with their `tokens`); there are no prompt logprobs.
_RESPONSES_CALLS = frozenset({"responses", "aresponses"})
# Responses API name -> the policy's name for it (what `strip` hides from the client).
_RESPONSES_STRIP = {"include": "logprobs", "top_logprobs": "top_logprobs", "enable_response_messages": "return_token_ids"}


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


def _apply_responses(kwargs: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Set the policy's params in the Responses API's names; returns exactly what was added,
    in those names (the trace's `injected`)."""
    sent: dict[str, Any] = {}
    if params.get("logprobs"):
        kwargs["include"] = [*(kwargs.get("include") or ()), RESPONSES_LOGPROBS]
        sent["include"] = [RESPONSES_LOGPROBS]
        if kwargs.get("top_logprobs") is None:  # vLLM gives no logprobs at all for a null top_logprobs
            kwargs["top_logprobs"] = sent["top_logprobs"] = params.get("top_logprobs") or 0
    elif params.get("top_logprobs"):
        kwargs["top_logprobs"] = sent["top_logprobs"] = params["top_logprobs"]
    if params.get("return_token_ids"):
        body = dict(kwargs.get("extra_body") or {})
        body["enable_response_messages"] = sent["enable_response_messages"] = True
        kwargs["extra_body"] = body
    return sent


class SamplingPolicyCallback(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.plugin = plugin()
        self.policies = self.plugin.policies  # a bad policies file stops the start here
        enroll(self, SAMPLING)  # the first entry to enroll carries the final hooks

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> Any:
        begin(data, user_api_key_dict)
        return data

    async def async_pre_call_deployment_hook(self, kwargs: dict, call_type: Any) -> Optional[dict]:
        try:
            self._inject(kwargs, call_type)
        except Exception:  # a policy bug must not fail the request: send it as the client sent it
            self.plugin.counters["policy_errors"] += 1
            log.exception("litellm-rllm: policy decision failed; request sent unchanged")
        return None

    def _inject(self, kwargs: dict, call_type: Any = None) -> None:
        cid = call_id_of(kwargs)
        if cid is None:
            return
        name = call_type_name(call_type)
        if name is not None and name not in _CHAT_CALLS | TEXT_CALLS | _RESPONSES_CALLS:
            return  # embeddings, images, audio, ...: no sampling params to add
        responses = name in _RESPONSES_CALLS
        state = self.plugin.calls.get_or_create(cid)
        client = state.client_request if state.client_request is not None else kwargs
        asked = _responses_asked(client) if responses else _asked(client, kwargs)
        override = call_session(kwargs).get("sampling") if kwargs else None
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
            sent = _apply_responses(kwargs, decision.params)
            state.injected = decision.injected(sent)
            strip = tuple(_RESPONSES_STRIP[k] for k in sent) if decision.strip else ()
            state.strip = (*strip, VLLM_FORMS) if strip and target.vllm_family else strip
        else:
            _apply_chat(kwargs, decision.params)
            state.injected = decision.injected()
            state.strip = tuple(decision.params) if decision.strip else ()
        state.upstream = kwargs
