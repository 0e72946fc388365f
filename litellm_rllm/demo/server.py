"""Serve an ASGI app with uvicorn on 127.0.0.1, in a background thread or as the main process.

Why: tests need real sockets (LiteLLM talks HTTP to its upstreams) but must start in
milliseconds and stop cleanly, many times per session. The socket is bound here first (port 0
= a free port, no race with other servers), then handed to uvicorn.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Optional

import uvicorn


class RunningServer:
    """A started server: ``base_url`` (``http://127.0.0.1:PORT``), ``api_base`` (``+ "/v1"``),
    ``stop()``; a context manager. ``requests`` / ``clear()`` pass through to fake upstreams."""

    def __init__(self, app: Any, server: uvicorn.Server, thread: Optional[threading.Thread], port: int) -> None:
        self.app, self._server, self._thread, self.port = app, server, thread, port
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_base = f"{self.base_url}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.app.requests

    def clear(self) -> None:
        self.app.clear()

    def url(self, path: str) -> str:
        return self.base_url + path

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit; force it if open streams keep it past ``timeout``."""
        self._server.should_exit = True
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RunningServer {self.base_url} {type(self.app).__name__}>"


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # leave the host process' logging alone
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
    )


def start(app: Any, port: int = 0, host: str = "127.0.0.1", timeout: float = 10.0) -> RunningServer:
    """Serve ``app`` in a daemon thread; returns once the socket accepts connections."""
    sock = _bind(host, port)
    server = uvicorn.Server(_config(app, host, sock.getsockname()[1]))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"upstream-{sock.getsockname()[1]}")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"upstream server on port {sock.getsockname()[1]} did not start")
        time.sleep(0.002)
    return RunningServer(app, server, thread, sock.getsockname()[1])


def main(
    description: str,
    build: Callable[[dict[str, Any], argparse.Namespace], Any],
    argv: Optional[list[str]] = None,
    add_args: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
) -> None:
    """Standalone entry point shared by the fakes: parse args, ``build(reply_settings, args)``,
    serve, print ``READY <url>``, exit 0 on SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--reply", default=None, help="fixed reply text (wins over --tokens)")
    parser.add_argument("--tokens", type=int, default=8, help="reply length K: 'tok0 .. tok{K-1}'")
    parser.add_argument("--tokens-per-step", type=int, default=1, help="tokens per stream chunk")
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds between stream steps")
    parser.add_argument("--max-recorded", type=int, default=10000, help="request log size (0: none)")
    add_args(parser)
    args = parser.parse_args(argv)
    reply = {"reply": args.reply, "tokens": args.tokens, "tokens_per_step": args.tokens_per_step,
             "step_delay": args.step_delay, "max_recorded": args.max_recorded}
    running = start(build(reply, args), port=args.port, host=args.host)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"READY {running.base_url}", flush=True)
    while not done.wait(0.5):
        if not running._thread or not running._thread.is_alive():
            sys.exit(1)
    running.stop()
