"""The inbox splits a backlog into bounded batches at frame boundaries."""

import struct

import trio

from wallaroo.runtime.inbox import Inbox


def framed(values):
    payloads = [struct.pack(">Q", v) for v in values]
    return payloads, b"".join(struct.pack(">I", 8) + p for p in payloads)


def test_take_splits_at_frame_boundaries_and_rotates_connections():
    async def main():
        inbox = Inbox(1 << 20, [4])
        a1, fa1 = framed(range(0, 6))
        a2, fa2 = framed(range(6, 9))
        b, fb = framed(range(100, 103))
        inbox.put_nowait(None, "a", 0, list(a1), fa1, "sa", 10, "conn a")
        inbox.put_nowait(None, "b", 0, list(b), fb, None, None, "conn b")
        inbox.put_nowait(None, "a", 0, list(a2), fa2, "sa", 16, "conn a")
        first = inbox.take(5)
        assert len(first) == 1
        c = first[0]
        assert c.payloads == a1[:5] and c.frames == fa1[:5 * 12] and c.first_seq == 10
        # "a" moved behind "b"
        second = inbox.take(100)
        assert [ch.origin for ch in second] == ["conn b", "conn a"]
        assert second[0].payloads == b and second[0].frames == fb
        rest = second[1]
        assert rest.first_seq == 15
        assert rest.payloads == a1[5:] + a2
        assert rest.frames == fa1[5 * 12:] + fa2
        assert not inbox and inbox.bytes == 0
    trio.run(main)


def test_random_puts_and_takes_keep_every_frame_once_in_order():
    import random
    rnd = random.Random(7)

    async def main():
        inbox = Inbox(1 << 30, [4])
        sent = {c: [] for c in "abc"}
        got = {c: [] for c in "abc"}
        next_v = 0
        for _ in range(300):
            if rnd.random() < 0.6:
                c = rnd.choice("abc")
                vals = list(range(next_v, next_v + rnd.randint(1, 50)))
                next_v += len(vals)
                payloads, fr = framed(vals)
                inbox.put_nowait(None, c, 0, payloads, fr, c, len(sent[c]), c)
                sent[c].extend(vals)
            else:
                for ch in inbox.take(rnd.randint(1, 80)):
                    c = ch.origin
                    assert ch.first_seq == len(got[c])  # contiguous per stream
                    vals = [struct.unpack(">Q", p)[0] for p in ch.payloads]
                    assert ch.frames == framed(vals)[1]
                    got[c].extend(vals)
        for ch in inbox.take(10 ** 9):
            vals = [struct.unpack(">Q", p)[0] for p in ch.payloads]
            assert ch.first_seq == len(got[ch.origin])
            got[ch.origin].extend(vals)
        assert got == sent
        assert inbox.bytes == 0
    trio.run(main)


def test_ungets_and_pending_chunks_keep_every_frame_once_in_order():
    """Random puts, takes, ungets of taken chunks (whole or their tails, as
    a batch cut by time does) and pending chunks queued first: every frame
    comes out once, in order per key, with contiguous stream counts."""
    import random
    from wallaroo.runtime.core import Chunk
    rnd = random.Random(11)

    async def main():
        inbox = Inbox(1 << 30, [4])
        sent = {c: [] for c in "abc"}
        got = {c: [] for c in "abc"}
        # pending input of a previous run comes first for key "a"
        pend, fr = framed(range(10**6, 10**6 + 7))
        inbox.put_pending("a", Chunk(0, pend, fr, "a", 0, "a", pending=3))
        sent["a"].extend(range(10**6, 10**6 + 7))
        next_v = 0
        for _ in range(400):
            r = rnd.random()
            if r < 0.5:
                c = rnd.choice("abc")
                vals = list(range(next_v, next_v + rnd.randint(1, 50)))
                next_v += len(vals)
                payloads, f = framed(vals)
                inbox.put_nowait(None, c, 0, payloads, f, c, len(sent[c]), c)
                sent[c].extend(vals)
                continue
            chunks = inbox.take(rnd.randint(1, 80))
            if chunks and r < 0.8:  # a batch ran out of time
                k = rnd.randrange(len(chunks))
                done = rnd.randrange(len(chunks[k].payloads) + 1)
                keep = chunks[:k]
                rest = chunks[k:]
                if done:
                    head, tail = rest[0].split(done, 4)
                    keep.append(head)
                    rest[0] = tail
                for ch in keep:
                    _consume(ch, got)
                inbox.unget(rest, cut=bool(done))
            else:
                for ch in chunks:
                    _consume(ch, got)
        for ch in inbox.take_all():
            _consume(ch, got)
        assert got == sent
        assert inbox.bytes == 0
    trio.run(main)


def _consume(ch, got):
    vals = [struct.unpack(">Q", p)[0] for p in ch.payloads]
    assert ch.frames == framed(vals)[1]
    assert ch.first_seq == len(got[ch.key])  # contiguous per stream
    got[ch.key].extend(vals)


def test_a_take_copies_only_what_it_takes_not_the_backlog():
    """A batch of a long backlog cuts its frames from the front of the
    pieces as they were read: the pieces behind stay the very objects the
    connection queued (they used to be joined into one blob at every take,
    copying the whole backlog per batch)."""
    async def main():
        inbox = Inbox(1 << 30, [4])
        pieces = []
        for i in range(50):
            payloads, fr = framed(range(i * 100, i * 100 + 100))
            pieces.append(fr)
            inbox.put_nowait(None, "a", 0, payloads, fr, None, None, "conn a")
        q = inbox._queues["a"]
        (ch,) = inbox.take(150)  # one piece and a half
        assert ch.frames == pieces[0] + pieces[1][:50 * 12]
        assert len(q.frames) == 49 and q.frames[0] is pieces[1] and q.fpos == 50 * 12
        assert all(a is b for a, b in zip(q.frames, pieces[1:]))
        (ch,) = inbox.take(50)  # exactly the rest of a piece
        assert ch.frames == pieces[1][50 * 12:] and q.frames[0] is pieces[2]
        (ch,) = inbox.take(10 ** 6)
        assert ch.frames == b"".join(pieces[2:]) and inbox.bytes == 0
    trio.run(main)
