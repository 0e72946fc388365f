"""Token ids for a streaming client that asked for them, as the upstream sent them.

LiteLLM's chunk parsing loses some of vLLM's ids on the way to the client: the role chunk's
`prompt_token_ids`, whole `"delta": {}` chunks (control and tool-call tokens) and the finish
chunk's EOS id. The tee (`upstream_tap`) has every one of them, parsed from the upstream's
bytes before LiteLLM yields the chunk they came in. So for a client that asked
(`return_token_ids`), each chunk it receives carries the ids the upstream sent since the
previous chunk it received: concatenated, they are the upstream's sequence exactly (a chunk may
carry the ids of a chunk LiteLLM dropped), and the first chunk carries `prompt_token_ids`.
Clients that did not ask get none of this (the strip rules stay).

LiteLLM (1.108+) writes a plain one-choice text chunk with a fast serializer that knows only
OpenAI's fields, so ids set on such a chunk would never reach the client. It takes the full
serializer (`model_dump_json`, which keeps them) when the choice has `enhancements`; the choice
is given an empty one as a plain instance attribute, outside pydantic's fields, so nothing of it
appears in the JSON.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ..capture.fields import field
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
    try:
        setattr(obj, key, value)
    except Exception:  # noqa: BLE001 - a model that refuses unknown attributes
        extra = getattr(obj, "__pydantic_extra__", None)
        if extra is not None:
            extra[key] = value


class ClientTokenIds:
    """Per stream: hands each outgoing chunk the ids the tee has seen since the last one."""

    __slots__ = ("acc", "given", "prompt_given")

    def __init__(self, acc: StreamAccumulator) -> None:
        self.acc = acc
        self.given: dict[int, int] = {}  # choice index -> ids already handed to the client
        self.prompt_given = False

    def annotate(self, chunk: Any) -> None:
        if not self.prompt_given and self.acc.prompt_token_ids is not None:
            _set(chunk, "prompt_token_ids", list(self.acc.prompt_token_ids))
            self.prompt_given = True
        for choice in field(chunk, "choices") or ():
            index = field(choice, "index") or 0
            ids = self.acc.token_ids_of(index)
            if ids is None:
                continue
            start, end = self.given.get(index, 0), len(ids)
            _set(choice, "token_ids", ids[start:end].tolist())
            self.given[index] = end
            if not isinstance(choice, dict):
                _full_serializer(choice)


def _full_serializer(choice: Any) -> None:
    """Steer LiteLLM past its fast chunk serializer (module docstring); never in the JSON."""
    try:
        object.__setattr__(choice, "enhancements", ())
    except Exception:  # noqa: BLE001 - a LiteLLM object without a __dict__: nothing to steer
        pass
