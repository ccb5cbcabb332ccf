"""Where connections leave complete frames for the engine loop.

Frames from one connection that arrive between two batches are merged into
one chunk (one input-log row).  A byte budget bounds memory: when the engine
falls behind, ``put`` waits, the connection stops reading, and TCP pushes back
on the sender.
"""

from __future__ import annotations

import trio

from .core import Chunk


class _Pending:
    """Frames one connection delivered since its last batch.  A batch may take
    only the front of them; ``pos``/``fpos`` mark where the rest begins, so a
    long backlog is never copied per batch."""

    __slots__ = ("source", "payloads", "pos", "frames", "fpos", "stream",
                 "first_seq", "origin")

    def __init__(self, source, payloads, frames, stream, first_seq, origin):
        self.source = source
        self.payloads = payloads
        self.pos = 0
        self.frames = [frames]
        self.fpos = 0
        self.stream = stream
        self.first_seq = first_seq
        self.origin = origin


class Inbox:
    def __init__(self, max_bytes: int, header_lengths: list[int]):
        self.max_bytes = max_bytes
        self.header_lengths = header_lengths  # per source, to split chunks
        self.bytes = 0
        self._pending: dict[object, _Pending] = {}
        self._arrived = trio.Event()
        self._space = trio.Event()

    async def put(self, conn: object, source: int, payloads: list[bytes],
                  frames: bytes, stream: str | None, first_seq: int | None,
                  origin: str) -> None:
        """Queue frames; waits while the budget is spent.  Once it returns,
        the frames are accepted: the engine will process and commit them."""
        while self.bytes >= self.max_bytes:
            await self._space.wait()
        self.put_nowait(conn, source, payloads, frames, stream, first_seq, origin)

    def put_nowait(self, conn, source, payloads, frames, stream, first_seq, origin):
        p = self._pending.get(conn)
        if p is None:
            self._pending[conn] = _Pending(source, payloads, frames, stream,
                                           first_seq, origin)
        else:
            p.payloads.extend(payloads)
            p.frames.append(frames)
        self.bytes += len(frames)
        self._arrived.set()

    def take(self, max_messages: int) -> list[Chunk]:
        """Up to ``max_messages`` frames, oldest connections first.  A
        connection with more waiting is split at a frame boundary and moves
        to the back, so one busy connection cannot starve the others and one
        batch cannot stall the loop for long."""
        chunks: list[Chunk] = []
        budget = max_messages
        taken_bytes = 0
        for conn in list(self._pending):
            if budget <= 0:
                break
            p = self._pending[conn]
            if len(p.frames) > 1:
                p.frames = [b"".join(p.frames)]
            frames = p.frames[0]
            n = len(p.payloads) - p.pos
            if n <= budget:
                del self._pending[conn]
                payloads = p.payloads if p.pos == 0 else p.payloads[p.pos:]
                part = frames if p.fpos == 0 else frames[p.fpos:]
                chunks.append(Chunk(p.source, payloads, part, p.stream,
                                    p.first_seq, p.origin))
                taken_bytes += len(part)
                budget -= n
                continue
            end = p.pos + budget
            head = p.payloads[p.pos:end]
            cut = p.fpos + sum(map(len, head)) + budget * self.header_lengths[p.source]
            chunks.append(Chunk(p.source, head, frames[p.fpos:cut], p.stream,
                                p.first_seq, p.origin))
            taken_bytes += cut - p.fpos
            p.pos, p.fpos = end, cut
            if p.pos > len(p.payloads) // 2:  # drop the consumed front, amortised
                del p.payloads[:p.pos]
                p.frames = [frames[cut:]]
                p.pos = p.fpos = 0
            if p.first_seq is not None:
                p.first_seq += budget
            del self._pending[conn]
            self._pending[conn] = p  # to the back of the line
            budget = 0
        self.bytes -= taken_bytes
        if not self._pending:
            self._arrived = trio.Event()
        self._space.set()
        self._space = trio.Event()
        return chunks

    async def wait(self, timeout: float) -> None:
        """Return when something arrived, or after ``timeout`` seconds."""
        if self._pending:
            return
        with trio.move_on_after(timeout):
            await self._arrived.wait()

    def wake(self) -> None:
        self._arrived.set()

    def __bool__(self) -> bool:
        return bool(self._pending)
