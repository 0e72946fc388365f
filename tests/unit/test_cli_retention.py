"""`litellm-rllm prune` and `sessions delete`: retention and deletion by hand."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from litellm_rllm import store
from litellm_rllm.cli import main
from tests.support.store_contract import T0, make


def test_prune_leaves_exactly_the_newer_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with store.open(url) as st:
        st.write([make(f"t{h}", "s", created_at=T0 + timedelta(hours=h)) for h in range(6)])
    assert main(["prune", "--before", (T0 + timedelta(hours=2)).isoformat(), "--store", url]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] == 2
    with store.open(url) as st:
        assert [t.trace_id for t in st.traces()] == ["t2", "t3", "t4", "t5"]


def test_sessions_delete_removes_one_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with store.open(url) as st:
        st.write([make("a1", "a"), make("b1", "b"), make("a2", "a")])
    assert main(["sessions", "delete", "a", "--store", url]) == 0
    assert json.loads(capsys.readouterr().out) == {"session": "a", "deleted": 2}
    with store.open(url) as st:
        assert [t.trace_id for t in st.traces()] == ["b1"]
