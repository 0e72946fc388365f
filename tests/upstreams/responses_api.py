"""Re-export of ``litellm_rllm.demo.responses_api`` (the one implementation; see ``tests/upstreams/__init__.py``)."""

from litellm_rllm.demo.responses_api import *  # noqa: F401,F403
