"""Client helpers: sessions that tag every LLM call an agent makes, without touching call sites.

``session(**metadata)`` keeps the current metadata in a :class:`contextvars.ContextVar`, so it
follows the code that runs inside the ``with`` block, thread by thread and asyncio task by task.
``wrap(client)`` makes an OpenAI client (sync or async) send that metadata as an
``x-rllm-slug`` header on every request, read at send time, so one shared client serves any
number of concurrent sessions. ``proxied_base_url`` is the alternative for clients that cannot
set headers: it bakes the slug into the base URL (rLLM's ``/meta/{slug}/v1`` layout).

This module imports nothing from LiteLLM and does not need ``openai`` installed.
"""

from __future__ import annotations

import copy
import inspect
import uuid
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from litellm_rllm import slug as _slug
from litellm_rllm.slug import HEADER, Secret
from litellm_rllm.trainer.remote import (  # the trainer's side: docs/trainer.md
    Follower,
    finish,
    follow,
    pause,
    pause_status,
    proxy_root,
    resume,
    reward,
    set_policy_version,
    wait_drained,
)

__all__ = [
    "HEADER",
    "Follower",
    "Session",
    "TracesLost",
    "current_metadata",
    "current_session",
    "current_slug",
    "fetch_traces",
    "finish",
    "flush",
    "follow",
    "pause",
    "pause_status",
    "proxied_base_url",
    "resume",
    "reward",
    "session",
    "set_policy_version",
    "unwrap",
    "wait_drained",
    "wrap",
]

ClientT = TypeVar("ClientT")

_HOOK_MARK = "_litellm_rllm_slug_hook"


@dataclass(frozen=True)
class _Frame:
    """What one active session contributes to the context: immutable, so tasks can share it."""

    session: "Session"
    metadata: Mapping[str, Any]
    slugs: dict[Optional[Secret], str] = field(default_factory=dict, compare=False)

    def slug(self, secret: Optional[Secret]) -> str:
        """Encoded once per secret and cached: the wrapper asks on every request."""
        cached = self.slugs.get(secret)
        if cached is None:
            cached = self.slugs[secret] = _slug.encode(self.metadata, secret=secret)
        return cached


_FRAME: ContextVar[Optional[_Frame]] = ContextVar("litellm_rllm_session", default=None)


class Session:
    """One entered ``session(...)`` block. Single use: enter it once, with ``with`` or ``async with``.

    Attributes:
        uid: this block's own id (a fresh uuid4 hex, known from construction), appended to
            ``session_uids`` of every request inside the block, nested blocks included.
        session_id: (on entry) the explicit ``session_id``, else the enclosing session's, else
            the outermost block's uid, so every call of one rollout shares one id.
        metadata: (on entry) the merged metadata that requests inside the block carry.

    Looking sessions up: every read (``fetch_traces``, ``store.traces(session=...)``,
    ``litellm-rllm traces export --session``) matches a trace whose ``session_id`` is the
    value or whose ``session_uids`` contain it. So ``uid`` finds this block *and every block
    nested in it*, whatever ``session_id`` those set; a ``session_id`` finds the traces that
    carry it, which nested blocks do only when they don't set their own::

        with session(session_id="episode-17") as episode:
            ...                                   # session_id episode-17
            with session(session_id="judge-17"):  # session_id judge-17, session_uids [episode.uid, ...]
                ...
        fetch_traces(url, "episode-17", key)      # the outer calls only
        fetch_traces(url, episode.uid, key)       # outer and nested calls, in write order
    """

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        if "session_uids" in metadata:
            raise TypeError("session_uids is managed by session(); nest sessions instead")
        self._own = {k: v for k, v in metadata.items() if not (k in ("session_id", "session_name") and v is None)}
        self.uid: str = uuid.uuid4().hex
        self.session_id: Optional[str] = None
        self.metadata: dict[str, Any] = {}
        self._token: Optional[Token[Optional[_Frame]]] = None
        self._frame: Optional[_Frame] = None

    def __enter__(self) -> "Session":
        if self._frame is not None:
            raise RuntimeError("a session() object can only be entered once; create a new one")
        parent = _FRAME.get()
        merged: dict[str, Any] = {**(parent.metadata if parent else {}), **self._own}
        uids = list(parent.metadata["session_uids"]) if parent else []
        merged["session_uids"] = [*uids, self.uid]
        merged.setdefault("session_id", merged["session_uids"][0])
        frame = _Frame(self, merged)
        frame.slug(None)  # validate now (reserved keys, types, JSON), not at the first request
        self._frame = frame
        self.metadata = copy.deepcopy(merged)
        self.session_id = merged["session_id"]
        self._token = _FRAME.set(frame)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _FRAME.reset(self._token)
            self._token = None

    async def __aenter__(self) -> "Session":
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def slug(self, secret: Optional[Secret] = None) -> str:
        """This session's slug (valid once entered)."""
        if self._frame is None:
            raise RuntimeError("enter the session before asking for its slug")
        return self._frame.slug(secret)

    def __repr__(self) -> str:
        return f"Session(session_id={self.session_id!r}, uid={self.uid!r})"


def session(**metadata: Any) -> Session:
    """Open a session: ``with session(task="t1"): ...`` or ``async with session(...): ...``.

    Nested sessions merge metadata (inner keys win) and extend ``session_uids`` outer to inner.
    Metadata is validated on entry (``SlugError`` for reserved keys or bad types).
    """
    return Session(metadata)


def current_session() -> Optional[Session]:
    """The innermost active session in this context, or None."""
    frame = _FRAME.get()
    return frame.session if frame else None


def current_metadata() -> dict[str, Any]:
    """The metadata a request sent now would carry; ``{}`` outside any session."""
    frame = _FRAME.get()
    return copy.deepcopy(dict(frame.metadata)) if frame else {}


def current_slug(secret: Optional[Secret] = None) -> Optional[str]:
    """The slug a request sent now would carry; None outside any session."""
    frame = _FRAME.get()
    return frame.slug(secret) if frame else None


def proxied_base_url(
    base_url: str, metadata: Optional[Mapping[str, Any]] = None, *, secret: Optional[Secret] = None
) -> str:
    """``base_url`` with ``/meta/{slug}`` inserted (before a trailing ``/v1``).

    Without ``metadata`` it uses the current session, and returns ``base_url`` unchanged
    outside any session. The slug is fixed when the URL is built; use :func:`wrap` when one
    client must follow whichever session is active at each request.
    """
    if metadata is None:
        slug = current_slug(secret)
        return base_url if slug is None else _slug.proxied_base_url(base_url, slug)
    return _slug.proxied_base_url(base_url, metadata, secret=secret)


def _stamp(request: Any, secret: Optional[Secret]) -> None:
    """Add the current session's slug unless the caller set the header explicitly."""
    slug = current_slug(secret)
    if slug is not None and HEADER not in request.headers:
        request.headers[HEADER] = slug


def wrap(client: ClientT, *, secret: Optional[Secret] = None) -> ClientT:
    """Make ``client`` send the current session's slug as ``x-rllm-slug`` on every request.

    Mechanism: a request event hook on the client's underlying httpx (or httpx2) client. The
    SDK sends every request of every endpoint (chat, completions, responses, embeddings,
    models, files, and each retry) through that client, and the hook runs inside the calling
    thread or asyncio task, so it reads the session of the code that made the call. A header,
    not a URL rewrite, so it works whatever the base URL looks like. Tested with
    ``openai.OpenAI`` and ``openai.AsyncOpenAI``; SDKs built the same way (``anthropic``) take
    the same hook. Realtime websockets do not go through httpx and carry no slug.

    - An ``x-rllm-slug`` header set explicitly (``extra_headers``, ``default_headers``) wins.
    - Outside any session no header is added.
    - ``client.with_options(...)`` / ``copy()`` share the underlying http client, so they are
      wrapped too; so is every SDK client built on the same ``http_client=`` you passed in.
    - Wrapping again replaces the previous hook (e.g. to change ``secret``); :func:`unwrap` removes it.

    Returns ``client`` itself.
    """
    http = _http_client(client)
    is_async = inspect.iscoroutinefunction(getattr(http, "send", None))
    if is_async:

        async def hook(request: Any) -> None:
            _stamp(request, secret)

    else:

        def hook(request: Any) -> None:  # type: ignore[misc]
            _stamp(request, secret)

    setattr(hook, _HOOK_MARK, True)
    hooks = http.event_hooks
    kept = [h for h in hooks.get("request", []) if not getattr(h, _HOOK_MARK, False)]
    http.event_hooks = {**hooks, "request": [*kept, hook]}
    return client


def unwrap(client: ClientT) -> ClientT:
    """Undo :func:`wrap`; returns ``client``."""
    http = _http_client(client)
    hooks = http.event_hooks
    kept = [h for h in hooks.get("request", []) if not getattr(h, _HOOK_MARK, False)]
    http.event_hooks = {**hooks, "request": kept}
    return client


def _http_client(client: Any) -> Any:
    http = getattr(client, "_client", None)
    if not isinstance(getattr(http, "event_hooks", None), dict):
        raise TypeError(
            f"wrap() needs an openai.OpenAI or openai.AsyncOpenAI client, got {type(client).__name__}"
        )
    return http


# ---------------------------------------------------------------------------------------
# Trainer side: the proxy's flush barrier and remote read-back
# ---------------------------------------------------------------------------------------


def flush(base_url: str, api_key: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """Block until every call the proxy finished before now is durable.

    Returns `{"flushed": true, ...}` once everything is in the store, or `{"flushed": false,
    "spooled": N, "held": M}` while the store does not take traces and they wait in the proxy's
    local spool or its memory (retry later). Raises `TracesLost` when traces were lost since the
    previous flush (HTTP 409). Call it on each proxy a rollout used (each has its own writer).
    Needs the master key or an admin key.
    """
    import httpx

    resp = httpx.post(f"{proxy_root(base_url)}/rllm/flush", params={"timeout": timeout},
                      headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout + 10)
    if resp.status_code == 503 and "flushed" in resp.json():
        return resp.json()
    if resp.status_code == 409:
        raise TracesLost(resp.json())
    resp.raise_for_status()
    return resp.json()


class TracesLost(RuntimeError):
    """The proxy lost traces since the previous flush (`.answer["lost"]` of them; its log names
    them): the data of this period is incomplete."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        super().__init__(f"{answer.get('lost')} traces were lost since the previous flush")


def proxies_of(base_url: str) -> list[str]:
    """Every proxy behind `base_url`: one URL per address its host name resolves to (a
    Kubernetes headless Service, a compose service scaled to N replicas), else `base_url`."""
    import socket
    from urllib.parse import urlsplit, urlunsplit

    root = proxy_root(base_url)
    parts = urlsplit(root)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return [root]
    addresses = sorted({info[4][0] for info in infos})
    if len(addresses) <= 1:
        return [root]
    out = []
    for address in addresses:
        shown = f"[{address}]" if ":" in address else address
        out.append(urlunsplit(parts._replace(netloc=f"{shown}:{port}")))
    return out


def flush_all(base_urls: Any, api_key: str, *, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """`flush` on every proxy of a fleet, at once: `base_urls` is a list of proxy URLs, or one
    URL whose host name resolves to every proxy (`proxies_of`). Returns each proxy's answer
    (an unreachable proxy's error under `"error"`); everything is durable when each says
    `flushed`."""
    from concurrent.futures import ThreadPoolExecutor

    urls = proxies_of(base_urls) if isinstance(base_urls, str) else [proxy_root(u) for u in base_urls]

    def one(url: str) -> dict[str, Any]:
        try:
            return flush(url, api_key, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - reported per proxy
            return {"flushed": False, "error": f"{type(exc).__name__}: {exc}"}

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(urls)))) as pool:
        return dict(zip(urls, pool.map(one, urls)))


def fetch_traces(base_url: str, session: str, api_key: str, *, timeout: float = 120.0,
                 team: Optional[str] = None) -> list[Any]:
    """The traces of `session` in call order, read through the proxy (which flushes first),
    as `Trace` objects.

    `session` is a `session_id`, a session uid (`Session.uid`) or a `session_name` (rLLM's
    SDK): the traces whose session_id or name is it or whose session_uids contain it. Pass the
    outer `Session.uid` to include the sessions nested in it that set a session_id of their own
    (see `Session`); such a merged read is sorted by `order` (`seq` counts per session key).
    `team`: an admin key reading a session written with a team's key (a team key reads its own
    team's; docs/sessions.md)."""
    import httpx

    from .trace import Trace

    resp = httpx.get(f"{proxy_root(base_url)}/rllm/sessions/{session}/traces",
                     params={"team": team} if team else None,
                     headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
    resp.raise_for_status()
    return [Trace.model_validate(t) for t in resp.json()["traces"]]
