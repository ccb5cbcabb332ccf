"""Sinks: committed outputs wait in an ``OutboxQueue`` until delivered, and a
writer sends them over TCP, reconnecting with backoff while the receiver is
away.

Plain sinks (``TCPSink``): an output is delivered once ``send_all``
returned ("written to the socket", DESIGN.md §5).  If the connection
breaks, the rows not written completely are sent again, whole, on the next
connection, so a receiver sees byte-identical resends and an incomplete
record at the end of a dead connection.  The sink also watches for the
receiver closing its end, so a receiver that goes away between writes loses
nothing.  Resumable sinks (``sink_resumable.ResumableTCPSink``) deliver
what the receiver acknowledges, exactly once.

The queue holds outputs in memory up to ``memory_max`` bytes.  With a
durable store the outbox on disk holds them all: past the memory bound new
rows stay only on disk ("spilled") and are read back as the queue drains,
and the sources stop only when the outbox passes ``outbox_max`` bytes
(``--sink-outbox-max``).  Without one, memory is the outbox: the sources
stop when it is full.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable

import trio

from .._net import os_error_reason
from .._spec import SinkSpec
from ..recovery.records import OutputRow

WRITE_COALESCE = 1024 * 1024


class OutboxQueue:
    """One sink's outputs from the oldest not yet delivered on, in order."""

    def __init__(self, sink: int, memory_max: int, outbox_max: int,
                 reader: Callable[[int, int, int], list[OutputRow]] | None = None,
                 delivered: int = 0):
        self.sink = sink
        self.memory_max = memory_max
        self.outbox_max = outbox_max
        self.reader = reader  # (sink, from_seq, max_bytes) -> rows, blocking
        self.rows: collections.deque[OutputRow] = collections.deque()
        self.memory = 0  # bytes of self.rows
        self.spilled_from: int | None = None  # first output only on disk
        self.produced = delivered  # outputs committed (end of the newest row)
        self.delivered = delivered  # the delivery position
        self.base = 0  # resumable: the receiver's output n is our n + base
        self._sizes: collections.deque[tuple[int, int]] = collections.deque()
        self.outbox_bytes = 0  # every undelivered row, in memory or not
        self._more = trio.Event()
        self._room = trio.Event()
        self._empty = trio.Event()
        self._empty.set()

    # -- the engine's side ---------------------------------------------
    def enqueue(self, row: OutputRow) -> None:
        n = len(row.data)
        self._sizes.append((row.end_seq, n))
        self.outbox_bytes += n
        self.produced = max(self.produced, row.end_seq)
        if self.spilled_from is None and (self.reader is None or not self.rows
                                          or self.memory + n <= self.memory_max):
            self.rows.append(row)
            self.memory += n
        elif self.spilled_from is None:
            self.spilled_from = row.first_seq
        if self._empty.is_set():
            self._empty = trio.Event()
        self._more.set()

    def has_room(self) -> bool:
        if self.reader is None:
            return self.memory < self.memory_max
        return self.outbox_bytes < self.outbox_max

    async def wait_room(self) -> None:
        while not self.has_room():
            await self._room.wait()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    @property
    def queued_outputs(self) -> int:
        return self.produced - self.delivered

    @property
    def queued_bytes(self) -> int:
        return self.outbox_bytes

    # -- the writer's side ---------------------------------------------
    def release(self, n: int) -> bool:
        """Outputs before ``n`` are delivered; False if nothing moved."""
        if n <= self.delivered:
            return False
        self.delivered = n
        rows = self.rows
        while rows and rows[0].end_seq <= n:
            self.memory -= len(rows.popleft().data)
        sizes = self._sizes
        while sizes and sizes[0][0] <= n:
            self.outbox_bytes -= sizes.popleft()[1]
        if self.spilled_from is not None and self.spilled_from < n:
            self.spilled_from = n if n < self.produced else None
        if n >= self.produced:
            self._empty.set()
        self._room.set()
        self._room = trio.Event()
        self._more.set()  # memory freed: spilled rows may be read back now
        return True

    async def wait_more(self) -> None:
        await self._more.wait()
        self._more = trio.Event()

    async def load(self, limiter: trio.CapacityLimiter) -> bool:
        """Read spilled rows back from the store while memory has room;
        True if any were loaded."""
        if self.spilled_from is None or self.memory > self.memory_max // 2:
            return False
        start = self.spilled_from
        rows = await trio.to_thread.run_sync(
            self.reader, self.sink, start, max(1, self.memory_max // 4),
            limiter=limiter)
        if self.spilled_from != start:  # delivered meanwhile (a resend)
            return True
        for row in rows:
            if row.end_seq <= self.delivered or (self.rows and row.first_seq
                                                 < self.rows[-1].end_seq):
                continue
            self.rows.append(row)
            self.memory += len(row.data)
        end = self.rows[-1].end_seq if self.rows else start
        self.spilled_from = None if end >= self.produced else end
        return bool(rows)


class TCPSink:
    """A plain sink: outputs as the encoder made them, delivered once
    written to the socket."""

    def __init__(self, spec: SinkSpec, queue: OutboxQueue,
                 on_delivered: Callable[[int, int], None], log: logging.Logger,
                 backoff: tuple[float, float] = (0.05, 2.0),
                 limiter: trio.CapacityLimiter | None = None):
        self.spec = spec
        self.queue = queue
        self.on_delivered = on_delivered
        self.log = log
        self.backoff = backoff
        self.limiter = limiter or trio.CapacityLimiter(1)

    # the engine talks to the queue through the sink
    def enqueue(self, row: OutputRow) -> None:
        self.queue.enqueue(row)

    def has_room(self) -> bool:
        return self.queue.has_room()

    async def wait_room(self) -> None:
        await self.queue.wait_room()

    async def wait_empty(self) -> None:
        await self.queue.wait_empty()

    @property
    def queued_outputs(self) -> int:
        return self.queue.queued_outputs

    @property
    def queued_bytes(self) -> int:
        return self.queue.queued_bytes

    async def connect(self) -> trio.SocketStream:
        """Connect, retrying with backoff; logs the first failure, every
        20th, and any whose reason changed."""
        delay, max_delay = self.backoff
        failures = 0
        last_reason = None
        while True:
            try:
                stream = await trio.open_tcp_stream(self.spec.host, int(self.spec.port))
            except OSError as e:
                failures += 1
                reason = os_error_reason(e)
                if failures == 1 or failures % 20 == 0 or reason != last_reason:
                    self.log.warning("%s: cannot connect: %s; retrying (attempt %d), "
                                     "%d outputs (%d bytes) waiting", self.spec.label,
                                     reason, failures, self.queue.queued_outputs,
                                     self.queue.queued_bytes)
                last_reason = reason
                await trio.sleep(delay)
                delay = min(max_delay, delay * 2)
                continue
            if failures:
                self.log.info("%s: connected after %d failed attempts",
                              self.spec.label, failures)
            return stream

    async def run(self) -> None:
        while True:
            stream = await self.connect()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch, stream, nursery.cancel_scope)
                    await self._write(stream)
                raise trio.BrokenResourceError("the receiver closed the connection")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self.log.warning("%s: connection lost: %s; reconnecting, %d "
                                 "outputs to resend", self.spec.label, e,
                                 self.queue.queued_outputs)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)

    async def _watch(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        """Receivers send nothing; an end of stream means the receiver went
        away.  Noticing it here, before the next write, keeps that write's
        rows queued for the next connection instead of lost in a socket
        whose reader is gone."""
        try:
            while await stream.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    async def _write(self, stream: trio.SocketStream) -> None:
        q = self.queue
        while True:
            while not q.rows:
                if await q.load(self.limiter):
                    continue
                await q.wait_more()
            rows = [q.rows[0]]
            size = len(rows[0].data)
            for row in _rest(q.rows):
                if size >= WRITE_COALESCE:
                    break
                rows.append(row)
                size += len(row.data)
            first = q.delivered - rows[0].first_seq  # a row begun by a resend
            parts = [r.raw_from(max(0, q.delivered - r.first_seq)) if r.framed
                     or first > 0 else r.data for r in rows]
            await stream.send_all(parts[0] if len(parts) == 1 else b"".join(parts))
            end = rows[-1].end_seq
            q.release(end)
            self.on_delivered(self.spec.index, end)


def _rest(queue: collections.deque):
    it = iter(queue)
    next(it)
    return it
