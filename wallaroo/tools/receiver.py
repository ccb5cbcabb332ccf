"""``wallaroo receive``: listen where sinks connect and write what arrives.

Any number of connections, one after another or at once (a sink reconnects
after a worker restart).  Records are split per connection; a record still
incomplete when its connection ends is dropped and counted, never written:
after a restart the sink resends whole records on a new connection
(DESIGN.md §5).

Framing (how bytes become records):
  raw     a record is whatever one read returned; bytes pass straight through
  length  a ``header_fmt`` length header, then that many payload bytes
  lines   a line, up to and including its ``\\n``

Format (what is written per record):
  raw     the record's bytes exactly as received (header / newline included)
  text    the payload (or line) as UTF-8, errors replaced, plus ``\\n``
  hex     the payload in hex, one line per record
  repr    the payload as a Python bytes literal, one line per record
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, TextIO

import trio

from .common import BaseExceptionGroup, ToolError, format_address, header_struct, plural

RECV_SIZE = 256 * 1024
FRAMINGS = ("raw", "length", "lines")
FORMATS = ("raw", "text", "hex", "repr")
DEFAULT_MAX_RECORD = 64 * 1024 * 1024


@dataclass
class ReceiveOptions:
    host: str
    port: int
    framing: str = "raw"
    header_fmt: str = ">I"
    format: str = "raw"
    expect: int | None = None
    idle_timeout: float | None = None
    timeout: float | None = None
    max_record: int = DEFAULT_MAX_RECORD
    quiet: bool = False
    verbose: bool = False


@dataclass
class ReceiveStats:
    records: int = 0
    bytes: int = 0
    connections: int = 0
    dropped_records: int = 0
    dropped_bytes: int = 0
    first_data: float | None = None
    last_data: float | None = None
    seconds: float = 0.0
    stopped_by: str = ""
    expect: int | None = None
    address: str = ""
    by_connection: list[int] = field(default_factory=list)

    def summary(self) -> str:
        span = (self.last_data - self.first_data) if self.first_data is not None else 0.0
        rate = f", {self.records / span:.0f} records/s" if span > 0 else ""
        line = (f"received {plural(self.records, 'record')} ({self.bytes} bytes) "
                f"on {plural(self.connections, 'connection')} in {span:.2f}s{rate}; "
                f"{plural(self.dropped_records, 'incomplete record')} dropped")
        if self.dropped_records:
            line += f" ({self.dropped_bytes} bytes)"
        if self.expect is not None and self.records < self.expect:
            line += f"; expected {self.expect}"
        if self.stopped_by:
            line += f"; stopped: {self.stopped_by}"
        return line


class _BadHeader(Exception):
    pass


class _OutputFailed(Exception):
    """Writing to ``--output`` failed (stops the receiver)."""


class _Conn:
    """Bytes of one connection not yet part of a complete record."""

    __slots__ = ("label", "pieces", "pending", "need", "records")

    def __init__(self, label: str, need: int):
        self.label = label
        self.pieces: list[bytes] = []
        self.pending = 0  # bytes in pieces
        self.need = need  # pending must reach this before a record can end
        self.records = 0

    def take(self) -> bytes:
        data = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
        self.pieces = []
        self.pending = 0
        return data

    def keep(self, rest: bytes, need: int) -> None:
        if rest:
            self.pieces.append(rest)
            self.pending = len(rest)
        self.need = need


class Receiver:
    def __init__(self, opts: ReceiveOptions, out: BinaryIO, err: TextIO | None = None):
        self.opts = opts
        self.out = out
        self.err = err or sys.stderr
        self.stats = ReceiveStats(expect=opts.expect)
        self.header = header_struct(opts.header_fmt) if opts.framing == "length" else None
        self._split = {"raw": self._split_raw, "length": self._split_length,
                       "lines": self._split_lines}[opts.framing]
        self._render = _renderer(opts.framing, opts.format)
        self._stop: trio.Event | None = None
        self._data = None  # trio.Event set by every arrival (idle timeout)
        self.output_error: str | None = None
        self.address = ""

    # -- entry point ---------------------------------------------------------

    def run(self) -> ReceiveStats:
        t0 = time.perf_counter()
        try:
            trio.run(self._main)
        except BaseExceptionGroup as group:  # trio wraps what tasks raise
            e = group
            while isinstance(e, BaseExceptionGroup):
                e = e.exceptions[0]
            raise e from None
        finally:
            self.stats.seconds = time.perf_counter() - t0
        return self.stats

    def note(self, msg: str) -> None:
        if not self.opts.quiet:
            print(msg, file=self.err, flush=True)

    async def _main(self) -> None:
        opts = self.opts
        self._stop = trio.Event()
        self._data = trio.Event()
        listeners = await self._listen()
        host, port = listeners[0].socket.getsockname()[:2]
        self.address = self.stats.address = format_address(host, port)
        print(f"listening on {self.address}", file=self.err, flush=True)
        if opts.expect is not None and opts.expect <= 0:
            self._finish("expected count reached")
        timeout = math.inf if opts.timeout is None else opts.timeout
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            nursery.start_soon(self._signals)
            if opts.idle_timeout is not None:
                nursery.start_soon(self._idle_watch, opts.idle_timeout)
            with trio.move_on_after(timeout):
                await self._stop.wait()
            if not self._stop.is_set():
                self.stats.stopped_by = f"timeout of {opts.timeout:g}s"
            nursery.cancel_scope.cancel()

    async def _listen(self) -> list[trio.SocketListener]:
        host, port = self.opts.host, self.opts.port
        addr = format_address(host, port)
        try:
            if port != 0:
                return await trio.open_tcp_listeners(port, host=host)
            # Port 0: one socket (several would each get their own port).
            infos = await trio.socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)
            infos.sort(key=lambda i: i[0] != socket.AF_INET)
            family, type_, proto, _, sockaddr = infos[0]
            sock = trio.socket.socket(family, type_, proto)
            try:
                await sock.bind(sockaddr)
                sock.listen(128)
            except BaseException:
                sock.close()
                raise
            return [trio.SocketListener(sock)]
        except socket.gaierror as e:
            raise ToolError(f"cannot resolve {host!r} (in {addr}): "
                            f"{e.strerror or e}; check the host name") from None
        except OSError as e:
            hint = (" (is another receiver running there? pick another port, or "
                    "port 0 for a free one)" if e.errno in (98, 48, 10048) else "")
            raise ToolError(f"cannot listen on {addr}: {e.strerror or e}{hint}") from None

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self._finish(f"received {signal.Signals(signum).name}")
                return

    async def _idle_watch(self, idle: float) -> None:
        while True:
            await self._data.wait()
            self._data = trio.Event()
            with trio.move_on_after(idle) as quiet:
                await self._data.wait()
            if quiet.cancelled_caught:
                self._finish(f"no data for {idle:g}s")
                return

    def _output_failed(self, e: OSError) -> None:
        if isinstance(e, BrokenPipeError):
            self._finish("the output was closed")
        else:
            self.output_error = f"cannot write to the output: {e.strerror or e}"
            self._finish(self.output_error)

    def _finish(self, why: str) -> None:
        if not self._stop.is_set():
            self.stats.stopped_by = why
            self._stop.set()

    # -- connections ---------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        stats = self.stats
        stats.connections += 1
        try:
            peer = stream.socket.getpeername()
            label = f"connection {stats.connections} from {format_address(*peer[:2])}"
        except OSError:
            label = f"connection {stats.connections}"
        conn = _Conn(label, self.header.size if self.header else 1)
        if self.opts.verbose:
            self.note(label)
        how = "closed by the peer"
        try:
            while not self._stop.is_set():
                data = await stream.receive_some(RECV_SIZE)
                if not data or self._stop.is_set():
                    break
                now = trio.current_time()
                if stats.first_data is None:
                    stats.first_data = now
                stats.last_data = now
                self._data.set()
                try:
                    self._split(conn, data)
                except _BadHeader as e:
                    how = str(e)
                    self.note(f"{label}: {e}; closing it")
                    break
                except _OutputFailed as e:
                    self._output_failed(e.args[0])
                    break
                if self.opts.expect is not None and stats.records >= self.opts.expect:
                    self._finish("expected count reached")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            cause = e.__cause__ or e
            how = f"lost: {getattr(cause, 'strerror', None) or cause}"
        finally:
            if conn.pending:
                stats.dropped_records += 1
                stats.dropped_bytes += conn.pending
            if self.opts.verbose:
                dropped = (f", dropped an incomplete record of {conn.pending} bytes"
                           if conn.pending else "")
                self.note(f"{label}: {how}: {plural(conn.records, 'record')}{dropped}")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    def _emit(self, conn: _Conn, count: int, size: int, out: bytes) -> None:
        self.stats.records += count
        self.stats.bytes += size
        conn.records += count
        if out:
            try:
                self.out.write(out)
                self.out.flush()
            except OSError as e:
                raise _OutputFailed(e) from None

    def _split_raw(self, conn: _Conn, data: bytes) -> None:
        self._emit(conn, 1, len(data), self._render(data, [data]))

    def _split_lines(self, conn: _Conn, data: bytes) -> None:
        i = data.rfind(b"\n")
        conn.pieces.append(data)
        conn.pending += len(data)
        if i < 0:
            return
        buf = conn.take()
        cut = len(buf) - (len(data) - i - 1)
        block = buf[:cut] if cut < len(buf) else buf
        conn.keep(buf[cut:], 1)
        lines = None if self.opts.format in ("raw", "text") else block.split(b"\n")[:-1]
        self._emit(conn, block.count(b"\n"), len(block), self._render(block, lines))

    def _split_length(self, conn: _Conn, data: bytes) -> None:
        conn.pieces.append(data)
        conn.pending += len(data)
        if conn.pending < conn.need:
            return
        buf = conn.take()
        unpack_from, hl = self.header.unpack_from, self.header.size
        max_record = self.opts.max_record
        payloads = None if self.opts.format == "raw" else []
        n = len(buf)
        pos = count = 0
        need = hl
        while n - pos >= hl:
            (ln,) = unpack_from(buf, pos)
            if ln < 0 or ln > max_record:
                if count:
                    self._emit(conn, count, pos, self._render(buf[:pos], payloads))
                conn.keep(buf[pos:], hl)
                raise _BadHeader(f"a header at byte {pos} of what is pending "
                                 f"announces {ln} bytes (over --max-record-size "
                                 f"{max_record}; is --header-fmt "
                                 f"{self.opts.header_fmt!r} right?)")
            end = pos + hl + ln
            if end > n:
                need = hl + ln
                break
            if payloads is not None:
                payloads.append(buf[pos + hl:end])
            pos = end
            count += 1
        conn.keep(buf[pos:] if pos < n else b"", need)
        if count:
            self._emit(conn, count, pos, self._render(
                buf if pos == n else buf[:pos], payloads))


def _renderer(framing: str, fmt: str) -> Callable[[bytes, list | None], bytes]:
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
    raise ValueError(f"unknown format {fmt!r}")


def open_output(path: str) -> tuple[BinaryIO, bool]:
    """``(file, close_it)`` for ``--output`` (``-`` is stdout)."""
    if path == "-":
        return sys.stdout.buffer, False
    try:
        return open(path, "wb"), True
    except OSError as e:
        raise ToolError(f"cannot open output {path}: {e.strerror or e}") from None


def receive(opts: ReceiveOptions, output: str = "-",
            err: TextIO | None = None) -> ReceiveStats:
    """Run the receiver until it stops; print the summary unless quiet."""
    if opts.framing not in FRAMINGS:
        raise ToolError(f"framing {opts.framing!r}: use one of {', '.join(FRAMINGS)}")
    if opts.format not in FORMATS:
        raise ToolError(f"format {opts.format!r}: use one of {', '.join(FORMATS)}")
    try:
        if opts.framing == "length":
            header_struct(opts.header_fmt)
    except ValueError as e:
        raise ToolError(str(e)) from None
    out, close = open_output(output)
    err = err or sys.stderr
    receiver = Receiver(opts, out, err)
    try:
        stats = receiver.run()
    finally:
        if close:
            try:
                out.close()
            except OSError:
                pass
    if not close and stats.stopped_by == "the output was closed":
        # stdout's reader went away (``| head``): keep the interpreter from
        # failing to flush it again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if not opts.quiet:
        print(stats.summary(), file=err, flush=True)
    if receiver.output_error:
        raise ToolError(f"{receiver.output_error} ({output})")
    return stats
