"""Resumable streams belong to their workers through a map of stream slots
(wallaroo/recovery/ownership.py): a cluster that never rescaled keeps the
rule ``hash % n``, a rescale saves a map and moves the fewest slots, and
every later start (and the next rescale) goes by that map."""

from __future__ import annotations

import sqlite3

import pytest

from wallaroo.recovery import moves, ownership
from wallaroo.recovery.ownership import STREAM_SLOTS
from wallaroo.runtime.placement import Placement, stable_hash, stream_slot
from wallaroo.testing import ClusterDriver

from .apps import model_app as m

TWO = ["initializer", "worker-1"]
THREE = TWO + ["worker-2"]
STREAMS = [f"sender-{i}" for i in range(300)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_a_cluster_that_never_rescaled_keeps_the_rule(n):
    members = ["initializer"] + [f"worker-{i}" for i in range(1, n)]
    rule = Placement(members, members[0])
    for s in STREAMS:
        assert rule.owner_of_stream("A", s) == stable_hash(("A", s)) % n
    if STREAM_SLOTS % n == 0:  # the map a first rescale starts from is the rule
        mapped = Placement(members, members[0], stream_owners=ownership.round_robin(
            members))
        assert all(mapped.owner_of_stream("A", s) == rule.owner_of_stream("A", s)
                   for s in STREAMS)


def test_growing_from_two_to_three_moves_a_third_of_the_streams_not_two_thirds():
    plan = moves.new_plan(TWO, THREE, 1024)
    by_rule = moves.Plan("x", tuple(TWO), tuple(THREE), 1024)  # an old plan file
    before = {s: TWO[stable_hash(("A", s)) % 2] for s in STREAMS}
    mapped = {s: plan.stream_owner("A", s) for s in STREAMS}
    ruled = {s: by_rule.stream_owner("A", s) for s in STREAMS}
    moved = [s for s in STREAMS if mapped[s] != before[s]]
    assert all(mapped[s] == "worker-2" for s in moved)
    assert 0.25 < len(moved) / len(STREAMS) < 0.42, len(moved)
    assert sum(ruled[s] != before[s] for s in STREAMS) / len(STREAMS) > 0.55
    # Kafka partitions keep their rule: an even spread of a topic's few
    assert [plan.stream_owner("A", f"kafka:t:{p}") for p in range(6)] == THREE * 2


def test_plan_files_carry_the_map_and_old_ones_mean_the_rule():
    plan = moves.new_plan(TWO, THREE, 8)
    again = moves.Plan.from_json(plan.to_json())
    assert again == plan and len(again.stream_owners) == STREAM_SLOTS
    body = plan.to_json()
    del body["stream_owners"]
    old = moves.Plan.from_json(body)
    assert old.stream_owners is None
    assert all(old.stream_owner("A", s) == THREE[stable_hash(("A", s)) % 3]
               for s in STREAMS)
    body["stream_owners"] = [[0, "initializer"], [5, "worker-9"]]
    with pytest.raises(ownership.OwnershipError,
                       match="stream-slot owners names 'worker-9'"):
        moves.Plan.from_json(body)


def _stream_rows(d: str, names: list[str]) -> dict[str, tuple[str, int]]:
    """stream -> (the worker whose database holds its count, the count)."""
    where = {}
    for w in names:
        with sqlite3.connect(moves.db_file(d, w)) as conn:
            for source, stream, count in conn.execute(
                    "SELECT source, stream, count FROM streams"):
                if source == "peer":
                    continue
                assert stream not in where, f"{stream} held twice"
                where[stream] = (w, count)
    return where


def _rescale(d: str, old: list[str], new: list[str]) -> moves.Plan:
    saved = moves.membership_of(d, old[0]) or {}
    runs, slots = saved.get("owners"), saved.get("stream_owners")
    plan = moves.new_plan(
        old, new, 1024,
        old_owners=None if runs is None else ownership.decode(runs, 1024, old),
        old_stream_owners=None if slots is None else ownership.decode(
            slots, STREAM_SLOTS, old, "stream-slot owners"))
    moves.write_plan(d, plan)
    moves.run_plan(d, plan)
    return plan


def _feed_every_stream(c: ClusterDriver, n: int) -> None:
    """``n`` messages on every stream, each sent to the stream's owner (as
    a resumable sender's connection is forwarded there)."""
    p = c.drivers[0].core.placement
    for i, s in enumerate(STREAMS):
        c.feed(p.owner_of_stream("A", s), "A",
               [m.payload_a(i % 256, 1, 0, 0)] * n, stream=s)
    c.run_until_quiet()


def test_stream_counts_move_with_their_slots_and_only_those(tmp_path):
    """2 workers count 2 messages per stream; growing to 3 moves the
    counts of about a third of the streams, all to the new member; every
    worker of the next run finds each stream's count where the map says,
    and the streams go on from it; then worker-1 leaves and only its
    streams move."""
    d = str(tmp_path)
    c = ClusterDriver(m, 2, resilience_dir=d)
    c.start_all()
    _feed_every_stream(c, 2)
    for drv in c.drivers:
        drv.stop()
    before = _stream_rows(d, TWO)
    assert before == {s: (TWO[stable_hash(("A", s)) % 2], 2) for s in STREAMS}

    plan = _rescale(d, TWO, THREE)
    after = _stream_rows(d, THREE)
    assert after == {s: (plan.stream_owner("A", s), 2) for s in STREAMS}
    moved = {s for s in STREAMS if after[s][0] != before[s][0]}
    assert {after[s][0] for s in moved} == {"worker-2"}
    assert 0.25 < len(moved) / len(STREAMS) < 0.42, len(moved)
    saved = moves.membership_of(d, "worker-2")
    assert ownership.decode(saved["stream_owners"], STREAM_SLOTS, THREE) == \
        list(plan.stream_owners)

    c3 = ClusterDriver(m, 3, resilience_dir=d)
    c3.start_all()
    for drv in c3.drivers:
        p = drv.core.placement
        assert p.stream_owner_names() == list(plan.stream_owners)
        for s in STREAMS:
            mine = p.owner_of_stream("A", s) == p.me
            assert drv.durable_count("A", s) == (2 if mine else 0), (p.name, s)
    _feed_every_stream(c3, 1)
    for drv in c3.drivers:
        drv.stop()
    three = _stream_rows(d, THREE)
    assert three == {s: (after[s][0], 3) for s in STREAMS}

    left = ["initializer", "worker-2"]
    plan = _rescale(d, THREE, left)
    final = _stream_rows(d, left)
    assert {s for s in STREAMS if final[s][0] != three[s][0]} == \
        {s for s, (w, _) in three.items() if w == "worker-1"}
    assert all(n == 3 for _, n in final.values())
    assert all(final[s][0] == plan.stream_owner("A", s) for s in STREAMS)


def test_every_slot_is_a_stream_hash_remainder():
    assert {stream_slot("A", s) for s in STREAMS} <= set(range(STREAM_SLOTS))
    assert stream_slot("A", "x") == stable_hash(("A", "x")) % STREAM_SLOTS
