"""Channels between workers (DESIGN.md §6), over a worker's data port.

Every connection to a data port first authenticates (``auth``), which also
gives it a session key; then the client says what the connection is for, in
one line sealed with that key (``<text> <tag>\n``, ``auth.Session``):

    CHANNEL <fingerprint>         the sender's peer batches for this worker
    FORWARD <pipeline> <client>   a client connection of a resumable stream
                                  this worker owns, forwarded by the worker
                                  the client reached (the client's bytes
                                  then pass both ways, as the client sent
                                  them)

The fingerprint (a hash of the application's pipelines, steps and states
and of the membership) must equal the receiver's: a worker running another
application or another cluster's membership is refused, loudly.

CHANNEL is the resumable protocol between workers: the receiver answers
``HAVE <n>`` (peer batches of the stream ``peer:<sender>`` it holds
durably; it first waits for the commits of a previous connection of that
stream, so the count is never stale), the sender sends its batches from the
n-th on, each as it is stored (an 8-byte header: messages, bytes; then the
serialized batch) followed by a 16-byte tag over its number and bytes, and
the receiver answers cumulative ``ACK <n>`` after the commits that log them
(``HAVE`` and ``ACK`` lines sealed too).  A batch whose tag does not verify
is never deserialized: the connection is closed and the sender resends.

Input from peers is never refused because the receiver's own outboxes are
full (two full workers would deadlock): the engine takes peers' input even
then.  It counts toward the inbox (so a backlog from peers pauses this
worker's own sources first), and a channel stops reading only while the
inbox holds ``PEER_INBOX_FACTOR`` times its budget; the senders' outbox
bounds (``--peer-outbox-max``) keep the rest in check.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from . import auth
from .base import PEER
from .._compat import BaseExceptionGroup
from .resumable_sink import ProtocolError, ResumableTCPSink, _first_leaf
from .resume import StreamRegistry
from .tcp_sink import OutboxQueue

HEADER_SIZE = 8  # messages (u32), bytes (u32) of a peer batch
RECV_SIZE = 256 * 1024
# a channel reads on while the inbox holds less than this many times its
# budget (--max-inbox...); beyond, it waits for the engine to take some
PEER_INBOX_FACTOR = 4


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


async def open_authenticated(address: tuple[str, int], secret: bytes, me: str,
                             expect: str | None = None
                             ) -> tuple[PrefixedStream, str, auth.Session]:
    """Connect to a worker's port and authenticate: (stream, its name, the
    session).  With ``expect``, a port with another worker's name is
    refused before this side proves anything."""
    stream = await trio.open_tcp_stream(*address)
    buf = bytearray()
    try:
        name, session = await auth.connect(stream, secret, me, buf, expect)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return PrefixedStream(stream, bytes(buf)), name, session


class ChannelSender(ResumableTCPSink):
    """The channel to one peer: a resumable sink whose "outputs" are this
    worker's peer batches for it, over the peer's data port."""

    unit = "peer batches"

    def __init__(self, peer: str, index: int, queue: OutboxQueue,
                 on_delivered: Callable[[int, int], None], log: logging.Logger,
                 me: str, secret: bytes,
                 address_of: Callable[[str], tuple[str, int] | None],
                 fingerprint: str, limiter: trio.CapacityLimiter | None = None):
        spec = _ChannelSpec(index, peer)
        super().__init__(spec, queue, on_delivered, log, f"peer:{me}",
                         backoff=(0.05, 1.0), limiter=limiter)
        self.peer = peer
        self.me = me
        self.secret = secret
        self.address_of = address_of
        self.fingerprint = fingerprint
        self.session: auth.Session | None = None  # the current connection's

    async def connect(self) -> PrefixedStream:
        delay, failures, last = self.backoff[0], 0, None
        while True:
            address = self.address_of(self.peer)
            if address is None:  # not known yet (the peer is starting)
                await trio.sleep(delay)
                continue
            try:
                stream, _, self.session = await open_authenticated(
                    address, self.secret, self.me, expect=self.peer)
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
        await stream.send_all(self.session.seal(b"CHANNEL " + self.fingerprint.encode()))

    def _open_line(self, line: bytes) -> bytes:
        try:
            return self.session.open(line)
        except auth.AuthError as e:
            raise ProtocolError(str(e)) from None

    def _payload(self, row, k: int) -> bytes:
        # one peer batch per row, sent as stored, then its tag
        return row.data + self.session.tag(row.first_seq, row.data)

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
                 forwarded: Callable[[int, trio.abc.Stream, str], Awaitable[None]],
                 fingerprint: str = "", members: tuple[str, ...] = ()):
        self.me = me
        self.fingerprint = fingerprint.encode()
        self.members = set(members)
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
        got = await auth.accept_request(stream, self.secret, self.me, self.log,
                                        "data port")
        if got is None:
            self.strangers += 1
            return
        peer, name, session, what, buf = got
        rest = PrefixedStream(stream, bytes(buf))
        try:
            if self.members and name not in self.members:
                self.log.error("data port: %s authenticated as worker %r, which is "
                               "not a member of this cluster (%s); closing", peer,
                               name, ", ".join(sorted(self.members)))
            elif what.startswith(b"CHANNEL "):
                if what[8:] != self.fingerprint:
                    self.log.error(
                        "data port: worker %r runs another application or "
                        "membership (fingerprint %s, this worker's %s): every "
                        "worker must run the same application with the same "
                        "cluster; refusing its channel", name,
                        what[8:40].decode("ascii", "replace"),
                        self.fingerprint.decode())
                else:
                    await self._channel(name, rest, session)
            elif what.startswith(b"FORWARD "):
                parts = what.split(b" ", 2)
                if len(parts) != 3 or not parts[1].isdigit():
                    self.log.warning("data port: worker %r sent a malformed "
                                     "FORWARD %r; closing", name, what[:60])
                    return
                await self.forwarded(int(parts[1]), rest,
                                     f"forwarded by worker {name!r} for "
                                     f"{parts[2].decode('ascii', 'replace')}")
            else:
                self.log.warning("data port: worker %r asked for %r; closing",
                                 name, what[:60])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self.log.info("data port: connection of worker %r closed: %s", name, e)
        except auth.AuthError as e:
            self.log.error("data port: channel of worker %r: %s; closing (it "
                           "reconnects)", name, e)
        finally:
            await trio.aclose_forcefully(stream)

    async def _channel(self, sender: str, stream: PrefixedStream,
                       session: auth.Session) -> None:
        key = ("peer", f"peer:{sender}")
        conn = _ChannelConnection(stream, session)
        try:
            n = await self.registry.claim(key, conn)
            with conn.cancel_scope:
                await stream.send_all(session.seal(b"HAVE %d" % n))
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(conn.ack_writer, n)
                        await self._read_batches(sender, stream, key, n, session)
                        nursery.cancel_scope.cancel()
                except BaseExceptionGroup as eg:
                    # a reset connection is the caller's to log, not a
                    # group that would stop the worker
                    raise _first_leaf(eg) from None
        finally:
            self.registry.release(key, conn)
            conn.closed.set()

    async def _read_batches(self, sender: str, stream, key, seq: int,
                            session: auth.Session) -> None:
        """Peer batches, each verified against its tag before it is
        accepted; a channel stops reading while the inbox holds more than
        ``PEER_INBOX_FACTOR`` times its budget (the engine always takes
        peers' input, so this never waits on a full outbox)."""
        state = self.registry.get(key)
        buf = bytearray()
        origin = f"channel from worker {sender!r}"
        tag = auth.TAG_SIZE
        inbox = self.inbox
        while True:
            units, pos, n = [], 0, len(buf)
            while n - pos >= HEADER_SIZE:
                size = int.from_bytes(buf[pos + 4:pos + 8], "big")
                end = pos + HEADER_SIZE + size
                if end + tag > n:
                    break
                unit = bytes(buf[pos:end])
                if not session.verify(seq + len(units), unit, bytes(buf[end:end + tag])):
                    raise auth.AuthError(f"peer batch {seq + len(units)} does not "
                                         f"verify under the session key")
                units.append(unit)
                pos = end + tag
            if units:
                inbox.put_nowait(None, ("peer", sender), self.peer_source, units,
                                 b"".join(units), key[1], seq, origin,
                                 connector=PEER)
                seq += len(units)
                state.accepted = seq
                del buf[:pos]
            while inbox.bytes >= inbox.max_bytes * PEER_INBOX_FACTOR:
                await inbox.wait_space()
            more = await stream.receive_some(RECV_SIZE)
            if not more:
                return
            buf += more


class _ChannelConnection:
    """What the stream registry needs of a channel's connection."""

    def __init__(self, stream, session: auth.Session):
        self.stream = stream
        self.session = session
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
                await self.stream.send_all(self.session.seal(b"ACK %d" % sent))


def _reason(e: BaseException) -> str:
    from .._net import os_error_reason
    return os_error_reason(e)
