"""`litellm-rllm policy explain` and `litellm-rllm config check`, through `cli.main`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from litellm_rllm import cli
from litellm_rllm.policy import sample_hit
from tests.support import harness

REPO = Path(__file__).resolve().parents[2]

POLICIES = {
    "defaults": {"logprobs": "auto", "top_logprobs": 0, "return_token_ids": "auto"},
    "rules": [
        {"name": "trained-policy", "match": {"provider": "hosted_vllm"}, "logprobs": True, "top_logprobs": 2,
         "return_token_ids": True, "prompt_logprobs": 1},
        {"name": "no-logprobs-providers", "match": {"provider": "anthropic"}, "logprobs": True},
        {"name": "expensive-teachers", "match": {"deployment": "openai/gpt-4*", "min_output_cost_per_mtok": 5.0},
         "logprobs": True, "sample_rate": 0.25},
        {"name": "openai", "match": {"provider": "openai"}, "logprobs": True, "top_logprobs": 1},
    ],
}
URLS = {"vllm": "http://127.0.0.1:9/v1", "openai": "http://127.0.0.1:9/v1", "anthropic": "http://127.0.0.1:9"}


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    for var in ("RLLM_STORE_URL", "RLLM_POLICIES_FILE", "RLLM_SLUG_SECRET", "RLLM_REQUIRE_SIGNED_SLUGS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def config(tmp_path) -> Path:
    """A proxy config (the test harness's model list plus a load-balanced group) + policies."""
    path = harness.write_config(tmp_path, upstreams=URLS, store_url=f"sqlite:///{tmp_path / 't.db'}",
                                policies=POLICIES)
    data = yaml.safe_load(path.read_text())
    data["model_list"] += [
        {"model_name": "mixed", "litellm_params": {"model": "hosted_vllm/policy", "api_base": URLS["vllm"]}},
        {"model_name": "mixed", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": URLS["openai"]}},
        {"model_name": "vllm-behind-openai", "litellm_params": {"model": "openai/served", "api_base": URLS["vllm"]},
         "model_info": {"rllm_backend": "vllm"}},
        {"model_name": "priced", "litellm_params": {"model": "openai/gpt-4-house"},
         "model_info": {"output_cost_per_token": 3e-5}},
    ]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def explain(capsys, *args: str) -> dict[str, Any]:
    assert cli.main(["policy", "explain", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_explain_vllm_group_from_the_proxy_config(capsys, config):
    out = explain(capsys, "--config", str(config), "policy")
    assert out["policies"] == str(config.parent / "policies.yaml")
    assert out["target"] == {"model": "policy", "provider": "hosted_vllm", "deployment": "hosted_vllm/policy",
                             "output_cost_per_mtok": None, "accepts_logprobs": True, "vllm_family": True}
    assert out["rule"] == "trained-policy"
    assert out["rule_body"]["match"] == {"provider": "hosted_vllm"}
    assert out["inject"] == {"logprobs": True, "top_logprobs": 2, "return_token_ids": True, "prompt_logprobs": 1}
    assert out["effective"]["sample_rate"] == 1.0 and out["strip_from_response"] is True
    assert "deployments" not in out


def test_explain_load_balanced_group_answers_per_deployment(capsys, config):
    out = explain(capsys, "--config", str(config), "mixed")
    vllm, hosted = out["deployments"]
    assert (vllm["rule"], vllm["inject"]) == ("trained-policy", {"logprobs": True, "top_logprobs": 2,
                                                                 "return_token_ids": True, "prompt_logprobs": 1})
    assert (hosted["rule"], hosted["inject"]) == ("openai", {"logprobs": True, "top_logprobs": 1})
    assert hosted["target"]["deployment"] == "openai/gpt-4o-mini" and hosted["target"]["model"] == "mixed"
    assert out["rule"] == vllm["rule"]  # the top level is the first deployment


def test_explain_anthropic_skips_what_it_refuses(capsys, config):
    out = explain(capsys, "--config", str(config), "claude")
    assert out["rule"] == "no-logprobs-providers"
    assert out["inject"] == {} and set(out["skipped"]) == {"logprobs"}
    assert out["target"]["accepts_logprobs"] is False


def test_explain_price_band_and_sample_rate(capsys, config):
    policies = str(config.parent / "policies.yaml")
    out = explain(capsys, "--config", policies, "gpt-4o", "--provider", "openai")
    assert out["target"]["deployment"] == "openai/gpt-4o" and out["target"]["output_cost_per_mtok"] == 10.0
    assert out["rule"] == "expensive-teachers"
    assert out["inject"] == {"logprobs": True}  # what a sampled call gets
    assert out["sample_rate"] == 0.25 and "sampled" not in out
    cheap = explain(capsys, "--config", policies, "gpt-4o-mini", "--provider", "openai")
    assert cheap["rule"] == "openai"  # $0.60 / M: below the band
    forced = explain(capsys, "--config", policies, "gpt-4o-mini", "--provider", "openai", "--output-cost", "20")
    assert forced["rule"] == "expensive-teachers" and forced["target"]["output_cost_per_mtok"] == 20.0
    other = explain(capsys, "--config", policies, "gpt-3.5-turbo", "--provider", "openai", "--output-cost", "20")
    assert other["rule"] == "openai"  # in the band, but not gpt-4*: every match key must hold
    priced = explain(capsys, "--config", str(config), "priced")  # price from the deployment's model_info
    assert priced["target"]["output_cost_per_mtok"] == pytest.approx(30.0) and priced["rule"] == "expensive-teachers"


def test_explain_call_id_decides_like_the_proxy(capsys, config):
    policies = str(config.parent / "policies.yaml")
    for call_id in ("a", "b", "c", "d", "e", "f", "g", "h"):
        out = explain(capsys, "--config", policies, "gpt-4o", "--provider", "openai", "--call-id", call_id)
        assert out["sampled"] is sample_hit(call_id, 0.25) and out["call_id"] == call_id
        assert out["inject"] == ({"logprobs": True} if out["sampled"] else {})


def test_explain_reasoning_model_gets_no_logprobs(capsys, config):
    policies = str(config.parent / "policies.yaml")
    for model in ("o1-mini", "o3-mini", "gpt-5-chat-latest"):
        out = explain(capsys, "--config", policies, model, "--provider", "openai")
        assert out["rule"] == "openai"
        assert out["inject"] == {} and "logprobs" in out["skipped"], model
        assert out["target"]["accepts_logprobs"] is False


def test_explain_vllm_behind_an_openai_prefix(capsys, config):
    out = explain(capsys, "--config", str(config), "vllm-behind-openai")
    assert out["target"]["vllm_family"] is True
    assert out["inject"] == {"logprobs": True, "top_logprobs": 1, "return_token_ids": True}  # rule "openai"


def test_explain_stream_and_completions(capsys, config):
    out = explain(capsys, "--config", str(config), "policy", "--stream")
    assert "prompt_logprobs" not in out["inject"] and "stream" in out["skipped"]["prompt_logprobs"]
    out = explain(capsys, "--config", str(config), "policy", "--completions")
    assert out["inject"] == {"logprobs": 2, "return_token_ids": True, "prompt_logprobs": 1}


def test_explain_deployment_flag(capsys, config):
    out = explain(capsys, "--config", str(config.parent / "policies.yaml"), "anything",
                  "--deployment", "hosted_vllm/Qwen/Qwen3-8B")
    assert out["target"]["provider"] == "hosted_vllm" and out["rule"] == "trained-policy"


def test_explain_shipped_config(capsys):
    out = explain(capsys, "--config", str(REPO / "configs" / "rllm.yaml"), "policy")
    assert out["policies"] == str(REPO / "configs" / "policies.yaml")
    assert out["rule"] == "trained-policy" and out["inject"] == {"logprobs": True, "return_token_ids": True}


def test_explain_unknown_group_is_an_error(capsys, config):
    assert cli.main(["policy", "explain", "--config", str(config), "nope"]) == 2
    assert "model group 'nope' is not in the model_list" in capsys.readouterr().err


def test_explain_broken_policies_names_file_line_key(capsys, config):
    policies = config.parent / "policies.yaml"
    text = policies.read_text()
    policies.write_text(text.replace("sample_rate: 0.25", "sample_rate: 25"))
    line = next(n for n, t in enumerate(policies.read_text().splitlines(), 1) if "sample_rate: 25" in t)
    assert cli.main(["policy", "explain", "--config", str(config), "policy"]) == 2
    err = capsys.readouterr().err
    assert f"{policies}:{line}: rules.2.sample_rate" in err


# ---------------------------------------------------------------------------------------------
# config check
# ---------------------------------------------------------------------------------------------


def test_config_check_ok_names_the_policies_file(capsys, config):
    assert cli.main(["config", "check", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {config}") and f"policies {config.parent / 'policies.yaml'}" in out


def test_config_check_shipped_config(capsys):
    assert cli.main(["config", "check", str(REPO / "configs" / "rllm.yaml")]) == 0
    assert "policies" in capsys.readouterr().out


@pytest.mark.parametrize("old, new, key, words", [
    ("sample_rate: 0.25", "sample_rate: -1", "rules.2.sample_rate", "greater than or equal to 0"),
    ("logprobs: true", "logprobs: sometimes", "rules.0.logprobs", "true, false or auto"),
    ("min_output_cost_per_mtok: 5.0", "min_cost: 5.0", "rules.2.match.min_cost", "unknown key"),
])
def test_config_check_reports_a_bad_policies_file(capsys, config, old, new, key, words):
    policies = config.parent / "policies.yaml"
    policies.write_text(policies.read_text().replace(old, new, 1))
    line = next(n for n, t in enumerate(policies.read_text().splitlines(), 1) if new.split(":")[0] in t
                and new.split(":")[1].strip() in t)
    assert cli.main(["config", "check", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{policies}:{line}: {key}: " in err and words in err


def test_config_check_reports_invalid_yaml_and_missing_policies(capsys, config):
    policies = config.parent / "policies.yaml"
    policies.write_text("rules: [\n  - {match: {provider: openai}\n")
    assert cli.main(["config", "check", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{policies}:" in err and "not valid YAML" in err
    policies.unlink()
    assert cli.main(["config", "check", str(config)]) == 1
    assert "cannot read policies file" in capsys.readouterr().err


def test_config_check_reports_settings_and_callbacks(capsys, config):
    data = yaml.safe_load(config.read_text())
    data["callback_settings"]["litellm_rllm"]["policies_reload_interval_s"] = 0
    data["litellm_settings"]["callbacks"].append("litellm_rllm.callbacks.sampler")
    config.write_text(yaml.safe_dump(data))
    assert cli.main(["config", "check", str(config)]) == 1
    err = capsys.readouterr().err
    assert "policies_reload_interval_s" in err and str(config) in err
    assert "unknown entry 'litellm_rllm.callbacks.sampler'" in err
