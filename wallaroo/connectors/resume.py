"""The resumable-source handshake (DESIGN.md §5), byte for byte.

Client:  ``WALLAROO-RESUME 1 <stream>\\n``  then frames from message n on.
Engine:  ``RESUME <n>\\n``, then ``ACK <n>\\n`` after commits that add to the
stream (cumulative, only when n grows), or ``ERROR <reason>\\n`` and close.
A connection whose first 16 bytes are not the prefix is a plain Wallaroo
connection.
"""

from __future__ import annotations

import re
import time

import trio

PREFIX = b"WALLAROO-RESUME "
VERSION = b"1"
MAX_LINE = len(PREFIX) + len(VERSION) + 1 + 255 + 1
STREAM_NAME = re.compile(rb"[A-Za-z0-9._:-]{1,255}")
PEER_PREFIX = b"peer:"
KAFKA_PREFIX = b"kafka:"


class HandshakeError(Exception):
    """Answered with ``ERROR <reason>\\n`` before closing."""


def could_be_handshake(data: bytes) -> bool:
    """True while the bytes so far agree with the prefix (fewer than 16)."""
    return PREFIX.startswith(data[:len(PREFIX)])


def parse_handshake(line: bytes) -> str:
    """``line`` is everything up to (not including) the newline."""
    rest = line[len(PREFIX):]
    version, sep, name = rest.partition(b" ")
    if version != VERSION:
        raise HandshakeError(f"unsupported version {version.decode('ascii', 'replace')!r}; "
                             f"this engine speaks version 1")
    if not sep or not STREAM_NAME.fullmatch(name):
        raise HandshakeError("bad stream name: 1-255 characters of A-Za-z0-9._:-")
    if name.startswith(PEER_PREFIX):
        raise HandshakeError("stream names starting with 'peer:' are reserved "
                             "for the channels between workers")
    if name.startswith(KAFKA_PREFIX):
        raise HandshakeError("stream names starting with 'kafka:' are reserved "
                             "for the partitions of Kafka sources")
    return name.decode("ascii")


def resume_line(n: int) -> bytes:
    return b"RESUME %d\n" % n


def ack_line(n: int) -> bytes:
    return b"ACK %d\n" % n


def error_line(reason: str) -> bytes:
    return b"ERROR " + reason.replace("\n", " ").encode("utf-8", "replace") + b"\n"


class StreamState:
    __slots__ = ("accepted", "durable", "conn", "last_seen")

    def __init__(self, count: int, last_seen: float | None = None):
        self.accepted = count  # handed to the engine
        self.durable = count  # committed
        self.conn = None  # the live connection, if any
        self.last_seen = time.time() if last_seen is None else last_seen


class StreamRegistry:
    """Counts per (source, stream), the live connection of each stream, and
    the wait a new handshake makes for its predecessor's commits."""

    def __init__(self, recovered: dict[tuple[str, str], int],
                 seen: dict[tuple[str, str], float] | None = None):
        seen = seen or {}
        self.streams: dict[tuple[str, str], StreamState] = {
            k: StreamState(n, seen.get(k) or None) for k, n in recovered.items()}
        self._committed = trio.Event()

    def get(self, key: tuple[str, str]) -> StreamState:
        st = self.streams.get(key)
        if st is None:
            st = self.streams[key] = StreamState(0)
        return st

    async def claim(self, key: tuple[str, str], conn) -> int:
        """Make ``conn`` the stream's live connection: close the old one,
        wait until everything it delivered is committed, and return the
        count to answer RESUME with."""
        st = self.get(key)
        st.last_seen = time.time()
        old = st.conn
        st.conn = conn
        if old is not None and old is not conn:
            old.supersede()  # it gets "ERROR superseded" before its close
            await old.closed.wait()
        while st.durable < st.accepted:
            await self._committed.wait()
        return st.durable

    def release(self, key: tuple[str, str], conn) -> None:
        st = self.streams.get(key)
        if st is not None and st.conn is conn:
            st.conn = None

    def idle(self, older_than: float) -> list[tuple[str, str]]:
        """Clients' streams nobody is connected to, with nothing in
        flight, whose count last changed before ``older_than`` (unix time).
        Channels from other workers and Kafka partitions are never
        forgotten: their counts are what makes each peer batch and each
        record count once, however long they are idle."""
        return [k for k, st in self.streams.items()
                if st.conn is None and st.accepted == st.durable
                and st.last_seen < older_than and k[0] != "peer"
                and not k[1].startswith("kafka:")]

    def forget(self, keys: list[tuple[str, str]]) -> None:
        for k in keys:
            st = self.streams.get(k)
            if st is not None and st.conn is None:
                del self.streams[k]

    def committed(self, counts: dict[tuple[str, str], int]) -> None:
        now = time.time()
        for key, n in counts.items():
            st = self.get(key)
            st.last_seen = now
            if n > st.durable:
                st.durable = n
                if st.conn is not None:
                    st.conn.ack(n)
        self._committed.set()
        self._committed = trio.Event()
