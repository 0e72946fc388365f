"""Token ids for a streaming client that asked for them, as the upstream sent them.

LiteLLM's chunk parsing loses some of vLLM's ids on the way to the client: the role chunk's
`prompt_token_ids`, whole `"delta": {}` chunks (control and tool-call tokens) and the finish
chunk's EOS id. The tee (`upstream_tap`) has every one of them, parsed from the upstream's
bytes before LiteLLM yields the chunk they came in. So for a client that asked
(`return_token_ids`), a chunk keeps the ids it came with, and the ids of chunks LiteLLM dropped
before it ride in front of them (a finish chunk gets every id left, its EOS id too):
concatenated, they are the upstream's sequence exactly, each id on the chunk of its own text or
the next one served, and the first chunk carries `prompt_token_ids`. Clients that did not ask
get none of this (the strip rules stay). A chunk that lost nothing is left as LiteLLM made it:
matching its ids against the tee's is a slice compare, where setting them on a pydantic object
cost ~15 us a chunk (profile_proxy.py: 4 of the plugin's 9 ms of loop CPU per 256-token stream).

LiteLLM (1.108+) writes a plain one-choice text chunk with a fast serializer that knows only
OpenAI's fields, so ids set on such a chunk would never reach the client. It takes the full
serializer (`model_dump_json`, which keeps them) when the choice has `enhancements`; the choice
is given an empty one as a plain instance attribute, outside pydantic's fields, so nothing of it
appears in the JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from ..capture.fields import field, field_view
from ..capture.stream import StreamAccumulator


def asked_for_token_ids(client_request: Optional[Mapping[str, Any]]) -> bool:
    """Did the client's own body ask for vLLM's token ids?"""
    if not client_request:
        return False
    extra = client_request.get("extra_body")
    return bool(client_request.get("return_token_ids")
                or (isinstance(extra, Mapping) and extra.get("return_token_ids")))


def _set(obj: Any, key: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[key] = value
        return
    extra = getattr(obj, "__pydantic_extra__", None)
    if extra is not None and key in extra:  # LiteLLM's choices: pydantic's __setattr__ is slow
        extra[key] = value
        return
    try:
        setattr(obj, key, value)
    except Exception:  # noqa: BLE001 - a model that refuses unknown attributes
        extra = getattr(obj, "__pydantic_extra__", None)
        if extra is not None:
            extra[key] = value


class ClientTokenIds:
    """Per stream: gives each outgoing chunk the ids LiteLLM dropped before it (module docstring)."""

    __slots__ = ("acc", "given", "prompt_given")

    def __init__(self, acc: StreamAccumulator) -> None:
        self.acc = acc
        self.given: dict[int, int] = {}  # choice index -> ids already handed to the client
        self.prompt_given = False

    def annotate(self, chunk: Any) -> None:
        """Per served chunk, in the loop's hot path: one read of each choice's fields
        (`field_view`, then dict lookups) and the usual chunk, whose one id is the next the
        upstream sent, decided inline. Measured in the proxy, each Python call more per chunk
        counts: ~10 us a chunk with a helper per field, cold in the cache after LiteLLM's work."""
        gave_prompt = not self.prompt_given and self.acc.prompt_token_ids is not None
        if gave_prompt:
            _set(chunk, "prompt_token_ids", list(self.acc.prompt_token_ids))
            self.prompt_given = True
        given = self.given
        for choice in field(chunk, "choices") or ():
            view = field_view(choice)
            index = view.get("index") or 0
            ids = self.acc.token_ids_of(index)
            if ids is None:
                continue
            start = given.get(index, 0)
            own = view.get("token_ids")
            finish = view.get("finish_reason") is not None
            if not finish and own and len(own) == 1 and start < len(ids) and ids[start] == own[0]:
                given[index] = start + 1  # the usual chunk: nothing dropped before it
            else:
                end = given[index] = next_end(ids, start, own, finish)
                if end == start and not own and not gave_prompt:
                    continue  # nothing of its own, nothing dropped before it
                if not (end - start == len(own or ()) and _same(ids, start, own)):
                    _set(choice, "token_ids", ids[start:end].tolist())
            if view.get("logprobs") is None and not isinstance(choice, dict):
                _full_serializer(choice)


def next_end(ids: Sequence[int], start: int, own: Optional[Sequence[int]], finish: bool) -> int:
    """Where the ids handed with this chunk end in the upstream's sequence `ids`, the client
    having had `ids[:start]`: after the chunk's own ids (`own`, found at or after `start`: what
    lies between came in chunks LiteLLM dropped), or at the end of what was read for a finish
    chunk, whose EOS id LiteLLM drops. A chunk with none of its own waits for the next. Ids
    not found among those read (never seen) hand everything read."""
    if finish:
        return len(ids)
    if not own:
        return start
    for at in range(start, len(ids) - len(own) + 1):
        if _same(ids, at, own):
            return at + len(own)
    return len(ids)


def _same(ids: Sequence[int], at: int, own: Optional[Sequence[int]]) -> bool:
    """`ids[at:at + len(own)] == own`; cheap for the usual one id."""
    if not own:
        return True
    if len(own) == 1:
        return at < len(ids) and ids[at] == own[0]
    return list(ids[at:at + len(own)]) == list(own)


def _full_serializer(choice: Any) -> None:
    """Steer LiteLLM past its fast chunk serializer (module docstring); never in the JSON."""
    try:
        object.__setattr__(choice, "enhancements", ())
    except Exception:  # noqa: BLE001 - a LiteLLM object without a __dict__: nothing to steer
        pass
