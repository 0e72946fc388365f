"""The README's Quick start, run as written: its bash blocks, taken from the README itself, in a
clean folder. The proxy is `scripts/serve.sh` (the real `litellm --config configs/rllm.yaml`),
the upstream is `litellm-rllm demo-upstream`, and the first trace has token ids and logprobs.

Changed from the README, and only this: the ports (4000 and 8000 become free ports, in the
commands and in the copied configs/rllm.yaml), and `serve.sh` listens on 127.0.0.1. `.venv`
holds this environment's `litellm` and `litellm-rllm` (and a `python` that refuses to install,
so the script's "installed already" path is the one taken); this checkout's package comes first
on PYTHONPATH; LiteLLM's packaged cost map is used (the test machine is offline).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from litellm_rllm.demo.common import EOS, chat_prompt_token_ids, sampled_logprob, word_id
from litellm_rllm.demo.upstream import DEMO_REPLY
from tests.support.harness import free_port
from tests.system.cli_support import REPO

INSTALLED = 1_000_000_000
NO_INSTALL = "#!/bin/sh\necho 'stub python: serve.sh tried to install' >&2\nexit 97\n"


def quick_start_blocks(readme: str) -> list[str]:
    """The ```bash blocks of the README's "## Quick start" section, in order."""
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def checkout(folder: Path, demo_port: int) -> Path:
    """What a user has after cloning and a first `serve.sh`: configs, scripts, an installed .venv."""
    shutil.copytree(REPO / "configs", folder / "configs", ignore=shutil.ignore_patterns("deploy"))
    config = folder / "configs" / "rllm.yaml"
    text = config.read_text()
    assert "http://127.0.0.1:8000/v1" in text
    config.write_text(text.replace("http://127.0.0.1:8000/v1", f"http://127.0.0.1:{demo_port}/v1"))
    (folder / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "serve.sh", folder / "scripts")
    (folder / "requirements").mkdir()
    shutil.copy(REPO / "requirements" / "constraints.txt", folder / "requirements")
    shutil.copy(REPO / "pyproject.toml", folder)
    for f in (folder / "pyproject.toml", folder / "requirements" / "constraints.txt"):
        os.utime(f, (INSTALLED, INSTALLED))
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    here = Path(sys.executable).parent
    for name in ("litellm", "litellm-rllm"):
        found = shutil.which(name, path=str(here))
        if found is None:
            pytest.fail(f"{name} is not installed next to {sys.executable}")
        (bin_dir / name).symlink_to(found)
    (bin_dir / "python").write_text(NO_INSTALL)
    (bin_dir / "python").chmod(0o755)
    return folder


def env_for_user() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RLLM_", "LITELLM_", "VLLM_")) and k not in ("CONFIG_FILE_PATH",)}
    env.update({"PYTHONPATH": str(REPO), "PYTHON": sys.executable, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    return env


def start(block: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - closed by the caller through the process' lifetime
    return subprocess.Popen(["bash", "-c", block], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_line(log: Path, proc: subprocess.Popen[bytes], pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if re.search(pattern, text, flags=re.M):
            return text
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before {pattern!r}:\n{text[-4000:]}")
        time.sleep(0.25)
    pytest.fail(f"no {pattern!r} after {timeout}s:\n{log.read_text(errors='replace')[-4000:]}")


def stop(proc: Optional[subprocess.Popen[bytes]]) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started for it
        proc.wait(10)


def substituted(block: str, old: str, new: str) -> str:
    assert old in block, f"the README's quick start changed: {old!r} not in\n{block}"
    return block.replace(old, new)


def test_readme_quick_start_gives_a_trace_with_token_ids_and_logprobs(tmp_path):
    if shutil.which("curl") is None:
        pytest.fail("curl is needed (scripts/test.sh installs it)")
    serve_block, demo_block, client_block = quick_start_blocks((REPO / "README.md").read_text())
    proxy_port, demo_port = free_port(), free_port()
    folder = checkout(tmp_path / "litellm-rllm", demo_port)
    env = env_for_user()
    serve_block = substituted(serve_block, "bash scripts/serve.sh",
                              f"bash scripts/serve.sh --port {proxy_port} --host 127.0.0.1")
    demo_block = substituted(demo_block, "--port 8000", f"--port {demo_port}")
    client_block = substituted(client_block, "localhost:4000", f"localhost:{proxy_port}")

    serve = demo = None
    try:
        serve = start(serve_block, folder, env, tmp_path / "serve.log")
        demo = start(demo_block, folder, env, tmp_path / "demo.log")
        wait_for_line(tmp_path / "demo.log", demo, r"^litellm-rllm demo upstream: .* on http://", 60)
        served = wait_for_line(tmp_path / "serve.log", serve, r"^export LITELLM_MASTER_KEY=", 240)
        assert "tried to install" not in served
        run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", client_block], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        stop(serve)
        stop(demo)

    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    reply, flushed, trace = lines[0], lines[1], lines[-1]
    assert reply["choices"][0]["message"]["content"] == DEMO_REPLY
    assert "token_ids" not in reply["choices"][0] and not reply["choices"][0].get("logprobs")  # hidden
    assert flushed["flushed"] is True
    assert len(lines) == 3, run.stdout  # one trace in session demo-1
    messages = [{"role": "user", "content": "hi"}]
    ids = [word_id(w) for w in DEMO_REPLY.split()] + [EOS]
    assert trace["session_id"] == "demo-1" and trace["metadata"] == {"task": "hello"}
    assert trace["status"] == "ok" and trace["model"] == "demo"
    assert trace["api_base"].startswith(f"http://127.0.0.1:{demo_port}")
    assert trace["prompt_token_ids"] == chat_prompt_token_ids(messages)
    choice = trace["choices"][0]
    assert choice["token_ids"] == ids
    assert choice["logprobs"] == [sampled_logprob(0, j) for j in range(len(ids))]
    assert trace["injected"]["logprobs"] is True and trace["injected"]["return_token_ids"] is True
    if choice.get("completeness") is not None:
        assert choice["completeness"]["ok"] is True
