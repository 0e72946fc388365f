"""The training package stands alone: no LiteLLM, no callbacks, no store, no pyarrow on import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_importing_training_loads_nothing_of_litellm_the_store_or_pyarrow() -> None:
    code = (
        "import sys, litellm_rllm.training\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('litellm', 'pyarrow')"
        " or m.startswith(('litellm_rllm.store', 'litellm_rllm.callbacks')))\n"
        "print(bad)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
