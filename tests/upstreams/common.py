"""Re-export of ``litellm_rllm.demo.common`` (the one implementation; see ``tests/upstreams/__init__.py``)."""

from litellm_rllm.demo.common import *  # noqa: F401,F403
