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
