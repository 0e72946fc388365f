"""`litellm-rllm demo-upstream`: the package's fake vLLM served as a process, with the token data
a newcomer should see (prompt ids, completion ids, logprobs, top_logprobs), streamed or not."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from typing import Any, Iterator

import httpx
import pytest

from litellm_rllm.demo.common import EOS, chat_prompt_token_ids, completion_prompt_token_ids, sampled_logprob, word_id
from litellm_rllm.demo.upstream import DEMO_REPLY
from tests.system.cli_support import cli_env, run_cli

MESSAGES = [{"role": "user", "content": "hi"}]
REPLY_IDS = [word_id(w) for w in DEMO_REPLY.split()] + [EOS]


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """The command as the quick start runs it, on a free port; yields its api_base."""
    proc = subprocess.Popen([sys.executable, "-m", "litellm_rllm.cli", "demo-upstream", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"on (http://127\.0\.0\.1:\d+/v1)", first)
        assert match, first + (proc.stderr.read() if proc.stderr else "")
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def _stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=30) as resp:
        assert resp.status_code == 200
        return [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]


def test_chat_reply_carries_prompt_ids_token_ids_and_logprobs(demo):
    body = httpx.post(demo + "/chat/completions", timeout=30, json={
        "model": "demo", "messages": MESSAGES, "logprobs": True, "top_logprobs": 2, "return_token_ids": True}).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == DEMO_REPLY
    assert body["prompt_token_ids"] == chat_prompt_token_ids(MESSAGES)
    assert choice["token_ids"] == REPLY_IDS
    logprobs = [c["logprob"] for c in choice["logprobs"]["content"]]
    assert logprobs == [sampled_logprob(0, j) for j in range(len(REPLY_IDS))]
    assert all(len(c["top_logprobs"]) == 2 for c in choice["logprobs"]["content"])


def test_chat_stream_carries_the_same_token_data(demo):
    chunks = _stream(demo + "/chat/completions", {"model": "demo", "messages": MESSAGES, "logprobs": True,
                                                  "return_token_ids": True})
    assert chunks[0]["prompt_token_ids"] == chat_prompt_token_ids(MESSAGES)
    ids = [i for c in chunks for ch in c["choices"] for i in (ch.get("token_ids") or [])]
    assert ids == REPLY_IDS
    assert "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"]) == DEMO_REPLY


def test_completions_streamed_or_not(demo):
    prompt = "say hello"
    body = httpx.post(demo + "/completions", timeout=30, json={
        "model": "demo", "prompt": prompt, "max_tokens": 64, "logprobs": 1, "return_token_ids": True}).json()
    choice = body["choices"][0]
    assert choice["prompt_token_ids"] == completion_prompt_token_ids(prompt) and choice["token_ids"] == REPLY_IDS
    assert len(choice["logprobs"]["token_logprobs"]) == len(REPLY_IDS)
    chunks = _stream(demo + "/completions", {"model": "demo", "prompt": prompt, "max_tokens": 64,
                                            "return_token_ids": True})
    assert [i for c in chunks for ch in c["choices"] for i in (ch.get("token_ids") or [])] == REPLY_IDS


def test_a_port_in_use_is_one_error_line(demo):
    port = demo.rsplit(":", 1)[1].split("/")[0]
    proc = run_cli("demo-upstream", "--port", port, timeout=30)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: ") and f"127.0.0.1:{port}" in line
