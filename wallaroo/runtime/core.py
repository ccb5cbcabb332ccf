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
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .._spec import AppSpec
from ..connectors.base import PEER, TCP, TICK
from ..connectors.framing import DEFAULT_MAX_FRAME, Framer
from ..connectors.kafka_source import RECORD_FRAMING
from ..recovery import checked_meta, ownership, snapshots
from ..recovery.errors import IncompatibleDirectory, StoreError
from ..recovery.records import (CommitRecord, InputRow, OutputRow, PartitionRow,
                                PendingRow)
from ..recovery.sink_identities import peer_identity
from ..recovery.store import Store
from . import channels
from .checkpoints import MAX_NEW_PARTITIONS, MAX_TOUCHED, Checkpoints
from .dataflow import (Context, Route, compile_pipeline, first,
                       first_counted_by_source, make_peer_runner, make_runner)
from .failures import FailureLog
from . import live_members
from .live_members import LiveMembers
from .live_moves import LiveMoves
from .output_rows import OutputRows
from .metrics import SIZE_BUCKETS, Histogram, Latency, Stages
from .placement import DEFAULT_KEY_GROUPS, Placement, stable_hash
from .replay import replay
from .states import DirtyTracker, StateSpace
from .windowing import Windowing, tick_appliers


@dataclass(slots=True)
class Chunk:
    """Complete frames that one connection delivered, in order; or (source
    ``WorkerCore.peer_source``, connector ``peer``) peer batches from one
    worker, each payload one batch with its header."""

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
    connector: str = TCP
    arrived: float = 0.0  # time.monotonic() when the first frame came (0: unknown)

    def split(self, k: int, header_length: int) -> tuple["Chunk", "Chunk"]:
        """The first ``k`` frames and the rest."""
        head = self.payloads[:k]
        cut = sum(map(len, head)) + k * header_length
        a = Chunk(self.source, head, self.frames[:cut], self.stream, self.first_seq,
                  self.origin, self.key, self.position, self.pending,
                  self.pending_offset, self.connector, self.arrived)
        b = Chunk(self.source, self.payloads[k:], self.frames[cut:], self.stream,
                  None if self.first_seq is None else self.first_seq + k,
                  self.origin, self.key,
                  None if self.position is None else self.position + k,
                  self.pending, self.pending_offset + k, self.connector,
                  self.arrived)
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
    processed_at: float = 0.0  # time.monotonic() when its compute ended
    landed: Any = None  # a trio.Event set once committed and released


@dataclass(frozen=True)
class RecoveryReport:
    fresh: bool
    partitions: int  # in the store
    snapshots: int  # of them loaded (by replay and declared partitions)
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
        return (f"recovered {self.partitions} partitions ({self.snapshots} "
                f"loaded, the rest when a message needs them), replayed "
                f"{self.replayed_messages} inputs from lsn "
                f"{self.replay_from} ({self.replayed_rows} log rows), re-queued "
                f"{outs} undelivered outputs{more}, in {self.seconds:.3f}s")


@dataclass
class CoreStats:
    # per source (pipeline index; the last is other workers' peer batches)
    by_source: list = field(default_factory=list)
    by_sink: dict = field(default_factory=dict)  # sink index -> outputs
    replayed: int = 0  # messages replayed by recovery
    replayed_by: dict = field(default_factory=dict)  # pipeline -> replayed
    replayed_by_peer: dict = field(default_factory=dict)  # worker -> replayed
    by_peer: dict = field(default_factory=dict)  # worker -> messages it sent here
    delivered_by_sink: dict = field(default_factory=dict)  # sink index -> outputs
    batch_seconds: Histogram = field(default_factory=Histogram)
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS))
    snapshot_seconds: Histogram = field(default_factory=Histogram)
    stages: Stages = field(default_factory=Stages)  # per message, see Stages
    batches: int = 0
    messages: int = 0
    outputs: int = 0
    failures: int = 0
    snapshots: int = 0
    checkpoint_snapshots: int = 0
    longest_batch_seconds: float = 0.0
    longest_batch_messages: int = 0
    longest_snapshot_seconds: float = 0.0  # pickling snapshots in one commit


class WorkerCore(Checkpoints, Windowing, LiveMoves, LiveMembers, OutputRows):
    def __init__(self, app: AppSpec, store: Store, *,
                 log: logging.Logger | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME,
                 checkpoint_interval: float = 1.0,
                 checkpoint_max: int = 1000,
                 clock: Callable[[], float] = time.monotonic,
                 framed_sinks: frozenset[int] = frozenset(),
                 name: str = "initializer", members: list[str] | None = None,
                 key_groups: int = DEFAULT_KEY_GROUPS,
                 addresses: dict | None = None,
                 state_cache: int | None = None, deliver_only: bool = False,
                 save_state_interval: float = 0.0,
                 membership: dict | None = None):
        """``members``: the cluster's workers in order (default: this one
        alone); ``name``: this worker's; ``addresses`` (several hosts):
        every member's control and data addresses, saved with the
        membership; ``state_cache``: at most this many partitions stay in
        memory at a batch boundary (the rest are in the store);
        ``membership``: the whole membership of a cluster this worker joins
        while it runs (its map of owners: live_members.py)."""
        self.app = app
        self.name = name
        # a retired worker's database, run only to deliver its outputs
        # (rescale.py): on its own, whatever cluster it left
        self.deliver_only = deliver_only
        self.proposed_membership = {"members": list(members or [name]),
                                    "key_groups": key_groups}
        if membership is not None:  # a member joining a running cluster
            if membership["members"] != self.proposed_membership["members"]:
                raise ValueError(f"the membership given ({membership['members']}) "
                                 f"is not the members' ({members})")
            self.proposed_membership = dict(membership)
        if addresses:
            self.proposed_membership["addresses"] = addresses
        self.membership: dict | None = None  # as saved, once settled
        self.placement: Placement | None = None  # once the membership is settled
        self.codec = channels.PeerCodec(app.serializer)
        self.store = store
        self.durable = bool(store.durable)
        self.log = log or logging.getLogger("wallaroo")
        self.clock = clock
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_max = checkpoint_max
        # save_state=True: a snapshot in the batch's own commit (0), or at
        # most one per partition per this many seconds (checkpoints.py)
        self.save_state_interval = save_state_interval
        self._save_pending: dict = {}  # space -> {key: due (clock time)}
        # (state, key) -> clock time before which periodic checkpoints leave
        # that partition alone (its last snapshot was slow; _held_back)
        self._held: dict[tuple[str, Any], float] = {}
        # sinks speaking the resumable protocol: outputs kept as its frames
        self.framed_sinks = frozenset(framed_sinks)
        self.spaces = {s.name: StateSpace(s, self.durable) for s in app.states}
        if state_cache is not None and not self.durable:
            raise ValueError("--state-cache needs --resilience-dir: evicted "
                             "partitions live in the store")
        self.state_cache = state_cache
        # (space, key) of every partition in memory, least recently used
        # first (kept only with a state cache)
        self.recent: dict | None = {} if state_cache is not None else None
        # evictions waiting for their commit to land: (record number, space, key)
        self._leaving: deque = deque()
        self.records = 0  # commit records made (numbered from 1)
        self.membership_record = 0  # the record of the last member change
        self.evictions = 0
        for space in self.spaces.values():
            space.recent = self.recent
            space.serializer = app.serializer
        self.downstream = {name: [self.spaces[t] for t in sorted(ts)]
                           for name, ts in app.downstream_states().items()}
        # Kafka records are logged behind a 4-byte length, whatever the decoder
        self.framers = [Framer(RECORD_FRAMING if p.source.kind == "kafka"
                               else p.source.decoder, max_frame)
                        for p in app.pipelines]
        self.pipeline_index = {p.name: p.index for p in app.pipelines}
        self.out_lists: list[list[bytes]] = [[] for _ in app.sinks]
        # destinations: the application's sinks, then one channel per member
        # (this worker's own is never used)
        self.peer_source = len(app.pipelines)  # the source index of peer chunks
        self.route: Route | None = None  # once the membership is settled
        self.tracker = DirtyTracker()
        self.next_lsn = 0
        self.next_pid = 0
        self.next_out_seq: dict[int, int] = {i: 0 for i in range(self.destinations)}
        self.delivered: dict[int, int] = {i: 0 for i in range(self.destinations)}
        self._delivered_pending: dict[int, int] = {}
        self.sink_bases: dict[int, int] = {}
        self._bases_pending: dict[int, int] = {}
        self.stream_counts: dict[tuple[str, str], int] = {}
        self.stream_seen: dict[tuple[str, str], int] = {}
        self.next_pending_id = 0
        # frame header bytes per source; peer batches carry theirs in the payload
        self.header_lengths = [f.header_length for f in self.framers] + [0]
        self.stats = CoreStats(by_source=[0] * (len(app.pipelines) + 1))
        self.latency = Latency(len(app.sinks))  # frame arrival -> output written
        self.failures = FailureLog([0], self.log)
        self.runners: list = []  # compiled once the membership is settled
        self.step_counts: list = []  # (pipeline, step, [messages it took])
        self.recovered = False
        self._init_windows(app)
        self._init_live()

    @property
    def destinations(self) -> int:
        """Sinks, then one channel per member."""
        return len(self.app.sinks) + len(self.proposed_membership["members"])

    def peer_dest(self, member: int) -> int:
        return len(self.app.sinks) + member

    def fingerprint(self) -> dict:
        fp = self.app.fingerprint()
        fp["sink_identities"] = fp["sink_identities"] + [
            peer_identity(m) for m in self.proposed_membership["members"]]
        return fp

    def route_for(self, rebuild: bool = False) -> Route | None:
        """The routing of a cluster's state steps (None: one worker); a
        rebuild gets its own (what it routes is dropped)."""
        p = self.placement
        if p is None or p.size == 1:
            return None
        return Route(p.owners, p.me, p.size, self.since)

    def _compile(self) -> None:
        ctx = Context(fail=None)
        if self.durable:  # every new partition is a row of the batch's commit,
            ctx.max_created = MAX_NEW_PARTITIONS  # every touched one bookkeeping
            ctx.touched = [space.touched for space in self.spaces.values()]
            ctx.max_touched = MAX_TOUCHED
        self.created = ctx.created
        for space in self.spaces.values():
            space.created = ctx.created
        self.failures = FailureLog(ctx.cell, self.log)
        ctx.fail = self.failures.fail
        route = self.route = self.route_for()
        self.step_counts = []  # (pipeline, step, [messages it took])
        self.entries = [compile_pipeline(self.app, p, self.spaces, self.out_lists,
                                         ctx, rebuild=False, framed=self.framed_sinks,
                                         route=route, counts=self.step_counts)
                        for p in self.app.pipelines]
        first_seen = {pipeline: seen for pipeline, _, seen in reversed(self.step_counts)}
        self.runners = [
            make_runner(p.source.decoder.decode, p.source.decoder.name,
                        first(self.entries[p.index]), ctx,
                        first_seen[p.name] if first_counted_by_source(p, route)
                        else None)
            for p in self.app.pipelines]
        self.runners.append(make_peer_runner(self.entries, self.codec.decode, ctx,
                                             self.peer_unit_failed(self.failures),
                                             self._take_hand_over))
        self.ctx = ctx
        self.appliers = tick_appliers(self.app, self.entries)

    def peer_unit_failed(self, flog: FailureLog):
        """What a peer batch that cannot be decoded costs: its messages."""
        def failed(unit: bytes, first_index: int, exc: BaseException) -> int:
            n = channels.messages_in(unit)
            for i in range(first_index, first_index + n):
                flog.cell[0] = i
                flog.fail("deserializing a peer batch", exc)
            return n
        return failed

    def _settle_membership(self, saved: dict | None) -> None:
        """The cluster as this worker's database knows it; the core
        compiles its routing from it.  A database of the cluster before
        members joined it while this worker was down (live_members.py)
        takes the grown membership, saved in the next commit."""
        m = saved or self.proposed_membership
        mine = self.proposed_membership
        if saved is not None and m["key_groups"] == mine["key_groups"] \
                and live_members.extends(mine["members"], m["members"]):
            m = live_members.grown(saved, mine["members"],
                                   live_members.saved_owner_names(saved))
            self._meta_pending["membership"] = checked_meta.checked_text(
                "membership", m)
            self.log.info("the cluster grew to %s while this worker was down: "
                          "taking the new members", ", ".join(m["members"]))
        if (m["members"], m["key_groups"]) != (mine["members"], mine["key_groups"]):
            raise IncompatibleDirectory(
                f"worker {self.name!r}'s resilience directory belongs to a cluster "
                f"of {len(m['members'])} workers ({', '.join(m['members'])}; "
                f"{m['key_groups']} key groups), but this run makes it one of "
                f"{len(self.proposed_membership['members'])} "
                f"({', '.join(self.proposed_membership['members'])}; "
                f"{self.proposed_membership['key_groups']} key groups).  Start "
                f"it with the cluster's original size and names.")
        owners = stream_owners = None
        try:
            if m.get("owners") is not None:
                owners = ownership.decode(m["owners"], m["key_groups"], m["members"])
            if m.get("stream_owners") is not None:
                stream_owners = ownership.decode(
                    m["stream_owners"], ownership.STREAM_SLOTS, m["members"],
                    "stream-slot owners")
        except ownership.OwnershipError as e:
            raise IncompatibleDirectory(
                f"worker {self.name!r}'s resilience directory: {e}; refusing "
                f"to route by it") from None
        self.membership = m
        self.placement = Placement(m["members"], self.name, m["key_groups"], owners,
                                   stream_owners, m.get("rule_workers"))
        for space in self.spaces.values():
            space.placement = self.placement
        self._compile()

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
        rec = self.store.open(self.fingerprint(), self.proposed_membership)
        if self.deliver_only:
            if not rec.retired:
                raise IncompatibleDirectory(
                    f"{getattr(self.store, 'path', 'the store')} is not a retired "
                    f"worker's database: only those are run to deliver their "
                    f"outputs alone")
            rec.membership = None
        elif rec.retired:
            raise IncompatibleDirectory(
                f"worker {self.name!r} left its cluster in a rescale (its "
                f"database is marked retired; `wallaroo recovery inspect` shows "
                f"it): it runs again only as a member the cluster takes back "
                f"(`wallaroo cluster grow`, or `--workers` with it)")
        self._settle_membership(rec.membership)
        self._load_live(rec.live_moves)
        if self.store.durable:
            self._attach_store(rec)
        for space in self.spaces.values():
            space.build_declared()
        loaded = self.load_windows()
        if loaded:
            self.log.info("recovery: loaded the %d partitions of the windows, "
                          "to fire them on time", loaded)
        self.next_lsn = rec.next_lsn
        self.next_out_seq.update(rec.next_out_seq)
        self.delivered.update(rec.delivered)
        self.sink_bases.update(rec.sink_bases)
        self.stream_counts.update(rec.streams)
        self.stream_seen.update(rec.stream_seen)
        self.next_pending_id = max((p.id for p in rec.pending), default=-1) + 1
        if self.timers is not None:
            self.timers.counting = False  # late messages were counted before
        rows, messages, mismatches = replay(self, rec.replay_from, rec.next_lsn,
                                            on_row)
        if self.timers is not None:
            self.timers.counting = True
        self.stats.replayed += messages
        now = self.clock()
        for space in self.spaces.values():
            if space.touched:
                self.tracker.mark(space, space.touched, rec.replay_from, now)
            space.touched.clear()
            space.to_save.clear()
        self._load_deferred()
        # the undelivered outputs, read here, or (requeue=False: a worker
        # whose sinks read them back from the store as they drain) counted
        requeued = tuple(self.store.undelivered_outputs(rec.delivered)) \
            if requeue else ()
        undelivered = sum(max(0, n - rec.delivered.get(i, 0))
                          for i, n in rec.next_out_seq.items())
        self.recovered = True
        return RecoveryReport(
            fresh=rec.fresh, partitions=rec.partitions_on_disk,
            snapshots=sum(s.loaded for s in self.spaces.values()),
            replay_from=rec.replay_from,
            replayed_rows=rows, replayed_messages=messages,
            replay_mismatches=mismatches, requeued=requeued,
            seconds=time.perf_counter() - t0, pending=tuple(rec.pending),
            undelivered=undelivered, unsplittable=dict(rec.unsplittable),
            notes=tuple(getattr(self.store, "notes", ())))

    def _attach_store(self, rec) -> None:
        """Partitions stay in the store until a message (or replay) needs
        one; what made loading them all at the start safe is checked here
        instead, before the worker is ready: every state the store holds
        is the application's, and every class a snapshot recorded that it
        needs can still be found."""
        store = self.store
        self.next_pid = rec.next_pid
        on_disk = store.partition_states()
        for state in on_disk:
            if state not in self.spaces:
                raise IncompatibleDirectory(
                    f"the resilience directory holds partitions of state "
                    f"{state!r}, which this application does not define")
        for state in on_disk:
            n = store.hash_partitions(state, _key_hash)
            if n:
                self.log.info("recovery: indexed the keys of %d partitions of "
                              "state %r (written by an earlier release; once)",
                              n, state)
        n = store.group_partitions(self._key_group)
        if n:
            self.log.info("recovery: gave %d partitions written by an earlier "
                          "release their key groups (once)", n)
        for cid, refs in store.class_sets().items():
            bad = snapshots.unresolvable(refs)
            if not bad:
                continue
            prow = store.partition_using(cid)
            if prow is None:
                continue  # no snapshot uses it any more
            space = self.spaces[prow.state]
            raise StoreError(
                f"cannot load the snapshot of partition {prow.pid} (state "
                f"{prow.state!r} ({space.spec.class_name}), key {prow.key_repr}) "
                f"and of every partition like it: it refers to "
                f"{'; '.join(bad)}.  Was a class renamed or moved?  Restore "
                f"it under its old name, or start with another "
                f"--resilience-dir.")
        finder = store.partition_finder()
        for space in self.spaces.values():
            space.replay_floor = rec.replay_from
            space.store_path = store.path
            # with a state cache, partitions evicted from now on are there too
            if space.name in on_disk or self.state_cache is not None:
                space.finder = finder

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
        m0 = time.monotonic()
        if self._leaving:
            self._purge_leaving()
        self.created[0] = 0
        queued = self.stats.stages.queued.observe_n
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
        by_source = self.stats.by_source
        chunks = chunks if isinstance(chunks, list) else list(chunks)
        out_lists = self.out_lists
        ingest = self._batch_time()
        ticks = 0  # lsns of clock ticks: not messages
        marks = []  # (arrival, outputs per sink so far): for the latency
        for ci, ch in enumerate(chunks):
            n = len(ch.payloads)
            if not n:
                continue
            if deadline is not None and ci and time.perf_counter() >= deadline:
                leftover = chunks[ci:]
                break
            if ch.connector == TICK:  # windows' clock (windowing.py)
                if durable:
                    inputs.append(InputRow(lsn, "", None, None, 1, b"", (), TICK,
                                           ingest))
                self.fire_due(lsn, self.appliers, self.ctx, False)
                lsn += 1
                ticks += 1
                continue
            peer = ch.connector == PEER
            if peer:
                ch = self._fresh_peer_batches(ch)
                if ch is None:
                    continue
                n = len(ch.payloads)
            flog.start_chunk(ch.origin, None if peer else ch.position,
                             None if peer else ch.payloads)
            done = self.runners[ch.source](ch.payloads, lsn, deadline)
            if done < n:
                ch, rest = ch.split(done, self.header_lengths[ch.source])
                leftover = [rest, *chunks[ci + 1:]]
                cut = True
                n = done
            if peer:  # n peer batches; their messages get the lsns
                msgs = sum(map(channels.messages_in, ch.payloads))
                source, skey = ch.stream[len("peer:"):], ("peer", ch.stream)
            else:
                msgs = n
                source = pipelines[ch.source].name
                skey = (source, ch.stream)
            if durable:
                inputs.append(InputRow(lsn, source, ch.stream, ch.first_seq, msgs,
                                       ch.frames, tuple(flog.indices), ch.connector,
                                       ingest))
            if ingest and msgs:
                self.fire_due(lsn + msgs - 1, self.appliers, self.ctx, False)
            if ch.stream is not None:
                end = ch.first_seq + n
                if end > counts.get(skey, 0):  # pending input was counted before
                    streams[skey] = counts[skey] = end
            if ch.pending is not None:
                consumed[ch.pending] = ch.pending_offset + n
            lsn += msgs
            by_source[ch.source] += msgs
            if peer:
                by_peer = self.stats.by_peer
                by_peer[source] = by_peer.get(source, 0) + msgs
            if ch.arrived:
                queued(m0 - ch.arrived, msgs)
            if out_lists:
                marks.append((ch.arrived, [len(x) for x in out_lists]))
            if leftover:
                break
        self.next_lsn = lsn
        if marks:
            self._latency_marks(marks)
        outputs = self._output_rows()
        if self.route is not None:
            outputs.extend(self._peer_rows())
            if self.deferring is not None:  # waiting for their hand-over
                outputs.extend(self._deferred_row())
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
        m1 = time.monotonic()
        st = self.stats
        messages = lsn - first_lsn - ticks
        st.stages.compute.observe_n(m1 - m0, messages)
        st.batches += 1
        st.messages += messages
        st.outputs += sum(o.count for o in outputs)
        by_sink = st.by_sink
        for o in outputs:
            by_sink[o.sink] = by_sink.get(o.sink, 0) + o.count
        st.batch_seconds.observe(elapsed)
        st.batch_sizes.observe(messages)
        failures = flog.total - fails_before
        st.failures += failures
        st.snapshots += len(snaps)
        if elapsed > st.longest_batch_seconds:
            st.longest_batch_seconds = elapsed
            st.longest_batch_messages = messages
        return Batch(record=record, outputs=outputs, streams=streams,
                     messages=messages, failures=failures, leftover=leftover,
                     cut=cut, processed_at=m1)

    def _record(self, **rows) -> CommitRecord:
        """A commit record carrying the control values every commit writes:
        the next lsn, ``replay_from`` and the delivery positions noted since
        the last one."""
        oldest = self.tracker.oldest_lsn()
        self.records += 1
        rf = self.next_lsn if oldest is None else oldest
        if self._meta_pending:
            rows["meta"], self._meta_pending = self._meta_pending, {}
        record = CommitRecord(number=self.records,
                              delivered=self._delivered_pending,
                              sink_bases=self._bases_pending,
                              next_lsn=self.next_lsn, replay_from=rf, **rows)
        self._delivered_pending = {}
        self._bases_pending = {}
        return record

    def _latency_marks(self, marks: list) -> None:
        """Which of the batch's outputs (by sequence number, per sink) came
        from frames that arrived when: see ``metrics.Latency``."""
        add = self.latency.add
        for i in range(len(self.out_lists)):
            per = 2 if i in self.framed_sinks else 1  # framed: header, output
            base = self.next_out_seq[i]
            prev = 0
            for arrived, lens in marks:
                c = lens[i] // per
                if c > prev:
                    if arrived:
                        add(i, base + prev, base + c, arrived)
                    prev = c

    def _fresh_peer_batches(self, ch: Chunk) -> Chunk | None:
        """Peer batches are applied once each, in order: any the worker has
        already processed are skipped; a gap is refused (the channel resends
        from the count this worker holds, so neither should happen)."""
        have = self.stream_counts.get(("peer", ch.stream), 0)
        if ch.first_seq == have:
            return ch
        if ch.first_seq > have:
            raise StoreError(f"{ch.origin}: peer batch {ch.first_seq} arrived "
                             f"but this worker holds {have}: batches "
                             f"{have}..{ch.first_seq - 1} are missing")
        k = have - ch.first_seq
        self.log.warning("%s: peer batches %d..%d arrived again; skipped",
                         ch.origin, ch.first_seq, min(have, ch.first_seq +
                                                      len(ch.payloads)) - 1)
        if k >= len(ch.payloads):
            return None
        return ch.split(k, 0)[1]

    def pending_record(self, chunks: list[Chunk]) -> CommitRecord:
        """When the worker stops: what it read but did not process becomes
        the pending-input table (replacing it), processed first at the next
        start.  Stream counts include it: it is durable."""
        rows: list[PendingRow] = []
        streams: dict[tuple[str, str], int] = {}
        for ch in chunks:
            n = len(ch.payloads)
            if not n or ch.connector == PEER:  # its sender resends it
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

    def note_base(self, sink: int, base: int) -> None:
        """A resumable sink's receiver numbers its outputs from ``base``
        (it lost what it held); saved with the next commit."""
        self.sink_bases[sink] = self._bases_pending[sink] = base

    def idle_commit_due(self) -> bool:
        """Whether a batch with no input is worth committing now: a
        checkpoint is due, or delivery positions moved."""
        if self._delivered_pending or self._bases_pending:
            return True
        now = self.clock()
        return self._checkpoint_due(now) or self._save_due(now)

    def note_delivered(self, sink: int, end_seq: int) -> None:
        """A sink wrote outputs up to ``end_seq``; saved with the next commit.
        (A late word from the channel of a member that left is ignored: its
        destination is gone, its last position saved when it was dropped.)"""
        if sink >= self.destinations:
            return
        before = self.delivered.get(sink, 0)
        if end_seq > before:
            if sink < len(self.app.sinks):
                d = self.stats.delivered_by_sink
                d[sink] = d.get(sink, 0) + end_seq - before
            self.delivered[sink] = end_seq
            self._delivered_pending[sink] = end_seq
            self.latency.delivered(sink, end_seq, time.monotonic())

    def state(self, state_name: str, key=None):
        """The current state object of a partition (for tests and tools;
        one not in memory is read, not loaded)."""
        return self.spaces[state_name].peek(key)


    def _key_group(self, prow: PartitionRow) -> int:
        key = snapshots.loads(prow.key)
        return self.placement.group_of(self.spaces[prow.state].spec, key,
                                       prow.key_hash)


def _key_hash(prow: PartitionRow) -> int:
    return stable_hash(snapshots.loads(prow.key))
