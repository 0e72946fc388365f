"""Built-in policies when no file is named; a named file that is missing stops the start with
an error naming the key (or env var) and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from litellm_rllm.policy import PolicyFile, default_policies, load_policies
from litellm_rllm.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_built_in_policies_equal_the_shipped_policies_file():
    assert default_policies() == load_policies(REPO / "configs" / "policies.yaml")
    assert [r.name for r in default_policies().rules][0] == "trained-policy"


def test_no_policies_file_means_the_built_in_policies():
    pf = PolicyFile(None)
    assert pf.current == default_policies()
    assert pf.current.rules  # not the empty Policies() of before


def test_a_named_missing_policies_file_names_the_key_and_the_file(tmp_path):
    config = tmp_path / "proxy.yaml"
    with pytest.raises(SettingsError) as err:
        load_settings({"policies_file": "missing.yaml"}, config_file=str(config), env={})
    message = str(err.value)
    assert "callback_settings.litellm_rllm.policies_file" in message and str(config) in message
    assert str(tmp_path / "missing.yaml") in message and "cannot read policies file" in message


def test_a_missing_policies_file_from_the_environment_names_the_variable(tmp_path):
    with pytest.raises(SettingsError, match="RLLM_POLICIES_FILE: cannot read policies file"):
        load_settings({}, config_file=str(tmp_path / "proxy.yaml"), env={"RLLM_POLICIES_FILE": "nope.yaml"})


def test_no_policies_file_is_not_an_error(tmp_path):
    settings = load_settings({}, config_file=str(tmp_path / "proxy.yaml"), env={})
    assert settings.policies_path() is None
