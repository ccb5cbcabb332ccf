"""What a resilience directory holds, read without disturbing a running
worker (read-only SQLite connections, no lock taken): per worker, the
partitions with their snapshot positions and sizes, the input-log and outbox
backlog, and the known streams with their durable counts."""

from __future__ import annotations

import glob
import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field


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
    states: dict[str, dict] = field(default_factory=dict)
    input_rows: int = 0
    input_messages: int = 0
    input_bytes: int = 0
    input_lsns: tuple[int, int] | None = None
    outbox: list[dict] = field(default_factory=list)
    streams: list[dict] = field(default_factory=list)


def _connect(path: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT 1 FROM progress").fetchone()
        return conn
    except sqlite3.OperationalError:
        # a WAL database without its -shm file: a plain connection can read
        # it (it may create the -shm file; it writes nothing else)
        return sqlite3.connect(path)


def _lock_status(path: str) -> str:
    try:
        with open(path + ".lock") as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return "no lock file"
    if pid and os.path.exists(f"/proc/{pid}"):
        return f"held by pid {pid} (running)"
    return f"free (last held by pid {pid}, not running)" if pid else "free"


def inspect_db(path: str) -> WorkerInfo:
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
            next_lsn=next_lsn, replay_from=replay_from, lock=_lock_status(path))
        for pid, state, key, created, lsn, size, pickler in conn.execute(
                "SELECT p.pid, p.state, p.key_repr, p.created_lsn, s.lsn, s.size, "
                "s.pickler FROM partitions p LEFT JOIN snapshots s USING (pid) "
                "ORDER BY p.state, p.pid"):
            info.partitions.append(PartitionInfo(pid, state, key, created, lsn, size,
                                                 pickler))
            st = info.states.setdefault(state, {"partitions": 0, "snapshotted": 0,
                                                "snapshot_bytes": 0,
                                                "class": fp.get("states", {}).get(
                                                    state, {}).get("class", "?")})
            st["partitions"] += 1
            if lsn is not None:
                st["snapshotted"] += 1
                st["snapshot_bytes"] += size
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
        info.streams = [{"source": s, "stream": n, "durable": c} for s, n, c in
                        conn.execute("SELECT source, stream, count FROM streams "
                                     "ORDER BY source, stream")]
        return info
    finally:
        conn.close()


def inspect_dir(directory: str, worker: str | None = None) -> list[WorkerInfo]:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} is not a directory")
    pattern = f"{worker}.db" if worker else "*.db"
    paths = sorted(glob.glob(os.path.join(directory, pattern)))
    if not paths:
        raise FileNotFoundError(
            f"no worker database ({pattern}) in {directory}: is it a "
            f"--resilience-dir?")
    return [inspect_db(p) for p in paths]


def to_json(infos: list[WorkerInfo]) -> str:
    return json.dumps([asdict(i) for i in infos], indent=2)
