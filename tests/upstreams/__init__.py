"""Local fake LLM upstreams (vLLM, OpenAI, Anthropic) for tests and benchmarks.

The vLLM fake and the shared pieces live in the package (``litellm_rllm.demo``: one
implementation, also served by ``litellm-rllm demo-upstream``); ``common``, ``server``,
``responses_api`` and ``vllm`` here re-export them, so ``tests.upstreams.vllm`` and
``python -m tests.upstreams.vllm`` keep working. The OpenAI and Anthropic fakes are test-only.

Use in tests: ``from tests.upstreams.fixtures import *`` in a conftest gives the fixtures
``vllm_upstream``, ``openai_upstream``, ``anthropic_upstream`` (session servers, request log
cleared per test) and ``start_upstream`` (a factory for custom servers). By hand:
``with server.start(FakeVLLM(tokens=16)) as up: ... up.api_base ... up.requests``.
As a process: ``python -m tests.upstreams.vllm --port 0 --tokens 256`` (prints ``READY <url>``).

Deterministic rules (ids, logprobs, replies, stream steps, tool calls): see ``litellm_rllm.demo``.
"""
