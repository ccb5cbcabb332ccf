"""A worker process on trio: recover, open sinks, open sources, and run the
batch cycle until told to stop.

    sources --frames--> Inbox --chunks--> engine loop (WorkerCore.process)
        --batch--> committer (store.commit) --> sinks, ACKs

The engine loop computes batch N+1 while batch N commits in a thread
(started before the loop runs on: ``threads.py``), or on the loop's own
thread when the batch is small (``commit_path.py``), and releases happen in
commit order.  A batch is
bounded by count (``max_batch``) and by time (``max_batch_time``), so a slow
application never holds the loop (handshakes, ACKs, signals) for long.  A
failed commit stops the worker with a non-zero exit: memory is then ahead of
the log, and the restart recovers from disk.

Stopping (SIGTERM/SIGINT): the sources close, and everything already read
from a connection is accepted: the engine works through it and the sinks
deliver until ``drain_timeout``; what is still unprocessed then is logged as
pending input (with ``--resilience-dir``) and processed first at the next
start, or (without) dropped and counted, and the exit status says so.  A
second signal ends the drain at once.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import trio

from .._spec import AppSpec
from ..recovery import vacuum
from ..recovery.errors import IncompatibleDirectory
from ..recovery.store import MemoryStore, Store
from .core import Batch, Chunk, WorkerCore
from .windowing import tick_chunk
from ..connectors.framing import DEFAULT_MAX_FRAME
from ..connectors.gen_source import GEN, GenSource
from ..connectors.resumable_sink import ResumableTCPSink, stream_name
from ..connectors.resume import StreamRegistry
from ..connectors.kafka_sink import (KafkaSink, TransactionalKafkaSink,
                                     transactional_id, with_kafka_encoders)
from ..connectors.kafka_client import check_options, kafka
from ..connectors.kafka_source import KafkaSource
from ..connectors.tcp_sink import OutboxQueue, TCPSink
from ..connectors.tcp_source import ConnectionCounter, ConnectionLimits, TCPSource
from .cluster_side import ClusterConfig, ClusterSide
from .collections_policy import FullCollections
from .inbox import Inbox
from .live_control import LiveControl
from .metrics import Histogram, WorkerCollector
from .commit_path import INLINE_MAX, CommitPath
from .metrics import bind as bind_metrics, registry_body, serve as serve_metrics
from .placement import DEFAULT_KEY_GROUPS


SCRUB_STEP = 500  # partitions the background scrub reads at a time
SCRUB_PAUSE = 0.02  # seconds between its steps, at least


@dataclass
class WorkerOptions:
    name: str = "initializer"
    max_frame: int = DEFAULT_MAX_FRAME
    drain_timeout: float = 10.0
    checkpoint_interval: float = 1.0
    checkpoint_max: int = 1000
    # a partition whose step asked save_state is snapshotted at most once
    # per this many seconds (0: in the commit of every batch that asked)
    save_state_interval: float = 0.05
    state_cache: int | None = None  # --state-cache N: partitions in memory
    inbox_bytes: int = 32 * 1024 * 1024
    max_batch: int = 10000
    max_batch_time: float = 0.025
    # batches of at most this many messages commit on the loop's thread
    inline_commit_max: int = INLINE_MAX
    sink_queue_bytes: int = 64 * 1024 * 1024
    idle_tick: float = 0.2
    handle_signals: bool = True
    resumable_sinks: bool = False
    kafka_transactions: bool = False  # Kafka sinks: one transaction per run
    kafka_options: dict = field(default_factory=dict)  # --kafka-option K=V
    metrics: tuple[str, int] | None = None  # --metrics HOST:PORT
    sink_outbox_max: int = 1 << 30
    max_connections: int = 1000
    handshake_timeout: float = 10.0
    idle_timeout: float | None = None
    overdraft_timeout: float = 10.0
    forget_streams_after: float | None = None
    # a retired worker's database (rescale.py): no sources; it stops by
    # itself once its sinks have every output it holds
    deliver_only: bool = False
    cluster: ClusterConfig | None = None  # None: a worker on its own


STALL_TICK = 0.01  # how often the event loop's lateness is sampled
SWITCH_INTERVAL = 0.001  # seconds (sys.setswitchinterval) with Kafka or resilience


@dataclass
class StopReport:
    """What a stop left behind (the stop line, the exit status)."""

    pending_messages: int = 0  # logged for the next start
    dropped_messages: int = 0  # accepted, not processed, no resilience
    undelivered_outputs: int = 0  # not delivered when the worker exited
    undelivered_peer_batches: int = 0  # for other workers, not acknowledged
    at_once: bool = False  # a second signal cut the drain short

    @property
    def lost(self) -> bool:
        return bool(self.dropped_messages or self.undelivered_outputs
                    or self.undelivered_peer_batches)


class Worker(CommitPath):
    def __init__(self, app: AppSpec, store: Store | None = None,
                 options: WorkerOptions | None = None,
                 log: logging.Logger | None = None):
        self.app = app
        self.opts = options or WorkerOptions()
        self.store = store or MemoryStore()
        self.log = log or logging.getLogger("wallaroo")
        for p in app.pipelines:
            if p.source.kind not in ("tcp", "kafka", "gen"):
                raise ValueError(f"pipeline {p.name!r}: {p.source.kind} sources "
                                 f"are not supported (TCP, Kafka, generators)")
        for s in app.sinks:
            if s.kind not in ("tcp", "kafka"):
                raise ValueError(f"{s.label}: {s.kind} sinks are not supported "
                                 f"(TCP and Kafka)")
        # a Kafka sink's outputs are kept as frames of (key, partition, value)
        app = self.app = with_kafka_encoders(app)
        uses_kafka = any(p.source.kind == "kafka" for p in app.pipelines) or any(
            s.kind == "kafka" for s in app.sinks)
        if uses_kafka:
            kafka()  # imported now: an import in a thread holds the event loop
            check_options(self.opts.kafka_options)
        if uses_kafka or self.store.durable:
            # Kafka's client threads take the GIL for every batch of records
            # they hand over, and the commit thread and the event loop hand
            # it to each other for every batch: a shorter switch interval
            # bounds how long the event loop waits for it (CPython's
            # default is 5 ms)
            sys.setswitchinterval(SWITCH_INTERVAL)
        framed = frozenset(s.index for s in app.sinks
                           if (self.opts.resumable_sinks and s.kind == "tcp")
                           or s.kind == "kafka")
        cluster = self.opts.cluster
        self.core = WorkerCore(app, self.store, log=self.log,
                               max_frame=self.opts.max_frame,
                               checkpoint_interval=self.opts.checkpoint_interval,
                               checkpoint_max=self.opts.checkpoint_max,
                               save_state_interval=self.opts.save_state_interval,
                               state_cache=self.opts.state_cache,
                               framed_sinks=framed, name=self.opts.name,
                               members=cluster.members if cluster else None,
                               key_groups=cluster.key_groups if cluster
                               else DEFAULT_KEY_GROUPS,
                               addresses=cluster.addresses if cluster else None,
                               membership=cluster.membership if cluster else None,
                               deliver_only=self.opts.deliver_only)
        self.inbox = Inbox(max(self.opts.inbox_bytes, self.opts.max_frame),
                           self.core.header_lengths)
        self.sinks: list[TCPSink] = []  # made once recovery knows positions
        # every destination of output rows: the sinks, then the channel to
        # each peer (None for this worker's own)
        self.dests: list = []
        self.cluster = ClusterSide(self, cluster) if cluster else None
        # live moves' steps, run between batches (live_control.py)
        self.live = LiveControl(self) if cluster else None
        self.registry: StreamRegistry | None = None
        self.sources: list[TCPSource] = []
        self.stop_report = StopReport()
        self._stop: trio.Event | None = None
        self._stopping = False
        self._deadline = math.inf  # the drain's, once stopping
        self._wait_scope: trio.CancelScope | None = None
        self._drain_scope: trio.CancelScope | None = None  # waiting for sinks
        self.recovery = None
        self.commits = 0
        self.thread_commits = 0  # of them, those run in the commit thread
        self.in_hand = 0  # batches sent to the committer, not yet released
        self.longest_commit = 0.0
        self.longest_stall = 0.0  # of the event loop (_watch_loop)
        self._stalls_since = "the start"  # the longest_* maxima's (SIGUSR1)
        self.commit_hist = Histogram()  # commit wall times, for --metrics
        self.metrics_address: tuple[str, int] | None = None
        self._nursery_ref = None
        self._last_commit = 0.0
        self._collections = FullCollections()

    # how the supervisor stops this worker for a rescale (supervisor.py):
    # "rescale", nothing is waited for (the old cluster's drain delivers
    # what is in flight); "drained", the same after its sources were
    # closed and nothing was left in flight, and every partition is
    # checkpointed whatever the time; "orphaned", the supervisor is gone
    # (its next run restarts the cluster, and this worker's database must
    # be free for it): nothing is waited for either, the peers being
    # stopped too; what is undelivered stays in the outboxes.  None: a stop
    # like any other.
    stop_mode: str | None = None
    _sources_scope: trio.CancelScope | None = None

    def close_sources(self) -> None:
        """A rescale's drain in place: no new input; what is in flight
        goes on (the supervisor waits until nothing is)."""
        if self._sources_scope is not None:
            self._sources_scope.cancel()

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._stop = trio.Event()
        try:
            async with trio.open_nursery() as metrics:
                if self.opts.metrics is not None:  # served during recovery too
                    await self._serve_metrics(metrics)
                await self._run(task_status)
                metrics.cancel_scope.cancel()
        finally:
            self.store.close()

    async def _run(self, task_status) -> None:
        log = self.log
        recover = functools.partial(self.core.recover,
                                    requeue=not self.store.durable)
        # with --metrics, recovery runs in a thread so /metrics can show it
        report = (await trio.to_thread.run_sync(recover)
                  if self.opts.metrics is not None else recover())
        self.recovery = report
        for note in report.notes:
            log.warning("%s", note)
        if report.replay_mismatches:
            log.error("replay differed from the original run %d times (see above)",
                      report.replay_mismatches)
        log.info("%s", report.summary())
        self.registry = StreamRegistry(self.core.stream_counts, self.core.stream_seen)
        for i, n in report.unsplittable.items():
            if i in self.core.framed_sinks:
                raise IncompatibleDirectory(
                    f"{self.app.sinks[i].label}: {n} undelivered outputs were "
                    f"written for a plain sink (or by an earlier release), which "
                    f"does not record where each one ends, so they cannot be "
                    f"sent one by one as --resumable-sinks does.  Run once without "
                    f"--resumable-sinks until they are delivered, or discard "
                    f"them: `wallaroo recovery discard-outputs {self.store.directory} "
                    f"--worker "
                    f"{self.opts.name} --sink '{self.app.sinks[i].pipeline}:"
                    f"{self.app.sinks[i].position}'`")
        self.sinks = self._make_sinks()
        self.dests = list(self.sinks)
        if self.cluster is not None:
            senders = self.cluster.make_senders(
                self.store.output_reader() if self.store.durable else None,
                trio.CapacityLimiter(1))
            self.dests += [senders.get(i) for i in range(len(self.sinks),
                                                         self.core.destinations)]
        for row in report.requeued:
            self._enqueue(row)
        self._queue_pending(report.pending)
        # unbuffered: a computed batch waits for the commit thread to take
        # it, and the next batch is formed only then, from everything that
        # arrived meanwhile (bigger batches under load, no batch queued
        # behind a commit in flight)
        send_batches, recv_batches = trio.open_memory_channel(0)
        async with trio.open_nursery() as nursery:
            self._nursery_ref = nursery
            for sink in self.sinks:
                nursery.start_soon(sink.run)
            committed = trio.Event()
            nursery.start_soon(self._committer, recv_batches, committed)
            if self.store.durable and report.partitions:
                nursery.start_soon(self._scrub)
            # Replay is done and undelivered outputs are queued: open the
            # sources, all together (DESIGN.md §4.5).
            limits = ConnectionLimits(self.opts.max_connections,
                                      self.opts.handshake_timeout,
                                      self.opts.idle_timeout,
                                      self.opts.overdraft_timeout)
            counter = ConnectionCounter()
            handed = self.cluster is not None and \
                self.cluster.config.supervisor_fd is not None
            placement = self.core.placement
            drain_only = (self.cluster is not None and self.cluster.config.drain_only) \
                or self.opts.deliver_only
            self.sources = [] if drain_only else [
                KafkaSource(p.index, p.source, self.inbox, self.core.stream_counts,
                            self.registry, log, self.app.name,
                            placement.me if placement else 0,
                            placement.rule_workers if placement else 1,
                            durable=self.store.durable,
                            options=self.opts.kafka_options)
                if p.source.kind == "kafka" else
                GenSource(p.index, p.source, self.inbox, self.core.stream_counts,
                          log, placement is None or placement.owner_of_stream(
                              p.name, GEN) == placement.me)
                if p.source.kind == "gen" else
                TCPSource(p.index, p.source, self.core.framers[p.index],
                          self.inbox, self.registry, log, limits, counter,
                          cluster=self.cluster, on_closed=self._handed_closed)
                for p in self.app.pipelines]
            # one host: the supervisor listens and hands connections over
            tcp = [s for s in self.sources if isinstance(s, TCPSource)]
            bound = [await s.bind() for s in tcp] if not handed else []
            data = (await self.cluster.start(nursery)) if self.cluster else None
            sources_scope = self._sources_scope = trio.CancelScope()

            async def serve_sources():
                with sources_scope:
                    async with trio.open_nursery() as sn:
                        for s in self.sources:
                            sn.start_soon(s.serve)
            nursery.start_soon(serve_sources)
            engine_done = trio.Event()
            nursery.start_soon(self._engine_loop, send_batches, engine_done)
            nursery.start_soon(self._watch_loop)
            if self.opts.handle_signals:  # before "ready": a SIGTERM right
                await nursery.start(self._signals)  # after it must drain
                await nursery.start(self._stall_reports)
            shown = iter(f"{h}:{p}" for h, p in bound)
            addrs = ",".join(s.address if isinstance(s, (KafkaSource, GenSource)) else
                             next(shown, None) or "-" for s in self.sources) or "-"
            sinks = ",".join(s.address for s in self.app.sinks) or "-"
            if data is not None:
                control = self.cluster.control_address
                sinks += (f" control={control[0]}:{control[1]} "
                          f"data={data[0]}:{data[1]}")
            if self.metrics_address is not None:
                sinks += " metrics=%s:%d" % self.metrics_address
            for sink in self.sinks:
                if isinstance(sink, ResumableTCPSink):
                    log.info("%s: resumable, stream %r", sink.spec.label, sink.stream)
            if self.opts.deliver_only:
                nursery.start_soon(self._stop_once_delivered)
            self._write_cluster_entry("ready", bound)
            log.info("ready worker=%s sources=%s sinks=%s", self.opts.name,
                     addrs, sinks, extra={"bare": True})
            task_status.started(bound)

            await self._stop.wait()
            log.info("stopping: no new input; finishing what is in flight "
                     "(drain timeout %.1fs)", self.opts.drain_timeout)
            if self.cluster is not None:  # hand this worker no more clients
                await self.cluster.tell_supervisor({"stopping": True})
            sources_scope.cancel()  # what the connections read is queued
            self._stopping = True
            self._set_deadline(trio.current_time() + self.opts.drain_timeout)
            await engine_done.wait()
            await committed.wait()
            await self._log_or_drop(self.inbox.take_all())
            with trio.move_on_at(self._deadline) as self._drain_scope:
                for dest in self.dests:  # a second signal ends this too
                    if dest is not None and not (drain_only or self.stop_mode):
                        await dest.wait_empty()
            self._drain_scope = None
            self.stop_report.undelivered_outputs = sum(s.queued_outputs
                                                       for s in self.sinks)
            if self.cluster is not None:
                self.stop_report.undelivered_peer_batches = sum(
                    c.queued_outputs for c in self.cluster.senders.values())
            await self._final_commit()
            nursery.cancel_scope.cancel()
        self._write_cluster_entry("down", [])
        self._log_stopped()

    async def _stop_once_delivered(self) -> None:
        while any(s.queued_outputs for s in self.sinks):
            await trio.sleep(0.2)
        self.log.info("retired: every output this worker held is delivered")
        self.request_stop()

    async def _scrub(self) -> None:
        """Partitions are loaded (and their snapshots checked) when a
        message needs them; this reads the rest in small steps in a thread,
        checking every key and snapshot against its checksum, so damage
        in state nothing has touched yet is found too.  Damage stops the
        worker (exit 1), naming the file and the partition."""
        step = self.store.scrubber()
        after, checked, t0 = -1, 0, time.monotonic()
        while True:
            s0 = time.monotonic()
            # not abandoned on cancel: the store closes the step's reader
            # connection at the stop, which must not happen under a query
            # still running in the thread (sqlite3 may crash the process)
            last, n = await trio.to_thread.run_sync(step, after, SCRUB_STEP)
            checked += n
            if last is None or n < SCRUB_STEP:
                break
            after = last
            # at most about half of one core, less when steps are quick
            await trio.sleep(max(SCRUB_PAUSE, time.monotonic() - s0))
        self.log.info("scrub: checked the keys and snapshots of %d partitions "
                      "against their checksums in %.1fs: all sound", checked,
                      time.monotonic() - t0)

    async def _serve_metrics(self, nursery) -> None:
        """``--metrics HOST:PORT``: Prometheus text at ``/metrics``."""
        from prometheus_client import CollectorRegistry
        listeners, self.metrics_address = await bind_metrics(*self.opts.metrics)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerCollector(self))
        nursery.start_soon(serve_metrics, listeners, registry_body(registry), self.log)

    def replay_ratio(self) -> float:
        """Recovery's replay so far: inputs replayed of those to replay."""
        if self.recovery is not None:
            return 1.0
        p = getattr(self.core, "replay_progress", None)
        return 0.0 if p is None else p.done / max(p.total, 1)

    async def _watch_loop(self) -> None:
        """How late a short sleep wakes: the longest time the event loop
        did not run its tasks (a batch's compute, a blocking call on the
        loop), for the stop line and status."""
        tick = STALL_TICK
        while True:
            t0 = time.perf_counter()
            await trio.sleep(tick)
            late = time.perf_counter() - t0 - tick
            if late > self.longest_stall:
                self.longest_stall = late

    def _write_cluster_entry(self, state: str, bound) -> None:
        """Several hosts: this worker's own entry in ``cluster.json`` of its
        resilience directory (DESIGN.md §6; one host: the supervisor's)."""
        c = self.cluster
        if c is None or c.config.supervisor_fd is not None or not self.store.durable:
            return
        try:
            c.write_own_entry(os.path.dirname(self.store.path), self.app.name, state,
                              [f"{h}:{p}" for h, p in bound])
        except OSError as e:
            self.log.warning("cannot write cluster.json: %s", e)

    def _make_sinks(self) -> list[TCPSink]:
        """One sink per sink of the application, its queue starting at the
        recovered delivery position: with a durable store, the undelivered
        outputs are read back from it as the queue drains."""
        core, opts = self.core, self.opts
        reader = self.store.output_reader() if self.store.durable else None
        limiter = trio.CapacityLimiter(1)
        sinks = []
        for spec in self.app.sinks:
            queue = OutboxQueue(spec.index, opts.sink_queue_bytes,
                                opts.sink_outbox_max, reader,
                                core.delivered.get(spec.index, 0))
            queue.produced = core.next_out_seq.get(spec.index, 0)
            queue.base = core.sink_bases.get(spec.index, 0)
            if reader is not None and queue.produced > queue.delivered:
                queue.spilled_from = queue.delivered
            if spec.kind == "kafka" and opts.kafka_transactions:
                sinks.append(TransactionalKafkaSink(
                    spec, queue, core.note_delivered, self.log,
                    transactional_id(self.app.name, spec, opts.name),
                    limiter=limiter, options=opts.kafka_options))
            elif spec.kind == "kafka":
                sinks.append(KafkaSink(spec, queue, core.note_delivered, self.log,
                                       limiter=limiter, options=opts.kafka_options))
            elif spec.index in core.framed_sinks:
                sinks.append(ResumableTCPSink(
                    spec, queue, core.note_delivered, self.log,
                    stream_name(self.app.name, spec, opts.name), limiter=limiter,
                    on_base=core.note_base))
            else:
                sinks.append(TCPSink(spec, queue, core.note_delivered, self.log,
                                     limiter=limiter))
        return sinks

    def _queue_pending(self, rows) -> None:
        """Input a previous run read but did not process goes first, ahead
        of anything new on its stream."""
        for row in rows:
            idx = self.core.pipeline_index.get(row.source)
            if idx is None:
                raise IncompatibleDirectory(
                    f"the resilience directory holds {row.count - row.consumed} "
                    f"unprocessed messages of pipeline {row.source!r}, which "
                    f"this application does not define")
            head = Chunk(idx, self.core.framers[idx].split_all(row.frames), row.frames)
            if row.consumed:
                head = head.split(row.consumed, self.core.header_lengths[idx])[1]
            stream = row.stream
            first = None if stream is None else row.first_seq + row.consumed
            chunk = Chunk(idx, head.payloads, head.frames, stream, first,
                          f"input read before the last stop (pending row {row.id}"
                          + (f", stream {stream!r})" if stream else ")"),
                          position=first if stream else row.consumed,
                          pending=row.id, pending_offset=row.consumed)
            key = ("stream", idx, stream) if stream else ("pending", row.id)
            self.inbox.put_pending(key, chunk)

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = min(self._deadline, deadline)
        for scope in (self._wait_scope, self._drain_scope):
            if scope is not None:
                scope.deadline = self._deadline
        self.inbox.wake()

    def _past_deadline(self) -> bool:
        return trio.current_time() >= self._deadline

    async def _stall_reports(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """SIGUSR1: log the longest stalls so far and start measuring
        afresh (one phase of a long run at a time; the stop line reports
        those since the last such report)."""
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async for _ in signals:
                self.log.info("stalls since %s: %s", self._stalls_since,
                              self._stall_text())
                st = self.core.stats
                st.longest_batch_seconds = st.longest_snapshot_seconds = 0.0
                st.longest_batch_messages = 0
                self.longest_commit = self.longest_stall = 0.0
                self._stalls_since = "the last report"

    def _stall_text(self) -> str:
        st = self.core.stats
        return (f"longest batch compute {st.longest_batch_seconds * 1e3:.1f} ms "
                f"({st.longest_batch_messages} messages), longest snapshot work "
                f"in one commit {st.longest_snapshot_seconds * 1e3:.1f} ms, "
                f"longest commit {self.longest_commit * 1e3:.1f} ms, longest "
                f"event-loop stall {self.longest_stall * 1e3:.1f} ms")

    async def _signals(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self._stop.is_set():
                    self.log.info("received %s", name)
                    self._stop.set()
                    continue
                self.log.warning("received %s again: ending the drain now%s", name,
                                 " (what is unprocessed is logged for the next "
                                 "start)" if self.store.durable else
                                 " (what is unprocessed is dropped)")
                self.stop_report.at_once = True
                self._set_deadline(trio.current_time())

    async def _engine_loop(self, send_batches, done: trio.Event) -> None:
        core, inbox, opts = self.core, self.inbox, self.opts
        durable = self.store.durable
        forget_every = None
        if durable and opts.forget_streams_after:
            forget_every = min(opts.forget_streams_after, 60.0)
        next_forget = trio.current_time() + (forget_every or 0)
        async with send_batches:
            while True:
                if self._stopping and (not inbox or self._past_deadline()):
                    break
                if self.live is not None and self.live.ops:  # between batches
                    batch = self.live.next_batch()
                    if batch is not None:
                        self.in_hand += 1
                        await send_batches.send(batch)
                        await trio.sleep(0)
                    continue
                with trio.CancelScope(deadline=self._deadline) as scope:
                    self._wait_scope = scope
                    if not (durable and core.idle_commit_due()):
                        # free pages to give back: idle commits run the
                        # store's incremental vacuum (recovery/vacuum.py)
                        await inbox.wait(vacuum.IDLE_TICK if self.store.vacuum_pending
                                         else opts.idle_tick)
                    full = self._full()
                    while full is not None and not inbox.has_peer_input():
                        # room, or input from another worker (which flows
                        # even while an outbox is full), whichever is first
                        await _first_of(full.wait_room, inbox.wait_peer_input)
                        full = self._full()
                self._wait_scope = None
                if self._stopping and self._past_deadline():
                    break
                if self._collections.due():
                    took = self._collections.collect()
                    self.log.debug("full garbage collection: %.1f ms", took * 1e3)
                if inbox:
                    self._collections.input()
                    # while an outbox is full only peers' input flows (two
                    # full workers waiting on each other would deadlock)
                    batch = core.process(inbox.take(opts.max_batch,
                                                    peers_only=full is not None),
                                         deadline=time.perf_counter()
                                         + opts.max_batch_time)
                    inbox.unget(batch.leftover, batch.cut)
                elif core.tick_due():  # windows wait for the clock
                    batch = core.process([tick_chunk(Chunk)])
                elif durable and (core.idle_commit_due() or self.store.vacuum_pending):
                    batch = core.process(())
                elif forget_every and trio.current_time() >= next_forget:
                    next_forget = trio.current_time() + forget_every
                    batch = self._forget_streams()
                    if batch is None:
                        continue
                else:
                    continue
                if not self.committed_in_place(batch):  # commit_path.py
                    self.in_hand += 1
                    await send_batches.send(batch)
                # let the committer start this batch's commit thread (or the
                # sinks write its outputs) before the next batch is computed
                # (threads.py says why)
                await trio.sleep(0)
        done.set()

    def _forget_streams(self) -> Batch | None:
        ttl = self.opts.forget_streams_after
        keys = [k for k in self.registry.idle(time.time() - ttl)
                if not self._queued(k)]
        if not keys:
            return None
        self.registry.forget(keys)
        shown = ", ".join(repr(k[1]) for k in keys[:5])
        self.log.info("forgetting %d streams not seen for %gs (--forget-streams-"
                      "after): %s%s; a client coming back starts again at 0",
                      len(keys), ttl, shown, ", ..." if len(keys) > 5 else "")
        return Batch(self.core.forget_record(keys), [], {}, 0, 0)

    def _queued(self, key: tuple[str, str]) -> bool:
        idx = self.core.pipeline_index.get(key[0])
        return ("stream", idx, key[1]) in self.inbox._queues

    def status(self) -> dict:
        """What ``wallaroo status`` shows of this worker."""
        core, p = self.core, self.core.placement
        senders = self.cluster.senders if self.cluster else {}
        return {
            "name": self.opts.name, "pid": os.getpid(),
            "state": "stopping" if self._stopping else "ready",
            "key_groups": len(p.groups_of(p.me)) if p else 0,
            "partitions": sum(len(s.parts) for s in core.spaces.values()),
            "last_commit_age": (round(time.monotonic() - self._last_commit, 3)
                                if self._last_commit else None),
            "commits": self.commits, "messages_in": core.stats.messages,
            "longest_loop_stall": round(self.longest_stall, 4),
            "latency": core.latency.hist.cumulative(),
            "restarts_kept": max(0, self.store.starts - 1),
            "outputs": core.stats.outputs, "failures": core.stats.failures,
            "inbox": {"messages": self.inbox.messages, "bytes": self.inbox.bytes},
            "in_hand": self.in_hand,  # batches being committed, not released
            # acknowledgements noted, their delivery positions not committed
            "acks_pending": len(core._delivered_pending),
            "sinks": [{"sink": s.spec.label, "outputs": s.queued_outputs,
                       "bytes": s.queued_bytes} for s in self.sinks],
            "channels": [{"peer": c.peer, "batches": c.queued_outputs,
                          "bytes": c.queued_bytes} for c in senders.values()],
            # a live move this worker takes, waiting for its hand-over
            "live_move": None if core.deferring is None else {
                **core.deferring, "groups": len(core.deferring["groups"]),
                "waiting_batches": len(core.deferred_units)},
        }

    def _full(self):
        """A destination without room, or None."""
        for d in self.dests:
            if d is not None and not d.has_room():
                return d
        return None

    def _handed_closed(self, source: int) -> None:
        if self.cluster is not None and self._nursery_ref is not None:
            self._nursery_ref.start_soon(self.cluster.tell_supervisor,
                                         {"closed": source})

    def wake(self) -> None:
        """End the engine loop's wait for input (a control step queued)."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def _log_or_drop(self, left: list[Chunk]) -> None:
        """What was read but not processed when the drain ended: logged as
        pending input (processed first at the next start), or dropped."""
        n = sum(len(c.payloads) for c in left)
        if not n:
            return
        if not self.store.durable:
            self.stop_report.dropped_messages = n
            return
        # other workers' batches are not logged here: their senders keep
        # them until acknowledged, and resend them
        peers = self.core.peer_source
        n = sum(len(c.payloads) for c in left if c.source != peers)
        record = self.core.pending_record(left)
        await self._commit(Batch(record, [], record.streams, 0, 0))
        self.registry.committed(record.streams)
        self.stop_report.pending_messages = n

    async def _final_commit(self) -> None:
        """Save the delivery positions and, while the drain has time left,
        checkpoint every dirty partition, so the next start replays
        nothing."""
        if not self.store.durable:
            return
        batch = self.core.process(())
        if not batch.record.is_empty():
            await self._commit(batch)
        whole = self.stop_mode == "drained" or (
            self.stop_mode is None and self.cluster is not None
            and self.cluster.config.drain_only)
        with trio.move_on_at(float("inf") if whole else self._deadline):
            while whole or not self._past_deadline():
                batch = self.core.process((), force_checkpoint=True)
                if batch.record.is_empty():
                    break
                await self._commit(batch)

    def _log_stopped(self) -> None:
        st = self.core.stats
        rep = self.stop_report
        bad = sum(s.bad_frames for s in self.sources)
        torn = sum(s.torn_frames for s in self.sources)
        if self.store.durable:
            what = (f"{self.commits} commits, {st.snapshots} snapshots "
                    f"({st.checkpoint_snapshots} by checkpoints)")
        else:
            what = "no resilience"
        line = (f"stopped: {st.messages} messages in, {st.outputs} outputs, "
                f"{st.failures} failed messages, {bad} oversized and {torn} torn "
                f"frames, {what}; {self._stall_text()}")
        if rep.pending_messages:
            line += (f"; {rep.pending_messages} messages read but not processed "
                     f"are logged and wait for the next start")
        if rep.undelivered_outputs:
            line += (f"; {rep.undelivered_outputs} outputs not delivered"
                     + (" are kept in the outbox for the next start"
                        if self.store.durable else " are LOST (no --resilience-dir)"))
        if rep.undelivered_peer_batches:
            line += (f"; {rep.undelivered_peer_batches} batches of messages for "
                     f"other workers not acknowledged"
                     + (" are kept in the outbox for the next start"
                        if self.store.durable else " are LOST (no --resilience-dir)"))
        if rep.dropped_messages:
            line += (f"; {rep.dropped_messages} accepted messages were not "
                     f"processed and are DROPPED (no --resilience-dir)")
        (self.log.warning if rep.lost and not self.store.durable
         else self.log.info)("%s", line)


async def _first_of(*waits) -> None:
    """Return as soon as one of the ``waits`` (async callables) returns."""
    async with trio.open_nursery() as nursery:
        async def one(wait):
            await wait()
            nursery.cancel_scope.cancel()
        for wait in waits:
            nursery.start_soon(one, wait)
