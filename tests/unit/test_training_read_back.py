"""Training data read from a store: lineage in every read-back, `export` and `sessions check`
through the CLI, `store.trajectories` (the wiring over `litellm_rllm.training`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from litellm_rllm import store
from litellm_rllm.cli import main
from litellm_rllm.trace import Trace, TraceChoice
from tests.support.store_contract import make


def turn(trace_id: str, prompt: list[int], completion: list[int], session: str = "ep") -> Trace:
    return make(trace_id, session, prompt_token_ids=prompt, request={"messages": [{"role": "user", "content": trace_id}]},
                choices=[TraceChoice(index=0, token_ids=completion, logprobs=[-0.5] * len(completion))])


@pytest.fixture()
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with store.open(url) as st:
        st.write([turn("t1", [1, 2], [3, 4]), turn("t2", [1, 2, 3, 4, 5], [6]), turn("x1", [9], [8], "other")])
    return url


def test_store_trajectories_merge_a_chain_and_lineage_rides_on_every_read_back(url: str, capsys) -> None:
    with store.open(url, create=False) as st:
        merged = [r.to_dict() for r in st.trajectories(session="ep")]
        with_lineage = {t.trace_id: t.lineage for t in st.traces_with_lineage()}
    assert len(merged) == 1 and merged[0]["input_ids"] == [1, 2, 3, 4, 5, 6]
    assert merged[0]["loss_mask"] == [0, 0, 1, 1, 0, 1] and merged[0]["trace_ids"] == ["t1", "t2"]
    assert with_lineage["t2"]["parent"] == "t1" and with_lineage["t2"]["relation"] == "extends"
    assert with_lineage["t1"]["relation"] == "new" and set(with_lineage) == {"t1", "t2", "x1"}
    assert main(["traces", "export", "--store", url, "--session", "ep"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(t["trace_id"], t["lineage"]["relation"]) for t in lines] == [("t1", "new"), ("t2", "extends")]


def test_cli_export_writes_parquet_and_jsonl_that_read_back_as_the_rows(url: str, tmp_path: Path, capsys) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "rows.parquet"
    assert main(["export", "--store", url, "--view", "merged", "--format", "parquet", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 2 and summary["format"] == "parquet"
    table = pq.read_table(out).to_pylist()
    assert sorted(r["input_ids"] for r in table) == [[1, 2, 3, 4, 5, 6], [9, 8]]
    assert main(["export", "--store", url, "--view", "per-call", "--format", "jsonl", "--out", "-",
                 "--session", "ep"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["response_ids"] for r in rows] == [[3, 4], [6]]


def test_sessions_check_reports_extends_and_a_drift(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    with store.open(url) as st:  # the second prompt re-tokenized the first reply: [3, 4] -> [7]
        st.write([turn("d1", [1, 2], [3, 4]), turn("d2", [1, 2, 7, 5], [6])])
    assert main(["sessions", "check", "--store", url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.dumps(report).count('"drift"') >= 1
    assert main(["sessions", "check", "--store", url]) == 0
    assert "drift" in capsys.readouterr().out


def test_export_mistakes_are_one_error_line(url: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", "--store", url, "--view", "sideways", "--out", "x"])
    assert info.value.code == 2
    assert capsys.readouterr().err.count("error:") == 1
    assert main(["export", "--store", url, "--format", "parquet", "--out", "-"]) == 2
    assert capsys.readouterr().err.startswith("error: --out")


def test_stored_rewards_ride_into_the_merged_row_and_the_export(url: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    with store.open(url, create=False) as st:
        st.add_reward("ep", 0.25, trace_id="t1")
        st.finish("ep", reward={"pass": 1.0, "style": 0.5})
        [row] = [r.to_dict() for r in st.trajectories(session="ep")]
        per_call = {r.to_dict()["trace_id"]: r.to_dict() for r in st.trajectories(session="ep", view="per-call")}
        st.export(str(tmp_path / "r.parquet"), session="ep")
    assert row["rewards"] == {"pass": 1.0, "style": 0.5}  # the episode's final reward, on the chain's end
    assert per_call["t1"]["reward"] == 0.25 and per_call["t2"]["rewards"] == {"pass": 1.0, "style": 0.5}
    [exported] = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert exported["trace_ids"] == ["t1", "t2"]
    assert json.loads(exported["rewards"]) == {"pass": 1.0, "style": 0.5}  # JSON text (docs/training.md)
