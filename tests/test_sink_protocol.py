"""The resumable sink protocol, the worker's side, byte for byte
(DESIGN.md §5), against a receiver scripted in the test: a real worker on
trio in-process (``worker_harness``) with ``resumable_sinks``.

The worker sends ``WALLAROO-OUT 1 <stream>\\n``; the receiver answers
``HAVE <n>\\n``; the worker sends every output from the n-th on as a frame
(4-byte big-endian length, then the encoder's bytes); the receiver answers
cumulative ``ACK <n>\\n``.  The outputs of ``proto_app`` are ``"v total\\n"``
lines, per message.
"""

from __future__ import annotations

import struct

import trio

from .worker_harness import Harness, frames, run

STREAM = b"proto.numbers.0.initializer"
HELLO = b"WALLAROO-OUT 1 " + STREAM + b"\n"


class Peer:
    """One connection from the worker's sink, as the receiver sees it."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buf = b""
        self.done = trio.Event()

    async def _more(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError(f"closed; unread {self.buf!r}")
        self.buf += data

    async def line(self, timeout: float = 10) -> bytes:
        with trio.fail_after(timeout):
            while b"\n" not in self.buf:
                await self._more()
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    async def frames(self, n: int, timeout: float = 10) -> list[bytes]:
        out = []
        with trio.fail_after(timeout):
            while len(out) < n:
                while len(self.buf) >= 4 and len(self.buf) >= 4 + struct.unpack(
                        ">I", self.buf[:4])[0] and len(out) < n:
                    (k,) = struct.unpack(">I", self.buf[:4])
                    out.append(self.buf[4:4 + k])
                    self.buf = self.buf[4 + k:]
                if len(out) < n:
                    await self._more()
        return out

    async def nothing_for(self, seconds: float) -> bool:
        """True if nothing arrives (and nothing is buffered) for a while."""
        if self.buf:
            return False
        with trio.move_on_after(seconds):
            await self._more()
            return False
        return True

    async def closed(self, timeout: float = 10) -> bytes:
        """Everything until the worker closes."""
        with trio.fail_after(timeout):
            try:
                while True:
                    await self._more()
            except (EOFError, trio.BrokenResourceError):
                return self.buf

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()
        self.done.set()


class Receiver:
    """Accepts the worker's sink connections and hands them to the test."""

    def __init__(self):
        self._send, self._recv = trio.open_memory_channel(16)

    async def listen(self, nursery, port: int) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, self._handle, listeners)

    async def _handle(self, stream):
        peer = Peer(stream)
        await self._send.send(peer)
        await peer.done.wait()

    async def accept(self, timeout: float = 10) -> Peer:
        with trio.fail_after(timeout):
            return await self._recv.receive()


def lines(values, start_total=0):
    out, total = [], start_total
    for v in values:
        total += v
        out.append(b"%d %d\n" % (v, total))
    return out


async def started(nursery, tmp=None, **opts):
    h = Harness(nursery, tmp=tmp, listen=False, resumable_sinks=True, **opts)
    r = Receiver()
    await h.start()
    await r.listen(nursery, h.sink_port)
    return h, r


def test_have_0_then_every_output_as_a_frame_and_acks_release_them(tmp_path):
    async def t(nursery):
        h, r = await started(nursery, tmp_path)
        p = await r.accept()
        assert await p.line() == HELLO
        await p.send(b"HAVE 0\n")
        c = await h.connect()
        await c.send(frames([2, 4, 6]))  # one parity: totals 2, 6, 12
        assert await p.frames(3) == lines([2, 4, 6])
        sink = h.worker.sinks[0]
        assert sink.queue.delivered == 0  # written is not delivered
        await p.send(b"ACK 2\n")
        with trio.fail_after(5):
            while sink.queue.delivered < 2:
                await trio.sleep(0.01)
        await p.send(b"ACK 3\n")
        with trio.fail_after(5):
            while h.worker.core.delivered[0] < 3:
                await trio.sleep(0.01)
        await h.stop()
    run(t)


def test_a_restarted_worker_resends_from_have_and_nothing_twice(tmp_path):
    """Outputs 0..4 are sent, 0..1 ACKed; the connection dies.  The
    receiver says HAVE 4 (it made 4 durable before dying): only output 4
    comes again.  After a worker restart on the same directory, HAVE 5:
    nothing is resent, new outputs follow."""
    async def t(nursery):
        h, r = await started(nursery, tmp_path)
        p = await r.accept()
        assert await p.line() == HELLO
        await p.send(b"HAVE 0\n")
        c = await h.connect()
        await c.send(frames([2, 4, 6, 8, 10]))
        got = await p.frames(5)
        await p.send(b"ACK 2\n")
        await trio.sleep(0.1)
        await p.close()
        p = await r.accept()
        assert await p.line() == HELLO
        await p.send(b"HAVE 4\n")
        assert await p.frames(1) == got[4:]
        await p.send(b"ACK 5\n")
        assert await p.nothing_for(0.3)
        await h.stop()
        await p.close()
        h2 = Harness(nursery, tmp=tmp_path, listen=False, resumable_sinks=True)
        h2.sink_port = h.sink_port
        await h2.start()
        p = await r.accept()
        assert await p.line() == HELLO
        await p.send(b"HAVE 5\n")
        c = await h2.connect()
        await c.send(frames([12]))
        assert await p.frames(1) == lines([12], 30)
        await h2.stop()
    run(t)


def test_acks_may_be_coalesced_and_never_go_backwards(tmp_path):
    async def t(nursery):
        h, r = await started(nursery, tmp_path)
        p = await r.accept()
        await p.line()
        await p.send(b"HAVE 0\n")
        c = await h.connect()
        await c.send(frames(range(2, 202, 2)))
        await p.frames(100)
        await p.send(b"ACK 100\nACK 40\n")  # a stale one after: ignored
        with trio.fail_after(5):
            while h.worker.core.delivered[0] < 100:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        assert h.worker.sinks[0].queue.delivered == 100
        await h.stop()
    run(t)


def test_an_impossible_have_gets_error_and_a_retry_and_nothing_is_dropped(tmp_path):
    async def t(nursery):
        h, r = await started(nursery, tmp_path)
        c = await h.connect()
        await c.send(frames([2, 4]))
        p = await r.accept()
        assert await p.line() == HELLO
        await p.send(b"HAVE 99\n")
        err = await p.closed()
        assert err.startswith(b"ERROR HAVE 99 is more than the ")
        assert err.endswith(b"\n")
        p = await r.accept()  # retried with backoff
        assert await p.line() == HELLO
        await p.send(b"HAVE 0\n")
        assert await p.frames(2) == lines([2, 4])
        await h.stop()
    run(t)


def test_a_garbled_answer_gets_error_and_a_retry(tmp_path):
    async def t(nursery):
        h, r = await started(nursery, tmp_path)
        p = await r.accept()
        await p.line()
        await p.send(b"HELLO THERE\n")
        err = await p.closed()
        assert err.startswith(b"ERROR expected 'HAVE <n>', the receiver said "
                              b"b'HELLO THERE'")
        p = await r.accept()
        await p.line()
        await p.send(b"HAVE 0\n")
        c = await h.connect()
        await c.send(frames([2]))
        assert await p.frames(1) == lines([2])
        await p.send(b"ACK 1\nWHAT\n")  # garbage after ACKs: error, retry
        err = await p.closed()
        assert b"ERROR expected 'ACK <n>'" in err
        p = await r.accept()
        await p.line()
        await p.send(b"HAVE 1\n")
        assert await p.nothing_for(0.2)
        await h.stop()
    run(t)


def test_a_have_below_the_oldest_held_output_warns_and_sends_from_it(tmp_path):
    async def t(nursery):
        h, r = await started(nursery, tmp_path)
        p = await r.accept()
        await p.line()
        await p.send(b"HAVE 0\n")
        c = await h.connect()
        await c.send(frames([2, 4, 6]))
        await p.frames(3)
        await p.send(b"ACK 2\n")
        with trio.fail_after(5):
            while h.worker.core.delivered[0] < 2:
                await trio.sleep(0.01)
        await p.close()
        p = await r.accept()  # the receiver lost what it had
        await p.line()
        await p.send(b"HAVE 0\n")
        assert await p.frames(1) == lines([6], 6)  # output 2, the oldest held
        # from now on the receiver's output n is the worker's n + 2
        await p.send(b"ACK 1\n")
        with trio.fail_after(5):
            while h.worker.core.delivered[0] < 3:
                await trio.sleep(0.01)
        c = await h.connect()
        await c.send(frames([8]))
        assert await p.frames(1) == lines([8], 12)
        await p.close()
        p = await r.accept()
        await p.line()
        await p.send(b"HAVE 2\n")  # its count: outputs 0..3 of the worker's
        assert await p.nothing_for(0.3)
        await h.stop()
    run(t)


def test_a_receiver_that_never_acks_does_not_stall_until_the_outbox_is_full(tmp_path):
    """Durable: memory holds 4 KiB of outputs, the rest waits on disk; the
    sources keep reading until the outbox holds --sink-outbox-max (64
    KiB), then stop.  Once the receiver acknowledges, everything arrives,
    in order, read back from disk."""
    async def t(nursery):
        h, r = await started(nursery, tmp_path, sink_queue_bytes=4096,
                             sink_outbox_max=64 * 1024, max_batch=1000)
        p = await r.accept()
        await p.line()
        await p.send(b"HAVE 0\n")
        c = await h.connect()
        n = 20000
        async def feed():
            await c.send(frames(range(2, 2 * n + 2, 2)))
        nursery.start_soon(feed)
        core = h.worker.core
        with trio.fail_after(10):
            while core.stats.messages < 1000:  # past what memory holds
                await trio.sleep(0.01)
        await trio.sleep(0.5)
        stalled = core.stats.messages
        assert stalled < n  # backpressure once the outbox is full
        q = h.worker.sinks[0].queue
        assert q.outbox_bytes >= 64 * 1024
        assert q.spilled_from is not None  # the rest waits on disk
        assert q.memory < 20 * 1024  # the 4 KiB bound, or one row over it
        got = []
        while len(got) < n:
            more = await p.frames(min(500, n - len(got)))
            got.extend(more)
            await p.send(b"ACK %d\n" % len(got))
        assert got == lines(range(2, 2 * n + 2, 2))
        await h.stop()
    run(t)


def test_without_resilience_memory_bounds_a_receiver_that_never_acks():
    async def t(nursery):
        h, r = await started(nursery, None, sink_queue_bytes=8192, max_batch=500)
        p = await r.accept()
        await p.line()
        await p.send(b"HAVE 0\n")
        c = await h.connect()
        async def feed():
            await c.send(frames(range(2, 40002, 2)))
        nursery.start_soon(feed)
        await trio.sleep(1.0)
        core = h.worker.core
        stalled = core.stats.messages
        await trio.sleep(0.3)
        assert core.stats.messages == stalled < 20000
        assert h.worker.sinks[0].queue.memory < 8192 + 2 * 8000  # + a batch in flight
        await h.stop()
    run(t)


def test_stream_names_follow_the_identity_and_the_alphabet():
    from wallaroo._spec import EncoderSpec, SinkSpec
    from wallaroo.connectors.resumable_sink import stream_name
    spec = SinkSpec(0, "word count / v2", "tcp", "h", "1", EncoderSpec("e", bytes),
                    None, position=1)
    assert stream_name("my app", spec, "worker-1") == \
        "my_app.word_count___v2.1.worker-1"
    long = stream_name("a" * 300, spec, "w")
    assert len(long) == 255 and long.startswith("a" * 246 + "-")
    assert long != stream_name("a" * 299 + "b", spec, "w")
