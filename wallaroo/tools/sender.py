"""``wallaroo send``: write framed messages to a source, plainly or with the
resumable handshake (DESIGN.md §5).

Plain: connect (retrying until ``connect_timeout``), write every batch,
close.  A lost connection is an error: what was written may or may not have
been accepted.

Resumable: send ``WALLAROO-RESUME 1 <stream>\\n``, read ``RESUME n\\n``, write
from message n on while a second task reads ``ACK n\\n`` lines.  A lost or
refused connection (a worker killed and restarting) means: reconnect with
backoff, handshake again, continue from the engine's n.  Done once an ACK
covers every message, i.e. every message is durable.  ``ERROR <reason>\\n`` is
fatal.
"""

from __future__ import annotations

import errno
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import trio

from .common import BaseExceptionGroup, ToolError, format_address, plural
from .messages import Messages

HANDSHAKE_PREFIX = b"WALLAROO-RESUME 1 "
STREAM_NAME = re.compile(r"[A-Za-z0-9._:-]{1,255}")
MAX_LINE = 4096
# reconnect delays: the first, doubling up to the second.  A worker comes
# back from a restart or a rescale in about a second; a longer last step
# left a sender waiting up to a second more than the outage itself
BACKOFF = (0.05, 0.25)
LINGER = 1.0  # after a failed write, how long the ACK reader may still read
HANDSHAKE_TIMEOUT = 10.0  # at least this long for RESUME (it waits for commits)
PROGRESS_EVERY = 0.1  # seconds between progress bar updates
RATE_TICK = 0.01  # with --rate, write at most this many seconds' worth at once


def check_stream_name(name: str) -> str:
    if not STREAM_NAME.fullmatch(name):
        raise ValueError(f"stream name {name!r}: use 1-255 characters of "
                         f"A-Za-z0-9._:-")
    return name


def batch_for_rate(batch: int, rate: float | None) -> int:
    """With a rate limit, write in slices of about ``RATE_TICK`` seconds, so
    the limit holds over short windows too."""
    if rate is None:
        return batch
    return max(1, min(batch, int(rate * RATE_TICK)))


@dataclass
class SendOptions:
    host: str
    port: int
    rate: float | None = None
    stream: str | None = None  # resumable stream name
    connect_timeout: float = 30.0
    quiet: bool = False


@dataclass
class SendStats:
    total: int = 0
    sent: int = 0  # messages written, resends included
    bytes: int = 0
    acked: int = 0
    reconnects: int = 0
    resumed_at: int | None = None  # the first RESUME n
    seconds: float = 0.0

    def summary(self, resumable: bool) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        line = (f"sent {self.sent} messages ({self.bytes} bytes) in "
                f"{self.seconds:.2f}s ({rate:.0f} msg/s)")
        if resumable:
            line += (f"; {self.acked} of {self.total} acknowledged, "
                     f"{plural(self.reconnects, 'reconnect')}")
            if self.resumed_at:
                line += f", resumed at message {self.resumed_at}"
        return line


class _Lost(Exception):
    """The connection ended under us (the worker went away)."""


class _Reporter:
    """Progress bar (a terminal only, unless quiet) and notices on stderr."""

    def __init__(self, total: int, quiet: bool, err: TextIO):
        self.err = err
        self.quiet = quiet
        self.bar = None
        self._next = 0.0
        if not quiet and total and err.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress,
                                       TaskProgressColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TaskProgressColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[extra]}"),
                                console=Console(file=err), transient=False)
            self.task = self.bar.add_task("sending", total=total, extra="")
            self.bar.start()

    def notice(self, msg: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(msg, markup=False, highlight=False)
        else:
            print(msg, file=self.err, flush=True)

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        if force or now >= self._next:
            self._next = now + PROGRESS_EVERY
            self.bar.update(self.task, completed=done, extra=extra)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class Sender:
    def __init__(self, messages: Messages, opts: SendOptions,
                 err: TextIO | None = None):
        self.messages = messages
        self.opts = opts
        self.addr = format_address(opts.host, opts.port)
        self.stats = SendStats(total=messages.total)
        self.report = _Reporter(messages.total, opts.quiet, err or sys.stderr)
        self._progress = 0  # how far the bar shows (messages)
        self._progressed = False  # this connection got an ACK beyond RESUME

    # -- entry point ---------------------------------------------------------

    def run(self) -> SendStats:
        t0 = time.perf_counter()
        try:
            trio.run(self._main)
        except BaseExceptionGroup as group:  # trio wraps what tasks raise
            leaf = _leaf(group)
            if isinstance(leaf, KeyboardInterrupt):
                raise self._interrupted() from None
            raise leaf from None
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            self.stats.seconds = time.perf_counter() - t0
            self.report.close()
        return self.stats

    def _interrupted(self) -> ToolError:
        st = self.stats
        acked = (f", {st.acked} acknowledged" if self.opts.stream is not None else "")
        return ToolError(f"interrupted after sending {st.sent} of {st.total} "
                         f"messages to {self.addr}{acked}")

    async def _main(self) -> None:
        if self.opts.stream is None:
            await self._plain()
        else:
            await self._resumable()

    # -- connecting ----------------------------------------------------------

    async def _connect_once(self) -> trio.SocketStream:
        host, port = self.opts.host, self.opts.port
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ToolError(f"cannot resolve {host!r} (in {self.addr}): "
                            f"{e.strerror or e}; check the host name") from None
        error: OSError | None = None
        for family, type_, proto, _, sockaddr in infos:
            sock = trio.socket.socket(family, type_, proto)
            try:
                await sock.connect(sockaddr)
            except OSError as e:
                sock.close()
                error = e
                continue
            except BaseException:
                sock.close()
                raise
            if sock.getsockname() == sock.getpeername():
                # TCP self-connect: retrying a local port nobody listens on
                # can pick that very port as the source port.
                sock.close()
                error = ConnectionRefusedError(errno.ECONNREFUSED,
                                               os.strerror(errno.ECONNREFUSED))
                continue
            return trio.SocketStream(sock)
        raise error or OSError(f"no address for {self.addr}")

    async def _connect(self, lost: str | None = None, since: float | None = None,
                       pause: float = 0.0) -> trio.SocketStream:
        """Connect, retrying with backoff for up to ``connect_timeout``
        seconds counted from ``since`` (default now: the start, or the loss
        of a connection).  ``pause``: wait this long before the first try."""
        timeout = self.opts.connect_timeout
        deadline = (trio.current_time() if since is None else since) + timeout
        delay = BACKOFF[0]
        attempts = 0
        if lost is not None:
            self.report.notice(f"connection to {self.addr} lost ({lost}); "
                               f"reconnecting for up to {timeout:g}s")
        if pause:
            await trio.sleep(pause)
        while True:
            attempts += 1
            try:
                return await self._connect_once()
            except OSError as e:
                reason = _reason(e)
            now = trio.current_time()
            if now >= deadline:
                raise ToolError(
                    f"cannot connect to {self.addr}: {reason} (is the worker "
                    f"running?); gave up after {plural(attempts, 'attempt')} "
                    f"in {timeout:g}s (--connect-timeout)")
            if attempts == 1 and lost is None:
                self.report.notice(f"cannot connect to {self.addr}: {reason}; "
                                   f"retrying for up to {timeout:g}s")
            await trio.sleep(min(delay, deadline - now))
            delay = min(BACKOFF[1], delay * 2)

    # -- writing -------------------------------------------------------------

    async def _write_from(self, stream: trio.SocketStream, start: int) -> None:
        """Write messages ``start ..`` (paced by ``--rate``)."""
        rate = self.opts.rate
        stats = self.stats
        t0 = trio.current_time()
        written = 0
        for buf, n in self.messages.chunks(start):
            if rate is not None and written:
                due = t0 + written / rate
                if due > trio.current_time():
                    await trio.sleep_until(due)
            await stream.send_all(buf)
            written += n
            stats.sent += n
            stats.bytes += len(buf)
            if self.opts.stream is None:
                self.report.update(stats.sent)
            else:
                self._progress = start + written
                self.report.update(self._progress, f"acked {stats.acked}")

    # -- plain ---------------------------------------------------------------

    async def _plain(self) -> None:
        stream = await self._connect()
        try:
            await self._write_from(stream, 0)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise ToolError(
                f"connection to {self.addr} lost after {self.stats.sent} of "
                f"{self.stats.total} messages: {_reason(e)}; the rest were not "
                f"sent (with --resumable STREAM the sender reconnects and "
                f"resumes where the worker left off)") from None
        finally:
            await trio.aclose_forcefully(stream)
        self.report.update(self.stats.sent, force=True)

    # -- resumable -----------------------------------------------------------

    async def _resumable(self) -> None:
        lost: str | None = None
        since: float | None = None  # lost, and no ACK progress since then
        pause = 0.0
        while True:
            stream = await self._connect(lost, since, pause)
            self._progressed = False
            try:
                if await self._session(stream):
                    return
                lost = "closed by the worker"
            except _Lost as e:
                lost = str(e)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                lost = _reason(e)
            finally:
                await trio.aclose_forcefully(stream)
            self.stats.reconnects += 1
            if self._progressed:
                since, pause = trio.current_time(), 0.0
            else:
                # Connected, yet nothing was acknowledged: count it as a
                # failed attempt, so a worker that keeps dropping the
                # connection cannot keep the sender spinning forever.
                if since is None:
                    since = trio.current_time()
                pause = min(BACKOFF[1], max(BACKOFF[0], pause * 2))
                if trio.current_time() - since >= self.opts.connect_timeout:
                    raise ToolError(
                        f"{self.addr} keeps closing the connection of stream "
                        f"{self.opts.stream!r} without acknowledging anything "
                        f"({lost}); gave up after {self.opts.connect_timeout:g}s "
                        f"(--connect-timeout) at {self.stats.acked} of "
                        f"{self.stats.total} acknowledged")

    async def _session(self, stream: trio.SocketStream) -> bool:
        """One connection: handshake, write, read ACKs.  True once every
        message is acknowledged; raises ``_Lost`` if the connection ends."""
        stats, total, name = self.stats, self.stats.total, self.opts.stream
        lines = _LineReader(stream, self.addr)
        await stream.send_all(HANDSHAKE_PREFIX + name.encode("ascii") + b"\n")
        wait = max(self.opts.connect_timeout, HANDSHAKE_TIMEOUT)
        with trio.move_on_after(wait) as waited:
            line = await lines.next()
        if waited.cancelled_caught:
            raise ToolError(f"{self.addr} accepted the connection but did not "
                            f"answer the handshake for stream {name!r} within "
                            f"{wait:g}s (is it a Wallaroo source? is the worker "
                            f"stopped?)")
        if line is None:
            raise _Lost("closed before answering the handshake")
        n = self._parse_resume(line)
        if stats.resumed_at is None:
            stats.resumed_at = n
        elif n < stats.acked:
            raise ToolError(
                f"{self.addr} answered RESUME {n} for stream {name!r}, but had "
                f"acknowledged {stats.acked} messages as durable: the worker "
                f"lost {stats.acked - n} acknowledged messages (restarted "
                f"without --resilience-dir, or its resilience directory was "
                f"damaged or replaced).  Refusing to resend over that loss; "
                f"check the worker's log")
        if n > stats.acked:
            self._progressed = True  # the worker holds more than it had said
        if n > total:
            self.report.notice(
                f"warning: {self.addr} already holds {n} messages of stream "
                f"{name!r}, more than the {total} given here (is the stream "
                f"name reused?); nothing to send")
        stats.acked = n
        if n >= total:
            return True
        outcome: list[str] = []  # the reason a task ended the session early
        fatal: list[ToolError] = []  # raised after the nursery, unwrapped

        reader_done = trio.Event()

        async def writer(scope: trio.CancelScope) -> None:
            try:
                await self._write_from(stream, n)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                outcome.append(_reason(e))
                # The reader may still find an ERROR line the worker sent
                # before closing: give it a moment to read to the end.
                with trio.move_on_after(LINGER):
                    await reader_done.wait()
                scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, nursery.cancel_scope)
            try:
                await self._read_acks(lines)
            except _Lost as e:
                outcome.append(str(e))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                outcome.append(_reason(e))
            except ToolError as e:
                fatal.append(e)
            reader_done.set()
            nursery.cancel_scope.cancel()
        if fatal:
            raise fatal[0]
        if stats.acked >= total:
            self.report.update(total, f"acked {stats.acked}", force=True)
            return True
        raise _Lost(outcome[0] if outcome else "closed by the worker")

    def _parse_resume(self, line: bytes) -> int:
        if line.startswith(b"ERROR"):
            self._fatal(line)
        m = re.fullmatch(rb"RESUME (\d+)", line)
        if m is None:
            raise ToolError(f"{self.addr} answered the handshake with "
                            f"{line[:100]!r}, not 'RESUME <n>' (is it a Wallaroo "
                            f"source?)")
        return int(m.group(1))

    async def _read_acks(self, lines: "_LineReader") -> None:
        """Read ``ACK n`` lines until every message is acknowledged."""
        stats, total = self.stats, self.stats.total
        while stats.acked < total:
            line = await lines.next()
            if line is None:
                raise _Lost("closed by the worker")
            if line.startswith(b"ACK "):
                try:
                    n = int(line[4:])
                except ValueError:
                    n = -1
                if n > stats.acked:
                    stats.acked = n
                    self._progressed = True
                    self.report.update(self._progress, f"acked {n}")
                continue
            if line.startswith(b"ERROR"):
                self._fatal(line)
            self.report.notice(f"warning: unexpected line from {self.addr}: "
                               f"{line[:100]!r}")

    def _fatal(self, line: bytes) -> None:
        reason = line[len(b"ERROR"):].strip().decode("utf-8", "replace")
        raise ToolError(f"{self.addr} refused stream {self.opts.stream!r}: "
                        f"ERROR {reason}")


class _LineReader:
    """Newline-terminated lines from a stream; ``None`` at end of stream."""

    def __init__(self, stream: trio.SocketStream, addr: str):
        self.stream = stream
        self.addr = addr
        self.buf = b""

    async def next(self) -> bytes | None:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 1:]
                return line.rstrip(b"\r")
            if len(self.buf) > MAX_LINE:
                raise ToolError(f"{self.addr} sent a line longer than {MAX_LINE} "
                                f"bytes (is it a Wallaroo source?)")
            more = await self.stream.receive_some(65536)
            if not more:
                return None
            self.buf += more


def _leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def _reason(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    if isinstance(e, (trio.BrokenResourceError, trio.ClosedResourceError)) and \
            isinstance(cause, OSError):
        e = cause
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)  # trio decorates strerror with the address
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def send(messages: Messages, opts: SendOptions, err: TextIO | None = None) -> SendStats:
    """Send everything (blocking); raises ``ToolError`` on failure."""
    if opts.rate is not None and not (opts.rate > 0 and math.isfinite(opts.rate)):
        raise ToolError(f"--rate {opts.rate}: give a positive number of messages "
                        f"per second")
    return Sender(messages, opts, err).run()
