"""The resumable sink protocol, receiver side (DESIGN.md §5), byte for byte:
``wallaroo.receiver`` in-process against a fake worker written here, then
``wallaroo receive --resumable`` in real processes (SIGKILL included) and
the SQLite example.  The file store's own tests are in
``test_receiver_file_store.py``.

The fake worker is the worker's side of the protocol on raw trio streams:
``WALLAROO-OUT 1 <stream>\\n``, frames of a 4-byte big-endian length and
the output, and it reads ``HAVE``/``ACK``/``ERROR`` lines.  Stores that
block their ``sync()`` until the test lets them go make "before the fsync"
and "after the fsync" deterministic moments, without sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from wallaroo.receiver import MemoryStore, OutputsRejected, ResumableReceiver
from wallaroo.tools.file_store import FileStore

from . import test_send_receive
from .test_send_receive import WAIT, free_port, summary

procs = test_send_receive.procs  # the fixture: wallaroo subprocesses, killed at teardown

REPO = Path(__file__).resolve().parent.parent
SQLITE_EXAMPLE = REPO / "examples" / "receiver" / "sqlite_receiver.py"


def frame(output: bytes) -> bytes:
    return struct.pack(">I", len(output)) + output


def frames(outputs) -> bytes:
    return b"".join(frame(o) for o in outputs)


def records(*payloads: bytes) -> bytes:
    """Records as an encoder writes them for --framing length: header, payload."""
    return b"".join(struct.pack(">I", len(p)) + p for p in payloads)


def outs(stream: str, first: int, last: int) -> list[bytes]:
    """Outputs ``first`` .. ``last - 1`` of a stream, each naming itself."""
    return [f"{stream}#{i}".encode() for i in range(first, last)]


# --- a fake worker and stores the test controls ---------------------------------


class FakeWorker:
    """One sink connection of a worker, on a raw trio stream."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buf = b""

    @classmethod
    async def connect(cls, port: int, name: str | None = None) -> "FakeWorker":
        w = cls(await trio.open_tcp_stream("127.0.0.1", port))
        if name is not None:
            await w.send(b"WALLAROO-OUT 1 %s\n" % name.encode())
        return w

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes | None:
        with trio.fail_after(WAIT):
            while b"\n" not in self.buf:
                try:
                    data = await self.stream.receive_some(4096)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    return None
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    async def have(self) -> int:
        line = await self.line()
        assert line is not None and line.startswith(b"HAVE "), line
        return int(line[5:])

    async def acks_until(self, n: int) -> list[int]:
        """Every ACK up to and including ``ACK n``."""
        seen: list[int] = []
        while not seen or seen[-1] < n:
            line = await self.line()
            assert line is not None and line.startswith(b"ACK "), (line, seen)
            seen.append(int(line[4:]))
        assert seen[-1] == n, seen
        return seen

    async def closed(self) -> bool:
        """True once the receiver has closed (what arrives meanwhile is kept)."""
        with trio.fail_after(WAIT):
            while True:
                try:
                    data = await self.stream.receive_some(4096)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True
                self.buf += data

    async def kill(self) -> None:
        """Die like a killed process: a reset, whatever was in flight."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
        await self.stream.aclose()


class GatedStore(MemoryStore):
    """A ``MemoryStore`` whose ``sync()`` waits for ``release()``: between
    ``await entered()`` and ``release()`` the outputs are appended but not
    durable."""

    def __init__(self):
        super().__init__()
        self._entered = threading.Semaphore(0)
        self._gate = threading.Semaphore(0)

    def sync(self) -> None:
        self._entered.release()
        assert self._gate.acquire(timeout=WAIT), "sync() never released"
        super().sync()

    async def entered(self) -> None:
        ok = await trio.to_thread.run_sync(self._entered.acquire, True, WAIT)
        assert ok, "sync() was never called"

    def release(self) -> None:
        self._gate.release()


def serve(test, store=None, **options):
    """Run ``test(receiver, port, store)`` against a receiver on port 0."""
    store = MemoryStore() if store is None else store

    async def main():
        receiver = ResumableReceiver(store, **options)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(receiver.serve)
            with trio.fail_after(WAIT):
                await test(receiver, port, store)
            nursery.cancel_scope.cancel()
    trio.run(main)
    return store


async def until(pred) -> None:
    """Wait (polling the event loop) until ``pred()`` holds."""
    with trio.fail_after(WAIT):
        while not pred():
            await trio.sleep(0.001)


# --- the protocol, byte for byte -------------------------------------------------


def test_fresh_receiver_answers_have_0_then_acks_what_it_synced():
    async def t(receiver, port, store):
        w = await FakeWorker.connect(port, "alphabet.alphabet.0.initializer")
        assert await w.line() == b"HAVE 0\n"
        await w.send(frames(outs("a", 0, 10)))
        await store.entered()  # appended, not yet durable
        assert store.outputs["alphabet.alphabet.0.initializer"] == outs("a", 0, 10)
        await w.stream.send_eof()  # a worker done with its outputs
        store.release()
        # The first line after HAVE is the ACK that follows the sync:
        # nothing was acknowledged before it, and the half-closed
        # connection got it before it was closed.
        assert await w.line() == b"ACK 10\n"
        assert await w.closed()
        assert w.buf == b""
    serve(t, GatedStore())


def test_handshake_and_frames_split_over_many_writes():
    async def t(receiver, port, store):
        w = await FakeWorker.connect(port)
        data = b"WALLAROO-OUT 1 slow.stream:1-x\n"
        for i in range(len(data)):
            await w.send(data[i:i + 1])
            await trio.sleep(0)  # let the receiver read each piece alone
        assert await w.have() == 0
        data = frames([b"", b"a" * 300, b"b"])
        for i in range(0, len(data), 7):
            await w.send(data[i:i + 7])
            await trio.sleep(0)
        assert (await w.acks_until(3))[-1] == 3
        assert store.outputs == {"slow.stream:1-x": [b"", b"a" * 300, b"b"]}
    serve(t)


def test_acks_are_coalesced_and_only_grow():
    async def t(receiver, port, store):
        w = await FakeWorker.connect(port, "s")
        assert await w.have() == 0
        await w.send(frames(outs("s", 0, 5)))
        await store.entered()  # the first commit holds outputs 0..4
        for i in range(5, 105, 10):  # ten writes while it syncs
            await w.send(frames(outs("s", i, i + 10)))
        await until(lambda: receiver.statistics().outputs == 105)
        store.release()
        await store.entered()  # the second commit: all of 5..104 at once
        store.release()
        assert await w.acks_until(105) == [5, 105]
        assert store.syncs == 2
    serve(t, GatedStore())


def test_ack_is_never_sent_for_a_count_that_did_not_grow():
    class Wobbly(MemoryStore):
        """have() answers 0 at the handshake, then 5, 3 (went down), 8."""

        def __init__(self):
            super().__init__()
            self.answers = [0, 5, 3, 8]

        def have(self, stream):
            return self.answers.pop(0)

    async def t(receiver, port, store):
        w = await FakeWorker.connect(port, "s")
        assert await w.have() == 0
        for i in range(3):  # three commits, one after the other
            await w.send(frames(outs("s", i, i + 1)))
            await until(lambda: store.syncs == i + 1)
        assert await w.acks_until(8) == [5, 8]
    serve(t, Wobbly(), group_delay=0)


def test_worker_killed_mid_frame_resumes_from_have_never_below_the_ack():
    async def t(receiver, port, store):
        w = await FakeWorker.connect(port, "s")
        assert await w.have() == 0
        await w.send(frames(outs("s", 0, 7)))
        acked = (await w.acks_until(7))[-1]
        await w.send(frames(outs("s", 7, 10)) + frame(b"s#10")[:5])  # torn frame
        await until(lambda: receiver.statistics().outputs == 10)
        await w.kill()
        w = await FakeWorker.connect(port, "s")
        have = await w.have()
        assert have >= acked
        assert have == 10  # whole frames are kept and synced before HAVE
        await w.send(frames(outs("s", have, 15)))
        assert (await w.acks_until(15))[0] > have
        stats = receiver.statistics()
        assert (stats.dropped_outputs, stats.dropped_bytes) == (1, 5)
        assert stats.streams == {"s": 15}
        assert store.outputs["s"] == outs("s", 0, 15)  # each exactly once
    serve(t)


def test_outputs_beyond_the_last_ack_are_kept_and_reported_by_have():
    async def t(receiver, port, store):
        w = await FakeWorker.connect(port, "s")
        assert await w.have() == 0
        await w.send(frames(outs("s", 0, 6)))
        await store.entered()  # outputs 0..5 appended; no ACK yet
        await w.kill()  # the worker dies having seen no ACK: it holds 0..5
        again = await FakeWorker.connect(port, "s")
        store.release()  # the new handshake waited for that sync
        assert await again.have() == 6
        await again.send(frames(outs("s", 6, 9)))
        await store.entered()
        store.release()
        assert await again.acks_until(9) == [9]
        assert store.outputs["s"] == outs("s", 0, 9)  # nothing twice
    serve(t, GatedStore())


def test_two_streams_at_once_each_get_their_own_counts():
    async def t(receiver, port, store):
        a = await FakeWorker.connect(port, "app.p.0.initializer")
        b = await FakeWorker.connect(port, "app.p.0.worker-1")
        assert (await a.have(), await b.have()) == (0, 0)
        for i in range(6):  # interleaved
            await a.send(frames(outs("a", i * 50, i * 50 + 50)))
            if i < 5:
                await b.send(frames(outs("b", i * 20, i * 20 + 20)))
        assert (await a.acks_until(300))[-1] == 300
        assert (await b.acks_until(100))[-1] == 100
        assert store.outputs == {"app.p.0.initializer": outs("a", 0, 300),
                                 "app.p.0.worker-1": outs("b", 0, 100)}
        assert receiver.statistics().streams == {"app.p.0.initializer": 300,
                                                 "app.p.0.worker-1": 100}
        # A third connection for the first stream answers from its count.
        c = await FakeWorker.connect(port, "app.p.0.initializer")
        assert await c.have() == 300
        assert await a.closed()
    serve(t)


def test_a_new_connection_supersedes_the_old_one_closing_it_first():
    async def t(receiver, port, store):
        old = await FakeWorker.connect(port, "s")
        assert await old.have() == 0
        await old.send(frames(outs("s", 0, 4)))
        await store.entered()
        new = await FakeWorker.connect(port, "s")
        assert await old.closed()  # closed before the new one is answered
        await until(lambda: receiver.statistics().live == 1)
        store.release()  # the old connection's outputs become durable
        assert await new.have() == 4  # HAVE counts them: not stale
        try:  # the old connection takes nothing more
            await old.send(frames([b"stale"]))
        except trio.BrokenResourceError:
            pass
        await new.send(frames(outs("s", 4, 6)))
        await store.entered()
        store.release()
        assert await new.acks_until(6) == [6]
        assert store.outputs["s"] == outs("s", 0, 6)
    serve(t, GatedStore())


@pytest.mark.parametrize("hello, reason", [
    (b"WALLAROO-OUT 2 s\n", b"unsupported version '2'"),
    (b"WALLAROO-OUT 1 bad/name\n", b"bad stream name 'bad/name'"),
    (b"WALLAROO-OUT 1 \n", b"bad stream name ''"),
    (b"WALLAROO-OUT 1 " + b"x" * 256 + b"\n", b"bad stream name"),
    (b"WALLAROO-OUT 1 " + b"x" * 400, b"no newline in the first"),
    (b"WALLAROO-RESUME 1 s\n", b"expected 'WALLAROO-OUT 1 <stream>\\n'"),
    (frames([b"a plain sink's output"]), b"expected 'WALLAROO-OUT 1 <stream>\\n'"),
])
def test_bad_handshake_gets_an_error_line_and_is_closed(hello, reason):
    async def t(receiver, port, store):
        w = await FakeWorker.connect(port)
        await w.send(hello)
        line = await w.line()
        assert line.startswith(b"ERROR ") and reason in line, line
        assert await w.closed() and w.buf == b""
        assert receiver.statistics().refused == 1
        ok = await FakeWorker.connect(port, "s")  # the receiver carries on
        assert await ok.have() == 0
    store = serve(t)
    assert store.outputs == {}


def test_the_longest_stream_name_is_accepted():
    async def t(receiver, port, store):
        w = await FakeWorker.connect(port, "A-z0.9_:" * 31 + "x" * 7)
        assert await w.have() == 0
    serve(t)


def test_a_frame_over_the_size_limit_gets_error_after_the_ack_of_what_came_before():
    async def t(receiver, port, store):
        w = await FakeWorker.connect(port, "big")
        assert await w.have() == 0
        await w.send(frames([b"x" * 100, b"y"]) + struct.pack(">I", 101) + b"z" * 101)
        assert await w.line() == b"ACK 2\n"
        line = await w.line()
        assert line == (b"ERROR output 2 of stream big: a frame of 101 bytes is over "
                        b"this receiver's limit of 100 bytes\n")
        assert await w.closed()
        assert store.outputs == {"big": [b"x" * 100, b"y"]}
    serve(t, max_output_size=100)


def test_outputs_the_store_rejects_get_error_and_the_stream_resumes_from_have():
    class Picky(MemoryStore):
        def append(self, stream, first, outputs):
            if b"poison" in outputs:
                raise OutputsRejected(f"output {first + outputs.index(b'poison')} "
                                      f"of stream {stream} is poison")
            super().append(stream, first, outputs)

    async def t(receiver, port, store):
        w = await FakeWorker.connect(port, "s")
        assert await w.have() == 0
        await w.send(frames([b"a", b"b"]))
        assert await w.acks_until(2) == [2]
        await w.send(frames([b"poison", b"c"]))
        assert await w.line() == b"ERROR output 2 of stream s is poison\n"
        assert await w.closed()
        w = await FakeWorker.connect(port, "s")
        assert await w.have() == 2
    store = serve(t, Picky())
    assert store.outputs == {"s": [b"a", b"b"]}


@pytest.mark.parametrize("fails_in", ["sync", "have"])
def test_a_failing_store_stops_serve_and_nothing_is_acknowledged(fails_in):
    class Broken(MemoryStore):
        def sync(self):
            if fails_in == "sync":
                raise OSError(28, "No space left on device")
            super().sync()

        def have(self, stream):  # at the handshake
            if fails_in == "have":
                raise OSError(28, "No space left on device")
            return super().have(stream)

    failures = []

    async def serve_until_it_fails(receiver, task_status=trio.TASK_STATUS_IGNORED):
        try:
            await receiver.serve(task_status=task_status)
        except OSError as e:
            failures.append(e)

    async def main():
        receiver = ResumableReceiver(Broken())
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_until_it_fails, receiver)
            w = await FakeWorker.connect(port, "s")
            if fails_in == "have":
                assert await w.line() is None  # no HAVE, just closed
                return
            assert await w.have() == 0
            await w.send(frames([b"a"]))
            assert await w.closed() and w.buf == b""  # no ACK, just closed
    trio.run(main)
    assert [str(e) for e in failures] == ["[Errno 28] No space left on device"]


def test_stop_syncs_and_acks_what_arrived_then_closes():
    async def main():
        store = MemoryStore()
        receiver = ResumableReceiver(store, group_delay=60.0)  # only stop() commits
        served = trio.Event()

        async def serve_then_note(task_status=trio.TASK_STATUS_IGNORED):
            await receiver.serve(task_status=task_status)
            served.set()

        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_then_note)
            w = await FakeWorker.connect(port, "s")
            assert await w.have() == 0
            await w.send(frames(outs("s", 0, 3)))
            await until(lambda: receiver.statistics().outputs == 3)
            assert store.syncs == 0
            receiver.stop()
            with trio.fail_after(WAIT):
                await served.wait()
            assert await w.line() == b"ACK 3\n"
            assert await w.closed()
        assert store.outputs == {"s": outs("s", 0, 3)} and store.synced == {"s": 3}
    trio.run(main)


# --- wallaroo receive --resumable, real processes ----------------------------------


def start_resumable(procs, path, *args, port=0):
    proc = procs("receive", "--listen", f"127.0.0.1:{port}", "--resumable",
                 "--output", path, *args)
    m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)",
                     proc.wait_line(lambda line: line.startswith("listening on ")))
    assert m, proc.stderr
    return proc, int(m.group(1))


class SocketWorker:
    """A worker's sink for one stream, on blocking sockets in a thread: it
    (re)connects until every output is acknowledged, resending from each
    HAVE, as a worker does after either side crashed.

    With ``pause_at``, its first connection sends the outputs before
    ``pause_at``, waits until they are acknowledged, sends ``in_flight``
    more, sets ``paused`` and waits for ``resume``: a moment at which some
    outputs are durable and others on their way."""

    def __init__(self, port: int, stream: str, outputs: list[bytes], chunk: int = 500,
                 pause_at: int | None = None, in_flight: int = 0):
        self.port, self.stream, self.outputs, self.chunk = port, stream, outputs, chunk
        self.pause_at, self.in_flight = pause_at, in_flight
        self.paused, self.resume = threading.Event(), threading.Event()
        self.haves: list[int] = []
        self.acked = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            deadline = time.monotonic() + 2 * WAIT
            while self.acked < len(self.outputs):
                assert time.monotonic() < deadline, f"{self.stream}: acked {self.acked}"
                try:
                    self._connection()
                except OSError:
                    time.sleep(0.01)  # the receiver is restarting: retry
        except BaseException as e:  # reported by join()
            self.errors.append(e)

    def _connection(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as s:
            s.sendall(b"WALLAROO-OUT 1 %s\n" % self.stream.encode())
            lines = s.makefile("rb")
            have = int(self._line(lines, b"HAVE "))
            assert self.acked <= have <= len(self.outputs), (self.acked, have)
            self.haves.append(have)
            if self.pause_at is not None and not self.paused.is_set():
                self._send(s, have, self.pause_at)
                while self.acked < self.pause_at:
                    self._ack(lines)
                self._send(s, self.pause_at, self.pause_at + self.in_flight)
                self.paused.set()
                assert self.resume.wait(WAIT)
                have = self.pause_at + self.in_flight
            self._send(s, have, len(self.outputs))
            while self.acked < len(self.outputs):
                self._ack(lines)

    def _send(self, s, first: int, end: int):
        for i in range(first, end, self.chunk):
            s.sendall(frames(self.outputs[i:min(i + self.chunk, end)]))

    def _line(self, lines, word: bytes) -> bytes:
        line = lines.readline()
        if not line:
            raise ConnectionResetError(f"closed while waiting for {word!r}")
        assert line.startswith(word) and line.endswith(b"\n"), line
        return line[len(word):-1]

    def _ack(self, lines):
        n = int(self._line(lines, b"ACK "))
        assert self.acked < n <= len(self.outputs), (self.acked, n)
        self.acked = n

    def join(self):
        self.thread.join(3 * WAIT)
        assert not self.errors, self.errors
        assert self.acked == len(self.outputs)


@pytest.mark.parametrize("output", [None, "-"])
def test_resumable_needs_an_output_file(procs, output):
    args = ["receive", "--listen", "127.0.0.1:0", "--resumable"]
    proc = procs(*args, *(["--output", output] if output else []))
    assert proc.wait() == 2
    assert "--resumable needs --output FILE (not stdout)" in proc.stderr


@pytest.mark.parametrize("framing, fmt", [("length", "hex"), ("lines", "text")])
def test_resumable_writes_what_a_plain_receive_writes(procs, tmp_path, framing, fmt):
    if framing == "length":
        cut = records(b"spans two outputs")
        outputs = [records(b"a"), records(b"b\xff", b""), cut[:6], cut[6:],
                   records(bytes(range(40)))]
    else:
        outputs = [b"one\n", b"two\r\nthr", b"ee\n", "wörld\n".encode(), b"\n"]
    plain, resumable = tmp_path / "plain.txt", tmp_path / "resumable.txt"
    args = ("--framing", framing, "--format", fmt, "--expect", "5")
    receiver = procs("receive", "--listen", "127.0.0.1:0", "--output", plain, *args)
    port = int(receiver.wait_line(lambda line: True).rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"".join(outputs))  # a plain sink: the outputs back to back
    assert receiver.wait() == 0, receiver.stderr
    receiver, port = start_resumable(procs, resumable, *args)
    worker = SocketWorker(port, "app.p.0.initializer", outputs, chunk=2)
    worker.join()
    assert receiver.wait() == 0, receiver.stderr
    assert resumable.read_bytes() == plain.read_bytes() != b""
    line = summary(receiver, "received")
    assert f"{resumable} holds 5 records from 1 stream (app.p.0.initializer: 5)" in line
    assert "stopped: expected count reached" in line


def test_resumable_receiver_survives_sigkill_every_output_exactly_once(procs, tmp_path):
    n, streams = 20000, ["app.p.0.initializer", "app.p.0.worker-1", "app.p.1.initializer"]
    path = tmp_path / "out.bin"
    port = free_port()
    args = ("--framing", "length", "--format", "raw")
    receiver, _ = start_resumable(procs, path, *args, port=port)
    sent = {name: [records(b"%s %d" % (name.encode(), i)) for i in range(n)]
            for name in streams}
    workers = [SocketWorker(port, name, sent[name], pause_at=n // 4, in_flight=n // 4)
               for name in streams]
    for w in workers:  # each: a quarter acknowledged, a quarter more sent
        assert w.paused.wait(WAIT), w.errors
    receiver.p.send_signal(signal.SIGKILL)
    receiver.p.wait(WAIT)
    acked_before = {w.stream: w.acked for w in workers}
    assert all(a >= n // 4 for a in acked_before.values()), acked_before
    with open(path, "ab") as f:  # a write the kill tore: half a record
        f.write(sent[streams[0]][0][:7])
    for w in workers:
        w.resume.set()
    receiver, _ = start_resumable(procs, path, *args, "--expect", str(3 * n), port=port)
    for w in workers:
        w.join()
        # The restarted receiver answered what it held: never less than it
        # had acknowledged, never more than it was sent.
        assert len(w.haves) == 2, w.haves
        assert acked_before[w.stream] <= w.haves[1] <= n // 2, (w.haves, acked_before)
    assert receiver.wait() == 0, receiver.stderr
    assert re.search(r"out\.bin: truncated a torn tail of \d+ bytes", receiver.stderr)
    got: dict[bytes, list[int]] = {}
    data, pos = path.read_bytes(), 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        name, i = data[pos + 4:pos + 4 + size].rsplit(b" ", 1)
        got.setdefault(name, []).append(int(i))
        pos += 4 + size
    assert pos == len(data)
    for name in streams:  # 0 lost, 0 duplicates, in order
        assert got[name.encode()] == list(range(n)), name
    line = summary(receiver, "received")
    assert f"holds {3 * n} records from 3 streams (" in line, line
    assert all(f"{name}: {n}" in line for name in streams), line


def test_resumable_cli_names_stream_and_peer_in_what_it_logs(procs, tmp_path):
    path = tmp_path / "out.txt"
    receiver, port = start_resumable(procs, path, "--verbose", "--max-record-size", "10",
                                     "--idle-timeout", "0.2")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(b"WALLAROO-OUT 2 s\n")
        peer = "127.0.0.1:%d" % s.getsockname()[1]
        assert s.makefile("rb").readline().startswith(b"ERROR unsupported version")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(b"WALLAROO-OUT 1 app.p.0.w1\n" + frames([b"ok", b"x" * 11]))
        lines = s.makefile("rb")
        assert [lines.readline() for _ in range(3)] == [
            b"HAVE 0\n", b"ACK 1\n", b"ERROR output 1 of stream app.p.0.w1: a frame of "
            b"11 bytes is over this receiver's limit of 10 bytes\n"]
    assert receiver.wait() == 0, receiver.stderr
    assert (f"connection from {peer}: refused: unsupported version '2'; this receiver "
            f"speaks version 1") in receiver.stderr
    assert re.search(r"stream 'app\.p\.0\.w1' from 127\.0\.0\.1:\d+: HAVE 0",
                     receiver.stderr)
    line = summary(receiver, "received")
    assert line.startswith("received 1 output (2 bytes) on 2 connections in ")
    assert "holds 1 record from 1 stream (app.p.0.w1: 1)" in line
    assert "; 2 connections refused; stopped: no data for 0.2s" in line
    assert path.read_bytes() == b"ok"


def test_resumable_refuses_a_file_shorter_than_its_index(procs, tmp_path):
    path = tmp_path / "out.bin"
    store = FileStore(str(path))
    store.append("s", 0, [b"0123456789"])
    store.sync()
    store.close()
    os.truncate(path, 3)
    proc = procs("receive", "--listen", "127.0.0.1:0", "--resumable", "--output", path)
    assert proc.wait() == 1
    assert "is 3 bytes, but its index" in proc.stderr
    assert "listening on" not in proc.stderr


# --- examples/receiver: the library under a SQLite store --------------------------


def test_sqlite_receiver_example_keeps_each_output_once_across_a_restart(tmp_path):
    db = tmp_path / "outputs.db"
    example = SQLITE_EXAMPLE.parent

    def start():
        proc = subprocess.Popen([sys.executable, example / "sqlite_receiver.py",
                                 "--listen", "127.0.0.1:0", "--db", db],
                                stderr=subprocess.PIPE, text=True)
        first = proc.stderr.readline()
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", first)
        assert m, first + proc.stderr.read()
        return proc, int(m.group(1))

    def fake_worker(port, stream, count):
        done = subprocess.run([sys.executable, example / "fake_worker.py",
                               f"127.0.0.1:{port}", "--stream", stream, "--count",
                               str(count)], capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr
        return done.stdout

    proc, port = start()
    try:
        assert fake_worker(port, "demo.p.0.initializer", 300).startswith(
            "demo.p.0.initializer: HAVE 0, sent 300 outputs")
        assert fake_worker(port, "demo.p.0.worker-1", 100).startswith(
            "demo.p.0.worker-1: HAVE 0, sent 100 outputs")
        proc.kill()  # SIGKILL: the table keeps what was acknowledged
        proc.wait(WAIT)
        proc, port = start()
        assert fake_worker(port, "demo.p.0.initializer", 500).startswith(
            "demo.p.0.initializer: HAVE 300, sent 200 outputs")
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=WAIT)[1]
        assert proc.returncode == 0, err
        assert "received 200 outputs on 1 connection in 1 commit;" in err
    finally:
        proc.kill()
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT stream, n, data FROM outputs ORDER BY stream, n")
        got = [(s, n, bytes(d)) for s, n, d in rows]
    assert got == [("demo.p.0.initializer", i, b"demo.p.0.initializer %d" % i)
                   for i in range(500)] + \
                  [("demo.p.0.worker-1", i, b"demo.p.0.worker-1 %d" % i) for i in range(100)]


def test_receiver_benchmark_runs_and_checks_its_file():
    done = subprocess.run([sys.executable, REPO / "benchmarks" / "bench_receiver.py",
                           "--outputs", "20000", "--streams", "2"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "group commits, file checked)" in done.stdout
    assert re.search(r"median: resumable [\d,]+ outputs/s", done.stdout)
