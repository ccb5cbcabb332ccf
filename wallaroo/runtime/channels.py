"""Messages between workers, as the engine stores and replays them
(DESIGN.md §6 "Channels between workers").

During a batch, a message that reaches a state step whose key group another
worker owns is set aside for that worker as ``(pipeline, step, message)``.
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
    def __init__(self, serializer: tuple[Callable, Callable] | None = None):
        self.serializer = serializer

    def encode(self, messages: list[tuple[int, int, Any]],
               on_failure: Callable[[tuple[int, int, Any], BaseException], None]
               ) -> bytes | None:
        """One peer batch (header included) of ``messages``; those that
        cannot be serialized are reported to ``on_failure`` and left out.
        None if none is left."""
        if self.serializer is not None:
            ser = self.serializer[0]
            items = []
            for m in messages:
                try:
                    b = ser(m[2])
                    if isinstance(b, str):
                        b = b.encode("utf-8")
                    if not isinstance(b, (bytes, bytearray)):
                        raise TypeError(f"serialize() returned {type(b).__name__}, "
                                        f"not bytes")
                except Exception as e:
                    on_failure(m, e)
                    continue
                items.append((m[0], m[1], bytes(b)))
            if not items:
                return None
            blob = b"A" + pickle.dumps(items, 5)
            return HEADER.pack(len(items), len(blob)) + blob
        try:
            blob = b"P" + pickle.dumps(messages, 5)
        except Exception:
            good = []
            for m in messages:
                try:
                    pickle.dumps(m, 5)
                    good.append(m)
                except Exception:
                    try:
                        cloudpickle.dumps(m, 5)
                        good.append(m)
                    except Exception as e:
                        on_failure(m, e)
            if not good:
                return None
            messages = good
            try:
                blob = b"P" + pickle.dumps(messages, 5)
            except Exception:
                blob = b"P" + cloudpickle.dumps(messages, 5)
        return HEADER.pack(len(messages), len(blob)) + blob

    def decode(self, unit: bytes) -> list[tuple[int, int, Any]]:
        """The messages of one peer batch (header included)."""
        n, size = HEADER.unpack_from(unit)
        blob = unit[HEADER.size:HEADER.size + size]
        kind, body = blob[:1], blob[1:]
        items = pickle.loads(body)
        if kind == b"A":
            if self.serializer is None:
                raise ValueError("a peer batch serialized by the application's "
                                 "serialize(), which this application does not "
                                 "define")
            de = self.serializer[1]
            items = [(p, s, de(b)) for p, s, b in items]
        if len(items) != n:
            raise ValueError(f"a peer batch of {len(items)} messages says {n}")
        return items


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
