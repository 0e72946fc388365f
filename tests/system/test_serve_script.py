"""`scripts/serve.sh`, the first of the README's two commands: installs only when needed, makes
the master key once and keeps it, points `policy` at the demo upstream when VLLM_API_BASE is
unset, and prints the key last, once the proxy answers.

`litellm` is a stand-in here (a process that records its arguments and environment and answers
the health check); `tests/system/test_quick_start.py` runs the script with the real proxy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from tests.support.harness import free_port
from tests.system.cli_support import REPO

STUB_LITELLM = '''#!{python}
import http.server, json, os, signal, sys
args = sys.argv[1:]
port = int(args[args.index("--port") + 1]) if "--port" in args else 4000
with open(os.path.join(os.getcwd(), "litellm-called.json"), "w") as f:
    json.dump({{"args": args, "key": os.environ.get("LITELLM_MASTER_KEY"),
               "vllm": os.environ.get("VLLM_API_BASE")}}, f)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health/liveliness" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Health)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server.serve_forever()
'''
INSTALLED = 1_000_000_000  # the stand-in install's time (file times; seconds)
NO_INSTALL = "#!/bin/sh\necho 'stub python: serve.sh tried to install' >&2\nexit 97\n"


def installed_checkout(folder: Path) -> Path:
    """A checkout copy whose .venv looks installed: scripts newer than pyproject and the pins."""
    (folder / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "serve.sh", folder / "scripts" / "serve.sh")
    (folder / "requirements").mkdir()
    shutil.copy(REPO / "requirements" / "constraints.txt", folder / "requirements" / "constraints.txt")
    shutil.copy(REPO / "pyproject.toml", folder / "pyproject.toml")
    for f in (folder / "pyproject.toml", folder / "requirements" / "constraints.txt"):
        os.utime(f, (INSTALLED - 100, INSTALLED - 100))
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("litellm", STUB_LITELLM.format(python=sys.executable)), ("python", NO_INSTALL),
                       ("litellm-rllm", NO_INSTALL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
        os.utime(bin_dir / name, (INSTALLED, INSTALLED))
    return folder


def serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LITELLM_MASTER_KEY", "VLLM_API_BASE")}
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def run_serve(folder: Path, env: dict[str, str], port: int) -> tuple[list[str], int]:
    """Start serve.sh, read its output until the key line, stop it; (output lines, status)."""
    proc = subprocess.Popen(["bash", str(folder / "scripts" / "serve.sh"), "--port", str(port), "--host", "127.0.0.1"],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("export LITELLM_MASTER_KEY="):
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    lines += rest.splitlines()
    return lines, proc.returncode


def key_line(lines: list[str]) -> Optional[str]:
    return next((line for line in lines if line.startswith("export LITELLM_MASTER_KEY=")), None)


def test_the_key_is_made_once_kept_private_and_printed_last(tmp_path):
    folder = installed_checkout(tmp_path / "repo")
    port = free_port()
    first, status = run_serve(folder, serve_env(), port)
    assert status == 0, first
    key = (folder / ".rllm-master-key").read_text().strip()
    assert key.startswith("sk-") and len(key) > 40
    assert stat.S_IMODE((folder / ".rllm-master-key").stat().st_mode) == 0o600
    assert first[-1] == f"export LITELLM_MASTER_KEY={key}"  # the last line, after the proxy answered
    assert not any("installing" in line for line in first)
    called = json.loads((folder / "litellm-called.json").read_text())
    assert called["key"] == key
    assert called["args"] == ["--config", "configs/rllm.yaml", "--port", str(port), "--host", "127.0.0.1"]
    assert called["vllm"] == "http://127.0.0.1:8000/v1"  # `policy` -> the demo upstream, said so:
    assert any("policy -> the demo upstream" in line for line in first)

    second, status = run_serve(folder, serve_env(VLLM_API_BASE="http://gpu:8000/v1"), port)
    assert status == 0 and key_line(second) == f"export LITELLM_MASTER_KEY={key}"  # the same key
    assert json.loads((folder / "litellm-called.json").read_text())["vllm"] == "http://gpu:8000/v1"


def test_a_set_master_key_wins_and_no_file_is_made(tmp_path):
    folder = installed_checkout(tmp_path / "repo")
    lines, status = run_serve(folder, serve_env(LITELLM_MASTER_KEY="sk-mine-0123456789"), free_port())
    assert status == 0 and key_line(lines) == "export LITELLM_MASTER_KEY=sk-mine-0123456789"
    assert not (folder / ".rllm-master-key").exists()


def test_changed_pins_trigger_an_install(tmp_path):
    folder = installed_checkout(tmp_path / "repo")
    os.utime(folder / "requirements" / "constraints.txt", (INSTALLED + 100, INSTALLED + 100))  # edited since
    lines, status = run_serve(folder, serve_env(), free_port())
    assert status == 97, lines  # the stand-in python refused the pip install serve.sh started
    assert any("installing" in line for line in lines)
