"""The YAML entries: `litellm_rllm.callbacks.metadata`, `.sampling`, `.tracer`.

LiteLLM resolves `a.b.c` as attribute `c` of module `a.b` and wants a `CustomLogger` instance.
The instances are created on first access (PEP 562), so a proxy that registers only some of
them pays only for those (no store is opened without the tracer, no policy file read without
the sampling callback). Each entry works alone and with the others, in any order.
"""

from __future__ import annotations

from typing import Any

__all__ = ["metadata", "sampling", "tracer"]

_instances: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _instances:
        if name == "metadata":
            from .session_metadata import SessionMetadataCallback as cls
        elif name == "sampling":
            from .sampling_policy import SamplingPolicyCallback as cls
        else:
            from .trace_capture import TraceCaptureCallback as cls
        _instances[name] = cls()
    return _instances[name]
