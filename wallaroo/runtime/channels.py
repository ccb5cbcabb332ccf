"""Messages between workers, as the engine stores and replays them
(DESIGN.md §6 "Channels between workers").

During a batch, a message that reaches a state step whose key group another
worker owns is set aside for that worker with its key, by that step.
At the end of the batch what each peer gets is serialized **once**, as one
*peer batch*: an 8-byte header (messages, bytes) and the serialized list.
It is one outbox row of the sender's commit (sent after it), and one input
row of the receiver's log (``connector`` ``peer``), where it is processed
from the routed step on.  Channel positions count peer batches.

Serialization: the application module's ``serialize(obj)`` /
``deserialize(bs)`` when it defines both (Wallaroo's inter-worker contract),
per message; otherwise the batch is pickled (protocol 5), with cloudpickle
when plain pickle cannot.  A message that cannot be serialized costs that
message only: it is counted and logged naming the step, the key and its type
(DESIGN.md §4.6).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, Callable

import cloudpickle

HEADER = struct.Struct(">II")  # messages in the batch, bytes of the blob


class Unserializable(Exception):
    """One message could not be serialized."""


class PeerCodec:
    """Peer batches: groups of (pipeline, step, keys, messages), the keys
    computed by the sender's state step (the owner does not compute them
    again).  The blob's first byte says how it was made: ``G`` pickled,
    ``A`` messages by the application's ``serialize()`` (keys pickled)."""

    def __init__(self, serializer: tuple[Callable, Callable] | None = None):
        self.serializer = serializer

    def encode(self, groups: list[tuple[int, int, list, list]],
               on_failure: Callable[[tuple[int, int, Any], BaseException], None]
               ) -> bytes | None:
        """One peer batch (header included); messages that cannot be
        serialized are reported to ``on_failure`` and left out.  None if
        none is left."""
        if self.serializer is not None:
            groups = self._by_application(groups, on_failure)
            kind = b"A"
        else:
            kind = b"G"
        n = sum(len(g[3]) for g in groups)
        if not n:
            return None
        try:
            blob = kind + pickle.dumps(groups, 5)
        except Exception:
            groups = self._keep_serializable(groups, on_failure)
            n = sum(len(g[3]) for g in groups)
            if not n:
                return None
            try:
                blob = kind + pickle.dumps(groups, 5)
            except Exception:
                blob = kind + cloudpickle.dumps(groups, 5)
        return HEADER.pack(n, len(blob)) + blob

    def _by_application(self, groups, on_failure):
        ser = self.serializer[0]
        out = []
        for p, s, keys, items in groups:
            ks, bs = [], []
            for k, item in zip(keys, items):
                try:
                    b = ser(item)
                    if isinstance(b, str):
                        b = b.encode("utf-8")
                    if not isinstance(b, (bytes, bytearray)):
                        raise TypeError(f"serialize() returned {type(b).__name__}, "
                                        f"not bytes")
                except Exception as e:
                    on_failure((p, s, item), e)
                    continue
                ks.append(k)
                bs.append(bytes(b))
            if bs:
                out.append((p, s, ks, bs))
        return out

    @staticmethod
    def _keep_serializable(groups, on_failure):
        out = []
        for p, s, keys, items in groups:
            ks, its = [], []
            for k, item in zip(keys, items):
                try:
                    pickle.dumps((k, item), 5)
                except Exception:
                    try:
                        cloudpickle.dumps((k, item), 5)
                    except Exception as e:
                        on_failure((p, s, item), e)
                        continue
                ks.append(k)
                its.append(item)
            if its:
                out.append((p, s, ks, its))
        return out

    def decode(self, unit: bytes) -> list[tuple[int, int, list, list]] | "HandOver":
        """The groups of one peer batch (header included), or the
        ``HandOver`` it carries."""
        n, size = HEADER.unpack_from(unit)
        blob = unit[HEADER.size:HEADER.size + size]
        kind, body = blob[:1], blob[1:]
        if kind == HAND_OVER:
            return HandOver(**pickle.loads(body))
        groups = pickle.loads(body)
        if kind == b"A":
            if self.serializer is None:
                raise ValueError("a peer batch serialized by the application's "
                                 "serialize(), which this application does not "
                                 "define")
            de = self.serializer[1]
            groups = [(p, s, ks, [de(b) for b in bs]) for p, s, ks, bs in groups]
        elif kind != b"G":
            raise ValueError(f"a peer batch of unknown kind {kind!r}")
        if sum(len(g[3]) for g in groups) != n:
            raise ValueError(f"a peer batch that says it holds {n} messages")
        return groups


HAND_OVER = b"H"


class HandOver:
    """What a live move's giver sends its taker in one peer batch
    (runtime/live_moves.py): the moving key groups and their partitions as
    (state, pickled key, snapshot blob, pickler, class references); a
    hand-over written before the references were sent has 4-tuples.  It
    counts as one message (it gets one lsn in the taker's log)."""

    __slots__ = ("epoch", "groups", "giver", "partitions")

    def __init__(self, epoch: int, groups: list[int], giver: str,
                 partitions: list[tuple[str, bytes, bytes, str]]):
        self.epoch, self.groups, self.giver = epoch, groups, giver
        self.partitions = partitions

    def encode(self) -> bytes:
        blob = HAND_OVER + pickle.dumps(
            {"epoch": self.epoch, "groups": self.groups, "giver": self.giver,
             "partitions": self.partitions}, 5)
        return HEADER.pack(1, len(blob)) + blob


def messages_in(unit: bytes) -> int:
    return HEADER.unpack_from(unit)[0]


def split_units(frames: bytes) -> list[bytes]:
    """The peer batches (headers included) of a logged input row."""
    out, pos, n = [], 0, len(frames)
    while pos < n:
        if n - pos < HEADER.size:
            raise ValueError(f"{n - pos} trailing bytes are not a peer batch")
        _, size = HEADER.unpack_from(frames, pos)
        end = pos + HEADER.size + size
        if end > n:
            raise ValueError("a peer batch is cut short")
        out.append(frames[pos:end])
        pos = end
    return out


def describe_message(app, pipeline: int, step: int, item: Any) -> str:
    p = app.pipelines[pipeline]
    name = p.steps[step].name if step < len(p.steps) else "the sink"
    return f"step {name!r} of pipeline {p.name!r}, message of type {type(item).__name__}"
