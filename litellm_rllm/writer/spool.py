"""Local, append-only, fsynced spool for trace batches the store could not take.

``TraceWriter`` appends a batch here when the store is down or too slow, keeps serving, and
replays the spool into the store, in order, once the store answers again. Replay is safe to
repeat: the store skips trace ids it already has, so a crash between a replayed write and the
spool's truncation makes duplicates that are not stored twice.

Files: one per process, ``DIR/spool-N.rllm``, owned through an exclusive ``flock`` held for the
process's lifetime (the kernel drops it when the process dies, even on SIGKILL). A process takes
the first free slot N, and what it finds in that file was left by a dead process: it replays that
first. Files of other free slots (a deployment that ran more workers before) are "orphans":
``orphans()`` locks each one in turn so the writer can replay and empty it. Files are never
deleted (an unlink would race with another process locking the same path); emptied ones are
truncated to zero bytes.

Record layout (little-endian)::

    b"RLS1" | u32 payload_len | u32 crc32(payload) | payload
    payload = u32 n | n x ( u32 len | doc (UTF-8 JSON) | i32 len | arrays | i32 len | detail )

``doc`` / ``arrays`` / ``detail`` are the codec's encoding (codec.py); -1 = null. A record is
written with one ``write`` and fsynced before ``append`` returns. A torn record at the end (the
process died mid-append; that batch was never acknowledged as durable) fails its length or CRC
check: it is cut off and reported when the file is next opened.

Bounded: ``append`` refuses a batch that would take the file past ``max_bytes`` (the caller
counts and logs those traces as dropped).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

from litellm_rllm.store.codec import EncodedTrace, encode_all, from_stored
from litellm_rllm.trace import Trace

logger = logging.getLogger(__name__)

MAGIC = b"RLS1"
_HEAD = struct.Struct("<4sII")  # magic, payload length, crc32
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
DEFAULT_MAX_BYTES = 1 << 30
MAX_SLOTS = 1024
_MAX_RECORD = 1 << 31  # sanity bound when reading a length


def store_folder_name(url: str) -> str:
    """A folder name for one store's spool inside a shared ``spool_dir``: a spool must only ever
    be replayed into the store it was written for. Built from what identifies the store (the
    SQLite file's absolute path; PostgreSQL host, port, database and schema; never the user or
    password), e.g. ``postgresql-1f3a9c0b7d2e``."""
    import hashlib
    from urllib.parse import parse_qsl, urlsplit

    scheme = url.split("://", 1)[0].lower() if "://" in url else "store"
    if scheme == "sqlite":
        path = url[len("sqlite:///"):].split("?", 1)[0]
        identity = os.path.abspath(os.path.expanduser(path))
    else:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        scheme = "postgresql" if scheme in ("postgres", "postgresql") else scheme
        identity = (f"{parts.hostname or ''}:{parts.port or 5432}{parts.path or '/'}"
                    f"?schema={query.get('schema', 'rllm')}")
    digest = hashlib.sha256(f"{scheme}|{identity}".encode()).hexdigest()[:12]
    return f"{scheme}-{digest}"


class SpoolError(RuntimeError):
    """The spool cannot be used (no free slot, unwritable folder)."""


@dataclass
class Record:
    """One spooled batch: its encoded traces and where the next record starts."""

    rows: list[EncodedTrace]
    end: int
    inherited: bool  # written by an earlier process (counted as adopted when replayed)


def encode_record(traces: Sequence[Union[Trace, EncodedTrace]]) -> bytes:
    """One spool record of traces or encoded traces (``codec.encode``). Raises
    ``TraceEncodeError`` naming every trace that cannot be encoded."""
    encoded = encode_all(traces)
    parts = [_U32.pack(len(encoded))]
    for enc in encoded:
        doc = enc.doc.encode("utf-8")
        parts.append(_U32.pack(len(doc)))
        parts.append(doc)
        for blob in (enc.arrays, enc.detail):
            if blob is None:
                parts.append(_I32.pack(-1))
            else:
                parts.append(_I32.pack(len(blob)))
                parts.append(blob)
    payload = b"".join(parts)
    return _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> list[EncodedTrace]:
    """The record's encoded traces, as stored (replayed without decoding their arrays)."""
    view = memoryview(payload)
    (n,) = _U32.unpack_from(view, 0)
    at = _U32.size
    out: list[EncodedTrace] = []
    for _ in range(n):
        (doc_len,) = _U32.unpack_from(view, at)
        at += _U32.size
        doc = bytes(view[at : at + doc_len])
        at += doc_len
        blobs: list[Optional[bytes]] = []
        for _blob in range(2):
            (size,) = _I32.unpack_from(view, at)
            at += _I32.size
            if size < 0:
                blobs.append(None)
            else:
                blobs.append(bytes(view[at : at + size]))
                at += size
        out.append(from_stored(doc, blobs[0], blobs[1]))
    return out


class SpoolFile:
    """One locked spool file: appends at the end, reads records from the front."""

    def __init__(self, path: str, fd: int, *, inherited_end: Optional[int] = None) -> None:
        self.path = path
        self._fd = fd
        self.read_offset = 0
        self.size = os.fstat(fd).st_size
        self.records = 0  # records between read_offset and size
        self.traces = 0  # traces in them
        self.torn_bytes = 0
        self._scan()
        # everything present when this process took the file came from an earlier one
        self.inherited_end = self.size if inherited_end is None else inherited_end
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)

    def read_at(self, offset: int, n: int) -> bytes:
        return os.pread(self._fd, n, offset)

    # ------------------------------------------------------------------ reading

    def _scan(self) -> None:
        """Count the complete records; cut off a torn tail (and say so)."""
        offset = 0
        records = traces = 0
        while offset < self.size:
            header = os.pread(self._fd, _HEAD.size + _U32.size, offset)
            ok = len(header) == _HEAD.size + _U32.size
            if ok:
                magic, length, crc = _HEAD.unpack_from(header, 0)
                ok = magic == MAGIC and _U32.size <= length < _MAX_RECORD
                ok = ok and offset + _HEAD.size + length <= self.size
            if ok:
                payload = os.pread(self._fd, length, offset + _HEAD.size)
                ok = len(payload) == length and zlib.crc32(payload) == crc
            if not ok:
                break
            records += 1
            traces += _U32.unpack_from(payload, 0)[0]
            offset += _HEAD.size + length
        if offset < self.size:
            self.torn_bytes = self.size - offset
            logger.error(
                "trace spool %s: %d bytes at the end are an incomplete record (the process "
                "died while writing it; those traces had not been acknowledged as durable): "
                "cut off",
                self.path,
                self.torn_bytes,
            )
            os.ftruncate(self._fd, offset)
            os.fsync(self._fd)
            self.size = offset
        self.records, self.traces = records, traces

    def peek(self) -> Optional[Record]:
        """The first record not yet acknowledged, or None."""
        if self.read_offset >= self.size:
            return None
        header = os.pread(self._fd, _HEAD.size, self.read_offset)
        magic, length, crc = _HEAD.unpack(header)
        payload = os.pread(self._fd, length, self.read_offset + _HEAD.size)
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            raise SpoolError(f"trace spool {self.path}: corrupt record at {self.read_offset}")
        return Record(
            decode_payload(payload),
            self.read_offset + _HEAD.size + length,
            self.read_offset < self.inherited_end,
        )

    def peek_many(self, max_traces: int, max_bytes: int) -> list[Record]:
        """The first records not yet acknowledged, as many as fit in ``max_traces`` traces and
        ``max_bytes`` payload bytes (at least one): the writer replays them in one store
        transaction, which is what makes a replay faster than the load that filled the spool
        (small batches spooled one by one at a moderate rate)."""
        out: list[Record] = []
        offset, traces, size = self.read_offset, 0, 0
        while offset < self.size:
            header = os.pread(self._fd, _HEAD.size, offset)
            magic, length, crc = _HEAD.unpack(header)
            if out and (size + length > max_bytes):
                break
            payload = os.pread(self._fd, length, offset + _HEAD.size)
            if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                if out:
                    break  # replay the good ones first; the next peek reports the bad one
                raise SpoolError(f"trace spool {self.path}: corrupt record at {offset}")
            n = _U32.unpack_from(payload, 0)[0]
            if out and traces + n > max_traces:
                break
            end = offset + _HEAD.size + length
            out.append(Record(decode_payload(payload), end, offset < self.inherited_end))
            offset, traces, size = end, traces + n, size + length
        return out

    def iter_records(self) -> "Iterator[Record]":
        """Every record not yet acknowledged, oldest first (counting what waits, by session)."""
        offset = self.read_offset
        while offset < self.size:
            header = os.pread(self._fd, _HEAD.size, offset)
            _magic, length, _crc = _HEAD.unpack(header)
            payload = os.pread(self._fd, length, offset + _HEAD.size)
            end = offset + _HEAD.size + length
            yield Record(decode_payload(payload), end, offset < self.inherited_end)
            offset = end

    def ack_many(self, records: Sequence[Record]) -> None:
        """Every record of a ``peek_many`` is in the store."""
        if not records:
            return
        self.records -= len(records) - 1
        self.traces -= sum(len(r.rows) for r in records[:-1])
        self.ack(records[-1])

    def ack(self, record: Record) -> None:
        """The record is in the store: move past it; an emptied file is truncated."""
        self.read_offset = record.end
        self.records -= 1
        self.traces -= len(record.rows)
        if self.read_offset >= self.size:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self.size = self.read_offset = self.inherited_end = 0
            self.records = self.traces = 0

    def ack_all(self) -> None:
        """Give up on everything left (a corrupt record): the file is emptied."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.size = self.read_offset = self.inherited_end = 0
        self.records = self.traces = 0

    @property
    def pending_bytes(self) -> int:
        return self.size - self.read_offset

    # ------------------------------------------------------------------ writing

    def append(self, record: bytes) -> None:
        """Append and fsync (O_APPEND: the kernel puts it at the end)."""
        view = memoryview(record)
        written = 0
        try:
            while written < len(view):
                written += os.write(self._fd, view[written:])
            os.fsync(self._fd)
        except BaseException:
            # a partial record would poison every later one: take it back
            try:
                os.ftruncate(self._fd, self.size)
            except OSError:
                pass
            raise
        self.size += len(record)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _try_lock(path: str) -> Optional[int]:
    """An fd of ``path`` holding its exclusive lock, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


class Spool:
    """This process's spool file in ``directory`` (see the module docstring).

    Not thread-safe on its own: the writer thread is its only user (``pending_*`` may be read
    from other threads; they are plain ints).
    """

    def __init__(self, directory: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.directory = os.path.abspath(directory)
        self.max_bytes = max_bytes
        os.makedirs(self.directory, exist_ok=True)
        own: Optional[SpoolFile] = None
        for slot in range(MAX_SLOTS):
            path = self._slot_path(slot)
            fd = _try_lock(path)
            if fd is not None:
                own = SpoolFile(path, fd)
                self.slot = slot
                break
        if own is None:
            raise SpoolError(f"no free spool slot in {self.directory} ({MAX_SLOTS} taken)")
        self.own = own
        self.adopted: list[SpoolFile] = []
        if own.traces:
            logger.warning(
                "trace spool %s: %d traces left by an earlier process; they are replayed into "
                "the store first",
                own.path,
                own.traces,
            )

    def _slot_path(self, slot: int) -> str:
        return os.path.join(self.directory, f"spool-{slot}.rllm")

    @property
    def pending_traces(self) -> int:
        """Traces waiting in this spool (own file and adopted ones)."""
        return self.own.traces + sum(f.traces for f in self.adopted)

    @property
    def pending_bytes(self) -> int:
        return self.own.pending_bytes + sum(f.pending_bytes for f in self.adopted)

    def has_pending(self) -> bool:
        return self.own.records > 0 or bool(self.adopted)

    def files(self) -> list[SpoolFile]:
        """Replay order: adopted files (older), then our own."""
        return [*self.adopted, self.own]

    def append(self, traces: Sequence[Union[Trace, EncodedTrace]]) -> bool:
        """Spool one batch (traces, or traces already encoded) durably. False (nothing
        written) when it would pass ``max_bytes``.

        Raises on encoding or I/O errors (nothing written)."""
        record = encode_record(traces)
        if self.own.size + len(record) > self.max_bytes:
            return False
        self._follow_path()
        self.own.append(record)
        self.own.records += 1
        self.own.traces += len(traces)
        return True

    def _follow_path(self) -> None:
        """If our file is no longer at its path (the folder was deleted, or recreated), write a
        new file there with what is still pending, so appends and a later process find it."""
        own = self.own
        try:
            st = os.stat(own.path)
            if (st.st_dev, st.st_ino) == own.identity:
                return
        except FileNotFoundError:
            pass
        os.makedirs(self.directory, exist_ok=True)
        fd = _try_lock(own.path)
        if fd is None:
            raise SpoolError(f"trace spool {own.path} was replaced by a file another process holds")
        try:
            os.ftruncate(fd, 0)
            offset = own.read_offset
            while offset < own.size:
                chunk = own.read_at(offset, min(own.size - offset, 1 << 20))
                os.write(fd, chunk)
                offset += len(chunk)
            os.fsync(fd)
            moved = SpoolFile(own.path, fd, inherited_end=max(0, own.inherited_end - own.read_offset))
        except BaseException:
            os.close(fd)
            raise
        logger.error(
            "trace spool %s: the file was deleted or replaced under this process; its %d pending "
            "traces were written to a new file there", own.path, moved.traces,
        )
        own.close()
        self.own = moved

    def adopt_orphans(self) -> int:
        """Lock every other slot's non-empty file whose owner is gone and add it to
        ``adopted`` (kept locked until ``release``). Returns the traces adopted."""
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return 0
        held = {f.path for f in self.adopted}
        found = 0
        for name in names:
            if not (name.startswith("spool-") and name.endswith(".rllm")):
                continue
            path = os.path.join(self.directory, name)
            if path == self.own.path or path in held:
                continue
            try:
                if os.path.getsize(path) == 0:
                    continue
                fd = _try_lock(path)
            except OSError:
                continue
            if fd is None:
                continue  # a live process owns it
            orphan = SpoolFile(path, fd)
            if orphan.records:
                logger.warning(
                    "trace spool %s: %d traces left by a process that is gone; adopted for replay",
                    path, orphan.traces,
                )
                self.adopted.append(orphan)
                found += orphan.traces
            else:
                orphan.close()
        return found

    def release(self, spool_file: SpoolFile) -> None:
        """An adopted file is empty: unlock it (the file stays, zero bytes)."""
        if spool_file in self.adopted:
            self.adopted.remove(spool_file)
            spool_file.close()

    def close(self) -> None:
        for spool_file in self.adopted:
            spool_file.close()
        self.adopted = []
        self.own.close()


__all__ = [
    "DEFAULT_MAX_BYTES",
    "Record",
    "Spool",
    "SpoolError",
    "SpoolFile",
    "decode_payload",
    "encode_record",
    "store_folder_name",
]
