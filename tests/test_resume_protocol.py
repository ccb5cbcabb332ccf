"""The resumable-source handshake, byte for byte (DESIGN.md §5), and the
plain-connection edge cases, against a real worker on trio in-process."""

from __future__ import annotations

import struct

import pytest
import trio

from .worker_harness import Harness, frames, run


def test_plain_connection_roundtrip():
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        await c.send(frames([1, 2, 3, 4]))
        out = await h.outputs(4)
        assert out == [b"1 1", b"2 2", b"3 4", b"4 6"]
        await h.stop()
    run(t)


def test_handshake_resume_then_acks_cumulative_and_growing():
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        await c.send(b"WALLAROO-RESUME 1 s1\n")
        assert await c.line() == b"RESUME 0\n"
        for i in range(5):
            await c.send(frames(range(i * 20 + 1, i * 20 + 21)))
        acks = await c.until_ack(100)
        ns = [int(x.split()[1]) for x in acks]
        assert all(x.startswith(b"ACK ") for x in acks)
        assert ns == sorted(set(ns)), "ACKs must only grow"
        assert len(await h.outputs(100)) == 100
        await h.stop()
    run(t)


def test_handshake_prefix_split_over_many_writes():
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        for b in b"WALLAROO-RESUME 1 slow.stream:1-x\n":
            await c.send(bytes([b]))
            await trio.sleep(0)
        assert await c.line() == b"RESUME 0\n"
        await c.send(frames([7]))
        await c.until_ack(1)
        await h.stop()
    run(t)


def test_new_handshake_closes_old_connection_and_is_not_stale():
    async def t(nursery):
        h = await Harness(nursery).start()
        old = await h.connect()
        await old.send(b"WALLAROO-RESUME 1 s1\n")
        assert await old.line() == b"RESUME 0\n"
        await old.send(frames(range(1, 51)))
        await trio.sleep(0.05)
        new = await h.connect()
        await new.send(b"WALLAROO-RESUME 1 s1\n")
        resume = await new.line()
        assert await old.closed()
        # everything the old connection delivered is committed before RESUME
        assert resume == b"RESUME 50\n"
        await new.send(frames(range(51, 61)))
        await new.until_ack(60)
        await h.stop()
    run(t)


@pytest.mark.parametrize("hello, reason", [
    (b"WALLAROO-RESUME 2 s1\n", b"unsupported version"),
    (b"WALLAROO-RESUME 1 bad/name\n", b"bad stream name"),
    (b"WALLAROO-RESUME 1 " + b"x" * 256 + b"\n", b"too long"),
    (b"WALLAROO-RESUME 1 \n", b"bad stream name"),
])
def test_bad_handshake_gets_error_and_close(hello, reason):
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        await c.send(hello)
        line = await c.line()
        assert line.startswith(b"ERROR ") and reason in line, line
        assert await c.closed()
        ok = await h.connect()  # the worker carries on
        await ok.send(frames([5]))
        assert await h.outputs(1) == [b"5 5"]
        await h.stop()
    run(t)


def test_oversized_frame_on_resumable_stream_is_refused_and_not_counted():
    async def t(nursery):
        h = await Harness(nursery, max_frame=64).start()
        c = await h.connect()
        await c.send(b"WALLAROO-RESUME 1 s1\n")
        assert await c.line() == b"RESUME 0\n"
        await c.send(frames([1, 2, 3]) + struct.pack(">I", 1000) + b"x" * 20)
        lines = []
        while True:
            line = await c.line()
            if line is None:
                break
            lines.append(line)
        assert lines[-1].startswith(b"ERROR ") and b"maximum frame size" in lines[-1]
        again = await h.connect()
        await again.send(b"WALLAROO-RESUME 1 s1\n")
        assert await again.line() == b"RESUME 3\n"
        await h.stop()
    run(t)


def test_plain_torn_frame_closes_only_that_connection():
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        await c.send(frames([1, 2]) + frames([3])[:7])
        await c.aclose()
        assert await h.outputs(2) == [b"1 1", b"2 2"]
        other = await h.connect()
        await other.send(frames([3]))
        assert (await h.outputs(3))[-1] == b"3 4"
        await h.stop()
    run(t)


def test_plain_connection_that_starts_like_the_prefix_is_plain():
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        # "WALLAROO" as a 4-byte header would announce a huge frame: the
        # connection is plain, the header is over the limit, and it closes.
        await c.send(b"WALLAROO-RESUMX 1 s1\n")
        assert await c.closed()
        await h.stop()
    run(t)


def test_resume_count_is_durable_across_restart(tmp_path):
    async def t(nursery):
        h = await Harness(nursery, tmp=tmp_path).start()
        c = await h.connect()
        await c.send(b"WALLAROO-RESUME 1 s1\n")
        assert await c.line() == b"RESUME 0\n"
        await c.send(frames(range(1, 31)))
        await c.until_ack(30)
        await h.stop()
        await h.start()
        c = await h.connect()
        await c.send(b"WALLAROO-RESUME 1 s1\n")
        assert await c.line() == b"RESUME 30\n"
        # state survived too: 31 is odd, odd total so far 1+3+...+29 = 225
        await c.send(frames([31]))
        out = await h.outputs(31)
        assert out[-1] == b"31 256"
        await h.stop()
    run(t)


def test_resume_without_resilience_counts_what_this_process_accepted():
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        await c.send(b"WALLAROO-RESUME 1 s1\n")
        assert await c.line() == b"RESUME 0\n"
        await c.send(frames(range(1, 11)))
        await c.until_ack(10)
        await c.aclose()
        c = await h.connect()
        await c.send(b"WALLAROO-RESUME 1 s1\n")
        assert await c.line() == b"RESUME 10\n"
        await h.stop()
    run(t)


def test_half_closed_resumable_client_still_gets_its_final_ack():
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        await c.send(b"WALLAROO-RESUME 1 hc\n")
        assert await c.line() == b"RESUME 0\n"
        await c.send(frames(range(1, 101)))
        await c.stream.send_eof()
        lines = []
        while (line := await c.line()) is not None:
            lines.append(line)
        assert lines and lines[-1] == b"ACK 100\n"
        again = await h.connect()
        await again.send(b"WALLAROO-RESUME 1 hc\n")
        assert await again.line() == b"RESUME 100\n"
        await h.stop()
    run(t)
