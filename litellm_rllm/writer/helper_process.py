"""Starting the writer's helper processes (the SQLite store process, the build process).

Each is `python -m MODULE ARGS` speaking over its stdin / stdout pipes, importing this package
from where the proxy imports it. It runs in a process group of its own, so a Ctrl-C in the
proxy's terminal (SIGINT to the foreground group) is the proxy's to handle: the proxy decides
when a helper stops (its stdin closes). It stays in the proxy's session: Linux's autogroup
scheduler (`sched_autogroup_enabled`, on in most desktop and VM kernels) shares the CPU between
sessions, so a helper in a session of its own would get a share of its own, its work paid for
by every other program on the core rather than by the proxy it works for. (Helpers used to
start their own sessions: `benchmarks/saturation.py --together` then counted the SQLite store
process's CPU against the other proxies loaded beside the plugin.)
"""

from __future__ import annotations

import os
import subprocess
import sys

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_helper(python: str, module: str, *args: str) -> "subprocess.Popen[bytes]":
    """Start `python -m module args` with pipes on its stdin and stdout; OSError if it can't."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    return subprocess.Popen([python, "-m", module, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, close_fds=True, **group)  # type: ignore[call-overload]
