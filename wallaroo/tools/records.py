"""Records out of a byte stream, rendered the way ``wallaroo receive``
writes them: one definition of ``--framing`` and ``--format``, used per
connection by the plain receiver and per stream by the resumable one.

Framing (how bytes become records):
  raw     a record is whatever one ``feed`` gives (a read, or one output)
  length  a ``header_fmt`` length header, then that many payload bytes
  lines   a line, up to and including its ``\\n``

Format (what is written per record):
  raw     the record's bytes exactly as received (header / newline included)
  text    the payload (or line) as UTF-8, errors replaced, plus ``\\n``
  hex     the payload in hex, one line per record
  repr    the payload as a Python bytes literal, one line per record
"""

from __future__ import annotations

from typing import Callable

from .common import header_struct

FRAMINGS = ("raw", "length", "lines")
FORMATS = ("raw", "text", "hex", "repr")
DEFAULT_MAX_RECORD = 64 * 1024 * 1024


class BadHeader(Exception):
    """A length header announces more than ``max_record`` bytes.  ``done``
    holds ``(records, bytes, rendered)`` for the whole records before it."""

    def __init__(self, message: str, done: tuple[int, int, bytes]):
        super().__init__(message)
        self.done = done


class RecordSplitter:
    """Bytes in (``feed``), whole records out, rendered; ``pending`` counts
    the bytes of a record not yet complete (kept for the next ``feed``)."""

    __slots__ = ("framing", "format", "header_fmt", "max_record", "header",
                 "pieces", "pending", "need", "_render", "feed")

    def __init__(self, framing: str = "raw", fmt: str = "raw", header_fmt: str = ">I",
                 max_record: int = DEFAULT_MAX_RECORD):
        if framing not in FRAMINGS:
            raise ValueError(f"framing {framing!r}: use one of {', '.join(FRAMINGS)}")
        self.framing, self.format = framing, fmt
        self.header_fmt, self.max_record = header_fmt, max_record
        self.header = header_struct(header_fmt) if framing == "length" else None
        self._render = renderer(framing, fmt)
        self.feed: Callable[[bytes], tuple[int, int, bytes]] = {
            "raw": self._feed_raw, "length": self._feed_length,
            "lines": self._feed_lines}[framing]
        self.reset()

    def reset(self) -> None:
        """Forget the incomplete record, if any."""
        self.pieces: list[bytes] = []
        self.pending = 0  # bytes in pieces
        self.need = self.header.size if self.header else 1  # before a record can end

    def _take(self) -> bytes:
        data = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
        self.pieces = []
        self.pending = 0
        return data

    def _keep(self, rest: bytes, need: int) -> None:
        if rest:
            self.pieces.append(rest)
            self.pending = len(rest)
        self.need = need

    def _feed_raw(self, data: bytes) -> tuple[int, int, bytes]:
        return 1, len(data), self._render(data, [data])

    def _feed_lines(self, data: bytes) -> tuple[int, int, bytes]:
        i = data.rfind(b"\n")
        self.pieces.append(data)
        self.pending += len(data)
        if i < 0:
            return 0, 0, b""
        buf = self._take()
        cut = len(buf) - (len(data) - i - 1)
        block = buf[:cut] if cut < len(buf) else buf
        self._keep(buf[cut:], 1)
        lines = None if self.format in ("raw", "text") else block.split(b"\n")[:-1]
        return block.count(b"\n"), len(block), self._render(block, lines)

    def _feed_length(self, data: bytes) -> tuple[int, int, bytes]:
        self.pieces.append(data)
        self.pending += len(data)
        if self.pending < self.need:
            return 0, 0, b""
        buf = self._take()
        unpack_from, hl = self.header.unpack_from, self.header.size
        max_record = self.max_record
        payloads = None if self.format == "raw" else []
        n = len(buf)
        pos = count = 0
        need = hl
        while n - pos >= hl:
            (ln,) = unpack_from(buf, pos)
            if ln < 0 or ln > max_record:
                done = (count, pos, self._render(buf[:pos], payloads) if count else b"")
                self._keep(buf[pos:], hl)
                raise BadHeader(f"a header at byte {pos} of what is pending "
                                f"announces {ln} bytes (over --max-record-size "
                                f"{max_record}; is --header-fmt "
                                f"{self.header_fmt!r} right?)", done)
            end = pos + hl + ln
            if end > n:
                need = hl + ln
                break
            if payloads is not None:
                payloads.append(buf[pos + hl:end])
            pos = end
            count += 1
        self._keep(buf[pos:] if pos < n else b"", need)
        if not count:
            return 0, 0, b""
        return count, pos, self._render(buf if pos == n else buf[:pos], payloads)


def renderer(framing: str, fmt: str) -> Callable[[bytes, list | None], bytes]:
    """``render(block, records)``: the bytes to write for a block of whole
    records (``records`` holds their payloads when the format needs them)."""
    if fmt == "raw":
        return lambda block, records: block
    if fmt == "text":
        if framing == "lines":
            return lambda block, records: block.decode("utf-8", "replace") \
                .replace("\r\n", "\n").encode("utf-8")
        return lambda block, records: "".join(
            [r.decode("utf-8", "replace") + "\n" for r in records]).encode("utf-8")
    if fmt == "hex":
        return lambda block, records: "".join(
            [r.hex() + "\n" for r in records]).encode("ascii")
    if fmt == "repr":
        return lambda block, records: "".join(
            [repr(r) + "\n" for r in records]).encode("ascii")
    raise ValueError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
