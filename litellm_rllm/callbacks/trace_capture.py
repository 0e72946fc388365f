"""`litellm_rllm.callbacks.tracer`: every call -> one trace -> the store.

The hooks only collect references (the request, the deployment's kwargs, the response's parts,
the stream's packed arrays); the trace is built and written by the background writer.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from litellm.integrations.custom_logger import CustomLogger

from . import upstream_tap
from .deployment import provider_of
from .finish import TRACER, begin, enroll
from .pause_gate import admit_call
from .plugin import plugin
from .request_data import call_id_of
from .rllm_api import install_rllm_routes
from .slug_route import install_slug_route

log = logging.getLogger("litellm_rllm")


class TraceCaptureCallback(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.plugin = plugin()
        enroll(self, TRACER)  # the first entry to enroll carries the final hooks
        self.plugin.writer  # open the store at start: a bad store URL fails the start, not a request
        # Alone (without the metadata entry) the tracer still honours /meta/{slug}/ URLs.
        install_slug_route(self.plugin.settings.slug_header, self.plugin.check_slug)
        install_rllm_routes(self.plugin)
        self.plugin.start_retention()
        self.plugin.live.start()  # policy versions and pauses from the store, every proxy alike

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> Any:
        await admit_call(begin(data, user_api_key_dict), data)  # waits / refuses while the group is paused
        return data

    async def async_pre_call_deployment_hook(self, kwargs: dict, call_type: Any) -> Optional[dict]:
        state = self.plugin.calls.get(call_id_of(kwargs))
        if state is None:
            return None
        state.upstream = kwargs  # a reference: later hooks' edits are what went upstream
        model = (state.client_request or {}).get("model")
        state.policy_start = self.plugin.live.version_for(model if isinstance(model, str) else None)
        if self.plugin.settings.raw_capture:
            try:
                upstream_tap.install(kwargs, provider_of(kwargs), call_type)
            except Exception:  # fall back to LiteLLM's chunks; never fail the call
                self.plugin.counters["capture_errors"] += 1
                log.exception("litellm-rllm: could not tap the upstream stream")
        return None
