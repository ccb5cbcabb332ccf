"""What ``wallaroo send`` sends: a list of framed messages, built once, and
served as big buffers from any message index on.

Messages are framed ahead of time and grouped into batches of ``batch``
messages (one socket write each).  ``chunks(start)`` yields the buffers that
carry messages ``start ..`` of the whole run (``repeat`` times the input), so
a resumable sender can continue from whatever index the engine names.
"""

from __future__ import annotations

import itertools
import struct
from typing import Iterator

from .common import ToolError, header_struct

U64_MAX = 2 ** 64 - 1


class Messages:
    """``count`` framed messages, sent ``repeat`` times, in batches."""

    count: int
    batch: int
    repeat: int
    description: str

    @property
    def total(self) -> int:
        return self.count * self.repeat

    def get_batch(self, k: int) -> bytes:
        """The framed messages ``k*batch ..`` of one repetition."""
        raise NotImplementedError

    def offset_of(self, buf: bytes, skip: int) -> int:
        """Byte offset of message ``skip`` inside a batch buffer."""
        raise NotImplementedError

    def chunks(self, start: int = 0) -> Iterator[tuple[bytes | memoryview, int]]:
        """``(buffer, messages in it)`` for messages ``start`` .. ``total-1``."""
        count, batch, total = self.count, self.batch, self.total
        g = start
        while g < total:
            k, skip = divmod(g % count, batch)
            buf = self.get_batch(k)
            n = min(batch, count - k * batch)
            if skip:
                yield memoryview(buf)[self.offset_of(buf, skip):], n - skip
                g += n - skip
            else:
                yield buf, n
                g += n


class BufferedMessages(Messages):
    """Messages framed in memory (from ``--file`` or ``--frames``)."""

    def __init__(self, batches: list[bytes], count: int, batch: int,
                 header: struct.Struct, repeat: int, description: str):
        self.batches = batches
        self.count = count
        self.batch = batch
        self.header = header
        self.repeat = repeat
        self.description = description
        self.bytes = sum(map(len, batches))

    def get_batch(self, k: int) -> bytes:
        return self.batches[k]

    def offset_of(self, buf: bytes, skip: int) -> int:
        unpack_from, hl = self.header.unpack_from, self.header.size
        pos = 0
        for _ in range(skip):
            pos += hl + unpack_from(buf, pos)[0]
        return pos


def from_lines(path: str, header_fmt: str = ">I", batch: int = 1000,
               repeat: int = 1) -> BufferedMessages:
    """Each line of a text file is one message (``\\n`` or ``\\r\\n``
    stripped), framed with a ``header_fmt`` length header."""
    header = header_struct(header_fmt)
    data = _read(path)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the file ends with a newline (or is empty)
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    pack = header.pack
    longest = max(map(len, lines), default=0)
    try:
        pack(longest)
    except struct.error:
        index = next(i for i, ln in enumerate(lines) if len(ln) == longest)
        raise ToolError(f"{path}: line {index + 1} is {longest} bytes, too long "
                        f"for a {header_fmt!r} length header; use a wider "
                        f"--header-fmt (e.g. '>I')") from None
    batches = []
    for k in range(0, len(lines), batch):
        part = lines[k:k + batch]
        batches.append(b"".join([x for ln in part for x in (pack(len(ln)), ln)]))
    return BufferedMessages(batches, len(lines), batch, header, repeat,
                            f"lines of {path}")


def from_frames(path: str, header_fmt: str = ">I", batch: int = 1000,
                repeat: int = 1) -> BufferedMessages:
    """A file of messages already framed with ``header_fmt`` headers."""
    header = header_struct(header_fmt)
    data = _read(path)
    unpack_from, hl = header.unpack_from, header.size
    size = len(data)
    cuts = [0]
    pos = count = 0
    while pos < size:
        if size - pos < hl:
            raise ToolError(f"{path}: {size - pos} bytes at offset {pos} (after "
                            f"{count} frames) are too short for a {header_fmt!r} "
                            f"header; is the file framed with --header-fmt "
                            f"{header_fmt!r}?")
        (ln,) = unpack_from(data, pos)
        end = pos + hl + ln
        if ln < 0 or end > size:
            raise ToolError(f"{path}: frame {count + 1} at offset {pos} announces "
                            f"{ln} bytes but only {size - pos - hl} remain; is the "
                            f"file framed with --header-fmt {header_fmt!r}?")
        pos = end
        count += 1
        if count % batch == 0:
            cuts.append(pos)
    if cuts[-1] != size:
        cuts.append(size)
    batches = [data[a:b] for a, b in zip(cuts, cuts[1:])]
    return BufferedMessages(batches, count, batch, header, repeat,
                            f"frames of {path}")


class U64Messages(Messages):
    """``n`` messages with values ``start ..``, each payload an 8-byte
    big-endian unsigned integer.  Batches are packed on demand."""

    def __init__(self, n: int, start: int = 1, header_fmt: str = ">I",
                 batch: int = 1000, repeat: int = 1):
        if start < 0 or start + max(n, 1) - 1 > U64_MAX:
            raise ToolError(f"--start {start} with --u64 {n}: values must fit "
                            f"an unsigned 64-bit integer (0 .. {U64_MAX})")
        header = header_struct(header_fmt)
        try:
            self.head = header.pack(8)
        except struct.error as e:
            raise ToolError(f"--header-fmt {header_fmt!r} cannot hold a "
                            f"length of 8: {e}") from None
        self.count = n
        self.start = start
        self.batch = batch
        self.repeat = repeat
        self.frame_size = len(self.head) + 8
        self.bytes = n * self.frame_size
        self.description = f"u64 values {start}..{start + n - 1}"
        self._structs: dict[int, struct.Struct] = {}

    def _struct(self, n: int) -> struct.Struct:
        st = self._structs.get(n)
        if st is None:
            st = self._structs[n] = struct.Struct(">" + f"{len(self.head)}sQ" * n)
        return st

    def get_batch(self, k: int) -> bytes:
        first = k * self.batch
        n = min(self.batch, self.count - first)
        v = self.start + first
        return self._struct(n).pack(
            *itertools.chain.from_iterable(zip(itertools.repeat(self.head, n),
                                               range(v, v + n))))

    def offset_of(self, buf: bytes, skip: int) -> int:
        return skip * self.frame_size


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ToolError(f"cannot read {path}: {e.strerror or e}") from None
