"""Which member owns each key group, as data (DESIGN.md §6 "Placement").

A cluster that never rescaled gives its key groups to its members by
contiguous ranges of the members' order (``rule_owners``), which every
worker computes alike.  A rescale writes the map it moved to into every
database's membership (``"owners"``, run-length encoded), and from then on
that map, not the rule, says where a group lives.  So a rescale moves only
what it has to (``balanced_owners``): a member that joins takes an even
share of the groups from the members that hold the most, and the groups
of a member that leaves go to those holding the fewest; every other group
stays where it is.  With the rule, growing from 2 to 3 workers moved half
of the groups; with the map, a third.

The map is a list of member names, one per key group; ``encode`` and
``decode`` turn it into the ``[[first_group, name], ...]`` runs stored
in the membership and in a rescale's plan.

**Stream slots.**  The count of a resumable stream belongs to a worker
the same way, through a map of ``STREAM_SLOTS`` slots (``"stream_owners"``
in the membership); a stream's slot is a stable hash of its pipeline and
name (``runtime/placement.py``).  A cluster that never rescaled has no
such map and keeps the rule that predates it (member ``hash % n``); its
first rescale starts from ``round_robin``, which is that rule whenever
``n`` divides ``STREAM_SLOTS`` (and close to it otherwise: the streams
move from wherever their counts are).  Kafka partitions keep their rule,
partition ``p`` to member ``p % n``: a topic has few partitions and each
is read by one worker only, so an even spread matters more than moving
few of them, and moving one moves only its offset.
"""

from __future__ import annotations

from collections import Counter


class OwnershipError(ValueError):
    """A stored map of owners that cannot be right (the message says why)."""


def rule_owner(group: int, members: list[str] | tuple[str, ...],
               key_groups: int) -> str:
    """The owner of ``group`` by contiguous ranges in the members' order:
    the map of a cluster that never rescaled."""
    return members[group * len(members) // key_groups]


def rule_owners(members: list[str] | tuple[str, ...], key_groups: int) -> list[str]:
    """``rule_owner`` of every group."""
    return [rule_owner(g, members, key_groups) for g in range(key_groups)]


def shares(members: list[str] | tuple[str, ...], key_groups: int,
           current: Counter) -> dict[str, int]:
    """How many groups each member owns after a rescale: an even split,
    the groups left over going to the members that hold the most now (so
    that the fewest move), ties in the members' order."""
    base, extra = divmod(key_groups, len(members))
    order = sorted(range(len(members)), key=lambda i: (-current[members[i]], i))
    bigger = {members[i] for i in order[:extra]}
    return {m: base + (m in bigger) for m in members}


def balanced_owners(old: list[str], new: list[str] | tuple[str, ...]) -> list[str]:
    """The map after a rescale from the map ``old`` to the members ``new``,
    moving the fewest groups: each member of ``new`` keeps its groups (its
    lowest-numbered ones) up to its share; the groups over a share and
    those of the members that left go, in group order, to the members
    under their share, in the members' order."""
    if not new:
        raise OwnershipError("a cluster needs at least one member")
    current = Counter(old)
    target = shares(new, len(old), current)
    owners: list[str | None] = [None] * len(old)
    kept = Counter()
    pool = []
    for g, owner in enumerate(old):
        if owner in target and kept[owner] < target[owner]:
            owners[g] = owner
            kept[owner] += 1
        else:
            pool.append(g)
    it = iter(pool)
    for m in new:
        for _ in range(target[m] - kept[m]):
            owners[next(it)] = m
    return owners  # type: ignore[return-value]


STREAM_SLOTS = 1024


def round_robin(members: list[str] | tuple[str, ...], slots: int = STREAM_SLOTS
                ) -> list[str]:
    """Slot ``s`` to member ``s % n``: the stream map of a cluster that
    never rescaled, as far as a map can say it."""
    return [members[s % len(members)] for s in range(slots)]


def encode(owners: list[str]) -> list[list]:
    """``[[first_group, name], ...]``: one entry per run of one owner."""
    runs: list[list] = []
    for g, name in enumerate(owners):
        if not runs or runs[-1][1] != name:
            runs.append([g, name])
    return runs


def decode(runs, key_groups: int, members, what: str = "key-group owners"
           ) -> list[str]:
    """The map from its runs, checked: runs start at group 0, in
    increasing order, and name members only.  ``what`` names the map in
    errors (``"stream-slot owners"`` for a map of stream slots)."""
    names = set(members)
    try:
        starts = [int(first) for first, _ in runs]
        owners_of_runs = [str(name) for _, name in runs]
    except (TypeError, ValueError):
        raise OwnershipError(f"the map of {what} is not a list of "
                             f"[first_group, worker] runs: {runs!r:.200}") from None
    if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) \
            or starts[-1] >= key_groups:
        unit = "slots" if "slot" in what else "groups"
        raise OwnershipError(f"the map of {what} does not cover {unit} "
                             f"0..{key_groups - 1} in order: runs start at "
                             f"{starts[:10]}{'...' if len(starts) > 10 else ''}")
    strangers = sorted(set(owners_of_runs) - names)
    if strangers:
        raise OwnershipError(f"the map of {what} names "
                             f"{', '.join(map(repr, strangers))}, which "
                             f"{'is' if len(strangers) == 1 else 'are'} not "
                             f"among the members ({', '.join(members)})")
    owners: list[str] = []
    ends = starts[1:] + [key_groups]
    for start, end, name in zip(starts, ends, owners_of_runs):
        owners.extend([name] * (end - start))
    return owners
