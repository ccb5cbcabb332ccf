"""Where a key's state lives in a cluster (DESIGN.md §6 "Placement").

Every partitioned state's keys fall into a fixed number of key groups (set
at the first start, stored in the database; default 1024).  A declared key's
group comes from its place in the declared list, spread over the groups (26
letters land 39 groups apart, so any number of workers gets its share); an
unpartitioned state (``to_stateful``) is one group; any other key's group
comes from a stable hash of the key.  Groups map to workers by contiguous
ranges of the members' order, which every worker computes alike, until a
rescale saves a map of its own with the membership (recovery/ownership.py).
Resumable streams belong to a worker by their slot (``stream_slot``) in
the same way: by a rule (``hash % n``) until a rescale saves a map of
slots.  Kafka partition ``p`` belongs to member ``p % n``.  Members that
join a running cluster (``runtime/live_members.py``) leave both rules
dividing by the member count before them (``rule_workers``).

The stable hash never uses Python's ``hash()`` of ``str``/``bytes`` (it is
randomised per process).  Keys Python compares equal land in the same group:
``1``, ``1.0`` and ``True`` hash as the integer 1.  Supported key types:
``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None`` and tuples of
them; any other key is hashed by its pickle, which is stable for values whose
pickle is (objects of plain classes with the same attributes), and not for
sets or dicts built in different orders: use one of the supported types.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from typing import Any

from ..recovery.ownership import STREAM_SLOTS, rule_owners

DEFAULT_KEY_GROUPS = 1024


def stable_hash(key: Any) -> int:
    """A 32-bit hash of a key, the same in every process and release."""
    return zlib.crc32(_key_bytes(key))


def stream_slot(pipeline: str, stream: str) -> int:
    """The slot of resumable stream ``stream`` of ``pipeline``."""
    return stable_hash((pipeline, stream)) % STREAM_SLOTS


def _key_bytes(key: Any) -> bytes:
    if key is None:
        return b"N"
    if isinstance(key, bool):
        key = int(key)
    if isinstance(key, float) and key.is_integer():
        key = int(key)
    if isinstance(key, int):
        return b"i" + key.to_bytes((key.bit_length() + 8) // 8 or 1, "big", signed=True)
    if isinstance(key, float):
        return b"f" + struct.pack(">d", key)
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return b"b" + bytes(key)
    if isinstance(key, tuple):
        return b"t" + b"".join(struct.pack(">I", zlib.crc32(_key_bytes(k)))
                               for k in key)
    return b"p" + pickle.dumps(key, 5)


class Placement:
    """Key groups and their owners, from the membership (an ordered list of
    worker names), the number of key groups and, once the cluster has
    rescaled, the map of owners saved with the membership
    (``recovery/ownership.py``); without one, contiguous ranges."""

    def __init__(self, members: list[str], me: str,
                 key_groups: int = DEFAULT_KEY_GROUPS,
                 owners: list[str] | None = None,
                 stream_owners: list[str] | None = None,
                 rule_workers: int | None = None):
        """``rule_workers``: the member count the rules for resumable streams
        (without a map) and Kafka partitions divide by, when members joined
        a running cluster (live_members.py): they keep what they had, and
        a member beyond it reads no Kafka partition (None: every member)."""
        if me not in members:
            raise ValueError(f"worker {me!r} is not a member of {members}")
        self.members = list(members)
        self.me = self.members.index(me)
        self.name = me
        self.key_groups = key_groups
        if owners is None:  # contiguous ranges in the members' order
            owners = rule_owners(self.members, key_groups)
        elif len(owners) != key_groups:
            raise ValueError(f"a map of {len(owners)} key-group owners for "
                             f"{key_groups} key groups")
        index = {m: i for i, m in enumerate(self.members)}
        self.owners = [index[o] for o in owners]  # group -> member index
        if stream_owners is not None and len(stream_owners) != STREAM_SLOTS:
            raise ValueError(f"a map of {len(stream_owners)} stream-slot owners "
                             f"for {STREAM_SLOTS} slots")
        # slot -> member index; None: the rule (hash % n, partition % n)
        self.stream_owners = None if stream_owners is None else [
            index[o] for o in stream_owners]
        self.rule_workers = rule_workers or len(self.members)
        self._declared: dict[str, dict] = {}  # state -> {declared key: index}

    @property
    def size(self) -> int:
        return len(self.members)

    def group_of(self, state, key: Any, key_hash: int | None = None) -> int:
        """The key group of ``key`` of state ``state`` (a StateSpec);
        ``key_hash``: its ``stable_hash`` when the caller has it."""
        if state.partitioning == "single":
            return stable_hash(("state", state.name)) % self.key_groups
        declared = self._declared.get(state.name)
        if declared is None:
            declared = self._declared[state.name] = {}
            for i, k in enumerate(state.keys):
                try:
                    declared.setdefault(k, i)
                except TypeError:  # an unhashable declared key: by hash
                    pass
        try:
            i = declared.get(key)
        except TypeError:
            i = None
        if i is not None:
            return i * self.key_groups // max(1, len(state.keys))
        return (stable_hash(key) if key_hash is None else key_hash) % self.key_groups

    def owner_of_stream(self, pipeline: str, stream: str) -> int:
        """The member that owns a resumable stream (its RESUME and ACKs
        come from that worker's log)."""
        if self.stream_owners is not None:
            return self.stream_owners[stream_slot(pipeline, stream)]
        return stable_hash((pipeline, stream)) % self.rule_workers

    def stream_owner_names(self) -> list[str] | None:
        """The owner of every stream slot by name; None: the rule."""
        if self.stream_owners is None:
            return None
        return [self.members[o] for o in self.stream_owners]

    def owner_names(self) -> list[str]:
        """The owner of every key group, by name (a group this worker
        waits to take in a live move: this worker's)."""
        n = len(self.members)
        return [self.members[o] if o < n else self.name for o in self.owners]

    def groups_of(self, member: int) -> list[int]:
        return [g for g, o in enumerate(self.owners) if o == member]
