"""A dict split over many small dicts, so that none of it ever resizes all
at once.

A Python dict resizes by copying every entry into a new table, holding the
interpreter meanwhile: 35-45 ms for one of 700,000 entries here, 0.6 s at
5.6 million.  It resizes when it grows, and also when it only churns (an
insert after many deletes compacts it), so the per-partition bookkeeping
of a worker with a million partitions (which are dirty, their ids, their
snapshots' positions) held the event loop that long every few seconds,
however steady the load.  Split over ``SHARDS`` dicts by the key's hash,
each resize copies 1/``SHARDS`` of the entries.  Keys equal as dict keys
(``1``, ``1.0``, ``True``) hash alike, so they land in the same shard.

Each operation costs a method call more than a dict's (a few hundred
nanoseconds); loops over many keys reach the shards directly
(``shards[hash(key) & MASK]``).  The hot per-message path
(``StateSpace.parts``) stays a plain dict.
"""

from __future__ import annotations

from typing import Any, Iterator

SHARDS = 64
MASK = SHARDS - 1
_MISSING = object()


class ShardedDict:
    __slots__ = ("shards",)

    def __init__(self) -> None:
        # loops over many keys read them directly: shards[hash(key) & MASK]
        self.shards: list[dict] = [{} for _ in range(SHARDS)]

    def __contains__(self, key: Any) -> bool:
        return key in self.shards[hash(key) & MASK]

    def __getitem__(self, key: Any) -> Any:
        return self.shards[hash(key) & MASK][key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.shards[hash(key) & MASK][key] = value

    def __delitem__(self, key: Any) -> None:
        del self.shards[hash(key) & MASK][key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self.shards[hash(key) & MASK].get(key, default)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        shard = self.shards[hash(key) & MASK]
        if default is _MISSING:
            return shard.pop(key)
        return shard.pop(key, default)

    def __len__(self) -> int:
        return sum(map(len, self.shards))

    def __bool__(self) -> bool:
        return any(self.shards)

    def __iter__(self) -> Iterator[Any]:
        for shard in self.shards:
            yield from shard

    def items(self) -> Iterator[tuple[Any, Any]]:
        for shard in self.shards:
            yield from shard.items()

    def clear(self) -> None:
        for shard in self.shards:
            shard.clear()

    def __repr__(self) -> str:
        return f"ShardedDict({dict(self.items())!r})"
