"""vcrpy cassettes for the real providers' wire formats (`cassettes/`), and the
`--record-cassettes` pytest option.

A pytest plugin: `tests/conftest.py` loads it with ``pytest_plugins = ["tests.support.cassette_support"]``
(or run ``pytest -p tests.support.cassette_support``).

Replay is the default and can never reach the network: ``record_mode="none"`` makes any request
that no recorded interaction matches fail with ``CannotOverwriteExistingCassetteException``.
``--record-cassettes`` re-records against the real providers (``record_mode="all"``, unused old
interactions dropped); it needs real keys in ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` (read by
``tests/support/harness.py`` when the proxy config is written); a provider without its key has its
tests skipped.

Why this configuration intercepts LiteLLM inside the in-process proxy: LiteLLM 1.108.5 sends
provider calls through an ``httpx.AsyncClient`` whose transport is its own
``LiteLLMAiohttpTransport`` (``litellm/llms/custom_httpx/aiohttp_transport.py``), an
``httpx.AsyncBaseTransport`` that calls ``aiohttp.ClientSession.request``. vcrpy's httpx patch
only replaces ``httpx.AsyncHTTPTransport.handle_async_request``, which that path never reaches;
its aiohttp patch replaces ``ClientSession._request``, which it does. With
``DISABLE_AIOHTTP_TRANSPORT=True`` LiteLLM uses ``httpx.AsyncHTTPTransport`` and the httpx patch
catches it instead. Both are class-level patches, so clients LiteLLM built and cached before the
cassette was entered are intercepted too, from the proxy's event-loop thread. Nothing needs to be
configured in LiteLLM; the test client's own traffic (``testserver``, Starlette's TestClient
transport) is not touched.

Caveat on the httpx path: vcrpy's httpx stub replays a body as an ``httpx.ByteStream``, which can
be iterated twice, and openai's SDK does iterate a finished stream's ``response.stream`` again
(``drain_response_async``); the plugin's upstream tee then sees a streamed body twice. The
default (aiohttp) path replays through a consumable stream, like a real connection.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import pytest
import vcr
from vcr.record_mode import RecordMode

CASSETTES = Path(__file__).resolve().parents[2] / "cassettes"

RECORD_OPTION = "--record-cassettes"

# Request headers that carry credentials or account identity; replaced by nothing before a
# request is stored (vcrpy's `filter_headers`).
FILTERED_REQUEST_HEADERS = (
    "authorization",
    "x-api-key",
    "api-key",
    "openai-organization",
    "openai-project",
    "cookie",
)

# Response headers dropped before a response is stored: cookies, and the account the key
# belongs to.
DROPPED_RESPONSE_HEADERS = frozenset({
    "set-cookie",
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
})

# Request-body keys a recorded interaction must agree on (see `body_keys_matcher`).
BODY_KEYS = ("model", "stream", "logprobs", "top_logprobs")

# Key prefixes that must never appear in a committed cassette.
SECRET_MARKERS = ("sk-proj-", "sk-ant-api", "sk-svcacct-", "sk-admin-")

# Which environment variable a cassette's provider needs when re-recording.
PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cassettes", "provider cassettes (cassettes/, tests/proxy/test_cassettes.py)")
    group.addoption(
        RECORD_OPTION,
        action="store_true",
        default=False,
        help="re-record the provider cassettes against the real OpenAI / Anthropic APIs "
             "(needs OPENAI_API_KEY / ANTHROPIC_API_KEY); default is replay only, no network",
    )


def recording(config: pytest.Config) -> bool:
    """True when this run re-records cassettes (`--record-cassettes`)."""
    try:
        return bool(config.getoption(RECORD_OPTION))
    except ValueError:  # the plugin's option is not registered: replay
        return False


# ---------------------------------------------------------------------------------------------
# Matching and redaction
# ---------------------------------------------------------------------------------------------


def request_json(body: Any) -> Optional[dict[str, Any]]:
    """A recorded or live request body as a JSON object, or None."""
    if body is None:
        return None
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            value = json.loads(body)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    return body if isinstance(body, dict) else None


def body_view(body: Any) -> dict[str, Any]:
    """The part of a request body that matching looks at: `model`, `stream` (absent = false),
    `logprobs` and `top_logprobs` (absent stays absent, so a cassette recorded without
    `logprobs` never matches a request that sends it)."""
    data = request_json(body) or {}
    return {
        "model": data.get("model"),
        "stream": bool(data.get("stream", False)),
        "logprobs": data.get("logprobs"),
        "top_logprobs": data.get("top_logprobs"),
    }


def body_keys_matcher(r1: Any, r2: Any) -> None:
    """vcrpy matcher: the two requests agree on `BODY_KEYS` (JSON), whatever the byte layout,
    key order or other fields (messages, max_tokens, stream_options ...). Raises
    AssertionError naming the difference, as vcrpy's matchers do."""
    a, b = body_view(r1.body), body_view(r2.body)
    assert a == b, f"request body keys differ: {a} != {b}"


def drop_response_headers(response: dict[str, Any]) -> dict[str, Any]:
    headers = response.get("headers") or {}
    for name in list(headers):
        if name.lower() in DROPPED_RESPONSE_HEADERS:
            del headers[name]
    return response


def make_vcr(*, record: bool = False, **overrides: Any) -> vcr.VCR:
    """The VCR every provider cassette is used with."""
    options: dict[str, Any] = dict(
        cassette_library_dir=str(CASSETTES),
        serializer="yaml",
        record_mode=RecordMode.ALL if record else RecordMode.NONE,
        drop_unused_requests=record,
        match_on=("method", "scheme", "host", "port", "path", "rllm_body"),
        filter_headers=FILTERED_REQUEST_HEADERS,
        before_record_response=drop_response_headers,
        decode_compressed_response=True,
        # The test client's calls into the in-process app and the fake upstreams are never
        # cassette traffic.
        ignore_hosts=("testserver",),
        ignore_localhost=True,
    )
    options.update(overrides)
    config = vcr.VCR(**options)
    config.register_matcher("rllm_body", body_keys_matcher)
    return config


def secrets_in(path: Path, extra: Iterable[str] = ()) -> list[str]:
    """Credential-looking strings found anywhere in a cassette file (should be empty): known key
    prefixes, and the given values (e.g. the keys in the environment, the placeholder keys)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    needles = [*SECRET_MARKERS, *(s for s in extra if s and len(s) >= 8)]
    return [n for n in needles if n in text]


# ---------------------------------------------------------------------------------------------
# Fixture
# ---------------------------------------------------------------------------------------------


class CassetteUse:
    """``with cassette_use("name.yaml", provider="openai") as cas:`` -> the vcrpy cassette, with
    ``cas.live_requests``: the requests LiteLLM actually sent while it was in use (after header
    filtering, one entry per request), so a test can check what went upstream."""

    def __init__(self, record: bool) -> None:
        self.record = record
        self.vcr = make_vcr(record=record)

    @contextlib.contextmanager
    def __call__(self, name: str, *, provider: str) -> Iterator[Any]:
        if self.record:
            env = PROVIDER_KEYS[provider]
            if not os.environ.get(env):
                pytest.skip(f"{RECORD_OPTION} needs {env} with a real key for {name}")
        elif not (CASSETTES / name).exists():
            pytest.fail(f"cassette {name} is missing from {CASSETTES}; re-record it with {RECORD_OPTION}")
        live: list[Any] = []

        def remember(request: Any) -> Any:
            # vcrpy runs this hook several times per request (matching, filtering, recording),
            # each time on a copy: keep one per distinct request.
            key = (request.method, request.uri, request.body)
            if not any((r.method, r.uri, r.body) == key for r in live):
                live.append(request)
            return request

        with self.vcr.use_cassette(name, before_record_request=remember) as cassette:
            # vcrpy ran the hook on the cassette's own recorded requests while loading it:
            # only what LiteLLM sends from here on is live.
            live.clear()
            cassette.live_requests = live
            yield cassette


@pytest.fixture(scope="session")
def cassette_use(pytestconfig: pytest.Config) -> Callable[..., Any]:
    return CassetteUse(recording(pytestconfig))


__all__ = [
    "BODY_KEYS",
    "CASSETTES",
    "CassetteUse",
    "body_keys_matcher",
    "body_view",
    "cassette_use",
    "drop_response_headers",
    "make_vcr",
    "pytest_addoption",
    "recording",
    "request_json",
    "secrets_in",
]
