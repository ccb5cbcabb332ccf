"""Sinks by identity (DESIGN.md §4.4): the store numbers sinks by their own
ids, each tied to an identity, ``(pipeline, position)``, the sink's pipeline
and its place among that pipeline's ``to_sink`` / ``to_sinks``.  Outputs,
delivery positions and output counters belong to an id, never to the
sink's place in the application, so a reordered application delivers every
sink's outputs to that sink, and one that dropped a sink holding undelivered
outputs is refused until they are discarded on purpose.

Databases written before identities existed (schema < 3) numbered sinks by
their place in the application; the first open by this release maps those
numbers to identities when the application still has the same pipelines in
the same order and the same number of sinks, the only case in which the
numbers can be trusted.
"""

from __future__ import annotations

import os
import sqlite3

from .errors import CorruptionError, StoreError
from .records import control_checksum


# The channel to another worker is a destination like a sink; its identity's
# "pipeline" is this prefix and the worker's name (no pipeline name starts
# with a NUL character).
PEER_PREFIX = "\0peer:"


def peer_identity(name: str) -> list:
    return [PEER_PREFIX + name, 0]


class OrphanedOutputs(StoreError):
    """Undelivered outputs belong to a sink the application no longer has."""


Identity = tuple[str, int]


def app_identities(fp: dict) -> list[Identity]:
    """The application's sinks, in its order, from its fingerprint."""
    idents = fp.get("sink_identities")
    if idents is None:  # a fingerprint without them: sinks by place
        return [("", i) for i in range(fp.get("sinks", 0))]
    return [(str(p), int(i)) for p, i in idents]


def describe(ident: Identity | None, sid: int) -> str:
    if ident is None:
        return f"sink #{sid} of an earlier release (its pipeline is not recorded)"
    pipeline, position = ident
    if pipeline.startswith(PEER_PREFIX):
        return f"the channel to worker {pipeline[len(PEER_PREFIX):]!r}"
    return f"sink {position} of pipeline {pipeline!r}"


def read(conn: sqlite3.Connection, path: str) -> dict[int, Identity]:
    idents: dict[int, Identity] = {}
    for sid, pipeline, position, cs in conn.execute(
            "SELECT sink, pipeline, position, checksum FROM sink_identities"):
        if control_checksum("sink_identities", sid, pipeline, position) != cs:
            raise CorruptionError(
                f"{path}: table sink_identities row {sid} (pipeline {pipeline!r}, "
                f"position {position}) failed its checksum; refusing to run on "
                f"damaged state")
        idents[sid] = (pipeline, position)
    return idents


def _row(sid: int, ident: Identity) -> tuple:
    """A ``sink_identities`` row, with its checksum."""
    return (sid, ident[0], ident[1], control_checksum(
        "sink_identities", sid, ident[0], ident[1]))


def _next_id(conn: sqlite3.Connection, idents: dict[int, Identity]) -> int:
    """The first id no identity and no ``sinks`` row uses."""
    known = {sid for (sid,) in conn.execute("SELECT sink FROM sinks")}
    return max([*idents, *known], default=-1) + 1


def undelivered(conn: sqlite3.Connection) -> dict[int, int]:
    """Sink id -> outputs produced but not delivered.  (An outbox row of a
    sink the ``sinks`` table does not know is damage: its checksum, which
    covers the sink number, fails when it is read.)"""
    return {sid: n - d for sid, n, d in conn.execute(
        "SELECT sink, next_seq, delivered FROM sinks") if n > d}


def map_sinks(conn: sqlite3.Connection, path: str, old_fp: dict | None,
              fp: dict) -> list[int]:
    """The store's sink id of each of the application's sinks (in its
    order), creating ids for new identities; refuses undelivered outputs
    whose sink the application no longer has."""
    idents = read(conn, path)
    known = {sid for (sid,) in conn.execute("SELECT sink FROM sinks")}
    app = app_identities(fp)
    new: list[int] = []
    legacy = known - set(idents)
    sinks_only = [i for i in app if not i[0].startswith(PEER_PREFIX)]
    if legacy and old_fp is not None \
            and old_fp.get("pipelines") == fp.get("pipelines") \
            and old_fp.get("sinks") == len(sinks_only):
        taken = set(idents.values())
        for sid in sorted(legacy):
            if sid < len(sinks_only) and sinks_only[sid] not in taken:
                idents[sid] = sinks_only[sid]
                taken.add(sinks_only[sid])
                new.append(sid)
    by_ident = {v: k for k, v in idents.items()}
    next_id = _next_id(conn, idents)
    ids = []
    for ident in app:
        sid = by_ident.get(ident)
        if sid is None:
            sid, next_id = next_id, next_id + 1
            idents[sid] = by_ident[ident] = ident
            new.append(sid)
        ids.append(sid)
    waiting = undelivered(conn)
    orphans = [(sid, n) for sid, n in sorted(waiting.items()) if sid not in ids]
    if orphans:
        directory = os.path.dirname(path) or "."
        worker = os.path.basename(path)[:-3]
        lines = [f"{describe(idents.get(sid), sid)}: {n} undelivered outputs"
                 for sid, n in orphans]
        first = idents.get(orphans[0][0])
        arg = (f"'{first[0]}:{first[1]}'" if first is not None
               else f"'#{orphans[0][0]}'")
        raise OrphanedOutputs(
            f"{path} holds outputs for sinks this application does not have:\n  - "
            + "\n  - ".join(lines)
            + f"\nThey would never be delivered.  Restore the sinks in the "
              f"application, or deliver them first with the application that "
              f"has them, or discard them on purpose: `wallaroo recovery "
              f"discard-outputs {directory} --worker {worker} --sink {arg}`.")
    if new:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR REPLACE INTO sink_identities VALUES (?,?,?,?)",
            [_row(sid, idents[sid]) for sid in new])
        conn.execute("COMMIT")
    return ids


def add(conn: sqlite3.Connection, path: str, identities) -> list[int]:
    """Ids for destinations added while the worker runs (a new member's
    channel), inside the caller's transaction: an identity known already
    keeps its id."""
    idents = read(conn, path)
    by_ident = {v: k for k, v in idents.items()}
    next_id = _next_id(conn, idents)
    ids = []
    for pipeline, position in identities:
        ident = (str(pipeline), int(position))
        sid = by_ident.get(ident)
        if sid is None:
            sid, next_id = next_id, next_id + 1
            by_ident[ident] = sid
            conn.execute("INSERT INTO sink_identities VALUES (?,?,?,?)",
                         _row(sid, ident))
        ids.append(sid)
    return ids


def find(conn: sqlite3.Connection, path: str, sink: str) -> int:
    """The sink id that ``--sink PIPELINE:POSITION`` (or ``#ID``) names."""
    idents = read(conn, path)
    if sink.startswith("#"):
        try:
            return int(sink[1:])
        except ValueError:
            raise StoreError(f"--sink {sink!r}: give #ID or PIPELINE:POSITION") from None
    pipeline, sep, position = sink.rpartition(":")
    if not sep:
        raise StoreError(f"--sink {sink!r}: give PIPELINE:POSITION (e.g. "
                         f"'alphabet:0') or #ID")
    try:
        ident = (pipeline, int(position))
    except ValueError:
        raise StoreError(f"--sink {sink!r}: {position!r} is not a position") from None
    for sid, i in idents.items():
        if i == ident:
            return sid
    known = ", ".join(f"'{p}:{i}'" for p, i in sorted(idents.values())) or "none"
    raise StoreError(f"{path} has no sink {sink!r} (sinks: {known})")
