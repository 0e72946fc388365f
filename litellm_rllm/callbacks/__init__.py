"""The YAML entries: `litellm_rllm.callbacks.metadata`, `.sampling`, `.tracer`, and `.affinity`
(the stateless session pin for fleets without Redis, docs/fleet.md).

LiteLLM resolves `a.b.c` as attribute `c` of module `a.b` and wants a `CustomLogger` instance.
The instances are created on first access (PEP 562), once per process (held by the plugin),
so a proxy that registers only some of them pays only for those (no store is opened without
the tracer, no policy file read without the sampling entry). Each entry works alone and with
the others, in any order.

This package is the LiteLLM layer: the entries (`session_metadata`, `sampling_policy`,
`trace_capture`) over plain modules that never import one another's entry: `plugin` (process
state), `calls` (per-call state), `request_data` (readers of LiteLLM's dicts), `deployment`
(facts of the chosen deployment), `finish` (end of a call), `strip` (hiding injected fields),
`upstream_tap` (the tee transport), `slug_route` and `rllm_api` (routes), `shutdown`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["metadata", "sampling", "tracer", "affinity"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .plugin import plugin

    entries = plugin().entries
    if name not in entries:
        if name == "metadata":
            from .session_metadata import SessionMetadataCallback as cls
        elif name == "sampling":
            from .sampling_policy import SamplingPolicyCallback as cls
        elif name == "affinity":
            from .session_affinity import SessionAffinityCallback as cls
        else:
            from .trace_capture import TraceCaptureCallback as cls
        entries[name] = cls()
    return entries[name]
