"""Compact growing sessions: a call stores what it adds to an earlier call of its session.

Why: turn k of an agent session sends the whole history again, so a 50-turn session that
grows to 20,000 tokens stored each call whole holds its prompt ids and its messages ~25 times.
Here a row whose prompt starts with an earlier call's prompt + sampled ids (its *base*) keeps
only the ids past that prefix, and the request messages past the base's messages; reading
puts them back, exactly. Used by both backends, at the store's write level
(``TraceStore.write_encoded``), on the encoded rows (``codec.EncodedTrace``).

Stored form of a compacted row (the ``base_id`` column names its base's ``trace_id``):

* ``doc`` carries ``"_compact": {"base": B, "prompt_tokens": T, "choice": k, "messages": M,
  "reply": j, "request": [keys]}`` (each but ``base`` only where used): the prompt ids are the first ``T``
  ids of ``B.prompt_token_ids + B.choices[k].token_ids`` followed by the stored ones; the
  request's ``messages`` are ``B``'s first ``M`` messages followed by the stored ones (with
  ``"reply": j``, the first stored one is a null standing for ``B.choices[j].message``: the
  base's answer as the client sent it back); each
  request field in ``keys`` (stored as null, in its place) is ``B``'s, e.g. the same tool
  schemas every call. ``T`` is the common prefix of the two (an exact extension, or the kept
  part before a drift or an edit).
* ``arrays`` has format 2: format 1's layout (codec.py) whose first array holds the suffix
  only (a bare format-2 header for a trace without ids), so a reader that does not know
  compaction refuses the row instead of misreading its ids or its messages.

Nothing is guessed. A base is only a call this store object wrote and saw committed (or an
earlier row of the same batch): its ids and messages are known exactly. Message prefixes are
compared by a 256-bit digest of each message's JSON. In the write transaction a base must
still exist (PostgreSQL: ``FOR KEY SHARE``, so a concurrent delete waits or is waited for);
else the row is stored whole, as is every row whose base is unknown here (written by another
proxy, not committed yet) and every row that would save less than ``min_saving`` bytes.
Chains are at most ``max_depth`` rows long, so reading one trace alone costs at most that
many lookups. Deleting a base first re-materializes its surviving children (``relink``).

Write cost: memcmp of prompt prefixes (``bytes.startswith``), and a JSON parse of the docs of
rows that have a base; the cache holds the last few calls of the most recently written
sessions (``cache_bytes`` in all).
"""

from __future__ import annotations

import collections
import hashlib
import json
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from litellm_rllm.store.codec import ARRAYS_FORMAT, CorruptTraceError, EncodedTrace, decode
from litellm_rllm.trace import Trace

try:  # comes with LiteLLM's proxy extras; the stdlib does the same, slower
    import orjson

    def _loads(text: Union[str, bytes]) -> Any:
        return orjson.loads(text)

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)

except ImportError:  # pragma: no cover - exercised where orjson is absent
    def _loads(text: Union[str, bytes]) -> Any:
        return json.loads(text)

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


COMPACT_FORMAT = 2  # arrays blob whose prompt array is a suffix (see the module docstring)
KEY = "_compact"
_TAIL = ',"' + KEY + '":'  # how the record starts, as the doc's last key
FIELD_MIN_BYTES = 64  # request fields (other than messages) at least this large are shared with a base
_HEAD = struct.Struct("<BI")
_NO_ARRAYS = _HEAD.pack(COMPACT_FORMAT, 0)  # a compacted row of a trace without ids
MAX_CHAIN = 100_000  # a read refuses longer chains than this (a corrupt cycle)

Row = Sequence[Any]  # (key, seq, doc, arrays, detail, base_id, trace_id) as the backends select it


# ------------------------------------------------------------------------------ arrays blob


def _layout(blob: bytes) -> tuple[int, list[int], int]:
    """(format, element counts, offset of the first array's data)."""
    try:
        fmt, n = _HEAD.unpack_from(blob, 0)
        counts = list(struct.unpack_from(f"<{n}i", blob, _HEAD.size))
    except struct.error as exc:
        raise CorruptTraceError("truncated arrays blob") from exc
    return fmt, counts, _HEAD.size + 4 * n


def _arrays_of(blob: Optional[bytes]) -> tuple[Optional[bytes], list[Optional[bytes]]]:
    """A whole (format 1) blob's prompt ids and each choice's sampled ids, as int32 bytes."""
    if blob is None:
        return None, []
    fmt, counts, at = _layout(blob)
    if fmt != ARRAYS_FORMAT:
        raise CorruptTraceError(f"unknown arrays format {fmt}")
    parts: list[Optional[bytes]] = []
    for count in counts:
        if count < 0:
            parts.append(None)
            continue
        parts.append(blob[at: at + 4 * count])
        at += 4 * count
    return parts[0], [parts[1 + 3 * k] for k in range((len(parts) - 1) // 3)]


def _with_prompt(blob: bytes, fmt: int, keep_from: int, prefix: bytes = b"") -> bytes:
    """``blob`` with format ``fmt`` and its prompt array replaced by ``prefix`` + its ids from
    token ``keep_from`` on (compacting: no prefix; expanding: the base's prefix)."""
    _, counts, at = _layout(blob)
    count = counts[0]
    if count < keep_from:
        raise CorruptTraceError("arrays blob shorter than its compacted prompt")
    counts[0] = len(prefix) // 4 + count - keep_from
    head = _HEAD.pack(fmt, len(counts)) + struct.pack(f"<{len(counts)}i", *counts)
    return b"".join((head, prefix, blob[at + 4 * keep_from:]))


def common_prefix(a: bytes, b: bytes, a_start: int = 0) -> int:
    """Equal leading int32 tokens of ``a[a_start:]`` and ``b`` (``a_start`` in bytes):
    bisection over memcmp (``bytes.startswith``), no copies."""
    n = min(len(a) - a_start, len(b)) // 4
    if n <= 0:
        return 0
    view = memoryview(b)
    if a.startswith(view[: 4 * n], a_start):
        return n
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a.startswith(view[: 4 * mid], a_start):
            lo = mid
        else:
            hi = mid
    return lo


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _messages(doc: Any) -> Optional[list[Any]]:
    request = doc.get("request") if isinstance(doc, dict) else None
    messages = request.get("messages") if isinstance(request, dict) else None
    return messages if isinstance(messages, list) else None


# ------------------------------------------------------------------------------ write side


@dataclass
class _Known:
    """A row of this store as a base candidate: its whole ids, and digests of its request's
    messages and other large fields (computed from ``doc`` the first time a later row asks)."""

    trace_id: str
    prompt: Optional[bytes]
    completions: list[Optional[bytes]]
    doc: Optional[str]
    depth: int = 0  # rows between this one and a whole row (0: stored whole)
    digests: Optional[list[bytes]] = None  # one per request message
    fields: Optional[dict[str, bytes]] = None  # request key -> digest, for large values
    replies: Optional[list[Optional[bytes]]] = None  # per choice, its message's JSON
    charged: int = 0  # what the cache counted for it (its size changes once the doc is parsed)

    @property
    def nbytes(self) -> int:
        n = len(self.prompt or b"") + sum(len(c or b"") for c in self.completions)
        n += sum(len(r or b"") for r in self.replies or ())
        return n + len(self.doc or "") + 40 * (len(self.digests or ()) + len(self.fields or ())) + 200

    def request_digests(self) -> tuple[list[bytes], dict[str, bytes], list[Optional[bytes]]]:
        """Digests of the request's messages and of its other large fields; each choice's
        reply (its message) as JSON."""
        if self.digests is None or self.fields is None or self.replies is None:
            try:
                self.learn(_loads(self.doc or "{}"))
            except (ValueError, TypeError, AttributeError):
                self.digests, self.fields, self.replies = [], {}, []
            self.doc = None
        return self.digests, self.fields, self.replies  # type: ignore[return-value]

    def learn(self, doc: Any, messages: Optional[list[tuple[bytes, bytes]]] = None) -> None:
        """Take the digests from a parsed doc (``messages``: (JSON, digest) of each message,
        where the caller has them already)."""
        if messages is None:
            messages = [(data, _digest(data)) for data in map(_dumps, _messages(doc) or [])]
        fields: dict[str, bytes] = {}
        request = doc.get("request") if isinstance(doc, dict) else None
        for key, value in (request.items() if isinstance(request, dict) else ()):
            data = _dumps(value) if key != "messages" and isinstance(value, (list, dict)) else b""
            if len(data) >= FIELD_MIN_BYTES:
                fields[key] = _digest(data)
        choices = doc.get("choices") if isinstance(doc, dict) else None
        self.digests = [d for _, d in messages]
        self.fields = fields
        self.replies = [_reply_json(c) for c in choices or []]
        self.doc = None


@dataclass
class Plan:
    """What ``Compactor.plan`` proposes for one input row."""

    whole: EncodedTrace
    known: _Known
    compact: Optional[EncodedTrace] = None
    base: Optional[_Known] = None
    base_index: Optional[int] = None  # the base is this earlier row of the same batch
    saving: int = 0


@dataclass
class Compactor:
    """Per store object: the write side (module docstring). Thread-safe."""

    cache_bytes: int = 32 << 20
    per_session: int = 2
    max_depth: int = 64
    min_saving: int = 512
    _sessions: "collections.OrderedDict[str, list[_Known]]" = field(default_factory=collections.OrderedDict)
    _bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, rows: Sequence[EncodedTrace]) -> list[Plan]:
        """A whole and (where it pays) a compacted form of each row."""
        plans: list[Plan] = []
        batch: dict[str, list[tuple[int, _Known]]] = {}
        with self._lock:
            cached = {key: list(self._sessions.get(key, ())) for key in {r.session_key for r in rows}}
        for k, enc in enumerate(rows):
            try:
                prompt, completions = _arrays_of(enc.arrays)
            except CorruptTraceError:
                prompt, completions = None, []
            known = _Known(enc.trace_id, prompt, completions, enc.doc)
            plan = Plan(enc, known)
            candidates = [(None, c) for c in cached.get(enc.session_key, ())]
            candidates += batch.get(enc.session_key, [])
            if candidates and (prompt is not None or enc.session_key):
                try:
                    self._compact(plan, candidates)
                except (ValueError, TypeError, CorruptTraceError):
                    plan.compact, plan.base, plan.base_index = None, None, None
            known.depth = plan.base.depth + 1 if plan.compact is not None and plan.base else 0
            plans.append(plan)
            batch.setdefault(enc.session_key, []).append((k, known))
        return plans

    def _compact(self, plan: Plan, candidates: list[tuple[Optional[int], _Known]]) -> None:
        enc, known = plan.whole, plan.known
        prompt = known.prompt
        best: Optional[tuple[int, int, Optional[int], _Known, Optional[int]]] = None  # tokens, order, choice, base, index
        for order in range(len(candidates) - 1, -1, -1):  # latest first: usually the one
            index, cand = candidates[order]
            if cand.depth + 1 > self.max_depth or cand.trace_id == enc.trace_id:
                continue
            tokens, choice, whole = 0, None, False
            if prompt is not None and cand.prompt is not None:
                tokens = common_prefix(prompt, cand.prompt)
                whole = 4 * tokens == len(prompt)
                if 4 * tokens == len(cand.prompt) and not whole:  # all of it kept: on into a choice
                    reach = tokens
                    for c, ids in enumerate(cand.completions):
                        more = common_prefix(prompt, ids, 4 * tokens) if ids else 0
                        if tokens + more > reach:
                            reach, choice = tokens + more, c
                            whole = 4 * more == len(ids)  # type: ignore[arg-type]
                    tokens = reach
            if best is None or tokens > best[0]:
                best = (tokens, order, choice, cand, index)
            if whole:  # this prompt, or all of the candidate's prompt + a sampled choice: take it
                break
        if best is None:
            return
        tokens, _, choice, base, index = best
        if not enc.doc.endswith("}"):
            return
        doc = _loads(enc.doc)
        if not isinstance(doc, dict) or KEY in doc:
            return
        own = _messages(doc)
        mine = [(data, _digest(data)) for data in map(_dumps, own or [])]
        known.learn(doc, mine)  # this row's digests, for the rows that will extend it
        count, saving, same, reply = 0, 4 * tokens, [], None
        if enc.session_key and isinstance(doc.get("request"), dict):
            base_messages, base_fields, base_replies = base.request_digests()
            for (data, digest), theirs in zip(mine, base_messages):
                if digest != theirs:
                    break
                count += 1
                saving += len(data)
            if count < len(mine) and count == len(base_messages):
                # the first new message is the base's reply as the client sent it back
                data = mine[count][0]
                for k in ([choice] if choice is not None else []) + list(range(len(base_replies))):
                    if k < len(base_replies) and base_replies[k] == data:
                        reply = k
                        saving += len(data)
                        break
            for key, value in doc["request"].items():  # e.g. the same tool schemas every call
                digest = base_fields.get(key) if key != "messages" else None
                if digest is not None and digest == (known.fields or {}).get(key):
                    same.append(key)
                    saving += FIELD_MIN_BYTES  # at least
        if saving < self.min_saving:
            return
        meta: dict[str, Any] = {"base": base.trace_id}
        # always format 2 (a bare header for a row without ids): a reader that does not know
        # compaction fails on the row instead of reading truncated messages
        arrays = _with_prompt(enc.arrays, COMPACT_FORMAT, tokens) if enc.arrays is not None else _NO_ARRAYS
        if tokens:
            meta["prompt_tokens"] = tokens
            if choice is not None:
                meta["choice"] = choice
        if count or reply is not None:
            meta["messages"] = count
            doc["request"]["messages"] = own[count:]  # type: ignore[index]
        if reply is not None:
            meta["reply"] = reply
            doc["request"]["messages"][0] = None
        if same:
            meta["request"] = same
            for key in same:
                doc["request"][key] = None  # the key keeps its place: the request reads back in order
        if count or reply is not None or same:
            doc[KEY] = meta  # last: a reader finds it at the end (Rebuilder.whole)
            text = _dumps(doc).decode("utf-8")
        else:  # ids only: the doc as it was, plus the record
            text = enc.doc[:-1] + _TAIL + _dumps(meta).decode("utf-8") + "}"
        plan.compact = EncodedTrace(enc.trace_id, enc.session_key, enc.created_us, enc.status, enc.model,
                                    text, arrays, enc.detail, enc.uids, cached_tokens=enc.cached_tokens,
                                    base_id=base.trace_id)
        plan.base, plan.base_index, plan.saving = base, index, saving

    def choose(self, plans: Sequence[Plan], fresh: Sequence[int],
               existing: Callable[[list[str]], set[str]]) -> list[EncodedTrace]:
        """The rows to insert for the ``fresh`` inputs (those not stored yet), in order: the
        compacted form where its base is a fresh row before it in this batch, or a row stored
        earlier that ``existing`` (run in the write transaction) still finds; else whole.
        Updates each plan so ``remember`` knows what was stored."""
        fresh_set = set(fresh)
        ask = sorted({p.base.trace_id for k in fresh for p in (plans[k],)
                      if p.compact is not None and p.base is not None and p.base_index is None})
        found = existing(ask) if ask else set()
        out = []
        for k in fresh:
            plan = plans[k]
            ok = plan.compact is not None and plan.base is not None and (
                plan.base.trace_id in found if plan.base_index is None else plan.base_index in fresh_set)
            if not ok:
                plan.compact = None
            out.append(plan.compact if plan.compact is not None else plan.whole)
        return out

    def remember(self, plans: Sequence[Plan], inserted: Iterable[int]) -> None:
        """After COMMIT: the inserted rows become base candidates for later writes."""
        with self._lock:
            for k in inserted:
                plan = plans[k]
                known = plan.known
                known.depth = plan.base.depth + 1 if plan.compact is not None and plan.base is not None else 0
                if known.prompt is None and not plan.whole.session_key:
                    continue  # nothing a later call could share
                key = plan.whole.session_key
                entries = self._sessions.pop(key, [])
                entries.append(known)
                known.charged = known.nbytes
                self._bytes += known.charged
                while len(entries) > self.per_session:
                    self._bytes -= entries.pop(0).charged
                self._sessions[key] = entries
            while self._bytes > self.cache_bytes and self._sessions:
                _, entries = self._sessions.popitem(last=False)
                self._bytes -= sum(e.charged for e in entries)

    def forget(self) -> None:
        """Drop every candidate (after a delete: the store checks anyway, this saves the work)."""
        with self._lock:
            self._sessions.clear()
            self._bytes = 0


# ------------------------------------------------------------------------------ read side


class _Parent:
    """A row read back whole, as a base: its ids and request, worked out when a child asks."""

    __slots__ = ("doc", "arrays", "_obj", "_ids")

    def __init__(self, doc: Any, arrays: Optional[bytes], obj: Any = None) -> None:
        self.doc, self.arrays, self._obj = doc, arrays, obj
        self._ids: Optional[tuple[Optional[bytes], list[Optional[bytes]]]] = None

    def obj(self) -> Any:
        if self._obj is None:
            self._obj = _loads(self.doc)
        return self._obj

    @property
    def request(self) -> Any:
        obj = self.obj()
        return obj.get("request") if isinstance(obj, dict) else None

    @property
    def messages(self) -> Optional[list[Any]]:
        return _messages(self.obj())

    @property
    def replies(self) -> list[Any]:
        return _replies(self.obj())

    def start(self, choice: Optional[int]) -> bytes:
        """Prompt + the sampled ids of ``choice``: what a continuing prompt starts with."""
        if self._ids is None and self.arrays is not None and choice in (None, 0):
            fmt, counts, at = _layout(self.arrays)  # choice 0's ids follow the prompt's in the blob
            if fmt == ARRAYS_FORMAT and counts[0] >= 0:
                more = max(counts[1], 0) if choice == 0 and len(counts) > 1 else 0
                return self.arrays[at: at + 4 * (counts[0] + more)]
        if self._ids is None:
            self._ids = _arrays_of(self.arrays)
        prompt, completions = self._ids
        if choice is None:
            return prompt or b""
        ids = completions[choice] if 0 <= choice < len(completions) else None
        return (prompt or b"") + (ids or b"")


class MissingBase(CorruptTraceError):
    """A compacted row's base is not in the store."""


class Rebuilder:
    """Reads rows back whole; one per read (a session read, a ``get``), since rows of one
    session usually name the row just before them as base. ``fetch(trace_ids)`` returns rows
    (the backends' 8-column form, ``(id, order_us, seq, doc, arrays, detail, base_id, trace_id)``)
    by ``trace_id``."""

    def __init__(self, fetch: Callable[[list[str]], Sequence[Row]], cache_rows: int = 16) -> None:
        self._fetch = fetch
        self._cache_rows = cache_rows
        self._raw: "collections.OrderedDict[str, tuple[Any, Optional[bytes], Optional[str]]]" = collections.OrderedDict()
        self._parents: "collections.OrderedDict[str, _Parent]" = collections.OrderedDict()

    def decode(self, row: Row) -> Trace:
        """The row's trace, whole, with ``order`` (the row's session-order key) set."""
        trace = self._decode(row)
        trace.order = None if len(row) < 7 or row[-7] is None else int(row[-7])
        return trace

    def _decode(self, row: Row) -> Trace:
        seq, doc, arrays, detail, base_id, trace_id = row[-6:]
        arrays, detail = _as_bytes(arrays), _as_bytes(detail)
        seq = None if seq is None else int(seq)
        if base_id is None:
            self._keep(self._raw, trace_id, (doc, arrays, None))
            return decode(doc, arrays, detail, seq)
        try:
            whole_doc, whole_arrays = self.whole(trace_id, doc, arrays, base_id)
        except MissingBase:
            # a delete may have re-materialized this row since it was read: read it again
            fresh = self._fetch([trace_id])
            if not fresh or fresh[0][-2] == base_id:
                raise
            return self._decode(fresh[0])
        return decode(whole_doc, whole_arrays, detail, seq)

    def whole(self, trace_id: str, doc: Any, arrays: Optional[bytes], base_id: str) -> tuple[Any, Optional[bytes]]:
        """A compacted row's doc and arrays as a whole row would store them."""
        base = self._parent(base_id)
        text = doc if isinstance(doc, str) else bytes(doc).decode("utf-8")
        at = text.rfind(_TAIL)  # the compaction record is the doc's last key (written so)
        meta = _loads(text[at + len(_TAIL):-1]) if at > 0 and text.endswith("}") else None
        if not isinstance(meta, dict) or meta.get("base") != base_id:
            raise CorruptTraceError(f"trace {trace_id!r}: base {base_id!r} does not match its doc")
        obj = None
        if meta.keys() <= {"base", "prompt_tokens", "choice"}:
            whole_doc: Any = text[:at] + "}"  # ids only: the rest of the doc is whole already
        else:
            obj = _loads(text)
            del obj[KEY]
            self._restore_request(trace_id, obj, meta, base, base_id)
            whole_doc = _dumps(obj)
        tokens = int(meta.get("prompt_tokens") or 0)
        fmt = _layout(arrays)[0] if arrays is not None else None
        if fmt != COMPACT_FORMAT:
            raise CorruptTraceError(f"trace {trace_id!r}: arrays format {fmt} in a compacted row")
        if arrays == _NO_ARRAYS:
            if tokens:
                raise CorruptTraceError(f"trace {trace_id!r}: compacted prompt without arrays")
            arrays = None
        else:
            prefix = base.start(meta.get("choice"))[: 4 * tokens] if tokens else b""
            if len(prefix) != 4 * tokens:
                raise CorruptTraceError(f"trace {trace_id!r}: base {base_id!r} has fewer than {tokens} ids")
            arrays = _with_prompt(arrays, ARRAYS_FORMAT, 0, prefix)  # type: ignore[arg-type]
        self._keep(self._parents, trace_id, _Parent(whole_doc, arrays, obj))
        return whole_doc, arrays

    @staticmethod
    def _restore_request(trace_id: str, obj: Any, meta: dict[str, Any], base: _Parent, base_id: str) -> None:
        count = int(meta.get("messages") or 0)
        if count or "reply" in meta:
            own, theirs = _messages(obj), base.messages if count else []
            if own is None or theirs is None or len(theirs) < count:
                raise CorruptTraceError(f"trace {trace_id!r}: messages of base {base_id!r} missing")
            if "reply" in meta:
                k, replies = meta["reply"], base.replies
                if not own or not isinstance(k, int) or not 0 <= k < len(replies) or replies[k] is None:
                    raise CorruptTraceError(f"trace {trace_id!r}: reply {k!r} of base {base_id!r} missing")
                own = [replies[k], *own[1:]]
            obj["request"]["messages"] = theirs[:count] + own
        for key in meta.get("request") or ():
            request = base.request
            if not isinstance(request, dict) or key not in request or key not in obj["request"]:
                raise CorruptTraceError(f"trace {trace_id!r}: request field {key!r} of base {base_id!r} missing")
            obj["request"][key] = request[key]

    def _parent(self, trace_id: str) -> _Parent:
        """The whole ids and messages of a base, fetching (and expanding) its chain as needed."""
        chain: list[tuple[str, Any, Optional[bytes], Optional[str]]] = []
        current = trace_id
        while current not in self._parents:
            raw = self._raw.get(current)
            if raw is None:
                rows = self._fetch([current])
                if not rows:
                    raise MissingBase(f"trace {current!r}, the base of a compacted row, is not in the store")
                row = rows[0]
                raw = (row[-5], _as_bytes(row[-4]), row[-2])
            chain.append((current, *raw))
            if raw[2] is None:
                break
            current = raw[2]
            if len(chain) > MAX_CHAIN:
                raise CorruptTraceError(f"trace {trace_id!r}: base chain longer than {MAX_CHAIN}")
        for tid, doc, arrays, base_id in reversed(chain):
            if base_id is None:
                self._keep(self._parents, tid, _Parent(doc, arrays))
            else:
                self.whole(tid, doc, arrays, base_id)
        return self._parents[trace_id]

    def _keep(self, cache: "collections.OrderedDict[str, Any]", key: str, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._cache_rows:
            cache.popitem(last=False)


def _reply_json(choice: Any) -> Optional[bytes]:
    message = choice.get("message") if isinstance(choice, dict) else None
    return None if message is None else _dumps(message)


def _replies(doc: Any) -> list[Any]:
    choices = doc.get("choices") if isinstance(doc, dict) else None
    return [c.get("message") if isinstance(c, dict) else None for c in choices or []]


def _as_bytes(value: Any) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return bytes(value)  # memoryview / bytearray from some drivers


__all__ = ["COMPACT_FORMAT", "Compactor", "KEY", "MissingBase", "Plan", "Rebuilder", "common_prefix"]
