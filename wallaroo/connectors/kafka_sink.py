"""The Kafka sink: each output produced to the sink's topic with its key,
by an idempotent producer (``enable.idempotence``: retries never reorder or
repeat a key's records).

**The outputs.**  A Kafka encoder returns ``(value, key)`` (Wallaroo 0.5's
``(value, key, partition)`` is accepted too; ``str`` is UTF-8 encoded;
``key`` may be ``None``).  The engine keeps each output in the outbox as
one frame (``pack_record``): the key's length (-1: none) and the key, the
partition (-1: the producer's partitioner, by key), then the value.  An
output whose value is larger than the sink's ``max_message_size`` costs
that output only: a counted failure naming the sink and the size
(DESIGN.md §4.6).

**Delivery** is the broker's delivery report: outputs stay in the outbox
until every one before them is confirmed, and the delivery position is the
longest confirmed prefix.  After a restart the unconfirmed ones are
produced again: at least once.  A delivery that fails (an unreachable
broker past ``message.timeout.ms``, a missing topic) is logged naming the
topic and brokers, and everything from the first unconfirmed output is
produced again after a backoff by a new producer: nothing is dropped.  A
record the broker refuses as too large cannot succeed on any retry: it is
counted as a failure, logged, and passed.

The client's blocking calls (polling for delivery reports, flushing) run
in a thread; ``produce`` itself only queues and stays on the trio loop.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import struct
from typing import Callable

import trio

from .._compat import BaseExceptionGroup
from .._spec import EncoderSpec, SinkSpec
from .kafka_client import ClientErrors, base_config, bootstrap, kafka
from .tcp_sink import OutboxQueue, TCPSink

POLL_WAIT = 0.05
YIELD_EVERY = 200  # produce() calls between two yields to the event loop
BACKOFF = (0.2, 5.0)
MESSAGE_TIMEOUT_MS = 30000
_I = struct.Struct(">i")
_FRAME = struct.Struct(">I")
DEFAULT_MAX_MESSAGE_SIZE = 100000


class OutputTooLarge(Exception):
    pass


def _as_bytes(x, what: str) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, (int, float)) and what == "key":
        return str(x).encode("utf-8")
    raise TypeError(f"the Kafka encoder's {what} is {type(x).__name__} {x!r:.60}, "
                    f"not bytes or str")


def pack_record(value: bytes, key: bytes | None, partition: int | None) -> bytes:
    k = b"" if key is None else key
    return (_I.pack(-1 if key is None else len(k)) + k
            + _I.pack(-1 if partition is None else partition) + value)


def unpack_record(b: bytes) -> tuple[bytes, bytes | None, int | None]:
    (kn,) = _I.unpack_from(b, 0)
    pos = 4 + max(kn, 0)
    key = None if kn < 0 else b[4:pos]
    (part,) = _I.unpack_from(b, pos)
    return b[pos + 4:], key, (None if part < 0 else part)


def kafka_encoder(spec: SinkSpec) -> EncoderSpec:
    """The sink's encoder as the engine runs it: the application's, then
    ``pack_record``."""
    user = spec.encoder.encode
    limit = getattr(spec.config, "max_message_size", None) or DEFAULT_MAX_MESSAGE_SIZE
    label = spec.label

    def encode(item):
        r = user(item)
        if isinstance(r, tuple):
            if len(r) not in (2, 3):
                raise TypeError(f"a Kafka encoder returns (value, key) or (value, "
                                f"key, partition), got a tuple of {len(r)}")
            value, key = r[0], r[1]
            part = r[2] if len(r) == 3 else None
        else:
            value, key, part = r, None, None
        value = _as_bytes(value, "value")
        key = None if key is None else _as_bytes(key, "key")
        if part is not None and (not isinstance(part, int) or part < 0):
            raise TypeError(f"the Kafka encoder's partition is {part!r}, not a "
                            f"partition number")
        if len(value) > limit:
            raise OutputTooLarge(
                f"an output of {len(value)} bytes is larger than {label}'s "
                f"max_message_size of {limit} bytes (--kafka_sink_max_message_size); "
                f"it is not produced")
        return pack_record(value, key, part)
    return EncoderSpec(name=spec.encoder.name, encode=encode)


def with_kafka_encoders(app):
    """``app`` with each Kafka sink's encoder wrapped by ``kafka_encoder``
    (the same application when it has none)."""
    if not any(s.kind == "kafka" for s in app.sinks):
        return app
    sinks = tuple(dataclasses.replace(s, encoder=kafka_encoder(s))
                  if s.kind == "kafka" else s for s in app.sinks)
    return dataclasses.replace(app, sinks=sinks)


class _Retry(Exception):
    """A delivery failed: produce again from the first unconfirmed output."""


class KafkaSink(TCPSink):
    """Delivers a sink's committed outputs to a Kafka topic (the outbox
    plumbing is the TCP sink's)."""

    def __init__(self, spec: SinkSpec, queue: OutboxQueue,
                 on_delivered: Callable[[int, int], None], log: logging.Logger,
                 limiter: trio.CapacityLimiter | None = None,
                 on_failed: Callable[[str], None] | None = None,
                 options: dict | None = None):
        super().__init__(spec, queue, on_delivered, log, BACKOFF, limiter)
        self.options = dict(options or {})  # --kafka-option, applied last
        cfg = spec.config
        self.topic = str(cfg.topic)
        self.brokers = bootstrap(cfg.brokers)
        self.log_level = getattr(cfg, "log_level", None)
        self.buffer_ms = int(getattr(cfg, "max_produce_buffer_ms", 0) or 0)
        self.max_message_size = int(getattr(cfg, "max_message_size", 0)
                                    or DEFAULT_MAX_MESSAGE_SIZE)
        self.what = (f"{spec.label} (kafka topic {self.topic!r}, brokers "
                     f"{self.brokers})")
        self.errors = ClientErrors(log, self.what)
        self.on_failed = on_failed
        self.producer = None
        self.produced_records = 0
        self.refused = 0  # outputs the broker refused for good (too large)
        self.retries = 0
        self._client = trio.CapacityLimiter(1)

    @property
    def address(self) -> str:
        return f"kafka:{self.topic}"

    def _make_producer(self):
        ck = kafka()
        conf = base_config(self.brokers, self.log_level, self.errors, self.options)
        conf.update({
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.buffer_ms,
            "message.max.bytes": max(1_000_000, self.max_message_size + 4096),
            "message.timeout.ms": MESSAGE_TIMEOUT_MS,
        })
        return ck.Producer(conf)

    async def run(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                self.producer = await trio.to_thread.run_sync(self._make_producer,
                                                              limiter=self._client)
                await self._deliver()
            except _Retry as e:
                self.retries += 1
                self.log.warning("%s: %s; producing again from output %d in "
                                 "%.1fs, nothing dropped (%d outputs waiting)",
                                 self.what, e, self.queue.delivered, delay,
                                 self.queue.queued_outputs)
            except kafka().KafkaException as e:
                self.retries += 1
                self.log.warning("%s: %s; retrying in %.1fs, nothing dropped (%d "
                                 "outputs waiting)", self.what, e, delay,
                                 self.queue.queued_outputs)
            finally:
                p, self.producer = self.producer, None
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_drop, p, limiter=self._client)
            await trio.sleep(delay)
            delay = min(BACKOFF[1], delay * 2)

    async def _deliver(self) -> None:
        q = self.queue
        # outputs produced and not yet confirmed: seq -> (done, error)
        window: collections.OrderedDict[int, object] = collections.OrderedDict()
        reports: list[tuple[int, object]] = []  # filled by delivery callbacks
        cursor = q.delivered

        def on_delivery(seq):
            def cb(err, msg):
                reports.append((seq, err))
            return cb

        try:
            await self._produce_and_poll(q, window, reports, cursor, on_delivery)
        except BaseExceptionGroup as eg:  # a _Retry from the polling task
            retry = eg.subgroup(lambda x: isinstance(x, _Retry))
            if retry is None:
                raise
            while isinstance(retry, BaseExceptionGroup):
                retry = retry.exceptions[0]
            raise retry from None

    async def _produce_and_poll(self, q, window, reports, cursor, on_delivery) -> None:
        async with trio.open_nursery() as nursery:
            more = trio.Event()

            async def poll():
                nonlocal more
                while True:
                    if not window:
                        await more.wait()
                        more = trio.Event()
                        continue
                    await trio.to_thread.run_sync(self.producer.poll, POLL_WAIT,
                                                  limiter=self._client)
                    self._settle(window, reports)
            nursery.start_soon(poll)
            produce = self.producer.produce
            topic = self.topic
            while True:
                rows = [r for r in q.rows if r.end_seq > cursor]
                if not rows:
                    if q.spilled_from is not None and await q.load(self.limiter):
                        continue
                    await q.wait_more()
                    continue
                for r in rows:
                    k = max(0, cursor - r.first_seq)
                    data, pos = r.data, r._framed_offset(k) if k else 0
                    for seq in range(r.first_seq + k, r.end_seq):
                        (n,) = _FRAME.unpack_from(data, pos)
                        value, key, part = unpack_record(data[pos + 4:pos + 4 + n])
                        pos += 4 + n
                        kw = {} if part is None else {"partition": part}
                        while True:
                            try:
                                produce(topic, value, key, on_delivery=on_delivery(seq),
                                        **kw)
                                break
                            except BufferError:  # the client's queue is full
                                await trio.to_thread.run_sync(
                                    self.producer.poll, POLL_WAIT, limiter=self._client)
                                self._settle(window, reports)
                        window[seq] = None
                        self.produced_records += 1
                        if not self.produced_records % YIELD_EVERY:
                            await trio.sleep(0)  # produce() is on the loop
                    cursor = r.end_seq
                    more.set()
                    await trio.sleep(0)

    def _settle(self, window, reports) -> None:
        """Apply delivery reports; release the confirmed prefix."""
        if not reports:
            return
        got, reports[:] = list(reports), []
        failed = None
        for seq, err in got:
            if err is None:
                window[seq] = True
            elif err.code() == kafka().KafkaError.MSG_SIZE_TOO_LARGE:
                self.refused += 1
                self.log.error("%s: the broker refused output %d as too large "
                               "(%s); it is not produced", self.what, seq, err.str())
                if self.on_failed is not None:
                    self.on_failed(self.spec.label)
                window[seq] = True
            elif failed is None or seq < failed[0]:
                failed = (seq, err)
        n = None
        while window:
            seq, done = next(iter(window.items()))
            if done is not True:
                break
            window.popitem(last=False)
            n = seq + 1
        if n is not None:
            self._acknowledged(n)
        if failed is not None:
            raise _Retry(f"delivery of output {failed[0]} failed: "
                         f"{failed[1].name()}: {failed[1].str()}")

    def _acknowledged(self, n: int) -> None:
        if self.queue.release(n):
            self.on_delivered(self.spec.index, n)


def _drop(producer) -> None:
    """A producer given up on: what it still holds is produced again by the
    next one (from the first unconfirmed output)."""
    if producer is None:
        return
    try:
        producer.purge()
        producer.flush(0)
    except Exception:
        pass


# -- exactly once for read_committed consumers -------------------------------
TXN_MAX_OUTPUTS = 10000  # outputs in one Kafka transaction, at most


def transactional_id(application: str, spec: SinkSpec, worker: str) -> str:
    """Stable per worker and sink: a restarted worker's producer fences and
    aborts whatever its previous instance left open."""
    from .resumable_sink import stream_name
    return "wallaroo." + stream_name(application, spec, worker)


class TransactionalKafkaSink(KafkaSink):
    """Each run of committed outputs (at most ``TXN_MAX_OUTPUTS``) is one
    Kafka transaction, and the transaction also commits the sink's delivery
    position (the output count after it) as the offset of partition 0 of the
    sink's topic for the consumer group ``<transactional id>.position``
    (``send_offsets_to_transaction``).  So the outputs and the position
    land together or not at all: after a restart ``init_transactions``
    aborts what the previous instance left open, the committed position
    says which outputs landed, and sending resumes right after them.  A
    ``read_committed`` consumer sees every output exactly once."""

    def __init__(self, spec: SinkSpec, queue: OutboxQueue,
                 on_delivered: Callable[[int, int], None], log: logging.Logger,
                 txn_id: str, limiter: trio.CapacityLimiter | None = None,
                 options: dict | None = None):
        super().__init__(spec, queue, on_delivered, log, limiter, options=options)
        self.txn_id = txn_id
        self.group = txn_id + ".position"
        self.transactions = 0
        self.aborts = 0
        self._meta = None  # the position group's metadata
        self._position_reader = None

    def _make_producer(self):
        ck = kafka()
        conf = base_config(self.brokers, self.log_level, self.errors, self.options)
        conf.update({
            "transactional.id": self.txn_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.buffer_ms,
            "message.max.bytes": max(1_000_000, self.max_message_size + 4096),
            "transaction.timeout.ms": 60000,
        })
        p = ck.Producer(conf)
        p.init_transactions(30)  # fences and aborts the previous instance's
        if self._position_reader is None:
            self._position_reader = ck.Consumer({
                **base_config(self.brokers, self.log_level, self.errors, self.options),
                "group.id": self.group, "enable.auto.commit": False,
                "isolation.level": "read_committed"})
            self._meta = self._position_reader.consumer_group_metadata()
        return p

    def _landed(self) -> int | None:
        """The position the last committed transaction recorded."""
        ck = kafka()
        (tp,) = self._position_reader.committed(
            [ck.TopicPartition(self.topic, 0)], timeout=30)
        if tp.error is not None:
            raise ck.KafkaException(tp.error)
        return tp.offset if tp.offset >= 0 else None

    @staticmethod
    def _records(rows, cursor: int):
        """The (value, key, partition) of every output from ``cursor`` on."""
        for r in rows:
            k = max(0, cursor - r.first_seq)
            data, pos = r.data, (r._framed_offset(k) if k else 0)
            for _ in range(r.first_seq + k, r.end_seq):
                (n,) = _FRAME.unpack_from(data, pos)
                yield unpack_record(data[pos + 4:pos + 4 + n])
                pos += 4 + n

    def _transaction(self, rows: list, cursor: int, end: int) -> None:
        """One transaction: the outputs ``cursor..end`` of ``rows``, then
        the position; blocking (in a thread)."""
        ck = kafka()
        p = self.producer
        p.begin_transaction()
        try:
            for value, key, part in self._records(rows, cursor):
                kw = {} if part is None else {"partition": part}
                while True:
                    try:
                        p.produce(self.topic, value, key, **kw)
                        break
                    except BufferError:
                        p.poll(0.05)
            p.send_offsets_to_transaction(
                [ck.TopicPartition(self.topic, 0, end)], self._meta, 30)
            p.commit_transaction(60)
        except ck.KafkaException as e:
            err = e.args[0] if e.args else None
            if err is not None and getattr(err, "txn_requires_abort", lambda: False)():
                try:
                    p.abort_transaction(30)
                except ck.KafkaException:
                    pass
                self.aborts += 1
            raise

    async def run(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                # abandoned when the worker stops: a stop does not wait for
                # unreachable brokers (what landed is read back at the next start)
                self.producer = await trio.to_thread.run_sync(
                    self._make_producer, limiter=self._client, abandon_on_cancel=True)
                landed = await trio.to_thread.run_sync(
                    self._landed, limiter=self._client, abandon_on_cancel=True)
                q = self.queue
                if landed is not None and landed > q.delivered:
                    self.log.info("%s: the last transaction landed outputs up to "
                                  "%d; sending from there", self.what, landed)
                    self._acknowledged(min(landed, q.produced))
                await self._send()
            except trio.Cancelled:
                self.producer = None  # left to its thread: the process is stopping
                raise
            except Exception as e:  # the client's errors: retry, drop nothing
                self.retries += 1
                self.log.warning("%s: transaction failed: %s: %s; sending again "
                                 "from output %d in %.1fs, nothing dropped "
                                 "(%d outputs waiting)", self.what,
                                 type(e).__name__, e, self.queue.delivered, delay,
                                 self.queue.queued_outputs)
            finally:
                p, self.producer = self.producer, None
                if p is not None:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(_drop, p, limiter=self._client)
            await trio.sleep(delay)
            delay = min(BACKOFF[1], delay * 2)

    async def _send(self) -> None:
        q = self.queue
        while True:
            cursor = q.delivered
            rows = [r for r in q.rows if r.end_seq > cursor]
            if not rows:
                if q.spilled_from is not None and await q.load(self.limiter):
                    continue
                await q.wait_more()
                continue
            take, end, count = [], cursor, 0
            for r in rows:
                if count >= TXN_MAX_OUTPUTS:
                    break
                take.append(r)
                count += r.end_seq - max(end, r.first_seq)
                end = r.end_seq
            # unpacking and producing run in the thread: thousands of
            # outputs would hold the event loop for milliseconds
            await trio.to_thread.run_sync(self._transaction, take, cursor, end,
                                          limiter=self._client, abandon_on_cancel=True)
            self.transactions += 1
            self.produced_records += count
            self._acknowledged(end)
