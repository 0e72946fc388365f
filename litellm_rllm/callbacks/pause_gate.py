"""The tracer's pre-call gate for paused model groups (`trainer/pause.py`), in LiteLLM terms:
a refused call becomes an HTTP 429/503 with `Retry-After`, an admitted one carries its
in-flight ticket on its call state (released when the call ends, `calls.py`) and the policy
version it starts under. Anything unexpected admits the call (fail open) and is counted."""

from __future__ import annotations

import logging
from typing import Any, Optional

from fastapi import HTTPException

from ..trainer.pause import PauseRefused
from .calls import CallState
from .plugin import plugin

log = logging.getLogger("litellm_rllm")


async def admit_call(state: Optional[CallState], data: dict[str, Any]) -> None:
    """Wait or refuse while the call's model group is paused; raises `HTTPException`."""
    p = plugin()
    model = data.get("model") if isinstance(data.get("model"), str) else None
    try:
        ticket = await p.gate.admit(model)
    except PauseRefused as refused:
        if state is not None:
            p.calls.end(state.call_id)  # never sent upstream: no trace, no retry orphan
        raise HTTPException(status_code=refused.status, detail=refused.message, headers=refused.headers()) from None
    except Exception:
        p.counters["pause_gate_errors"] += 1
        log.exception("litellm-rllm: pause gate failed; call admitted")
        return
    if state is None:
        ticket.release()
        return
    state.ticket = ticket
    state.policy_start = p.live.version_for(model)  # refined when the deployment is chosen
