"""Receive a Wallaroo sink's outputs exactly once: the receiver side of the
resumable sink protocol (DESIGN.md §5), over trio, for your own store.

A worker started with ``--resumable-sinks`` connects once per sink and
says ``WALLAROO-OUT 1 <stream>\\n``; the receiver answers ``HAVE <n>\\n``
(how many outputs of that stream it holds durably); the worker sends every
output from the n-th on, each framed by a 4-byte big-endian length; the
receiver answers ``ACK <n>\\n`` as outputs become durable.  After a crash of
either side the worker resends from HAVE, so the receiver holds each output
exactly once.  ``ResumableReceiver`` speaks all of that; you give it a
*store*, which decides what durable means:

``have(stream) -> int``
    How many outputs of ``stream`` it holds durably (0 for a stream it has
    never seen).  Only called when everything appended for that stream has
    been through ``sync()``: at each handshake (answered as ``HAVE``) and
    right after each ``sync()`` (answered as ``ACK`` when it grew).
``append(stream, first, outputs)``
    Keep ``outputs`` (a list of ``bytes``), numbered ``first``,
    ``first + 1``, ...  ``first`` is the last ``have(stream)`` answered at a
    handshake plus what was appended since, so there are no gaps.  A store
    whose ``have`` counts fewer than it was given (it drops a torn tail,
    say) gets those numbers again after the next handshake: replace them.
    Raise ``OutputsRejected(reason)`` to refuse the outputs: the worker gets
    ``ERROR <reason>`` and its connection is closed (it retries with
    backoff); the next ``append`` of that stream starts at ``have()`` again.
``sync()``
    Make what was appended durable (commit, fsync).  Called once per
    *group commit*: what arrived on every connection during the previous
    commit (plus ``group_delay`` seconds) goes through one ``sync()``.

The three are called from a worker thread, one call at a time, never
concurrently: a store may block, and needs no lock (a ``sqlite3``
connection needs ``check_same_thread=False``, since the thread may change
from call to call).  Any exception other than ``OutputsRejected`` stops
``serve()`` with that exception: nothing that was not kept is acknowledged.

Everything else is the library's: many streams at once (one connection
per worker and sink), ACKs coalesced and never going backwards, a new
connection for a stream closing the old one and waiting for its outputs
to be synced before answering HAVE (so HAVE is never stale and one stream
is never appended from two connections at once), ``ERROR`` for a bad
handshake or a frame over ``max_output_size``, back-pressure when
``max_pending`` bytes wait for the store, and a log (``logging`` logger
``wallaroo.receiver``) whose lines name the stream and the peer.

Example (outputs in a SQLite table; ``examples/receiver`` has a complete
application)::

    import sqlite3
    from wallaroo.receiver import ResumableReceiver

    class SQLiteStore:
        def __init__(self, path):
            self.db = sqlite3.connect(path, check_same_thread=False)
            self.db.execute("CREATE TABLE IF NOT EXISTS outputs (stream TEXT, "
                            "n INTEGER, data BLOB, PRIMARY KEY (stream, n))")

        def have(self, stream):
            return self.db.execute("SELECT coalesce(max(n) + 1, 0) FROM outputs "
                                   "WHERE stream = ?", (stream,)).fetchone()[0]

        def append(self, stream, first, outputs):
            self.db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?)",
                                [(stream, first + i, o) for i, o in enumerate(outputs)])

        def sync(self):
            self.db.commit()

    ResumableReceiver(SQLiteStore("outputs.db")).run("127.0.0.1", 7002)

``run()`` blocks until SIGINT or SIGTERM, then finishes what it received
(a last commit, the last ACKs) and returns its ``statistics()``.  In a trio
program, ``port = await nursery.start(receiver.serve, host, 0)`` gives the
bound port; ``receiver.stop()`` ends ``serve()`` the same graceful way, and
cancelling it ends it at once (what was not synced is simply not
acknowledged, and the worker sends it again).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import trio

from ._net import format_address, open_listeners, peer_address
from ._sink_wire import (MAX_LINE, FrameSplitter, FrameTooLarge, HandshakeError,
                         ack_line, check_prefix, error_line, have_line, parse_handshake)

__all__ = ["MemoryStore", "OutputsRejected", "ReceiverStatistics",
           "ResumableReceiver", "Store"]

log = logging.getLogger("wallaroo.receiver")

RECV_SIZE = 256 * 1024
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024


class Store(Protocol):
    """What ``ResumableReceiver`` needs of a store (see the module docs)."""

    def have(self, stream: str) -> int: ...

    def append(self, stream: str, first: int, outputs: list[bytes]) -> None: ...

    def sync(self) -> None: ...


class OutputsRejected(Exception):
    """Raised by ``Store.append`` to refuse outputs; the message is sent to
    the worker as ``ERROR <message>``."""


class MemoryStore:
    """A store in memory: ``outputs[stream]`` is the list of outputs, and
    ``have`` counts what the last ``sync()`` covered.  Durable only while
    the process lives; for tests and trying things out."""

    def __init__(self) -> None:
        self.outputs: dict[str, list[bytes]] = {}
        self.synced: dict[str, int] = {}
        self.syncs = 0

    def have(self, stream: str) -> int:
        return self.synced.get(stream, 0)

    def append(self, stream: str, first: int, outputs: list[bytes]) -> None:
        kept = self.outputs.setdefault(stream, [])
        if first > len(kept):
            raise ValueError(f"stream {stream!r}: outputs from {first} appended "
                             f"to {len(kept)}")
        del kept[first:]
        kept.extend(outputs)

    def sync(self) -> None:
        self.syncs += 1
        self.synced = {s: len(kept) for s, kept in self.outputs.items()}


@dataclass(frozen=True)
class ReceiverStatistics:
    connections: int  # accepted since serve() began
    live: int  # connections open now
    refused: int  # connections answered with ERROR
    outputs: int  # whole outputs received
    bytes: int  # their bytes (frame headers not counted)
    commits: int  # group commits: sync() calls
    dropped_outputs: int  # incomplete outputs at the end of a connection
    dropped_bytes: int
    streams: Mapping[str, int]  # per stream seen: outputs durable (last have())


class _Stream:
    __slots__ = ("name", "conns", "active", "acked", "held")

    def __init__(self, name: str):
        self.name = name
        self.conns: list[_Conn] = []  # connections claiming it, oldest first
        self.active: _Conn | None = None  # the one that got HAVE
        self.acked = 0  # what the active connection was told (HAVE or ACK)
        self.held = 0  # the store's last have()


class _Conn:
    __slots__ = ("sock", "peer", "name", "scope", "read_scope", "done", "framing",
                 "next", "pending", "pending_first", "pending_bytes", "unsynced",
                 "reading", "error", "ack_target", "ack_sent", "wake", "outputs",
                 "how")

    def __init__(self, sock: trio.SocketStream, peer: str):
        self.sock, self.peer = sock, peer
        self.name: str | None = None
        self.scope = trio.CancelScope()  # the whole connection
        self.read_scope = trio.CancelScope()  # reading frames only
        self.done = trio.Event()
        self.framing = False  # past HAVE, reading frames
        self.next = 0  # number of the next output
        self.pending: list[bytes] = []  # handed, not yet taken by a commit
        self.pending_first = 0
        self.pending_bytes = 0
        self.unsynced = 0  # handed, not yet through sync()
        self.reading = True
        self.error: str | None = None  # sent as ERROR once the rest is acked
        self.ack_target = self.ack_sent = 0
        self.wake = trio.Event()
        self.outputs = 0
        self.how = "closed by the worker"

    def label(self) -> str:
        return (f"stream {self.name!r} from {self.peer}" if self.name
                else f"connection from {self.peer}")


class ResumableReceiver:
    """The receiver side of the resumable sink protocol over ``store``.

    ``max_output_size``: a frame announcing more gets ``ERROR``.
    ``group_delay``: seconds a commit waits for more outputs to gather.
    ``max_pending``: bytes received and not yet synced above which
    connections stop reading (bounds memory and how much one commit
    takes).  ``handshake_timeout``: seconds a new
    connection has to send its handshake line.  ``drain_timeout``: seconds
    ``stop()`` gives connections to be synced and acknowledged.
    ``on_durable(counts)``: called in the event loop after each commit with
    the durable count of every stream it covered, once their ACKs are
    queued.
    """

    def __init__(self, store: Store, *, max_output_size: int = DEFAULT_MAX_OUTPUT,
                 group_delay: float = 0.002, max_pending: int = 8 * 1024 * 1024,
                 handshake_timeout: float = 30.0, drain_timeout: float = 5.0,
                 on_durable: Callable[[dict[str, int]], None] | None = None):
        self.store = store
        self.max_output_size = max_output_size
        self.group_delay = group_delay
        self.max_pending = max_pending
        self.handshake_timeout = handshake_timeout
        self.drain_timeout = drain_timeout
        self.on_durable = on_durable
        self.address = ""  # HOST:PORT once listening
        self._streams: dict[str, _Stream] = {}
        self._conns: set[_Conn] = set()
        self._dirty: dict[_Conn, None] = {}  # connections with pending outputs
        self._dirty_event: trio.Event | None = None
        self._committed: trio.Event | None = None
        self._stop_event: trio.Event | None = None
        self._stop_asked = False
        self._failure: BaseException | None = None  # the store's, raised by serve()
        self._outer: trio.CancelScope | None = None  # serve()'s, cancelled on failure
        self._limiter = trio.CapacityLimiter(1)
        self._pending_bytes = 0
        self._counts = dict(connections=0, refused=0, outputs=0, bytes=0, commits=0,
                            dropped_outputs=0, dropped_bytes=0)

    # -- public --------------------------------------------------------------

    def statistics(self) -> ReceiverStatistics:
        return ReceiverStatistics(live=len(self._conns), **self._counts,
                                  streams={n: s.held for n, s in self._streams.items()})

    def stop(self) -> None:
        """End ``serve()``: stop accepting and reading, sync what arrived,
        send the last ACKs (within ``drain_timeout``), close.  Call it from
        the event loop (a callback, a task); before ``serve()`` starts, it
        makes ``serve()`` return as soon as it listens."""
        self._stop_asked = True
        if self._stop_event is not None:
            self._stop_event.set()

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *,
                    listeners: list[trio.SocketListener] | None = None,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port`` (or serve the given ``listeners``, which
        it then closes) until ``stop()``, or until cancelled.
        ``task_status.started(port)`` reports the bound port."""
        if self._stop_event is not None:
            raise RuntimeError("this ResumableReceiver is already serving")
        self._stop_event, self._dirty_event = trio.Event(), trio.Event()
        self._committed = trio.Event()
        if self._stop_asked:
            self._stop_event.set()
        if listeners is None:
            listeners = await open_listeners(host, port)
        try:
            bound_host, bound_port = listeners[0].socket.getsockname()[:2]
            self.address = format_address(bound_host, bound_port)
            async with trio.open_nursery() as outer:
                outer.start_soon(self._commit_loop, outer.cancel_scope)
                async with trio.open_nursery() as conns:
                    accepting = trio.CancelScope()
                    conns.start_soon(self._accept, listeners, conns, accepting)
                    log.debug("listening on %s", self.address)
                    task_status.started(bound_port)
                    await self._stop_event.wait()
                    accepting.cancel()
                    for conn in list(self._conns):
                        conn.how = "stopped by the receiver"
                        (conn.read_scope if conn.framing else conn.scope).cancel()
                    conns.cancel_scope.deadline = trio.current_time() + self.drain_timeout
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
        if self._failure is not None:
            raise self._failure

    def run(self, host: str = "127.0.0.1", port: int = 0) -> ReceiverStatistics:
        """``serve()`` in a new trio run, until SIGINT or SIGTERM (which
        ``stop()`` it); returns the statistics."""
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_on_signals)
                await self.serve(host, port)
                nursery.cancel_scope.cancel()

        trio.run(main)
        return self.statistics()

    # -- serving ---------------------------------------------------------------

    async def _stop_on_signals(self) -> None:
        try:
            receiver = trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        except RuntimeError:  # not the main thread: no signals to catch
            return
        with receiver as signals:
            async for signum in signals:
                log.info("%s: stopping", signal.Signals(signum).name)
                self.stop()
                return

    async def _accept(self, listeners, conns: trio.Nursery,
                      scope: trio.CancelScope) -> None:
        with scope:
            await trio.serve_listeners(self._handle, listeners, handler_nursery=conns)

    async def _handle(self, sock: trio.SocketStream) -> None:
        conn = _Conn(sock, peer_address(sock))
        self._counts["connections"] += 1
        self._conns.add(conn)
        st: _Stream | None = None
        try:
            with conn.scope:
                try:
                    with trio.fail_after(self.handshake_timeout):
                        name, rest = await self._read_handshake(conn)
                except HandshakeError as e:
                    await self._refuse(conn, str(e))
                    return
                except trio.TooSlowError:
                    await self._refuse(conn, f"no handshake line within "
                                             f"{self.handshake_timeout:g}s")
                    return
                if name is None:
                    conn.how = "closed before its handshake"
                    return
                conn.name = name
                st = self._streams.get(name)
                if st is None:
                    st = self._streams[name] = _Stream(name)
                await self._claim(st, conn)
                try:
                    n = await trio.to_thread.run_sync(self._have, name,
                                                      limiter=self._limiter)
                except Exception as e:  # the store failed: serve() raises it
                    self._fail(e)
                    return
                st.held = st.acked = conn.next = conn.ack_sent = conn.ack_target = n
                st.active = conn
                conn.framing = True
                await sock.send_all(have_line(n))
                log.info("%s: HAVE %d", conn.label(), n)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, conn)
                    with conn.read_scope:
                        await self._read_frames(conn, rest)
                    conn.reading = False
                    conn.wake.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            conn.how = f"lost: {_cause(e)}"
        finally:
            conn.reading = False
            self._conns.discard(conn)
            if st is not None:
                st.conns.remove(conn)
                if st.active is conn:
                    st.active = None
            if conn.name:
                log.info("%s: %s after %d outputs", conn.label(), conn.how, conn.outputs)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(sock)
            conn.done.set()  # closed before a successor is answered

    async def _read_handshake(self, conn: _Conn) -> tuple[str | None, bytes]:
        buf = b""
        while True:
            data = await conn.sock.receive_some(RECV_SIZE)
            if not data:
                return None, b""
            buf += data
            check_prefix(buf)
            i = buf.find(b"\n")
            if 0 <= i <= MAX_LINE:
                return parse_handshake(buf[:i]), buf[i + 1:]
            if len(buf) > MAX_LINE:
                raise HandshakeError(f"no newline in the first {MAX_LINE} bytes; the "
                                     f"handshake is 'WALLAROO-OUT 1 <stream>\\n'")

    async def _refuse(self, conn: _Conn, reason: str) -> None:
        self._counts["refused"] += 1
        conn.how = f"refused: {reason}"
        log.warning("%s: refused: %s", conn.label(), reason)
        with trio.move_on_after(1.0):
            try:
                await conn.sock.send_all(error_line(reason))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _claim(self, st: _Stream, conn: _Conn) -> None:
        """Make ``conn`` the stream's connection: close the older ones and
        wait until what they handed over is synced, so HAVE is not stale."""
        olds = list(st.conns)
        st.conns.append(conn)
        for old in olds:
            old.how = f"superseded by a new connection from {conn.peer}"
            old.scope.cancel()
        for old in olds:
            await old.done.wait()
        while any(old.unsynced for old in olds):
            await self._committed.wait()

    def _have(self, name: str) -> int:
        n = self.store.have(name)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise TypeError(f"{type(self.store).__name__}.have({name!r}) returned "
                            f"{n!r}, not a count (an int >= 0)")
        return n

    async def _read_frames(self, conn: _Conn, data: bytes) -> None:
        split = FrameSplitter(self.max_output_size)
        try:
            while True:
                if data:
                    try:
                        self._hand(conn, split.feed(data))
                    except FrameTooLarge as e:
                        self._hand(conn, e.outputs)
                        conn.error = (f"output {conn.next} of stream {conn.name}: a frame "
                                      f"of {e.size} bytes is over this receiver's limit "
                                      f"of {e.limit} bytes")
                        conn.how = f"refused: {conn.error}"
                        self._counts["refused"] += 1
                        log.warning("%s: %s; closing it", conn.label(), conn.error)
                        return
                    while self._pending_bytes > self.max_pending:
                        await self._committed.wait()
                data = await conn.sock.receive_some(RECV_SIZE)
                if not data:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            conn.how = f"lost: {_cause(e)}"
        finally:
            if split.pending:
                self._counts["dropped_outputs"] += 1
                self._counts["dropped_bytes"] += split.pending
                conn.how += f" (an incomplete output of {split.pending} bytes dropped)"

    def _hand(self, conn: _Conn, outputs: list[bytes]) -> None:
        if not outputs:
            return
        size = sum(map(len, outputs))
        if not conn.pending:
            conn.pending_first = conn.next
            self._dirty[conn] = None
            self._dirty_event.set()
        conn.pending.extend(outputs)
        conn.pending_bytes += size
        conn.next += len(outputs)
        conn.unsynced += len(outputs)
        conn.outputs += len(outputs)
        self._pending_bytes += size
        self._counts["outputs"] += len(outputs)
        self._counts["bytes"] += size

    async def _write(self, conn: _Conn) -> None:
        """ACKs as the target grows; once reading has ended and everything
        read is synced, the last ACK, then the ERROR if there is one."""
        sock = conn.sock
        try:
            while True:
                if conn.ack_target > conn.ack_sent:
                    n = conn.ack_target
                    await sock.send_all(ack_line(n))
                    conn.ack_sent = n
                    continue
                if not conn.reading and not conn.unsynced:
                    if conn.error:
                        await sock.send_all(error_line(conn.error))
                    return
                await conn.wake.wait()
                conn.wake = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            conn.how = f"lost: {_cause(e)}"
            conn.read_scope.cancel()

    # -- group commit ----------------------------------------------------------

    async def _commit_loop(self, outer: trio.CancelScope) -> None:
        self._outer = outer
        try:
            await self._commits()
        except Exception as e:
            self._fail(e)

    def _fail(self, e: Exception) -> None:
        """The store failed: acknowledge nothing more, close everything, and
        let serve() raise ``e``."""
        if self._failure is None:
            log.error("the store failed: %s: %s", type(e).__name__, e)
            self._failure = e
        self._outer.cancel()

    async def _commits(self) -> None:
        while True:
            await self._dirty_event.wait()
            if self.group_delay > 0 and not self._stop_event.is_set():
                with trio.move_on_after(self.group_delay):
                    await self._stop_event.wait()  # stop() commits at once
            self._dirty_event = trio.Event()
            batches = []
            for conn in self._dirty:
                batches.append((conn, conn.name, conn.pending_first, conn.pending,
                                conn.pending_bytes))
                conn.pending, conn.pending_bytes = [], 0
            self._dirty = {}
            durable, rejected = await trio.to_thread.run_sync(
                self._commit, batches, limiter=self._limiter)
            self._counts["commits"] += 1
            for conn, _, _, outputs, size in batches:
                conn.unsynced -= len(outputs)
                self._pending_bytes -= size
                conn.wake.set()
            for name, n in durable.items():
                st = self._streams[name]
                st.held = n
                if st.active is not None and n > st.acked:
                    st.acked = st.active.ack_target = n
                    st.active.wake.set()
            for conn, reason in rejected.items():
                self._reject(conn, reason)
            self._committed.set()
            self._committed = trio.Event()
            if self.on_durable is not None:
                self.on_durable(durable)

    def _commit(self, batches) -> tuple[dict[str, int], dict[_Conn, str]]:
        """In the store's thread: append every batch, one sync, then have()
        of every stream covered."""
        store = self.store
        rejected: dict[_Conn, str] = {}
        for conn, name, first, outputs, _ in batches:
            try:
                store.append(name, first, outputs)
            except OutputsRejected as e:
                rejected[conn] = str(e) or f"{type(store).__name__} rejected outputs"
        store.sync()
        return {name: self._have(name) for _, name, _, _, _ in batches}, rejected

    def _reject(self, conn: _Conn, reason: str) -> None:
        log.warning("%s: the store rejected outputs: %s; closing it", conn.label(), reason)
        self._counts["refused"] += 1
        self._pending_bytes -= conn.pending_bytes
        conn.unsynced -= len(conn.pending)
        conn.pending, conn.pending_bytes = [], 0
        self._dirty.pop(conn, None)
        if conn.error is None:
            conn.error = reason
            conn.how = f"refused: {reason}"
        conn.read_scope.cancel()
        conn.wake.set()


def _cause(e: BaseException) -> str:
    cause = e.__cause__ or e
    return str(getattr(cause, "strerror", None) or cause or type(cause).__name__)
