"""Re-export of ``litellm_rllm.demo.server`` (the one implementation; see ``tests/upstreams/__init__.py``)."""

from litellm_rllm.demo.server import *  # noqa: F401,F403
