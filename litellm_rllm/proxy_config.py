"""Facts about a LiteLLM proxy YAML that LiteLLM itself does not report: which of our callbacks
it names, and which `os.environ/VAR` references point at unset variables.

Plain Python on the parsed YAML (no LiteLLM import), for `litellm-rllm config check` and for
anything that reports at proxy start.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

OUR_CALLBACKS = (
    "litellm_rllm.callbacks.metadata",
    "litellm_rllm.callbacks.sampling",
    "litellm_rllm.callbacks.tracer",
    "litellm_rllm.callbacks.affinity",
)
ENV_PREFIX = "os.environ/"


def unset_env_refs(cfg: Mapping[str, Any], env: Optional[Mapping[str, str]] = None) -> list[str]:
    """`os.environ/VAR` values of a proxy config whose VAR is unset, one message each.

    LiteLLM reads an unset reference as null without a word: an `api_base` then falls back to
    the provider's default host (api.openai.com for `openai/` and `hosted_vllm/`), a key to none.
    """
    env = os.environ if env is None else env
    out: list[str] = []

    def walk(value: Any, where: str, model: Optional[str]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}" if where else str(k), model)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]", model)
        elif isinstance(value, str) and value.startswith(ENV_PREFIX):
            var = value[len(ENV_PREFIX):]
            if not env.get(var):
                who = f"model {model!r}: " if model else ""
                msg = f"{who}{where} is {value} but {var} is not set"
                if where.endswith(".api_base"):
                    msg += ("; LiteLLM then sends the calls to the provider's default host"
                            " (api.openai.com for openai/ and hosted_vllm/)")
                out.append(msg)

    for i, entry in enumerate(cfg.get("model_list") or []):
        if isinstance(entry, dict):
            walk(entry.get("litellm_params"), f"model_list[{i}].litellm_params", str(entry.get("model_name")))
    for key, value in cfg.items():
        if key != "model_list":
            walk(value, str(key), None)
    return out
