"""Re-export of ``litellm_rllm.demo.vllm`` (the one implementation; see ``tests/upstreams/__init__.py``).

``python -m tests.upstreams.vllm ...`` still serves it (benchmarks start it that way)."""

from litellm_rllm.demo.vllm import *  # noqa: F401,F403
from litellm_rllm.demo.vllm import main

if __name__ == "__main__":
    main()
