"""Per-deployment sampling policy: which of logprobs / top_logprobs / return_token_ids /
prompt_logprobs to add to an upstream request.

Pure Python (no LiteLLM import): the adapter in `callbacks/` describes where the call goes as a
`Target` (provider, deployment, price, which params the provider accepts) and asks `decide()`.
Rules come from a YAML file (`configs/policies.yaml`), first match wins, unset actions fall back
to `defaults`. `PolicyFile` keeps the last good version of that file and re-reads it when it
changes, from a background thread, so the request path never touches the disk. Without a file
the built-in policies apply (`default_policies.yaml` in this package, the same rules as the
shipped `configs/policies.yaml`), so a deployment that names no file still gets token data
from its vLLM backends.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.resources
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

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

    @field_validator("logprobs", "return_token_ids", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # One clear message instead of pydantic's one-per-union-member ("...bool", "...literal").
        if value is None or value is True or value is False or value == "auto":
            return value
        raise ValueError(f"must be true, false or auto, got {value!r}")


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

    _effective: dict[int, Defaults] = PrivateAttr(default_factory=dict)

    def effective(self, rule: Optional[Rule]) -> Defaults:
        """The rule's actions over the defaults; computed once per rule (this runs per call,
        and policies are immutable once loaded: a reload builds a new `Policies`)."""
        if rule is None:
            return self.defaults
        memo = self.__pydantic_private__["_effective"]  # `self._effective`: ~2.4 us through pydantic
        cached = memo.get(id(rule))
        if cached is None:
            merged = self.defaults.model_dump()
            merged.update(rule.model_dump(exclude_none=True, include=set(Actions.model_fields)))
            cached = memo[id(rule)] = Defaults(**merged)
        return cached


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
    # The legacy completions API (`/v1/completions`): there `logprobs` is the number of
    # alternatives per token (0 = the sampled token only) and `top_logprobs` does not exist.
    completions: bool = False


# OpenAI's legacy completions API takes at most 5 alternatives; vLLM takes up to its max-logprobs.
MAX_COMPLETIONS_LOGPROBS_HOSTED = 5


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

    def injected(self, sent: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """The trace's `injected` field. `sent`: what was added upstream in the route's own
        names where they differ from the policy's (the Responses API's `include`, ...)."""
        out: dict[str, Any] = dict(self.params if sent is None else sent)
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
    sampled: Optional[bool] = None,
) -> Decision:
    """Decide the parameters to add for one call.

    Never adds a parameter the provider would reject (so an injection can't turn a good request
    into an upstream error), never overrides a value the client set itself. `sampled` forces the
    sample_rate outcome (`policy explain` shows what a sampled call gets); None = by call id.
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

    decision.sampled = sample_hit(call_id, act.sample_rate) if sampled is None else sampled
    if not decision.sampled:
        return decision

    client = client_params or {}
    supports = target.supported_params
    where = f"deployment {target.deployment_model!r}" if target.deployment_model else f"provider {target.provider!r}"

    logprobs = wanted["logprobs"]
    if logprobs is True or logprobs == "auto":
        if "logprobs" in supports:
            decision.params["logprobs"] = True
        elif logprobs is True:
            decision.skipped["logprobs"] = f"{where} does not accept logprobs"
    top = wanted["top_logprobs"] or 0
    if target.completions:
        if decision.params.get("logprobs"):
            cap = None if target.vllm_family else MAX_COMPLETIONS_LOGPROBS_HOSTED
            decision.params["logprobs"] = top if cap is None else min(top, cap)
    elif top > 0 and decision.params.get("logprobs"):
        if "top_logprobs" in supports:
            decision.params["top_logprobs"] = top
        else:
            decision.skipped["top_logprobs"] = f"{where} does not accept top_logprobs"

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
    # `top_logprobs` without `logprobs: true` is a 400 at OpenAI and vLLM alike.
    if "top_logprobs" in decision.params and client.get("logprobs") is not None and not client.get("logprobs"):
        del decision.params["top_logprobs"]
        decision.skipped["top_logprobs"] = "the client set logprobs off"
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
        raise PolicyError(_yaml_error(exc, source)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the top level must be a mapping with 'defaults' and 'rules'")
    try:
        return Policies.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [p for p in err["loc"]]
            line = _line_of(root, loc)
            where = f"{source}:{line}" if line else source
            problems.append(f"{where}: {'.'.join(str(p) for p in loc)}: {_message(err)}")
        raise PolicyError("; ".join(problems)) from None


def _message(err: Any) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        loc = err["loc"]
        if len(loc) >= 2 and loc[-2] == "match":
            allowed = list(Match.model_fields)
        elif loc[0] == "rules":
            allowed = list(Rule.model_fields)
        elif loc[0] == "defaults":
            allowed = list(Defaults.model_fields)
        else:
            allowed = list(Policies.model_fields)
        msg = f"unknown key; allowed: {', '.join(allowed)}"
    return msg


def _yaml_error(exc: yaml.YAMLError, source: str) -> str:
    """`FILE:LINE: not valid YAML: PROBLEM (CONTEXT at line N)`, from PyYAML's marks."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return f"{source}: not valid YAML: {exc}"
    out = f"{source}:{mark.line + 1}: not valid YAML: {problem}"
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and cmark is not None:
        out += f" ({context} at line {cmark.line + 1})"
    return out


DEFAULT_POLICIES_RESOURCE = "default_policies.yaml"
DEFAULT_POLICIES_SOURCE = f"(built-in: litellm_rllm/{DEFAULT_POLICIES_RESOURCE})"


def default_policies_text() -> str:
    """The built-in policies file (package data), e.g. to start a policies file from."""
    return importlib.resources.files("litellm_rllm").joinpath(DEFAULT_POLICIES_RESOURCE).read_text("utf-8")


@functools.lru_cache(maxsize=1)
def default_policies() -> Policies:
    """The policies in effect when no policies file is configured (immutable, parsed once)."""
    return parse_policies(default_policies_text(), DEFAULT_POLICIES_SOURCE)


def load_policies(path: Path) -> Policies:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policies file: {exc}") from None
    return _parse_bytes(data, str(path))


def _parse_bytes(data: bytes, source: str) -> Policies:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{source}: not UTF-8: {exc}") from None
    return parse_policies(text, source)


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
    request path only reads `.current` (an attribute read, no I/O). A change is detected by the
    file's content, not its mtime/size: an edit within the filesystem's timestamp granularity
    that keeps the size (`0.25` -> `0.50`) is still seen. A changed file is read again after
    `settle_s` and taken only if both reads agree, so a file caught half-written (an editor that
    truncates, then writes) is not applied: truncated YAML often still parses, minus its last
    rules. The bound from an edit to the new behaviour is one `interval_s` plus `settle_s`.
    `path=None`: the built-in policies (`default_policies()`), never reloaded.
    """

    def __init__(self, path: Optional[Path], *, interval_s: float = 1.0, settle_s: float = 0.05) -> None:
        self.path = path
        self.interval_s = interval_s
        self.settle_s = settle_s
        self.current: Policies = default_policies()
        self.last_error: Optional[str] = None
        self.reloads = 0
        self._digest: Optional[bytes] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if path is not None:
            try:
                data = path.read_bytes()
            except OSError as exc:  # a bad file at start stops the start
                raise PolicyError(f"{path}: cannot read policies file: {exc}") from None
            self.current = _parse_bytes(data, str(path))
            self._digest = hashlib.blake2b(data, digest_size=16).digest()

    def check(self) -> bool:
        """Reload if the file's content changed; True if new policies took effect."""
        if self.path is None:
            return False
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            error = f"{self.path}: cannot read policies file: {exc}"
            if error != self.last_error:
                self.last_error = error
                log.error("litellm-rllm: keeping the last good policies; %s", error)
            self._digest = None  # whatever comes back is a change
            return False
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest == self._digest:
            return False
        if self.settle_s > 0:
            self._stop.wait(self.settle_s)
            try:
                if self.path.read_bytes() != data:
                    return False  # still being written: the next check sees the result
            except OSError:
                return False
        self._digest = digest
        try:
            self.current = _parse_bytes(data, str(self.path))
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
