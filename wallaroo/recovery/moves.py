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
from .records import (PartitionRow, SnapshotRow, checksum, control_checksum,
                      partition_checksum, snapshot_head)
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
            # uri: a take attaches its givers read-only (file:...?mode=ro)
            self.conn = sqlite3.connect(self.path, isolation_level=None, uri=True)
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
        _sql_functions(db.conn)
        givers = [g for g in plan.old if g != taker]
        with db.transaction(f"take {taker}", before) as c:
            n = sum(_take_from(c, files.get(g) or db_file(directory, g), taker, plan,
                               progress and functools.partial(progress, g),
                               f"giver{i}" if i < ATTACH_MAX else None)
                    for i, g in enumerate(givers))
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (TAKEN, plan.id))
        return n  # (the givers stay attached until _Open closes the connection)


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


# SQLite attaches at most 10 databases by default: a take from more givers
# reads the rest row by row
ATTACH_MAX = 9


def _take_from(c: sqlite3.Connection, giver_path: str, taker: str,
               plan: Plan, progress=None, schema_name: str | None = None) -> int:
    """Copy into the taker's transaction ``c`` what it now owns of one
    giver, every row checked against its checksum first (a damaged row is
    refused, naming the file, never copied under a fresh checksum).

    With ``schema_name`` the giver is attached to ``c`` under that name and
    copied by ``INSERT ... SELECT``, the checksums checked and made by SQL
    functions (``_sql_functions``): 2x faster than reading every row into
    Python, which is what the pause of a rescale is mostly made of.  A row
    those statements refuse is found again the slow way, which raises the
    error naming it."""
    if schema_name is not None:
        c.execute("SAVEPOINT take_attached")
        try:
            n = _take_attached(c, giver_path, schema_name, taker, plan, progress)
            c.execute("RELEASE take_attached")
            return n
        except sqlite3.OperationalError as e:
            if "user-defined function raised exception" not in str(e):
                raise
            c.execute("ROLLBACK TO take_attached")
            c.execute("RELEASE take_attached")
            _take_rows_from(c, giver_path, taker, plan)  # raises, naming the row
            raise  # pragma: no cover - the slow way found nothing wrong
    return _take_rows_from(c, giver_path, taker, plan, progress)


def _sql_functions(conn: sqlite3.Connection) -> None:
    """The checksums of records.py as SQL functions, for ``_take_attached``:
    ``wallaroo_partition_checksum(pid, state, created_lsn, key_group,
    key_hash, key)``, ``wallaroo_snapshot_checksum(pid, lsn, pickler,
    blob)``, and ``wallaroo_checked(ok)``, which fails the statement when
    ``ok`` is false."""
    def snapshot_cs(pid, lsn, pickler, blob):
        return checksum(blob, snapshot_head(pid, lsn, pickler))

    def checked(ok):
        if not ok:
            raise ValueError("a row failed its checksum")
        return 1

    conn.create_function("wallaroo_partition_checksum", 6, partition_checksum,
                         deterministic=True)
    conn.create_function("wallaroo_snapshot_checksum", 4, snapshot_cs,
                         deterministic=True)
    conn.create_function("wallaroo_checked", 1, checked)


def _taker_start(c: sqlite3.Connection) -> tuple[int, int, dict]:
    """Where the taker's copy of one giver starts: its next lsn (copied
    partitions are created there, their snapshots re-based just below it:
    every input the taker logged is absorbed), its next pid, and its
    snapshot classes (refs -> id)."""
    from .key_index import read_watermark
    next_lsn = c.execute("SELECT next_lsn FROM main.progress").fetchone()[0]
    (top,) = c.execute("SELECT max(pid) FROM main.partitions").fetchone()
    pid = max(0 if top is None else top + 1, read_watermark(c, "taker"))
    classes = {refs: cid for cid, refs in c.execute(
        "SELECT id, refs FROM main.snapshot_classes")}
    return next_lsn, pid, classes


def _taker_class(c: sqlite3.Connection, classes: dict, refs: str) -> int:
    """The taker's id of a set of class references, added when new."""
    cid = classes.get(refs)
    if cid is None:
        cid = classes[refs] = 1 + max(classes.values(), default=0)
        c.execute("INSERT INTO main.snapshot_classes VALUES (?,?,?)",
                  (cid, refs, schema.class_set_checksum(cid, refs)))
    return cid


def _take_attached(c: sqlite3.Connection, giver_path: str, g: str, taker: str,
                   plan: Plan, progress=None) -> int:
    from .sqlite_store import PART_BYTES, _blob_limit
    c.execute(f"ATTACH DATABASE ? AS {g}", (f"file:{giver_path}?mode=ro",))
    next_lsn, base, classes = _taker_start(c)
    lsn = next_lsn - 1
    c.execute(f"CREATE TEMP TABLE {g}_classes (given INTEGER PRIMARY KEY, cid INTEGER)")
    for gcid, refs, cs in c.execute(
            f"SELECT id, refs, checksum FROM {g}.snapshot_classes").fetchall():
        if schema.class_set_checksum(gcid, refs) != cs:
            raise reading.damaged(giver_path, f"table snapshot_classes row {gcid}")
        c.execute(f"INSERT INTO temp.{g}_classes VALUES (?, ?)",
                  (gcid, _taker_class(c, classes, refs)))
    c.execute(f"CREATE TEMP TABLE {g}_taking (key_group INTEGER PRIMARY KEY)")
    c.executemany(f"INSERT INTO temp.{g}_taking VALUES (?)", [
        (x,) for x in range(plan.key_groups) if plan.owner(x) == taker])
    # the giver's pids in order, numbered from the taker's next pid
    c.execute(f"CREATE TEMP TABLE {g}_moving (pid INTEGER PRIMARY KEY, given INTEGER)")
    c.execute(f"INSERT INTO temp.{g}_moving SELECT ? + row_number() OVER "
              f"(ORDER BY p.pid) - 1, p.pid FROM {g}.partitions p "
              f"JOIN temp.{g}_taking USING (key_group)", (base,))
    (total,) = c.execute(f"SELECT count(*) FROM temp.{g}_moving").fetchone()
    part = min(PART_BYTES, _blob_limit(c) // 2)
    for lo in range(base, base + total, FLUSH_ROWS):
        hi = min(lo + FLUSH_ROWS, base + total)
        c.execute(
            f"INSERT INTO main.partitions (pid, state, key_repr, created_lsn, checksum, "
            f"key, key_group, key_hash) SELECT m.pid, p.state, p.key_repr, ?, "
            f"wallaroo_partition_checksum(m.pid, p.state, ?, p.key_group, p.key_hash, "
            f"p.key), p.key, p.key_group, p.key_hash "
            f"FROM temp.{g}_moving m JOIN {g}.partitions p ON p.pid = m.given "
            f"WHERE m.pid >= ? AND m.pid < ? AND wallaroo_checked(CASE WHEN "
            f"typeof(p.key) = 'blob' THEN wallaroo_partition_checksum(p.pid, p.state, "
            f"p.created_lsn, p.key_group, p.key_hash, p.key) = p.checksum ELSE 0 END) "
            f"ORDER BY m.pid", (next_lsn, next_lsn, lo, hi))
        c.execute(
            f"INSERT INTO main.snapshots (pid, lsn, size, pickler, checksum, state, "
            f"parts, classes) SELECT m.pid, ?, length(s.state), s.pickler, "
            f"wallaroo_snapshot_checksum(m.pid, ?, s.pickler, s.state), s.state, 0, "
            f"k.cid FROM temp.{g}_moving m JOIN {g}.snapshots s ON s.pid = m.given "
            f"LEFT JOIN temp.{g}_classes k ON k.given = s.classes "
            f"WHERE m.pid >= ? AND m.pid < ? AND s.parts = 0 AND "
            f"length(s.state) <= ? AND wallaroo_checked(CASE WHEN s.parts = 0 AND "
            f"length(s.state) <= ? THEN typeof(s.state) = 'blob' AND "
            f"wallaroo_snapshot_checksum(s.pid, s.lsn, s.pickler, s.state) = "
            f"s.checksum ELSE 1 END) ORDER BY m.pid", (lsn, lsn, lo, hi, part, part))
        if progress is not None:
            progress(hi - base)
    # snapshots split in parts, or larger than the taker's parts: row by row
    big = c.execute(
        f"SELECT m.pid, m.given FROM temp.{g}_moving m JOIN {g}.snapshots s "
        f"ON s.pid = m.given WHERE s.parts > 0 OR length(s.state) > ?",
        (part,)).fetchall()
    if big:
        _take_big_snapshots(c, giver_path, sorted(big, key=lambda b: b[1]), lsn,
                            part, g)
    _take_streams(c, c.execute(f"SELECT source, stream, count, last_seen, checksum "
                               f"FROM {g}.streams"), giver_path, taker, plan)
    return total


def _take_big_snapshots(c: sqlite3.Connection, giver_path: str, pids: list,
                        lsn: int, part: int, g: str) -> None:
    """The snapshots ``_take_attached`` left: ``pids`` holds (the taker's
    pid, the giver's) pairs."""
    from .sqlite_store import snapshot_pieces
    gc = sqlite3.connect(f"file:{giver_path}?mode=ro", uri=True)
    try:
        for pid, given in pids:
            cols = gc.execute(f"SELECT {reading.PARTITION_COLUMNS} "
                              f"{reading.PARTITIONS_FROM} WHERE p.pid = ?",
                              (given,)).fetchone()
            prow = reading.partition_row(giver_path, cols)
            snap = reading.snapshot_row(gc, giver_path, prow, cols)
            blob = snap.blob
            pieces = snapshot_pieces(c, blob, part)
            (cid,) = c.execute(f"SELECT cid FROM temp.{g}_classes WHERE given = ?",
                               (cols[-1],)).fetchone() or (None,)
            c.execute("INSERT INTO main.snapshots (pid, lsn, size, pickler, checksum, "
                      "state, parts, classes) VALUES (?,?,?,?,?,?,?,?)",
                      (pid, lsn, len(blob), snap.pickler,
                       SnapshotRow(pid, lsn, blob, snap.pickler).checksum(), pieces[0],
                       len(pieces) - 1, cid))
            c.executemany("INSERT INTO main.snapshot_parts VALUES (?,?,?)",
                          [(pid, i, piece) for i, piece in enumerate(pieces[1:], 1)])
    finally:
        gc.close()


def _take_streams(c: sqlite3.Connection, rows, giver_path: str, taker: str,
                  plan: Plan) -> None:
    """The resumable-stream counts and Kafka offsets the taker now owns of
    the giver's ``streams`` rows (checked), the larger count winning."""
    now = int(time.time())
    for source, stream, count, seen, cs in rows.fetchall():
        if control_checksum("streams", source, stream, count, seen) != cs:
            raise reading.damaged(giver_path, f"table streams row (source "
                                              f"{source!r}, stream {stream!r})")
        if plan.stream_owner(source, stream) != taker:
            continue
        row = c.execute("SELECT count FROM main.streams WHERE source=? AND stream=?",
                        (source, stream)).fetchone()
        count = max(count, row[0] if row else 0)
        c.execute("INSERT OR REPLACE INTO main.streams VALUES (?,?,?,?,?)",
                  (source, stream, count, now,
                   control_checksum("streams", source, stream, count, now)))


def _take_rows_from(c: sqlite3.Connection, giver_path: str, taker: str,
                    plan: Plan, progress=None) -> int:
    """Copy into the taker's transaction ``c`` what it now owns of one
    giver, row by row in Python (``_take_from``)."""
    g = sqlite3.connect(f"file:{giver_path}?mode=ro", uri=True)
    try:
        from .sqlite_store import PART_BYTES, snapshot_pieces
        next_lsn, pid, classes = _taker_start(c)
        lsn = next_lsn - 1
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
                pieces = snapshot_pieces(c, snap.blob, PART_BYTES)
                moved = SnapshotRow(pid, lsn, snap.blob, snap.pickler)
                refs = given_classes.get(cols[-1])
                cid = None if refs is None else _taker_class(c, classes, refs)
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
        _take_streams(c, g.execute("SELECT source, stream, count, last_seen, "
                                   "checksum FROM streams"), giver_path, taker, plan)
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


def mark_retired(directory: str, worker: str, membership: dict) -> None:
    """A worker that left a running cluster (runtime/live_shrink.py), once
    stopped: ``retired``, with the membership the others go on with (as
    a rescale's step 3 leaves a worker that left)."""
    from .checked_meta import checked_text
    with _Open(directory, worker) as db:
        with db.transaction(f"retire {worker}", _nothing) as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES ('membership', ?)",
                      (checked_text("membership", membership),))
            if db.meta(RETIRED) is None:
                c.execute("INSERT INTO meta VALUES (?, ?)", (RETIRED, json.dumps({
                    "live": True, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})))


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
