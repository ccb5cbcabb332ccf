"""The store interface, and the in-memory store used without
``--resilience-dir``."""

from __future__ import annotations

from typing import Iterator, Protocol

from .records import CommitRecord, InputRow, OutputRow, Recovered


class Store(Protocol):
    """A worker's durable log.  All methods block; the runtime calls
    ``commit`` from one thread at a time, in order."""

    durable: bool
    vacuum_pending: bool  # free pages remain to give back: commit when idle

    def open(self, fingerprint: dict, membership: dict | None = None) -> Recovered: ...

    def replay_inputs(self, from_lsn: int) -> Iterator[InputRow]: ...

    def undelivered_outputs(self, delivered: dict[int, int]) -> Iterator[OutputRow]: ...

    def commit(self, record: CommitRecord) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """Keeps nothing: what a worker without ``--resilience-dir`` uses.  The
    runtime still goes through compute -> commit -> release, so a durable
    store plugs in without reshaping it."""

    durable = False
    starts = 1  # nothing is kept: every start is the first
    vacuum_pending = False  # no file to give pages back from

    def __init__(self) -> None:
        self.commits = 0

    def open(self, fingerprint: dict, membership: dict | None = None) -> Recovered:
        return Recovered(fresh=True, membership=membership)

    def replay_inputs(self, from_lsn: int) -> Iterator[InputRow]:
        return iter(())

    def undelivered_outputs(self, delivered: dict[int, int]) -> Iterator[OutputRow]:
        return iter(())

    def commit(self, record: CommitRecord) -> None:
        self.commits += 1

    def close(self) -> None:
        pass
