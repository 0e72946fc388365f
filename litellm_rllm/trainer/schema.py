"""What the trainer's side stores and exchanges: rewards, episode ends, pauses, feed items.

Ground floor for `store/` and the routes: imports nothing of ours but the trace schema. Input
from HTTP bodies and Python calls goes through the `parse_*` functions, which raise
`TrainerInputError` naming the offending field (the routes answer 400 with it).

Policy versions are integers (0 <= v < 2**63): ordered, and `max_staleness` is a difference of
two of them. A JSON string of digits is taken as the integer it spells.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any, Literal, Mapping, Optional, Union

from pydantic import BaseModel, Field

from ..trace import Trace

RewardValue = Union[float, dict[str, float]]
PauseMode = Literal["hold", "reject"]
ChangeKind = Literal["trace", "reward", "finish"]

MAX_REWARD_NAMES = 64
MAX_NAME_CHARS = 128
MAX_SESSION_CHARS = 256
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_METADATA_BYTES = 64 * 1024
MAX_VERSION = 2**63 - 1


class TrainerInputError(ValueError):
    """Bad input; `field` names what was wrong (HTTP 400)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class IdempotencyConflict(ValueError):
    """An idempotency key (or a finished session) seen before with a different body (HTTP 409)."""


class Reward(BaseModel):
    """One reward: for the whole session (`trace_id` None) or for one of its traces."""

    reward_id: int
    session_id: str
    trace_id: Optional[str] = None
    reward: RewardValue
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: Optional[str] = None
    team_id: Optional[str] = None
    created_at: datetime
    duplicate: bool = Field(False, description="this call repeated a stored reward (same idempotency key)")


class Finish(BaseModel):
    """The end of an episode, with its optional final reward."""

    session_id: str
    reward: Optional[RewardValue] = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    team_id: Optional[str] = None
    created_at: datetime
    duplicate: bool = Field(False, description="the session was already finished with this same body")


class SessionRewards(BaseModel):
    """A session's rewards in the order they were stored, and its end (if any): what a
    trajectory view attaches to the session's traces."""

    session_id: str
    rewards: list[Reward] = Field(default_factory=list)
    finish: Optional[Finish] = None

    @property
    def finished(self) -> bool:
        return self.finish is not None

    def session_rewards(self) -> list[Reward]:
        """Rewards given to the whole session (no `trace_id`)."""
        return [r for r in self.rewards if r.trace_id is None]

    def by_trace(self) -> dict[str, list[Reward]]:
        """Rewards given to single traces, by trace id."""
        out: dict[str, list[Reward]] = {}
        for r in self.rewards:
            if r.trace_id is not None:
                out.setdefault(r.trace_id, []).append(r)
        return out

    def final(self) -> Optional[RewardValue]:
        """The final reward given with the finish, if any."""
        return None if self.finish is None else self.finish.reward


class PauseState(BaseModel):
    """A model group paused for a weight sync."""

    model: str
    mode: PauseMode = "hold"
    since_us: int

    @property
    def since(self) -> datetime:
        return datetime.fromtimestamp(self.since_us / 1e6, tz=timezone.utc)


class Change(BaseModel):
    """One item of the change feed, at position `pos` in the store-wide commit order."""

    pos: int
    kind: ChangeKind
    session_id: str
    trace: Optional[Trace] = None
    reward: Optional[Reward] = None
    finish: Optional[Finish] = None
    # Filled for `finish` items of a finished-episodes feed: the whole episode.
    episode_traces: Optional[list[Trace]] = None
    episode_rewards: Optional[list[Reward]] = None

    def team_id(self) -> Optional[str]:
        """The team the item belongs to (traces: the caller's; rewards/finishes: the poster's)."""
        if self.trace is not None:
            return (self.trace.caller or {}).get("team_id")
        body = self.reward or self.finish
        return None if body is None else body.team_id

    def to_json(self) -> dict[str, Any]:
        """The wire form: `{"kind", "pos", ...the trace's / reward's / finish's fields}`."""
        if self.trace is not None:
            out = self.trace.model_dump(mode="json")
        else:
            body = self.reward if self.reward is not None else self.finish
            out = body.model_dump(mode="json", exclude={"duplicate"}) if body is not None else {}
        out.setdefault("session_id", self.session_id)
        if self.episode_traces is not None:
            out["traces"] = [t.model_dump(mode="json") for t in self.episode_traces]
        if self.episode_rewards is not None:
            out["rewards"] = [r.model_dump(mode="json", exclude={"duplicate"}) for r in self.episode_rewards]
        return {"kind": self.kind, "pos": self.pos, **out}


class ChangePage(BaseModel):
    """Feed items after a cursor, and the cursor to ask from next (past every row examined)."""

    items: list[Change] = Field(default_factory=list)
    next: int


# ------------------------------------------------------------------------------ input


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_reward_value(value: Any, field: str = "reward") -> RewardValue:
    """A finite number, or an object of named finite numbers (1..64 names)."""
    if _is_number(value):
        if not math.isfinite(value):
            raise TrainerInputError(field, "must be a finite number")
        return float(value)
    if isinstance(value, Mapping):
        if not value:
            raise TrainerInputError(field, "an object of named rewards needs at least one name")
        if len(value) > MAX_REWARD_NAMES:
            raise TrainerInputError(field, f"at most {MAX_REWARD_NAMES} named rewards")
        out: dict[str, float] = {}
        for name, number in value.items():
            if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
                raise TrainerInputError(field, f"reward names are 1..{MAX_NAME_CHARS} characters")
            if not _is_number(number) or not math.isfinite(number):
                raise TrainerInputError(f"{field}.{name}", "must be a finite number")
            out[name] = float(number)
        return out
    raise TrainerInputError(field, "must be a number or an object of named numbers")


def parse_metadata(value: Any, field: str = "metadata") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TrainerInputError(field, "must be an object")
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TrainerInputError(field, f"must be plain JSON ({exc})") from None
    if size > MAX_METADATA_BYTES:
        raise TrainerInputError(field, f"at most {MAX_METADATA_BYTES} bytes of JSON")
    return dict(value)


def parse_session(value: Any, field: str = "session") -> str:
    if not isinstance(value, str) or not value.strip():
        raise TrainerInputError(field, "must be a non-empty string")
    if len(value) > MAX_SESSION_CHARS or "\x00" in value:
        raise TrainerInputError(field, f"at most {MAX_SESSION_CHARS} characters, no NUL")
    return value


def parse_trace_id(value: Any, field: str = "trace_id") -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_SESSION_CHARS or "\x00" in value:
        raise TrainerInputError(field, f"must be a trace id (a string of 1..{MAX_SESSION_CHARS} characters)")
    return value


def parse_idempotency_key(value: Any, field: str = "Idempotency-Key") -> Optional[str]:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_IDEMPOTENCY_KEY_CHARS or not value.isprintable():
        raise TrainerInputError(field, f"must be 1..{MAX_IDEMPOTENCY_KEY_CHARS} printable characters")
    return value


def parse_version(value: Any, field: str = "version") -> int:
    """A policy version: an integer 0..2**63-1 (or a string of its digits)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_VERSION:
        raise TrainerInputError(field, "must be an integer from 0 to 2**63-1")
    return value


def parse_model(value: Any, field: str = "model") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_SESSION_CHARS:
        raise TrainerInputError(field, f"must be a model group name (1..{MAX_SESSION_CHARS} characters)")
    return value


def _object(body: Any, allowed: set[str]) -> Mapping[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, Mapping):
        raise TrainerInputError("body", "must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise TrainerInputError(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")
    return body


def parse_reward_body(body: Any) -> tuple[RewardValue, Optional[str], dict[str, Any]]:
    """`{"reward": 1.0 | {"name": 1.0, ...}, "trace_id"?: str, "metadata"?: {...}}`."""
    obj = _object(body, {"reward", "trace_id", "metadata"})
    if "reward" not in obj:
        raise TrainerInputError("reward", "required (a number or an object of named numbers)")
    return parse_reward_value(obj["reward"]), parse_trace_id(obj.get("trace_id")), parse_metadata(obj.get("metadata"))


def parse_finish_body(body: Any) -> tuple[Optional[RewardValue], dict[str, Any]]:
    """`{"reward"?: number | {...}, "metadata"?: {...}}` (an empty body is fine)."""
    obj = _object(body, {"reward", "metadata"})
    reward = obj.get("reward")
    return (None if reward is None else parse_reward_value(reward)), parse_metadata(obj.get("metadata"))


def parse_policy_version_body(body: Any) -> tuple[str, int]:
    """`{"model": "policy" | "*", "version": 12}`."""
    obj = _object(body, {"model", "version"})
    if "model" not in obj:
        raise TrainerInputError("model", "required")
    if "version" not in obj:
        raise TrainerInputError("version", "required")
    return parse_model(obj["model"]), parse_version(obj["version"])


def parse_pause_body(body: Any) -> tuple[str, PauseMode]:
    """`{"model": "policy" | "*", "mode": "hold" | "reject"}` (mode defaults to hold)."""
    obj = _object(body, {"model", "mode"})
    if "model" not in obj:
        raise TrainerInputError("model", "required")
    mode = obj.get("mode", "hold")
    if mode not in ("hold", "reject"):
        raise TrainerInputError("mode", "must be 'hold' or 'reject'")
    return parse_model(obj["model"]), mode


def parse_resume_body(body: Any) -> Optional[str]:
    """`{"model": ...}`, or no model: resume every paused group."""
    obj = _object(body, {"model"})
    return None if obj.get("model") is None else parse_model(obj["model"])


def body_hash(*parts: Any) -> str:
    """Fingerprint of a request body: a repeated idempotency key must come with the same one."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = [
    "Change",
    "ChangeKind",
    "ChangePage",
    "Finish",
    "IdempotencyConflict",
    "PauseMode",
    "PauseState",
    "Reward",
    "RewardValue",
    "SessionRewards",
    "TrainerInputError",
    "body_hash",
    "parse_finish_body",
    "parse_idempotency_key",
    "parse_metadata",
    "parse_model",
    "parse_pause_body",
    "parse_policy_version_body",
    "parse_resume_body",
    "parse_reward_body",
    "parse_reward_value",
    "parse_session",
    "parse_trace_id",
    "parse_version",
]
