"""Common CLI mistakes: exit status 2, one `error: ...` line on stderr, no traceback, and no
store file left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.cli_support import run_cli

MISTAKES = {
    "reserved slug key": (["slug", "encode", '{"session_id": "s", "api_key": "x"}'], "'api_key' is reserved"),
    "non-string session_id": (["slug", "encode", '{"session_id": 5}'], "'session_id' must be a string"),
    "slug not JSON": (["slug", "encode", "{session_id: s}"], "not JSON"),
    "slug not an object": (["slug", "encode", "[1]"], "must be a JSON object"),
    "bad slug to decode": (["slug", "decode", "rllm1:%%%"], "base64url"),
    "since not a date": (["traces", "export", "--since", "yesterday"], "--since 'yesterday' is not an ISO 8601"),
    "unknown store scheme": (["traces", "list", "--store", "mysql://u:secret@h/db"], "scheme 'mysql'"),
    "bad sqlite URL": (["traces", "list", "--store", "sqlite://x.db"], "bad SQLite store URL"),
    "missing store": (["traces", "export", "--store", "sqlite:///nope/x.db"], "no trace store at "),
    "missing default store": (["sessions", "list"], "rllm_traces.db"),
    "limit not a number": (["traces", "list", "--limit", "ten"], "invalid int value"),
    "missing config": (["config", "check", "nope.yaml"], "cannot read"),
    "missing config to explain": (["policy", "explain", "--config", "nope.yaml", "policy"], "cannot read"),
}


@pytest.mark.parametrize("args, words", MISTAKES.values(), ids=MISTAKES.keys())
def test_a_cli_mistake_is_one_error_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert words in lines[0]
    assert "secret" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no store, no folder


def test_missing_store_names_the_absolute_path_and_the_url_meant(tmp_path: Path) -> None:
    absolute = tmp_path / "db" / "x.db"
    absolute.parent.mkdir()
    absolute.write_bytes(b"")  # exists; only its name matters here
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_cli("traces", "list", "--store", "sqlite:///" + str(absolute).lstrip("/"), cwd=cwd)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert str(cwd / str(absolute).lstrip("/")) in line and f"did you mean sqlite:///{absolute}?" in line


def test_an_unreachable_store_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    proc = run_cli("sessions", "list", "--store", "postgresql://u:secret@127.0.0.1:9/db?connect_timeout=2",
                   cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: ") and "secret" not in line


def test_export_into_a_reader_that_leaves_early_is_not_an_error(tmp_path: Path) -> None:
    """`traces export | head -1`: the closed pipe ends the export quietly, status 0."""
    import subprocess
    import sys

    from litellm_rllm import store
    from litellm_rllm.trace import Trace
    from tests.system.cli_support import cli_env

    url = f"sqlite:///{tmp_path / 't.db'}"
    st = store.open(url)
    st.write([Trace(trace_id=f"t{i}", session_id="s", metadata={"pad": "x" * 200}) for i in range(3000)])
    st.close()
    proc = subprocess.Popen([sys.executable, "-m", "litellm_rllm.cli", "traces", "export", "--store", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b'{"trace_id":"t0"')
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""
