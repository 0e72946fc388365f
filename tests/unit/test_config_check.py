"""`litellm-rllm config check`: unset `os.environ/` references are warned about by key and
model, and a config with none of our callbacks is an error, not "ok (0 callbacks)"."""

from __future__ import annotations

from pathlib import Path

import yaml

from litellm_rllm import cli
from litellm_rllm.proxy_config import OUR_CALLBACKS

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, **top: object) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(top, sort_keys=False))
    return path


CALLBACKS = {"callbacks": list(OUR_CALLBACKS)}


def test_unset_env_references_are_warnings_naming_key_and_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RLLM_TEST_UNSET_BASE", raising=False)
    monkeypatch.setenv("RLLM_TEST_SET_KEY", "x")
    path = _config(tmp_path, model_list=[{"model_name": "policy", "litellm_params": {
        "model": "hosted_vllm/policy", "api_base": "os.environ/RLLM_TEST_UNSET_BASE",
        "api_key": "os.environ/RLLM_TEST_SET_KEY"}}], litellm_settings=CALLBACKS)
    assert cli.main(["config", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    [warning] = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "model 'policy'" in warning and "model_list[0].litellm_params.api_base" in warning
    assert "RLLM_TEST_UNSET_BASE is not set" in warning and "api.openai.com" in warning
    assert out.startswith(f"ok: {path}") and "1 warning above" in out


def test_shipped_config_warns_when_vllm_api_base_is_unset(capsys, monkeypatch):
    monkeypatch.delenv("VLLM_API_BASE", raising=False)
    assert cli.main(["config", "check", str(REPO / "configs" / "rllm.yaml")]) == 0
    err = capsys.readouterr().err
    assert any("model 'policy'" in line and "VLLM_API_BASE is not set" in line for line in err.splitlines())


def test_a_config_without_our_callbacks_is_an_error(tmp_path, capsys):
    path = _config(tmp_path, model_list=[], litellm_settings={"callbacks": ["langfuse"]})
    assert cli.main(["config", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no litellm_rllm callbacks" in err and "captures nothing" in err


def test_ok_line_names_the_callbacks_store_and_built_in_policies(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RLLM_STORE_URL", raising=False)
    monkeypatch.delenv("RLLM_POLICIES_FILE", raising=False)
    path = _config(tmp_path, litellm_settings=CALLBACKS)
    assert cli.main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "callbacks: metadata, sampling, tracer" in out and "store sqlite:///rllm_traces.db" in out
    assert "policies (built-in: litellm_rllm/default_policies.yaml)" in out
