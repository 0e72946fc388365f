"""The writer's helper processes: out of the terminal's Ctrl-C, inside the proxy's CPU share."""

from __future__ import annotations

import os
import sys

from litellm_rllm.writer.helper_process import start_helper


def test_a_helper_has_its_own_process_group_but_shares_the_proxys_session() -> None:
    proc = start_helper(sys.executable, "litellm_rllm.writer.store_process")
    try:
        # a terminal's SIGINT goes to its foreground group: the proxy's, never the helper's
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        # autogroup scheduling shares the CPU by session: the helper's CPU is the proxy's share
        assert os.getsid(proc.pid) == os.getsid(0)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        assert proc.wait(10) is not None  # a helper ends when its stdin closes
        proc.stdout.close()  # type: ignore[union-attr]
