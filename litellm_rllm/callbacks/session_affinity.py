"""`litellm_rllm.callbacks.affinity`: the stateless session pin (`litellm_rllm.affinity`) as a
LiteLLM router filter, for fleets without Redis.

LiteLLM's router asks every `callbacks:` entry to filter a model group's healthy deployments
(`async_filter_deployments`, after cooldowns are applied and before its routing strategy
picks), so narrowing the list to one deployment is how a callback routes, from the YAML alone.
Calls without a session, and groups of one deployment, are left to LiteLLM.
"""

from __future__ import annotations

from typing import Any, Optional

from litellm.integrations.custom_logger import CustomLogger

from ..affinity import SessionPinner, is_first_call
from .plugin import plugin


def session_of(request_kwargs: Optional[dict]) -> Optional[str]:
    """The session the metadata entry put in LiteLLM's metadata (id, else innermost uid)."""
    for slot in ("metadata", "litellm_metadata"):
        meta = (request_kwargs or {}).get(slot)
        if not isinstance(meta, dict):
            continue
        sid = meta.get("session_id")
        if sid:
            return str(sid)
        uids = (meta.get("rllm") or {}).get("session_uids") if isinstance(meta.get("rllm"), dict) else None
        if uids:
            return str(uids[-1])
    return None


def deployment_id(deployment: dict) -> str:
    info = deployment.get("model_info") or {}
    return str(info.get("id") or (deployment.get("litellm_params") or {}).get("api_base") or id(deployment))


class SessionAffinityCallback(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        cfg = plugin().settings
        self.pinner = SessionPinner(load_factor=cfg.session_pin_load_factor, min_load=cfg.session_pin_min_load)
        plugin().affinity = self.pinner

    async def async_filter_deployments(self, model: str, healthy_deployments: list, messages: Any,
                                       request_kwargs: Optional[dict] = None, parent_otel_span: Any = None) -> list:
        if not isinstance(healthy_deployments, list) or len(healthy_deployments) < 2:
            return healthy_deployments
        session = session_of(request_kwargs)
        if session is None:
            return healthy_deployments
        by_id = {deployment_id(d): d for d in healthy_deployments}
        chosen = self.pinner.choose(f"{model}\x00{session}", list(by_id), is_first_call(messages))
        self.pinner.started((request_kwargs or {}).get("litellm_call_id"), chosen)
        return [by_id[chosen]]

    async def async_log_success_event(self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.pinner.finished(kwargs.get("litellm_call_id"))

    async def async_log_failure_event(self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.pinner.finished(kwargs.get("litellm_call_id"))
