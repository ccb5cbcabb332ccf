"""Channels between workers (DESIGN.md §6), over a worker's data port.

Every connection to a data port first authenticates (``auth``), then says
what it is for, in one line:

    CHANNEL\\n                    the sender's peer batches for this worker
    FORWARD <pipeline> <client>\\n a client connection of a resumable stream
                                  this worker owns, forwarded by the worker
                                  the client reached (bytes pass both ways)

CHANNEL is the resumable protocol between workers: the receiver answers
``HAVE <n>\\n`` (peer batches of the stream ``peer:<sender>`` it holds
durably; it first waits for the commits of a previous connection of that
stream, so the count is never stale), the sender sends its batches from the
n-th on, each as it is stored (an 8-byte header: messages, bytes; then the
serialized batch), and the receiver answers cumulative ``ACK <n>\\n`` after
the commits that log them.  Input from peers is never refused because the
receiver's own outboxes are full (two full workers would deadlock): it does
not count against the input budget, which the senders' outbox bounds
(``--peer-outbox-max``) keep in check.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from . import auth
from .base import PEER
from .resumable_sink import ProtocolError, ResumableTCPSink
from .resume import StreamRegistry
from .tcp_sink import OutboxQueue

HEADER_SIZE = 8  # messages (u32), bytes (u32) of a peer batch
RECV_SIZE = 256 * 1024


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream whose first bytes were already read (during the
    handshake): they come out first."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes):
        self.stream = stream
        self.socket = stream.socket
        self._prefix = bytes(prefix)

    async def receive_some(self, max_bytes=None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def open_authenticated(address: tuple[str, int], secret: bytes,
                             me: str) -> tuple[PrefixedStream, str]:
    """Connect to a worker's port and authenticate: (stream, its name)."""
    stream = await trio.open_tcp_stream(*address)
    buf = bytearray()
    try:
        name = await auth.connect(stream, secret, me, buf)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return PrefixedStream(stream, bytes(buf)), name


class ChannelSender(ResumableTCPSink):
    """The channel to one peer: a resumable sink whose "outputs" are this
    worker's peer batches for it, over the peer's data port."""

    unit = "peer batches"

    def __init__(self, peer: str, index: int, queue: OutboxQueue,
                 on_delivered: Callable[[int, int], None], log: logging.Logger,
                 me: str, secret: bytes,
                 address_of: Callable[[str], tuple[str, int] | None],
                 limiter: trio.CapacityLimiter | None = None):
        spec = _ChannelSpec(index, peer)
        super().__init__(spec, queue, on_delivered, log, f"peer:{me}",
                         backoff=(0.05, 1.0), limiter=limiter)
        self.peer = peer
        self.me = me
        self.secret = secret
        self.address_of = address_of
        self.address_known = trio.Event()

    async def connect(self) -> PrefixedStream:
        delay, failures, last = self.backoff[0], 0, None
        while True:
            address = self.address_of(self.peer)
            if address is None:  # not known yet (the peer is starting)
                await trio.sleep(delay)
                continue
            try:
                stream, name = await open_authenticated(address, self.secret, self.me)
                if name != self.peer:
                    await trio.aclose_forcefully(stream)
                    raise auth.AuthError(f"{address[0]}:{address[1]} is worker "
                                         f"{name!r}, not {self.peer!r}")
                if failures:
                    self.log.info("channel to worker %r: connected after %d "
                                  "failed attempts", self.peer, failures)
                return stream
            except (OSError, auth.AuthError, trio.TooSlowError,
                    trio.BrokenResourceError, trio.ClosedResourceError) as e:
                failures += 1
                reason = f"{type(e).__name__}: {e}" if isinstance(
                    e, auth.AuthError) else _reason(e)
                if failures == 1 or failures % 50 == 0 or reason != last:
                    self.log.warning("channel to worker %r at %s:%d: %s; retrying, "
                                     "%d peer batches waiting", self.peer, *address,
                                     reason, self.queue.queued_outputs)
                last = reason
                await trio.sleep(delay)
                delay = min(self.backoff[1], delay * 2)

    async def _greet(self, stream, lines) -> None:
        await stream.send_all(b"CHANNEL\n")

    def _payload(self, row, k: int) -> bytes:
        return row.data  # one peer batch per row, sent as stored

    def _lost(self, have: int) -> int:
        raise ProtocolError(
            f"worker {self.peer!r} holds {have} peer batches from this worker, "
            f"but acknowledged {self.queue.delivered}: it lost batches it had "
            f"made durable (was its resilience directory rolled back?)")


class _ChannelSpec:
    """What the sink machinery needs to name a channel in its log lines."""

    def __init__(self, index: int, peer: str):
        self.index = index
        self.label = f"channel to worker {peer!r}"
        self.pipeline = ""
        self.position = 0


class DataServer:
    """A worker's data port: authenticated channels from peers, and client
    connections forwarded to the owner of their resumable stream."""

    def __init__(self, me: str, secret: bytes, inbox, registry: StreamRegistry,
                 peer_source: int, log: logging.Logger,
                 forwarded: Callable[[int, trio.abc.Stream, str], Awaitable[None]]):
        self.me = me
        self.secret = secret
        self.inbox = inbox
        self.registry = registry
        self.peer_source = peer_source
        self.log = log
        self.forwarded = forwarded
        self.listeners: list[trio.SocketListener] = []
        self.strangers = 0

    async def bind(self, host: str, port: int) -> tuple[str, int]:
        self.listeners = await trio.open_tcp_listeners(port, host=host)
        return self.listeners[0].socket.getsockname()[:2]

    async def serve(self) -> None:
        await trio.serve_listeners(self._handle, self.listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = "{}:{}".format(*stream.socket.getpeername()[:2])
        except OSError:
            peer = "unknown"
        buf = bytearray()
        try:
            name = await auth.accept(stream, self.secret, self.me, buf)
            with trio.fail_after(auth.TIMEOUT):
                what = await auth.read_line(stream, buf)
        except (auth.AuthError, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError, OSError) as e:
            self.strangers += 1
            self.log.warning("data port: dropped a connection from %s: %s", peer,
                             e if str(e) else type(e).__name__)
            await trio.aclose_forcefully(stream)
            return
        rest = PrefixedStream(stream, bytes(buf))
        try:
            if what == b"CHANNEL":
                await self._channel(name, rest)
            elif what.startswith(b"FORWARD "):
                parts = what.split(b" ", 2)
                await self.forwarded(int(parts[1]), rest,
                                     f"forwarded by worker {name!r} for "
                                     f"{parts[2].decode('ascii', 'replace')}")
            else:
                self.log.warning("data port: worker %r asked for %r; closing",
                                 name, what[:60])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self.log.info("data port: connection of worker %r closed: %s", name, e)
        finally:
            await trio.aclose_forcefully(stream)

    async def _channel(self, sender: str, stream: PrefixedStream) -> None:
        key = ("peer", f"peer:{sender}")
        conn = _ChannelConnection(stream)
        try:
            n = await self.registry.claim(key, conn)
            with conn.cancel_scope:
                await stream.send_all(b"HAVE %d\n" % n)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.ack_writer, n)
                    await self._read_batches(sender, stream, key, n)
                    nursery.cancel_scope.cancel()
        finally:
            self.registry.release(key, conn)
            conn.closed.set()

    async def _read_batches(self, sender: str, stream, key, seq: int) -> None:
        state = self.registry.get(key)
        data = b""
        origin = f"channel from worker {sender!r}"
        while True:
            units, pos, n = [], 0, len(data)
            while n - pos >= HEADER_SIZE:
                size = int.from_bytes(data[pos + 4:pos + 8], "big")
                end = pos + HEADER_SIZE + size
                if end > n:
                    break
                units.append(data[pos:end])
                pos = end
            if units:
                frames = data[:pos]
                self.inbox.put_nowait(None, ("peer", sender), self.peer_source, units,
                                      frames, key[1], seq, origin, connector=PEER)
                seq += len(units)
                state.accepted = seq
                data = data[pos:]
            more = await stream.receive_some(RECV_SIZE)
            if not more:
                return
            data = data + more if data else more


class _ChannelConnection:
    """What the stream registry needs of a channel's connection."""

    def __init__(self, stream):
        self.stream = stream
        self.cancel_scope = trio.CancelScope()
        self.closed = trio.Event()
        self._target = 0
        self._event = trio.Event()

    def close(self) -> None:
        self.cancel_scope.cancel()

    supersede = close

    def ack(self, n: int) -> None:
        if n > self._target:
            self._target = n
            self._event.set()

    async def ack_writer(self, sent: int) -> None:
        while True:
            await self._event.wait()
            self._event = trio.Event()
            if self._target > sent:
                sent = self._target
                await self.stream.send_all(b"ACK %d\n" % sent)


def _reason(e: BaseException) -> str:
    from .._net import os_error_reason
    return os_error_reason(e)
