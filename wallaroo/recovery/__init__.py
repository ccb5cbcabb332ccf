"""The durable store and recovery: WAL schema, snapshots, replay records.

Nothing here knows about sockets or trio: the store takes and returns bytes
and records, and can be tested alone against an in-memory model.
"""

from .errors import (CorruptionError, IncompatibleDirectory, StoreError,
                     StoreLocked, UnpicklableState)
from .records import (CommitRecord, InputRow, OutputRow, PartitionRow,
                      Recovered, SnapshotRow)
from .store import MemoryStore, Store

__all__ = [
    "CommitRecord", "CorruptionError", "IncompatibleDirectory", "InputRow",
    "MemoryStore", "OutputRow", "PartitionRow", "Recovered", "SnapshotRow",
    "Store", "StoreError", "StoreLocked", "UnpicklableState",
]
