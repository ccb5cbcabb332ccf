"""TCP sinks: connect out, write committed outputs in order, reconnect with
backoff when the receiver is away.

Outputs arrive as whole rows (a batch's outputs for this sink).  A row leaves
the queue only once ``send_all`` returned ("delivered": written to the
socket, DESIGN.md §5); if the connection breaks, the rows not yet written
completely are sent again, whole, on the next connection, so a receiver sees
byte-identical resends and an incomplete record at the end of a dead
connection.  The sink also watches for the receiver closing its end, so a
receiver that goes away between writes loses nothing; one that dies while
bytes are in flight can lose what its kernel held (exactly-once delivery
needs a receiver that confirms what it holds: a later step).  The queue is bounded in bytes: when it
is full the engine stops taking input (``has_room``), so memory never grows
without limit while a receiver is away.
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


class TCPSink:
    def __init__(self, spec: SinkSpec, on_delivered: Callable[[int, int], None],
                 log: logging.Logger, max_queue_bytes: int,
                 backoff: tuple[float, float] = (0.05, 2.0)):
        self.spec = spec
        self.on_delivered = on_delivered
        self.log = log
        self.max_queue_bytes = max_queue_bytes
        self.backoff = backoff
        self.queue: collections.deque[OutputRow] = collections.deque()
        self.queued_bytes = 0
        self._more = trio.Event()
        self._room = trio.Event()
        self._empty = trio.Event()
        self._empty.set()

    def enqueue(self, row: OutputRow) -> None:
        self.queue.append(row)
        self.queued_bytes += len(row.data)
        self._empty = trio.Event() if self._empty.is_set() else self._empty
        self._more.set()

    @property
    def queued_outputs(self) -> int:
        return sum(r.count for r in self.queue)

    def has_room(self) -> bool:
        return self.queued_bytes < self.max_queue_bytes

    async def wait_room(self) -> None:
        while not self.has_room():
            await self._room.wait()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    async def run(self) -> None:
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
                                     "%d bytes of output waiting", self.spec.label,
                                     reason, failures, self.queued_bytes)
                last_reason = reason
                await trio.sleep(delay)
                delay = min(max_delay, delay * 2)
                continue
            if failures:
                self.log.info("%s: connected after %d failed attempts",
                              self.spec.label, failures)
            failures = 0
            delay = self.backoff[0]
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch, stream, nursery.cancel_scope)
                    await self._write(stream)
                raise trio.BrokenResourceError("the receiver closed the connection")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self.log.warning("%s: connection lost: %s; reconnecting, %d "
                                 "bytes of output to resend", self.spec.label,
                                 e, self.queued_bytes)
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
        queue = self.queue
        while True:
            while not queue:
                self._empty.set()
                await self._more.wait()
                self._more = trio.Event()
            rows = [queue[0]]
            size = len(rows[0].data)
            for row in _rest(queue):
                if size >= WRITE_COALESCE:
                    break
                rows.append(row)
                size += len(row.data)
            await stream.send_all(rows[0].data if len(rows) == 1
                                  else b"".join(r.data for r in rows))
            for _ in rows:
                queue.popleft()
            self.queued_bytes -= size
            self.on_delivered(self.spec.index, rows[-1].end_seq)
            self._room.set()
            self._room = trio.Event()


def _rest(queue: collections.deque):
    it = iter(queue)
    next(it)
    return it
