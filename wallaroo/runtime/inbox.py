"""Where connections leave complete frames for the engine loop.

Frames are queued per *key*: a plain connection, or a resumable stream (so a
stream's frames keep their order across reconnects and behind the input a
previous run left pending).  Frames of one key that arrive between two
batches are merged into one chunk (one input-log row).

One byte budget bounds memory, and it counts everything read from sockets:
complete frames waiting here *and* the partial frames connections hold.  A
connection reserves before it reads (``reserve``); when the budget is spent
it waits, stops reading, and TCP pushes back on its sender.  So that partial
frames alone can never deadlock the budget, one connection at a time may read
past it while no complete frame waits (the "overdraft"), until it completes a
frame or closes.

Input a previous run read but did not process (pending rows) is queued first,
under the key its stream (or a key of its own) maps to, as whole chunks that
are never merged with new frames, so each batch can say how far a pending row
has been consumed.
"""

from __future__ import annotations

import collections
import time

import trio

from ..connectors.base import PEER, TCP
from .core import Chunk


class _Queue:
    """Frames one key delivered since its last batch.  ``front`` holds whole
    chunks served first: a batch's leftover put back, or input a previous run
    left pending; then the frames that arrived, of which a batch may take
    only the front (``pos``/``fpos`` mark where the rest begins, so a long
    backlog is never copied per batch)."""

    __slots__ = ("source", "payloads", "pos", "frames", "fpos", "stream",
                 "first_seq", "origin", "position", "front", "connector", "puts",
                 "put_total", "taken")

    def __init__(self, source, payloads, frames, stream, first_seq, origin,
                 position=None, connector=TCP):
        self.source = source
        self.payloads = payloads
        self.pos = 0
        self.frames = [frames]
        self.fpos = 0
        self.stream = stream
        self.first_seq = first_seq  # of the first frame not yet taken
        self.origin = origin
        self.position = position
        self.front: list[Chunk] = []
        self.connector = connector
        # when frames arrived: (frames put so far, time.monotonic()) per put,
        # dropped once taken; for the end-to-end latency
        self.puts = collections.deque()
        self.put_total = self.taken = 0
        self.arrive(len(payloads))

    def arrive(self, n: int) -> None:
        if n:
            self.put_total += n
            self.puts.append((self.put_total, time.monotonic()))

    @property
    def arrived_at(self) -> float:
        """When the first frame not yet taken arrived (0: none waits)."""
        return self.puts[0][1] if self.puts else 0.0

    def took(self, n: int) -> None:
        self.taken += n
        puts = self.puts
        while puts and puts[0][0] <= self.taken:
            puts.popleft()

    def cut(self, nbytes: int) -> bytes:
        """The first ``nbytes`` of the frames not yet taken, which are then
        taken.  ``frames`` holds the pieces as they were read and ``fpos``
        where the first one's rest begins: only the bytes taken are copied,
        never the backlog behind them (a batch of a long backlog used to
        join all of it)."""
        pieces, start = self.frames, self.fpos
        first = pieces[0]
        end = start + nbytes
        if end <= len(first):
            out = first if (start == 0 and end == len(first)) else first[start:end]
            if end == len(first) and len(pieces) > 1:
                del pieces[0]
                self.fpos = 0
            else:
                self.fpos = end
            return out
        parts = [first[start:] if start else first]
        need = end - len(first)
        i = 1
        while need > 0:
            p = pieces[i]
            if len(p) <= need:
                parts.append(p)
                need -= len(p)
                i += 1
            else:
                parts.append(p[:need])
                break
        del pieces[:i]
        self.fpos = need if need > 0 else 0
        if not pieces:
            pieces.append(b"")
        return b"".join(parts)

    def frame_bytes(self) -> int:
        """Bytes of the frames not yet taken."""
        return sum(map(len, self.frames)) - self.fpos

    @property
    def arrived(self) -> int:
        return len(self.payloads) - self.pos

    def __bool__(self) -> bool:
        return bool(self.front) or self.pos < len(self.payloads)


class Inbox:
    def __init__(self, max_bytes: int, header_lengths: list[int]):
        self.max_bytes = max_bytes
        self.header_lengths = header_lengths  # per source, to split chunks
        self.bytes = 0  # queued frames + partial frames held by connections
        self.pledged = 0  # sizes of reads in progress (see sources._recv)
        self._queues: dict[object, _Queue] = {}
        self._held: dict[object, int] = {}  # connection -> partial bytes
        self._overdraft: object = None
        self._arrived = trio.Event()
        self._space = trio.Event()
        self._peer = trio.Event()  # set when other workers' input arrives

    # -- the budget ------------------------------------------------------
    async def reserve(self, conn: object) -> None:
        """Wait until ``conn`` may read more bytes."""
        while self.bytes >= self.max_bytes:
            # nothing to free the budget but a partial frame's completion:
            # a connection holding one may read past it.  Not one holding
            # none: it may have nothing more to send, and would keep the
            # overdraft from the others until --overdraft-timeout.
            if not self._queues and self._overdraft in (None, conn) \
                    and self._held.get(conn, 0) > 0:
                self._overdraft = conn
                return
            await self._space.wait()

    def holds_overdraft(self, conn: object) -> bool:
        return self._overdraft is conn

    def hold(self, conn: object, n: int) -> None:
        """``conn`` read ``n`` bytes (not yet complete frames)."""
        if n:
            self._held[conn] = self._held.get(conn, 0) + n
            self.bytes += n

    def release(self, conn: object) -> None:
        """``conn`` is gone: what it held (a partial frame) is freed."""
        n = self._held.pop(conn, 0)
        self.bytes -= n
        if self._overdraft is conn:
            self._overdraft = None
        if n or self._overdraft is None:
            self._wake_space()

    def room(self) -> int:
        """How many bytes may be read before the budget is spent."""
        return self.max_bytes - self.bytes

    @property
    def held_bytes(self) -> int:
        return sum(self._held.values())

    # -- queueing ----------------------------------------------------------
    def put_nowait(self, conn: object, key: object, source: int,
                   payloads: list[bytes], frames: bytes, stream: str | None,
                   first_seq: int | None, origin: str,
                   position: int | None = None, connector: str = TCP) -> None:
        """Queue complete frames that ``conn`` read (its held bytes become
        queued ones).  Once this returns the frames are accepted: the engine
        will process and commit them, or log them when it stops."""
        n = len(frames)
        if conn is not None:
            left = self._held.get(conn, 0) - n
            if left > 0:
                self._held[conn] = left
            else:
                self._held.pop(conn, None)
            if self._overdraft is conn:
                self._overdraft = None
        else:
            self.bytes += n
        q = self._queues.get(key)
        if q is None:
            self._queues[key] = _Queue(source, payloads, frames, stream, first_seq,
                                       origin, position, connector)
        elif not q.arrived:  # only front chunks wait: these start the rest
            q.payloads, q.pos, q.frames, q.fpos = payloads, 0, [frames], 0
            q.first_seq, q.origin, q.position = first_seq, origin, position
            q.puts.clear()
            q.put_total = q.taken = 0
            q.arrive(len(payloads))
        else:
            q.payloads.extend(payloads)
            q.frames.append(frames)
            q.arrive(len(payloads))
        self._arrived.set()
        if connector == PEER:
            self._peer.set()

    def put_pending(self, key: object, chunk: Chunk) -> None:
        """Queue frames of a pending row (read by a previous run) ahead of
        anything new for ``key``; rows of one key in the order given."""
        chunk.key = key
        q = self._queues.get(key)
        if q is None:
            end = None if chunk.first_seq is None else chunk.first_seq + len(chunk.payloads)
            q = self._queues[key] = _Queue(chunk.source, [], b"", chunk.stream,
                                           end, chunk.origin)
        q.front.append(chunk)
        self.bytes += len(chunk.frames)
        self._arrived.set()

    def take(self, max_messages: int, peers_only: bool = False) -> list[Chunk]:
        """Up to ``max_messages`` frames, oldest keys first, one chunk per
        key.  A key with more waiting is split at a frame boundary and moves
        to the back, so one busy connection cannot starve the others.
        ``peers_only``: only what other workers sent (while the worker's
        own outboxes are full, that input still flows)."""
        chunks: list[Chunk] = []
        budget = max_messages
        taken_bytes = 0
        for key in list(self._queues):
            if budget <= 0:
                break
            q = self._queues[key]
            if peers_only and q.connector != PEER:
                continue
            if q.front:
                ch = q.front[0]
                if len(ch.payloads) <= budget:
                    del q.front[0]
                else:
                    ch, q.front[0] = ch.split(budget, self.header_lengths[ch.source])
                chunks.append(ch)
                taken_bytes += len(ch.frames)
                budget -= len(ch.payloads)
            else:
                ch = self._take_arrived(key, q, budget)
                chunks.append(ch)
                taken_bytes += len(ch.frames)
                budget -= len(ch.payloads)
            del self._queues[key]
            if q:
                self._queues[key] = q  # to the back of the line
        self.bytes -= taken_bytes
        if not self._queues:
            self._arrived = trio.Event()
        self._wake_space()
        return chunks

    def _take_arrived(self, key: object, q: _Queue, budget: int) -> Chunk:
        n = min(q.arrived, budget)
        if n == q.arrived:
            payloads = q.payloads if q.pos == 0 else q.payloads[q.pos:]
            part = q.cut(q.frame_bytes())
            ch = Chunk(q.source, payloads, part, q.stream, q.first_seq, q.origin,
                       key, q.position, connector=q.connector, arrived=q.arrived_at)
            q.payloads, q.frames, q.pos, q.fpos = [], [b""], 0, 0
        else:
            end = q.pos + n
            head = q.payloads[q.pos:end]
            part = q.cut(sum(map(len, head)) + n * self.header_lengths[q.source])
            ch = Chunk(q.source, head, part, q.stream, q.first_seq,
                       q.origin, key, q.position, connector=q.connector,
                       arrived=q.arrived_at)
            q.pos = end
            if q.pos > len(q.payloads) // 2:  # drop the consumed front
                del q.payloads[:q.pos]
                q.pos = 0
        q.took(n)
        if q.first_seq is not None:
            q.first_seq += n
        if q.position is not None:
            q.position += n
        return ch

    def unget(self, chunks: list[Chunk], cut: bool = False) -> None:
        """Put chunks (a batch's leftover) back at the front of their keys'
        queues, and those keys at the front of the line, in order.  With
        ``cut``, the first chunk is the tail of one the batch was working on
        when its time ran out: its key goes to the back of the line, so a
        busy connection cannot starve the others.  Costs the chunks, never
        the backlog behind them."""
        if not chunks:
            return
        front: dict[object, _Queue] = {}
        for ch in reversed(chunks):
            q = self._queues.pop(ch.key, None) or front.pop(ch.key, None)
            if q is None:
                q = _Queue(ch.source, [], b"", ch.stream, None, ch.origin,
                           connector=ch.connector)
            q.front.insert(0, ch)
            front = {ch.key: q, **front}
            self.bytes += len(ch.frames)
        if cut:
            key = chunks[0].key
            last = front.pop(key)
            self._queues = {**front, **self._queues, key: last}
        else:
            self._queues = {**front, **self._queues}
        self._arrived.set()

    def take_all(self) -> list[Chunk]:
        """Everything queued, in order per key: what a stopping worker logs,
        or drops and counts."""
        chunks = []
        for key, q in self._queues.items():
            chunks.extend(q.front)
            if q.arrived:
                chunks.append(self._take_arrived(key, q, q.arrived))
        self.bytes -= sum(len(c.frames) for c in chunks)
        self._queues = {}
        self._arrived = trio.Event()
        self._wake_space()
        return chunks

    @property
    def messages(self) -> int:
        return sum(q.arrived + sum(len(c.payloads) for c in q.front)
                   for q in self._queues.values())

    async def wait(self, timeout: float) -> None:
        """Return when something arrived, or after ``timeout`` seconds."""
        if self._queues:
            return
        with trio.move_on_after(timeout):
            await self._arrived.wait()

    def wake(self) -> None:
        self._arrived.set()

    def _wake_space(self) -> None:
        self._space.set()
        self._space = trio.Event()

    async def wait_space(self) -> None:
        """Return the next time the engine takes input (or a connection
        frees what it held)."""
        await self._space.wait()

    def arrived_for(self, key: object) -> int:
        """How many frames that arrived for ``key`` wait (front chunks not
        counted)."""
        q = self._queues.get(key)
        return q.arrived if q is not None else 0

    def has_peer_input(self) -> bool:
        return any(q.connector == PEER for q in self._queues.values())

    async def wait_peer_input(self) -> None:
        """Return once other workers' input waits here."""
        while not self.has_peer_input():
            if self._peer.is_set():
                self._peer = trio.Event()
            await self._peer.wait()

    def __bool__(self) -> bool:
        return bool(self._queues)
