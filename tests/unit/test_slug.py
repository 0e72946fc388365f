"""The slug codec: rLLM byte compatibility, strict decoding, reserved keys, signing, fuzzing."""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litellm_rllm import slug as S
from litellm_rllm.slug import (
    DEFAULT_LIMITS,
    RESERVED_KEYS,
    RESERVED_PREFIXES,
    SlugError,
    SlugLimits,
    SlugMetadata,
    check_reserved,
    decode,
    encode,
    proxied_base_url,
    split_path,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_slug(text: str | bytes) -> str:
    """A slug around arbitrary payload bytes, bypassing encode()'s validation."""
    return "rllm1:" + b64(text.encode("utf-8") if isinstance(text, str) else text)


def error_of(slug: Any, **kwargs: Any) -> SlugError:
    with pytest.raises(SlugError) as info:
        decode(slug, **kwargs)
    return info.value


# ---------------------------------------------------------------------------------------
# rLLM byte compatibility. Expected values were computed outside Python with
#   printf '%s' '<compact sorted JSON>' | base64 -w0 | tr '+/' '-_' | tr -d '='
# from JSON written by hand (sorted keys, no spaces, non-ASCII as \uXXXX).
# ---------------------------------------------------------------------------------------

VECTORS = [
    ({}, "rllm1:e30"),
    (
        {"session_id": "sess-123", "job": "nightly", "split": "validation"},
        "rllm1:eyJqb2IiOiJuaWdodGx5Iiwic2Vzc2lvbl9pZCI6InNlc3MtMTIzIiwic3BsaXQiOiJ2YWxpZGF0aW9uIn0",
    ),
    (  # non-ASCII -> {"session_name":"na\u00efve","task":"caf\u00e9 \u2615"}
        {"task": "café ☕", "session_name": "naïve"},
        "rllm1:eyJzZXNzaW9uX25hbWUiOiJuYVx1MDBlZnZlIiwidGFzayI6ImNhZlx1MDBlOSBcdTI2MTUifQ",
    ),
    (  # nested session_uids + sampling, keys sorted at every level
        {
            "session_uids": ["ctx_outer", "ctx_inner"],
            "session_id": "s1",
            "sampling": {"top_logprobs": 5, "logprobs": True},
        },
        "rllm1:eyJzYW1wbGluZyI6eyJsb2dwcm9icyI6dHJ1ZSwidG9wX2xvZ3Byb2JzIjo1fSwic2Vzc2lvbl9pZCI6InMxIiwic2Vzc2lvbl91aWRzIjpbImN0eF9vdXRlciIsImN0eF9pbm5lciJdfQ",
    ),
    (  # astral-plane character as a surrogate pair escape; mixed scalars
        {"n": [1, 2.5, None, False], "emoji": "\U0001f600"},
        "rllm1:eyJlbW9qaSI6Ilx1ZDgzZFx1ZGUwMCIsIm4iOlsxLDIuNSxudWxsLGZhbHNlXX0",
    ),
]


@pytest.mark.parametrize(("meta", "expected"), VECTORS)
def test_encode_matches_rllm_vectors(meta: dict[str, Any], expected: str) -> None:
    assert encode(meta) == expected
    assert decode(expected).as_dict() == meta


@pytest.mark.parametrize(("meta", "_"), VECTORS)
def test_encode_matches_documented_algorithm(meta: dict[str, Any], _: str) -> None:
    body = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode("utf-8")
    assert encode(meta) == "rllm1:" + base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://proxy:4000/v1", "http://proxy:4000/meta/{s}/v1"),
        ("http://proxy:4000/v1/", "http://proxy:4000/meta/{s}/v1"),
        ("http://proxy:4000", "http://proxy:4000/meta/{s}"),
        ("http://proxy:4000/", "http://proxy:4000/meta/{s}"),
        ("https://h.example/api/v1?x=1", "https://h.example/api/meta/{s}/v1?x=1"),
        ("http://h/openai", "http://h/openai/meta/{s}"),
    ],
)
def test_proxied_base_url_layout(base: str, expected: str) -> None:
    meta = {"session_id": "sess-xyz", "job": "batch"}
    slug = encode(meta)
    assert proxied_base_url(base, meta) == expected.format(s=slug)
    assert proxied_base_url(base, slug) == expected.format(s=slug)


def test_proxied_base_url_signed_and_bad_slug() -> None:
    signed = proxied_base_url("http://p/v1", {"a": 1}, secret="k")
    slug, rest = split_path(signed.removeprefix("http://p"))
    assert rest == "/v1" and slug is not None and decode(slug, secrets=["k"]).signed
    with pytest.raises(SlugError):
        proxied_base_url("http://p/v1", "rllm1:abc/../x")


# ---------------------------------------------------------------------------------------
# Decoding: the typed view and the round-trip
# ---------------------------------------------------------------------------------------


def test_decode_typed_fields_and_extra() -> None:
    meta = {
        "session_id": "s",
        "session_name": "solver",
        "session_uids": ["a", "b"],
        "sampling": {"logprobs": True, "top_logprobs": 3, "return_token_ids": False},
        "experiment": {"lr": 1e-5, "tags_user": ["x"]},
        "step": 7,
    }
    got = decode(encode(meta))
    assert got.session_id == "s" and got.session_name == "solver"
    assert got.session_uids == ["a", "b"]
    assert got.sampling is not None and got.sampling.top_logprobs == 3 and got.sampling.return_token_ids is False
    assert got.extra == {"experiment": {"lr": 1e-5, "tags_user": ["x"]}, "step": 7}
    assert got.signed is False
    assert got.as_dict() == meta
    got.as_dict()["step"] = 8  # a copy: the decoded value stays as sent
    assert got.as_dict()["step"] == 7


def test_decode_defaults_for_missing_known_keys() -> None:
    got = decode(encode({"x": 1}))
    assert (got.session_id, got.session_name, got.session_uids, got.sampling) == (None, None, [], None)
    assert got.as_dict() == {"x": 1}


def test_as_dict_without_raw_rebuilds_flat_dict() -> None:
    meta = SlugMetadata(session_id="s", session_uids=["u"], extra={"k": 1})
    assert meta.as_dict() == {"session_id": "s", "session_uids": ["u"], "k": 1}


def test_encode_accepts_tuples_and_mappings_like_json() -> None:
    from types import MappingProxyType

    slug = encode(MappingProxyType({"session_uids": ("a", "b")}))
    assert decode(slug).session_uids == ["a", "b"]


def test_error_response_shape() -> None:
    err = error_of("rllm2:e30")
    assert err.status_code == 400 and err.code == "rllm_invalid_slug"
    assert err.to_response() == {
        "error": {
            "message": "unknown slug version 'rllm2:'; expected 'rllm1:'",
            "type": "invalid_request_error",
            "code": "rllm_invalid_slug",
        }
    }
    assert str(err) == err.message


# ---------------------------------------------------------------------------------------
# Every error class, each with a message that names the problem
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("rllm2:e30", "unknown slug version 'rllm2:'; expected 'rllm1:'"),
        ("RLLM1:e30", "unknown slug version 'RLLM1:'"),
        ("e30", "slug must start with 'rllm1:'"),
        ("", "slug must start with 'rllm1:'"),
        ("rllm1:", "slug payload is empty"),
        ("rllm1:e30=", "'=' padding is not allowed"),
        ("rllm1:eyJhIjoxfQ==", "'=' padding is not allowed"),
        ("rllm1:e3+0", "character '+' is outside [A-Za-z0-9_-]"),
        ("rllm1:e3/0", "character '/' is outside"),
        ("rllm1:e3 0", "character ' ' is outside"),
        ("rllm1:e30é", "character 'é' is outside"),
        ("rllm1:e30\n", "character '\\n' is outside"),
        ("rllm1:e30ab", "length 5 is impossible (length % 4 == 1)"),
        ("rllm1:e31", "non-canonical trailing bits"),
        (raw_slug(b"\xff\xfe{}"), "slug payload is not valid UTF-8"),
        (raw_slug(b'{"a":"\xc3"}'), "slug payload is not valid UTF-8"),
        (raw_slug("not json"), "slug metadata is not valid JSON"),
        (raw_slug('{"a":1'), "slug metadata is not valid JSON"),
        (raw_slug('{"a":1} x'), "slug metadata is not valid JSON"),
        (raw_slug("[1,2]"), "slug metadata must be a JSON object, got list"),
        (raw_slug('"s"'), "slug metadata must be a JSON object, got str"),
        (raw_slug("3"), "slug metadata must be a JSON object, got int"),
        (raw_slug("null"), "slug metadata must be a JSON object, got null"),
        (raw_slug('{"a":1,"a":2}'), "slug metadata has duplicate key 'a'"),
        (raw_slug('{"x":{"b":1,"b":1}}'), "slug metadata has duplicate key 'b'"),
        (raw_slug('{"a":NaN}'), "NaN is not allowed"),
        (raw_slug('{"a":Infinity}'), "Infinity is not allowed"),
        (raw_slug('{"a":-Infinity}'), "-Infinity is not allowed"),
        (raw_slug('{"a":1e999}'), "number 1e999 overflows a float"),
        (raw_slug('{"a":' + "1" * 5000 + "}"), "slug metadata is not valid JSON"),
        (raw_slug('{"a":"\\ud800"}'), "unstorable character U+D800"),
        (raw_slug('{"a":"x\\u0000"}'), "unstorable character U+0000"),
        (raw_slug('{"\\udfff":1}'), "unstorable character U+DFFF"),
    ],
)
def test_decode_errors(slug: str, message: str) -> None:
    err = error_of(slug)
    assert message in err.message
    assert err.status_code == 400


def test_non_string_slug() -> None:
    assert "slug must be a string, got bytes" in error_of(b"rllm1:e30").message  # type: ignore[arg-type]


def test_oversize_is_measured_before_anything_else() -> None:
    slug = raw_slug(json.dumps({"pad": "x" * 7000}))
    assert len(slug) > 8192
    err = error_of(slug)
    assert err.message == f"slug is {len(slug)} bytes encoded; the limit is 8192"
    assert error_of("rllm9:" + "A" * 9000).message.startswith("slug is 9006 bytes encoded")
    assert decode(slug, limits=SlugLimits(max_encoded_bytes=20000)).extra["pad"] == "x" * 7000


def test_limit_is_inclusive() -> None:
    slug = encode({"p": ""})
    exact = SlugLimits(max_encoded_bytes=len(slug))
    assert decode(slug, limits=exact).extra == {"p": ""}
    assert "the limit is" in error_of(slug, limits=SlugLimits(max_encoded_bytes=len(slug) - 1)).message


def nested(levels: int) -> dict[str, Any]:
    """An object nesting `levels` levels deep, counting the top-level object as 1."""
    value: Any = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def test_depth_limit() -> None:
    assert decode(encode(nested(8))).as_dict() == nested(8)
    assert error_of(encode(nested(12))).message == "slug metadata nests 12 levels deep; the limit is 8"
    lists = {"a": [[[[[[[[1]]]]]]]]}  # 1 object + 8 lists = 9
    assert error_of(encode(lists)).message == "slug metadata nests 9 levels deep; the limit is 8"
    assert decode(encode(nested(12)), limits=SlugLimits(max_depth=12)).as_dict() == nested(12)


def test_depth_beyond_the_json_parser() -> None:
    slug = raw_slug("[" * 5000 + "]" * 5000)
    err = error_of(slug, limits=SlugLimits(max_encoded_bytes=100_000))
    assert err.message == "slug metadata nests 5000 levels deep; the limit is 8"


def test_key_limit() -> None:
    flat = {f"k{i}": i for i in range(257)}
    assert error_of(encode(flat)).message == "slug metadata has 257 keys; the limit is 256"
    inner = {"a": {f"k{i}": i for i in range(200)}, "b": {f"k{i}": i for i in range(60)}}
    assert error_of(encode(inner)).message == "slug metadata has 262 keys; the limit is 256"
    assert len(decode(encode({f"k{i}": i for i in range(256)})).extra) == 256


def test_string_limit() -> None:
    limits = SlugLimits(max_string_chars=5)
    assert decode(encode({"abc": "12345"}), limits=limits).extra == {"abc": "12345"}
    assert "6-character string; the limit is 5" in error_of(encode({"a": "123456"}), limits=limits).message
    assert "6-character string" in error_of(encode({"abcdef": 1}), limits=limits).message


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        SlugLimits(max_depth=0)
    with pytest.raises(ValueError):
        SlugLimits(max_encode_bytes=10)  # type: ignore[call-arg]  # typo: extra keys are refused
    assert DEFAULT_LIMITS.max_encoded_bytes == 8192 and DEFAULT_LIMITS.max_depth == 8
    assert SlugLimits(max_bytes=100).max_encoded_bytes == 100  # type: ignore[call-arg]  # short alias


# ---------------------------------------------------------------------------------------
# Reserved keys
# ---------------------------------------------------------------------------------------

BRIEF_RESERVED = [
    "headers", "requester_metadata", "endpoint", "model", "model_group", "model_info",
    "deployment", "api_base", "api_key", "caching_groups", "tags", "spend_logs_metadata",
    "proxy_server_request", "user_api_end_user_max_budget", "global_max_parallel_requests",
    "callbacks", "success_callback", "failure_callback", "guardrails", "team_id", "user_id",
    "end_user_id", "budget_id", "max_budget", "mock_response", "metadata",
]  # fmt: skip


def test_reserved_sets_cover_the_contract() -> None:
    assert set(BRIEF_RESERVED) <= RESERVED_KEYS
    assert {"user_api_key", "litellm_", "rllm_internal"} <= set(RESERVED_PREFIXES)
    assert not (S.KNOWN_KEYS & RESERVED_KEYS)


@pytest.mark.parametrize("key", sorted(RESERVED_KEYS))
def test_reserved_key_refused_by_name(key: str) -> None:
    err = error_of(raw_slug(json.dumps({"ok": 1, key: "x"})))
    assert err.status_code == 400
    assert f"slug key {key!r} is reserved" in err.message
    with pytest.raises(SlugError, match="is reserved"):
        encode({key: "x"})


@pytest.mark.parametrize(
    "key", ["user_api_key", "user_api_key_hash", "user_api_key_team_id", "litellm_call_id",
            "litellm_", "rllm_internal", "rllm_internal_seq", "mock_tool_calls"],
)  # fmt: skip
def test_reserved_prefix_refused_by_name(key: str) -> None:
    err = error_of(raw_slug(json.dumps({key: 1})))
    assert f"slug key {key!r} is reserved: keys starting with" in err.message


def test_reserved_only_at_top_level_and_case_sensitive() -> None:
    meta = {"user": {"model": "mine", "tags": ["a"]}, "Model": 1, "my_model": 2, "litellm": 3}
    assert decode(encode(meta)).as_dict() == meta
    check_reserved({"session_id": "s", "task": 1})
    with pytest.raises(SlugError, match="'api_key'"):
        check_reserved({"api_key": "sk"})


# ---------------------------------------------------------------------------------------
# Known-key types
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"session_id": 5}, "slug key 'session_id' must be a string, got int"),
        ({"session_name": ["x"]}, "slug key 'session_name' must be a string, got list"),
        ({"session_uids": "abc"}, "slug key 'session_uids' must be a list of strings, got str"),
        ({"session_uids": None}, "slug key 'session_uids' must be a list of strings, got null"),
        ({"session_uids": {"a": 1}}, "slug key 'session_uids' must be a list of strings, got dict"),
        ({"session_uids": ["a", 2]}, "slug key 'session_uids[1]' must be a string, got int"),
        ({"session_uids": [["a"]]}, "slug key 'session_uids[0]' must be a string, got list"),
        ({"sampling": True}, "slug key 'sampling' must be an object, got bool"),
        ({"sampling": {"temperature": 0.1}}, "slug key 'sampling' has unknown key 'temperature'"),
        ({"sampling": {"prompt_logprobs": 1}}, "unknown key 'prompt_logprobs'"),
        ({"sampling": {"logprobs": 1}}, "slug key 'sampling.logprobs' must be true, false or null, got int"),
        ({"sampling": {"return_token_ids": "yes"}}, "'sampling.return_token_ids' must be true, false or null"),
        ({"sampling": {"top_logprobs": 21}}, "'sampling.top_logprobs' must be an integer from 0 to 20, got 21"),
        ({"sampling": {"top_logprobs": -1}}, "'sampling.top_logprobs' must be an integer from 0 to 20"),
        ({"sampling": {"top_logprobs": True}}, "'sampling.top_logprobs' must be an integer from 0 to 20"),
        ({"sampling": {"top_logprobs": 2.0}}, "'sampling.top_logprobs' must be an integer from 0 to 20"),
    ],
)
def test_known_key_type_errors(meta: dict[str, Any], message: str) -> None:
    assert message in error_of(raw_slug(json.dumps(meta))).message
    with pytest.raises(SlugError):
        encode(meta)


def test_known_keys_accept_nulls() -> None:
    meta = {"session_id": None, "session_name": None, "sampling": {"logprobs": None, "top_logprobs": 0}}
    got = decode(encode(meta))
    assert got.session_id is None and got.sampling is not None and got.sampling.top_logprobs == 0
    assert got.as_dict() == meta
    assert decode(encode({"sampling": None})).sampling is None


def test_encode_rejects_unserialisable() -> None:
    with pytest.raises(SlugError, match="not JSON-serialisable"):
        encode({"a": object()})
    with pytest.raises(SlugError, match="not JSON-serialisable"):
        encode({"a": float("nan")})
    with pytest.raises(SlugError, match="must be a mapping"):
        encode([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(SlugError, match="unstorable"):
        encode({"a": "\ud800"})


def test_encode_checks_limits_only_when_asked() -> None:
    big = nested(12)
    assert encode(big).startswith("rllm1:")
    with pytest.raises(SlugError, match="nests 12 levels"):
        encode(big, limits=DEFAULT_LIMITS)
    with pytest.raises(SlugError, match="bytes encoded"):
        encode({"p": "x" * 9000}, limits=DEFAULT_LIMITS)


# ---------------------------------------------------------------------------------------
# Signing
# ---------------------------------------------------------------------------------------


def test_signed_slug_format_and_vector() -> None:
    # signature = base64url(HMAC-SHA256(b"k", b"eyJhIjoxfQ")[:16]), computed with
    #   printf %s eyJhIjoxfQ | openssl dgst -sha256 -hmac k -binary | head -c16 | base64
    assert encode({"a": 1}, secret="k") == "rllm1:eyJhIjoxfQ.cd0Z_LfRVHSakSL51JoV0Q"
    assert encode({"a": 1}, secret=b"k") == "rllm1:eyJhIjoxfQ.cd0Z_LfRVHSakSL51JoV0Q"
    assert encode({"a": 1}).startswith("rllm1:eyJhIjoxfQ") and "." not in encode({"a": 1})


def test_signed_good() -> None:
    got = decode(encode({"session_id": "s"}, secret="new"), secrets=["new"], require_signed=True)
    assert got.signed and got.session_id == "s"
    assert decode(encode({"a": 1}, secret="k"), secrets="k").signed  # a lone secret is fine too


def test_signed_tampered() -> None:
    signed = encode({"session_id": "mine"}, secret="k")
    payload, sig = signed.removeprefix("rllm1:").split(".")
    forged = "rllm1:" + b64(b'{"session_id":"theirs"}') + "." + sig
    for bad in (forged, signed[:-1] + ("A" if signed[-1] != "A" else "B")):
        err = error_of(bad, secrets=["k"])
        assert (err.status_code, err.message) == (401, "slug signature does not match")
    assert error_of(signed, secrets=["other"]).status_code == 401


def test_signed_malformed_signature() -> None:
    signed = encode({"a": 1}, secret="k")
    for bad in (signed + "x", signed + ".x", signed[:-3] + "+/=", "rllm1:e30."):
        err = error_of(bad, secrets=["k"])
        assert err.status_code == 401 and "signature" in err.message
    assert error_of("rllm1:e30.short").status_code == 400


def test_unsigned_refused_when_required() -> None:
    err = error_of(encode({"a": 1}), secrets=["k"], require_signed=True)
    assert err.status_code == 401
    assert err.message == "unsigned slug refused: this proxy requires signed slugs"
    with pytest.raises(ValueError, match="needs at least one secret"):
        decode(encode({"a": 1}), require_signed=True)


def test_unsigned_accepted_when_not_required() -> None:
    got = decode(encode({"a": 1}), secrets=["k"])
    assert got.signed is False and got.extra == {"a": 1}


def test_signed_without_secrets_is_accepted_unverified() -> None:
    got = decode(encode({"a": 1}, secret="k"))
    assert got.signed is False and got.extra == {"a": 1}


def test_rotation() -> None:
    old = encode({"a": 1}, secret="old")
    new = encode({"a": 1}, secret="new")
    for slug in (old, new):  # during rotation both verify
        assert decode(slug, secrets=["new", "old"], require_signed=True).signed
    assert decode(new, secrets=["new"], require_signed=True).signed
    err = error_of(old, secrets=["new"], require_signed=True)  # old secret removed
    assert (err.status_code, err.message) == (401, "slug signature does not match")


def test_signature_checked_before_payload_is_parsed() -> None:
    junk = "rllm1:" + b64(b"\xff not json") + ".AAAAAAAAAAAAAAAAAAAAAA"
    assert error_of(junk, secrets=["k"]).status_code == 401


def test_empty_secret_refused() -> None:
    with pytest.raises(ValueError):
        encode({"a": 1}, secret="")


# ---------------------------------------------------------------------------------------
# split_path
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/meta/rllm1:e30/v1/chat/completions", ("rllm1:e30", "/v1/chat/completions")),
        ("/meta/rllm1:e30/chat/completions", ("rllm1:e30", "/chat/completions")),
        ("/meta/rllm1:e30/v1/models/meta/llama", ("rllm1:e30", "/v1/models/meta/llama")),
        ("/meta/rllm1:e30", ("rllm1:e30", "/")),
        ("/meta/rllm1:e30/", ("rllm1:e30", "/")),
        ("/meta/rllm1:e30.sig/v1/embeddings", ("rllm1:e30.sig", "/v1/embeddings")),
        ("/meta/rllm1%3Ae30/v1/responses", ("rllm1:e30", "/v1/responses")),
        ("meta/rllm1:e30/v1", ("rllm1:e30", "/v1")),
        ("/meta//v1/chat/completions", ("", "/v1/chat/completions")),
        ("/meta/", ("", "/")),
        ("/v1/chat/completions", (None, "/v1/chat/completions")),
        ("/v1/models/meta/llama-3", (None, "/v1/models/meta/llama-3")),
        ("/meta", (None, "/meta")),
        ("/metadata/x/v1", (None, "/metadata/x/v1")),
        ("/", (None, "/")),
        ("", (None, "")),
    ],
)
def test_split_path(path: str, expected: tuple[str | None, str]) -> None:
    assert split_path(path) == expected


def test_split_path_round_trips_proxied_base_url() -> None:
    meta = {"session_id": "s", "session_uids": ["a", "b"]}
    url = proxied_base_url("http://proxy:4000/v1", meta) + "/chat/completions"
    slug, rest = split_path(url.removeprefix("http://proxy:4000"))
    assert rest == "/v1/chat/completions" and slug is not None
    assert decode(slug).as_dict() == meta


@pytest.mark.parametrize("meta", [{"session_id": "a\x1fb"}, {"session_name": "x\ny"},
                                  {"session_uids": ["ok", "team-a\x1fsid"]}])
def test_session_fields_with_control_characters_are_refused(meta):
    """They are store keys, and U+001F separates a team's namespace from a key (sessions.py)."""
    with pytest.raises(SlugError, match="control character"):
        decode(encode(meta))


# ---------------------------------------------------------------------------------------
# Property tests (hypothesis): round-trip, and "SlugError or a dict, nothing else"
# ---------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
# session ids, uids and names are store keys: no control characters (refused, tested below)
_key_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
_user_keys = _text.filter(
    lambda k: k not in RESERVED_KEYS and k not in S.KNOWN_KEYS and not k.startswith(RESERVED_PREFIXES)
)
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text
# Three levels of lists/objects; deeper nesting is covered by the unit tests above. (Kept
# shallow on purpose: hypothesis spends ~20 us per draw, and 10,000 examples must stay fast.)
_leaf = _scalars | st.lists(_scalars, max_size=3)
_json = _leaf | st.dictionaries(_text, _leaf, max_size=3)
_sampling = st.fixed_dictionaries(
    {},
    optional={
        "logprobs": st.none() | st.booleans(),
        "top_logprobs": st.none() | st.integers(0, 20),
        "return_token_ids": st.none() | st.booleans(),
    },
)
_metadata = st.builds(
    lambda known, user: {**user, **known},
    st.fixed_dictionaries(
        {},
        optional={
            "session_id": st.none() | _key_text,
            "session_name": st.none() | _key_text,
            "session_uids": st.lists(_key_text, max_size=3),
            "sampling": st.none() | _sampling,
        },
    ),
    st.dictionaries(_user_keys, _json, max_size=4),
)
_ROOMY = SlugLimits(max_encoded_bytes=1 << 20, max_depth=64, max_keys=10_000)


@settings(deadline=None, suppress_health_check=list(HealthCheck))  # examples: the profile (tests/conftest.py)
@given(meta=_metadata, secret=st.sampled_from([None, None, b"k1", "k\u00e9y"]))
def test_property_round_trip(meta: dict[str, Any], secret: str | bytes | None) -> None:
    slug = encode(meta, secret=secret)
    got = decode(slug, limits=_ROOMY, secrets=[secret] if secret else ())
    assert got.as_dict() == meta
    assert got.signed is (secret is not None)
    assert json.loads(json.dumps(got.extra)) == {k: v for k, v in meta.items() if k not in S.KNOWN_KEYS}
    if secret is None:  # the rLLM algorithm, spelled out
        body = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
        assert slug == "rllm1:" + base64.urlsafe_b64encode(body).rstrip(b"=").decode()


_B64_ALPHABET = string.ascii_letters + string.digits + "-_"
_json_ish = st.text(alphabet='{}[]":,0123456789.eE+-tfnrulasNIy\\ ', max_size=60)
_fuzz_slugs = st.one_of(
    st.text(max_size=80),  # anything at all
    st.text(max_size=60).map(lambda t: "rllm1:" + t),  # right prefix, any payload
    st.text(alphabet=_B64_ALPHABET + "=.", max_size=60).map(lambda t: "rllm1:" + t),
    st.binary(max_size=60).map(raw_slug),  # valid base64url of arbitrary bytes
    _json_ish.map(raw_slug),  # valid base64url of JSON-looking text
    _json.map(lambda v: raw_slug(json.dumps(v))),  # valid JSON, maybe not an object
    st.dictionaries(st.sampled_from(sorted(RESERVED_KEYS | S.KNOWN_KEYS) + ["x"]), _json, max_size=3).map(
        lambda d: raw_slug(json.dumps(d))
    ),  # known and reserved keys holding arbitrary values
    st.tuples(st.binary(max_size=40), st.text(alphabet=_B64_ALPHABET, max_size=24)).map(
        lambda p: raw_slug(p[0]) + "." + p[1]
    ),  # signature-shaped tails
)


_MODES: list[dict[str, Any]] = [{}, {"secrets": ["k"]}, {"secrets": ["k"], "require_signed": True}]


@settings(deadline=None, suppress_health_check=list(HealthCheck))  # examples: the profile (tests/conftest.py)
@given(slug=_fuzz_slugs)
def test_property_decode_never_raises_anything_but_slug_error(slug: str) -> None:
    for kwargs in _MODES:  # plain, verifying, and signature-required proxies
        try:
            got = decode(slug, **kwargs)
        except SlugError as err:
            assert err.message and err.status_code in (400, 401)
            assert err.to_response()["error"]["code"] == "rllm_invalid_slug"
            json.dumps(err.to_response())  # the error body is always serialisable
        else:
            assert isinstance(got.as_dict(), dict)
            json.dumps(got.as_dict(), allow_nan=False).encode("utf-8")  # storable as-is
