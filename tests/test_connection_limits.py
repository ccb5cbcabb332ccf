"""Hostile or broken connections stay bounded: partial frames count against
the inbox budget (and cannot deadlock it), ``--max-connections``,
``--handshake-timeout`` and ``--idle-timeout`` close what they should, and
running out of file descriptors is one rate-limited log line while the open
connections are served.  In-process workers (``worker_harness``) and, for
the descriptor limit, a real process under a low ``ulimit -n``."""

from __future__ import annotations

import re
import resource
import signal
import socket
import struct
import time

import trio

from .conftest import APPS, WAIT, connect, free_port, start_worker, u64_frames
from .worker_harness import Harness, frames, run

SUM = APPS / "u64_sum.py"


def test_partial_frames_count_against_the_budget_and_cannot_deadlock_it():
    """Eight connections each send 600 KB of a 900 KB frame with a 1 MB
    budget: the worker holds about the budget, not 4.8 MB; once the
    senders finish their frames every one is processed."""
    budget, big, part = 1 << 20, 900_000, 600_000

    async def t(nursery):
        h = await Harness(nursery, max_frame=big, inbox_bytes=budget).start()
        inbox = h.worker.inbox
        peak = 0
        go = trio.Event()
        clients = [await h.connect() for _ in range(8)]

        async def sender(c):
            await c.send(struct.pack(">I", big) + b"\x01" * part)
            await go.wait()
            await c.send(b"\x01" * (big - part) + frames([1]))

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, inbox.bytes)
                await trio.sleep(0.002)
        async with trio.open_nursery() as n:
            n.start_soon(watch)
            for c in clients:
                n.start_soon(sender, c)
            await trio.sleep(1.0)
            held = inbox.bytes
            go.set()
            with trio.fail_after(WAIT):
                while h.worker.core.stats.messages < 16:
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()
        bound = budget + 8 * 4096 + big + 256 * 1024  # + one overdraft read
        assert held <= bound and peak <= bound, (held, peak)
        assert held < 8 * part  # without the budget every partial is held
        await h.stop()
    run(t)


def test_a_sender_that_stalls_in_the_overdraft_is_closed_and_others_go_on():
    """Two senders stall in the middle of 300 KB frames after 200 KB each:
    together they spend the 300 KB budget.  The one let past it (the
    overdraft) is closed after --overdraft-timeout, so a third connection's
    frames get through."""
    big = 300_000

    async def t(nursery):
        h = await Harness(nursery, max_frame=big, inbox_bytes=big,
                          overdraft_timeout=0.5).start()
        stallers = [await h.connect() for _ in range(2)]
        for c in stallers:
            await c.send(struct.pack(">I", big) + b"\x01" * 200_000)
        await trio.sleep(0.3)
        assert h.worker.inbox.bytes >= big  # spent by partial frames
        good = await h.connect()
        await good.send(frames([1, 2, 3]))
        await h.outputs(3)
        closed = 0
        for c in stallers:
            with trio.move_on_after(2):
                closed += await c.closed(timeout=5)
        assert closed >= 1
        await h.stop()
    run(t)


def test_max_connections_closes_the_ones_over_the_limit():
    async def t(nursery):
        h = await Harness(nursery, max_connections=3).start()
        kept = [await h.connect() for _ in range(3)]
        for i, c in enumerate(kept):
            await c.send(frames([i + 1]))
        await h.outputs(3)
        extra = await h.connect()
        assert await extra.closed(timeout=5)
        # closing one frees its place
        await kept[0].aclose()
        await trio.sleep(0.1)
        again = await h.connect()
        await again.send(frames([10]))
        await h.outputs(4)
        await h.stop()
    run(t)


def test_handshake_timeout_closes_a_slow_or_stalled_handshake():
    async def t(nursery):
        h = await Harness(nursery, handshake_timeout=0.3).start()
        stalled = await h.connect()
        await stalled.send(b"WALL")
        slow = await h.connect()
        t0 = trio.current_time()
        with trio.move_on_after(5):
            try:
                for b in b"WALLAROO-RESUME 1 s1\n":
                    await slow.send(bytes([b]))
                    await trio.sleep(0.05)
            except trio.BrokenResourceError:
                pass  # closed by the worker, as it must
        assert await stalled.closed(timeout=5) and await slow.closed(timeout=5)
        assert trio.current_time() - t0 < 2.0
        for c in (stalled, slow):
            assert c.buf.startswith(b"ERROR no complete handshake within 0.3s"), c.buf
        # a connection that never sends a byte is not timed out by it
        quiet = await h.connect()
        with trio.move_on_after(0.6) as scope:
            await quiet.closed(timeout=1)
        assert scope.cancelled_caught
        await h.stop()
    run(t)


def test_idle_timeout_closes_silent_connections_only():
    async def t(nursery):
        h = await Harness(nursery, idle_timeout=0.3).start()
        quiet = await h.connect()
        busy = await h.connect()
        t0 = trio.current_time()
        for i in range(8):
            await busy.send(frames([i + 1]))
            await trio.sleep(0.1)
        assert await quiet.closed(timeout=5)
        assert trio.current_time() - t0 < 2.0
        await h.outputs(8)
        await busy.send(frames([9]))
        await h.outputs(9)
        await h.stop()
    run(t)


def test_running_out_of_descriptors_is_one_line_and_open_connections_are_served(
        procs):
    """ulimit -n 64 and --max-connections 1000: 100 connections exhaust the
    descriptors; the worker says so once (not a traceback per try), its
    sink's reconnect warning says "too many open files", and a connection
    it already had is served to the end."""
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    sink = free_port()  # nobody listens: the sink keeps trying to connect
    w, port = start_worker(procs, SUM, "--max-connections", "1000",
                           "--drain-timeout", "0.5", out_port=sink,
                           preexec_fn=low_limit)
    first = connect(port)
    first.sendall(u64_frames(range(1, 11)))
    flood = []
    for _ in range(100):
        try:
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            break
    time.sleep(1.5)
    first.sendall(u64_frames(range(11, 21)))
    time.sleep(0.3)
    for s in flood:
        s.close()
    first.close()
    w.signal(signal.SIGTERM)
    assert w.wait() in (0, 3)
    log = w.stderr
    fd_lines = [line for line in log.splitlines() if "cannot accept connections" in line]
    assert 1 <= len(fd_lines) <= 2, log
    assert "Too many open files" in fd_lines[0] and "ulimit -n" in fd_lines[0]
    assert f"127.0.0.1:{port}" in fd_lines[0]
    assert "Traceback" not in log
    assert re.search(r"stopped: 20 messages in", log), log
    sink_lines = [line for line in log.splitlines() if "cannot connect" in line]
    assert "Connection refused" in sink_lines[0]
    assert any("Too many open files" in line for line in sink_lines), sink_lines


def test_peer_streams_are_refused():
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        await c.send(b"WALLAROO-RESUME 1 peer:worker-1\n")
        line = await c.line()
        assert line.startswith(b"ERROR stream names starting with 'peer:' are "
                               b"reserved"), line
        assert await c.closed()
        await h.stop()
    run(t)


def test_the_superseded_connection_is_told_before_its_close():
    async def t(nursery):
        h = await Harness(nursery).start()
        old = await h.connect()
        await old.send(b"WALLAROO-RESUME 1 s1\n")
        assert await old.line() == b"RESUME 0\n"
        new = await h.connect()
        await new.send(b"WALLAROO-RESUME 1 s1\n")
        assert await new.line() == b"RESUME 0\n"
        assert await old.closed()
        assert old.buf.endswith(b"ERROR superseded\n"), old.buf
        await h.stop()
    run(t)


def test_a_partial_handshake_prefix_then_close_is_logged_as_such(procs):
    w, port = start_worker(procs, SUM)
    with connect(port) as s:
        s.sendall(b"WALL")
    line = w.wait_line("begin a resumable handshake")
    assert "closed after 4 bytes" in line and "nothing accepted" in line
    assert "exceeds the maximum frame size" not in w.stderr
    w.terminate()


def test_an_absurd_frame_length_gets_a_hint(procs):
    w, port = start_worker(procs, SUM)
    with connect(port) as s:
        s.sendall(b"hello world\n")
        s.settimeout(WAIT)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
    line = w.wait_line("exceeds the maximum frame size")
    assert "`wallaroo send --file` frames lines" in line
    w.terminate()
    assert "1 oversized and 0 torn frames" in w.wait_line("stopped:")


def test_a_resumable_client_that_resets_its_connection_does_not_stop_the_worker():
    """A reset inside the resumable connection's tasks arrives as an
    exception group: it closes that connection only."""
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        await c.send(b"WALLAROO-RESUME 1 s1\n" + frames([1, 2]))
        await c.until_ack(2)
        c.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                   struct.pack("ii", 1, 0))
        await c.send(frames([3]))
        await c.aclose()  # RST
        await trio.sleep(0.2)
        again = await h.connect()
        await again.send(b"WALLAROO-RESUME 1 s1\n")
        assert (await again.line()).startswith(b"RESUME ")
        await h.stop()
    run(t)
