"""Reading fields out of what LiteLLM and the upstreams hand us: plain dicts (the upstream's
JSON) and LiteLLM's pydantic objects (whose unknown fields sit in `__pydantic_extra__`), with
one set of helpers for both, used by capture, stripping and the end-of-call snapshot."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any


_ABSENT = object()


def field(obj: Any, key: str) -> Any:
    """`obj[key]` for a dict, else the attribute or the pydantic extra field; None if absent.

    Reads an object's `__dict__` and pydantic extras before `getattr`: LiteLLM's streaming
    choices keep every field (`index`, `delta`, `logprobs`, ...) among the extras, where a
    `getattr` goes through pydantic's Python `__getattr__` (~1.2 us, per chunk and field, and
    ~3 us to find a field absent)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    own = getattr(obj, "__dict__", None)
    if own is not None:
        value = own.get(key)
        if value is not None:
            return value
    extra = getattr(obj, "__pydantic_extra__", None)
    if extra:
        value = extra.get(key, _ABSENT)
        if value is not _ABSENT:
            return value
    if own is not None and key in own:
        return None
    if _looked_up(type(obj), key):  # properties, slots, class attributes
        return getattr(obj, key, None)
    return None


@functools.lru_cache(maxsize=1024)
def _looked_up(cls: type, key: str) -> bool:
    """Can `getattr` find `key` where `field` did not look? Not on a pydantic model unless its
    class has it or it is private (its `__getattr__` finds private attributes, and only raises
    for the rest); on other objects, always try."""
    return (key.startswith("_") or "__pydantic_fields__" not in dir(cls)
            or any(key in vars(k) for k in cls.__mro__))


def provider_field(obj: Any, key: str) -> Any:
    """A field vLLM sends that LiteLLM may have moved into `provider_specific_fields` (of the
    choice, or of its message)."""
    value = field(obj, key)
    if value is None:
        value = field(field(obj, "provider_specific_fields"), key)
    if value is None:
        value = field(field(field(obj, "message"), "provider_specific_fields"), key)
    return value


def fields_of(obj: Any) -> dict[str, Any]:
    """The top-level fields of a dict or an object (declared and extra), by reference."""
    if isinstance(obj, Mapping):
        return dict(obj)
    fields = dict(getattr(obj, "__dict__", {}) or {})
    extra = getattr(obj, "__pydantic_extra__", None)
    if extra:
        fields.update(extra)
    return fields


def field_view(obj: Any) -> Mapping[str, Any]:
    """The top-level fields of a dict or an object, to read and not to change: the dict itself,
    an object's pydantic extras when it has no other fields (LiteLLM's streaming choices keep
    all of theirs there), else a merged copy (`fields_of`). Per streamed chunk, the copy and
    the `Mapping` check are what the read cost."""
    if type(obj) is dict:
        return obj
    extra = getattr(obj, "__pydantic_extra__", None)
    if extra is not None and not getattr(obj, "__dict__", None):
        return extra
    return fields_of(obj)


def plain(obj: Any) -> Any:
    """A pydantic model / LiteLLM object as plain dicts and lists."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            return plain(dump())
        except Exception:
            pass
    if hasattr(obj, "__dict__"):
        return {k: plain(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return obj
