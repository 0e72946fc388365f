"""Build functions the encoder-process tests run in the child (imported there by path)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

from litellm_rllm.trace import Trace


def build(item: dict[str, Any]) -> Optional[Trace]:
    """A dict item -> a Trace, with switches for the failure cases."""
    if item.get("raise"):
        raise RuntimeError(f"build refused {item['id']}")
    if item.get("skip"):
        return None
    if item.get("hang_in_child") and os.getpid() != item["parent_pid"]:
        time.sleep(3600)
    return Trace(trace_id=item["id"], session_id="s", metadata={
        "built_in": "child" if os.getpid() != item.get("parent_pid") else "parent",
        "litellm_imported": "litellm" in sys.modules,
        "payload_bytes": len(b"".join(item.get("parts", ()))),
    })


def build_trace_probe(record: Any) -> Optional[Trace]:
    """The plugin's own build function, reporting whether it needed LiteLLM in this process."""
    from litellm_rllm.builder import build_trace

    trace = build_trace(record)
    trace.metadata["litellm_imported"] = "litellm" in sys.modules
    return trace
