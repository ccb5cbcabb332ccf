"""Run an application in-process, deterministically: no sockets, no threads,
no sleeps.  Feed frames, run a batch (compute -> commit -> release), read what
the sinks received, and crash at a named point to test recovery.

    from wallaroo.testing import Driver

    d = Driver("examples/alphabet_partitioned/alphabet_partitioned.py",
               args=["--in", "x:0", "--out", "x:0"], resilience_dir=tmp)
    d.start()
    d.feed("alphabet", [b"a\\x00\\x00\\x00\\x01"])
    d.run_batch(crash_at="after_commit")   # committed, never released
    d.start()                              # recovery re-sends the outputs
    d.received(0)                          # bytes the sink got, resends included

The driver runs the same ``WorkerCore`` as ``wallaroo run``; only the I/O
around it is replaced.
"""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any, Callable

from ._spec import AppSpec
from .recovery.records import InputRow, OutputRow
from .recovery.sqlite_store import SQLiteStore
from .recovery.store import MemoryStore
from .connectors.base import PEER
from .runtime.core import Batch, Chunk, RecoveryReport, WorkerCore
from .runtime.loader import load_application
from .runtime.windowing import tick_chunk

CRASH_POINTS = ("after_compute", "after_commit")


class SimulatedCrash(Exception):
    """Raised inside recovery by ``start(crash_after_replayed_rows=n)``."""


class Driver:
    def __init__(self, app: AppSpec | str | ModuleType, *, args: list[str] | None = None,
                 resilience_dir: str | None = None, worker_name: str = "initializer",
                 synchronous: str = "NORMAL", checkpoint_interval: float = 1.0,
                 checkpoint_max: int = 1000, clock: Callable[[], float] | None = None,
                 max_frame: int | None = None, members: list[str] | None = None,
                 state_cache: int | None = None,
                 event_clock: Callable[[], int] | None = None,
                 save_state_interval: float = 0.0,
                 membership: dict | None = None):
        """``event_clock``: the ingest time (ns) each batch gets, for the
        0.6 API's windows (default: ``time.time_ns``); ``membership``: a
        new member's, joining a running cluster (``ClusterDriver.grow``)."""
        self.event_clock = event_clock
        self.args = list(args or [])
        if isinstance(app, AppSpec):
            self.spec = app
        elif isinstance(app, ModuleType):
            self.spec = app.application_setup(["app"] + self.args)
        else:
            self.spec = load_application(app, [app] + self.args)
        self.resilience_dir = resilience_dir
        self.worker_name = worker_name
        self.synchronous = synchronous
        self.options = dict(checkpoint_interval=checkpoint_interval,
                            checkpoint_max=checkpoint_max, name=worker_name,
                            members=members, state_cache=state_cache,
                            save_state_interval=save_state_interval)
        if max_frame is not None:
            self.options["max_frame"] = max_frame
        if membership is not None:
            self.options["membership"] = membership
        self._now = 0.0
        self.clock = clock or (lambda: self._now)
        self.core: WorkerCore | None = None
        self.store = None
        self.pending: list[Chunk] = []
        self.delivered: dict[int, list[bytes]] = {s.index: [] for s in self.spec.sinks}
        # the same, as the rows they came in (sequence numbers: a resend
        # after a crash repeats numbers, a duplicate would not)
        self.delivered_rows: dict[int, list[OutputRow]] = {
            s.index: [] for s in self.spec.sinks}
        # per member: committed peer batches for it, not yet acknowledged
        self.peer_out: dict[int, list[OutputRow]] = {}
        self.reports: list[RecoveryReport] = []
        self.crashes = 0

    # -- lifecycle ---------------------------------------------------------
    def start(self, crash_after_replayed_rows: int | None = None) -> RecoveryReport:
        """(Re)start the worker: open the store, recover, deliver what was
        committed but not delivered.  With ``crash_after_replayed_rows=n``
        the worker dies after replaying n input-log rows (mid-replay)."""
        if self.core is not None:
            raise RuntimeError("already started")
        self.store = (SQLiteStore(self.resilience_dir, self.worker_name,
                                  self.synchronous)
                      if self.resilience_dir else MemoryStore())
        self.core = WorkerCore(self.spec, self.store, clock=self.clock, **self.options)
        if self.event_clock is not None:
            self.core.now_ns = self.event_clock
        on_row = None
        if crash_after_replayed_rows is not None:
            seen = [0]

            def on_row(row: InputRow) -> None:
                seen[0] += 1
                if seen[0] >= crash_after_replayed_rows:
                    raise SimulatedCrash(f"crash after {seen[0]} replayed rows")
        try:
            report = self.core.recover(on_row)
        except BaseException:
            self.crash()
            raise
        self.reports.append(report)
        self._deliver(report.requeued)
        for row in report.pending:  # read but not processed before a stop
            idx = self.spec.pipeline(row.source).index
            chunk = Chunk(idx, self.core.framers[idx].split_all(row.frames),
                          row.frames, row.stream, row.first_seq,
                          origin=f"pending row {row.id}", pending=row.id)
            if row.consumed:
                chunk = chunk.split(row.consumed, self.core.header_lengths[idx])[1]
            self.pending.append(chunk)
        return report

    def crash(self) -> None:
        """Die like SIGKILL: everything not committed is gone."""
        self.crashes += 1
        self.pending = []
        self.peer_out = {}
        if self.store is not None:
            self.store.close()
        self.store = None
        self.core = None

    def stop(self) -> None:
        """Process what was fed, then commit the delivery positions and
        checkpoint every dirty partition, and close: what ``wallaroo run``
        does on SIGTERM."""
        if self.core is not None:
            self.run_batch()
            while not self.run_batch(force_checkpoint=True).record.is_empty():
                pass
        self.crash()
        self.crashes -= 1

    # -- input ---------------------------------------------------------------
    def feed(self, pipeline: str | int, payloads: list[bytes] | None = None, *,
             frames: bytes | None = None, stream: str | None = None) -> None:
        """Queue messages for ``pipeline``: payloads (framed here with the
        decoder's header format) or raw ``frames`` as a sender writes them.
        ``stream`` makes them a resumable stream's next messages."""
        core = self._core()
        p = self.spec.pipeline(pipeline)
        framer = core.framers[p.index]
        if frames is None:
            fmt = p.source.decoder.length_fmt
            if fmt is None:
                raise ValueError(f"pipeline {p.name!r} has a class-based decoder: "
                                 f"pass frames=, not payloads")
            pack = struct.Struct(fmt).pack
            frames = b"".join(pack(len(x)) + x for x in payloads)
        got = framer.split_all(frames)
        first_seq = None
        if stream is not None:
            first_seq = core.stream_counts.get((p.name, stream), 0) + sum(
                len(c.payloads) for c in self.pending
                if c.source == p.index and c.stream == stream)
        self.pending.append(Chunk(p.index, got, frames, stream, first_seq,
                                  origin=f"driver feed to {p.name!r}"))

    def tick(self) -> None:
        """Queue a clock tick: windows the ingest clock has passed fire
        (what an idle worker does on its own)."""
        self._core()
        self.pending.append(tick_chunk(Chunk))

    # -- the batch cycle ----------------------------------------------------
    def run_batch(self, crash_at: str | None = None,
                  force_checkpoint: bool = False) -> Batch | None:
        """Process everything fed so far as one batch.  ``crash_at``:
        ``"after_compute"`` (computed, never committed) or ``"after_commit"``
        (durable, never released).  Returns the batch, or None if it
        crashed."""
        if crash_at is not None and crash_at not in CRASH_POINTS:
            raise ValueError(f"crash_at must be one of {CRASH_POINTS}")
        core = self._core()
        chunks, self.pending = self.pending, []
        batch = core.process(chunks, force_checkpoint)
        if crash_at == "after_compute":
            self.crash()
            return None
        self.store.commit(batch.record)
        if crash_at == "after_commit":
            self.crash()
            return None
        self._deliver(batch.outputs)
        return batch

    def advance(self, seconds: float) -> None:
        """Move the driver's clock (checkpoints are due by clock time)."""
        self._now += seconds

    # -- observation ---------------------------------------------------------
    def received(self, sink: int = 0) -> bytes:
        """Everything the sink received, resends included, in order."""
        return b"".join(self.delivered[sink])

    def state(self, state_name: str, key: Any = None) -> Any:
        return self._core().state(state_name, key)

    def durable_count(self, pipeline: str, stream: str) -> int:
        return self._core().stream_counts.get((pipeline, stream), 0)

    def _deliver(self, outputs) -> None:
        sinks = len(self.spec.sinks)
        for row in outputs:
            if row.sink >= sinks:  # a peer batch: kept until acknowledged
                self.peer_out.setdefault(row.sink - sinks, []).append(row)
                continue
            self.delivered[row.sink].append(row.data)
            self.delivered_rows[row.sink].append(row)
            self.core.note_delivered(row.sink, row.end_seq)

    def feed_peer(self, sender: str, rows: list[OutputRow]) -> None:
        """Peer batches from worker ``sender`` (committed outbox rows of
        its channel to this worker, in order) arrive."""
        for row in rows:
            self.pending.append(Chunk(
                self._core().peer_source, [row.data], row.data, f"peer:{sender}",
                row.first_seq, origin=f"channel from {sender}",
                key=("peer", sender), connector=PEER))

    def acknowledge(self, member: int, n: int) -> None:
        """Member ``member`` holds this worker's first ``n`` peer batches
        durably."""
        core = self._core()
        core.note_delivered(core.peer_dest(member), n)
        self.peer_out[member] = [r for r in self.peer_out.get(member, [])
                                 if r.end_seq > n]

    # -- live moves (runtime/live_moves.py): one step, one commit each -------
    def switch(self, epoch: int, groups: list[int], giver: str, taker: str,
               crash_before_commit: bool = False) -> int | None:
        """Step 1 of a live move on this worker; returns its marker (None:
        it crashed before the commit)."""
        record, marker = self._core().live_switch(epoch, groups, giver, taker)
        if crash_before_commit:
            self.crash()
            return None
        self.store.commit(record)
        return marker

    def hand_over(self, epoch: int, groups: list[int], taker: str,
                  crash_before_commit: bool = False) -> bool:
        """Step 2 of a live move on its giver (False: it crashed)."""
        record = self._core().live_hand_over(epoch, groups, taker)
        if crash_before_commit:
            self.crash()
            return False
        self.store.commit(record)
        self._deliver(record.outputs)
        return True

    def add_members(self, members: list[str],
                    crash_before_commit: bool = False) -> bool:
        """This worker takes new members (live_members.py; False: it
        crashed before the commit).  Its restarts use them too."""
        self.options["members"] = list(members)
        record = self._core().live_add_members(members)
        if crash_before_commit:
            self.crash()
            return False
        if record is not None:
            self.store.commit(record)
        return True

    def remove_members(self, members: list[str],
                       crash_before_commit: bool = False) -> bool:
        """This worker drops the cluster's last members (live_members.py;
        False: it crashed before the commit, and starts again with every
        member).  Its restarts use ``members`` once it dropped them."""
        record = self._core().live_remove_members(members)
        if crash_before_commit:
            self.crash()
            return False
        self.options["members"] = list(members)
        if record is not None:
            self.store.commit(record)
            self.peer_out = {r: rows for r, rows in self.peer_out.items()
                             if r < len(members)}
        return True

    def peer_count(self, sender: str) -> int:
        """Peer batches from ``sender`` this worker holds durably."""
        return self._core().stream_counts.get(("peer", f"peer:{sender}"), 0)

    def _core(self) -> WorkerCore:
        if self.core is None:
            raise RuntimeError("the driver is not started (call start())")
        return self.core


def split_frames(data: bytes, fmt: str = ">I") -> list[bytes]:
    """Split length-prefixed records (for reading what a sink received)."""
    st = struct.Struct(fmt)
    out, pos = [], 0
    while pos + st.size <= len(data):
        (n,) = st.unpack_from(data, pos)
        start = pos + st.size
        if start + n > len(data):
            break
        out.append(data[start:start + n])
        pos = start + n
    return out


__all__ = ["CRASH_POINTS", "Driver", "OutputRow", "SimulatedCrash", "split_frames"]


class ClusterDriver:
    """Several in-process workers of one application, with the channels
    between them simulated: committed peer batches travel when
    ``exchange()`` is called, from the receiver's durable count on (what a
    channel's HAVE says), and are acknowledged once the receiver committed
    them.  Any worker can crash at any point; the others go on.

        c = ClusterDriver(app, 3, resilience_dir=tmp)
        c.start_all()
        c.feed(0, "alphabet", payloads)
        c.run_until_quiet()
    """

    def __init__(self, app, workers: int | list[str], *, resilience_dir: str,
                 args: list[str] | None = None, **options):
        """``workers``: how many (``initializer``, ``worker-1`` ...), or the
        members' names in the cluster's order (after a shrink)."""
        import os

        from .runtime.rescale import next_names
        self.names = list(workers) if isinstance(workers, (list, tuple)) else \
            next_names(["initializer"], workers - 1)
        self._app, self._args, self._options = app, args, options
        self._dir = os.path.join(resilience_dir, "")
        self.drivers = [Driver(app, args=args, resilience_dir=self._dir,
                               worker_name=name, members=self.names, **options)
                        for name in self.names]
        self.retired: list[Driver] = []  # members that left (shrink)

    def start(self, i: int, **kw) -> RecoveryReport:
        return self.drivers[i].start(**kw)

    def grow(self, count: int = 1, crash_before_commit: tuple[int, ...] = ()
             ) -> list[int]:
        """The running cluster takes ``count`` new members: every live
        worker commits the grown membership (``crash_before_commit``: these
        die instead, and take it when they start again; a worker down
        takes it when it starts), then the new members start with it.
        Nothing moves: ``live_move`` gives them key groups.  Returns the
        new members' indexes."""
        from .runtime.rescale import next_names
        # a name of a member that left is not taken again (as the supervisor)
        taken = self.names + [n for n in self.retired_names() if n not in self.names]
        names = self.names + next_names(taken, count)[len(taken):]
        membership = None
        for i, d in enumerate(self.drivers):
            if d.core is None:
                d.options["members"] = list(names)
                continue
            if d.add_members(names, crash_before_commit=i in crash_before_commit):
                membership = d.core.membership
        if membership is None:
            raise RuntimeError("no worker took the new members")
        first = len(self.drivers)
        for name in names[first:]:
            d = Driver(self._app, args=self._args, resilience_dir=self._dir,
                       worker_name=name, members=list(names), membership=membership,
                       **self._options)
            self.drivers.append(d)
            d.start()
        self.names = list(names)
        return list(range(first, len(names)))

    def shrink(self, count: int = 1, crash_before_commit: tuple[int, ...] = (),
               crash_after_commit: tuple[int, ...] = ()) -> list[str]:
        """The running cluster's last ``count`` members leave, as ``wallaroo
        cluster shrink --live`` makes them (runtime/live_shrink.py): they
        must own no key group (``live_move`` gives theirs away first); once
        nothing is in flight every other worker drops them while they still
        run (``crash_before_commit``: these die instead; a worker down is
        started again with every member, gets what it missed, and is asked
        again; ``crash_after_commit``: these die once they dropped them, and
        start again with the members they dropped them for), then they stop.
        Returns the names that left."""
        names, leaving = self.names[:-count], self.names[-count:]
        self.run_until_quiet()
        for d in self.drivers[len(names):]:
            if any(d.peer_out.values()):
                raise RuntimeError(f"{d.worker_name} still holds peer batches "
                                   f"(a receiver is down): it cannot leave yet")
        for i, d in enumerate(self.drivers[:len(names)]):
            if d.core is not None and d.remove_members(
                    names, crash_before_commit=i in crash_before_commit):
                if i in crash_after_commit:
                    d.crash()
                    d.start()
                continue
            d.start()  # with every member: the leaving ones still run
            self.run_until_quiet()
            d.remove_members(names)
        for d in self.drivers[len(names):]:
            if d.core is not None:
                d.stop()
        self.retired += self.drivers[len(names):]
        del self.drivers[len(names):]
        self.names = list(names)
        return leaving

    def retired_names(self) -> list[str]:
        """The members that left (``shrink``)."""
        return [d.worker_name for d in self.retired]

    def start_all(self) -> None:
        for i in range(len(self.drivers)):
            self.start(i)

    def crash(self, i: int) -> None:
        self.drivers[i].crash()

    def alive(self, i: int) -> bool:
        return self.drivers[i].core is not None

    def feed(self, i: int, pipeline, payloads=None, **kw) -> None:
        self.drivers[i].feed(pipeline, payloads, **kw)

    def run_batch(self, i: int, **kw):
        batch = self.drivers[i].run_batch(**kw)
        if batch is not None:
            self._acknowledge(i)
        return batch

    def _acknowledge(self, receiver: int) -> None:
        """After a commit: tell every sender what the receiver holds."""
        r = self.drivers[receiver]
        for s, d in enumerate(self.drivers):
            if s != receiver and d.core is not None:
                d.acknowledge(receiver, r.peer_count(self.names[s]))

    def exchange(self) -> int:
        """Every live sender sends its unacknowledged peer batches to every
        live receiver, from the receiver's durable count on (a reconnect);
        batches already queued at the receiver are not sent again.  Returns
        how many moved."""
        moved = 0
        for s, sender in enumerate(self.drivers):
            if sender.core is None:
                continue
            for r, receiver in enumerate(self.drivers):
                if r == s or receiver.core is None:
                    continue
                name = self.names[s]
                have = receiver.peer_count(name) + sum(
                    len(c.payloads) for c in receiver.pending
                    if c.stream == f"peer:{name}")
                held = sender.peer_out.get(r, [])
                if held and held[0].first_seq > have:
                    raise AssertionError(
                        f"worker {self.names[r]} holds {have} peer batches of "
                        f"{name}, which no longer holds batches before "
                        f"{held[0].first_seq}: acknowledged batches were lost")
                rows = [row for row in held if row.first_seq >= have]
                if rows:
                    receiver.feed_peer(name, rows)
                    moved += len(rows)
        return moved

    def run_until_quiet(self, limit: int = 100) -> None:
        """Run batches and exchange until no peer batch is in flight."""
        for _ in range(limit):
            for i, d in enumerate(self.drivers):
                if d.core is not None:
                    self.run_batch(i)
            if not self.exchange() and not any(
                    d.pending for d in self.drivers if d.core is not None):
                return
        raise RuntimeError("the cluster did not settle")

    def state_of(self, state_name: str, key=None):
        """The state of a key, on the worker that owns its key group (as
        the first live worker says: after a live move, once settled)."""
        d0 = next(d for d in self.drivers if d.core is not None)
        p = d0.core.placement
        g = p.group_of(d0.spec.state(state_name), key)
        owner = self.drivers[p.owners[g]]
        return owner.state(state_name, key)

    def live_move(self, groups: list[int], giver: int, taker: int,
                  epoch: int | None = None, limit: int = 100) -> int:
        """Move key groups from worker ``giver`` to worker ``taker`` while
        the others go on (runtime/live_moves.py): every other worker
        switches, the giver hands over once it holds what they sent it, the
        taker takes when the hand-over arrives.  Every worker must be up.
        Returns the move's epoch."""
        if epoch is None:
            self.epochs = getattr(self, "epochs", 0) + 1
            epoch = self.epochs
        a, b = self.names[giver], self.names[taker]
        order = sorted((i for i in range(len(self.drivers)) if i != giver),
                       key=lambda i: i != taker)  # the taker first
        markers = {self.names[i]: self.drivers[i].switch(epoch, groups, a, b)
                   for i in order}
        self.finish_move(epoch, groups, giver, taker, markers, limit)
        return epoch

    def finish_move(self, epoch: int, groups: list[int], giver: int, taker: int,
                    markers: dict[str, int], limit: int = 100) -> None:
        """Steps 2 and 3 of a live move whose switches are done."""
        g, t = self.drivers[giver], self.drivers[taker]
        for _ in range(limit):
            if epoch in g.core.given or g.core.live_hand_over_ready(markers):
                break
            self.run_until_quiet()
        else:
            raise RuntimeError(f"move {epoch}: the giver never got its markers")
        if epoch not in g.core.given:
            g.hand_over(epoch, groups, self.names[taker])
        for _ in range(limit):
            if epoch in t.core.taken:
                return
            self.exchange()
            self.run_batch(taker)
            self.run_until_quiet()
        raise RuntimeError(f"move {epoch}: the taker never took it")
