"""Pieces the benchmarks share: the fake vLLM upstream, the two proxy configs (bare LiteLLM and
LiteLLM + litellm-rllm) and `litellm --config` subprocesses pinned to chosen CPUs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.harness import MASTER_KEY, RLLM_CALLBACKS, ProxyProcess, auth, free_port  # noqa: E402,F401 (re-exported)
from tests.support.harness import proxy_env as env  # noqa: E402

# Model groups of both configs. `policy` matches the repo's policies (`provider: hosted_vllm`);
# the fake vLLM reads `tokens-K` / `drip-S` in the served model name.
LONG_TOKENS = 32_000


def model_list(api_base: str, memory_tokens: int, memory_drip_s: float) -> list[dict[str, Any]]:
    def vllm(name: str, served: str) -> dict[str, Any]:
        return {"model_name": name, "litellm_params": {"model": f"hosted_vllm/{served}", "api_base": api_base,
                                                       "api_key": "fake-vllm-key"}}

    return [
        vllm("policy", "policy"),  # the upstream's default reply length (--tokens)
        vllm("policy-32k", f"tokens-{LONG_TOKENS}"),
        vllm("policy-long", f"drip-{memory_drip_s:g}-tokens-{memory_tokens}"),
    ]


def cpu_plan(pin: str) -> dict[str, Optional[list[int]]]:
    """Which CPUs each process may use. `auto` on 2+ CPUs: the proxies get the last CPU alone
    (the system under test, loop + writer thread, all of its cost on one core as a GIL-bound
    process has anyway), the upstream and the load generator share the others."""
    allowed = sorted(os.sched_getaffinity(0))
    if pin == "none" or len(allowed) < 2:
        return {"proxy": None, "upstream": None, "client": None}
    return {"proxy": allowed[-1:], "upstream": allowed[:-1], "client": allowed[:-1]}


def _preexec(cpus: Optional[Sequence[int]], new_session: bool = False) -> Any:
    if not cpus and not new_session:
        return None

    def setup() -> None:
        if new_session:
            os.setsid()  # its own session: its own scheduler autogroup (see Proxy)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def python() -> str:
    return sys.executable


class Upstream:
    """`python -m tests.upstreams.vllm` as a subprocess (fixed replies, cached JSON fragments)."""

    def __init__(self, tokens: int, tokens_per_step: int = 1, cpus: Optional[Sequence[int]] = None,
                 log_dir: Optional[Path] = None) -> None:
        cmd = [python(), "-m", "tests.upstreams.vllm", "--port", "0", "--tokens", str(tokens),
               "--tokens-per-step", str(tokens_per_step), "--max-recorded", "0", "--model-name", "policy"]
        self._log = open(log_dir / "upstream.log", "wb") if log_dir else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, cwd=str(REPO), env=env(), stdout=subprocess.PIPE, stderr=self._log,
                                     preexec_fn=_preexec(cpus))
        line = self.proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"upstream did not start: {line!r}")
        self.base_url = line.split(" ", 1)[1]
        self.api_base = self.base_url + "/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def write_config(folder: Path, *, plugin: bool, api_base: str, store_url: Optional[str] = None,
                 memory_tokens: int = 2000, memory_drip_s: float = 0.0,
                 settings: Optional[dict[str, Any]] = None, callbacks: Optional[Sequence[str]] = None) -> Path:
    """A proxy config: the same model list for both; the plugin's adds the three callbacks (or
    `callbacks`: some of them, or benchmark-only stand-ins), a store, the repo's policies
    (configs/policies.yaml, copied next to the config) and `settings` (more
    `callback_settings.litellm_rllm` keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "model_list": model_list(api_base, memory_tokens, memory_drip_s),
        "litellm_settings": {"num_retries": 0},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    if plugin:
        shutil.copy(REPO / "configs" / "policies.yaml", folder / "policies.yaml")
        config["litellm_settings"]["callbacks"] = list(callbacks if callbacks is not None else RLLM_CALLBACKS)
        config["callback_settings"] = {"litellm_rllm": {
            "store": store_url or f"sqlite:///{folder / 'traces.db'}", "policies_file": "policies.yaml",
            **(settings or {})}}
    path = folder / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """`--plugin-setting KEY=VALUE` options -> settings (values read as YAML: true, 5, ...)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--plugin-setting wants KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def probe_env(gc_path: Path, src: Optional[Path] = None) -> dict[str, str]:
    """The proxy's environment plus the GC probe (benchmarks/gcprobe/sitecustomize.py); `src`:
    import `litellm_rllm` from that folder (another revision's copy) instead of this repo."""
    e = env(RLLM_BENCH_GC_STATS=str(gc_path))
    first = [str(REPO / "benchmarks" / "gcprobe")] + ([str(src)] if src is not None else [])
    e["PYTHONPATH"] = os.pathsep.join(first + [e["PYTHONPATH"]])
    return e


class Proxy(ProxyProcess):
    """The test harness's `litellm --config FILE` subprocess, pinned to `cpus` (all its threads:
    set before exec), with the GC probe, and CPU / RSS / GC readings. `new_session`: the proxy
    in a session of its own, so with Linux's autogroup scheduling (`sched_autogroup_enabled`)
    proxies loaded at once on one CPU get equal shares of it, however many threads and helper
    processes each runs (those share their proxy's)."""

    def __init__(self, name: str, config: Path, cpus: Optional[Sequence[int]] = None,
                 wrapper: Sequence[str] = (), src: Optional[Path] = None, new_session: bool = False) -> None:
        self.name = name
        self.gc_path = config.parent / "gc.json"
        super().__init__(config, env=probe_env(self.gc_path, src), wrapper=wrapper,
                         preexec_fn=_preexec(cpus, new_session),
                         log_path=config.parent / "proxy.log")

    def wait_ready(self, timeout: float = 180.0) -> "Proxy":
        super().wait_ready(timeout)
        return self

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def gc_stats(self) -> Optional[dict[str, Any]]:
        """Garbage-collector totals from the probe (benchmarks/gcprobe), fresh to ~0.1 s."""
        import json

        time.sleep(0.15)
        try:
            return json.loads(self.gc_path.read_text())
        except (OSError, ValueError):
            return None

    def gc_freeze(self) -> None:
        Path(str(self.gc_path) + ".freeze").touch()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the plugin's build process under a proxy)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of the process and its descendants."""
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def stat_cpu_seconds(stat_path: str) -> float:
    """utime + stime from a /proc `stat` file (a process's, or one thread's under `task/`)."""
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads) and its live descendants."""
    total = 0.0
    for p in (pid, *descendants(pid)):
        try:
            total += stat_cpu_seconds(f"/proc/{p}/stat")
        except OSError:
            pass
    return total


def writer_cpu_clock(writer: Any) -> int:
    """The clock id of a `TraceWriter` thread's own CPU time (`time.clock_gettime` reads it)."""
    return time.pthread_getcpuclockid(writer.thread.ident)


def plugin_helpers(pid: int) -> list[int]:
    """The plugin's helper processes below `pid` (store process, build process): descendants run
    as `python -m litellm_rllm...`, so a benchmark's own client or upstream child is not one."""
    out = []
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if b"litellm_rllm." in f.read():
                    out.append(p)
        except OSError:
            pass
    return out


def sched_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time of the processes from `/proc/PID/schedstat` (nanoseconds, unlike `stat`'s 10 ms
    ticks, which a window of a few helper milliseconds cannot resolve); a gone process adds 0."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def slug_for(session: str) -> str:
    from litellm_rllm.slug import encode

    return encode({"session_id": session, "task": "bench"})


async def serve_proxy_app() -> tuple[Any, Any, str]:
    """LiteLLM's proxy app served by uvicorn in this process (the config from the environment's
    `CONFIG_FILE_PATH`), on a free local port: (server, its task, base URL). Stop it with
    `server.should_exit = True` and await the task."""
    import asyncio
    import socket

    import uvicorn
    from litellm.proxy.proxy_server import app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=sock.getsockname()[1], log_level="error",
                                           access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.05)
    return server, task, f"http://127.0.0.1:{sock.getsockname()[1]}"
