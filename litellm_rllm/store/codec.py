"""Trace <-> storage row, shared by every backend.

A trace is stored as three values so the big numeric arrays never pass through JSON:

* ``doc``: the trace as compact JSON *without* ``seq`` (a column) and without the per-token
  data below. It is the source of truth for every other field.
* ``arrays``: one binary blob with the token ids and logprobs, packed exactly like
  ``trace.pack_ids`` / ``trace.pack_floats`` (little-endian int32 / float32), or ``None``
  when the trace has none of them. Layout (format 1)::

      u8 format=1 | u32 n | n x i32 element counts (-1 = null) | the n arrays, back to back

  The arrays are, in order: ``prompt_token_ids``, then per choice ``token_ids`` (i32),
  ``prompt_token_ids`` (i32), ``logprobs`` (f32). Not compressed: packed ids and float32
  logprobs are near-incompressible and zlib would cost more CPU than the write itself.
* ``detail``: the per-token strings and alternatives (``choices[].tokens`` and
  ``choices[].top_logprobs``), zlib-compressed because they are large and repetitive
  (typically 5 alternatives per token), or ``None``. Columnar inside (format 1)::

      zlib( u8 format=1 | u32 header_len | JSON header | K x f32 logprobs | [K x i32 token_ids] )

  The JSON header has, per choice, ``tokens`` and the alternatives count per position (``n``),
  and, for all K alternatives in order, their ``t`` token strings, ``i`` token ids
  (``"packed"`` = stored as i32 after the floats; ``null`` = all null; else a JSON list) and
  ``x`` extra fields (``null`` when no alternative has any).

Decoding gives back exactly what was written, except that logprob floats come back as their
float32 values (what vLLM computed in the first place).
"""

from __future__ import annotations

import struct
import sys
from array import array
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional, Sequence, Union

from pydantic import BaseModel, TypeAdapter

from litellm_rllm import sessions as _sessions
from litellm_rllm.trace import TopLogprob, Trace, session_key_of, unpack_floats, unpack_ids

ARRAYS_FORMAT = 1
DETAIL_FORMAT = 1
_ZLIB_LEVEL = 1  # level 6 is 2.4x slower for 6% smaller top_logprobs

_HEAD = struct.Struct("<BI")
_CHOICE_ARRAYS = ("token_ids", "prompt_token_ids", "logprobs")
_CHOICE_KINDS = ("i", "i", "f")
_DETAIL_FIELDS = ("tokens", "top_logprobs")
_DOC_EXCLUDE: dict[str, Any] = {
    "seq": True,
    "order": True,
    "prompt_token_ids": True,
    "choices": {"__all__": set(_CHOICE_ARRAYS) | set(_DETAIL_FIELDS)},
}
_TOP_ADAPTER = TypeAdapter(list[list[TopLogprob]])
_TOP_HEADER_ADAPTER = TypeAdapter(dict[str, Any])
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)


class CorruptTraceError(ValueError):
    """A stored row does not decode (truncated blob, unknown format, count mismatch)."""


class TraceEncodeError(ValueError):
    """Some traces cannot be encoded (e.g. a non-JSON value in metadata).

    Raised by ``TraceStore.write`` before anything is written; ``errors`` maps each bad
    trace id to its exception so a caller can drop those and write the rest.
    """

    def __init__(self, errors: dict[str, BaseException]) -> None:
        self.errors = errors
        first_id, first_err = next(iter(errors.items()))
        super().__init__(
            f"{len(errors)} trace(s) cannot be encoded, e.g. {first_id!r}: {first_err!r}"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # crosses the store process's pipe
        return (type(self), (self.errors,))


@dataclass(slots=True)
class EncodedTrace:
    """One trace as a backend stores it: index columns plus the three payload values."""

    trace_id: str
    session_key: str
    created_us: int
    status: str
    model: Optional[str]
    doc: str
    arrays: Optional[bytes]
    detail: Optional[bytes]
    uids: tuple[str, ...]
    cached_tokens: Optional[int] = None
    base_id: Optional[str] = None  # compacted against this trace id (store/compact.py); None: whole


# ------------------------------------------------------------------------------- helpers


_STRUCTS: dict[tuple[str, int], struct.Struct] = {}


def _struct(kind: str, n: int) -> struct.Struct:
    """Compiled ``<{n}{kind}``; the cache is small and reset when full (lengths vary a lot)."""
    key = (kind, n)
    found = _STRUCTS.get(key)
    if found is None:
        if len(_STRUCTS) >= 4096:
            _STRUCTS.clear()
        found = _STRUCTS[key] = struct.Struct(f"<{n}{kind}")
    return found


def _pack(kind: str, values: Sequence[Any]) -> bytes:
    """Same bytes as ``trace.pack_ids`` / ``pack_floats``; struct is ~4x faster than array."""
    return _struct(kind, len(values)).pack(*values)


def to_utc_micros(value: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - _EPOCH) // _MICRO


def from_utc_micros(micros: int) -> datetime:
    return _EPOCH + micros * _MICRO


def trace_uids(trace: Trace) -> tuple[str, ...]:
    """Every key the trace can be looked up by: its session id, all its session uids and its
    session name, in its caller's team's namespace (`sessions.lookup_keys`)."""
    return trace.lookup_keys()


def uids_of(session_id: Optional[str], session_uids: Sequence[str], session_name: Optional[str] = None,
            team: Optional[str] = None) -> tuple[str, ...]:
    return _sessions.lookup_keys(session_id, session_uids, session_name, team)


# ------------------------------------------------------------------------------- encode


def encode(trace: Trace) -> EncodedTrace:
    return EncodedTrace(
        trace_id=trace.trace_id,
        session_key=trace.session_key(),
        created_us=to_utc_micros(trace.created_at),
        status=trace.status,
        model=trace.model,
        doc=trace.model_dump_json(exclude=_DOC_EXCLUDE),
        arrays=encode_arrays(trace),
        detail=encode_detail(trace),
        uids=trace_uids(trace),
        cached_tokens=trace.cached_tokens,
    )


class _DocIndex(BaseModel):
    """The fields of a stored doc that the index columns come from (the rest is not read)."""

    trace_id: str
    session_id: Optional[str] = None
    session_uids: list[str] = []
    metadata: dict[str, Any] = {}  # its session_name is a lookup key
    caller: Optional[dict[str, Any]] = None  # its team_id namespaces the keys
    status: str = "ok"
    model: Optional[str] = None
    created_at: datetime
    cached_tokens: Optional[int] = None


def from_stored(doc: Union[str, bytes], arrays: Optional[bytes], detail: Optional[bytes]) -> EncodedTrace:
    """An encoded trace from its three stored values (a spool record), the index columns read
    back from the doc; the values themselves are kept byte for byte, never decoded."""
    head = _DocIndex.model_validate_json(doc)
    return EncodedTrace(
        trace_id=head.trace_id,
        session_key=session_key_of(head.session_id, head.session_uids, _sessions.name_of(head.metadata),
                                   _sessions.team_of(head.caller)),
        created_us=to_utc_micros(head.created_at),
        status=head.status,
        model=head.model,
        doc=doc if isinstance(doc, str) else doc.decode("utf-8"),
        arrays=arrays,
        detail=detail,
        uids=uids_of(head.session_id, head.session_uids, _sessions.name_of(head.metadata),
                     _sessions.team_of(head.caller)),
        cached_tokens=head.cached_tokens,
    )


def encode_all(traces: Sequence[Union[Trace, EncodedTrace]]) -> list[EncodedTrace]:
    """``encode`` each (one already encoded is taken as it is); raises ``TraceEncodeError``
    naming every trace that cannot be encoded."""
    out: list[EncodedTrace] = []
    errors: dict[str, BaseException] = {}
    for trace in traces:
        try:
            out.append(trace if isinstance(trace, EncodedTrace) else encode(trace))
        except Exception as exc:  # noqa: BLE001 - reported per trace
            errors[getattr(trace, "trace_id", repr(trace)[:80])] = exc
    if errors:
        raise TraceEncodeError(errors)
    return out


def encode_arrays(trace: Trace) -> Optional[bytes]:
    values: list[Optional[Sequence[Any]]] = [trace.prompt_token_ids]
    kinds = ["i"]
    for choice in trace.choices:
        values.append(choice.token_ids)
        values.append(choice.prompt_token_ids)
        values.append(choice.logprobs)
        kinds.extend(_CHOICE_KINDS)
    if all(v is None for v in values):
        return None
    counts = [-1 if v is None else len(v) for v in values]
    parts = [_HEAD.pack(ARRAYS_FORMAT, len(values)), _pack("i", counts)]
    for kind, v in zip(kinds, values):
        if v:
            parts.append(_pack(kind, v))
    return b"".join(parts)


def encode_detail(trace: Trace) -> Optional[bytes]:
    columns = [c.top_columns() for c in trace.choices]
    if all(c.tokens is None and cols is None for c, cols in zip(trace.choices, columns)):
        return None
    per_choice: list[dict[str, Any]] = []
    tokens: list[Optional[str]] = []
    logprob_parts: list[bytes] = []
    alts: list[TopLogprob] = []  # only for choices that hold TopLogprob objects (ids, extras)
    for choice, cols in zip(trace.choices, columns):
        entry: dict[str, Any] = {}
        if choice.tokens is not None:
            entry["tokens"] = choice.tokens
        if cols is not None:
            entry["n"] = list(cols.counts)
            tokens.extend(cols.tokens)
            logprob_parts.append(_floats(cols.logprobs))
            if choice.top_logprobs is not None:
                for pos in choice.top_logprobs:
                    alts.extend(pos)
        per_choice.append(entry)
    # Token ids and extra fields of alternatives exist only on TopLogprob objects (a reader's
    # edits, or a provider that sends them); columns from capture carry neither.
    alt_ids = [alt.token_id for alt in alts] if len(alts) == len(tokens) else [None] * len(tokens)
    extras = [alt.__pydantic_extra__ or None for alt in alts] if len(alts) == len(tokens) else [None]
    missing_ids = alt_ids.count(None)
    tail = b""
    ids_mode: Any = alt_ids  # mixed: a JSON list with nulls
    if missing_ids == len(alt_ids):
        ids_mode = None
    elif missing_ids == 0:
        ids_mode = "packed"
        tail = _pack("i", alt_ids)
    header = {
        "choices": per_choice,
        "t": tokens,
        "i": ids_mode,
        "x": None if extras.count(None) == len(extras) else extras,
    }
    # Serialise through pydantic-core: it handles the extras' types like the doc does.
    head = _TOP_HEADER_ADAPTER.dump_json(header)
    body = b"".join((_HEAD.pack(DETAIL_FORMAT, len(head)), head, *logprob_parts, tail))
    return zlib.compress(body, _ZLIB_LEVEL)


def _floats(values: Any) -> bytes:
    """float32 little-endian, straight from an `array('f')` when capture built one."""
    if isinstance(values, array) and values.typecode == "f" and sys.byteorder == "little":
        return values.tobytes()
    return _pack("f", values)


# ------------------------------------------------------------------------------- decode


def decode(
    doc: Union[str, bytes],
    arrays: Optional[bytes],
    detail: Optional[bytes],
    seq: Optional[int],
) -> Trace:
    """Rebuild the Trace. Arrays are set after validation: they are ours, re-checking
    1,000-element lists would cost more than the read itself."""
    trace = Trace.model_validate_json(doc)
    trace.seq = seq
    if arrays is not None:
        _decode_arrays(trace, arrays)
    if detail is not None:
        _decode_detail(trace, detail)
    return trace


def _decode_arrays(trace: Trace, blob: bytes) -> None:
    view = memoryview(blob)
    try:
        fmt, n = _HEAD.unpack_from(view, 0)
        if fmt != ARRAYS_FORMAT:
            raise CorruptTraceError(f"trace {trace.trace_id!r}: unknown arrays format {fmt}")
        if n != 1 + 3 * len(trace.choices):
            raise CorruptTraceError(
                f"trace {trace.trace_id!r}: {n} arrays stored for {len(trace.choices)} choices"
            )
        counts = _struct("i", n).unpack_from(view, _HEAD.size)
    except struct.error as exc:
        raise CorruptTraceError(f"trace {trace.trace_id!r}: truncated arrays blob") from exc
    offset = _HEAD.size + 4 * n
    out: list[Optional[list[Any]]] = []
    for count in counts:
        if count < 0:
            out.append(None)
            continue
        end = offset + 4 * count
        if end > len(view):
            raise CorruptTraceError(f"trace {trace.trace_id!r}: truncated arrays blob")
        out.append(view[offset:end])  # type: ignore[arg-type]
        offset = end
    trace.prompt_token_ids = unpack_ids(out[0])  # type: ignore[arg-type]
    for k, choice in enumerate(trace.choices):
        base = 1 + 3 * k
        choice.token_ids = unpack_ids(out[base])  # type: ignore[arg-type]
        choice.prompt_token_ids = unpack_ids(out[base + 1])  # type: ignore[arg-type]
        choice.logprobs = unpack_floats(out[base + 2])  # type: ignore[arg-type]


def _decode_detail(trace: Trace, blob: bytes) -> None:
    try:
        raw = zlib.decompress(blob)
        fmt, head_len = _HEAD.unpack_from(raw, 0)
    except (zlib.error, struct.error) as exc:
        raise CorruptTraceError(f"trace {trace.trace_id!r}: bad detail blob") from exc
    if fmt != DETAIL_FORMAT:
        raise CorruptTraceError(f"trace {trace.trace_id!r}: unknown detail format {fmt}")
    start = _HEAD.size
    header = _TOP_HEADER_ADAPTER.validate_json(raw[start : start + head_len])
    tokens: list[Optional[str]] = header["t"]
    k = len(tokens)
    floats_at = start + head_len
    logprobs = unpack_floats(raw[floats_at : floats_at + 4 * k]) or []
    ids_mode = header["i"]
    if ids_mode is None:
        ids: list[Optional[int]] = [None] * k
    elif ids_mode == "packed":
        packed = raw[floats_at + 4 * k : floats_at + 8 * k]
        ids = unpack_ids(packed) or []  # type: ignore[assignment]
    else:
        ids = ids_mode
    extras: Optional[list[Optional[dict[str, Any]]]] = header["x"]
    if len(logprobs) != k or len(ids) != k or (extras is not None and len(extras) != k):
        raise CorruptTraceError(f"trace {trace.trace_id!r}: truncated detail blob")
    if len(header["choices"]) != len(trace.choices):
        raise CorruptTraceError(f"trace {trace.trace_id!r}: detail/choices count mismatch")
    at = 0
    for choice, entry in zip(trace.choices, header["choices"]):
        choice.tokens = entry.get("tokens")
        if "n" not in entry:
            choice.top_logprobs = None
            continue
        positions: list[list[dict[str, Any]]] = []
        for count in entry["n"]:
            pos = []
            for j in range(at, at + count):
                alt: dict[str, Any] = {
                    "token": tokens[j], "logprob": logprobs[j], "token_id": ids[j]
                }
                if extras is not None and extras[j]:
                    alt.update(extras[j])  # type: ignore[arg-type]
                pos.append(alt)
            positions.append(pos)
            at += count
        choice.top_logprobs = _TOP_ADAPTER.validate_python(positions)


__all__ = [
    "ARRAYS_FORMAT",
    "DETAIL_FORMAT",
    "CorruptTraceError",
    "EncodedTrace",
    "TraceEncodeError",
    "decode",
    "encode",
    "encode_all",
    "encode_arrays",
    "encode_detail",
    "from_stored",
    "from_utc_micros",
    "to_utc_micros",
    "trace_uids",
]
