"""``wallaroo receive``: listen where sinks connect and write what arrives.

Any number of connections, one after another or at once (a sink reconnects
after a worker restart).  Records are split per connection; a record still
incomplete when its connection ends is dropped and counted, never written:
after a restart the sink resends whole records on a new connection
(DESIGN.md §5).

Framing and format: see ``records.py`` (one definition for both receivers).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

import trio

from .common import BaseExceptionGroup, ToolError, format_address, listen_or_explain, plural
from .records import DEFAULT_MAX_RECORD, BadHeader, RecordSplitter

RECV_SIZE = 256 * 1024


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


class _OutputFailed(Exception):
    """Writing to ``--output`` failed (stops the receiver)."""


class _Conn:
    """One connection: its label, its records, its incomplete record."""

    __slots__ = ("label", "split", "records")

    def __init__(self, label: str, split: RecordSplitter):
        self.label = label
        self.split = split
        self.records = 0


class Receiver:
    def __init__(self, opts: ReceiveOptions, out: BinaryIO, err: TextIO | None = None):
        self.opts = opts
        self.out = out
        self.err = err or sys.stderr
        self.stats = ReceiveStats(expect=opts.expect)
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
        return await listen_or_explain(self.opts.host, self.opts.port)

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
        conn = _Conn(label, RecordSplitter(self.opts.framing, self.opts.format,
                                           self.opts.header_fmt, self.opts.max_record))
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
                    try:
                        self._emit(conn, *conn.split.feed(data))
                    except BadHeader as e:
                        self._emit(conn, *e.done)
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
            pending = conn.split.pending
            if pending:
                stats.dropped_records += 1
                stats.dropped_bytes += pending
            if self.opts.verbose:
                dropped = (f", dropped an incomplete record of {pending} bytes"
                           if pending else "")
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


def check_options(opts: ReceiveOptions) -> None:
    """Framing, format and header format, or a ``ToolError``."""
    try:
        RecordSplitter(opts.framing, opts.format, opts.header_fmt, opts.max_record)
    except ValueError as e:
        raise ToolError(str(e)) from None


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
    check_options(opts)
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
