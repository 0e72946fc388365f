"""A real Redis server for the fleet tests: ``redis-server`` on a free 127.0.0.1 port, no
persistence, stopped (and restartable) by the test.

Loaded as a pytest plugin (``pytest_plugins`` in conftest.py); fixture ``redis_server`` gives a
started ``RedisServer``. ``scripts/test.sh`` installs the Debian package ``redis-server`` when
the binary is missing. In CI (``CI`` set) a missing server fails the tests; elsewhere they are
skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` binary, or it would not start."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` listening on 127.0.0.1:``port`` only; ``stop()`` / ``start()``."""

    def __init__(self, port: Optional[int] = None) -> None:
        exe = os.environ.get("RLLM_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(exe, os.X_OK):
            raise RedisUnavailable("redis-server not found (Debian: apt-get install redis-server; scripts/test.sh does it)")
        self.exe = exe
        self.port = port or _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rllm-redis-"))
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self, timeout: float = 20.0) -> "RedisServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "yes", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with {self.proc.returncode}: {self.log()[-2000:]}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisUnavailable(f"redis-server not ready after {timeout}s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def keys(self, pattern: str = "*") -> list[str]:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
        try:
            return list(client.scan_iter(pattern))
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer().start()
    except RedisUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI and could not start: {exc}", pytrace=False)
        pytest.skip(f"no Redis server for the tests: {exc}")
    try:
        yield server
    finally:
        server.destroy()
