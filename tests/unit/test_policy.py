"""The policy engine on its own (no LiteLLM): matching, first match, merge with defaults,
`decide()` with provider support, client values and slug overrides, deterministic sampling,
error messages that name file, line and key, and hot reload that keeps the last good version."""

from __future__ import annotations

import logging
import math
import os
import random
import time
import uuid
from pathlib import Path

import pytest
import yaml

from litellm_rllm.policy import (
    Decision,
    Match,
    PolicyError,
    PolicyFile,
    Policies,
    Target,
    decide,
    load_policies,
    parse_policies,
    sample_hit,
)

CHAT = frozenset({"logprobs", "top_logprobs", "temperature"})  # what an OpenAI-style provider accepts
VLLM = Target("policy", "hosted_vllm", "hosted_vllm/Qwen/Qwen3-8B", None, CHAT, vllm_family=True)
GPT4O = Target("teacher", "openai", "openai/gpt-4o", 10.0, CHAT)
GPT4O_MINI = Target("cheap", "openai", "openai/gpt-4o-mini", 0.6, CHAT)
O3 = Target("reasoner", "openai", "openai/o3-mini", 4.4, frozenset({"temperature"}))  # no logprobs
CLAUDE = Target("claude", "anthropic", "anthropic/claude-sonnet-4-5", 15.0, frozenset({"temperature"}))


def pol(rules: list[dict] | None = None, **defaults: object) -> Policies:
    return Policies.model_validate({"defaults": defaults, "rules": rules or []})


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("match, target, holds", [
    ({}, CLAUDE, True),
    ({"model": "pol*"}, VLLM, True),
    ({"model": "pol*"}, GPT4O, False),
    ({"model": "polic?"}, VLLM, True),
    ({"model": "[ct]*"}, CLAUDE, True),
    ({"model": "POLICY"}, VLLM, False),  # globs are case-sensitive
    ({"provider": "hosted_vllm"}, VLLM, True),
    ({"provider": "hosted_*"}, VLLM, True),
    ({"provider": "openai"}, VLLM, False),
    ({"deployment": "openai/gpt-4*"}, GPT4O, True),
    ({"deployment": "openai/gpt-4*"}, O3, False),
    ({"deployment": "*/Qwen/*"}, VLLM, True),
    ({"min_output_cost_per_mtok": 5.0}, GPT4O, True),
    ({"min_output_cost_per_mtok": 10.0}, GPT4O, True),  # bounds are inclusive
    ({"min_output_cost_per_mtok": 5.0}, GPT4O_MINI, False),
    ({"max_output_cost_per_mtok": 1.0}, GPT4O_MINI, True),
    ({"max_output_cost_per_mtok": 9.99}, GPT4O, False),
    ({"min_output_cost_per_mtok": 1.0, "max_output_cost_per_mtok": 10.0}, GPT4O, True),
    ({"min_output_cost_per_mtok": 1.0, "max_output_cost_per_mtok": 10.0}, CLAUDE, False),
    # no known price: a price band never matches, in either direction
    ({"min_output_cost_per_mtok": 0.0}, VLLM, False),
    ({"max_output_cost_per_mtok": 1000.0}, VLLM, False),
    # every key must hold
    ({"provider": "openai", "deployment": "openai/gpt-4*", "min_output_cost_per_mtok": 5.0}, GPT4O, True),
    ({"provider": "openai", "deployment": "openai/gpt-4*", "min_output_cost_per_mtok": 5.0}, GPT4O_MINI, False),
    ({"provider": "openai", "model": "policy"}, GPT4O, False),
])
def test_match(match, target, holds):
    assert Match(**match).holds(target) is holds


def test_first_matching_rule_wins_and_unnamed_rules_are_named_by_index():
    p = pol([
        {"match": {"provider": "anthropic"}, "logprobs": False},
        {"name": "expensive", "match": {"min_output_cost_per_mtok": 5.0}, "sample_rate": 0.1},
        {"name": "all-openai", "match": {"provider": "openai"}, "top_logprobs": 5},
    ])
    assert p.find(CLAUDE)[0] == "rules[0]"  # matches rules 0 and 1: the first wins
    assert p.find(GPT4O)[0] == "expensive"  # matches 1 and 2
    assert p.find(GPT4O_MINI)[0] == "all-openai"
    assert p.find(VLLM) == ("defaults", None)


def test_effective_merges_the_rule_over_the_defaults():
    p = pol([{"match": {"provider": "openai"}, "top_logprobs": 0, "sample_rate": 0.5}],
            top_logprobs=3, logprobs=True, strip_from_response=False)
    _, rule = p.find(GPT4O)
    eff = p.effective(rule)
    assert (eff.top_logprobs, eff.sample_rate) == (0, 0.5)  # set in the rule, 0 included
    assert (eff.logprobs, eff.strip_from_response, eff.return_token_ids) == (True, False, "auto")  # defaults
    assert p.effective(None) == p.defaults


def test_built_in_defaults_without_a_file():
    d = Policies().defaults
    assert (d.logprobs, d.top_logprobs, d.return_token_ids, d.prompt_logprobs) == ("auto", 0, "auto", None)
    assert (d.sample_rate, d.allow_request_override, d.strip_from_response) == (1.0, True, True)


def test_shipped_policies_file_parses_and_matches_the_spec_example():
    p = load_policies(Path(__file__).resolve().parents[2] / "configs" / "policies.yaml")
    assert p.find(VLLM)[0] == "trained-policy"
    assert p.find(CLAUDE)[0] == "no-logprobs-providers"
    assert p.find(GPT4O)[0] == "expensive-teachers"
    assert p.find(GPT4O_MINI)[0] == "defaults"


# ---------------------------------------------------------------------------------------------
# decide()
# ---------------------------------------------------------------------------------------------


def test_auto_adds_logprobs_where_accepted_and_token_ids_for_vllm_only():
    p = pol(top_logprobs=2)
    assert decide(p, VLLM, call_id="c").params == {"logprobs": True, "top_logprobs": 2, "return_token_ids": True}
    assert decide(p, GPT4O, call_id="c").params == {"logprobs": True, "top_logprobs": 2}
    for target in (O3, CLAUDE):
        d = decide(p, target, call_id="c")
        assert d.params == {} and d.skipped == {}  # auto: silently off where it would be refused


def test_true_never_adds_what_the_deployment_refuses_and_says_why():
    p = pol(logprobs=True, return_token_ids=True, top_logprobs=3, prompt_logprobs=1)
    d = decide(p, O3, call_id="c")
    assert d.params == {}
    assert set(d.skipped) == {"logprobs", "return_token_ids", "prompt_logprobs"}
    assert "openai/o3-mini" in d.skipped["logprobs"]
    d = decide(p, GPT4O, call_id="c")
    assert d.params == {"logprobs": True, "top_logprobs": 3}
    assert set(d.skipped) == {"return_token_ids", "prompt_logprobs"}
    d = decide(p, CLAUDE, call_id="c")
    assert d.params == {} and "logprobs" in d.skipped
    assert d.injected() == {"rule": "defaults", "skipped": d.skipped}


def test_top_logprobs_needs_logprobs_and_provider_support():
    only_logprobs = Target("x", "gemini", "gemini/gemini-2.0-flash", None, frozenset({"logprobs"}))
    d = decide(pol(top_logprobs=4), only_logprobs, call_id="c")
    assert d.params == {"logprobs": True} and "top_logprobs" in d.skipped
    assert decide(pol(logprobs=False, top_logprobs=4), GPT4O, call_id="c").params == {}


def test_false_adds_nothing():
    p = pol(logprobs=False, return_token_ids=False)
    assert decide(p, VLLM, call_id="c").params == {}


def test_prompt_logprobs_only_for_vllm_and_not_with_stream():
    p = pol([{"match": {"provider": "hosted_vllm"}, "prompt_logprobs": 1}])
    assert decide(p, VLLM, call_id="c").params["prompt_logprobs"] == 1
    streamed = Target(**{**VLLM.__dict__, "stream": True})
    d = decide(p, streamed, call_id="c")
    assert "prompt_logprobs" not in d.params and "stream" in d.skipped["prompt_logprobs"]


def test_legacy_completions_take_logprobs_as_a_count():
    vllm_text = Target(**{**VLLM.__dict__, "completions": True})
    d = decide(pol(top_logprobs=3), vllm_text, call_id="c")
    assert d.params == {"logprobs": 3, "return_token_ids": True}
    assert decide(pol(), vllm_text, call_id="c").params["logprobs"] == 0  # the sampled token only
    hosted_text = Target("instruct", "text-completion-openai", "gpt-3.5-turbo-instruct", 2.0, CHAT, completions=True)
    assert decide(pol(top_logprobs=20), hosted_text, call_id="c").params == {"logprobs": 5}  # OpenAI's maximum


def test_client_values_win_and_are_not_reported_as_injected():
    p = pol(top_logprobs=3)
    d = decide(p, VLLM, call_id="c", client_params={"logprobs": True})
    assert d.params == {"top_logprobs": 3, "return_token_ids": True}  # the client asked logprobs itself
    d = decide(p, VLLM, call_id="c", client_params={"logprobs": True, "top_logprobs": 1, "return_token_ids": True})
    assert d.params == {}
    # The client turned logprobs off: its choice stands, and top_logprobs alone would be a 400.
    d = decide(p, VLLM, call_id="c", client_params={"logprobs": False})
    assert d.params == {"return_token_ids": True}
    assert "top_logprobs" in d.skipped


def test_override_is_honoured_where_the_rule_allows_it():
    p = pol([{"name": "locked", "match": {"provider": "openai"}, "allow_request_override": False}], top_logprobs=0)
    wish = {"logprobs": True, "top_logprobs": 5, "return_token_ids": False}
    d = decide(p, VLLM, call_id="c", override=wish)
    assert d.params == {"logprobs": True, "top_logprobs": 5}  # token ids off, 5 alternatives
    assert d.injected() == {"logprobs": True, "top_logprobs": 5, "rule": "defaults", "override": wish}
    off = decide(p, VLLM, call_id="c", override={"logprobs": False})
    assert off.params == {"return_token_ids": True}


def test_refused_override_is_recorded_not_ignored():
    p = pol([{"name": "locked", "match": {"provider": "openai"}, "allow_request_override": False}])
    d = decide(p, GPT4O, call_id="c", override={"logprobs": False, "top_logprobs": 7})
    assert d.params == {"logprobs": True}  # the rule's values, not the wish
    assert d.override_refused
    assert d.injected() == {"logprobs": True, "rule": "locked", "override": {"logprobs": False, "top_logprobs": 7},
                            "override_refused": True}


def test_override_cannot_add_what_the_provider_refuses():
    d = decide(pol(), CLAUDE, call_id="c", override={"logprobs": True, "return_token_ids": True})
    assert d.params == {} and set(d.skipped) == {"logprobs", "return_token_ids"}


def test_strip_flag_comes_from_the_rule():
    p = pol([{"match": {"provider": "openai"}, "strip_from_response": False}])
    assert decide(p, GPT4O, call_id="c").strip is False
    assert decide(p, VLLM, call_id="c").strip is True


def test_injected_is_the_trace_field():
    d = Decision(rule="r", params={"logprobs": True, "return_token_ids": True})
    assert d.injected() == {"logprobs": True, "return_token_ids": True, "rule": "r"}
    assert Decision(rule="r", sampled=False).injected() == {"rule": "r", "sampled": False}


# ---------------------------------------------------------------------------------------------
# sample_rate
# ---------------------------------------------------------------------------------------------

# 400 calls at rate 0.25: binomial, mean 100, sd sqrt(400 * 0.25 * 0.75) = 8.66. Tolerance
# +-26 = 3 sd (a fair coin per call id lands outside it with probability 0.27 %).
N_CALLS, RATE = 400, 0.25
EXPECTED, TOLERANCE = 100, 26


def call_ids(seed: int, n: int = N_CALLS) -> list[str]:
    """Ids shaped like LiteLLM's (uuid4), reproducible."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def test_sample_hit_is_deterministic_per_call_id():
    ids = call_ids(1)
    first = [sample_hit(i, RATE) for i in ids]
    assert [sample_hit(i, RATE) for i in ids] == first
    assert all(sample_hit(i, 1.0) for i in ids) and not any(sample_hit(i, 0.0) for i in ids)
    # Nested: a call sampled at a rate is sampled at every higher rate (raising the rate adds calls).
    assert all(sample_hit(i, 0.5) for i, hit in zip(ids, first) if hit)


def test_sample_rate_quarter_over_400_calls_injects_on_100_within_3_sd():
    p = pol([{"match": {"provider": "openai"}, "logprobs": True, "sample_rate": RATE}])
    ids = call_ids(2024)
    decisions = [decide(p, GPT4O, call_id=i) for i in ids]
    injected = sum("logprobs" in d.params for d in decisions)
    assert abs(injected - EXPECTED) <= TOLERANCE, injected
    assert all(d.injected().get("sampled") is False for d in decisions if not d.params)
    again = [decide(p, GPT4O, call_id=i).params for i in ids]
    assert again == [d.params for d in decisions]  # the same call ids decide the same way twice


def test_sample_hit_is_uniform_over_many_batches():
    """The 3-sd tolerance holds for the hash as it holds for a fair coin: over 200 batches of
    400 fresh ids, the counts average 100 and at most a few fall outside 100 +- 26."""
    counts = [sum(sample_hit(i, RATE) for i in call_ids(seed)) for seed in range(200)]
    mean = sum(counts) / len(counts)
    assert abs(mean - EXPECTED) < 3 * math.sqrt(N_CALLS * RATE * (1 - RATE) / len(counts))
    assert sum(abs(c - EXPECTED) > TOLERANCE for c in counts) <= 3
    sd = math.sqrt(sum((c - mean) ** 2 for c in counts) / (len(counts) - 1))
    assert 6.5 < sd < 11  # binomial sd 8.66: no clumping, no suspicious regularity


# ---------------------------------------------------------------------------------------------
# Parsing: errors name file, line and key
# ---------------------------------------------------------------------------------------------

GOOD = """\
defaults:
  logprobs: auto
  top_logprobs: 0
rules:
  - name: vllm
    match: {provider: hosted_vllm}
    logprobs: true
    return_token_ids: true
  - name: teachers
    match: {provider: openai, min_output_cost_per_mtok: 5.0}
    sample_rate: 0.25
"""


@pytest.mark.parametrize("old, new, line, key, words", [
    ("sample_rate: 0.25", "sample_rate: 1.5", 11, "rules.1.sample_rate", "less than or equal to 1"),
    ("logprobs: true", "logprobs: maybe", 7, "rules.0.logprobs", "true, false or auto"),
    ("top_logprobs: 0", "top_logprobs: 99", 3, "defaults.top_logprobs", "less than or equal to 20"),
    ("return_token_ids: true", "return_tokens: true", 8, "rules.0.return_tokens", "unknown key"),
    ("{provider: hosted_vllm}", "{providr: hosted_vllm}", 6, "rules.0.match.providr", "unknown key"),
    ("min_output_cost_per_mtok: 5.0", "min_output_cost_per_mtok: pricey", 10,
     "rules.1.match.min_output_cost_per_mtok", "valid number"),
])
def test_invalid_values_name_file_line_and_key(tmp_path, old, new, line, key, words):
    path = tmp_path / "policies.yaml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(PolicyError) as err:
        load_policies(path)
    assert f"{path}:{line}: {key}: " in str(err.value)
    assert words in str(err.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD.replace("{provider: hosted_vllm}", "{provider: hosted_vllm"))
    with pytest.raises(PolicyError, match=rf"^{path}:\d+: not valid YAML: .*flow mapping at line 6"):
        load_policies(path)


@pytest.mark.parametrize("text, words", [
    ("- just a list", "top level must be a mapping"),
    ("rules: {a: 1}", "rules: Input should be a valid list"),
    ("rule: []", "rule: unknown key; allowed: defaults, rules"),
    ("1: 2", "Keys should be strings"),
])
def test_malformed_files_are_policy_errors(text, words):
    with pytest.raises(PolicyError, match="p.yaml") as err:
        parse_policies(text, "p.yaml")
    assert words in str(err.value)


def test_empty_file_is_the_built_in_defaults():
    assert parse_policies("", "p.yaml") == Policies()


# ---------------------------------------------------------------------------------------------
# Hot reload
# ---------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> None:
    path.write_text(text)


def test_reload_on_change_and_keep_last_good_on_a_broken_edit(tmp_path, caplog):
    path = tmp_path / "policies.yaml"
    write(path, GOOD)
    pf = PolicyFile(path, interval_s=60)
    assert pf.current.find(GPT4O)[0] == "teachers"
    assert pf.check() is False  # unchanged

    write(path, GOOD.replace("sample_rate: 0.25", "sample_rate: 0.50"))
    assert pf.check() is True and pf.reloads == 1
    good = pf.current
    assert pf.current.effective(pf.current.find(GPT4O)[1]).sample_rate == 0.5

    caplog.set_level(logging.ERROR, logger="litellm_rllm.policy")
    write(path, GOOD.replace("sample_rate: 0.25", "sample_rate: 5"))
    assert pf.check() is False
    assert pf.current is good  # the last good version still serves
    assert pf.last_error and f"{path}:11: rules.1.sample_rate" in pf.last_error
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"{path}:11: rules.1.sample_rate" in record.getMessage() and "keeping the last good" in record.getMessage()
    assert pf.check() is False and len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # once

    write(path, GOOD)
    assert pf.check() is True and pf.last_error is None and pf.reloads == 2


def test_same_size_edit_within_the_same_mtime_is_seen(tmp_path):
    """An edit that keeps the size and lands in the same timestamp tick as the last read
    (coarse filesystem clocks) must not be missed."""
    path = tmp_path / "policies.yaml"
    write(path, GOOD)
    pf = PolicyFile(path, interval_s=60)
    st = path.stat()
    write(path, GOOD.replace("0.25", "0.75"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert pf.check() is True
    assert pf.current.effective(pf.current.find(GPT4O)[1]).sample_rate == 0.75


class HalfWritten:
    """A policies path whose reads return what a non-atomic writer leaves on disk meanwhile."""

    def __init__(self, reads: list[str]) -> None:
        self.reads = [r.encode() for r in reads]

    def read_bytes(self) -> bytes:
        return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]

    def __str__(self) -> str:
        return "policies.yaml"


def test_a_file_caught_half_written_is_not_applied():
    # The second rule cut off mid-write still parses (as one rule): it must not take effect.
    truncated = GOOD[:GOOD.index("  - name: teachers")]
    edited = GOOD.replace("0.25", "0.75")
    path = HalfWritten([GOOD, truncated, edited, edited, edited])
    pf = PolicyFile(path, interval_s=60, settle_s=0.001)  # type: ignore[arg-type]
    assert parse_policies(truncated).find(GPT4O)[0] == "defaults"  # what would have served
    assert pf.check() is False  # truncated, then the finished file: not stable, wait
    assert pf.current.find(GPT4O)[0] == "teachers" and pf.last_error is None
    assert pf.check() is True  # stable now
    assert pf.current.effective(pf.current.find(GPT4O)[1]).sample_rate == 0.75


def test_deleted_file_keeps_the_last_good_policies(tmp_path):
    path = tmp_path / "policies.yaml"
    write(path, GOOD)
    pf = PolicyFile(path, interval_s=60)
    good = pf.current
    path.unlink()
    assert pf.check() is False and pf.current is good
    assert "cannot read policies file" in pf.last_error
    write(path, GOOD)  # back, unchanged: counts as a (re)load
    assert pf.check() is True and pf.last_error is None


def test_a_bad_file_at_start_is_an_error(tmp_path):
    path = tmp_path / "policies.yaml"
    write(path, "defaults: {sample_rate: -1}\n")
    with pytest.raises(PolicyError, match=rf"{path}:1: defaults.sample_rate"):
        PolicyFile(path)
    with pytest.raises(PolicyError, match="cannot read"):
        PolicyFile(tmp_path / "missing.yaml")


def test_background_watcher_applies_an_edit_within_the_interval(tmp_path):
    path = tmp_path / "policies.yaml"
    write(path, GOOD)
    interval = 0.1
    pf = PolicyFile(path, interval_s=interval)
    pf.start()
    try:
        edited = yaml.safe_load(GOOD)
        edited["rules"][1]["sample_rate"] = 0.0
        start = time.monotonic()
        write(path, yaml.safe_dump(edited))
        while pf.reloads == 0 and time.monotonic() - start < 5:
            time.sleep(0.005)
        elapsed = time.monotonic() - start
        assert pf.reloads == 1
        assert elapsed < interval + 0.5  # one interval plus scheduling slack on a loaded machine
        assert decide(pf.current, GPT4O, call_id="x").injected() == {"rule": "teachers", "sampled": False}
    finally:
        pf.stop()
