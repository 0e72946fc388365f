"""A real PostgreSQL server for the tests: ``initdb`` into a temp dir, ``postgres`` on 127.0.0.1.

Loaded as a pytest plugin (``pytest_plugins`` in conftest.py, or ``-p tests.support.pg``); it gives

* ``pg_server``: one server for the whole test session (``PgServer``);
* ``pg_store_url``: ``postgresql://...`` of a database on it (session-scoped; a test that needs
  an empty store adds its own schema: ``with_schema(pg_store_url, "t_xyz")``);
* ``pg_fresh_url``: function-scoped, the same database with a new, unique schema.

PostgreSQL refuses to run as root: as root, the server runs as a dedicated system user
(``rllmpg``, created on first use): the child processes switch to it before ``exec``. The binaries are found with
``pg_config --bindir``, in ``/usr/lib/postgresql/*/bin``, or on PATH; ``scripts/test.sh``
installs them on a fresh machine. In CI (``CI`` set) a server that cannot start fails the tests
loudly; elsewhere the PostgreSQL tests are skipped with the reason.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlencode

import pytest

PG_USER = "rllmpg"
DB_NAME = "rllm_test"


class PgUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or the server would not start."""


def find_bindir() -> str:
    """The folder with ``initdb`` and ``postgres``."""
    candidates: list[str] = []
    env = os.environ.get("RLLM_PG_BINDIR")
    if env:
        candidates.append(env)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0:
                candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    # newest version first
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += ["/usr/local/pgsql/bin", "/usr/local/bin", "/usr/bin"]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    for folder in candidates:
        if all(os.access(os.path.join(folder, exe), os.X_OK) for exe in ("initdb", "postgres")):
            return folder
    raise PgUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found; install them "
        "(Debian/Ubuntu: apt-get install -y postgresql; scripts/test.sh does it as root) "
        "or set RLLM_PG_BINDIR"
    )


def _version_key(path: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in path.split("/")[-2].split("."))
    except ValueError:
        return (0,)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_os_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    proc = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True,
    )
    if proc.returncode not in (0, 9):  # 9: exists (another process won the race)
        raise PgUnavailable(f"cannot create OS user {name!r} for PostgreSQL: {proc.stderr.strip()}")
    return pwd.getpwnam(name)


_STARTED: "weakref.WeakSet[PgServer]" = weakref.WeakSet()  # for _stop_leftovers


class PgServer:
    """One PostgreSQL cluster in a temp dir, listening on 127.0.0.1:``port`` only.

    ``stop()`` / ``start()`` keep the data (the outage tests); ``destroy()`` removes it.
    """

    def __init__(self, *, port: Optional[int] = None, fsync: bool = True) -> None:
        self.bindir = find_bindir()
        self.port = port or _free_port()
        self.as_root = os.geteuid() == 0
        self.run_as: Optional[str] = None
        if self.as_root:
            _ensure_os_user(PG_USER)
            self.run_as = PG_USER
        # Not under pytest's tmp dir: its 0700 parents would lock the server's user out.
        self.base = Path(tempfile.mkdtemp(prefix="rllm-pg-"))
        self.data = self.base / "data"
        self.sockdir = self.base / "sock"
        self.sockdir.mkdir()
        self.log_path = self.base / "postgres.log"
        self.fsync = fsync
        self.proc: Optional[subprocess.Popen[bytes]] = None
        _STARTED.add(self)
        if self.run_as:
            info = pwd.getpwnam(self.run_as)
            for path in (self.base, self.sockdir):
                os.chown(path, info.pw_uid, info.pw_gid)
        os.chmod(self.base, 0o755)
        self._initdb()

    # ------------------------------------------------------------------ processes

    def _cmd(self, exe: str, *args: str) -> list[str]:
        return [os.path.join(self.bindir, exe), *args]

    def _as_user(self) -> dict[str, object]:
        """Popen arguments that run the child as the server's user (the child itself, no
        ``runuser`` in between: signals sent to ``proc`` reach the postmaster)."""
        if not self.run_as:
            return {}
        info = pwd.getpwnam(self.run_as)
        return {"user": info.pw_uid, "group": info.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": str(self.base), "USER": self.run_as, "LOGNAME": self.run_as}}

    def _initdb(self) -> None:
        proc = subprocess.run(
            self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--locale=C", "--no-sync"),
            capture_output=True, text=True, timeout=180, cwd=str(self.base), **self._as_user(),
        )
        if proc.returncode != 0:
            raise PgUnavailable(f"initdb failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

    def start(self, timeout: float = 60.0) -> "PgServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab")
        args = [
            "-D", str(self.data), "-p", str(self.port), "-k", str(self.sockdir),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
            "-c", f"fsync={'on' if self.fsync else 'off'}",
            "-c", "shared_buffers=64MB", "-c", "logging_collector=off",
        ]
        try:
            self.proc = subprocess.Popen(self._cmd("postgres", *args), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=str(self.base), **self._as_user())
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PgUnavailable(f"postgres exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self._accepts_connections():
                return self
            time.sleep(0.1)
        self.stop()
        raise PgUnavailable(f"postgres not ready after {timeout}s:\n{self.log()[-3000:]}")

    def _accepts_connections(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """``fast``: SIGINT (abort transactions, disconnect clients, checkpoint);
        ``smart``: SIGTERM; ``immediate``: SIGQUIT (crash-like, recovery on next start)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self.proc = None
            return
        import signal

        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------------ databases

    def url(self, db: str = DB_NAME, **query: str) -> str:
        base = f"postgresql://postgres@127.0.0.1:{self.port}/{db}"
        return base + ("?" + urlencode(query) if query else "")

    def create_database(self, name: str = DB_NAME) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


@atexit.register
def _stop_leftovers() -> None:
    """A test run that ends without its fixture teardown (Ctrl-C) leaves no server behind."""
    for server in list(_STARTED):
        try:
            server.destroy()
        except Exception:  # noqa: BLE001
            pass


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``?schema=...`` (the store's own parameter) set."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}schema={schema}"


def unique_schema(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def start_server_or_skip(**kwargs: object) -> PgServer:
    """A started server; without one: fail in CI, skip elsewhere (with the reason)."""
    try:
        server = PgServer(**kwargs)  # type: ignore[arg-type]
    except PgUnavailable as exc:
        _unavailable(str(exc))
        raise
    try:
        return server.start()
    except PgUnavailable as exc:
        server.destroy()
        _unavailable(str(exc))
        raise


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI and could not start: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server for the tests: {reason}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_server_or_skip()
    try:
        server.create_database(DB_NAME)
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg_store_url(pg_server: PgServer) -> str:
    """A database on the session's server (the store's default schema ``rllm``)."""
    return pg_server.url(DB_NAME)


@pytest.fixture()
def pg_fresh_url(pg_server: PgServer) -> str:
    """The session's database with a schema no other test uses: an empty store."""
    return with_schema(pg_server.url(DB_NAME), unique_schema())
