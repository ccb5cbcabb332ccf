"""The interfaces every connector implements, and the one the engine gives
them to queue input (DESIGN.md §7).

A **source** turns what arrives (TCP frames, records of a Kafka partition,
batches from another worker) into messages of the engine's input queue, each
run of them with its own position: a resumable stream's count, a partition's
offset, a peer's sequence number.  It learns after each commit what became
durable (``committed``), so it can acknowledge it; it never acknowledges
anything earlier (DESIGN.md §4.1, §4.2).  The engine logs each run in the
connector's own unit (``connector`` of the input row: frames for TCP,
records for Kafka, serialized batches for peers), so replay never depends on
how the bytes arrived.

A **sink** takes committed output rows (``enqueue``), delivers them, and
reports what is delivered (``on_delivered(sink, n)``: outputs before ``n``),
which the next commit records.  It bounds what waits (``has_room``): when
it is full the engine stops taking its own input.

Both run as trio tasks (``run``/``serve``) started by the worker once
recovery is done (DESIGN.md §4.5); a new connector is a new module, never a
change to the engine loop.
"""

from __future__ import annotations

from typing import Protocol

from ..recovery.records import OutputRow

# The connector kind an input row was logged by (input_log.connector).
TCP = "tcp"
# a clock tick of the 0.6 API's windows: no message, one lsn (runtime/windowing.py)
TICK = "tick"
PEER = "peer"
KAFKA = "kafka"


class InputQueue(Protocol):
    """What the engine gives sources to queue what they read (the worker's
    ``Inbox``): complete messages are accepted once queued; bytes read but
    not yet complete count against the same budget (``reserve``/``hold``/
    ``release``)."""

    async def reserve(self, conn: object) -> None: ...

    def hold(self, conn: object, n: int) -> None: ...

    def release(self, conn: object) -> None: ...

    def put_nowait(self, conn: object, key: object, source: int,
                   payloads: list[bytes], frames: bytes, stream: str | None,
                   first_seq: int | None, origin: str,
                   position: int | None = None) -> None: ...


class Source(Protocol):
    """A source of one pipeline (or of the channels from peers)."""

    async def serve(self) -> None:
        """Accept and read until cancelled, queueing messages in the
        ``InputQueue`` it was given."""


class Sink(Protocol):
    """A sink of one pipeline (or the channel to one peer)."""

    def enqueue(self, row: OutputRow) -> None:
        """A committed row of outputs, in order."""

    def has_room(self) -> bool: ...

    async def wait_room(self) -> None: ...

    async def wait_empty(self) -> None:
        """Until everything enqueued is delivered."""

    @property
    def queued_outputs(self) -> int: ...

    async def run(self) -> None:
        """Deliver until cancelled, reconnecting as needed."""
