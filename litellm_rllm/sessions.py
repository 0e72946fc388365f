"""Which keys a trace is stored and found under: its session's names, in its team's namespace.

A trace can be looked up by its `session_id`, by each of its `session_uids` (outer to inner:
rLLM's nested sessions, so an outer uid finds the inner sessions' traces too) and by its
`session_name` (what rLLM's SDK sends: `session_name` + `session_uids`, never a `session_id`).
`seq` counts within one of them, the session key: the session id, else the innermost uid, else
the name.

Sessions are namespaced by team: the keys of a trace made with a team's key are qualified
with that team (`team` + U+001F + key), so two teams that both name a session `episode-0` (or
one that names the other's uid) write two different sessions, and a read of one never holds
the other's calls. Keys of callers without a team (the master key, admin and user keys) stay
as they are. Slugs cannot carry control characters in these fields (`slug.py`), so an
unqualified key never looks like a qualified one.

Ground floor: plain strings, no imports of ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

TEAM_SEP = "\x1f"  # unit separator: refused in slug session fields, so qualified keys are unforgeable


def team_of(caller: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The team a trace's caller belonged to (LiteLLM's `team_id`), or None."""
    team = (caller or {}).get("team_id") if isinstance(caller, Mapping) else None
    return str(team) if team else None


def qualify(team: Optional[str], key: str) -> str:
    """`key` in `team`'s namespace; an empty key (no session) and a caller of no team: as is."""
    return f"{team}{TEAM_SEP}{key}" if team and key else key


def split_key(key: str) -> tuple[Optional[str], str]:
    """A stored key -> (team or None, the session's own key)."""
    team, sep, rest = key.partition(TEAM_SEP)
    return (team, rest) if sep else (None, key)


def session_key(session_id: Optional[str], session_uids: Sequence[str], session_name: Optional[str] = None,
                team: Optional[str] = None) -> str:
    """The key `seq` counts within: the session id, else the innermost uid, else the name; ''
    for a trace of no session."""
    key = session_id or (session_uids[-1] if session_uids else None) or session_name or ""
    return qualify(team, key)


def lookup_keys(session_id: Optional[str], session_uids: Sequence[str], session_name: Optional[str] = None,
                team: Optional[str] = None) -> tuple[str, ...]:
    """Every key the trace is found under: id, each uid, name; each once, in that order."""
    out: list[str] = []
    for key in (session_id, *session_uids, session_name):
        if key and isinstance(key, str):
            qualified = qualify(team, key)
            if qualified not in out:
                out.append(qualified)
    return tuple(out)


def name_of(metadata: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The `session_name` a trace's metadata carries (rLLM's SDK sets it), or None."""
    name = (metadata or {}).get("session_name")
    return name if isinstance(name, str) and name else None


__all__ = ["TEAM_SEP", "lookup_keys", "name_of", "qualify", "session_key", "split_key", "team_of"]
