"""Policy versions: which version a model group runs, a call's `{start, end}` stamp, and the
read filters `min_policy_version` / `max_staleness`.

A version announced for model `"*"` applies to every group without its own version.
Staleness of a trace = the group's newest announced version - the version its call started
under (`policy_version.start`); `max_staleness=0` keeps the calls sent (and so finished) under
the newest version. Traces without a start version never pass these filters.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from ..trace import PolicyVersion, Trace
from .schema import TrainerInputError, parse_version

ALL_MODELS = "*"
SLUG_KEY = "policy_version"  # a slug key for trainers that tag their requests themselves


def version_for(versions: Mapping[str, int], model: Optional[str]) -> Optional[int]:
    """The group's announced version, else the `"*"` one, else None."""
    if model is not None:
        found = versions.get(model)
        if found is not None:
            return found
    return versions.get(ALL_MODELS)


def slug_version(session: Mapping[str, Any]) -> Optional[int]:
    """A version the caller tagged its request with (slug key `policy_version`), if valid."""
    value = session.get(SLUG_KEY)
    if value is None:
        return None
    try:
        return parse_version(value, SLUG_KEY)
    except TrainerInputError:
        return None


def call_span(start: Optional[int], end: Optional[int], tagged: Optional[int] = None) -> Optional[PolicyVersion]:
    """A trace's stamp: the caller's tag wins for both ends; None when nothing is known."""
    if tagged is not None:
        return PolicyVersion(start=tagged, end=tagged)
    if start is None and end is None:
        return None
    return PolicyVersion(start=start, end=end)


def parse_filters(min_policy_version: Any, max_staleness: Any) -> tuple[Optional[int], Optional[int]]:
    """Validate the two read filters (400 naming the field on the HTTP side)."""
    lo = None if min_policy_version is None else parse_version(min_policy_version, "min_policy_version")
    stale = None if max_staleness is None else parse_version(max_staleness, "max_staleness")
    return lo, stale


def policy_filter(
    min_policy_version: Optional[int],
    max_staleness: Optional[int],
    versions: Callable[[], Mapping[str, int]],
) -> Optional[Callable[[Trace], bool]]:
    """A predicate for the filters, or None when neither is set. `versions` is called once,
    only for `max_staleness` (the newest announced versions, read from the store)."""
    if min_policy_version is None and max_staleness is None:
        return None
    newest = versions() if max_staleness is not None else {}

    def keep(trace: Trace) -> bool:
        span = trace.policy_version
        start = None if span is None else span.start
        if start is None:
            return False
        if min_policy_version is not None and start < min_policy_version:
            return False
        if max_staleness is not None:
            current = version_for(newest, trace.model)
            if current is None or current - start > max_staleness:
                return False
        return True

    return keep


__all__ = ["ALL_MODELS", "SLUG_KEY", "call_span", "parse_filters", "policy_filter", "slug_version", "version_for"]
