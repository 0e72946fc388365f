"""`litellm_rllm.callbacks.tracer`: every call -> one trace -> the store.

The hooks only collect references (the request, the deployment's kwargs, the response's parts,
the stream's packed arrays); the trace is built and written by the background writer.
"""

from __future__ import annotations

from typing import Any, Optional

from litellm.integrations.custom_logger import CustomLogger

import logging

from . import pipeline, runtime, upstream_tap
from .sampling_policy import provider_of
from .pipeline import TRACER, calls
from .routes import install_rllm_routes, install_slug_route

log = logging.getLogger("litellm_rllm")


@pipeline.with_final_hooks
class TraceCaptureCallback(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        cfg = runtime.settings()
        calls.enroll(TRACER)
        runtime.writer()  # open the store at start: a bad store URL fails the start, not a request
        # Alone (without the metadata callback) the tracer still honours /meta/{slug}/ URLs.
        install_slug_route(cfg.slug_header, runtime.check_slug)
        install_rllm_routes()

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> Any:
        pipeline.begin(data, user_api_key_dict)
        return data

    async def async_pre_call_deployment_hook(self, kwargs: dict, call_type: Any) -> Optional[dict]:
        state = calls.get(pipeline.call_id_of(kwargs))
        if state is None:
            return None
        state.upstream = kwargs  # a reference: later hooks' edits are what went upstream
        if runtime.settings().raw_capture:
            try:
                upstream_tap.install(kwargs, provider_of(kwargs), call_type)
            except Exception:  # fall back to LiteLLM's chunks; never fail the call
                pipeline.counters["capture_errors"] += 1
                log.exception("litellm-rllm: could not tap the upstream stream")
        return None
