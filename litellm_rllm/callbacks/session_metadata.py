"""`litellm_rllm.callbacks.metadata`: slug (URL prefix or header) -> the request's metadata.

The `/meta/{slug}/...` route (installed here) validates the slug and moves it into the header;
the pre-call hook decodes it into LiteLLM's metadata slot for the route, so LiteLLM's other
loggers see it too: user keys as given and `session_id` where Langfuse and others look for it,
plus the whole decoded object under `metadata["rllm"]` for our tracer.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from ..slug import SlugError
from .plugin import plugin
from .request_data import RLLM_META_KEY, metadata_slot, request_headers
from .slug_route import install_slug_route


class SessionMetadataCallback(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.plugin = plugin()
        self.route = install_slug_route(self.plugin.settings.slug_header, self.plugin.check_slug)

    # Defined on this class itself: LiteLLM skips an inherited override of this hook.
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> Any:
        slug = request_headers(data).get(self.plugin.settings.slug_header)
        if not slug:
            return data
        try:
            meta = self.plugin.check_slug(slug).as_dict()
        except SlugError as exc:
            raise HTTPException(status_code=exc.status_code, detail=exc.to_response()["error"]) from None
        slot = metadata_slot(data)
        target = data.get(slot)
        if not isinstance(target, dict):
            target = data[slot] = {}
        target.update(meta)
        target[RLLM_META_KEY] = meta
        return data
