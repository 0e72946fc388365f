"""Per-deployment sampling policy: which of logprobs / top_logprobs / return_token_ids /
prompt_logprobs to add to an upstream request.

Pure Python (no LiteLLM import): the adapter in `callbacks/` describes where the call goes as a
`Target` (provider, deployment, price, which params the provider accepts) and asks `decide()`.
Rules come from a YAML file (`configs/policies.yaml`), first match wins, unset actions fall back
to `defaults`. `PolicyFile` keeps the last good version of that file and re-reads it when it
changes, from a background thread, so the request path never touches the disk.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("litellm_rllm.policy")

Switch = Union[bool, Literal["auto"]]

# Parameters the policy may add, in the order they are reported.
INJECTABLE = ("logprobs", "top_logprobs", "return_token_ids", "prompt_logprobs")


class PolicyError(Exception):
    """The policies file is invalid; the message names file, line and key."""


class Actions(BaseModel):
    """What a rule (or `defaults`) sets. `None` = not set here, fall back to defaults."""

    model_config = ConfigDict(extra="forbid")

    logprobs: Optional[Switch] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    return_token_ids: Optional[Switch] = None
    prompt_logprobs: Optional[int] = Field(None, ge=0, le=20)
    sample_rate: Optional[float] = Field(None, ge=0.0, le=1.0)
    allow_request_override: Optional[bool] = None
    strip_from_response: Optional[bool] = None


class Defaults(Actions):
    logprobs: Switch = "auto"
    top_logprobs: int = Field(0, ge=0, le=20)
    return_token_ids: Switch = "auto"
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    allow_request_override: bool = True
    strip_from_response: bool = True


class Match(BaseModel):
    """All set keys must hold. Globs use fnmatch (`*`, `?`, `[...]`)."""

    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = None
    provider: Optional[str] = None
    deployment: Optional[str] = None
    min_output_cost_per_mtok: Optional[float] = Field(None, ge=0)
    max_output_cost_per_mtok: Optional[float] = Field(None, ge=0)

    def holds(self, target: "Target") -> bool:
        if self.model is not None and not fnmatch.fnmatchcase(target.model_group or "", self.model):
            return False
        if self.provider is not None and not fnmatch.fnmatchcase(target.provider or "", self.provider):
            return False
        if self.deployment is not None and not fnmatch.fnmatchcase(
            target.deployment_model or "", self.deployment
        ):
            return False
        price = target.output_cost_per_mtok
        if self.min_output_cost_per_mtok is not None and (price is None or price < self.min_output_cost_per_mtok):
            return False
        if self.max_output_cost_per_mtok is not None and (price is None or price > self.max_output_cost_per_mtok):
            return False
        return True


class Rule(Actions):
    name: Optional[str] = None
    match: Match = Field(default_factory=Match)


class Policies(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: Defaults = Field(default_factory=Defaults)
    rules: list[Rule] = Field(default_factory=list)

    def find(self, target: "Target") -> tuple[str, Optional[Rule]]:
        for i, rule in enumerate(self.rules):
            if rule.match.holds(target):
                return (rule.name or f"rules[{i}]"), rule
        return "defaults", None

    def effective(self, rule: Optional[Rule]) -> Defaults:
        if rule is None:
            return self.defaults
        merged = self.defaults.model_dump()
        merged.update(rule.model_dump(exclude_none=True, include=set(Actions.model_fields)))
        return Defaults(**merged)


@dataclass(frozen=True)
class Target:
    """Where one call goes, as LiteLLM's router resolved it."""

    model_group: Optional[str]
    provider: Optional[str] = None
    deployment_model: Optional[str] = None
    output_cost_per_mtok: Optional[float] = None
    supported_params: frozenset[str] = frozenset()
    vllm_family: bool = False
    stream: bool = False


@dataclass
class Decision:
    """What to add upstream for one call, and what to hide from the client afterwards."""

    rule: str
    params: dict[str, Any] = field(default_factory=dict)
    sampled: bool = True
    strip: bool = True
    skipped: dict[str, str] = field(default_factory=dict)
    override: Optional[dict[str, Any]] = None
    override_refused: bool = False

    def injected(self) -> dict[str, Any]:
        """The trace's `injected` field."""
        out: dict[str, Any] = dict(self.params)
        out["rule"] = self.rule
        if not self.sampled:
            out["sampled"] = False
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        if self.override is not None:
            out["override"] = dict(self.override)
            if self.override_refused:
                out["override_refused"] = True
        return out


def sample_hit(call_id: str, rate: float) -> bool:
    """Deterministic per call id: the same id always decides the same way."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(call_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < rate


def decide(
    policies: Policies,
    target: Target,
    *,
    call_id: str,
    client_params: Mapping[str, Any] | None = None,
    override: Mapping[str, Any] | None = None,
) -> Decision:
    """Decide the parameters to add for one call.

    Never adds a parameter the provider would reject (so an injection can't turn a good request
    into an upstream error), never overrides a value the client set itself.
    """
    rule_name, rule = policies.find(target)
    act = policies.effective(rule)
    decision = Decision(rule=rule_name, strip=act.strip_from_response)
    wanted: dict[str, Any] = {
        "logprobs": act.logprobs,
        "top_logprobs": act.top_logprobs,
        "return_token_ids": act.return_token_ids,
        "prompt_logprobs": act.prompt_logprobs,
    }
    if override:
        decision.override = dict(override)
        if act.allow_request_override:
            wanted.update({k: v for k, v in override.items() if k in wanted and v is not None})
        else:
            decision.override_refused = True

    decision.sampled = sample_hit(call_id, act.sample_rate)
    if not decision.sampled:
        return decision

    client = client_params or {}
    supports = target.supported_params

    logprobs = wanted["logprobs"]
    if logprobs is True or logprobs == "auto":
        if "logprobs" in supports:
            decision.params["logprobs"] = True
        elif logprobs is True:
            decision.skipped["logprobs"] = f"provider {target.provider!r} does not accept logprobs"
    top = wanted["top_logprobs"] or 0
    if top > 0 and decision.params.get("logprobs"):
        if "top_logprobs" in supports:
            decision.params["top_logprobs"] = top
        else:
            decision.skipped["top_logprobs"] = f"provider {target.provider!r} does not accept top_logprobs"

    token_ids = wanted["return_token_ids"]
    if token_ids is True or token_ids == "auto":
        if target.vllm_family:
            decision.params["return_token_ids"] = True
        elif token_ids is True:
            decision.skipped["return_token_ids"] = "only vLLM-family backends return token ids"

    prompt_lp = wanted["prompt_logprobs"]
    if prompt_lp is not None:
        if not target.vllm_family:
            decision.skipped["prompt_logprobs"] = "only vLLM-family backends return prompt logprobs"
        elif target.stream:
            decision.skipped["prompt_logprobs"] = "vLLM rejects prompt_logprobs with stream=true"
        else:
            decision.params["prompt_logprobs"] = prompt_lp

    # The client's own values win; what it set is not "injected".
    for key in list(decision.params):
        if client.get(key) is not None:
            del decision.params[key]
    return decision


# ---------------------------------------------------------------------------------------
# Loading and hot reload
# ---------------------------------------------------------------------------------------


def parse_policies(text: str, source: str = "<policies>") -> Policies:
    """Parse and validate; errors name the file, the line and the key."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the top level must be a mapping with 'defaults' and 'rules'")
    try:
        return Policies(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [p for p in err["loc"]]
            line = _line_of(root, loc)
            where = f"{source}:{line}" if line else source
            problems.append(f"{where}: {'.'.join(str(p) for p in loc)}: {err['msg']}")
        raise PolicyError("; ".join(problems)) from None


def load_policies(path: Path) -> Policies:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policies file: {exc}") from None
    return parse_policies(text, str(path))


def _line_of(node: Any, loc: list[Any]) -> Optional[int]:
    """1-based line of the YAML node at `loc` (deepest existing ancestor if it's missing)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            key = next((k for k, v in node.value if getattr(k, "value", None) == part), None)
            if nxt is None:
                return line
            line = (key.start_mark.line + 1) if key is not None else line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


class PolicyFile:
    """The current policies of one file, re-read in the background when the file changes.

    An invalid edit keeps the last good policies and logs the error once per change; the
    request path only reads `.current` (an attribute read, no I/O).
    """

    def __init__(self, path: Optional[Path], *, interval_s: float = 1.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self.current: Policies = Policies()
        self.last_error: Optional[str] = None
        self.reloads = 0
        self._stamp: Optional[tuple[int, int]] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if path is not None:
            self.current = load_policies(path)  # a bad file at start stops the start
            self._stamp = self._stat()

    def _stat(self) -> Optional[tuple[int, int]]:
        try:
            st = self.path.stat() if self.path else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size) if st else None

    def check(self) -> bool:
        """Reload if the file changed; True if new policies took effect."""
        stamp = self._stat()
        if stamp is None or stamp == self._stamp or self.path is None:
            return False
        self._stamp = stamp
        try:
            self.current = load_policies(self.path)
        except PolicyError as exc:
            self.last_error = str(exc)
            log.error("litellm-rllm: keeping the last good policies; %s", exc)
            return False
        self.last_error = None
        self.reloads += 1
        log.info("litellm-rllm: reloaded policies from %s", self.path)
        return True

    def start(self) -> None:
        if self.path is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="rllm-policy-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watcher must never die
                log.exception("litellm-rllm: policy watcher error")
