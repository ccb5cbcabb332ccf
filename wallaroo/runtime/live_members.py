"""A running cluster taking new members (docs/design/live-moves.md, step
2): every worker commits the grown membership between two batches, and
nothing moves or pauses; key groups then move to the new members by live
moves (live_moves.py), one move at a time, while the rest flows.

What a grown membership keeps, so that adding a member moves nothing by
itself:

- **Key groups**: the map of owners is saved explicitly (a cluster that
  never rescaled had contiguous ranges by member count).
- **Resumable streams and Kafka partitions**: their rules divide by the
  member count before the grow, ``rule_workers`` (a stream map, where a
  rescale saved one, stays as it is).  A new member owns no stream and
  reads no Kafka partition: the connections the supervisor hands it are
  forwarded to their streams' owners, as any worker's are.
- **Members are appended**: every destination id (``peer_dest``) stays.

A worker that missed the commit (it was down) adopts the same membership
when it starts with the longer member list (``grown``: it is computed from
what its database saved, the same on every worker once no live move is
under way); a new member gets it whole from its supervisor, in
``<dir>/membership.json`` (``cluster_side.grown_membership``).
"""

from __future__ import annotations

from ..recovery import checked_meta, ownership
from ..recovery.records import CommitRecord
from ..recovery.sink_identities import peer_identity
from .live_moves import LiveMoveError


def extends(longer, shorter) -> bool:
    """``longer`` is ``shorter`` and more members after them: how a live
    grow changes a member list (and a live shrink, the other way)."""
    return len(longer) > len(shorter) and list(longer[:len(shorter)]) == list(shorter)


def grown(saved: dict, members: list[str], owner_names: list[str]) -> dict:
    """``saved`` with ``members`` (its own, then the new ones), every key
    group with the owner ``owner_names`` gives it, the rules of streams
    and Kafka partitions as they were."""
    old = list(saved["members"])
    if not extends(members, old):
        raise LiveMoveError(
            f"the members {', '.join(members)} do not extend the cluster's "
            f"({', '.join(old)}): members join at the end, in order")
    body = dict(saved)
    body["members"] = list(members)
    body["owners"] = ownership.encode(list(owner_names))
    body.setdefault("rule_workers", len(old))
    return body


def shrunk(saved: dict, members: list[str]) -> dict:
    """``saved`` without its last members, those a live shrink retired:
    they must own no key group, and be members a live grow added (past
    ``rule_workers``: no resumable stream and no Kafka partition is
    theirs), so nothing of anyone's moves and every destination id that
    is left stays."""
    old = list(saved["members"])
    leaving = old[len(members):]
    may_leave(old, members, saved.get("rule_workers", len(old)))
    owners = saved_owner_names(saved)
    held = sorted({o for o in owners if o in leaving})
    if held:
        raise LiveMoveError(
            f"{', '.join(held)} still own key groups: move them away first")
    body = dict(saved)
    body["members"] = list(members)
    body["owners"] = ownership.encode(owners)
    if body.get("addresses") is not None:  # several hosts: theirs go too
        body["addresses"] = {n: a for n, a in body["addresses"].items()
                             if n in members}
    return body


def may_leave(old: list[str], members: list[str], rule_workers: int) -> None:
    """Whether the members of ``old`` not in ``members`` may leave while
    the cluster runs: the last ones, and members a live grow added (past
    ``rule_workers``); raises LiveMoveError saying why not."""
    if not members or not extends(old, members):
        raise LiveMoveError(
            f"the members {', '.join(members)} are not the cluster's "
            f"({', '.join(old)}) less its last ones: only the members that "
            f"joined last leave while the cluster runs")
    if len(members) < rule_workers:
        raise LiveMoveError(
            f"{', '.join(old[len(members):rule_workers])} did not join while the "
            f"cluster ran: resumable streams and Kafka partitions are theirs "
            f"by rule; `wallaroo cluster shrink` without --live takes them away")


def saved_owner_names(saved: dict) -> list[str]:
    """The owner of every key group a saved membership says."""
    if saved.get("owners") is not None:
        return ownership.decode(saved["owners"], saved["key_groups"],
                                saved["members"])
    return ownership.rule_owners(saved["members"], saved["key_groups"])


class LiveMembers:
    """The steps of ``WorkerCore`` (a mixin; runtime/core.py) that grow
    its membership."""

    def live_add_members(self, members: list[str],
                         addresses: dict | None = None) -> CommitRecord | None:
        """Between batches: the cluster's members become ``members`` (the
        current ones, then new ones); ``addresses`` (several hosts): the
        new members' control and data addresses.  Returns the commit
        record (None: done before)."""
        if not self.durable:
            raise LiveMoveError(f"worker {self.name!r}: a cluster grows while "
                                f"it runs only with --resilience-dir")
        if self.timers is not None:
            raise LiveMoveError(f"worker {self.name!r}: applications with "
                                f"windows cannot grow live yet")
        p = self.placement
        known = self.membership.get("addresses")
        if (known is None) != (addresses is None):
            raise LiveMoveError(
                f"worker {self.name!r}: " + ("a cluster over several hosts takes "
                                             "new members with their addresses"
                                             if known is not None else
                                             "a one-host cluster's members have "
                                             "no fixed addresses"))
        if list(members) == p.members:
            clash = {n: a for n, a in (addresses or {}).items()
                     if known.get(n) != a}
            if clash:
                raise LiveMoveError(
                    f"worker {self.name!r}: {', '.join(clash)} joined with "
                    f"other addresses ({', '.join(f'{n}: {known.get(n)}' for n in clash)})")
            return None
        if self.deferring is not None:
            raise LiveMoveError(
                f"worker {self.name!r} waits for the hand-over of move "
                f"{self.deferring['epoch']}: finish it first")
        before = len(p.members)
        if addresses is not None and sorted(addresses) != sorted(members[before:]):
            raise LiveMoveError(
                f"worker {self.name!r}: the addresses given are of "
                f"{', '.join(sorted(addresses)) or 'no one'}, the new members are "
                f"{', '.join(members[before:])}")
        again = [m for m in members[before:] if self.store.had_destination(
            peer_identity(m))]
        if again:  # its channel's old positions would be taken up again
            raise LiveMoveError(
                f"worker {self.name!r} had a channel to {', '.join(again)}, a "
                f"member that left: a member joining while the cluster runs "
                f"takes a name never used in it")
        m = grown(self.membership, members, p.owner_names())
        if addresses is not None:
            m["addresses"] = {**known, **addresses}
        self._use_membership(m)
        record = self._record(
            new_destinations=[tuple(peer_identity(m)) for m in members[before:]],
            fingerprint=self.fingerprint())
        self.membership_record = record.number
        return record

    def live_remove_members(self, members: list[str],
                            leaving: list[str] | None = None) -> CommitRecord | None:
        """Between batches: the cluster's last members, which own nothing
        and whose channels are drained, are gone; ``members`` stay;
        ``leaving``: the members that leave, as the asker knows them (a
        member that joined since is not dropped with them).  Returns the
        commit record (None: done before)."""
        if not self.durable:
            raise LiveMoveError(f"worker {self.name!r}: a cluster shrinks while "
                                f"it runs only with --resilience-dir")
        p = self.placement
        if list(members) == p.members:
            return None
        if leaving is not None and p.members[len(members):] != list(leaving):
            raise LiveMoveError(
                f"worker {self.name!r}: the members after {', '.join(members)} are "
                f"{', '.join(p.members[len(members):])}, not {', '.join(leaving)} "
                f"(did one join meanwhile?)")
        if self.name not in members:
            raise LiveMoveError(f"worker {self.name!r} is one of those leaving")
        if self.deferring is not None:
            raise LiveMoveError(
                f"worker {self.name!r} waits for the hand-over of move "
                f"{self.deferring['epoch']}: finish it first")
        m = shrunk(self.membership, members)
        waiting = [f"{name}: {self.next_out_seq.get(d, 0) - self.delivered.get(d, 0)}"
                   for i, name in enumerate(p.members) if i >= len(members)
                   for d in [self.peer_dest(i)]
                   if self.next_out_seq.get(d, 0) > self.delivered.get(d, 0)]
        if waiting:
            raise LiveMoveError(
                f"worker {self.name!r} still holds peer batches for the leaving "
                f"members ({', '.join(waiting)}): they leave once delivered")
        dropped = len(p.members) - len(members)
        self._use_membership(m)
        record = self._record(dropped_destinations=dropped,
                              fingerprint=self.fingerprint())
        self.membership_record = record.number
        return record

    def _use_membership(self, m: dict, save: bool = True) -> None:
        """Route by membership ``m`` from now on (members appended: every
        destination id stays; the new members' channels start empty);
        ``save``: in the next commit."""
        members = list(m["members"])
        self.proposed_membership["members"] = members
        for d in range(len(self.next_out_seq), self.destinations):
            self.next_out_seq.setdefault(d, 0)
            self.delivered.setdefault(d, 0)
        for d in [d for d in self.next_out_seq if d >= self.destinations]:
            # a member that left: its channel was drained
            for known in (self.next_out_seq, self.delivered, self.sink_bases):
                known.pop(d, None)
        if save:
            self._meta_pending["membership"] = checked_meta.checked_text(
                "membership", m)
        # the routing is compiled again: the counters of each step's
        # messages and of failures go on (metrics.py exports them as counters)
        seen = {(p, st): n for p, st, n in self.step_counts}
        failures = self.failures
        self._settle_membership(m)
        for p, st, n in self.step_counts:
            n[0] = seen.get((p, st), [0])[0]
        self.failures.counts.update(failures.counts)
        self.failures.total = failures.total
