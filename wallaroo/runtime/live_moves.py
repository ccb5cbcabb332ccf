"""Moving key groups while the rest of the cluster runs: the protocol of
docs/design/live-moves.md, as the steps of one worker's core.

A move ``e`` takes key groups ``G`` from giver ``A`` to taker ``B``.  Each
step is one commit of one worker, and a step asked again (after a crash of
anyone) finds its record and answers the same:

1. **switch** (every worker but ``A``, ``B`` included): from this commit on
   the worker routes ``G``'s messages to ``B``; its *marker* is the count of
   peer batches it had made for ``A`` then (every ``G`` message it sent
   ``A`` is in one of them).  ``B`` sets them aside (*deferred*) until the
   hand-over: each batch's are one peer batch in the outbox of ``B``'s own
   channel destination (which no channel sends), committed with the batch,
   read back at a restart; replay drops them, as it drops messages routed
   to other workers.
2. **hand-over** (``A``, once it holds every other worker's channel up to
   that worker's marker, so every ``G`` message routed to it has been
   applied): one commit deletes ``G``'s partitions, routes ``G`` to ``B``
   and puts them, as snapshots, in a peer batch for ``B`` (its channel
   delivers it exactly once).  Dirty partitions of states downstream of
   the moving ones are snapshotted in the same commit: the messages whose
   effects they hold will never be replayed on ``A``.
3. **take** (``B``, when that batch arrives): in the batch's commit, the
   partitions are installed and snapshotted, the deferred messages applied
   in their order, and ``G`` is ``B``'s from the hand-over's lsn on
   (``since``): replay applies none of ``G``'s messages before it.

Only ``G``'s messages wait, from ``B``'s switch to its take.  What this
module does not do yet: drive the steps in a running cluster (the
coordinator, its control messages) and move resumable streams or Kafka
partitions with their groups; ``wallaroo.testing.ClusterDriver.live_move``
drives them in-process.
"""

from __future__ import annotations

from typing import Any

from ..recovery import checked_meta, ownership, snapshots
from ..recovery.errors import StoreError
from ..recovery.records import CommitRecord, OutputRow, PartitionRow, SnapshotRow
from .channels import HandOver
from .checkpoints import key_repr
from .placement import stable_hash
from .states import StoredState

KEEP_EPOCHS = 64  # moves whose answers a worker remembers (asked again)


class LiveMoveError(StoreError):
    """A step of a live move cannot be taken (the message says why)."""


class LiveMoves:
    """The live-move steps of ``WorkerCore`` (a mixin; runtime/core.py)."""

    def _init_live(self) -> None:
        self.since: dict[int, int] = {}  # group -> lsn it is ours from
        # the move this worker waits for as taker: epoch, groups, giver
        self.deferring: dict | None = None
        # epoch -> {"marker", "groups", "giver", "taker"}: the moves this
        # worker switched for (asked again, it answers the same)
        self.switched: dict[int, dict] = {}
        self.given: list[int] = []  # epochs handed over
        self.taken: list[int] = []  # epochs taken
        self.deferred_units: list[bytes] = []  # peer batches waiting (taker)
        self._meta_pending: dict[str, str] = {}
        self._must_save: dict = {}  # space -> keys this commit snapshots
        # partitions a take keeps as bytes: (space, key, StoredState, row)
        self._taken_stored: list = []

    # -- loading -----------------------------------------------------------
    def _load_live(self, body: dict | None) -> None:
        """The saved state of live moves, applied to the routing before
        replay (which routes by it)."""
        if not body:
            return
        # the route's dict too (route_for): updated in place
        self.since.update({int(g): int(lsn) for g, lsn in body.get("since", {}).items()})
        self.switched = {int(e): m for e, m in body.get("switched", {}).items()}
        self.given = [int(e) for e in body.get("given", [])]
        self.taken = [int(e) for e in body.get("taken", [])]
        self.deferring = body.get("deferring")
        route = self.route
        if route is not None:
            if self.deferring is not None:
                for g in self.deferring["groups"]:
                    route.owners[g] = route.deferred

    def _load_deferred(self) -> None:
        """A taker's deferred messages, from its outbox (after replay)."""
        if self.deferring is None:
            return
        own = self.peer_dest(self.placement.me)
        self.deferred_units = [
            row.data for row in self.store.undelivered_outputs(
                {own: self.delivered.get(own, 0)}) if row.sink == own]

    def _deferred_row(self) -> list[OutputRow]:
        """This batch's deferred messages as one peer batch kept in the
        outbox of the worker's own destination."""
        route = self.route
        groups = route.collect(route.deferred)
        if not groups:
            return []
        unit = self.codec.encode(groups, self._unserializable(self.placement.me))
        if unit is None:
            return []
        self.deferred_units.append(unit)
        dest = self.peer_dest(self.placement.me)
        seq = self.next_out_seq[dest]
        self.next_out_seq[dest] = seq + 1
        return [OutputRow(dest, seq, 1, unit)]

    # -- saving -----------------------------------------------------------
    def _save_live(self) -> None:
        """The membership (with the map of owners) and the state of live
        moves go in the next commit."""
        p = self.placement
        route = self.route
        membership = dict(self.membership)
        # the channels' fingerprint keeps the map of the last rescale
        # (cluster_side.py): live moves change owners one worker at a time
        membership.setdefault("rescale_owners", membership.get("owners"))
        names = []
        for g, o in enumerate(p.owners):
            if o == route.deferred:  # saved as the taker's: this worker
                o = p.me
            names.append(p.members[o])
        membership["owners"] = ownership.encode(names)
        self.membership = membership
        self._meta_pending["membership"] = checked_meta.checked_text(
            "membership", membership)
        body = {"since": {str(g): lsn for g, lsn in self.since.items()},
                "switched": {str(e): self.switched[e]
                             for e in sorted(self.switched)[-KEEP_EPOCHS:]},
                "given": self.given[-KEEP_EPOCHS:],
                "taken": self.taken[-KEEP_EPOCHS:],
                "deferring": self.deferring}
        self._meta_pending[checked_meta.LIVE_MOVES] = checked_meta.checked_text(
            checked_meta.LIVE_MOVES, body)

    def _check_live(self, what: str) -> None:
        if not self.durable:
            raise LiveMoveError(f"worker {self.name!r}: a live move needs "
                                f"--resilience-dir")
        if self.route is None:
            raise LiveMoveError(f"worker {self.name!r}: {what}: one worker "
                                f"alone has no key groups to move")
        if self.timers is not None:
            raise LiveMoveError(f"worker {self.name!r}: {what}: applications "
                                f"with windows cannot move key groups live yet")

    def _member(self, name: str) -> int:
        try:
            return self.placement.members.index(name)
        except ValueError:
            raise LiveMoveError(f"worker {name!r} is not a member of the "
                                f"cluster ({', '.join(self.placement.members)})"
                                ) from None

    def live_status(self) -> dict:
        """What a coordinator needs to start, resume or follow moves."""
        p = self.placement
        # the member list as committed: a grow or shrink applies it between
        # two batches, before its commit lands
        landed = getattr(self.store, "landed", 0) >= self.membership_record
        return {"members_landed": landed,
                "switched": {str(e): m for e, m in self.switched.items()},
                "given": self.given, "taken": self.taken,
                "deferring": self.deferring,
                "waiting": len(self.deferred_units),
                "owners": ownership.encode(p.owner_names()) if p else None,
                "key_groups": p.key_groups if p else 0,
                "members": list(p.members) if p else []}

    # -- 1. switch ----------------------------------------------------------
    def live_switch(self, epoch: int, groups: list[int], giver: str,
                    taker: str) -> tuple[CommitRecord, int]:
        """Step 1 on a worker other than the giver; between batches.
        Returns the commit record (empty when done before) and the
        worker's marker."""
        self._check_live("switch")
        done = self.switched.get(epoch)
        if done is not None:
            if (done["groups"], done["giver"], done["taker"]) != (
                    list(groups), giver, taker):
                raise LiveMoveError(
                    f"worker {self.name!r}: move {epoch} is another move "
                    f"({len(done['groups'])} key groups {done['giver']} -> "
                    f"{done['taker']}): is another `cluster move` running?")
            return self._record(), done["marker"]
        a, b = self._member(giver), self._member(taker)
        if a == b:
            raise LiveMoveError(f"move {epoch}: {giver!r} would give key groups "
                                f"to itself")
        me = self.placement.me
        if me == a:
            raise LiveMoveError(f"worker {self.name!r} is the giver of move "
                                f"{epoch}: it hands over, it does not switch")
        owners = self.route.owners
        wrong = [g for g in groups if owners[g] != a]
        if wrong:
            raise LiveMoveError(
                f"worker {self.name!r}: move {epoch} moves key groups "
                f"{wrong[:5]} from {giver!r}, which does not own them here")
        if me == b:
            if self.deferring is not None:
                raise LiveMoveError(
                    f"worker {self.name!r} already waits for the hand-over of "
                    f"move {self.deferring['epoch']}: one move at a time")
            self.deferring = {"epoch": epoch, "groups": list(groups),
                              "giver": giver}
            to = self.route.deferred
        else:
            to = b
        for g in groups:
            owners[g] = to
        marker = self.next_out_seq[self.peer_dest(a)]
        self.switched[epoch] = {"marker": marker, "groups": list(groups),
                                "giver": giver, "taker": taker}
        self._save_live()
        return self._record(), marker

    # -- 2. hand-over -------------------------------------------------------
    def live_hand_over_ready(self, markers: dict[str, int]) -> bool:
        """Whether this giver holds every other worker's peer batches up to
        its marker (``markers``: worker -> marker)."""
        counts = self.stream_counts
        return all(counts.get(("peer", f"peer:{w}"), 0) >= m
                   for w, m in markers.items() if w != self.name)

    def live_hand_over(self, epoch: int, groups: list[int],
                       taker: str) -> CommitRecord:
        """Step 2 on the giver; between batches, once ready."""
        self._check_live("hand-over")
        if epoch in self.given:
            return self._record()
        b = self._member(taker)
        owners, me = self.route.owners, self.placement.me
        wrong = [g for g in groups if owners[g] != me]
        if wrong:
            raise LiveMoveError(f"worker {self.name!r} cannot hand over key "
                                f"groups {wrong[:5]} of move {epoch}: it does "
                                f"not own them")
        moving = set(groups)
        parts: list[tuple[str, bytes, bytes, str, tuple]] = []
        deleted: list[int] = []
        for space in self.spaces.values():
            for key, pid, stored in self._partitions_in(space, moving):
                if stored is None:  # in memory: its state now
                    blob, pickler, refs = snapshots.dumps_state(
                        space.peek(key), space.describe_key(key),
                        self.app.serializer)
                    kblob = space.key_blobs.get(key) or snapshots.dumps(
                        key, f"partition key {key!r} of state {space.name!r}")[0]
                    parts.append((space.name, kblob, blob, pickler, refs))
                else:  # stored (and clean): its bytes, not loaded
                    parts.append((space.name, *stored))
                if pid is not None:
                    deleted.append(pid)
                self._forget_partition(space, key)
                for down in self.downstream[space.name]:
                    if down.dirty:
                        self._must_save.setdefault(down, set()).update(down.dirty)
        for g in groups:
            owners[g] = b
            self.since.pop(g, None)
        unit = HandOver(epoch, list(groups), self.name, parts).encode()
        dest = self.peer_dest(b)
        seq = self.next_out_seq[dest]
        row = OutputRow(dest, seq, 1, unit)
        self.next_out_seq[dest] = seq + 1
        new_rows, snaps = self._bookkeeping(self.next_lsn, self.next_lsn)
        self.given.append(epoch)
        self._save_live()
        return self._record(outputs=[row], partitions=new_rows, snapshots=snaps,
                            deleted=deleted, next_out_seq={dest: seq + 1})

    def _partitions_in(self, space, moving: set) -> list[tuple[Any, int | None, Any]]:
        """(key, pid, stored) of every partition of ``space`` in the groups
        ``moving``: in memory, leaving it, or in the store.  ``stored``, for
        one that is not in memory: (pickled key, snapshot, pickler, class
        references) as the store holds it, so it moves without being
        loaded; None for one in memory (or stored without a snapshot)."""
        group_of = space.group_of
        found: dict = {}
        pids = space.pids
        for key in space.parts:
            if group_of(key) in moving:
                found[key] = (pids.get(key), None)
        for key, (state, pid, _) in space.leaving.items():
            if key not in found and group_of(key) in moving:
                found[key] = (pid, (state.kblob, state.blob, state.pickler, state.refs)
                              if type(state) is StoredState else None)
        stored_in_groups = getattr(self.store, "stored_in_groups", None)
        if stored_in_groups is not None:
            held = {pid for pid, _ in found.values() if pid is not None}
            for prow, key, snap in stored_in_groups(space.name, sorted(moving),
                                                    held):
                if key not in found:
                    found[key] = (prow.pid, None if snap is None else (
                        prow.key, snap.blob, snap.pickler, snap.classes))
        return [(key, pid, stored) for key, (pid, stored) in found.items()]

    def _forget_partition(self, space, key) -> None:
        self.tracker.clean(space, key)
        space.parts.pop(key, None)
        space.pids.pop(key, None)
        space.snap_lsn.pop(key, None)
        space.key_blobs.pop(key, None)
        space.leaving.pop(key, None)
        space.groups.pop(key, None)
        if space.recent is not None:
            space.recent.pop((space, key), None)
        self._held.pop((space.name, key), None)
        pend = self._save_pending.get(space)
        if pend:
            pend.pop(key, None)

    # -- 3. take -------------------------------------------------------------
    def _take_hand_over(self, h: HandOver) -> None:
        """Step 3 on the taker, inside the batch the hand-over came in."""
        d = self.deferring
        if d is None or d["epoch"] != h.epoch:
            raise LiveMoveError(
                f"worker {self.name!r}: the hand-over of move {h.epoch} from "
                f"{h.giver!r} arrived, but this worker "
                + ("waits for none" if d is None else
                   f"waits for move {d['epoch']}"))
        lsn = self.ctx.base + self.ctx.cell[0]
        for state, kblob, blob, pickler, *refs in h.partitions:
            space = self.spaces[state]
            key = snapshots.loads(kblob)
            if key in space.parts or key in space.leaving \
                    or space.pids.get(key) is not None:
                raise LiveMoveError(
                    f"worker {self.name!r}: move {h.epoch} hands over "
                    f"{space.describe_key(key)}, which this worker holds already")
            if space.recent is not None and space.spec.next_fire is None:
                # a state cache: into the store as it came, not into memory
                # (a window state's partitions all stay in memory)
                self._take_stored(space, key, StoredState(
                    kblob, blob, pickler, refs[0] if refs else None, lsn))
                continue
            space._place(key, snapshots.loads(blob, pickler, self.app.serializer),
                         None)
            space.key_blobs[key] = kblob
            space.touched.add(key)
        route = self.route
        me = self.placement.me
        for g in h.groups:
            route.owners[g] = me
            self.since[g] = lsn
        self.deferring = None
        waiting = [group for unit in self.deferred_units
                   for group in self.codec.decode(unit)]
        waiting += route.collect(route.deferred)  # this batch's, before the unit
        self.deferred_units = []
        own = self.peer_dest(me)
        self.note_delivered(own, self.next_out_seq[own])  # gone with this commit
        for p, s, keys, items in waiting:
            apply = self.entries[p][s][1]
            for key, item in zip(keys, items):
                apply(key, item)
        # what the take did is in its commit's snapshots: replay skips it
        for space in self.spaces.values():
            if space.touched:
                self._must_save.setdefault(space, set()).update(space.touched)
        self.taken.append(h.epoch)
        self._save_live()

    def _take_stored(self, space, key, stored: StoredState) -> None:
        """A handed-over partition kept as bytes until its commit lands
        (``StoredState``); its rows join the take's commit
        (``_stored_rows``)."""
        pid = self.next_pid
        self.next_pid += 1
        h = stable_hash(key)
        row = PartitionRow(pid, space.name, stored.kblob, key_repr(key),
                           stored.lsn, space.group_of(key, h), h)
        space.leaving[key] = (stored, pid, None)
        self._taken_stored.append((space, key, stored, row))

    def _stored_rows(self, number: int, snaps: list[SnapshotRow]) -> list[PartitionRow]:
        """The rows of the partitions a take kept as bytes, for its commit
        (record ``number``): each partition's row, and its snapshot as it
        came unless a message loaded it meanwhile and ``snaps`` holds a
        newer one.  Until the commit lands, ``leaving`` finds them."""
        rows: list[PartitionRow] = []
        newer = {s.pid for s in snaps}
        for space, key, stored, row in self._taken_stored:
            rows.append(row)
            if row.pid in newer:
                continue
            refs = stored.refs
            if refs is None:  # from a giver that did not send them
                refs = (() if stored.pickler == snapshots.APPLICATION
                        else snapshots.pickle_refs(stored.blob))
            snaps.append(SnapshotRow(row.pid, stored.lsn, stored.blob,
                                     stored.pickler, refs))
            entry = space.leaving.get(key)
            if entry is not None and entry[0] is stored:
                space.leaving[key] = (stored, row.pid, number)
                self._leaving.append((number, space, key))
        self._taken_stored = []
        return rows
