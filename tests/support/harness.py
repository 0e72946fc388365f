"""Run the real LiteLLM proxy with our plugin: in-process (ASGI app + TestClient) or as a
`litellm --config` subprocess, against the fake upstreams on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import httpx
import yaml

from litellm_rllm import store

REPO = Path(__file__).resolve().parents[2]
# One key per run, shared with child processes (a benchmark's load generator) via the environment.
MASTER_KEY = os.environ.setdefault("RLLM_HARNESS_MASTER_KEY", "sk-rllm-test-" + secrets.token_hex(16))

RLLM_CALLBACKS = [
    "litellm_rllm.callbacks.metadata",
    "litellm_rllm.callbacks.sampling",
    "litellm_rllm.callbacks.tracer",
]

TEST_POLICIES = {
    "defaults": {"logprobs": "auto", "return_token_ids": "auto", "strip_from_response": True},
    "rules": [
        {"name": "vllm", "match": {"provider": "hosted_vllm"}, "logprobs": True, "return_token_ids": True},
        {"name": "anthropic", "match": {"provider": "anthropic"}, "logprobs": False},
    ],
}


def model_list(vllm: str, openai: str, anthropic: str) -> list[dict[str, Any]]:
    """Model groups every proxy test config offers. `vllm`/`openai`: api_base with /v1."""

    def vllm_model(name: str, served: str, **extra: Any) -> dict[str, Any]:
        return {"model_name": name, "litellm_params": {"model": f"hosted_vllm/{served}", "api_base": vllm,
                                                          "api_key": "fake-vllm-key", **extra}}

    return [
        {"model_name": "demo", "litellm_params": {"model": "openai/demo", "api_key": "not-needed",
                                                   "mock_response": "Hello from the demo model."}},
        vllm_model("policy", "policy"),
        vllm_model("policy-fail-500", "fail-500"),
        vllm_model("policy-slow", "slow-5", timeout=1, stream_timeout=1),
        vllm_model("policy-break-stream", "break-stream"),
        vllm_model("policy-drip", "drip-0.05-tokens-400"),
        vllm_model("policy-long", "tokens-1500"),  # a reply over the build process's 64 KiB
        {"model_name": "teacher", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": openai,
                                                      "api_key": "sk-fake-openai-key"}},
        {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-sonnet-4-5", "api_base": anthropic,
                                                     "api_key": "sk-ant-fake-key"}},
        # The providers' real hosts: only ever reached through vcrpy cassettes (tests/proxy/test_cassettes.py);
        # real keys are used only when re-recording (see cassettes/README.md).
        {"model_name": "openai-recorded", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_key": os.environ.get("OPENAI_API_KEY") or "sk-cassette-replay"}},
        {"model_name": "anthropic-recorded", "litellm_params": {
            "model": "anthropic/claude-3-5-haiku-20241022",
            "api_key": os.environ.get("ANTHROPIC_API_KEY") or "sk-ant-cassette-replay"}},
    ]


def write_config(
    folder: Path,
    *,
    upstreams: dict[str, str],
    store_url: str,
    callbacks: Optional[list[str]] = None,
    policies: Optional[dict[str, Any]] = None,
    extra_settings: Optional[dict[str, Any]] = None,
    litellm_settings: Optional[dict[str, Any]] = None,
    extra_models: Sequence[dict[str, Any]] = (),
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policies.yaml").write_text(yaml.safe_dump(policies if policies is not None else TEST_POLICIES))
    config = {
        "model_list": [*model_list(upstreams["vllm"], upstreams["openai"], upstreams["anthropic"]), *extra_models],
        "litellm_settings": {"callbacks": callbacks if callbacks is not None else list(RLLM_CALLBACKS),
                             "num_retries": 0, **(litellm_settings or {})},
        "callback_settings": {"litellm_rllm": {"store": store_url, "policies_file": "policies.yaml",
                                               **(extra_settings or {})}},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
        # a test that makes a deployment fail must not cool it down for the next test
        "router_settings": {"disable_cooldowns": True},
    }
    path = folder / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def proxy_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    for var in ("RLLM_STORE_URL", "CONFIG_FILE_PATH", "RLLM_POLICIES_FILE"):  # a subprocess has its own
        env.pop(var, None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {MASTER_KEY}"}


def read_traces(store_url: str, session: Optional[str] = None, team: Optional[str] = None) -> list[Any]:
    st = store.open(store_url)
    try:
        return st.traces(session=session, team=team)
    finally:
        st.close()


class ProxyProcess:
    """`litellm --config FILE --port N` as a subprocess; logs go to a file next to the config."""

    def __init__(self, config: Path, *, env: Optional[dict[str, str]] = None, port: Optional[int] = None,
                 args: tuple[str, ...] = (), wrapper: Sequence[str] = (), preexec_fn: Any = None,
                 log_path: Optional[Path] = None) -> None:
        self.config = config
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or config.parent / f"proxy-{self.port}.log"
        exe = shutil.which("litellm", path=str(Path(sys.executable).parent)) or "litellm"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*wrapper, exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=str(config.parent), env=env or proxy_env(), stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> "ProxyProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.base_url + "/health/liveliness", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"proxy not ready after {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = 15, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ProxyProcess":
        return self.wait_ready()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def iter_sse(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: "):
            yield line[6:]
