"""The Kafka source: every partition of a topic, spread over the workers,
each record one message whose payload is the record's value.

**Positions.**  Each partition is a stream of the pipeline named
``kafka:<topic>:<partition>``; its count in the worker's database is the
*next offset to read* (not a number of records: transaction markers and
aborted records leave gaps in offsets).  The offsets a batch consumed are
part of that batch's commit (the stream counts of DESIGN.md §4.2); after a
restart the consumer is assigned each partition at the offset the worker's
own database holds, so a SIGKILL loses nothing and applies nothing twice.
The broker's committed offsets (consumer group ``wallaroo.<application>.
<pipeline>``) are written after the worker's commits, for outside tools;
with ``--resilience-dir`` they are never read (a partition the database
holds no offset for starts at the beginning).  Without it, nothing of the
worker survives a restart, and a partition starts at that group's committed
offset, like any consumer's.

**Assignment.**  Partition ``p`` of ``P`` belongs to member ``p % N`` of the
``N`` workers (in membership order): each worker ``assign``s its share, no
group rebalancing to wait for, and a worker that was SIGKILLed takes its
partitions back on restart without the broker having to notice it died.

**Logged rows.**  What a batch consumed is logged as frames of a 4-byte
big-endian length and the record's value (``RECORD_FRAMING``), under the
partition's stream with its first offset, so replay never depends on the
client.  A run of records is handed to the engine only when it continues
the partition's offsets, or once what was queued before it is taken:
otherwise offsets inside one logged chunk would not be contiguous.

**Idle partitions.**  Some brokers answer an empty fetch at once instead of
waiting, so an assigned consumer with nothing to read spins (a core between
the client and the broker).  After ``IDLE_AFTER`` seconds without records
the source unassigns and watches the high watermarks every
``WATCH_INTERVAL``; it assigns again, at its own offsets, when one moves.

The client's blocking calls run in a thread (one at a time per consumer);
the trio loop never waits on librdkafka.
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass

import trio

from .._spec import DecoderSpec, SourceSpec
from .base import KAFKA
from .kafka_client import ClientErrors, base_config, bootstrap, kafka

STREAM_PREFIX = "kafka:"
IDLE_AFTER = 0.5
WATCH_INTERVAL = 0.1
CONSUME_BATCH = 250
CONSUME_WAIT = 0.05
METADATA_TIMEOUT = 5.0
BACKOFF = (0.2, 5.0)
BROKER_COMMIT_EVERY = 1.0


def _record_length(header: bytes) -> int:
    return int.from_bytes(header, "big")


# how a Kafka record's value is kept in logged input rows
RECORD_FRAMING = DecoderSpec(name="kafka record", header_length=4, length_fmt=">I",
                             payload_length=_record_length, decode=bytes)
_LEN = struct.Struct(">I")


def stream_of(topic: str, partition: int) -> str:
    return f"{STREAM_PREFIX}{topic}:{partition}"


def partitions_of(partitions: list[int], member: int, members: int) -> list[int]:
    """The partitions one member consumes: ``p % members == member``."""
    return [p for p in sorted(partitions) if p % members == member]


@dataclass
class _Partition:
    number: int
    stream: str
    next: int | None  # the next offset to hand over (None: from the beginning)
    # where the consumer stood when it went idle: past transaction markers
    # and aborted records, which never become messages
    idle_at: int = -1


class KafkaSource:
    def __init__(self, index: int, spec: SourceSpec, inbox, counts: dict,
                 registry, log: logging.Logger, application: str,
                 member: int = 0, members: int = 1, durable: bool = True,
                 options: dict | None = None):
        self.index = index
        self.spec = spec
        cfg = spec.config
        self.topic = str(cfg.topic)
        self.brokers = bootstrap(cfg.brokers)
        self.log_level = getattr(cfg, "log_level", None)
        self.inbox = inbox
        self.counts = counts  # (pipeline, stream) -> next offset (the core's)
        self.registry = registry
        self.log = log
        self.group = f"wallaroo.{application}.{spec.pipeline}"
        self.member, self.members = member, members
        # without a resilience directory nothing of ours survives a restart:
        # a partition we hold no offset for starts at the group's committed
        # offset (what the last run had processed), else at the beginning
        self.durable = durable
        self.options = dict(options or {})  # --kafka-option, applied last
        self.what = (f"kafka source of pipeline {spec.pipeline!r} (topic "
                     f"{self.topic!r}, brokers {self.brokers})")
        self.errors = ClientErrors(log, self.what)
        self.parts: dict[int, _Partition] = {}
        self.records = 0
        self.bad_frames = self.torn_frames = 0  # TCP notions: none here
        self.consumer = None
        self._limiter = trio.CapacityLimiter(1)
        self._assigned = False

    @property
    def address(self) -> str:
        return f"kafka:{self.topic}"

    async def bind(self):
        return None

    # -- the client, in a thread -------------------------------------------
    async def _call(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter,
                                             abandon_on_cancel=False)

    def _make_consumer(self):
        ck = kafka()
        conf = base_config(self.brokers, self.log_level, self.errors, self.options)
        conf.update({
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
        })
        return ck.Consumer(conf)

    def _partitions(self) -> list[int]:
        # all topics: a request naming the topic may make some brokers
        # create it, and a typo must be reported, not created
        md = self.consumer.list_topics(timeout=METADATA_TIMEOUT)
        t = md.topics.get(self.topic)
        if t is None or t.error is not None or not t.partitions:
            why = (t.error.str() if t is not None and t.error is not None else
                   "no partitions" if t is not None else "no such topic")
            raise LookupError(f"topic {self.topic!r} is not available: {why}")
        return sorted(t.partitions)

    def _assign(self, on: bool) -> None:
        ck = kafka()
        if on:
            self.consumer.assign([
                ck.TopicPartition(self.topic, p.number,
                                  p.next if p.next is not None else
                                  ck.OFFSET_BEGINNING if self.durable else
                                  ck.OFFSET_STORED)
                for p in self.parts.values()])
        else:
            self.consumer.unassign()

    def _moved(self) -> bool:
        """Whether any partition's high watermark is past our offset."""
        ck = kafka()
        for p in self.parts.values():
            lo, hi = self.consumer.get_watermark_offsets(
                ck.TopicPartition(self.topic, p.number), timeout=METADATA_TIMEOUT,
                cached=False)
            if hi > max(lo, p.idle_at, -1 if p.next is None else p.next):
                return True
        return False

    def _note_positions(self) -> None:
        ck = kafka()
        tps = self.consumer.position([ck.TopicPartition(self.topic, p.number)
                                      for p in self.parts.values()])
        for tp in tps:
            if tp.error is None and tp.offset >= 0:
                self.parts[tp.partition].idle_at = tp.offset

    def _commit_to_broker(self, offsets: list[tuple[int, int]]) -> None:
        ck = kafka()
        self.consumer.commit(offsets=[ck.TopicPartition(self.topic, p, o)
                                      for p, o in offsets], asynchronous=True)

    # -- serving -------------------------------------------------------------
    async def serve(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                await self._session()
                return
            except (LookupError, RuntimeError) as e:
                self.log.warning("%s: %s; retrying in %.1fs", self.what, e, delay)
            except Exception as e:  # the client's KafkaException and kin
                self.log.warning("%s: %s: %s; retrying in %.1fs", self.what,
                                 type(e).__name__, e, delay)
            finally:
                await self._close()
            await trio.sleep(delay)
            delay = min(BACKOFF[1], delay * 2)

    async def _close(self) -> None:
        c, self.consumer = self.consumer, None
        self._assigned = False
        if c is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(c.close)

    async def _session(self) -> None:
        self.consumer = await self._call(self._make_consumer)
        numbers = await self._call(self._partitions)
        mine = partitions_of(numbers, self.member, self.members)
        for n in mine:
            stream = stream_of(self.topic, n)
            if n not in self.parts:
                nxt = self.counts.get((self.spec.pipeline, stream))
                self.parts[n] = _Partition(n, stream, nxt)
        self.log.info("%s: consuming partitions %s of %d%s", self.what,
                      ",".join(map(str, mine)) or "none", len(numbers),
                      "".join(f"; partition {p.number} from offset {p.next}"
                              for p in self.parts.values() if p.next is not None))
        if not mine:
            await trio.sleep_forever()
        await self._call(self._assign, True)
        self._assigned = True
        last_record = time.monotonic()
        last_broker_commit = 0.0
        while True:
            await self.inbox.reserve(self)
            self.inbox.release(self)  # reserve's overdraft is only for this wait
            msgs = await self._call(self.consumer.consume, CONSUME_BATCH, CONSUME_WAIT)
            now = time.monotonic()
            if msgs:
                last_record = now
                await self._hand(msgs)
            elif now - last_record > IDLE_AFTER:
                await self._idle()
                last_record = time.monotonic()
            if now - last_broker_commit > BROKER_COMMIT_EVERY:
                last_broker_commit = now
                await self._broker_commit()

    async def _idle(self) -> None:
        await self._call(self._note_positions)
        await self._call(self._assign, False)
        self._assigned = False
        await self._broker_commit()
        while not await self._call(self._moved):
            await trio.sleep(WATCH_INTERVAL)
        await self._call(self._assign, True)
        self._assigned = True

    async def _broker_commit(self) -> None:
        """Offsets the worker has committed, for outside tools."""
        offsets = []
        for p in self.parts.values():
            st = self.registry.streams.get((self.spec.pipeline, p.stream))
            if st is not None and st.durable > 0:
                offsets.append((p.number, st.durable))
        if offsets and self.consumer is not None:
            try:
                await self._call(self._commit_to_broker, offsets)
            except Exception as e:
                self.errors.log.debug("%s: broker commit failed: %s", self.what, e)

    async def _hand(self, msgs) -> None:
        """Queue records in runs of contiguous offsets per partition."""
        runs: dict[int, list] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                self.errors(err)
                continue
            runs.setdefault(m.partition(), []).append(m)
        for number, recs in runs.items():
            p = self.parts.get(number)
            if p is None:  # not ours (cannot happen with assign)
                continue
            start = 0
            for i in range(1, len(recs) + 1):
                if i == len(recs) or recs[i].offset() != recs[i - 1].offset() + 1:
                    await self._put(p, recs[start:i])
                    start = i

    async def _put(self, p: _Partition, recs) -> None:
        first = recs[0].offset()
        if p.next is not None and first < p.next:  # seen already (a re-fetch)
            recs = [r for r in recs if r.offset() >= p.next]
            if not recs:
                return
            first = recs[0].offset()
        key = ("stream", self.index, p.stream)
        if p.next is not None and first != p.next:
            # a gap (a transaction marker, aborted records): what is queued
            # must be taken first, so no logged chunk spans it
            while self.inbox.arrived_for(key):
                await self.inbox.wait_space()
        payloads = [r.value() or b"" for r in recs]
        pack = _LEN.pack
        frames = b"".join(pack(len(v)) + v for v in payloads)
        self.inbox.put_nowait(None, key, self.index, payloads, frames, p.stream,
                              first, f"kafka topic {self.topic!r} partition "
                              f"{p.number}", first, KAFKA)
        p.next = recs[-1].offset() + 1
        self.records += len(recs)
