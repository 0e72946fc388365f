"""Pieces shared by the fake upstreams: fake tokenizer, reply plan, triggers, request log.

Everything here is deterministic so tests can compute the exact token ids and logprobs a fake
server returns; the rules are summed up in ``litellm_rllm/demo/__init__.py``.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import functools
import json
import logging
import re
import threading
import time
import zlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# --- fake tokenizer -------------------------------------------------------------------------

VOCAB_MOD = 50000  # plain words hash into [0, 50000); special ids sit above, never collide
IM_START = 151644  # "<|im_start|>"
IM_END = 151645  # "<|im_end|>", also the EOS id
TOOL_CALL_START = 151657  # "<tool_call>"
TOOL_CALL_END = 151658  # "</tool_call>"
NEWLINE = 198  # "\n"
EOS = IM_END
EOS_TOKEN = "<|im_end|>"
SPECIAL_IDS = {
    "<|im_start|>": IM_START,
    "<|im_end|>": IM_END,
    "<tool_call>": TOOL_CALL_START,
    "</tool_call>": TOOL_CALL_END,
    "\n": NEWLINE,
}
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs; top_logprobs=-1 means this many

dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


ID_TO_TOKEN: dict[int, str] = {v: k for k, v in SPECIAL_IDS.items()}  # for decoded_token fields


@functools.lru_cache(maxsize=65536)
def word_id(word: str) -> int:
    """Stable id of one whitespace-free word: crc32(utf-8) mod 50000 (same in every process)."""
    wid = zlib.crc32(word.encode("utf-8")) % VOCAB_MOD
    ID_TO_TOKEN[wid] = word
    return wid


def piece_id(piece: str) -> int:
    """Id of a reply piece: special tokens by table, else the id of the stripped word."""
    special = SPECIAL_IDS.get(piece)
    return special if special is not None else word_id(piece.strip())


def text_ids(text: str) -> list[int]:
    """Ids of a text: one id per whitespace-separated word."""
    return [word_id(w) for w in text.split()]


def message_text(message: dict[str, Any]) -> str:
    """The text a chat message contributes to the prompt (text parts, tool calls, tool results)."""
    content = message.get("content")
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and "text" in p]
        text = " ".join(parts)
    elif content is None:
        text = ""
    else:
        text = str(content)
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        text += f" {fn.get('name', '')} {fn.get('arguments', '')}"
    return text


TEMPLATES = ("exact", "retokenize")


def chat_prompt_token_ids(
    messages: list[dict[str, Any]],
    tools: Optional[list[dict[str, Any]]] = None,
    add_generation_prompt: bool = True,
    template: Optional[str] = None,
) -> list[int]:
    """The fake chat template, ChatML-like.

    ``[<|im_start|>, "tools", \\n, <tool names>, <|im_end|>, \\n]`` if tools are given, then per
    message ``[<|im_start|>, role, \\n, <words of message_text>, <|im_end|>, \\n]``, then the
    generation prompt ``[<|im_start|>, "assistant", \\n]``.

    ``template`` changes how assistant messages render (``assistant_ids``): ``"exact"`` renders
    them as the ids the server sampled for them, ``"retokenize"`` as ids it did not sample.
    """
    ids: list[int] = []
    if tools:
        names = [((t.get("function") or t).get("name") or "") for t in tools]
        ids += [IM_START, word_id("tools"), NEWLINE, *text_ids(" ".join(names)), IM_END, NEWLINE]
    for m in messages:
        ids += [IM_START, *text_ids(str(m.get("role", ""))), NEWLINE]
        if template is not None and m.get("role") == "assistant":
            ids += [*assistant_ids(m, template), IM_END, NEWLINE]
            continue
        ids += [*text_ids(message_text(m)), IM_END, NEWLINE]
    if add_generation_prompt:
        ids += [IM_START, word_id("assistant"), NEWLINE]
    return ids


def assistant_ids(message: dict[str, Any], template: str) -> list[int]:
    """The body of an assistant message under a history-rendering template.

    ``"exact"``: the words of the content (what ``text_generation`` sampled for them) and each
    tool call as the ids ``tool_generation`` sampled for it (hermes text, EOS left to the
    template's ``<|im_end|>``), so the next prompt extends the last prompt + completion token
    for token. ``"retokenize"``: the content's words 2 and 3 become one token (a merge the
    sampler never made) and tool calls render as plain words (``message_text``), so the next
    prompt keeps the earlier prompt but not the sampled ids: drift, at the completion's third
    token (text) or first token (tool call)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}")
    content = message_text({"content": message.get("content")})
    words = content.split()
    calls = message.get("tool_calls") or []
    if template == "retokenize":
        if len(words) >= 4:
            words = [*words[:2], f"{words[2]} {words[3]}", *words[4:]]
        ids = [word_id(w) for w in words]
        for call in calls:
            fn = call.get("function") or {}
            ids += text_ids(f"{fn.get('name', '')} {fn.get('arguments', '')}")
        return ids
    ids = [word_id(w) for w in words]
    for call in calls:
        fn = call.get("function") or {}
        ids += tool_call_ids(str(fn.get("name") or ""), str(fn.get("arguments") or ""))
    return ids


def tool_call_ids(name: str, arguments: str) -> list[int]:
    """A tool call as the exact template renders it: the ids ``tool_generation(name)`` sampled
    (without EOS) when the arguments are the ones it generates, else the same frame around
    the words of the JSON."""
    if arguments == TOOL_ARGUMENTS:
        return tool_generation(name).token_ids[:-1]
    body = text_ids(dumps({"name": name, "arguments": arguments}))
    return [TOOL_CALL_START, NEWLINE, *body, NEWLINE, TOOL_CALL_END]


def anthropic_prompt_token_ids(body: dict[str, Any]) -> list[int]:
    """Prompt ids for an Anthropic Messages request (system folded in as a system message)."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": system})
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for block in content:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text":
                    texts.append(block.get("text", ""))
                elif block.get("type") == "tool_use":
                    texts.append(f"{block.get('name', '')} {dumps(block.get('input', {}))}")
                elif block.get("type") == "tool_result":
                    inner = block.get("content")
                    texts.append(message_text({"content": inner}))
            content = " ".join(texts)
        messages.append({"role": m.get("role", ""), "content": content})
    tools = [{"name": t.get("name", "")} for t in body.get("tools") or []]
    return chat_prompt_token_ids(messages, tools or None)


def completion_prompt_token_ids(prompt: Any) -> list[int]:
    """Ids of one completions prompt: a string's words, or a list of ints as given."""
    if isinstance(prompt, str):
        return text_ids(prompt)
    return [int(x) for x in prompt]


# --- logprobs ---------------------------------------------------------------------------------


def sampled_logprob(choice: int, position: int) -> float:
    """Logprob of completion token ``position`` (0-based, EOS included) of choice ``choice``.

    ``-(((choice + position) % 64) + 1) / 64``: multiples of 1/64, exact in float32.
    """
    return -(((choice + position) % 64) + 1) / 64.0


def alt_logprob(choice: int, position: int, rank: int) -> float:
    """Logprob of the ``rank``-th alternative (1-based): the sampled logprob minus ``rank``."""
    return sampled_logprob(choice, position) - rank


def alt_token(rank: int) -> str:
    """Token string of the ``rank``-th alternative (its id is ``word_id(f"alt{rank}")``)."""
    return f" alt{rank}"


def prompt_logprob(position: int) -> float:
    """Logprob of prompt token ``position`` (>= 1; position 0 has none): ``-((p % 64) + 1) / 64``."""
    return -((position % 64) + 1) / 64.0


def logprob_item(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def logprob_content(gen: "Generation", choice: int, top: int) -> list[dict[str, Any]]:
    """OpenAI-style ``logprobs.content[]``, one item per token.

    ``top_logprobs`` has ``top`` entries: the sampled token first, then ``alt_token(1..top-1)``.
    """
    out = []
    for j, t in enumerate(gen.tokens):
        lp = sampled_logprob(choice, j)
        tops = [logprob_item(t.token, lp)] if top else []
        tops += [logprob_item(alt_token(r), alt_logprob(choice, j, r)) for r in range(1, top)]
        out.append({**logprob_item(t.token, lp), "top_logprobs": tops})
    return out


@functools.lru_cache(maxsize=4096)
def chat_logprob_entries(gen: "Generation", choice: int, top: int) -> tuple[str, ...]:
    """``logprob_content`` as one JSON string per token (cached: the hot path of the vLLM fake)."""
    return tuple(dumps(item) for item in logprob_content(gen, choice, top))


# --- replies ----------------------------------------------------------------------------------

TOOL_ARGUMENTS = '{"location": "Paris"}'


@dataclass(frozen=True)
class Token:
    """One generated token: its id, the text it adds to the content, its logprob token string."""

    id: int
    text: str
    token: str


@dataclass(frozen=True, eq=False)
class Generation:
    """What one choice generates: the tokens (EOS included when reached) and how it ended.

    ``tool_steps`` (tool-call replies only) says, per token, what the tool parser emits for it:
    ``None`` (buffered/control token), ``("name", name)`` or ``("args", fragment)``.
    Instances come from cached factories and hash by identity, so derived JSON can be cached
    per instance cheaply (no O(tokens) hashing per request).
    """

    tokens: tuple[Token, ...]
    finish_reason: str
    stop_reason: Any
    tool_name: Optional[str] = None
    tool_steps: tuple[Any, ...] = ()

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    @property
    def token_ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def tool_arguments(self) -> str:
        return "".join(s[1] for s in self.tool_steps if s and s[0] == "args")


@functools.lru_cache(maxsize=1024)
def reply_words(reply: Optional[str], tokens: int, choice: int = 0) -> tuple[str, ...]:
    """The words of a reply: ``reply.split()`` or ``tok0 .. tok{K-1}``; choice i>0 appends ``#i``."""
    words = reply.split() if reply is not None else [f"tok{j}" for j in range(tokens)]
    if choice:
        words = [f"{w}#{choice}" for w in words]
    return tuple(words)


@functools.lru_cache(maxsize=4096)
def text_generation(
    words: tuple[str, ...],
    max_tokens: Optional[int] = None,
    stop: tuple[str, ...] = (),
    stop_token_ids: tuple[int, ...] = (),
) -> Generation:
    """Plain-text reply: one token per word (" word" after the first), then EOS.

    A word equal to a ``stop`` string, or whose id is in ``stop_token_ids``, ends the reply: its
    token is generated (kept in ids and logprobs) but adds no text; ``stop_reason`` is that string
    or id. ``max_tokens`` cuts the token list (EOS counted) with ``finish_reason="length"``.
    """
    tokens: list[Token] = []
    stop_reason: Any = None
    for j, w in enumerate(words):
        piece = w if j == 0 else " " + w
        wid = word_id(w)
        if w in stop or wid in stop_token_ids:
            tokens.append(Token(wid, "", piece))
            stop_reason = w if w in stop else wid
            break
        tokens.append(Token(wid, piece, piece))
    else:
        tokens.append(Token(EOS, "", EOS_TOKEN))
    if max_tokens is not None and len(tokens) > max_tokens:
        return Generation(tuple(tokens[:max_tokens]), "length", None)
    return Generation(tuple(tokens), "stop", stop_reason)


@functools.lru_cache(maxsize=1024)
def tool_generation(name: str, max_tokens: Optional[int] = None) -> Generation:
    """Hermes-style tool-call reply for function ``name`` with arguments ``TOOL_ARGUMENTS``.

    Text: ``<tool_call>\\n{"name": "<name>", "arguments": {"location": "Paris"}}\\n</tool_call>``
    then EOS. Per token the parser emits nothing (control/buffered), the name, or an arguments
    fragment, like vLLM's hermes parser does.
    """
    pieces: list[tuple[str, Any]] = [
        ("<tool_call>", None),
        ("\n", None),
        ('{"name": "', None),
        (name, ("name", name)),
        ('", "arguments": ', None),
        ('{"location": ', ("args", '{"location": ')),
        ('"Paris"', ("args", '"Paris"')),
        ("}", ("args", "}")),
        ("}", None),
        ("\n", None),
        ("</tool_call>", None),
    ]
    tokens = [Token(piece_id(p), p, p) for p, _ in pieces] + [Token(EOS, "", EOS_TOKEN)]
    steps = tuple(s for _, s in pieces) + (None,)
    if max_tokens is not None and len(tokens) > max_tokens:
        return Generation(tuple(tokens[:max_tokens]), "length", None, name, steps[:max_tokens])
    return Generation(tuple(tokens), "tool_calls", None, name, steps)


@functools.lru_cache(maxsize=4096)
def hosted_generation(gen: Generation, max_tokens: Optional[int]) -> Generation:
    """A generation as hosted APIs (OpenAI, Anthropic) report it: no EOS token listed or counted,
    ``max_tokens`` counting text tokens only."""
    tokens, steps = gen.tokens, gen.tool_steps
    if tokens and tokens[-1].id == EOS:
        tokens, steps = tokens[:-1], steps[:-1]
    if max_tokens is not None and len(tokens) > max_tokens:
        return Generation(tokens[:max_tokens], "length", None, gen.tool_name, steps[:max_tokens])
    return Generation(tokens, gen.finish_reason, gen.stop_reason, gen.tool_name, steps)


def tool_call_trigger(body: dict[str, Any]) -> Optional[str]:
    """Name of the tool to call: the first tool's, when ``tools`` is set, ``tool_choice`` is not
    "none", the last user message mentions "weather" (case-insensitive) and the conversation does
    not end with a tool result (that gets an answer, so an agent loop ends); else ``None``."""
    tools = body.get("tools")
    if not tools or body.get("tool_choice") == "none":
        return None
    messages = body.get("messages") or []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None
    last_user = ""
    for m in body.get("messages") or []:
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
            last_user = str(content or "")
    if "weather" not in last_user.lower():
        return None
    first = tools[0]
    return str((first.get("function") or first).get("name") or "tool")


def stream_steps(n_tokens: int, per_step: int) -> list[tuple[int, int]]:
    """Engine steps as ``(start, end)`` slices: the first token alone, then ``per_step`` at a time
    (vLLM sends the first chunk at once whatever the stream interval)."""
    if n_tokens <= 0:
        return []
    if per_step <= 1:
        return [(j, j + 1) for j in range(n_tokens)]
    steps = [(0, 1)]
    steps += [(j, min(j + per_step, n_tokens)) for j in range(1, n_tokens, per_step)]
    return steps


# --- failure injection ------------------------------------------------------------------------

_NUM = r"(\d+(?:\.\d+)?)"


@dataclass(frozen=True)
class Triggers:
    """Failure/shape switches parsed from the request's model name (see package docstring)."""

    fail_status: Optional[int] = None
    slow: float = 0.0
    drip: float = 0.0
    break_stream: bool = False
    stream_error: bool = False
    flaky: int = 0
    tokens: Optional[int] = None
    stall: float = 0.0
    template: Optional[str] = None

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def parse(model: str) -> "Triggers":
        def num(pattern: str) -> Optional[str]:
            m = re.search(pattern, model)
            return m.group(1) if m else None

        fail = num(r"fail-(\d{3})")
        return Triggers(
            fail_status=int(fail) if fail else None,
            slow=float(num(r"slow-" + _NUM) or 0),
            drip=float(num(r"drip-" + _NUM) or 0),
            break_stream="break-stream" in model,
            stream_error="stream-error" in model,
            flaky=int(num(r"flaky-(\d+)") or 0),
            tokens=int(num(r"tokens-(\d+)")) if num(r"tokens-(\d+)") else None,
            stall=float(num(r"stall-" + _NUM) or 0),
            template=num(r"template-(" + "|".join(TEMPLATES) + r")\b"),
        )


class DropConnection(Exception):
    """Raised inside a response to make uvicorn close the socket mid-body (``break-stream``)."""


_EXC_GROUP = getattr(builtins, "BaseExceptionGroup", ())


class _QuietDrops(logging.Filter):
    """Keeps uvicorn from logging a traceback for connections we drop on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        seen = 0
        while exc is not None and seen < 10:
            if isinstance(exc, DropConnection):
                return False
            if isinstance(exc, _EXC_GROUP):
                if any(isinstance(e, DropConnection) for e in exc.exceptions):
                    return False
            exc = exc.__cause__ or exc.__context__
            seen += 1
        return True


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


class BrokenBody(Response):
    """A response that sends its headers and the first half of its body, then drops the socket."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
        raise DropConnection("break-stream: body cut on purpose")


# --- the app base -----------------------------------------------------------------------------

# The request-log entry of the request being answered: a paced stream notes in it how far it
# got and how it ended (see ``paced_rounds``).
_CURRENT_RECORD: ContextVar[Optional[dict[str, Any]]] = ContextVar("fake_upstream_record", default=None)

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


class FakeUpstream:
    """An ASGI app that records every request it receives, then answers like a provider.

    Reply settings shared by the fakes: ``reply`` (fixed text) wins over ``tokens`` (the reply
    ``tok0 .. tok{K-1}``); ``tokens_per_step`` is the stream interval; ``step_delay`` sleeps
    between stream steps.

    ``requests`` is a snapshot list of ``{"path", "headers", "json"}`` (newest last; at most
    ``max_recorded`` kept; health checks are not recorded); ``clear()`` empties it. ``GET /_fake/requests`` and
    ``DELETE /_fake/requests`` do the same over HTTP for servers run as a separate process.
    """

    def __init__(self, reply: Optional[str] = None, tokens: int = 8, tokens_per_step: int = 1,
                 step_delay: float = 0.0, max_recorded: int = 10000) -> None:
        self.reply, self.tokens, self.tokens_per_step, self.step_delay = reply, tokens, tokens_per_step, step_delay
        self._lock = threading.Lock()
        self._requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_recorded)
        self._flaky_counts: collections.Counter[str] = collections.Counter()
        routes = [Route(path, self._wrap(handler), methods=[method]) for method, path, handler in self.routes()]
        routes += [
            Route("/_fake/requests", self._list_requests, methods=["GET"]),
            Route("/_fake/requests", self._clear_requests, methods=["DELETE"]),
        ]
        self.app = Starlette(routes=routes)

    unrecorded_paths: frozenset[str] = frozenset({"/health"})

    def routes(self) -> Iterable[tuple[str, str, Handler]]:
        """``(method, path, handler)`` triples; handlers get the request and its parsed JSON."""
        return ()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._flaky_counts.clear()

    def _wrap(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = None
            if request.url.path not in self.unrecorded_paths:
                record = {"path": request.url.path, "headers": dict(request.headers), "json": body}
                with self._lock:
                    self._requests.append(record)
                _CURRENT_RECORD.set(record)
            if body is not None and not isinstance(body, dict):
                body = None
            if body is None and request.method == "POST":
                return self.bad_json()
            return await handler(request, body or {})

        return endpoint

    def bad_json(self) -> Response:
        return JSONResponse({"error": {"message": "Invalid JSON body", "type": "invalid_request_error"}}, 400)

    def words(self, triggers: Triggers, choice: int = 0) -> tuple[str, ...]:
        """The reply words for one choice: ``tokens-K`` in the model name beats the server default."""
        if triggers.tokens is not None:
            return reply_words(None, triggers.tokens, choice)
        return reply_words(self.reply, self.tokens, choice)

    def take_flaky(self, model: str, n: int) -> bool:
        """True for the first ``n`` requests naming ``model`` (since start or ``clear()``)."""
        with self._lock:
            self._flaky_counts[model] += 1
            return self._flaky_counts[model] <= n

    async def _list_requests(self, request: Request) -> Response:
        return JSONResponse(self.requests)

    async def _clear_requests(self, request: Request) -> Response:
        self.clear()
        return Response(status_code=204)

    async def pre_answer(self, model: str) -> tuple[Triggers, Optional[int]]:
        """Apply ``slow-`` / ``stall-`` and decide the injected status (``fail-NNN`` /
        ``flaky-N``), if any."""
        triggers = Triggers.parse(model or "")
        if triggers.slow:
            await asyncio.sleep(triggers.slow)
        if triggers.stall and self.take_flaky("stall:" + model, 1):
            await asyncio.sleep(triggers.stall)
        if triggers.fail_status:
            return triggers, triggers.fail_status
        if triggers.flaky and self.take_flaky(model, triggers.flaky):
            return triggers, 500
        return triggers, None


def note_generated(prompt_ids: list[int], gens: Iterable["Generation"]) -> None:
    """Put what a request generated into its log entry, ``"generated": {"prompt_token_ids",
    "choices": [{"token_ids", "text", "finish_reason"}]}``: the token truth a trace is compared
    with (a client that leaves mid-stream got a prefix of it)."""
    record = _CURRENT_RECORD.get()
    if record is not None:
        record["generated"] = {"prompt_token_ids": list(prompt_ids), "choices": [
            {"token_ids": g.token_ids, "text": g.text, "finish_reason": g.finish_reason} for g in gens]}


def sse(data: str) -> str:
    """One OpenAI-style server-sent event."""
    return f"data: {data}\n\n"


BREAK_AFTER_ROUNDS = 3


async def paced_rounds(
    rounds: list[list[str]], triggers: Triggers, step_delay: float, error_events: str
) -> AsyncIterator[str]:
    """Yield the events of each stream round (one engine step, all choices), sleeping ``drip-S``
    or ``step_delay`` between rounds. ``break-stream`` / ``stream-error`` strike after the first
    ``BREAK_AFTER_ROUNDS`` rounds (earlier in shorter streams, always before the last round).

    The request's log entry gets ``"stream": {"rounds", "sent", "end", "ended_at"}``: rounds
    sent, and ``end`` = ``"complete"``, ``"client_gone"`` (the client closed the connection:
    what vLLM turns into an abort of the generation) or ``"dropped"`` (``break-stream``), at
    ``ended_at`` (``time.time()``)."""
    delay = triggers.drip or step_delay
    strike = min(BREAK_AFTER_ROUNDS, len(rounds) - 1)
    record = _CURRENT_RECORD.get()
    state: dict[str, Any] = {"rounds": len(rounds), "sent": 0, "end": None, "ended_at": None}
    if record is not None:
        record["stream"] = state
    try:
        for k, events in enumerate(rounds):
            if k == strike and triggers.break_stream:
                state["end"] = "dropped"
                raise DropConnection("break-stream: connection dropped on purpose")
            if k == strike and triggers.stream_error:
                yield error_events
                state["end"] = "complete"
                return
            if k and delay:
                await asyncio.sleep(delay)
            for event in events:
                yield event
            state["sent"] = k + 1
        state["end"] = "complete"
    finally:
        state["end"] = state["end"] or "client_gone"  # cancelled or closed before the end
        state["ended_at"] = time.time()
