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
    __slots__ = ("source", "payloads", "frames", "stream", "first_seq", "origin")

    def __init__(self, source, payloads, frames, stream, first_seq, origin):
        self.source = source
        self.payloads = payloads
        self.frames = [frames]
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
            frames = p.frames[0] if len(p.frames) == 1 else b"".join(p.frames)
            n = len(p.payloads)
            if n <= budget:
                del self._pending[conn]
                chunks.append(Chunk(p.source, p.payloads, frames, p.stream,
                                    p.first_seq, p.origin))
                taken_bytes += len(frames)
                budget -= n
                continue
            head = p.payloads[:budget]
            cut = sum(map(len, head)) + budget * self.header_lengths[p.source]
            chunks.append(Chunk(p.source, head, frames[:cut], p.stream,
                                p.first_seq, p.origin))
            taken_bytes += cut
            del self._pending[conn]
            p.payloads = p.payloads[budget:]
            p.frames = [frames[cut:]]
            if p.first_seq is not None:
                p.first_seq += budget
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
