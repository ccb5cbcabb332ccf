"""What a resilience directory holds, read without disturbing a running
worker (read-only SQLite connections, no lock taken): per worker, the
partitions with their snapshot positions and sizes, the input-log and outbox
backlog, and the known streams with their durable counts."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field

from . import sink_identities
from .errors import CorruptionError, StoreError
from .files import POSITION_SUFFIX, PositionFile, holder_status, worker_names


@dataclass
class PartitionInfo:
    pid: int
    state: str
    key: str
    created_lsn: int
    snapshot_lsn: int | None
    snapshot_bytes: int | None
    pickler: str | None


@dataclass
class WorkerInfo:
    worker: str
    path: str
    file_bytes: int
    schema_version: int
    application: str
    created_at: str
    commits: int
    next_lsn: int
    replay_from: int
    lock: str
    partitions: list[PartitionInfo] = field(default_factory=list)
    partitions_total: int = 0  # partitions listed or not
    states: dict[str, dict] = field(default_factory=dict)
    input_rows: int = 0
    input_messages: int = 0
    input_bytes: int = 0
    input_lsns: tuple[int, int] | None = None
    outbox: list[dict] = field(default_factory=list)
    streams: list[dict] = field(default_factory=list)
    pending_rows: int = 0
    pending_messages: int = 0  # read before a stop, not yet processed
    position: str = ""  # the position file against the database
    # the cluster it belongs to (None: recorded before clusters existed)
    members: list[str] | None = None
    # set once the worker left its cluster in a rescale: {"plan", "at"}
    retired: dict | None = None


def _connect(path: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT 1 FROM progress").fetchone()
        return conn
    except sqlite3.OperationalError:
        # a WAL database without its -shm file: a plain connection can read
        # it (it may create the -shm file; it writes nothing else)
        return sqlite3.connect(path)


def inspect_db(path: str, limit: int | None = None) -> WorkerInfo:
    """What ``wallaroo recovery inspect`` shows of one database; at most
    ``limit`` partitions are listed (``partitions_total`` counts them all)."""
    conn = _connect(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        fp = json.loads(meta.get("fingerprint", "{}"))
        next_lsn, replay_from, commits = conn.execute(
            "SELECT next_lsn, replay_from, commits FROM progress").fetchone()
        info = WorkerInfo(
            worker=meta.get("worker", os.path.basename(path)[:-3]), path=path,
            file_bytes=sum(os.path.getsize(p) for p in (path, path + "-wal")
                           if os.path.exists(p)),
            schema_version=conn.execute("PRAGMA user_version").fetchone()[0],
            application=fp.get("application", "?"),
            created_at=meta.get("created_at", "?"), commits=commits,
            next_lsn=next_lsn, replay_from=replay_from, lock=holder_status(path),
            position=_position_status(path, commits))
        if "membership" in meta:
            info.members = json.loads(meta["membership"]).get("members")
        if "retired" in meta:
            info.retired = json.loads(meta["retired"])
        classes = fp.get("states", {})
        # per state, counted by SQLite (millions of partitions are not read
        # into Python); the partitions listed, up to ``limit``
        for state, n, snapped, snap_bytes in conn.execute(
                "SELECT p.state, count(*), count(s.lsn), coalesce(sum(s.size), 0) "
                "FROM partitions p LEFT JOIN snapshots s USING (pid) "
                "GROUP BY p.state ORDER BY p.state"):
            info.states[state] = {"partitions": n, "snapshotted": snapped,
                                  "snapshot_bytes": snap_bytes,
                                  "class": classes.get(state, {}).get("class", "?")}
        info.partitions_total = sum(st["partitions"] for st in info.states.values())
        for pid, state, key, created, lsn, size, pickler in conn.execute(
                "SELECT p.pid, p.state, p.key_repr, p.created_lsn, s.lsn, s.size, "
                "s.pickler FROM partitions p LEFT JOIN snapshots s USING (pid) "
                "ORDER BY p.state, p.pid" + ("" if limit is None else " LIMIT ?"),
                () if limit is None else (limit,)):
            info.partitions.append(PartitionInfo(pid, state, key, created, lsn, size,
                                                 pickler))
        rows, msgs, size, lo, hi = conn.execute(
            "SELECT count(*), coalesce(sum(count), 0), coalesce(sum(size), 0), "
            "min(first_lsn), max(first_lsn + count) FROM input_log").fetchone()
        info.input_rows, info.input_messages, info.input_bytes = rows, msgs, size
        info.input_lsns = (lo, hi - 1) if rows else None
        delivered = dict(conn.execute("SELECT sink, delivered FROM sinks"))
        next_seq = dict(conn.execute("SELECT sink, next_seq FROM sinks"))
        for sink, rows, outs, size in conn.execute(
                "SELECT sink, count(*), sum(count), sum(size) FROM outbox GROUP BY sink"):
            info.outbox.append({"sink": sink, "rows": rows, "outputs": outs,
                                "bytes": size, "delivered": delivered.get(sink, 0),
                                "next_seq": next_seq.get(sink, 0)})
        for sink in sorted(set(next_seq) - {o["sink"] for o in info.outbox}):
            info.outbox.append({"sink": sink, "rows": 0, "outputs": 0, "bytes": 0,
                                "delivered": delivered.get(sink, 0),
                                "next_seq": next_seq.get(sink, 0)})
        info.outbox.sort(key=lambda o: o["sink"])
        _name_destinations(conn, info)
        v2 = info.schema_version >= 2
        seen = "last_seen" if v2 else "NULL"
        info.streams = [{"source": s, "stream": n, "durable": c, "last_seen": t}
                        for s, n, c, t in conn.execute(
                            f"SELECT source, stream, count, {seen} FROM streams "
                            f"ORDER BY source, stream")]
        if v2:
            info.pending_rows, info.pending_messages = conn.execute(
                "SELECT count(*), coalesce(sum(count - consumed), 0) "
                "FROM pending_input").fetchone()
        return info
    finally:
        conn.close()


def _name_destinations(conn: sqlite3.Connection, info: WorkerInfo) -> None:
    """Each outbox entry's ``name`` (a sink of a pipeline, or the channel
    to a worker) and ``kind``: ``sink``, ``channel``, or ``held``, the
    worker's own channel destination, which no channel sends: its rows are
    messages a live move's taker holds until the hand-over arrives
    (runtime/live_moves.py), not outputs waiting for delivery."""
    try:
        idents = sink_identities.read(conn, info.path)
    except (sqlite3.Error, StoreError):  # before identities, or damaged
        idents = {}
    own = tuple(sink_identities.peer_identity(info.worker))
    for o in info.outbox:
        ident = idents.get(o["sink"])
        o["name"] = sink_identities.describe(ident, o["sink"])
        if ident is None or not ident[0].startswith(sink_identities.PEER_PREFIX):
            o["kind"] = "sink"
        elif ident == own:
            o["kind"] = "held"
            o["name"] = "messages held for a live move's hand-over"
        else:
            o["kind"] = "channel"


def undelivered(info: WorkerInfo) -> int:
    """Outputs and peer batches still to deliver (not the messages a live
    move's taker holds)."""
    return sum(max(0, o["next_seq"] - o["delivered"]) for o in info.outbox
               if o.get("kind") != "held")


def _position_status(path: str, commits: int) -> str:
    try:
        pos = PositionFile(path).read()
    except CorruptionError as e:
        return f"DAMAGED: {e}"
    if pos is None:
        return f"no {os.path.basename(path)}{POSITION_SUFFIX} (made before it existed)"
    if pos.commits > commits:
        return (f"BEHIND: the database holds {commits} commits, the worker "
                f"made {pos.commits} (the next start refuses it)")
    return f"ok (commit {pos.commits})"


def inspect_dir(directory: str, worker: str | None = None,
                limit: int | None = None) -> list[WorkerInfo]:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} is not a directory")
    pattern = f"{worker}.db" if worker else "*.db"
    paths = [p for p in (os.path.join(directory, f"{n}.db")
                         for n in ([worker] if worker else worker_names(directory)))
             if os.path.isfile(p)]
    if not paths:
        raise FileNotFoundError(
            f"no worker database ({pattern}) in {directory}: is it a "
            f"--resilience-dir?")
    return [inspect_db(p, limit) for p in paths]


def to_json(infos: list[WorkerInfo]) -> str:
    return json.dumps([asdict(i) for i in infos], indent=2)
