"""Moving key groups between workers' databases while no worker runs on
them: rescaling a cluster at a restart (DESIGN.md §6 "Rescaling").

The supervisor first runs the old cluster without sources until nothing is
in flight between its workers and every worker has checkpointed every
partition (``check_quiet`` says whether a database is so: no input log tail
to replay, no input read but not processed, no peer batch unacknowledged).
Then a plan (``rescale.json`` in the resilience directory: the old and the
new members) is written, and these steps run, each one transaction of one
database, each marked in that database's ``meta`` so a step already done is
never done twice:

1. **take**, for every new member: copy the partitions whose key group it
   now owns, with their snapshots, from each worker that holds them; pids
   are its own, snapshot positions re-based onto its log (every input of
   the giver is absorbed, so ``next_lsn - 1``).  Resumable-stream counts
   and Kafka offsets it now owns come with them (the larger count wins).
2. **give**, for every old member: delete what the others took.  Givers
   keep their rows until every taker has committed, so a crash between the
   steps redoes only what is not marked.
3. **membership**, for every database: the new membership, with the map
   of key-group owners the plan moved to (``ownership.py``: the fewest
   groups move, not contiguous ranges again); a worker that
   is no longer a member is marked ``retired`` (its file is kept: its
   outputs keep their stream names, and it holds them until delivered).

The plan file goes last; a supervisor that finds one finishes it before
anything else.  Rows are copied as bytes: nothing is unpickled, so a state
that lives on disk (``--state-cache``) moves without being loaded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from dataclasses import dataclass

from . import bulk, ownership, reading, schema
from .errors import StoreError
from .files import DatabaseLock
from .records import PartitionRow, SnapshotRow, control_checksum
from .sink_identities import PEER_PREFIX

PLAN_FILE = "rescale.json"
TAKEN = "rescale_taken"  # meta keys: the plan id a step was done for
GIVEN = "rescale_given"
RETIRED = "retired"
KAFKA_PREFIX = "kafka:"


class RescaleError(StoreError):
    """A rescale cannot go on (the message says why and what to do)."""


@dataclass(frozen=True)
class Plan:
    id: str
    old: tuple[str, ...]
    new: tuple[str, ...]
    key_groups: int
    # several hosts: every new member's {"control", "data"} addresses
    addresses: dict | None = None
    # the new member that owns each key group (ownership.py); None in a plan
    # file of a release before maps of owners: contiguous ranges
    owners: tuple[str, ...] | None = None
    # the new member that owns each stream slot (ownership.py); None in a
    # plan file of a release before stream maps: the rule, by member count
    stream_owners: tuple[str, ...] | None = None

    def owner(self, group: int) -> str:
        """The new member that owns ``group``."""
        if self.owners is not None:
            return self.owners[group]
        return ownership.rule_owner(group, self.new, self.key_groups)

    def stream_owner(self, source: str, stream: str) -> str | None:
        """The new member that owns a resumable stream or a Kafka
        partition's offset; None: a channel's count, which stays."""
        if source == "peer" and stream.startswith("peer:"):
            return None  # (a pipeline may be named "peer"; its streams move)
        if stream.startswith(KAFKA_PREFIX):  # kafka:<topic>:<partition>
            try:
                partition = int(stream.rpartition(":")[2])
            except ValueError:
                return None
            return self.new[partition % len(self.new)]
        from ..runtime.placement import stable_hash, stream_slot
        if self.stream_owners is not None:
            return self.stream_owners[stream_slot(source, stream)]
        return self.new[stable_hash((source, stream)) % len(self.new)]

    def to_json(self) -> dict:
        body = {"id": self.id, "old": list(self.old), "new": list(self.new),
                "key_groups": self.key_groups}
        if self.addresses is not None:
            body["addresses"] = self.addresses
        if self.owners is not None:
            body["owners"] = ownership.encode(list(self.owners))
        if self.stream_owners is not None:
            body["stream_owners"] = ownership.encode(list(self.stream_owners))
        return body

    @classmethod
    def from_json(cls, body: dict) -> "Plan":
        addresses = body.get("addresses")
        new, key_groups = tuple(body["new"]), int(body["key_groups"])
        runs = body.get("owners")
        owners = None if runs is None else tuple(
            ownership.decode(runs, key_groups, new))
        slot_runs = body.get("stream_owners")
        stream_owners = None if slot_runs is None else tuple(
            ownership.decode(slot_runs, ownership.STREAM_SLOTS, new,
                             "stream-slot owners"))
        return cls(str(body["id"]), tuple(body["old"]), new, key_groups,
                   None if addresses is None else dict(addresses), owners,
                   stream_owners)


def plan_path(directory: str) -> str:
    return os.path.join(directory, PLAN_FILE)


def new_plan(old: list[str], new: list[str], key_groups: int,
             addresses: dict | None = None,
             old_owners: list[str] | None = None,
             old_stream_owners: list[str] | None = None) -> Plan:
    """A plan from the members ``old`` (whose map of owners is
    ``old_owners``, None: contiguous ranges; and of stream slots
    ``old_stream_owners``, None: the rule) to ``new``, moving the fewest
    key groups and stream slots (ownership.balanced_owners)."""
    if old_owners is None:
        old_owners = ownership.rule_owners(old, key_groups)
    if old_stream_owners is None:
        old_stream_owners = ownership.round_robin(old)
    owners = tuple(ownership.balanced_owners(old_owners, new))
    stream_owners = tuple(ownership.balanced_owners(old_stream_owners, new))
    return Plan(f"{time.time_ns():x}", tuple(old), tuple(new), key_groups,
                addresses, owners, stream_owners)


def write_plan(directory: str, plan: Plan) -> None:
    path = plan_path(directory)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(plan.to_json(), f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(directory)


def read_plan(directory: str) -> Plan | None:
    path = plan_path(directory)
    try:
        with open(path) as f:
            body = json.load(f)
        return Plan.from_json(body)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise RescaleError(f"{path} is damaged ({e}): it records a rescale "
                           f"in progress; restore it, or remove it only if "
                           f"no step of it ran") from None


def finish(directory: str) -> None:
    os.unlink(plan_path(directory))
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def db_file(directory: str, worker: str) -> str:
    return os.path.join(directory, f"{worker}.db")


class _Open:
    """A worker's database, locked as a worker would lock it."""

    def __init__(self, directory: str, worker: str):
        self.path = db_file(directory, worker)
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        self.lock = DatabaseLock(self.path)
        self.lock.acquire()
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None)
            if new:  # a new member's database, made as a worker makes one
                self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            schema.migrate(self.conn, self.path)
        except BaseException:
            self.lock.release()
            raise

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    @contextlib.contextmanager
    def transaction(self, step: str, before):
        """One step: committed whole (``before("commit " + step)`` runs
        just before the commit), or rolled back."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
            before(f"commit {step}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- before a rescale -----------------------------------------------------

def check_quiet(directory: str, worker: str) -> list[str]:
    """Why this worker's database cannot give or take key groups yet
    (empty: it can)."""
    with _Open(directory, worker) as db:
        c = db.conn
        problems = []
        next_lsn, replay_from = c.execute(
            "SELECT next_lsn, replay_from FROM progress").fetchone()
        if replay_from < next_lsn:
            problems.append(f"inputs from lsn {replay_from} to {next_lsn - 1} are "
                            f"not absorbed by snapshots")
        (ungrouped,) = c.execute(
            "SELECT count(*) FROM partitions WHERE key_group < 0").fetchone()
        if ungrouped:  # a worker gives them their groups when it opens them
            problems.append(f"{ungrouped} partitions written by an earlier "
                            f"release have no key group yet")
        (pending,) = c.execute("SELECT count(*) FROM pending_input").fetchone()
        if pending:
            problems.append(f"{pending} rows of input read but not processed")
        for sink, pipeline, waiting in c.execute(
                "SELECT s.sink, i.pipeline, s.next_seq - s.delivered FROM sinks s "
                "JOIN sink_identities i ON i.sink = s.sink "
                "WHERE s.next_seq > s.delivered"):
            if pipeline.startswith(PEER_PREFIX):
                problems.append(f"{waiting} peer batches for worker "
                                f"{pipeline[len(PEER_PREFIX):]!r} not acknowledged")
        return problems


def _read_row(directory: str, worker: str, sql: str, args: tuple = ()):
    """Read-only: the first row ``sql`` gives on a worker's database."""
    conn = sqlite3.connect(f"file:{db_file(directory, worker)}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchone()
    finally:
        conn.close()


def stored_fingerprint(directory: str, worker: str) -> dict | None:
    """Read-only: the application fingerprint a worker's database holds."""
    row = _read_row(directory, worker,
                    "SELECT value FROM meta WHERE key='fingerprint'")
    return None if row is None else json.loads(row[0])


def undelivered_outputs(directory: str, worker: str) -> int:
    """Read-only: outputs for the application's sinks (not peers) that
    the worker's database holds undelivered."""
    (n,) = _read_row(
        directory, worker,
        "SELECT coalesce(sum(s.next_seq - s.delivered), 0) FROM sinks s "
        "LEFT JOIN sink_identities i ON i.sink = s.sink WHERE "
        "s.next_seq > s.delivered AND (i.pipeline IS NULL OR "
        "substr(i.pipeline, 1, ?) != ?)", (len(PEER_PREFIX), PEER_PREFIX))
    return n


def membership_of(directory: str, worker: str) -> dict | None:
    with _Open(directory, worker) as db:
        text = db.meta("membership")
        return None if text is None else _checked_membership(text, db.path)


def _meta_value(directory: str, worker: str, key: str) -> str | None:
    """Read-only: a key of a worker's ``meta`` table (None: not there, or
    no readable database)."""
    try:
        row = _read_row(directory, worker, "SELECT value FROM meta WHERE key=?",
                        (key,))
    except sqlite3.Error:
        return None
    return None if row is None else row[0]


def is_retired(directory: str, worker: str) -> bool:
    """Read-only: whether a database is marked retired."""
    return _meta_value(directory, worker, RETIRED) is not None


# -- the steps ------------------------------------------------------------

def _nothing(step: str) -> None:
    pass


def take(directory: str, taker: str, plan: Plan, before=_nothing,
         giver_files: dict[str, str] | None = None, progress=None) -> int:
    """Step 1 for ``taker``: copy what it now owns from every old member
    (from ``giver_files[giver]`` when given: copies of databases on other
    hosts).  Returns how many partitions it took (0 when already done).
    ``progress(giver, n)``: called with the partitions copied from that
    giver so far, every ``FLUSH_ROWS`` of them and once at its end."""
    files = giver_files or {}
    with _Open(directory, taker) as db:
        if db.meta(TAKEN) == plan.id:
            return 0
        with db.transaction(f"take {taker}", before) as c:
            n = sum(_take_from(c, files.get(g) or db_file(directory, g), taker, plan,
                               progress and functools.partial(progress, g))
                    for g in plan.old if g != taker)
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (TAKEN, plan.id))
        return n


# a take writes what it copied every this many partitions or bytes, so a
# giver's state never sits in memory whole
FLUSH_ROWS = 4096
FLUSH_BYTES = 32 * 1024 * 1024


class TakeProgress:
    """A ``progress`` for ``take`` that logs, at most every ``every``
    seconds, how far a long take has come:
    ``rescale <id>: worker-1 taking from initializer: 409,600 partitions so
    far (12.3s)``; ``step`` is the same as a short text, for status."""

    def __init__(self, log, taker: str, plan_id: str, every: float = 5.0):
        self.log, self.taker, self.plan_id, self.every = log, taker, plan_id, every
        self.t0 = self.last = time.monotonic()
        self.step = "take"

    def __call__(self, giver: str, n: int) -> None:
        self.step = f"take: {n:,} partitions from {giver}"
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log.info("rescale %s: %s taking from %s: %s partitions so far "
                          "(%.1fs)", self.plan_id, self.taker, giver, f"{n:,}",
                          now - self.t0)


def _take_from(c: sqlite3.Connection, giver_path: str, taker: str,
               plan: Plan, progress=None) -> int:
    """Copy into the taker's transaction ``c`` what it now owns of one
    giver, every row checked against its checksum first (a damaged row is
    refused, naming the file, never copied under a fresh checksum)."""
    g = sqlite3.connect(f"file:{giver_path}?mode=ro", uri=True)
    try:
        next_lsn = c.execute("SELECT next_lsn FROM progress").fetchone()[0]
        lsn = next_lsn - 1  # every input the taker logged is absorbed
        (top,) = c.execute("SELECT max(pid) FROM partitions").fetchone()
        from .key_index import read_watermark
        from .sqlite_store import snapshot_pieces
        pid = max(0 if top is None else top + 1, read_watermark(c, "taker"))
        classes = {refs: cid for cid, refs in c.execute(
            "SELECT id, refs FROM snapshot_classes")}
        given_classes = {}
        for cid, refs, cs in g.execute("SELECT id, refs, checksum FROM snapshot_classes"):
            if schema.class_set_checksum(cid, refs) != cs:
                raise reading.damaged(giver_path, f"table snapshot_classes row {cid}")
            given_classes[cid] = refs
        mine = [grp for grp in range(plan.key_groups) if plan.owner(grp) == taker]
        g.execute("CREATE TEMP TABLE taking (key_group INTEGER PRIMARY KEY)")
        g.executemany("INSERT INTO taking VALUES (?)", [(x,) for x in mine])
        rows = g.execute(
            f"SELECT {reading.PARTITION_COLUMNS} {reading.PARTITIONS_FROM} "
            f"JOIN taking t ON t.key_group = p.key_group ORDER BY p.pid")
        batch: list = [[], [], []]  # partitions, snapshots, snapshot parts
        held = n = 0
        for cols in rows:
            prow = reading.partition_row(giver_path, cols)
            snap = reading.snapshot_row(g, giver_path, prow, cols)
            new = PartitionRow(pid, prow.state, prow.key, prow.key_repr, next_lsn,
                               prow.key_group, prow.key_hash)
            batch[0].append((pid, new.state, new.key_repr, next_lsn, new.checksum(),
                             new.key, new.key_group, new.key_hash))
            held += len(new.key)
            if snap is not None:
                pieces = snapshot_pieces(c, snap.blob)
                moved = SnapshotRow(pid, lsn, snap.blob, snap.pickler)
                cid = None
                refs = given_classes.get(cols[-1])
                if refs is not None:
                    cid = classes.get(refs)
                    if cid is None:
                        cid = classes[refs] = 1 + max(classes.values(), default=0)
                        c.execute("INSERT INTO snapshot_classes VALUES (?,?,?)",
                                  (cid, refs, schema.class_set_checksum(cid, refs)))
                batch[1].append((pid, lsn, len(snap.blob), snap.pickler,
                                 moved.checksum(), pieces[0], len(pieces) - 1, cid))
                batch[2].extend((pid, i, piece)
                                for i, piece in enumerate(pieces[1:], 1))
                held += len(snap.blob)
            pid += 1
            n += 1
            if len(batch[0]) >= FLUSH_ROWS or held >= FLUSH_BYTES:
                _write_taken(c, batch)
                held = 0
                if progress is not None:
                    progress(n)
        _write_taken(c, batch)
        if progress is not None:
            progress(n)
        now = int(time.time())
        for source, stream, count, seen, cs in g.execute(
                "SELECT source, stream, count, last_seen, checksum FROM streams"):
            if control_checksum("streams", source, stream, count, seen) != cs:
                raise reading.damaged(giver_path, f"table streams row (source "
                                                  f"{source!r}, stream {stream!r})")
            if plan.stream_owner(source, stream) != taker:
                continue
            row = c.execute("SELECT count FROM streams WHERE source=? AND stream=?",
                            (source, stream)).fetchone()
            count = max(count, row[0] if row else 0)
            c.execute("INSERT OR REPLACE INTO streams VALUES (?,?,?,?,?)",
                      (source, stream, count, now,
                       control_checksum("streams", source, stream, count, now)))
        return n
    finally:
        g.close()


def _write_taken(c: sqlite3.Connection, batch: list) -> None:
    """Multi-row statements: one per up to 256 rows, not one per row."""
    parts, snaps, pieces = batch
    bulk.insert(c, "INSERT INTO partitions (pid, state, key_repr, created_lsn, "
                "checksum, key, key_group, key_hash) VALUES", parts)
    bulk.insert(c, "INSERT INTO snapshots (pid, lsn, size, pickler, checksum, "
                "state, parts, classes) VALUES", snaps)
    bulk.insert(c, "INSERT INTO snapshot_parts VALUES", pieces)
    for rows in batch:
        rows.clear()


def give(directory: str, giver: str, plan: Plan, before=_nothing) -> int:
    """Step 2 for ``giver``: delete what the new members took from it
    (everything, when it leaves).  Returns how many partitions went."""
    with _Open(directory, giver) as db:
        if db.meta(GIVEN) == plan.id:
            return 0
        with db.transaction(f"give {giver}", before) as c:
            c.execute("CREATE TEMP TABLE giving (key_group INTEGER PRIMARY KEY)")
            c.executemany("INSERT INTO giving VALUES (?)", [
                (x,) for x in range(plan.key_groups) if plan.owner(x) != giver])
            c.execute("CREATE TEMP TABLE gone AS SELECT p.pid FROM partitions p "
                      "JOIN giving g ON g.key_group = p.key_group")
            (n,) = c.execute("SELECT count(*) FROM gone").fetchone()
            for table in ("snapshot_parts", "snapshots", "partitions"):
                c.execute(f"DELETE FROM {table} WHERE pid IN (SELECT pid FROM gone)")
            c.execute("DELETE FROM partition_keys WHERE pid IN (SELECT pid FROM gone)")
            for source, stream in c.execute(
                    "SELECT source, stream FROM streams").fetchall():
                owner = plan.stream_owner(source, stream)
                if owner is not None and owner != giver:
                    c.execute("DELETE FROM streams WHERE source=? AND stream=?",
                              (source, stream))
            c.execute("DROP TABLE gone")
            c.execute("DROP TABLE giving")
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (GIVEN, plan.id))
        return n


def taken_already(directory: str, taker: str, plan: Plan) -> bool:
    """Read-only: whether ``taker`` took its share for ``plan``."""
    return _meta_value(directory, taker, TAKEN) == plan.id


def export_copy(directory: str, worker: str, dest: str) -> None:
    """A consistent copy of a worker's database (SQLite's backup), for a
    taker on another host; the worker must not be running."""
    src = sqlite3.connect(f"file:{db_file(directory, worker)}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def set_membership(directory: str, worker: str, plan: Plan,
                   before=_nothing) -> None:
    """Step 3: the new membership; ``retired`` set for a worker that left,
    cleared for one that is a member (again).  Several hosts: with every
    member's addresses, and ``rescaled`` (the initializer's
    ``--worker-count`` no longer binds)."""
    body = {"members": list(plan.new), "key_groups": plan.key_groups}
    if plan.owners is not None:
        body["owners"] = ownership.encode(list(plan.owners))
    if plan.stream_owners is not None:
        body["stream_owners"] = ownership.encode(list(plan.stream_owners))
    if plan.addresses is not None:
        body["addresses"] = {n: plan.addresses[n] for n in plan.new}
        body["rescaled"] = plan.id
    text = json.dumps({**body, "checksum": control_checksum(
        "membership", json.dumps(body, sort_keys=True))}, sort_keys=True)
    with _Open(directory, worker) as db:
        with db.transaction(f"membership {worker}", before) as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES ('membership', ?)", (text,))
            if worker in plan.new:
                c.execute("DELETE FROM meta WHERE key=?", (RETIRED,))
            elif db.meta(RETIRED) is None:
                c.execute("INSERT INTO meta VALUES (?, ?)", (RETIRED, json.dumps({
                    "plan": plan.id, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})))


def _checked_membership(text: str, path: str) -> dict:
    body = json.loads(text)
    cs = body.pop("checksum", None)
    if control_checksum("membership", json.dumps(body, sort_keys=True)) != cs:
        raise RescaleError(f"{path}: the membership in table meta failed its "
                           f"checksum; refusing to run on damaged state")
    return body


def run_plan(directory: str, plan: Plan, log=None,
             before=_nothing) -> dict[str, int]:
    """Steps 1-3 and the plan file's removal; safe to run again after a
    crash at any point.  Returns partitions taken per new member.
    ``before(step)`` is called before each step and before each step's
    commit (tests crash there)."""
    taken = {}
    for t in plan.new:
        before(f"take {t}")
        taken[t] = take(directory, t, plan, before, progress=None if log is None
                        else TakeProgress(log, t, plan.id))
    for g in plan.old:
        before(f"give {g}")
        give(directory, g, plan, before)
    for w in dict.fromkeys([*plan.old, *plan.new]):
        before(f"membership {w}")
        set_membership(directory, w, plan, before)
    before("finish")
    finish(directory)
    if log is not None:
        log.info("rescale %s: %d -> %d workers; partitions taken: %s", plan.id,
                 len(plan.old), len(plan.new),
                 ", ".join(f"{w} {n}" for w, n in taken.items()) or "none")
    return taken
