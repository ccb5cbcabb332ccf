"""Sinks that come and go, receivers that stop reading, many connections:
what a worker does at its sockets (in-process, real TCP)."""

import trio

from .worker_harness import Harness, frames, run


def totals(lines):
    """value -> running total per parity, as proto_app computes it."""
    acc = {0: 0, 1: 0}
    out = {}
    for v in sorted(int(line.split()[0]) for line in lines):
        acc[v % 2] += v
        out[v] = acc[v % 2]
    return out


def test_sink_connects_when_the_receiver_appears_later():
    async def t(nursery):
        h = await Harness(nursery, listen=False).start()
        c = await h.connect()
        await c.send(frames(range(1, 101)))
        await trio.sleep(0.3)  # the sink is retrying; outputs wait
        assert not h.received
        await h.listen()
        out = await h.outputs(100)
        assert [int(x.split()[0]) for x in out] == list(range(1, 101))
        await h.stop()
    run(t)


def test_receiver_restart_midstream_loses_nothing(tmp_path):
    async def t(nursery):
        h = await Harness(nursery, tmp=tmp_path).start()
        c = await h.connect()
        await c.send(frames(range(1, 501)))
        await h.outputs(500)
        h.stop_receiver()
        await trio.sleep(0.1)  # the sink notices the receiver went away
        await c.send(frames(range(501, 1001)))
        await trio.sleep(0.2)
        await h.listen()
        lines = await h.outputs(1000)
        got = {int(x.split()[0]): int(x.split()[1]) for x in lines}
        assert set(got) == set(range(1, 1001))
        assert got == totals(lines)  # every total exact: nothing applied twice
        assert h.receiver_connections >= 2
        await h.stop()
    run(t)


def test_a_receiver_that_stops_reading_bounds_memory_and_pushes_back():
    n = 3_000_000  # 36 MB in, ~45 MB out: more than every kernel buffer holds

    async def t(nursery):
        h = await Harness(nursery, sink_queue_bytes=64 * 1024,
                          inbox_bytes=64 * 1024, max_batch=1000).start()
        h.reading = trio.Event()  # the receiver stops reading
        c = await h.connect()
        payload = frames(range(1, n + 1))
        sent = trio.Event()

        async def send_all():
            await c.send(payload)
            sent.set()
        nursery.start_soon(send_all)
        w = h.worker
        with trio.fail_after(60):  # until the worker stalls
            last = -1
            while w.core.stats.messages != last:
                last = w.core.stats.messages
                await trio.sleep(0.5)
        assert not sent.is_set(), "the sender should be blocked by TCP"
        assert last < n
        # the inbox budget (at least one max-size frame: 1 MiB here) + one read
        assert w.inbox.bytes <= w.inbox.max_bytes + 256 * 1024
        assert all(s.queued_bytes <= 2 * 64 * 1024 for s in w.sinks)
        h.reading.set()  # reading again: everything flows
        with trio.fail_after(120):
            await sent.wait()
            while w.core.stats.outputs < n or h.received.count(b"\n") < n:
                await trio.sleep(0.05)
        await h.stop()
    run(t)


def test_many_concurrent_connections():
    async def t(nursery):
        h = await Harness(nursery).start()
        clients = [await h.connect() for _ in range(20)]
        async with trio.open_nursery() as n:
            for i, c in enumerate(clients):
                n.start_soon(c.send, frames(range(i * 500 + 1, i * 500 + 501)))
        lines = await h.outputs(10000)
        got = {int(x.split()[0]) for x in lines}
        assert got == set(range(1, 10001))
        await h.stop()
    run(t)


def test_sigterm_style_stop_delivers_what_is_in_flight():
    async def t(nursery):
        h = await Harness(nursery).start()
        c = await h.connect()
        await c.send(frames(range(1, 20001)))
        await trio.sleep(0.05)
        await h.stop()  # request_stop: what was read is processed and delivered
        st = h.worker.core.stats
        assert st.messages > 0
        assert h.received.count(b"\n") == st.outputs
    run(t)
