"""One worker's engine without any I/O: recover, process a batch, build its
commit record, and say what to release once the record is durable.

The trio worker (``worker.py``) and the in-process test driver
(``wallaroo.testing``) both drive this class, so what the tests crash is the
code that runs in production.

A batch goes:  chunks -> (decode, steps, encode) -> CommitRecord
               -> store.commit(record) -> release outputs and stream counts.
Nothing derived from a batch leaves before its commit (DESIGN.md §4.1).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .._spec import AppSpec
from ..recovery import snapshots
from ..recovery.errors import CorruptionError, IncompatibleDirectory, StoreError
from ..recovery.records import (MAX_OUTPUT_BYTES, MAX_ROW_BYTES, CommitRecord,
                                InputRow, OutputRow, PartitionRow, PendingRow,
                                SnapshotRow)
from ..recovery.store import Store
from .dataflow import Context, StepError, compile_pipeline, make_runner
from .failures import FailureLog
from .framing import DEFAULT_MAX_FRAME, Framer
from .states import DirtyTracker, StateSpace


@dataclass(slots=True)
class Chunk:
    """Complete frames that one connection delivered, in order."""

    source: int  # pipeline index
    payloads: list[bytes]
    frames: bytes  # the same frames as received, headers included
    stream: str | None = None  # resumable stream name
    first_seq: int | None = None  # the stream's count before these frames
    origin: str = ""  # for log messages: the connection / stream
    key: object = None  # the inbox queue it came from (a leftover goes back)
    position: int | None = None  # the first frame's place in its connection
    pending: int | None = None  # the pending-input row these frames are from
    pending_offset: int = 0  # the first frame's index in that row

    def split(self, k: int, header_length: int) -> tuple["Chunk", "Chunk"]:
        """The first ``k`` frames and the rest."""
        head = self.payloads[:k]
        cut = sum(map(len, head)) + k * header_length
        a = Chunk(self.source, head, self.frames[:cut], self.stream, self.first_seq,
                  self.origin, self.key, self.position, self.pending,
                  self.pending_offset)
        b = Chunk(self.source, self.payloads[k:], self.frames[cut:], self.stream,
                  None if self.first_seq is None else self.first_seq + k,
                  self.origin, self.key,
                  None if self.position is None else self.position + k,
                  self.pending, self.pending_offset + k)
        return a, b


@dataclass(slots=True)
class Batch:
    record: CommitRecord
    outputs: list[OutputRow]
    streams: dict[tuple[str, str], int]
    messages: int
    failures: int
    # chunks (or their tails) the batch's deadline left unprocessed: they go
    # back to the front of their inbox queues
    leftover: list[Chunk] = field(default_factory=list)
    cut: bool = False  # leftover[0] is the tail of a chunk the batch began


@dataclass(frozen=True)
class RecoveryReport:
    fresh: bool
    partitions: int
    snapshots: int
    replay_from: int
    replayed_rows: int
    replayed_messages: int
    replay_mismatches: int
    requeued: tuple[OutputRow, ...]
    seconds: float
    pending: tuple[PendingRow, ...] = ()
    notes: tuple[str, ...] = ()
    undelivered: int = 0  # outputs committed and not yet delivered
    unsplittable: dict = field(default_factory=dict)  # see Recovered

    def summary(self) -> str:
        if self.fresh:
            return "fresh start: no previous state"
        outs = self.undelivered
        waiting = sum(p.count - p.consumed for p in self.pending)
        more = (f", {waiting} messages read before the last stop wait to be "
                f"processed first" if waiting else "")
        return (f"recovered {self.partitions} partitions ({self.snapshots} from "
                f"snapshots), replayed {self.replayed_messages} inputs from lsn "
                f"{self.replay_from} ({self.replayed_rows} log rows), re-queued "
                f"{outs} undelivered outputs{more}, in {self.seconds:.3f}s")


@dataclass
class CoreStats:
    batches: int = 0
    messages: int = 0
    outputs: int = 0
    failures: int = 0
    snapshots: int = 0
    checkpoint_snapshots: int = 0
    longest_batch_seconds: float = 0.0
    longest_batch_messages: int = 0
    longest_snapshot_seconds: float = 0.0  # pickling snapshots in one commit


class WorkerCore:
    def __init__(self, app: AppSpec, store: Store, *,
                 log: logging.Logger | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME,
                 checkpoint_interval: float = 1.0,
                 checkpoint_max: int = 1000,
                 clock: Callable[[], float] = time.monotonic,
                 framed_sinks: frozenset[int] = frozenset()):
        self.app = app
        self.store = store
        self.durable = bool(store.durable)
        self.log = log or logging.getLogger("wallaroo")
        self.clock = clock
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_max = checkpoint_max
        # sinks speaking the resumable protocol: outputs kept as its frames
        self.framed_sinks = frozenset(framed_sinks)
        self.spaces = {s.name: StateSpace(s, self.durable) for s in app.states}
        self.downstream = {name: [self.spaces[t] for t in sorted(ts)]
                           for name, ts in app.downstream_states().items()}
        self.framers = [Framer(p.source.decoder, max_frame) for p in app.pipelines]
        self.pipeline_index = {p.name: p.index for p in app.pipelines}
        self.out_lists: list[list[bytes]] = [[] for _ in app.sinks]
        self.tracker = DirtyTracker()
        self.next_lsn = 0
        self.next_pid = 0
        self.next_out_seq: dict[int, int] = {s.index: 0 for s in app.sinks}
        self.delivered: dict[int, int] = {s.index: 0 for s in app.sinks}
        self._delivered_pending: dict[int, int] = {}
        self.sink_bases: dict[int, int] = {}
        self._bases_pending: dict[int, int] = {}
        self.stream_counts: dict[tuple[str, str], int] = {}
        self.stream_seen: dict[tuple[str, str], int] = {}
        self.next_pending_id = 0
        self.header_lengths = [p.source.decoder.header_length for p in app.pipelines]
        self.stats = CoreStats()
        # live compilation
        ctx = Context(fail=None)
        self.failures = FailureLog(ctx.cell, self.log)
        ctx.fail = self.failures.fail
        self.runners = [
            make_runner(p.source.decoder.decode, p.source.decoder.name,
                        compile_pipeline(app, p, self.spaces, self.out_lists,
                                         ctx, rebuild=False,
                                         framed=self.framed_sinks), ctx)
            for p in app.pipelines]
        self.recovered = False

    # -- recovery ----------------------------------------------------------
    def recover(self, on_row: Callable[[InputRow], None] | None = None,
                requeue: bool = True) -> RecoveryReport:
        """Load snapshots, replay the logged inputs they have not absorbed
        (outputs dropped: the outbox has them) and collect the undelivered
        outputs.  Sources must stay closed until this returns.

        The cyclic garbage collector is paused meanwhile (recovery creates
        objects by the hundred thousand and frees none; collections would
        rescan them all) and the recovered objects are then frozen out of
        its scans."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._recover(on_row, requeue)
        finally:
            if gc_was_enabled:
                gc.freeze()
                gc.enable()

    def _recover(self, on_row, requeue: bool) -> RecoveryReport:
        t0 = time.perf_counter()
        rec = self.store.open(self.app.fingerprint())
        for prow in rec.partitions:
            space = self.spaces.get(prow.state)
            if space is None:
                raise IncompatibleDirectory(
                    f"the resilience directory holds partitions of state "
                    f"{prow.state!r}, which this application does not define")
            key = snapshots.loads(prow.key)
            snap = rec.snapshots.get(prow.pid)
            if snap is not None:
                try:
                    state = snapshots.loads(snap.blob)
                except Exception as e:
                    raise StoreError(
                        f"cannot load the snapshot of {space.describe_key(key)}: "
                        f"{type(e).__name__}: {e} (was the state class renamed "
                        f"or moved?)") from e
                space.snap_lsn[key] = snap.lsn
            else:
                state = space.spec.factory()
            space.parts[key] = state
            space.pids[key] = prow.pid
            self.next_pid = max(self.next_pid, prow.pid + 1)
        for space in self.spaces.values():
            space.build_declared()
        self.next_lsn = rec.next_lsn
        self.next_out_seq.update(rec.next_out_seq)
        self.delivered.update(rec.delivered)
        self.sink_bases.update(rec.sink_bases)
        self.stream_counts.update(rec.streams)
        self.stream_seen.update(rec.stream_seen)
        self.next_pending_id = max((p.id for p in rec.pending), default=-1) + 1
        rows, messages, mismatches = self._replay(rec.replay_from, rec.next_lsn, on_row)
        now = self.clock()
        for space in self.spaces.values():
            if space.touched:
                self.tracker.mark(space, space.touched, rec.replay_from, now)
            space.touched.clear()
            space.to_save.clear()
        # the undelivered outputs, read here, or (requeue=False: a worker
        # whose sinks read them back from the store as they drain) counted
        requeued = tuple(self.store.undelivered_outputs(rec.delivered)) \
            if requeue else ()
        undelivered = sum(max(0, n - rec.delivered.get(i, 0))
                          for i, n in rec.next_out_seq.items())
        self.recovered = True
        return RecoveryReport(
            fresh=rec.fresh, partitions=len(rec.partitions),
            snapshots=len(rec.snapshots), replay_from=rec.replay_from,
            replayed_rows=rows, replayed_messages=messages,
            replay_mismatches=mismatches, requeued=requeued,
            seconds=time.perf_counter() - t0, pending=tuple(rec.pending),
            undelivered=undelivered, unsplittable=dict(rec.unsplittable),
            notes=tuple(getattr(self.store, "notes", ())))

    def _replay(self, replay_from: int, next_lsn: int, on_row) -> tuple[int, int, int]:
        ctx = Context(fail=None)
        flog = FailureLog(ctx.cell, None)
        ctx.fail = flog.fail
        runners = [
            make_runner(p.source.decoder.decode, p.source.decoder.name,
                        compile_pipeline(self.app, p, self.spaces, [],
                                         ctx, rebuild=True), ctx)
            for p in self.app.pipelines]
        rows = messages = mismatches = 0
        # The log holds every input from replay_from to next_lsn, without
        # holes: a missing row would silently leave state short.
        expected = replay_from
        for row in self.store.replay_inputs(replay_from):
            if row.first_lsn > expected:
                raise CorruptionError(
                    f"{getattr(self.store, 'path', 'the store')}: input-log rows "
                    f"for lsn {expected}..{row.first_lsn - 1} are missing; "
                    f"refusing to rebuild state without them")
            expected = max(expected, row.end_lsn)
            idx = self.pipeline_index.get(row.source)
            if idx is None:
                raise IncompatibleDirectory(
                    f"the input log holds input of pipeline {row.source!r}, "
                    f"which this application does not define")
            payloads = self.framers[idx].split_all(row.frames)
            if len(payloads) != row.count:
                raise StoreError(f"input-log row at lsn {row.first_lsn} holds "
                                 f"{len(payloads)} frames, not {row.count}")
            skip = max(0, replay_from - row.first_lsn)
            flog.start_chunk(f"input-log row at lsn {row.first_lsn}")
            runners[idx](payloads[skip:], row.first_lsn + skip)
            # A frame that failed originally is replayed like any other: the
            # steps before its failure changed state, and that must be
            # rebuilt.  One that fails only now means the application changed
            # or is not deterministic: say so loudly.
            new_failures = {i + skip for i in flog.indices} - set(row.failed)
            if new_failures:
                mismatches += 1
                self.log.error(
                    "replay of lsn %d..%d from pipeline %r differs from the "
                    "original run: frames %s fail now but did not then. Is an "
                    "application function non-deterministic, or was the "
                    "application changed? State may differ from before the "
                    "crash.", row.first_lsn, row.end_lsn - 1, row.source,
                    sorted(new_failures))
            rows += 1
            messages += row.count - skip
            if on_row is not None:
                on_row(row)
        if expected < next_lsn:
            raise CorruptionError(
                f"{getattr(self.store, 'path', 'the store')}: input-log rows for "
                f"lsn {expected}..{next_lsn - 1} are missing; refusing to rebuild "
                f"state without them")
        return rows, messages, mismatches

    # -- the batch cycle ---------------------------------------------------
    def process(self, chunks: Iterable[Chunk], force_checkpoint: bool = False,
                deadline: float | None = None) -> Batch:
        """Run a batch through the pipelines (synchronously) and build its
        commit record.  Snapshots are pickled here, on the caller's thread,
        while no state can change.  With a ``deadline`` (a
        ``time.perf_counter()`` value) the batch stops taking messages once
        it passes: at least one message is processed, and what is left is
        returned in ``Batch.leftover``."""
        c0 = time.thread_time()  # CPU time: a SIGSTOP is not compute
        first_lsn = lsn = self.next_lsn
        inputs: list[InputRow] = []
        streams: dict[tuple[str, str], int] = {}
        consumed: dict[int, int] = {}
        leftover: list[Chunk] = []
        cut = False
        flog = self.failures
        fails_before = flog.total
        pipelines = self.app.pipelines
        durable = self.durable
        counts = self.stream_counts
        chunks = chunks if isinstance(chunks, list) else list(chunks)
        for ci, ch in enumerate(chunks):
            n = len(ch.payloads)
            if not n:
                continue
            if deadline is not None and ci and time.perf_counter() >= deadline:
                leftover = chunks[ci:]
                break
            flog.start_chunk(ch.origin, ch.position, ch.payloads)
            done = self.runners[ch.source](ch.payloads, lsn, deadline)
            if done < n:
                ch, rest = ch.split(done, self.header_lengths[ch.source])
                leftover = [rest, *chunks[ci + 1:]]
                cut = True
                n = done
            pname = pipelines[ch.source].name
            if durable:
                inputs.append(InputRow(lsn, pname, ch.stream, ch.first_seq, n,
                                       ch.frames, tuple(flog.indices)))
            if ch.stream is not None:
                key, end = (pname, ch.stream), ch.first_seq + n
                if end > counts.get(key, 0):  # pending input was counted before
                    streams[key] = counts[key] = end
            if ch.pending is not None:
                consumed[ch.pending] = ch.pending_offset + n
            lsn += n
            if leftover:
                break
        self.next_lsn = lsn
        outputs = self._output_rows()
        if durable:
            partitions, snaps = self._bookkeeping(first_lsn, lsn, force_checkpoint)
        else:
            partitions, snaps = [], []
            for space in self.spaces.values():
                space.touched.clear()
                space.to_save.clear()
        record = self._record(
            inputs=inputs, outputs=outputs, partitions=partitions,
            snapshots=snaps, streams=streams, pending_consumed=consumed,
            next_out_seq={o.sink: self.next_out_seq[o.sink] for o in outputs})
        elapsed = time.thread_time() - c0
        st = self.stats
        st.batches += 1
        st.messages += lsn - first_lsn
        st.outputs += sum(o.count for o in outputs)
        failures = flog.total - fails_before
        st.failures += failures
        st.snapshots += len(snaps)
        if elapsed > st.longest_batch_seconds:
            st.longest_batch_seconds = elapsed
            st.longest_batch_messages = lsn - first_lsn
        return Batch(record=record, outputs=outputs, streams=streams,
                     messages=lsn - first_lsn, failures=failures, leftover=leftover,
                     cut=cut)

    def _record(self, **rows) -> CommitRecord:
        """A commit record carrying the control values every commit writes:
        the next lsn, ``replay_from`` and the delivery positions noted since
        the last one."""
        oldest = self.tracker.oldest_lsn()
        record = CommitRecord(delivered=self._delivered_pending,
                              sink_bases=self._bases_pending,
                              next_lsn=self.next_lsn,
                              replay_from=self.next_lsn if oldest is None else oldest,
                              **rows)
        self._delivered_pending = {}
        self._bases_pending = {}
        return record

    def _output_rows(self) -> list[OutputRow]:
        """One outbox row per sink with outputs in this batch (framed
        sinks' lists alternate frame header and output)."""
        outputs: list[OutputRow] = []
        for i, lst in enumerate(self.out_lists):
            if not lst:
                continue
            framed = i in self.framed_sinks
            data = b"".join(lst)
            if len(data) <= MAX_ROW_BYTES:
                n = len(lst) // 2 if framed else len(lst)
                seq = self.next_out_seq[i]
                outputs.append(OutputRow(i, seq, n, data, framed))
                self.next_out_seq[i] = seq + n
            else:
                outputs.extend(self._split_outputs(i, lst, framed))
            lst.clear()
        return outputs

    def _split_outputs(self, sink: int, lst: list[bytes],
                       framed: bool) -> list[OutputRow]:
        """A batch's outputs for one sink over several rows of at most about
        ``MAX_ROW_BYTES``; an output too large to store at all is dropped and
        counted as a failure of its message (it was already computed)."""
        rows: list[OutputRow] = []
        group: list[bytes] = []
        size = 0
        name = f"encoder of {self.app.sinks[sink].label}"
        items = ([lst[k] + lst[k + 1] for k in range(0, len(lst), 2)] if framed
                 else lst)
        extra = 4 if framed else 0

        def flush():
            nonlocal group, size
            if group:
                seq = self.next_out_seq[sink]
                rows.append(OutputRow(sink, seq, len(group), b"".join(group), framed))
                self.next_out_seq[sink] = seq + len(group)
                group, size = [], 0
        for out in items:
            if len(out) - extra > MAX_OUTPUT_BYTES:
                self.failures.fail(name, StepError(
                    f"output of {len(out) - extra} bytes exceeds the largest "
                    f"output the outbox can store ({MAX_OUTPUT_BYTES} bytes); "
                    f"dropped"))
                continue
            if size and size + len(out) > MAX_ROW_BYTES:
                flush()
            group.append(out)
            size += len(out)
        flush()
        return rows

    def pending_record(self, chunks: list[Chunk]) -> CommitRecord:
        """When the worker stops: what it read but did not process becomes
        the pending-input table (replacing it), processed first at the next
        start.  Stream counts include it: it is durable."""
        rows: list[PendingRow] = []
        streams: dict[tuple[str, str], int] = {}
        for ch in chunks:
            n = len(ch.payloads)
            if not n:
                continue
            pname = self.app.pipelines[ch.source].name
            rows.append(PendingRow(self.next_pending_id, pname, ch.stream,
                                   ch.first_seq, n, ch.frames))
            self.next_pending_id += 1
            if ch.stream is not None:
                key, end = (pname, ch.stream), ch.first_seq + n
                if end > self.stream_counts.get(key, 0):
                    streams[key] = self.stream_counts[key] = end
        return self._record(pending=rows, streams=streams)

    def forget_record(self, keys: list[tuple[str, str]]) -> CommitRecord:
        """Forget streams (their counts) not seen for a long time."""
        for k in keys:
            self.stream_counts.pop(k, None)
            self.stream_seen.pop(k, None)
        return self._record(forget_streams=list(keys))

    def _bookkeeping(self, first_lsn: int, end_lsn: int, force: bool = False):
        """New partition rows, dirty marks and the snapshots this commit
        takes: partitions that asked save_state, the oldest dirty ones when a
        checkpoint is due (at most ``checkpoint_max``), and every dirty
        partition of a state downstream of one being snapshotted."""
        now = self.clock()
        tracker = self.tracker
        new_rows: list[PartitionRow] = []
        wanted: dict[StateSpace, set] = {}
        for space in self.spaces.values():
            touched = space.touched
            if touched:
                pids = space.pids
                for key in touched:
                    if key not in pids:
                        new_rows.append(self._new_partition(space, key, first_lsn))
                tracker.mark(space, touched, first_lsn, now)
                touched.clear()
            if space.to_save:
                wanted[space] = set(space.to_save)
                space.to_save.clear()
        since = tracker.oldest_since()
        checkpointed = 0
        if since is not None and (force or now - since >= self.checkpoint_interval):
            for space, key in tracker.take_oldest(self.checkpoint_max):
                keys = wanted.setdefault(space, set())
                if key not in keys:
                    keys.add(key)
                    checkpointed += 1
        for space in list(wanted):
            for down in self.downstream[space.name]:
                if down.dirty:
                    wanted.setdefault(down, set()).update(down.dirty)
        snaps: list[SnapshotRow] = []
        lsn = end_lsn - 1
        t0 = time.perf_counter()
        for space, keys in wanted.items():
            parts, pids = space.parts, space.pids
            for key in keys:
                if key not in space.dirty:
                    continue
                blob, pickler = snapshots.dumps(parts[key], space.describe_key(key))
                snaps.append(SnapshotRow(pids[key], lsn, blob, pickler))
                tracker.clean(space, key)
        st = self.stats
        st.checkpoint_snapshots += checkpointed
        elapsed = time.perf_counter() - t0
        if elapsed > st.longest_snapshot_seconds:
            st.longest_snapshot_seconds = elapsed
        return new_rows, snaps

    def _new_partition(self, space: StateSpace, key, lsn: int) -> PartitionRow:
        blob = space.key_blobs.pop(key, None)
        if blob is None:
            blob = snapshots.dumps(key, f"partition key {key!r} of state {space.name!r}")[0]
        pid = self.next_pid
        self.next_pid += 1
        space.pids[key] = pid
        return PartitionRow(pid, space.name, blob, _key_repr(key), lsn)

    def note_base(self, sink: int, base: int) -> None:
        """A resumable sink's receiver numbers its outputs from ``base``
        (it lost what it held); saved with the next commit."""
        self.sink_bases[sink] = self._bases_pending[sink] = base

    def idle_commit_due(self) -> bool:
        """Whether a batch with no input is worth committing now: a
        checkpoint is due, or delivery positions moved."""
        if self._delivered_pending or self._bases_pending:
            return True
        since = self.tracker.oldest_since()
        return since is not None and self.clock() - since >= self.checkpoint_interval

    def note_delivered(self, sink: int, end_seq: int) -> None:
        """A sink wrote outputs up to ``end_seq``; saved with the next commit."""
        if end_seq > self.delivered.get(sink, 0):
            self.delivered[sink] = end_seq
            self._delivered_pending[sink] = end_seq

    def state(self, state_name: str, key=None):
        """The current state object of a partition (for tests and tools)."""
        return self.spaces[state_name].parts[key]


def _key_repr(key) -> str:
    r = repr(key)
    return r if len(r) <= 200 else r[:197] + "..."
