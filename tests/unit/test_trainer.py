"""The trainer's plain parts without a proxy: the signal, the pause gate, the live state poller
(on a real SQLite store), drain reports, version stamps, the CLI `traces tail`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import litellm_rllm.store as store_mod
from litellm_rllm.trace import PolicyVersion, Trace
from litellm_rllm.trainer.live import LiveState
from litellm_rllm.trainer.pause import PauseGate, PauseRefused, drain_report
from litellm_rllm.trainer.schema import PauseState, TrainerInputError, parse_reward_body
from litellm_rllm.trainer.signal import Signal
from litellm_rllm.trainer.versions import call_span, slug_version


def paused(model: str, mode: str = "hold", since: int = 1) -> dict[str, PauseState]:
    return {model: PauseState(model=model, mode=mode, since_us=since)}  # type: ignore[arg-type]


def fresh_live(**kw: Any) -> LiveState:
    live = LiveState(lambda: None, **kw)
    live.last_ok = time.monotonic()
    return live


# ------------------------------------------------------------------------------ signal


async def test_signal_wakes_a_waiter_fired_from_another_thread_and_never_misses_an_earlier_fire() -> None:
    sig = Signal()
    seen = sig.generation
    sig.fire()  # between reading the generation and waiting: must not be missed
    start = time.monotonic()
    assert await sig.wait(seen, 5) is True and time.monotonic() - start < 0.1
    seen = sig.generation
    threading.Timer(0.1, sig.fire).start()
    assert await sig.wait(seen, 5) is True
    assert await sig.wait(sig.generation, 0.05) is False
    assert not sig.has_waiters()


# ------------------------------------------------------------------------------ pause gate


async def test_hold_waits_until_resume_and_counts_the_call_in_flight_once() -> None:
    live = fresh_live()
    gate = PauseGate(live, hold_timeout_s=10)
    live.apply_pauses(paused("policy"))
    task = asyncio.create_task(gate.admit("policy"))
    await asyncio.sleep(0.1)
    assert not task.done() and gate.held == {"policy": 1} and gate.in_flight == {}
    other = await gate.admit("judge")  # another group is not paused
    live.apply_pauses({})
    ticket = await asyncio.wait_for(task, 2)
    assert gate.held == {} and gate.in_flight == {"policy": 1, "judge": 1}
    ticket.release()
    ticket.release()  # a second release changes nothing
    other.release()
    assert gate.in_flight == {}


async def test_reject_answers_429_with_a_retry_after_the_openai_client_honours() -> None:
    live = fresh_live()
    gate = PauseGate(live, retry_after_s=1.0)
    live.apply_pauses(paused("*", "reject"))  # every group
    with pytest.raises(PauseRefused) as info:
        await gate.admit("anything")
    assert info.value.status == 429
    assert info.value.headers() == {"Retry-After": "1", "retry-after-ms": "1000", "x-should-retry": "true"}
    assert gate.counters["pause_rejected"] == 1 and gate.in_flight == {}


async def test_a_hold_that_outlasts_its_timeout_is_a_503() -> None:
    live = fresh_live()
    gate = PauseGate(live, hold_timeout_s=0.2)
    live.apply_pauses(paused("policy"))
    start = time.monotonic()
    with pytest.raises(PauseRefused) as info:
        await gate.admit("policy")
    assert info.value.status == 503 and 0.15 < time.monotonic() - start < 2
    assert gate.counters["pause_hold_timeouts"] == 1 and gate.held == {}


async def test_a_stale_pause_state_is_ignored_and_counted_fail_open() -> None:
    live = fresh_live(stale_after_s=0.1)
    gate = PauseGate(live)
    live.apply_pauses(paused("policy", "reject"))
    live.last_ok = time.monotonic() - 1  # the store has not answered for a second
    (await gate.admit("policy")).release()
    assert live.counters["pause_fail_open"] == 1


def test_drain_report_needs_every_live_proxy_to_have_applied_the_pause_with_nothing_in_flight() -> None:
    pauses = paused("policy", since=7)
    local = {"in_flight": {}, "held": {"policy": 2}, "applied": {"policy": 7}}
    lagging = {"other": (0.3, {"in_flight": {}, "held": {}, "applied": {}})}
    busy = {"other": (0.3, {"in_flight": {"policy": 1}, "held": {}, "applied": {"policy": 7}})}
    done = {"other": (0.3, {"in_flight": {"judge": 3}, "held": {}, "applied": {"policy": 7}})}
    assert drain_report(pauses, lagging, "me", local)["drained"] == {"policy": False}
    assert drain_report(pauses, busy, "me", local)["drained"] == {"policy": False}
    report = drain_report(pauses, done, "me", local)
    assert report["drained"] == {"policy": True}
    assert report["in_flight"] == {"judge": 3} and report["held"] == {"policy": 2}
    assert [p["self"] for p in report["proxies"]] == [True, False]


# ------------------------------------------------------------------------------ live state


def test_live_state_reads_versions_and_pauses_from_the_store_and_survives_its_failure(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'traces.db'}"
    opened: list[Any] = []

    def open_store() -> Any:
        if opened:
            raise OSError("store gone")
        opened.append(store_mod.open(url))
        return opened[-1]

    counters: Counter[str] = Counter()
    live = LiveState(open_store, counters=counters, heartbeat_state=lambda: {"in_flight": {"policy": 2}})
    with store_mod.open(url) as st:
        st.set_policy_version("*", 3)
        st.set_pause("policy", "reject")
        st.write([Trace(trace_id="t", session_id="s")])
        assert live.poll_once()
        assert live.version_for("anything") == 3 and live.pause_for("policy").mode == "reject"
        assert live.head == 1
        [(_age, beat)] = st.heartbeats(10).values()
        assert beat == {"in_flight": {"policy": 2}, "applied": {"policy": live.pauses["policy"].since_us}}
        opened[0].close()  # the poller's connection breaks ...
        assert not live.poll_once()
        assert not live.poll_once()  # ... and so does reconnecting
    assert counters["live_poll_errors"] == 2 and live.version_for("x") == 3  # last known state kept


def test_a_poll_that_read_the_store_before_a_pause_was_posted_here_does_not_undo_it() -> None:
    class Racing:
        """The poller's read returns the state from before the pause; the pause is posted to
        this proxy (stored, then applied to the cache) while the read is under way."""

        def control_state(self) -> Any:
            live.apply_pauses(paused("policy"))
            return {}, {}, 0

        def heartbeat(self, *args: Any) -> None:
            pass

    live = LiveState(lambda: Racing())
    assert live.poll_once()
    assert live.pause_for("policy") is not None


def test_live_state_thread_sees_a_change_within_its_poll_interval(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'traces.db'}"
    live = LiveState(lambda: store_mod.open(url), poll_s=0.1).start()
    try:
        with store_mod.open(url) as st:
            st.set_policy_version("policy", 9)
            start = time.monotonic()
            while live.version_for("policy") != 9 and time.monotonic() - start < 5:
                time.sleep(0.01)
            assert time.monotonic() - start < 0.5
    finally:
        live.stop()


# ------------------------------------------------------------------------------ versions, input


def test_a_call_is_stamped_start_and_end_and_a_caller_tag_wins() -> None:
    assert call_span(4, 5) == PolicyVersion(start=4, end=5)
    assert call_span(None, None) is None
    assert call_span(4, 5, tagged=slug_version({"policy_version": "12"})) == PolicyVersion(start=12, end=12)
    assert slug_version({"policy_version": "v1"}) is None and slug_version({}) is None


def test_reward_body_errors_name_the_field() -> None:
    assert parse_reward_body({"reward": 2, "trace_id": "t"}) == (2.0, "t", {})
    for body, field in [({}, "reward"), ({"reward": {"a": None}}, "reward.a"), ({"reward": 1, "x": 1}, "x"),
                        ({"reward": {"": 1}}, "reward"), ({"reward": 1, "metadata": {"o": object()}}, "metadata")]:
        with pytest.raises(TrainerInputError) as info:
            parse_reward_body(body)
        assert info.value.field == field


# ------------------------------------------------------------------------------ CLI


def test_cli_tail_prints_feed_items_from_a_store_and_the_cursor_to_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'traces.db'}"
    with store_mod.open(url) as st:
        st.write([Trace(trace_id="t1", session_id="ep"), Trace(trace_id="t2", session_id="other")])
        st.add_reward("ep", 1)
        st.finish("ep", 2)

    def tail(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "litellm_rllm.cli", "traces", "tail", "--store", url,
                               "--idle-exit", "0.3", *args], capture_output=True, text=True, timeout=60)

    out = tail("--after", "0", "--session", "ep", "--limit", "1")
    assert out.returncode == 0 and [line[:20] for line in out.stdout.splitlines()] == [
        '{"kind":"trace","pos', '{"kind":"reward","po', '{"kind":"finish","po']
    assert out.stderr.strip().endswith("cursor: 4")
    assert tail("--after", "4").stdout == ""
    bad = tail("--after", "yesterday")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --after")
