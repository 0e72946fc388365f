"""`store.open(url, create=False)`: readers never create a store, and a missing one is an error
that names where it was looked for."""

from __future__ import annotations

import pytest

from litellm_rllm import store
from litellm_rllm.trace import Trace


def test_a_missing_file_is_an_error_naming_the_absolute_path_and_nothing_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(store.StoreNotFoundError) as err:
        store.open("sqlite:///nope/x.db", create=False)
    assert str(tmp_path / "nope" / "x.db") in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its folder


def test_the_default_url_is_not_created_either(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(store.ENV_URL, raising=False)
    with pytest.raises(store.StoreNotFoundError, match=str(tmp_path / "rllm_traces.db")):
        store.open(create=False)
    assert list(tmp_path.iterdir()) == []


def test_three_slashes_are_relative_and_the_error_suggests_the_absolute_url(tmp_path, monkeypatch):
    absolute = tmp_path / "abs" / "x.db"
    store.open(f"sqlite:///{absolute}").close()  # sqlite:////... : the store exists here
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    relative_url = "sqlite:///" + str(absolute).lstrip("/")  # what a user types for /.../x.db
    with pytest.raises(store.StoreNotFoundError) as err:
        store.open(relative_url, create=False)
    message = str(err.value)
    assert str(cwd / str(absolute).lstrip("/")) in message  # the path actually looked at
    assert f"did you mean sqlite:///{absolute}?" in message  # four slashes
    assert list(cwd.iterdir()) == []


def test_writers_still_create_and_readers_then_read_what_was_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'traces.db'}"
    writer = store.open(url)  # the proxy's open: creates folder and file
    writer.write([Trace(trace_id="t1", session_id="s")])
    writer.close()
    reader = store.open(url, create=False)
    try:
        assert [t.trace_id for t in reader.traces(session="s")] == ["t1"]
    finally:
        reader.close()


def test_an_unknown_scheme_names_only_the_scheme():
    with pytest.raises(ValueError, match="unsupported trace store URL scheme 'mysql'") as err:
        store.open("mysql://user:secret@host/db", create=False)
    assert "secret" not in str(err.value)

