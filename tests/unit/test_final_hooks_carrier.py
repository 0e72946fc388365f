"""`finish.enroll`: the first entry to enroll with a `Plugin` carries the final hooks in its
class `__dict__` (where LiteLLM looks), the others carry none; a new Plugin decides again."""

from __future__ import annotations

import pytest

from litellm_rllm.callbacks import finish
from litellm_rllm.callbacks import plugin as plugin_module
from litellm_rllm.callbacks.plugin import Plugin
from litellm_rllm.settings import Settings

HOOKS = ("async_post_call_success_hook", "async_post_call_failure_hook", "async_post_call_streaming_iterator_hook")


class Sampling:
    pass


class Tracer:
    pass


def carriers(*classes: type) -> dict[str, list[str]]:
    return {hook: [c.__name__ for c in classes if hook in vars(c)] for hook in HOOKS}


def start(monkeypatch: pytest.MonkeyPatch, *entries: tuple[type, str]) -> Plugin:
    """A fresh Plugin (as a new proxy gets) whose entries are created in this order."""
    p = Plugin(Settings())
    monkeypatch.setattr(plugin_module, "_current", p)
    for cls, role in entries:
        finish.enroll(cls(), role)
    return p


def test_first_entry_to_enroll_carries_the_hooks_and_a_new_plugin_decides_again(monkeypatch):
    p = start(monkeypatch, (Sampling, finish.SAMPLING), (Tracer, finish.TRACER))
    assert carriers(Sampling, Tracer) == {h: ["Sampling"] for h in HOOKS}
    assert p.calls.roles == {finish.SAMPLING, finish.TRACER}  # the carrier serves both roles

    start(monkeypatch, (Tracer, finish.TRACER))  # the tracer alone
    assert carriers(Tracer) == {h: ["Tracer"] for h in HOOKS}

    start(monkeypatch, (Tracer, finish.TRACER), (Sampling, finish.SAMPLING))  # the other order
    assert carriers(Sampling, Tracer) == {h: ["Tracer"] for h in HOOKS}

    start(monkeypatch, (Sampling, finish.SAMPLING))  # the sampling entry alone, after being stripped
    assert carriers(Sampling) == {h: ["Sampling"] for h in HOOKS}


def test_the_carrier_created_again_keeps_the_hooks(monkeypatch):
    p = start(monkeypatch, (Sampling, finish.SAMPLING), (Tracer, finish.TRACER), (Sampling, finish.SAMPLING))
    assert carriers(Sampling, Tracer) == {h: ["Sampling"] for h in HOOKS}
    assert p.calls.carrier == finish.SAMPLING
