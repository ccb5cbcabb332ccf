"""The store behind ``wallaroo receive --resumable --output FILE``: the
outputs of every stream rendered into FILE, and an index beside it saying
how much of FILE is durable.

On disk:

``FILE``
    The records, rendered with ``--framing`` and ``--format`` exactly as
    ``wallaroo receive`` writes them (``records.py``), appended in commit
    order: each stream's outputs in their order, streams interleaved.
    Each output is fed to the stream's own record splitter, as the bytes
    of one plain sink connection would be, so a record may even span
    outputs; a stream's records are written only up to the end of an
    output that ends on a record boundary (the count of such outputs is
    what ``have`` reports, so a resend never writes a record twice).
``FILE.wallaroo-index``
    ``WALLAROO-RECEIVER-INDEX 1\\n``, then records, each a 4-byte
    big-endian body length, the CRC-32 of the body (4 bytes, big-endian),
    and the body: UTF-8 JSON.  The first record is full: ``{"full": true,
    "settings": {framing, format, header_fmt}, "length": <durable bytes of
    FILE>, "records": <records in them>, "streams": {<stream>: <outputs
    durable>, ...}}``; each later one holds ``length``, ``records`` and the
    streams that changed.  Readable with a few lines of Python; rewritten
    whole (temporary file, fsync, rename, fsync of the directory) when it
    opens and when it passes 1 MiB.

Durability (``sync``, once per group commit, before any ACK): fdatasync
FILE, append one index record, fdatasync the index.  Opening: the index
is read (a torn last record, a commit that was never acknowledged, is
dropped with a note); FILE is truncated to the durable length (a torn
tail: written, never acknowledged); a FILE shorter than the index says,
an index that fails its checksum, a FILE without an index, or other
``--framing``/``--format`` than FILE was written with are refused with a
``ToolError`` that says what to do.  One receiver per FILE (``flock``).
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import time
import zlib

from ..receiver import OutputsRejected
from .common import ToolError
from .records import BadHeader, RecordSplitter

INDEX_SUFFIX = ".wallaroo-index"
MAGIC = b"WALLAROO-RECEIVER-INDEX 1\n"
RECORD_HEAD = struct.Struct(">II")  # body length, CRC-32 of the body
COMPACT_AT = 1 << 20
_sync = getattr(os, "fdatasync", os.fsync)


class _Stream:
    """One stream's outputs: ``written`` end on a record boundary and are
    in FILE; the rest of what was appended waits in ``buf`` (rendered)."""

    __slots__ = ("durable", "written", "split", "buf", "buf_outputs", "buf_records")

    def __init__(self, durable: int, split: RecordSplitter):
        self.durable = self.written = durable
        self.split = split
        self.buf: list[bytes] = []
        self.buf_outputs = self.buf_records = 0

    def drop_unwritten(self) -> None:
        self.split.reset()
        self.buf = []
        self.buf_outputs = self.buf_records = 0


class FileStore:
    """A ``wallaroo.receiver`` store writing FILE and its index."""

    def __init__(self, path: str, framing: str = "raw", fmt: str = "raw",
                 header_fmt: str = ">I", max_record: int = 64 * 1024 * 1024):
        self.path = path
        self.index_path = path + INDEX_SUFFIX
        self.settings = {"framing": framing, "format": fmt,
                         "header_fmt": header_fmt if framing == "length" else None}
        self._split_args = (framing, fmt, header_fmt, max_record)
        self.max_record = max_record
        self.notes: list[str] = []  # what opening repaired, for the user
        self.first_append: float | None = None  # time.perf_counter(), for rates
        self.fd = self.index_fd = -1
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise ToolError(f"cannot open output {path}: {e.strerror or e}") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------

    def _open(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ToolError(f"{self.path} is in use by another wallaroo receive "
                            f"--resumable (one receiver per file)") from None
        size = os.fstat(self.fd).st_size
        if os.path.exists(self.index_path):
            full = self._read_index()
        elif size:
            raise ToolError(
                f"{self.path} holds {size} bytes but has no index {self.index_path}: "
                f"it was not written by wallaroo receive --resumable, or its index "
                f"was removed.  Give another --output, or remove {self.path} to "
                f"start empty")
        else:
            full = {"settings": self.settings, "length": 0, "records": 0, "streams": {}}
        if full["settings"] != self.settings:
            raise ToolError(f"{self.path} was written with {_options(full['settings'])}, "
                            f"this run asks for {_options(self.settings)}: give the "
                            f"same options (one file, one format), or another --output")
        self.length = self.synced_length = full["length"]
        self.records = self.synced_records = full["records"]
        self.streams: dict[str, _Stream] = {}
        for name, n in full["streams"].items():
            self.streams[name] = _Stream(n, RecordSplitter(*self._split_args))
        self._changed: set[str] = set()
        if size < self.length:
            raise ToolError(
                f"{self.path} is {size} bytes, but its index {self.index_path} says "
                f"{self.length} bytes are durable (acknowledged to workers): the file "
                f"was truncated or replaced.  Restore it, or remove both files to "
                f"start empty (workers then send again only what they still hold)")
        if size > self.length:
            os.ftruncate(self.fd, self.length)
            os.fsync(self.fd)
            self.notes.append(f"{self.path}: truncated a torn tail of {size - self.length} "
                              f"bytes (written, never acknowledged)")
        self._rewrite_index()

    def _read_index(self) -> dict:
        path = self.index_path
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ToolError(f"cannot read {path}: {e.strerror or e}") from None
        if not data.startswith(MAGIC):
            raise ToolError(f"{path} is not a wallaroo receive --resumable index (it "
                            f"starts with {data[:len(MAGIC)]!r}); give another --output")
        damaged = (f"the index is damaged: restore it, or remove {path} and "
                   f"{self.path} to start empty")
        full: dict | None = None
        pos = len(MAGIC)
        while pos < len(data):
            if len(data) - pos < RECORD_HEAD.size:
                self._torn(pos, len(data))
                break
            size, crc = RECORD_HEAD.unpack_from(data, pos)
            end = pos + RECORD_HEAD.size + size
            body = data[pos + RECORD_HEAD.size:end]
            if end > len(data) or (zlib.crc32(body) != crc and end == len(data)
                                   and full is not None):
                self._torn(pos, len(data))
                break
            if zlib.crc32(body) != crc:
                raise ToolError(f"{path}: the record at byte {pos} fails its checksum; "
                                f"{damaged}")
            try:
                rec = json.loads(body)
                if full is None:
                    if not rec.get("full"):
                        raise ValueError("the first record is not a full one")
                    full = {k: rec[k] for k in ("settings", "length", "records",
                                                "streams")}
                else:
                    full["length"], full["records"] = rec["length"], rec["records"]
                    full["streams"].update(rec["streams"])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ToolError(f"{path}: the record at byte {pos} is unreadable "
                                f"({e}); {damaged}") from None
            pos = end
        if full is None:
            raise ToolError(f"{path} holds no complete record; {damaged}")
        return full

    def _torn(self, pos: int, end: int) -> None:
        self.notes.append(f"{self.index_path}: dropped a torn last record at byte {pos} "
                          f"({end - pos} bytes: a commit never acknowledged)")

    def _rewrite_index(self) -> None:
        body = {"full": True, "settings": self.settings, "length": self.synced_length,
                "records": self.synced_records,
                "streams": {n: s.durable for n, s in self.streams.items()}}
        tmp = self.index_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            _write_all(fd, MAGIC + _record(body))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.index_path)
        _fsync_dir(os.path.dirname(os.path.abspath(self.index_path)))
        if self.index_fd >= 0:
            os.close(self.index_fd)
        self.index_fd = os.open(self.index_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    # -- the store -----------------------------------------------------------------

    def have(self, stream: str) -> int:
        s = self.streams.get(stream)
        return 0 if s is None else s.durable

    def append(self, stream: str, first: int, outputs: list[bytes]) -> None:
        if self.first_append is None:
            self.first_append = time.perf_counter()
        s = self.streams.get(stream)
        if s is None:
            s = self.streams[stream] = _Stream(0, RecordSplitter(*self._split_args))
        if first != s.written + s.buf_outputs:
            if first != s.written:
                raise RuntimeError(f"stream {stream!r}: outputs from {first} appended, "
                                   f"but {s.written} are written and {s.buf_outputs} wait")
            s.drop_unwritten()  # a resend from the last record boundary
        split, buf = s.split, s.buf
        feed, limit = split.feed, self.max_record
        ready: list[bytes] = []
        ready_outputs = ready_records = 0
        i = 0
        try:
            for i, output in enumerate(outputs):
                count, _, rendered = feed(output)
                if rendered:
                    buf.append(rendered)
                s.buf_outputs += 1
                s.buf_records += count
                if not split.pending:
                    ready += buf
                    buf.clear()
                    ready_outputs += s.buf_outputs
                    ready_records += s.buf_records
                    s.buf_outputs = s.buf_records = 0
                elif split.pending > limit:
                    raise OutputsRejected(
                        f"output {first + i} of stream {stream} leaves {split.pending} "
                        f"bytes that end no record (over --max-record-size {limit}; is "
                        f"--framing {split.framing} right for this sink?)")
        except BadHeader as e:
            s.drop_unwritten()
            self._write(s, stream, ready, ready_outputs, ready_records)
            raise OutputsRejected(f"output {first + i} of stream {stream}: {e}") from None
        except OutputsRejected:
            s.drop_unwritten()
            self._write(s, stream, ready, ready_outputs, ready_records)
            raise
        self._write(s, stream, ready, ready_outputs, ready_records)

    def _write(self, s: _Stream, stream: str, pieces: list[bytes], outputs: int,
               records: int) -> None:
        if not outputs:
            return
        data = b"".join(pieces)
        if data:
            _write_all(self.fd, data, self.length)
        self.length += len(data)
        self.records += records
        s.written += outputs
        self._changed.add(stream)

    def sync(self) -> None:
        if not self._changed:
            return
        _sync(self.fd)
        body = {"length": self.length, "records": self.records,
                "streams": {n: self.streams[n].written for n in self._changed}}
        _write_all(self.index_fd, _record(body))
        _sync(self.index_fd)
        for n in self._changed:
            s = self.streams[n]
            s.durable = s.written
        self._changed.clear()
        self.synced_length, self.synced_records = self.length, self.records
        if os.fstat(self.index_fd).st_size > COMPACT_AT:
            self._rewrite_index()

    def durable_counts(self) -> dict[str, int]:
        return {n: s.durable for n, s in self.streams.items()}

    def close(self) -> None:
        for fd in (self.index_fd, self.fd):
            if fd >= 0:
                os.close(fd)  # also releases the lock
        self.fd = self.index_fd = -1


def _record(body: dict) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return RECORD_HEAD.pack(len(data), zlib.crc32(data)) + data


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _options(settings: dict) -> str:
    text = f"--framing {settings['framing']} --format {settings['format']}"
    if settings.get("header_fmt"):
        text += f" --header-fmt {settings['header_fmt']!r}"
    return text
