"""`litellm-rllm demo-upstream`: the fake vLLM as a local server for the quick start.

Why: a newcomer's first trace should show what the plugin is for (prompt token ids, completion
token ids, logprobs) without a GPU or an API key. This serves the same vLLM wire format the test
suite is built on (`litellm_rllm.demo.vllm`), answering every model name with one fixed sentence
whose ids and logprobs follow the rules in `litellm_rllm.demo`. It is not a language model.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Optional, TextIO

from litellm_rllm.demo import server
from litellm_rllm.demo.vllm import FakeVLLM

DEMO_REPLY = "Hello from the litellm-rllm demo upstream: each word of this reply is one token with its id and logprob."


def build(reply: Optional[str] = None, tokens_per_step: int = 1, step_delay: float = 0.0) -> FakeVLLM:
    """The demo server's app: a fake vLLM that keeps no request log (it may run for days)."""
    return FakeVLLM("demo", reply=reply or DEMO_REPLY, tokens_per_step=tokens_per_step, step_delay=step_delay,
                    max_recorded=0)


def serve(host: str = "127.0.0.1", port: int = 8000, reply: Optional[str] = None, tokens_per_step: int = 1,
          step_delay: float = 0.0, out: TextIO = sys.stdout) -> int:
    """Serve until SIGINT / SIGTERM; 0 then. An address in use raises OSError (the caller says so)."""
    running = server.start(build(reply, tokens_per_step, step_delay), port=port, host=host)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"litellm-rllm demo upstream: vLLM's OpenAI-compatible format on {running.api_base}\n"
          "  chat and completions (streamed or not) with prompt_token_ids, token_ids, logprobs and\n"
          "  top_logprobs; any model name; always the same reply (it is a wire-format server, not a model).\n"
          "  Ctrl-C stops it.", file=out, flush=True)
    try:
        while not done.wait(0.5):
            if running._thread is None or not running._thread.is_alive():
                return 1
    finally:
        running.stop()
    return 0
