"""The resumable-sink wire format (DESIGN.md §5), byte for byte, without I/O.

Worker:    ``WALLAROO-OUT 1 <stream>\\n``, then frames: a 4-byte big-endian
           length, then that many bytes (one output each).
Receiver:  ``HAVE <n>\\n``, then ``ACK <n>\\n`` (cumulative, only when n
           grows), or ``ERROR <reason>\\n`` and close.
"""

from __future__ import annotations

import re
import struct

PREFIX = b"WALLAROO-OUT "
VERSION = b"1"
STREAM_NAME = re.compile(rb"[A-Za-z0-9._:-]{1,255}")
MAX_LINE = len(PREFIX) + 20 + 1 + 255 + 1  # room for a long bad version, to name it
FRAME_HEADER = struct.Struct(">I")


class HandshakeError(Exception):
    """Answered with ``ERROR <reason>\\n`` before closing."""


def check_prefix(data: bytes) -> None:
    """Raise as soon as the first bytes disagree with ``WALLAROO-OUT ``, so
    a plain sink (or anything else) is refused without waiting for a
    newline that may never come."""
    head = data[:len(PREFIX)]
    if not PREFIX.startswith(head):
        shown = head.split(b"\n")[0][:len(PREFIX)]
        raise HandshakeError(
            f"expected 'WALLAROO-OUT 1 <stream>\\n', got {shown!r}: this receiver "
            f"speaks the resumable sink protocol (start the worker with "
            f"--resumable-sinks, or use wallaroo receive without --resumable)")


def parse_handshake(line: bytes) -> str:
    """The stream name of a handshake line (``line`` without its newline)."""
    check_prefix(line)
    version, sep, name = line[len(PREFIX):].partition(b" ")
    if version != VERSION:
        raise HandshakeError(f"unsupported version {version.decode('ascii', 'replace')!r}; "
                             f"this receiver speaks version 1")
    if not sep or not STREAM_NAME.fullmatch(name):
        raise HandshakeError(f"bad stream name {name.decode('ascii', 'replace')!r}: "
                             f"1-255 characters of A-Za-z0-9._:-")
    return name.decode("ascii")


def have_line(n: int) -> bytes:
    return b"HAVE %d\n" % n


def ack_line(n: int) -> bytes:
    return b"ACK %d\n" % n


def error_line(reason: str) -> bytes:
    return b"ERROR " + reason.replace("\n", " ").encode("utf-8", "replace") + b"\n"


class FrameTooLarge(Exception):
    """A frame header announces more than the limit.  ``outputs`` holds the
    whole frames before it, which are good."""

    def __init__(self, size: int, limit: int, outputs: list[bytes]):
        super().__init__(f"a frame of {size} bytes is over the limit of {limit}")
        self.size, self.limit, self.outputs = size, limit, outputs


class FrameSplitter:
    """Bytes in, whole outputs out; ``pending`` bytes of an incomplete
    frame are kept for the next ``feed``."""

    __slots__ = ("limit", "pieces", "pending", "need")

    def __init__(self, limit: int):
        self.limit = limit
        self.pieces: list[bytes] = []
        self.pending = 0  # bytes in pieces
        self.need = 4  # pending must reach this before a frame can end

    def feed(self, data: bytes) -> list[bytes]:
        self.pieces.append(data)
        self.pending += len(data)
        if self.pending < self.need:
            return []
        buf = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
        unpack_from, limit = FRAME_HEADER.unpack_from, self.limit
        outputs = []
        n, pos, need = len(buf), 0, 4
        while n - pos >= 4:
            (size,) = unpack_from(buf, pos)
            if size > limit:
                self._keep(buf[pos:], 4)
                raise FrameTooLarge(size, limit, outputs)
            end = pos + 4 + size
            if end > n:
                need = 4 + size
                break
            outputs.append(buf[pos + 4:end])
            pos = end
        self._keep(buf[pos:] if pos < n else b"", need)
        return outputs

    def _keep(self, rest: bytes, need: int) -> None:
        self.pieces = [rest] if rest else []
        self.pending = len(rest)
        self.need = need
