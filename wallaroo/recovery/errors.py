"""What can go wrong with a resilience directory, named after the condition."""


class StoreError(Exception):
    """Base of the recovery store's errors."""


class StoreLocked(StoreError):
    """Another process holds this worker's database."""


class CorruptionError(StoreError):
    """A snapshot or log record failed its checksum or could not be read.

    The worker refuses to run on it rather than produce wrong output."""


class IncompatibleDirectory(StoreError):
    """The directory holds another application's state, or a different
    partitioning of this one."""


class UnpicklableState(StoreError):
    """A state (or a partition key) cannot be pickled, so it cannot be made
    durable."""


class MissingDatabase(StoreError):
    """A directory that has held a worker's state no longer holds its
    database (deleted, emptied): refused, never taken for a fresh start."""


class RollbackDetected(CorruptionError):
    """The database is behind the worker's last committed position (a
    deleted or damaged ``-wal``, a restored older copy)."""


class DiskFull(StoreError):
    """No room on the resilience directory's file system."""
