"""TCP sources: one listener per pipeline, one task per connection.

A connection task reads, splits complete frames off the front of what it has
(``Framer``) and queues them in the ``Inbox``.  It never runs user code.  A
bad length header or a torn frame closes only that connection; the frames
before it still count.
"""

from __future__ import annotations

import logging

import trio

from .._spec import SourceSpec
from .framing import Framer, PartialFrames
from .inbox import Inbox
from .resume import (MAX_LINE, PREFIX, HandshakeError, StreamRegistry,
                     ack_line, could_be_handshake, error_line, parse_handshake,
                     resume_line)

RECV_SIZE = 256 * 1024
# A resumable client that half-closes after its last frame still gets the
# ACK covering it, if the commit comes within this long.
FINAL_ACK_TIMEOUT = 30.0


class Connection:
    """One accepted connection (plain or resumable)."""

    def __init__(self, stream: trio.SocketStream, peer: str, label: str):
        self.stream = stream
        self.peer = peer
        self.label = label
        self.cancel_scope = trio.CancelScope()
        self.closed = trio.Event()
        self._ack_target = 0
        self._ack_event = trio.Event()
        self.ack_sent = 0
        self._sent_event = trio.Event()

    def close(self) -> None:
        self.cancel_scope.cancel()

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
    def __init__(self, index: int, spec: SourceSpec, framer: Framer, inbox: Inbox,
                 registry: StreamRegistry, log: logging.Logger):
        self.index = index
        self.spec = spec
        self.framer = framer
        self.inbox = inbox
        self.registry = registry
        self.log = log
        self.listeners: list[trio.SocketListener] = []
        self.connections = 0
        self.bound: tuple[str, int] | None = None

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
        await trio.serve_listeners(self._handle, self.listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            label = f"{peer[0]}:{peer[1]}"
        except OSError:
            label = "unknown peer"
        conn = Connection(stream, label, f"connection {label} to pipeline "
                                         f"{self.spec.pipeline!r}")
        self.connections += 1
        try:
            with conn.cancel_scope:
                await self._serve_connection(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self.log.info("%s: closed by error: %s", conn.label, e)
        finally:
            conn.closed.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _serve_connection(self, conn: Connection) -> None:
        stream = conn.stream
        data = b""
        while len(data) < len(PREFIX) and could_be_handshake(data):
            more = await stream.receive_some(RECV_SIZE)
            if not more:
                break
            data += more
        if data.startswith(PREFIX):
            await self._resumable(conn, data)
        else:
            await self._read_frames(conn, data, None, None)

    async def _resumable(self, conn: Connection, data: bytes) -> None:
        stream = conn.stream
        while b"\n" not in data[:MAX_LINE]:
            if len(data) >= MAX_LINE:
                await self._refuse(conn, "handshake line too long (stream names are 1-255 of A-Za-z0-9._:-)")
                return
            more = await stream.receive_some(RECV_SIZE)
            if not more:
                return
            data += more
        line, _, rest = data.partition(b"\n")
        try:
            name = parse_handshake(line)
        except HandshakeError as e:
            await self._refuse(conn, str(e))
            return
        key = (self.spec.pipeline, name)
        conn.label = (f"stream {name!r} (connection {conn.peer}) of "
                      f"pipeline {self.spec.pipeline!r}")
        try:
            n = await self.registry.claim(key, conn)
            await stream.send_all(resume_line(n))
            self.log.info("%s: resuming at message %d", conn.label, n)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.ack_writer, n)
                error = await self._read_frames(conn, rest, key, n)
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

    async def _read_frames(self, conn: Connection, data: bytes,
                           key: tuple[str, str] | None, seq: int | None) -> str | None:
        """Read until EOF or a bad frame; returns the bad frame's error."""
        split = self.framer.split
        stream = conn.stream
        inbox = self.inbox
        state = self.registry.get(key) if key is not None else None
        name = key[1] if key is not None else None
        while True:
            error = None
            try:
                payloads, used = split(data)
            except PartialFrames as e:
                payloads, used, error = e.payloads, e.consumed, e
            if payloads:
                frames = data if used == len(data) else data[:used]
                await inbox.put(conn, self.index, payloads, frames, name, seq,
                                conn.label)
                if state is not None:
                    seq += len(payloads)
                    state.accepted = seq
                data = data[used:]
            if error is not None:
                self.log.warning("%s: %s; closing the connection (the frames "
                                 "before it are kept)", conn.label, error)
                return str(error)
            more = await stream.receive_some(RECV_SIZE)
            if not more:
                if data:
                    self.log.warning(
                        "%s: closed in the middle of a frame; %d bytes of an "
                        "incomplete frame discarded", conn.label, len(data))
                return None
            data = data + more if data else more
