"""TCP sources: one listener per pipeline, one task per connection.

A connection task reads, splits complete frames off the front of what it has
(``Framer``) and queues them in the ``Inbox`` at once (no ``await`` between a
read and its queueing, so a stopping worker never drops frames it has read).
It never runs user code.  A bad length header or a torn frame closes only
that connection; the frames before it still count.

Hostile or broken clients stay bounded: partial frames count against the
inbox budget, ``max_connections`` caps how many are served, a connection
must finish its handshake (or show it is plain) within ``handshake_timeout``
of its first byte, an optional ``idle_timeout`` closes silent connections,
and running out of file descriptors is one rate-limited log line while the
connections already open are served.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import resource
import time
from dataclasses import dataclass

import trio

from .._compat import BaseExceptionGroup
from .._spec import SourceSpec
from .auth import AuthError
from .framing import Framer, PartialFrames
from .resume import (MAX_LINE, PREFIX, HandshakeError, StreamRegistry,
                     ack_line, could_be_handshake, error_line, parse_handshake,
                     resume_line)

RECV_SIZE = 256 * 1024
# Reads in progress pledge their size against the room left in the inbox
# budget, down to reads of this size: however many connections receive at
# once, together they overshoot the budget by at most this much each.
MIN_RECV = 4096
# A resumable client that half-closes after its last frame still gets the
# ACK covering it, if the commit comes within this long.
FINAL_ACK_TIMEOUT = 30.0
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_RETRY = 0.1
# Descriptors kept free for the database, sinks and logs when the default
# connection limit is derived from ``ulimit -n``.
RESERVED_FDS = 64


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1000
    return max(1, min(1000, soft - RESERVED_FDS))


@dataclass
class ConnectionLimits:
    max_connections: int = 1000
    handshake_timeout: float = 10.0
    idle_timeout: float | None = None
    # A connection allowed past a budget spent by partial frames (the inbox's
    # overdraft) must complete its frame within this, or it is closed: one
    # stalled sender cannot hold everyone's input.
    overdraft_timeout: float = 10.0


class RateLimitedLog:
    """One log line per ``interval`` seconds for a repeating condition, with
    how many were left out."""

    def __init__(self, log: logging.Logger, interval: float = 10.0):
        self.log = log
        self.interval = interval
        self._last = -1e18
        self._quiet = 0

    def warning(self, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._quiet += 1
            return
        more = f" ({self._quiet} more like it in the last {self.interval:.0f}s)" \
            if self._quiet else ""
        self.log.warning(msg + more, *args)
        self._last, self._quiet = now, 0


class Connection:
    """One accepted connection (plain or resumable)."""

    def __init__(self, stream: trio.SocketStream, peer: str, label: str):
        self.stream = stream
        self.peer = peer
        self.label = label
        self.cancel_scope = trio.CancelScope()
        self.closed = trio.Event()
        self.superseded = False
        self.frames = 0  # complete frames read so far
        self._ack_target = 0
        self._ack_event = trio.Event()
        self.ack_sent = 0
        self._sent_event = trio.Event()

    def close(self) -> None:
        self.cancel_scope.cancel()

    def supersede(self) -> None:
        """A new handshake for this connection's stream arrived."""
        self.superseded = True
        self.close()

    def ack(self, n: int) -> None:
        if n > self._ack_target:
            self._ack_target = n
            self._ack_event.set()

    async def ack_writer(self, sent: int) -> None:
        """Send ``ACK n`` whenever n grew; coalesced, so a client that never
        reads ACKs blocks only this task, never the worker."""
        self.ack_sent = sent
        while True:
            await self._ack_event.wait()
            self._ack_event = trio.Event()
            n = self._ack_target
            if n > self.ack_sent:
                await self.stream.send_all(ack_line(n))
                self.ack_sent = n
                self._sent_event.set()
                self._sent_event = trio.Event()

    async def wait_acked(self, n: int) -> None:
        while self.ack_sent < n:
            await self._sent_event.wait()


class TCPSource:
    def __init__(self, index: int, spec: SourceSpec, framer: Framer, inbox: "Inbox",
                 registry: StreamRegistry, log: logging.Logger,
                 limits: ConnectionLimits | None = None,
                 counter: "ConnectionCounter | None" = None, cluster=None,
                 on_closed=None):
        """``cluster``: the worker's cluster side (resumable streams another
        worker owns are forwarded to it); ``on_closed``: called when a
        connection handed over by a supervisor closes."""
        self.index = index
        self.spec = spec
        self.framer = framer
        self.inbox = inbox
        self.registry = registry
        self.log = log
        self.limits = limits or ConnectionLimits()
        self.counter = counter or ConnectionCounter()
        self.listeners: list[trio.SocketListener] = []
        self.connections = 0
        self.bad_frames = 0  # length headers over the limit or invalid
        self.torn_frames = 0  # connections closed in the middle of a frame
        self.bound: tuple[str, int] | None = None
        self._fd_log = RateLimitedLog(log)
        self._limit_log = RateLimitedLog(log)
        self.cluster = cluster
        self.on_closed = on_closed
        self._nursery: trio.Nursery | None = None
        self._early: list = []  # handed over before serve() started

    async def bind(self) -> tuple[str, int]:
        try:
            port = int(self.spec.port)
        except ValueError:
            raise OSError(f"pipeline {self.spec.pipeline!r}: source port "
                          f"{self.spec.port!r} is not a number") from None
        try:
            self.listeners = await trio.open_tcp_listeners(port, host=self.spec.host)
        except OSError as e:
            raise OSError(f"pipeline {self.spec.pipeline!r}: cannot listen on "
                          f"{self.spec.address}: {e.strerror or e}") from e
        host, port = self.listeners[0].socket.getsockname()[:2]
        self.bound = (host, port)
        return self.bound

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in self.listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            for stream in self._early:
                self.hand(stream)
            self._early = []
            await trio.sleep_forever()

    def hand(self, stream: trio.SocketStream) -> None:
        """A client connection accepted by the supervisor (one host: it
        spreads connections over the ready workers)."""
        if self._nursery is None:
            self._early.append(stream)
            return
        try:
            self._nursery.start_soon(self._handle, stream, True)
        except RuntimeError:  # the sources have stopped: the client retries
            stream.socket.close()
            return
        self.counter.open += 1

    async def handle_forwarded(self, stream, label: str) -> None:
        """A client connection forwarded by the worker it reached: the
        resumable stream it carries is this worker's."""
        conn = Connection(stream, label, f"connection {label} to pipeline "
                                         f"{self.spec.pipeline!r}")
        self.connections += 1
        self.counter.open += 1
        try:
            await self._serve(conn)
        finally:
            self.counter.open -= 1

    async def _accept_loop(self, listener: trio.SocketListener,
                           nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:
                    if e.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    self._fd_log.warning(
                        "pipeline %r: cannot accept connections on %s: %s (%d "
                        "connections open; the limit of open files is %s, see "
                        "`ulimit -n`); serving the open connections and "
                        "retrying", self.spec.pipeline, _address(self.bound),
                        os.strerror(e.errno), self.counter.open,
                        _nofile_limit())
                    await trio.sleep(ACCEPT_RETRY)
                    continue
                if self.counter.open >= self.limits.max_connections:
                    self._limit_log.warning(
                        "pipeline %r: %d connections open, the limit "
                        "(--max-connections %d); closing a new one",
                        self.spec.pipeline, self.counter.open,
                        self.limits.max_connections)
                    await trio.aclose_forcefully(stream)
                    continue
                self.counter.open += 1
                nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream, handed: bool = False) -> None:
        try:
            peer = stream.socket.getpeername()
            label = f"{peer[0]}:{peer[1]}"
        except OSError:
            label = "unknown peer"
        conn = Connection(stream, label, f"connection {label} to pipeline "
                                         f"{self.spec.pipeline!r}")
        self.connections += 1
        try:
            await self._serve(conn)
        finally:
            self.counter.open -= 1
            if handed and self.on_closed is not None:
                self.on_closed(self.index)

    async def _serve(self, conn: Connection) -> None:
        stream = conn.stream
        try:
            with conn.cancel_scope:
                await self._serve_connection(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self.log.info("%s: closed by error: %s", conn.label, e)
        except BaseExceptionGroup as eg:  # from the resumable connection's tasks
            broken, rest = eg.split(_CONNECTION_ERRORS)
            if broken is not None:
                self.log.info("%s: closed by error: %s", conn.label,
                              _first_leaf(broken))
            if rest is not None:
                raise rest from None  # e.g. the cancellation of a stopping worker
        finally:
            self.inbox.release(conn)
            conn.closed.set()
            with trio.CancelScope(shield=True):
                if conn.superseded:
                    with trio.move_on_after(1):
                        try:
                            await stream.send_all(error_line("superseded"))
                        except (trio.BrokenResourceError, trio.ClosedResourceError,
                                OSError):
                            pass
                await trio.aclose_forcefully(stream)

    async def _recv(self, conn: Connection) -> bytes:
        """Read what the budget allows; the bytes count until queued."""
        inbox = self.inbox
        await inbox.reserve(conn)
        overdraft = inbox.holds_overdraft(conn)
        size = RECV_SIZE if overdraft else max(MIN_RECV, min(
            RECV_SIZE, inbox.room() - inbox.pledged))
        idle = self.limits.idle_timeout
        more = None
        wait = math.inf if idle is None else idle
        if overdraft:
            wait = min(wait, self.limits.overdraft_timeout)
        inbox.pledged += size
        try:
            with trio.move_on_after(wait):
                more = await conn.stream.receive_some(size)
        finally:
            inbox.pledged -= size
        if more is None:
            if overdraft and (idle is None or self.limits.overdraft_timeout < idle):
                raise _Stalled()
            raise _Idle()
        self.inbox.hold(conn, len(more))
        return more

    async def _serve_connection(self, conn: Connection) -> None:
        try:
            data = await self._recv(conn)
            if not data:
                return
            timeout = self.limits.handshake_timeout
            with trio.move_on_after(timeout) as scope:
                while len(data) < len(PREFIX) and could_be_handshake(data):
                    more = await self._recv(conn)
                    if not more:
                        self.log.warning(
                            "%s: closed after %d bytes that begin a resumable "
                            "handshake (%r); nothing accepted", conn.label,
                            len(data), data)
                        return
                    data += more
                if data.startswith(PREFIX):
                    data = await self._read_handshake_line(conn, data)
                    if data is None:
                        return
            if scope.cancelled_caught:
                await self._refuse(conn, f"no complete handshake within "
                                         f"{timeout:g}s of the first byte")
                return
            if data.startswith(PREFIX):
                await self._resumable(conn, data)
            else:
                await self._read_frames(conn, data, conn, None, None)
        except _Idle:
            self.log.info("%s: nothing received for %gs (--idle-timeout); "
                          "closing", conn.label, self.limits.idle_timeout)
        except _Stalled:
            self.log.warning(
                "%s: stalled for %gs in the middle of a frame while partial "
                "frames fill the input budget; closing it so the others can "
                "go on (its incomplete frame is discarded)", conn.label,
                self.limits.overdraft_timeout)

    async def _read_handshake_line(self, conn: Connection, data: bytes) -> bytes | None:
        while b"\n" not in data[:MAX_LINE]:
            if len(data) >= MAX_LINE:
                await self._refuse(conn, "handshake line too long (stream names "
                                         "are 1-255 of A-Za-z0-9._:-)")
                return None
            more = await self._recv(conn)
            if not more:
                self.log.warning("%s: closed in the middle of its resumable "
                                 "handshake line; nothing accepted", conn.label)
                return None
            data += more
        return data

    async def _resumable(self, conn: Connection, data: bytes) -> None:
        line, _, rest = data.partition(b"\n")
        try:
            name = parse_handshake(line)
        except HandshakeError as e:
            await self._refuse(conn, str(e))
            return
        key = (self.spec.pipeline, name)
        conn.label = (f"stream {name!r} (connection {conn.peer}) of "
                      f"pipeline {self.spec.pipeline!r}")
        owner = self.cluster.owner_of(self.spec.pipeline, name) if self.cluster else None
        if owner is not None:  # RESUME and ACKs come from the owner's log
            self.log.info("%s: forwarded to worker %r, which owns the stream",
                          conn.label, owner)
            try:
                await self.cluster.forward(owner, self.index, conn.peer, data,
                                           conn.stream)
            except (AuthError, trio.TooSlowError, OSError,
                    trio.BrokenResourceError, trio.ClosedResourceError) as e:
                # the owner is down, stopped or restarting: close, and the
                # client reconnects (as after a crash)
                self.log.warning("%s: cannot reach worker %r, which owns the "
                                 "stream: %s; closing the connection", conn.label,
                                 owner, e or type(e).__name__)
            return
        try:
            n = await self.registry.claim(key, conn)
            await conn.stream.send_all(resume_line(n))
            self.log.info("%s: resuming at message %d", conn.label, n)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.ack_writer, n)
                error = await self._read_frames(conn, rest, ("stream", self.index, name),
                                                key, n)
                if error is None:
                    # the client half-closed: answer the frames it sent with
                    # their ACK before closing
                    with trio.move_on_after(FINAL_ACK_TIMEOUT):
                        await conn.wait_acked(self.registry.get(key).accepted)
                nursery.cancel_scope.cancel()
            if error is not None:  # the ACK writer is gone: the socket is ours
                await self._refuse(conn, error)
        finally:
            self.registry.release(key, conn)

    async def _refuse(self, conn: Connection, reason: str) -> None:
        self.log.warning("%s: refused: %s", conn.label, reason)
        with trio.move_on_after(1):
            await conn.stream.send_all(error_line(reason))

    async def _read_frames(self, conn: Connection, data: bytes, qkey: object,
                           key: tuple[str, str] | None, seq: int | None) -> str | None:
        """Read until EOF or a bad frame; returns the bad frame's error."""
        split = self.framer.split
        inbox = self.inbox
        state = self.registry.get(key) if key is not None else None
        name = key[1] if key is not None else None
        origin = conn.label if key is None else \
            f"stream {name!r} of pipeline {self.spec.pipeline!r}"
        while True:
            error = None
            try:
                payloads, used = split(data)
            except PartialFrames as e:
                payloads, used, error = e.payloads, e.consumed, e
            if payloads:
                frames = data if used == len(data) else data[:used]
                position = seq if state is not None else conn.frames
                inbox.put_nowait(conn, qkey, self.index, payloads, frames, name,
                                 seq, origin, position)
                conn.frames += len(payloads)
                if state is not None:
                    seq += len(payloads)
                    state.accepted = seq
                data = data[used:]
            if error is not None:
                self.bad_frames += 1
                hint = ""
                if "exceeds" in str(error):
                    hint = (" (sources expect each message as a length header "
                            "then the payload; `wallaroo send --file` frames "
                            "lines that way)")
                self.log.warning("%s: %s%s; closing the connection (the frames "
                                 "before it are kept)", conn.label, error, hint)
                return str(error)
            more = await self._recv(conn)
            if not more:
                if data:
                    self.torn_frames += 1
                    self.log.warning(
                        "%s: closed in the middle of a frame; %d bytes of an "
                        "incomplete frame discarded", conn.label, len(data))
                return None
            data = data + more if data else more


_CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _first_leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


class ConnectionCounter:
    """Open source connections, shared by a worker's sources (the limit is
    per worker)."""

    def __init__(self) -> None:
        self.open = 0


class _Idle(Exception):
    pass


class _Stalled(Exception):
    pass


def _address(bound) -> str:
    return "?" if bound is None else f"{bound[0]}:{bound[1]}"


def _nofile_limit() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
