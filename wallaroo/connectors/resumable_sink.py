"""The resumable sink protocol, the worker's side (DESIGN.md §5), byte for
byte:

    worker:   WALLAROO-OUT 1 <stream>\\n
    receiver: HAVE <n>\\n            outputs of the stream it holds durably
    worker:   every output from the n-th on, each a frame: a 4-byte
              big-endian length, then the encoder's bytes
    receiver: ACK <n>\\n             cumulative, as they become durable

The delivery position is the ACKed count: outputs stay in the outbox until
acknowledged, so a receiver that dies with bytes in its kernel buffer loses
nothing, and a resend after a crash of either side starts at its ``HAVE``:
it never sees an output twice.  A ``HAVE`` above what the worker produced,
or any other answer, gets ``ERROR <reason>\\n``, a log line naming the sink
and what the receiver said, and a retry with backoff: nothing is dropped.  A
``HAVE`` below the oldest output still held cannot be repaired: the worker
sends from the oldest it holds and warns, naming both counts.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Callable

import trio

from .._compat import BaseExceptionGroup
from .._spec import SinkSpec
from .resume import STREAM_NAME
from .tcp_sink import WRITE_COALESCE, OutboxQueue, TCPSink

PREFIX = b"WALLAROO-OUT 1 "
HANDSHAKE_TIMEOUT = 10.0
MAX_LINE = 4096
HAVE = re.compile(rb"HAVE (\d{1,20})")
ACK = re.compile(rb"ACK (\d{1,20})")


def stream_name(application: str, spec: SinkSpec, worker: str) -> str:
    """``<application>.<pipeline>.<i>.<worker>``: every character outside
    the stream-name alphabet replaced by ``_``; longer than 255 characters,
    cut and suffixed with a short hash of the whole."""
    name = f"{application}.{spec.pipeline}.{spec.position}.{worker}"
    name = re.sub(r"[^A-Za-z0-9._:-]", "_", name)
    if len(name) > 255:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = name[:246] + "-" + digest
    assert STREAM_NAME.fullmatch(name.encode())
    return name


class ProtocolError(Exception):
    """The receiver said something the protocol does not allow."""


class ResumableTCPSink(TCPSink):
    def __init__(self, spec: SinkSpec, queue: OutboxQueue,
                 on_delivered: Callable[[int, int], None], log: logging.Logger,
                 stream: str, backoff: tuple[float, float] = (0.05, 2.0),
                 limiter: trio.CapacityLimiter | None = None,
                 on_base: Callable[[int, int], None] | None = None):
        super().__init__(spec, queue, on_delivered, log, backoff, limiter)
        self.stream = stream
        self.on_base = on_base
        self.connections = 0
        self.errors = 0

    async def run(self) -> None:
        delay = self.backoff[0]
        while True:
            stream = await self.connect()
            self.connections += 1
            lines = _Lines(stream)
            try:
                await self._session(stream, lines)
                raise trio.BrokenResourceError("the receiver closed the connection")
            except ProtocolError as e:
                self.errors += 1
                self.log.warning("%s (stream %r): %s; retrying in %.1fs, nothing "
                                 "dropped (%d outputs waiting)", self.spec.label,
                                 self.stream, e, delay, self.queue.queued_outputs)
                with trio.move_on_after(1):
                    try:
                        await stream.send_all(b"ERROR " + str(e).encode(
                            "utf-8", "replace")[:500] + b"\n")
                    except (trio.BrokenResourceError, trio.ClosedResourceError,
                            OSError):
                        pass
                await trio.aclose_forcefully(stream)
                await trio.sleep(delay)
                delay = min(self.backoff[1], delay * 2)
                continue
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self.log.warning("%s (stream %r): connection lost: %s; "
                                 "reconnecting, %d outputs not acknowledged",
                                 self.spec.label, self.stream, e,
                                 self.queue.queued_outputs)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
            delay = self.backoff[0]

    async def _greet(self, stream: trio.SocketStream, lines: "_Lines") -> None:
        await stream.send_all(PREFIX + self.stream.encode("ascii") + b"\n")

    def _payload(self, row, k: int) -> bytes:
        """What goes on the wire for outputs ``k..`` of ``row``."""
        return row.data if row.framed and k == 0 else row.frames_from(k)

    unit = "outputs"  # what the stream's counts count, for log lines

    def _open_line(self, line: bytes) -> bytes:
        """A line from the receiver, as the protocol reads it (a channel
        between workers checks its seal)."""
        return line

    def _lost(self, have: int) -> int:
        """The receiver holds fewer than were acknowledged: it lost them,
        or resumable sinks were just switched on.  Returns where to send
        from."""
        q = self.queue
        self.log.warning(
            "%s (stream %r): the receiver holds %d outputs but %d were "
            "acknowledged or delivered before (it lost what it had, or "
            "resumable sinks were just switched on); sending from the "
            "oldest output still held, which it will count as its output "
            "%d", self.spec.label, self.stream, have, q.delivered - q.base,
            have)
        q.base = q.delivered - have
        if self.on_base is not None:
            self.on_base(self.spec.index, q.base)
        return q.delivered

    async def _session(self, stream: trio.SocketStream, lines: "_Lines") -> None:
        q = self.queue
        await self._greet(stream, lines)
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as waited:
            line = await lines.next()
        if waited.cancelled_caught:
            raise ProtocolError(f"no HAVE within {HANDSHAKE_TIMEOUT:g}s of the "
                                f"handshake (is it a resumable receiver?)")
        if line is None:
            raise trio.BrokenResourceError("closed before answering the handshake")
        m = HAVE.fullmatch(self._open_line(line))
        if m is None:
            raise ProtocolError(f"expected 'HAVE <n>', the receiver said {line[:100]!r}")
        have = int(m.group(1))
        seq = have + q.base  # the receiver counts from where it began
        if seq > q.produced:
            raise ProtocolError(
                f"HAVE {have} is more than the {q.produced - q.base} outputs this "
                f"worker has produced for stream {self.stream}")
        if seq < q.delivered:
            seq = self._lost(have)
        elif seq > q.delivered:
            self._acknowledged(seq)
        self.log.info("%s (stream %r): receiver holds %d %s; sending from "
                      "there", self.spec.label, self.stream, have, self.unit)
        cursor = seq
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_acks, lines, nursery.cancel_scope)
                await self._write_from(stream, cursor)
        except BaseExceptionGroup as eg:  # one task's error, or both
            raise _first_leaf(eg) from None

    async def _write_from(self, stream: trio.SocketStream, cursor: int) -> None:
        q = self.queue
        while True:
            rows = [r for r in q.rows if r.end_seq > cursor]
            if not rows:
                if q.spilled_from is not None and await q.load(self.limiter):
                    continue
                await q.wait_more()
                continue
            parts, size = [], 0
            for r in rows:
                if size >= WRITE_COALESCE:
                    break
                data = self._payload(r, max(0, cursor - r.first_seq))
                parts.append(data)
                size += len(data)
                cursor = r.end_seq
            await stream.send_all(parts[0] if len(parts) == 1 else b"".join(parts))

    async def _read_acks(self, lines: "_Lines", scope: trio.CancelScope) -> None:
        while True:
            line = await lines.next()
            if line is None:
                scope.cancel()
                return
            line = self._open_line(line)
            m = ACK.fullmatch(line)
            if m is None:
                if line.startswith(b"ERROR"):
                    raise ProtocolError(f"the receiver refused: {line[:200]!r}")
                raise ProtocolError(f"expected 'ACK <n>', the receiver said "
                                    f"{line[:100]!r}")
            n = int(m.group(1)) + self.queue.base
            if n > self.queue.produced:
                raise ProtocolError(f"ACK {n - self.queue.base} is more than the "
                                    f"{self.queue.produced - self.queue.base} "
                                    f"outputs sent")
            self._acknowledged(n)

    def _acknowledged(self, n: int) -> None:
        if self.queue.release(n):
            self.on_delivered(self.spec.index, n)


def _first_leaf(e: BaseException) -> BaseException:
    """The error to act on: a protocol error first, then a broken
    connection, then whatever came."""
    leaves = []
    todo = [e]
    while todo:
        x = todo.pop()
        if isinstance(x, BaseExceptionGroup):
            todo.extend(x.exceptions)
        else:
            leaves.append(x)
    for kind in (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                 OSError):
        for x in leaves:
            if isinstance(x, kind):
                return x
    return leaves[0]


class _Lines:
    """Newline-terminated lines from the receiver; None at end of stream."""

    def __init__(self, stream: trio.SocketStream, buf: bytes = b""):
        self.stream = stream
        self.buf = bytes(buf)

    async def next(self) -> bytes | None:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 1:]
                return line
            if len(self.buf) > MAX_LINE:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes: "
                                    f"{self.buf[:60]!r}...")
            more = await self.stream.receive_some(65536)
            if not more:
                return None
            self.buf += more
