"""A worker process on trio: recover, open sinks, open sources, and run the
batch cycle until told to stop.

    sources --frames--> Inbox --chunks--> engine loop (WorkerCore.process)
        --batch--> committer (store.commit in a thread) --> sinks, ACKs

The engine loop computes batch N+1 while batch N commits in a thread
(``CapacityLimiter(1)``), and releases happen in commit order.  A failed
commit stops the worker with a non-zero exit: memory is then ahead of the
log, and the restart recovers from disk.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass

import trio

from .._spec import AppSpec
from ..recovery.store import MemoryStore, Store
from .core import Batch, WorkerCore
from .framing import DEFAULT_MAX_FRAME
from .inbox import Inbox
from .resume import StreamRegistry
from .sinks import TCPSink
from .sources import TCPSource


@dataclass
class WorkerOptions:
    name: str = "initializer"
    max_frame: int = DEFAULT_MAX_FRAME
    drain_timeout: float = 10.0
    checkpoint_interval: float = 1.0
    checkpoint_max: int = 1000
    inbox_bytes: int = 32 * 1024 * 1024
    max_batch: int = 10000
    sink_queue_bytes: int = 64 * 1024 * 1024
    idle_tick: float = 0.2
    handle_signals: bool = True


class CommitFailed(Exception):
    """The store could not commit a batch; the worker must stop."""


class Worker:
    def __init__(self, app: AppSpec, store: Store | None = None,
                 options: WorkerOptions | None = None,
                 log: logging.Logger | None = None):
        self.app = app
        self.opts = options or WorkerOptions()
        self.store = store or MemoryStore()
        self.log = log or logging.getLogger("wallaroo")
        for p in app.pipelines:
            if p.source.kind != "tcp":
                raise ValueError(f"pipeline {p.name!r}: {p.source.kind} sources "
                                 f"are not supported by this engine yet (TCP only)")
        for s in app.sinks:
            if s.kind != "tcp":
                raise ValueError(f"{s.label}: {s.kind} sinks are not supported "
                                 f"by this engine yet (TCP only)")
        self.core = WorkerCore(app, self.store, log=self.log,
                               max_frame=self.opts.max_frame,
                               checkpoint_interval=self.opts.checkpoint_interval,
                               checkpoint_max=self.opts.checkpoint_max)
        self.inbox = Inbox(max(self.opts.inbox_bytes, self.opts.max_frame),
                           [p.source.decoder.header_length for p in app.pipelines])
        self.sinks = [TCPSink(s, self.core.note_delivered, self.log,
                              self.opts.sink_queue_bytes) for s in app.sinks]
        self.registry: StreamRegistry | None = None
        self.sources: list[TCPSource] = []
        self._stop: trio.Event | None = None
        self._stopping = False
        self.recovery = None
        self.commits = 0
        self.longest_commit = 0.0
        self._limiter = None

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._stop = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        try:
            await self._run(task_status)
        finally:
            self.store.close()

    async def _run(self, task_status) -> None:
        log = self.log
        report = self.core.recover()
        self.recovery = report
        if report.replay_mismatches:
            log.error("replay differed from the original run %d times (see above)",
                      report.replay_mismatches)
        log.info("%s", report.summary())
        self.registry = StreamRegistry(self.core.stream_counts)
        for row in report.requeued:
            self.sinks[row.sink].enqueue(row)
        send_batches, recv_batches = trio.open_memory_channel(1)
        async with trio.open_nursery() as nursery:
            for sink in self.sinks:
                nursery.start_soon(sink.run)
            committed = trio.Event()
            nursery.start_soon(self._committer, recv_batches, committed)
            # Replay is done and undelivered outputs are queued: open the
            # sources, all together (DESIGN.md §4.5).
            self.sources = [TCPSource(p.index, p.source, self.core.framers[p.index],
                                      self.inbox, self.registry, log)
                            for p in self.app.pipelines]
            bound = [await s.bind() for s in self.sources]
            sources_scope = trio.CancelScope()

            async def serve_sources():
                with sources_scope:
                    async with trio.open_nursery() as sn:
                        for s in self.sources:
                            sn.start_soon(s.serve)
            nursery.start_soon(serve_sources)
            engine_done = trio.Event()
            nursery.start_soon(self._engine_loop, send_batches, engine_done)
            if self.opts.handle_signals:  # before "ready": a SIGTERM right
                await nursery.start(self._signals)  # after it must drain
            addrs = ",".join(f"{h}:{p}" for h, p in bound)
            sinks = ",".join(s.address for s in self.app.sinks) or "-"
            log.info("ready worker=%s sources=%s sinks=%s", self.opts.name,
                     addrs, sinks, extra={"bare": True})
            task_status.started(bound)

            await self._stop.wait()
            log.info("stopping: no new input; finishing what is in flight "
                     "(drain timeout %.1fs)", self.opts.drain_timeout)
            sources_scope.cancel()
            self._stopping = True
            self.inbox.wake()
            deadline = trio.current_time() + self.opts.drain_timeout
            with trio.move_on_at(deadline) as drain:
                await engine_done.wait()
                await committed.wait()
                for sink in self.sinks:
                    await sink.wait_empty()
            left = sum(s.queued_bytes for s in self.sinks)
            if drain.cancelled_caught:
                log.warning("drain timeout: %d bytes of output not delivered%s",
                            left, " (kept in the outbox for the next start)"
                            if self.store.durable else " (lost: no --resilience-dir)")
            elif engine_done.is_set():
                await self._final_commit(deadline)
            nursery.cancel_scope.cancel()
        st = self.core.stats
        log.info("stopped: %d messages in, %d outputs, %d failed messages, %d "
                 "commits, %d snapshots (%d by checkpoints); longest batch compute "
                 "%.1f ms (%d messages), longest snapshot work in one commit %.1f "
                 "ms, longest commit %.1f ms",
                 st.messages, st.outputs, st.failures, self.commits, st.snapshots,
                 st.checkpoint_snapshots,
                 st.longest_batch_seconds * 1e3, st.longest_batch_messages,
                 st.longest_snapshot_seconds * 1e3, self.longest_commit * 1e3)

    async def _signals(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                self.log.info("received %s", signal.Signals(signum).name)
                self._stop.set()
                return

    async def _engine_loop(self, send_batches, done: trio.Event) -> None:
        core, inbox = self.core, self.inbox
        durable = self.store.durable
        async with send_batches:
            while True:
                if self._stopping and not inbox:
                    break
                if not (durable and core.idle_commit_due()):
                    await inbox.wait(self.opts.idle_tick)
                for sink in self.sinks:
                    if not sink.has_room():
                        await sink.wait_room()
                if inbox:
                    batch = core.process(inbox.take(self.opts.max_batch))
                elif durable and core.idle_commit_due():
                    batch = core.process(())
                else:
                    continue
                await send_batches.send(batch)
        done.set()

    async def _committer(self, recv_batches, done: trio.Event) -> None:
        async with recv_batches:
            async for batch in recv_batches:
                await self._commit(batch)
                self._release(batch)
        done.set()

    async def _commit(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        try:
            if self.store.durable:
                await trio.to_thread.run_sync(self.store.commit, batch.record,
                                              limiter=self._limiter)
            else:
                self.store.commit(batch.record)
        except Exception as e:
            raise CommitFailed(
                f"commit of {batch.messages} messages failed: {type(e).__name__}: "
                f"{e}; stopping (the restart recovers from the log)") from e
        self.commits += 1
        elapsed = time.perf_counter() - t0
        if elapsed > self.longest_commit:
            self.longest_commit = elapsed

    def _release(self, batch: Batch) -> None:
        for row in batch.outputs:
            self.sinks[row.sink].enqueue(row)
        if batch.streams:
            self.registry.committed(batch.streams)

    async def _final_commit(self, deadline: float) -> None:
        """Save the delivery positions and, while time is left, checkpoint
        every dirty partition, so the next start replays nothing."""
        if not self.store.durable:
            return
        with trio.move_on_at(deadline):
            while True:
                batch = self.core.process((), force_checkpoint=True)
                if batch.record.is_empty():
                    break
                await self._commit(batch)
