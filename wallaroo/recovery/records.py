"""The records a worker commits and recovers.

Every message has an lsn: its place in the worker's processing order.  A row
covers a run of them: one row per stream per batch for inputs, one row per
sink per batch for outputs, so the store's cost follows bytes, not messages.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field


def checksum(data: bytes, head: str) -> int:
    """CRC32 over a row's bytes and ``head``, the row's other fields that
    recovery depends on (positions, counts, names, failed indices): a
    flipped bit anywhere in them is detected."""
    return zlib.crc32(data, zlib.crc32(head.encode("utf-8", "surrogatepass")))


def sinks_checksum(sink: int, next_seq: int, delivered: int, base: int = 0) -> int:
    """A ``sinks`` row's checksum (``base`` counts only when set, so rows of
    schema 2 keep theirs)."""
    if base:
        return control_checksum("sinks", sink, next_seq, delivered, base)
    return control_checksum("sinks", sink, next_seq, delivered)


def control_checksum(table: str, *fields) -> int:
    """CRC32 over a control row's fields (counts, positions, lsns: values
    recovery trusts) and its table's name, so a row cannot pass as another
    table's either."""
    return checksum(b"", "\x1f".join([table, *map(repr, fields)]))


@dataclass(slots=True)
class InputRow:
    """A run of ``count`` messages from one stream, frames as received
    (headers included), processed as lsns ``first_lsn ..``."""

    first_lsn: int
    source: str  # pipeline name
    stream: str | None  # resumable stream name; None for a plain connection
    first_seq: int | None  # the stream's count before this row
    count: int
    frames: bytes
    failed: tuple[int, ...] = ()  # indices of frames a user function failed on
    # how the bytes arrived: "tcp" (frames of a pipeline's source), "peer"
    # (peer batches from the worker named by ``source``), "kafka"
    connector: str = "tcp"
    # when the worker took the row in (ns since the epoch; 0: not recorded,
    # as in applications without windows): the event time of its messages
    # and the watermark of the windows they reach (the 0.6 API)
    ingest_ns: int = 0

    @property
    def end_lsn(self) -> int:
        return self.first_lsn + self.count

    def checksum(self) -> int:
        head = (f"{self.first_lsn}\x1f{self.count}\x1f{self.source!r}\x1f"
                f"{self.stream!r}\x1f{self.first_seq}\x1f{self.failed}")
        if self.connector != "tcp":
            head += f"\x1f{self.connector}"
        if self.ingest_ns:
            head += f"\x1ft{self.ingest_ns}"
        return checksum(self.frames, head)


@dataclass(slots=True)
class OutputRow:
    """``count`` encoded outputs for one sink, numbered ``first_seq ..``.

    ``data`` holds them one after another.  ``framed`` rows (a resumable
    sink's) hold each output behind a 4-byte big-endian length, the
    protocol's frame (DESIGN.md §5), so they are sent as they are and can be
    resent from any output.  A plain sink's rows are sent whole and never
    split, so they do not record where each output ends (that costs a
    length per output); a row of one output is splittable anyway."""

    sink: int
    first_seq: int
    count: int
    data: bytes
    framed: bool = False

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count

    @property
    def splittable(self) -> bool:
        return self.framed or self.count == 1

    def checksum(self) -> int:
        head = f"{self.sink}\x1f{self.first_seq}\x1f{self.count}"
        if self.framed:
            head += "\x1fframed"
        return checksum(self.data, head)

    def output_lengths(self) -> list[int]:
        """The length of each output (of a splittable row)."""
        if self.framed:
            out, pos, data = [], 0, self.data
            for _ in range(self.count):
                (n,) = _FRAME.unpack_from(data, pos)
                out.append(n)
                pos += 4 + n
            return out
        if self.count == 1:
            return [len(self.data)]
        raise ValueError("the row does not record its outputs' lengths")

    def frames_from(self, k: int) -> bytes:
        """Outputs ``k..`` of the row (0-based in the row) as protocol
        frames: a 4-byte big-endian length, then the output."""
        if self.framed:
            return self.data[self._framed_offset(k):]
        lens = self.output_lengths()
        pos = sum(lens[:k])
        data = self.data
        parts = []
        for n in lens[k:]:
            parts.append(_FRAME.pack(n))
            parts.append(data[pos:pos + n])
            pos += n
        return b"".join(parts)

    def raw_from(self, k: int) -> bytes:
        """Outputs ``k..`` of the row as the encoder made them."""
        if not self.framed:
            if k == 0:
                return self.data
            return self.data[sum(self.output_lengths()[:k]):]
        data, pos, parts = self.data, self._framed_offset(k), []
        while pos < len(data):
            (n,) = _FRAME.unpack_from(data, pos)
            parts.append(data[pos + 4:pos + 4 + n])
            pos += 4 + n
        return b"".join(parts)

    def _framed_offset(self, k: int) -> int:
        pos, data = 0, self.data
        for _ in range(k):
            (n,) = _FRAME.unpack_from(data, pos)
            pos += 4 + n
        return pos


_FRAME = struct.Struct(">I")




@dataclass(slots=True)
class PartitionRow:
    pid: int
    state: str
    key: bytes  # pickled once, when the partition is created
    key_repr: str
    created_lsn: int
    key_group: int = -1  # -1: written before key groups were stored
    # the key's stable hash (placement.stable_hash), how a worker finds the
    # partition without reading them all; None: written before schema 5
    key_hash: int | None = None

    def checksum(self) -> int:
        return partition_checksum(self.pid, self.state, self.created_lsn,
                                  self.key_group, self.key_hash, self.key)


def partition_checksum(pid: int, state: str, created_lsn: int, key_group: int,
                       key_hash: int | None, key: bytes) -> int:
    """A ``partitions`` row's checksum (``PartitionRow.checksum``), from its
    columns (a rescale's take computes it in SQL)."""
    head = f"{pid}\x1f{state!r}\x1f{created_lsn}"
    if key_group >= 0:
        head += f"\x1fg{key_group}"
    if key_hash is not None:
        head += f"\x1fh{key_hash}"
    return checksum(key, head)


@dataclass(slots=True)
class SnapshotRow:
    """A partition's pickled state after absorbing every input up to ``lsn``."""

    pid: int
    lsn: int
    blob: bytes
    pickler: str = "pickle"
    # the classes and functions loading it needs (snapshots.dumps_state),
    # checked before a restarting worker is ready; () when unknown
    classes: tuple = field(default=(), compare=False)

    def checksum(self) -> int:
        return checksum(self.blob, snapshot_head(self.pid, self.lsn, self.pickler))


def snapshot_head(pid: int, lsn: int, pickler: str) -> str:
    """What a snapshot's checksum covers besides its bytes."""
    return f"{pid}\x1f{lsn}\x1f{pickler!r}"


@dataclass(slots=True)
class PendingRow:
    """Messages read from a connection but not processed when the worker
    stopped: durable (their senders may have been told so), processed first
    at the next start.  ``consumed`` of them have been processed since."""

    id: int
    source: str  # pipeline name
    stream: str | None
    first_seq: int | None
    count: int
    frames: bytes
    consumed: int = 0

    def checksum(self) -> int:
        return checksum(self.frames, f"{self.id}\x1f{self.source!r}\x1f"
                        f"{self.stream!r}\x1f{self.first_seq}\x1f{self.count}")

    def consumed_checksum(self) -> int:
        return control_checksum("pending_input.consumed", self.id, self.consumed)


@dataclass(slots=True)
class CommitRecord:
    """Everything one batch makes durable, in one transaction."""

    # the core numbers its records 1, 2, ...; a store's ``landed`` is the
    # number of the last one committed (evicted partitions wait for it)
    number: int = 0

    inputs: list[InputRow] = field(default_factory=list)
    outputs: list[OutputRow] = field(default_factory=list)
    partitions: list[PartitionRow] = field(default_factory=list)
    snapshots: list[SnapshotRow] = field(default_factory=list)
    # (source, stream) -> messages of that stream durable after this commit
    streams: dict[tuple[str, str], int] = field(default_factory=dict)
    # sink -> outputs delivered (written to the receiver) so far
    delivered: dict[int, int] = field(default_factory=dict)
    # sink -> next output sequence number after this commit
    next_out_seq: dict[int, int] = field(default_factory=dict)
    next_lsn: int = 0
    # the lowest lsn replay must start at if the worker dies after this commit
    replay_from: int = 0
    # when not None: the whole pending-input table after this commit (what
    # the worker read but did not process before it stopped)
    pending: list[PendingRow] | None = None
    # pending row id -> how many of its messages are processed (a row whose
    # messages are all processed goes)
    pending_consumed: dict[int, int] = field(default_factory=dict)
    # streams to forget (not seen for --forget-streams-after)
    forget_streams: list[tuple[str, str]] = field(default_factory=list)
    # sink -> its resumable stream's base: the receiver's output n is this
    # sink's output n + base (non-zero once a receiver lost what it held)
    sink_bases: dict[int, int] = field(default_factory=dict)
    # ``meta`` rows this commit writes (key -> text): the membership and the
    # state of live moves (runtime/live_moves.py)
    meta: dict[str, str] = field(default_factory=dict)
    # partitions (pids) this commit deletes, with their snapshots: those a
    # live move handed to another worker
    deleted: list[int] = field(default_factory=list)
    # destinations added after the application's (a member that joined a
    # running cluster: the channel to it), as identities (pipeline,
    # position), appended in order; ``fingerprint``: the application's
    # fingerprint with them, saved with them
    new_destinations: list[tuple[str, int]] = field(default_factory=list)
    fingerprint: dict | None = None
    # destinations removed from the end (members that left a running
    # cluster, their channels drained: live_members.py); ``fingerprint``
    # without them, saved with it.  Their ids stay in sink_identities.
    dropped_destinations: int = 0

    def is_empty(self) -> bool:
        return not (self.inputs or self.outputs or self.partitions
                    or self.snapshots or self.streams or self.delivered
                    or self.pending is not None or self.pending_consumed
                    or self.forget_streams or self.sink_bases or self.meta
                    or self.deleted or self.new_destinations
                    or self.dropped_destinations)


@dataclass
class Recovered:
    """What a store holds when a worker starts."""

    fresh: bool = True
    next_lsn: int = 0
    replay_from: int = 0
    # partitions the store holds (loaded one by one as a worker needs them)
    partitions_on_disk: int = 0
    # the pid of the next new partition (pids are never used twice)
    next_pid: int = field(default=0, compare=False)
    # the worker left its cluster in a rescale (moves.py: meta "retired")
    retired: bool = field(default=False, compare=False)
    streams: dict[tuple[str, str], int] = field(default_factory=dict)
    delivered: dict[int, int] = field(default_factory=dict)
    next_out_seq: dict[int, int] = field(default_factory=dict)
    commits: int = 0
    pending: list[PendingRow] = field(default_factory=list)
    # sink -> undelivered outputs in rows that do not record where each
    # output ends (written before schema 3): they can be sent whole only
    unsplittable: dict[int, int] = field(default_factory=dict, compare=False)
    sink_bases: dict[int, int] = field(default_factory=dict)  # see CommitRecord
    # the cluster this database belongs to, as saved (None: not recorded)
    membership: dict | None = field(default=None, compare=False)
    # the state of live moves (runtime/live_moves.py; None: never moved live)
    live_moves: dict | None = field(default=None, compare=False)
    # (source, stream) -> when its count last changed (unix seconds)
    stream_seen: dict[tuple[str, str], int] = field(default_factory=dict,
                                                    compare=False)


# A batch's outputs for one sink are one outbox row unless they pass this
# size; then they are split over rows of about this size.  One output larger
# than MAX_OUTPUT_BYTES cannot be stored (SQLite's blob limit is 1e9 bytes):
# it is a failure of the message that made it.
MAX_ROW_BYTES = 64 * 1024 * 1024
MAX_OUTPUT_BYTES = 512 * 1024 * 1024
