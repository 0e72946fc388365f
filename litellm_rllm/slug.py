"""The metadata slug: session metadata carried in a URL path segment or an ``x-rllm-slug`` header.

Unsigned slugs are byte-for-byte rLLM's ``encode_metadata_slug`` output, so existing rLLM
clients keep working::

    "rllm1:" + base64url(json.dumps(meta, separators=(",", ":"), sort_keys=True)) without "="

A signed slug appends ``"." + base64url(HMAC-SHA256(secret, payload)[:16])``; '.' is outside the
base64url alphabet, so the two forms never collide.

Decoding is strict because the input comes from untrusted clients and ends up in LiteLLM's
request metadata and in the trace store: every failure is a :class:`SlugError` (HTTP 400, or 401
for signature problems) whose message names the problem, never another exception type and never
a silently dropped slug. This module imports nothing from LiteLLM so clients and the CLI can use it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union
from urllib.parse import unquote, urlparse, urlunparse

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr

__all__ = [
    "DEFAULT_LIMITS",
    "HEADER",
    "KNOWN_KEYS",
    "PREFIX",
    "RESERVED_KEYS",
    "RESERVED_PREFIXES",
    "SamplingOverride",
    "SlugError",
    "SlugLimits",
    "SlugMetadata",
    "check_reserved",
    "decode",
    "encode",
    "proxied_base_url",
    "sign",
    "split_path",
]

PREFIX = "rllm1:"
HEADER = "x-rllm-slug"
KNOWN_KEYS = frozenset({"session_id", "session_name", "session_uids", "sampling"})
SAMPLING_KEYS = ("logprobs", "return_token_ids", "top_logprobs")
MAX_TOP_LOGPROBS = 20
SIGNATURE_BYTES = 16

Secret = Union[str, bytes]

# Keys LiteLLM itself reads from or writes to a request's metadata for auth, spend, budgets,
# routing, retries, guardrails and logging. A slug may not set them: a client could otherwise
# spoof its key, team or budget, or steer routing. Only top-level keys matter (LiteLLM merges
# metadata one level deep); nested user values are free-form.
RESERVED_PREFIXES: tuple[str, ...] = (
    "user_api_key",  # user_api_key_hash, _team_id, _spend, _max_budget, ... (auth + spend)
    "litellm_",  # litellm_call_id, litellm_api_version, litellm_parent_otel_span, ...
    "rllm_internal",  # this plugin's own bookkeeping
    "mock_",  # mock_response, mock_tool_calls, mock_testing_*: fake upstream replies
)
RESERVED_KEYS: frozenset[str] = frozenset(
    {
        # request plumbing
        "metadata",
        "headers",
        "requester_metadata",
        "proxy_server_request",
        "endpoint",
        "requester_ip_address",
        "user_agent",
        # routing
        "model",
        "model_group",
        "model_group_alias",
        "original_model_group",
        "model_info",
        "deployment",
        "api_base",
        "api_key",
        "api_version",
        "caching_groups",
        "previous_models",
        "max_retries",
        "attempted_retries",
        "attempted_fallbacks",
        "routing_plugin_signals",
        "_routing_plugin_candidate_models",
        "sensitive_data_routing_applied",
        "sensitive_data_routing_original_model",
        # auth, identity, spend, budgets
        "team_id",
        "user_id",
        "end_user_id",
        "org_id",
        "agent_id",
        "budget_id",
        "max_budget",
        "user_api_end_user_max_budget",
        "global_max_parallel_requests",
        "spend_logs_metadata",
        "used_client_oauth_token",
        "tags",
        "inherited_tags",
        "caller_tags",
        # callbacks and guardrails
        "callbacks",
        "success_callback",
        "failure_callback",
        "guardrails",
        "guardrail_config",
        "disable_global_guardrails",
        "include_guardrail_response",
        "applied_guardrails",
        "standard_logging_guardrail_information",
        # request lifecycle LiteLLM (and the tracer) rely on
        "mock_response",
        "client_disconnected",
        "queue_time_seconds",
        "error_information",
    }
)

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_VERSION = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}:")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates break UTF-8 / Postgres
_CONTROL = re.compile("[\x00-\x1f\x7f]")  # not in session ids, uids and names (store keys)


class SlugError(Exception):
    """A slug or slug metadata that the proxy refuses; maps to one HTTP error response."""

    code = "rllm_invalid_slug"

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def to_response(self) -> dict[str, Any]:
        """The OpenAI-style error body the proxy returns with :attr:`status_code`."""
        return {"error": {"message": self.message, "type": "invalid_request_error", "code": self.code}}


class SlugLimits(BaseModel):
    """Bounds on what a client may put in a slug, so a request cannot bloat memory or the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_encoded_bytes: int = Field(
        8192,
        gt=0,
        validation_alias=AliasChoices("max_encoded_bytes", "max_bytes"),
        description="whole slug, prefix and signature included",
    )
    max_depth: int = Field(8, ge=1, description="nesting levels; the top-level object is level 1")
    max_keys: int = Field(256, ge=0, description="object keys counted at every level")
    max_string_chars: Optional[int] = Field(None, gt=0, description="longest key or string value")


DEFAULT_LIMITS = SlugLimits()
_UNLIMITED = SlugLimits(max_encoded_bytes=2**62, max_depth=2**31, max_keys=2**62)


class SamplingOverride(BaseModel):
    """Per-request sampling wishes; the sampling policy decides whether to honour them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    return_token_ids: Optional[bool] = None


_SCALARS = (str, int, float, bool, type(None))


def _copy_json(value: Any) -> Any:
    """A deep copy of JSON-shaped data (what a slug decodes to): ~9x faster than
    `copy.deepcopy` on a typical slug, and it runs per request (the metadata hook). Values of
    any other type (metadata given as Python objects) go through `copy.deepcopy`."""
    kind = type(value)
    if kind is dict:
        return {k: _copy_json(v) for k, v in value.items()}
    if kind is list:
        return [_copy_json(v) for v in value]
    if kind in _SCALARS:
        return value
    return copy.deepcopy(value)


class SlugMetadata(BaseModel):
    """Decoded slug metadata: the known keys typed, everything else in :attr:`extra`."""

    model_config = ConfigDict(frozen=True)

    session_id: Optional[str] = None
    session_name: Optional[str] = None
    session_uids: list[str] = Field(default_factory=list)
    sampling: Optional[SamplingOverride] = None
    extra: dict[str, Any] = Field(default_factory=dict)
    signed: bool = False
    _raw: Optional[dict[str, Any]] = PrivateAttr(default=None)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, signed: bool = False, limits: Optional[SlugLimits] = None
    ) -> "SlugMetadata":
        """Validate metadata that arrived by any route (slug, header, JSON) the same way."""
        if not isinstance(data, Mapping):
            raise SlugError(f"slug metadata must be a JSON object, got {_type_name(data)}")
        _check_shape(data, limits or _UNLIMITED)
        check_reserved(data)
        known = _check_known(data)
        meta = cls(
            **known,
            extra={k: v for k, v in data.items() if k not in KNOWN_KEYS},
            signed=signed,
        )
        meta._raw = _copy_json(dict(data))
        return meta

    def as_dict(self) -> dict[str, Any]:
        """The flat metadata dict exactly as the client sent it (a copy)."""
        raw = (self.__pydantic_private__ or {}).get("_raw")  # `self._raw`: ~2.4 us through pydantic
        if raw is not None:
            return _copy_json(raw)
        out: dict[str, Any] = _copy_json(self.extra)
        for key in ("session_id", "session_name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.session_uids:
            out["session_uids"] = list(self.session_uids)
        if self.sampling is not None:
            out["sampling"] = self.sampling.model_dump(exclude_none=True)
        return out


# ------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _secret_bytes(secret: Secret) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("slug signing secret must not be empty")
    return key


def sign(payload: str, secret: Secret) -> str:
    """The signature part for a base64url payload: HMAC-SHA256 truncated to 16 bytes."""
    mac = hmac.new(_secret_bytes(secret), payload.encode("ascii"), hashlib.sha256).digest()
    return _b64(mac[:SIGNATURE_BYTES])


def encode(
    meta: Mapping[str, Any], *, secret: Optional[Secret] = None, limits: Optional[SlugLimits] = None
) -> str:
    """Encode metadata as a slug; unsigned output is byte-identical to rLLM's.

    The metadata is validated as the proxy would (known-key types, reserved keys; size limits
    only when ``limits`` is given, since the proxy's limits are its own), so mistakes surface
    in the client instead of as a 400 from the proxy.
    """
    if not isinstance(meta, Mapping):
        raise SlugError(f"slug metadata must be a mapping, got {_type_name(meta)}")
    try:
        body = json.dumps(dict(meta), separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SlugError(f"slug metadata is not JSON-serialisable: {exc}") from None
    # Validate the JSON form, which is what the proxy will see (tuples become lists, ...).
    SlugMetadata.from_dict(json.loads(body), limits=limits)
    payload = _b64(body.encode("utf-8"))
    slug = PREFIX + payload
    if secret is not None:
        slug += "." + sign(payload, secret)
    if limits is not None:
        _check_size(slug, limits)
    return slug


def proxied_base_url(
    base_url: str, meta_or_slug: Union[Mapping[str, Any], str], *, secret: Optional[Secret] = None
) -> str:
    """Insert ``/meta/{slug}`` into a base URL, before a trailing ``/v1`` (rLLM's layout)."""
    if isinstance(meta_or_slug, str):
        slug = meta_or_slug
        if not re.fullmatch(r"[A-Za-z0-9]+:[A-Za-z0-9_.-]*", slug):
            raise SlugError(f"not a slug: {_preview(slug)}")
    else:
        slug = encode(meta_or_slug, secret=secret)
    parsed = urlparse(base_url)
    path = parsed.path.rstrip("/")
    has_v1 = path.endswith("/v1")
    if has_v1:
        path = path[: -len("/v1")]
    path = f"{path}/meta/{slug}" + ("/v1" if has_v1 else "")
    if not path.startswith("/"):
        path = "/" + path
    return urlunparse(parsed._replace(path=path))


def split_path(path: str) -> tuple[Optional[str], str]:
    """Split ``/meta/{slug}/rest`` into ``(slug, "/rest")``; other paths give ``(None, path)``.

    Only a leading ``/meta/`` counts, so model names such as ``meta/llama-3`` later in a path
    are never mistaken for a slug. An empty slug (``/meta//v1``) comes back as ``""`` so the
    caller rejects it rather than silently routing without metadata.
    """
    rest = path if path.startswith("/") else "/" + path
    if not rest.startswith("/meta/"):
        return None, path
    slug, sep, tail = rest[len("/meta/") :].partition("/")
    if "%" in slug:  # some clients percent-encode ':'
        slug = unquote(slug)
    return slug, "/" + tail if sep else "/"


# ------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------


def decode(
    slug: str,
    *,
    limits: SlugLimits = DEFAULT_LIMITS,
    secrets: Sequence[Secret] = (),
    require_signed: bool = False,
) -> SlugMetadata:
    """Decode and validate a slug; raise :class:`SlugError` on anything the proxy must refuse.

    ``secrets`` lists the accepted signing secrets, newest first (several during a rotation).
    With secrets, a signature that matches none is refused (401). A signed slug reaching a
    proxy without secrets is accepted as unsigned: it cannot be checked, and the proxy asked
    for no checking. ``require_signed`` refuses unsigned slugs (401).
    """
    if isinstance(secrets, (str, bytes)):
        secrets = (secrets,)  # a lone secret, not a sequence of characters
    if require_signed and not secrets:
        raise ValueError("require_signed=True needs at least one secret")
    if not isinstance(slug, str):
        raise SlugError(f"slug must be a string, got {_type_name(slug)}")
    _check_size(slug, limits)
    if not slug.startswith(PREFIX):
        version = _VERSION.match(slug)
        if version:
            raise SlugError(f"unknown slug version {version.group(0)!r}; expected {PREFIX!r}")
        raise SlugError(f"slug must start with {PREFIX!r}, got {_preview(slug)}")
    payload, dot, signature = slug[len(PREFIX) :].partition(".")
    _check_b64(payload, "slug payload")

    sig_status = 401 if (secrets or require_signed) else 400
    signed = False
    if dot:
        if "." in signature or not _B64URL.fullmatch(signature) or len(signature) != 22:
            raise SlugError("slug signature is malformed: expected 22 base64url characters", status_code=sig_status)
        if secrets:
            if not any(hmac.compare_digest(signature, sign(payload, s)) for s in secrets):
                raise SlugError("slug signature does not match", status_code=401)
            signed = True
    elif require_signed:
        raise SlugError("unsigned slug refused: this proxy requires signed slugs", status_code=401)

    data = _parse_payload(payload, limits)
    return SlugMetadata.from_dict(data, signed=signed, limits=limits)


def _check_size(slug: str, limits: SlugLimits) -> None:
    size = len(slug.encode("utf-8", "surrogatepass"))
    if size > limits.max_encoded_bytes:
        raise SlugError(f"slug is {size} bytes encoded; the limit is {limits.max_encoded_bytes}")


def _check_b64(text: str, what: str) -> None:
    if not text:
        raise SlugError(f"{what} is empty")
    if "=" in text:
        raise SlugError(f"{what} is not valid base64url: '=' padding is not allowed")
    if not _B64URL.fullmatch(text):
        bad = next(c for c in text if not (c.isascii() and (c.isalnum() or c in "-_")))
        raise SlugError(f"{what} is not valid base64url: character {bad!r} is outside [A-Za-z0-9_-]")
    if len(text) % 4 == 1:
        raise SlugError(f"{what} is not valid base64url: length {len(text)} is impossible (length % 4 == 1)")


class _Reject(Exception):
    """Raised from json hooks; carries the user-facing message out of json.loads."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject(f"slug metadata has duplicate key {key!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _Reject(f"slug metadata is not valid JSON: {name} is not allowed")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Reject(f"slug metadata is not valid JSON: number {text[:32]} overflows a float")
    return value


def _parse_payload(payload: str, limits: SlugLimits) -> Any:
    padded = payload + "=" * (-len(payload) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError) as exc:
        raise SlugError(f"slug payload is not valid base64url: {exc}") from None
    if _b64(raw) != payload:  # non-zero trailing bits: a second spelling of the same bytes
        raise SlugError("slug payload is not valid base64url: non-canonical trailing bits")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SlugError(f"slug payload is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)
    except _Reject as exc:
        raise SlugError(str(exc)) from None
    except RecursionError:
        depth = _lexical_depth(text)
        raise SlugError(f"slug metadata nests {depth} levels deep; the limit is {limits.max_depth}") from None
    except ValueError as exc:  # JSONDecodeError, and int() digit limits
        raise SlugError(f"slug metadata is not valid JSON: {exc}") from None


def _lexical_depth(text: str) -> int:
    """Bracket depth of JSON text too deep for json.loads; only used for the error message."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _check_shape(data: Any, limits: SlugLimits) -> None:
    """Depth, key count, string length and storable text, walked without recursion."""
    if not isinstance(data, Mapping):
        raise SlugError(f"slug metadata must be a JSON object, got {_type_name(data)}")
    keys = deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            deepest = max(deepest, depth)
            keys += len(value)
            for key, item in value.items():
                if not isinstance(key, str):
                    raise SlugError(f"slug metadata keys must be strings, got {_type_name(key)}")
                _check_text(key, limits)
                stack.append((item, depth + 1))
        elif isinstance(value, (list, tuple)):
            deepest = max(deepest, depth)
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_text(value, limits)
    if deepest > limits.max_depth:
        raise SlugError(f"slug metadata nests {deepest} levels deep; the limit is {limits.max_depth}")
    if keys > limits.max_keys:
        raise SlugError(f"slug metadata has {keys} keys; the limit is {limits.max_keys}")


def _check_text(text: str, limits: SlugLimits) -> None:
    if limits.max_string_chars is not None and len(text) > limits.max_string_chars:
        raise SlugError(
            f"slug metadata has a {len(text)}-character string; the limit is {limits.max_string_chars}"
        )
    bad = _UNSTORABLE.search(text)
    if bad:
        raise SlugError(f"slug metadata contains an unstorable character U+{ord(bad.group(0)):04X}")


def check_reserved(meta: Mapping[str, Any]) -> None:
    """Refuse top-level keys that would overwrite LiteLLM's own request metadata."""
    for key in meta:
        if key in RESERVED_KEYS:
            raise SlugError(f"slug key {key!r} is reserved: it would overwrite LiteLLM's own request field")
        for prefix in RESERVED_PREFIXES:
            if isinstance(key, str) and key.startswith(prefix):
                raise SlugError(f"slug key {key!r} is reserved: keys starting with {prefix!r} belong to LiteLLM")


def _check_known(data: Mapping[str, Any]) -> dict[str, Any]:
    """Type-check the known keys; return them ready for :class:`SlugMetadata`."""
    out: dict[str, Any] = {}
    for key in ("session_id", "session_name"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise SlugError(f"slug key {key!r} must be a string, got {_type_name(value)}")
        _check_session_text(key, value)
        out[key] = value
    uids = data.get("session_uids", [])
    if not isinstance(uids, list):
        raise SlugError(f"slug key 'session_uids' must be a list of strings, got {_type_name(uids)}")
    for i, uid in enumerate(uids):
        if not isinstance(uid, str):
            raise SlugError(f"slug key 'session_uids[{i}]' must be a string, got {_type_name(uid)}")
        _check_session_text(f"session_uids[{i}]", uid)
    out["session_uids"] = list(uids)
    out["sampling"] = _check_sampling(data.get("sampling"))
    return out


def _check_session_text(key: str, value: Optional[str]) -> None:
    """Session ids, uids and names are store keys: no control characters (one of them
    separates a team's namespace from the key, see `sessions.py`)."""
    bad = _CONTROL.search(value) if value else None
    if bad:
        raise SlugError(f"slug key {key!r} contains a control character U+{ord(bad.group(0)):04X}")


def _check_sampling(value: Any) -> Optional[SamplingOverride]:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SlugError(f"slug key 'sampling' must be an object, got {_type_name(value)}")
    for key, item in value.items():
        if key not in SAMPLING_KEYS:
            raise SlugError(
                f"slug key 'sampling' has unknown key {key!r}; allowed: {', '.join(SAMPLING_KEYS)}"
            )
        if item is None:
            continue
        if key == "top_logprobs":
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= MAX_TOP_LOGPROBS:
                raise SlugError(
                    f"slug key 'sampling.top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}, "
                    f"got {_preview(item)}"
                )
        elif not isinstance(item, bool):
            raise SlugError(f"slug key 'sampling.{key}' must be true, false or null, got {_type_name(item)}")
    return SamplingOverride(**value)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _preview(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
