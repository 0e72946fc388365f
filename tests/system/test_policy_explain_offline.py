"""`policy explain` offline: LiteLLM's packaged cost map, no download attempts or retries."""

from __future__ import annotations

import json
import time

from tests.system.cli_support import REPO, run_cli


def test_explain_prints_no_cost_map_download_attempts():
    started = time.monotonic()
    proc = run_cli("policy", "explain", "--config", str(REPO / "configs" / "rllm.yaml"), "policy")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "cost map" not in proc.stderr.lower() and "retry" not in proc.stderr.lower(), proc.stderr
    assert json.loads(proc.stdout)["rule"] == "trained-policy"
    assert elapsed < 60  # importing LiteLLM takes seconds; download retries took more


def test_a_user_setting_for_the_cost_map_is_kept():
    """The CLI only defaults LITELLM_LOCAL_MODEL_COST_MAP; a value the user set wins."""
    import os
    import subprocess
    import sys

    from tests.system.cli_support import cli_env

    code = ("import os, litellm_rllm.cli as c, sys; sys.argv=['x']\n"
            "try:\n    c.main(['slug', 'encode', '{}'])\nexcept SystemExit: pass\n"
            "print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'])")
    for given, expected in ((None, "True"), ("False", "False")):
        env = cli_env() if given is None else cli_env(LITELLM_LOCAL_MODEL_COST_MAP=given)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.splitlines()[-1] == expected, os.linesep.join([out.stdout, out.stderr])
