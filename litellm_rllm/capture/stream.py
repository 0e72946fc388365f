"""Stream chunks -> one trace's worth of data, in packed arrays.

`StreamAccumulator.add(chunk)` runs once per chunk on the event loop, so it only appends:
text pieces to lists, token ids to `array('i')`, logprobs to `array('f')`, top alternatives to
flat arrays, token strings as indices into one vocabulary of the stream's distinct strings. No
JSON, no I/O, no per-chunk objects kept. So a finished stream is a handful of flat buffers that
pickle as bytes (the writer hands it to its build process that way) plus a short vocabulary;
`choices()` (in the writer's build step) turns them into `TraceChoice`s. Chunks may be LiteLLM `ModelResponseStream` objects or plain dicts
(vLLM's SSE JSON), chat or text completions; `n > 1` choices are kept apart by index.
"""

from __future__ import annotations

import time
from array import array
from typing import Any, Callable, Optional

from ..trace import TopColumns, TraceChoice
from .fields import field as _get
from .fields import plain, provider_field as _psf
from .response import check_completeness


_ANTHROPIC_EVENTS = frozenset({
    "message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
    "message_stop", "ping",
})


class _ChoiceAcc:
    __slots__ = (
        "index", "role", "content", "reasoning", "text", "tool_calls", "finish_reason", "stop_reason",
        "token_ids", "prompt_token_ids", "logprobs", "tokens", "top_tokens", "top_lps", "top_counts",
        "has_ids", "has_lps", "has_tops",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.role: Optional[str] = None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.text: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: Optional[str] = None
        self.stop_reason: Any = None
        self.token_ids = array("i")
        self.prompt_token_ids: Optional[list[int]] = None
        self.logprobs = array("f")
        self.tokens = array("i")  # indices into StreamAccumulator.vocab
        self.top_tokens = array("i")  # likewise, every alternative in order
        self.top_lps = array("f")
        self.top_counts = array("H")
        self.has_ids = False
        self.has_lps = False
        self.has_tops = False

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for the writer's build process: text pieces (one per chunk) joined once, so
        a 32,000-chunk stream pickles as a few strings and flat arrays, not 32,000 objects."""
        state = {name: getattr(self, name) for name in self.__slots__}
        for name in ("content", "reasoning", "text"):
            if len(state[name]) > 1:
                state[name] = ["".join(state[name])]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


class _Intern(dict):  # type: ignore[type-arg]
    """token string -> its index in `vocab`; a string not seen before is appended there. A hit
    is a plain C dict lookup, which keeps the per-token cost on the event loop at that."""

    __slots__ = ("vocab",)

    def __init__(self, vocab: list[Optional[str]]) -> None:
        super().__init__()
        self.vocab = vocab

    def __missing__(self, token: Optional[str]) -> int:
        index = self[token] = len(self.vocab)
        self.vocab.append(token)
        return index


class StreamAccumulator:
    """Everything a trace needs from a stream, kept small."""

    def __init__(self, started: Optional[float] = None) -> None:
        self.started = started if started is not None else time.perf_counter()
        self.first_token_at: Optional[float] = None
        self.last_chunk_at: Optional[float] = None
        self.chunks = 0
        self.usage: Any = None
        self.prompt_token_ids: Optional[list[int]] = None
        self.model: Optional[str] = None
        self.response_id: Optional[str] = None
        self._choices: dict[int, _ChoiceAcc] = {}
        self.is_text = False
        # Token strings repeat (a vocabulary is finite): each distinct string is kept once, and
        # positions hold its index (None, a missing token string, is an entry like any other).
        self.vocab: list[Optional[str]] = []
        self._intern = _Intern(self.vocab)
        self.final_response: Optional[dict[str, Any]] = None  # Responses API streams

    def _choice(self, index: int) -> _ChoiceAcc:
        acc = self._choices.get(index)
        if acc is None:
            acc = self._choices[index] = _ChoiceAcc(index)
        return acc

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for the writer's build process: the lookup dict is only needed while adding."""
        state = dict(self.__dict__)
        state["_intern"] = None
        return state

    def add(self, chunk: Any) -> None:
        """One chunk: a parsed upstream event (plain dicts: the tapped-stream hot path) or a
        LiteLLM chunk object; one accumulation for both, with the field reader of each."""
        if type(chunk) is dict:
            if "choices" not in chunk:
                kind = chunk.get("type")
                if kind in _ANTHROPIC_EVENTS:
                    self._add_anthropic(chunk)
                    return
                if isinstance(kind, str) and kind.startswith("response."):
                    self._add_responses_event(chunk)
                    return
            # an upstream's JSON has vLLM's fields where it put them: no provider_specific_fields
            self._add_chunk(chunk, dict.get, dict.get)
        else:
            self._add_chunk(chunk, _get, _psf)

    def _add_chunk(self, chunk: Any, get: Callable[[Any, str], Any], psf: Callable[[Any, str], Any]) -> None:
        now = time.perf_counter()
        self.chunks += 1
        self.last_chunk_at = now
        if self.response_id is None:
            self.response_id = get(chunk, "id")
            self.model = get(chunk, "model")
        usage = get(chunk, "usage")
        if usage is not None:
            self.usage = usage
        if self.prompt_token_ids is None:
            prompt_ids = psf(chunk, "prompt_token_ids")
            if prompt_ids is not None:
                self.prompt_token_ids = list(prompt_ids)
        for ch in get(chunk, "choices") or ():
            index = get(ch, "index") or 0
            acc = self._choices.get(index) or self._choice(index)
            got_token = False
            delta = get(ch, "delta")
            if delta is not None:
                if delta:
                    role = get(delta, "role")
                    if role:
                        acc.role = role
                    piece = get(delta, "content")
                    if piece:
                        acc.content.append(piece)
                        got_token = True
                    reasoning = get(delta, "reasoning_content") or get(delta, "reasoning")
                    if reasoning:
                        acc.reasoning.append(reasoning)
                        got_token = True
                    tool_calls = get(delta, "tool_calls")
                    if tool_calls:
                        self._merge_tools(acc, tool_calls)
                        got_token = True
            else:
                piece = get(ch, "text")
                if piece is not None:
                    self.is_text = True
                    if piece:
                        acc.text.append(piece)
                        got_token = True
            finish = get(ch, "finish_reason")
            if finish:
                acc.finish_reason = finish
            stop_reason = psf(ch, "stop_reason")
            if stop_reason is not None:
                acc.stop_reason = stop_reason
            ids = psf(ch, "token_ids")
            if ids is not None:
                acc.has_ids = True
                if ids:
                    acc.token_ids.extend(ids)
                    got_token = True
            if acc.prompt_token_ids is None:
                cp_ids = psf(ch, "prompt_token_ids")
                if cp_ids is not None:
                    acc.prompt_token_ids = list(cp_ids)
            logprobs = get(ch, "logprobs")
            if logprobs is not None:
                content = logprobs.get("content") if type(logprobs) is dict else None
                if content is not None:
                    self._add_chat_logprobs(acc, content)
                else:
                    self._add_logprobs(acc, logprobs)
            if got_token and self.first_token_at is None:
                self.first_token_at = now

    def _add_chat_logprobs(self, acc: _ChoiceAcc, content: list[dict[str, Any]]) -> None:
        acc.has_lps = True
        intern = self._intern
        for item in content:
            acc.logprobs.append(item["logprob"])
            acc.tokens.append(intern[item.get("token")])
            alts = item.get("top_logprobs")
            if alts:
                acc.has_tops = True
                acc.top_counts.append(len(alts))
                top_tokens, top_lps = acc.top_tokens.append, acc.top_lps.append
                for alt in alts:
                    top_tokens(intern[alt.get("token")])
                    top_lps(alt["logprob"])
            else:
                acc.top_counts.append(0)

    def _add_responses_event(self, event: dict[str, Any]) -> None:
        """Responses API stream: the final `response.completed` (or `.incomplete` / `.failed`)
        event carries the whole response, logprobs included; deltas only time the stream."""
        now = time.perf_counter()
        self.chunks += 1
        self.last_chunk_at = now
        kind = event["type"]
        if kind.endswith(".delta") and self.first_token_at is None:
            self.first_token_at = now
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self.final_response = event.get("response")
            usage = (self.final_response or {}).get("usage")
            if usage is not None:
                self.usage = usage

    def _add_anthropic(self, event: dict[str, Any]) -> None:
        """Anthropic Messages stream events (`/v1/messages` served by Anthropic)."""
        now = time.perf_counter()
        self.chunks += 1
        self.last_chunk_at = now
        kind = event["type"]
        acc = self._choices.get(0) or self._choice(0)
        if kind == "message_start":
            message = event.get("message") or {}
            self.response_id = message.get("id")
            self.model = message.get("model")
            acc.role = message.get("role") or "assistant"
            self._anthropic_usage = dict(message.get("usage") or {})
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                acc.tool_calls[event.get("index", len(acc.tool_calls))] = {
                    "id": block.get("id"), "type": "function", "name": block.get("name"), "arguments": []}
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                acc.content.append(delta["text"])
            elif delta.get("type") == "thinking_delta" and delta.get("thinking"):
                acc.reasoning.append(delta["thinking"])
            elif delta.get("type") == "input_json_delta":
                slot = acc.tool_calls.get(event.get("index"))
                if slot is not None and delta.get("partial_json"):
                    slot["arguments"].append(delta["partial_json"])
            if self.first_token_at is None:
                self.first_token_at = now
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            if delta.get("stop_reason"):
                acc.finish_reason = delta["stop_reason"]
            usage = {**getattr(self, "_anthropic_usage", {}), **(event.get("usage") or {})}
            self.usage = usage

    @staticmethod
    def _merge_tools(acc: _ChoiceAcc, tool_calls: Any) -> None:
        for pos, tc in enumerate(tool_calls):
            idx = _get(tc, "index")
            idx = pos if idx is None else idx
            slot = acc.tool_calls.get(idx)
            if slot is None:
                slot = acc.tool_calls[idx] = {"id": None, "type": "function", "name": None, "arguments": []}
            if _get(tc, "id"):
                slot["id"] = _get(tc, "id")
            if _get(tc, "type"):
                slot["type"] = _get(tc, "type")
            fn = _get(tc, "function")
            if fn is not None:
                if _get(fn, "name"):
                    slot["name"] = _get(fn, "name")
                args = _get(fn, "arguments")
                if args:
                    slot["arguments"].append(args)

    def _add_logprobs(self, acc: _ChoiceAcc, logprobs: Any) -> None:
        if logprobs is None:
            return
        intern = self._intern
        content = _get(logprobs, "content")
        if content is not None:  # chat format
            acc.has_lps = True
            for item in content:
                acc.logprobs.append(_get(item, "logprob"))
                acc.tokens.append(intern[_get(item, "token")])
                alts = _get(item, "top_logprobs") or ()
                acc.top_counts.append(len(alts))
                if alts:
                    acc.has_tops = True
                    for alt in alts:
                        acc.top_tokens.append(intern[_get(alt, "token")])
                        acc.top_lps.append(_get(alt, "logprob"))
            return
        values = _get(logprobs, "token_logprobs")
        if values is not None:  # completions format
            acc.has_lps = True
            acc.logprobs.extend(float("nan") if v is None else v for v in values)
            acc.tokens.extend(intern[tok] for tok in _get(logprobs, "tokens") or ())
            for alt in _get(logprobs, "top_logprobs") or ():
                alt = alt or {}
                acc.top_counts.append(len(alt))
                if alt:
                    acc.has_tops = True
                    for tok, lp in alt.items():
                        acc.top_tokens.append(intern[tok])
                        acc.top_lps.append(lp)

    def token_ids_of(self, index: int) -> Optional[array]:
        """The ids of choice `index` accumulated so far (the array itself: read, don't keep)."""
        acc = self._choices.get(index)
        return acc.token_ids if acc is not None else None

    # ---- writer thread ------------------------------------------------------------------

    def logprob_entries(self) -> int:
        """Logprob positions plus their alternatives, over all choices (what a build walks)."""
        return sum(len(acc.logprobs) + len(acc.top_lps) for acc in self._choices.values())

    def ttft_ms(self) -> Optional[float]:
        return None if self.first_token_at is None else (self.first_token_at - self.started) * 1000.0

    def usage_dict(self) -> Optional[dict[str, Any]]:
        return plain(self.usage) if self.usage is not None else None

    def choices(self, logprobs_requested: bool = False) -> list[TraceChoice]:
        """The stream's choices; `logprobs_requested` as for `check_completeness`."""
        if self.final_response is not None:
            from .response import choices_from_response, responses_prompt_ids

            if self.prompt_token_ids is None:
                self.prompt_token_ids = responses_prompt_ids(self.final_response)
            return choices_from_response(self.final_response, logprobs_requested=logprobs_requested)
        usage = self.usage_dict()
        token_of = self.vocab.__getitem__
        out: list[TraceChoice] = []
        for index in sorted(self._choices):
            acc = self._choices[index]
            tops = TopColumns(list(map(token_of, acc.top_tokens)), acc.top_lps, acc.top_counts) if acc.has_tops else None
            tokens = list(map(token_of, acc.tokens)) if acc.has_lps else None
            message = None
            text = None
            if self.is_text:
                text = "".join(acc.text)
            else:
                message = {"role": acc.role or "assistant", "content": "".join(acc.content) if acc.content else None}
                if acc.reasoning:
                    message["reasoning_content"] = "".join(acc.reasoning)
                if acc.tool_calls:
                    message["tool_calls"] = [
                        {
                            "id": slot["id"],
                            "type": slot["type"],
                            "function": {"name": slot["name"], "arguments": "".join(slot["arguments"])},
                        }
                        for _, slot in sorted(acc.tool_calls.items())
                    ]
                message = {k: v for k, v in message.items() if v is not None}
            choice = TraceChoice(
                index=index,
                message=message,
                text=text,
                finish_reason=acc.finish_reason,
                stop_reason=acc.stop_reason,
                token_ids=acc.token_ids.tolist() if acc.has_ids else None,
                prompt_token_ids=acc.prompt_token_ids,
                logprobs=acc.logprobs.tolist() if acc.has_lps else None,
                tokens=tokens if tokens and any(t is not None for t in tokens) else None,
            )
            choice.set_top_columns(tops)
            choice.completeness = check_completeness(choice, usage if len(self._choices) == 1 else None,
                                                     logprobs_requested)
            out.append(choice)
        return out
