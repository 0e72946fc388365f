"""Readers of LiteLLM's per-request dicts (`data` in the hooks, the deployment kwargs): where
its call id, metadata slot, headers, route and caller are, and the call's session metadata."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

from ..slug import SlugError

RLLM_META_KEY = "rllm"  # where the decoded slug sits inside LiteLLM's request metadata


def call_id_of(data: Mapping[str, Any]) -> Optional[str]:
    cid = data.get("litellm_call_id")
    return str(cid) if cid else None


def metadata_slot(data: Mapping[str, Any]) -> str:
    """LiteLLM's metadata key for this request: `litellm_metadata` on /v1/messages,
    /v1/responses, ...; `metadata` elsewhere (there the body's `metadata` is the provider's)."""
    if isinstance(data.get("litellm_metadata"), dict):
        return "litellm_metadata"
    return "metadata"


def request_headers(data: Mapping[str, Any]) -> Mapping[str, Any]:
    psr = data.get("proxy_server_request")
    headers = psr.get("headers") if isinstance(psr, Mapping) else None
    return headers if isinstance(headers, Mapping) else {}


def route_of(data: Mapping[str, Any]) -> Optional[str]:
    psr = data.get("proxy_server_request")
    url = psr.get("url") if isinstance(psr, Mapping) else None
    if not isinstance(url, str):
        return None
    path = url.split("://", 1)[-1]
    path = path[path.find("/"):] if "/" in path else "/"
    return path.split("?", 1)[0]


def session_of(data: Mapping[str, Any], header: str, check_slug: Callable[[str], Any]) -> dict[str, Any]:
    """The call's slug metadata: as the metadata callback stored it, else from the header."""
    for slot in ("litellm_metadata", "metadata"):
        meta = data.get(slot)
        if isinstance(meta, Mapping) and isinstance(meta.get(RLLM_META_KEY), Mapping):
            return dict(meta[RLLM_META_KEY])
    slug = request_headers(data).get(header)
    if not slug:
        return {}
    try:
        return check_slug(slug).as_dict()
    except SlugError:
        return {}


def caller_of(user_api_key_dict: Any) -> Optional[dict[str, Any]]:
    """Who called, as LiteLLM resolved it; never the key itself."""
    if user_api_key_dict is None:
        return None
    out = {
        "key_alias": getattr(user_api_key_dict, "key_alias", None),
        "team_id": getattr(user_api_key_dict, "team_id", None),
        "user_id": getattr(user_api_key_dict, "user_id", None),
    }
    return {k: v for k, v in out.items() if v is not None} or None


def error_of(exc: BaseException) -> dict[str, Any]:
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc)
    return {
        "type": type(exc).__name__,
        "message": str(message)[:4000],
        "status_code": status if isinstance(status, int) else None,
    }
