"""Maps of key-group owners (wallaroo/recovery/ownership.py): a rescale
moves the fewest groups its even shares allow, the map is saved with the
membership, and every later start routes by it."""

from __future__ import annotations

import itertools
import sqlite3
from collections import Counter

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from wallaroo.recovery import moves, ownership
from wallaroo.runtime.placement import Placement
from wallaroo.testing import ClusterDriver, split_frames

from .apps import model_app as m

NAMES = ["initializer"] + [f"worker-{i}" for i in range(1, 7)]


def _fewest_moves(old: list[str], new: list[str]) -> int:
    """Brute force: over every way of giving the left-over groups to
    members, the fewest groups that must change owner."""
    k, n = len(old), len(new)
    base, extra = divmod(k, n)
    current = Counter(old)
    best = k
    for bigger in itertools.combinations(new, extra):
        kept = sum(min(current[w], base + (w in bigger)) for w in new)
        best = min(best, k - kept)
    return best


@settings(max_examples=300, deadline=None)
@given(key_groups=st.integers(1, 64), data=st.data())
def test_a_rescale_moves_the_fewest_groups_and_balances(key_groups, data):
    old_members = data.draw(st.lists(st.sampled_from(NAMES), min_size=1,
                                     max_size=5, unique=True))
    # any earlier map over the old members, not only contiguous ranges
    old = data.draw(st.lists(st.sampled_from(old_members), min_size=key_groups,
                             max_size=key_groups))
    new = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5,
                             unique=True))
    owners = ownership.balanced_owners(old, new)
    assert len(owners) == key_groups and set(owners) <= set(new)
    counts = Counter(owners)
    sizes = [counts[w] for w in new]
    assert max(sizes) - min(sizes) <= 1, sizes
    moved = sum(a != b for a, b in zip(old, owners))
    assert moved == _fewest_moves(old, new)
    assert ownership.decode(ownership.encode(owners), key_groups, new) == owners


def test_contiguous_ranges_stay_what_they_were_for_a_first_grow():
    one = ownership.rule_owners(["initializer"], 1024)
    two = ["initializer", "worker-1"]
    assert ownership.balanced_owners(one, two) == ownership.rule_owners(two, 1024)


def test_growing_from_two_to_three_moves_a_third_not_a_half():
    two = ["initializer", "worker-1"]
    three = two + ["worker-2"]
    old = ownership.rule_owners(two, 1024)
    by_rule = sum(a != b for a, b in zip(old, ownership.rule_owners(three, 1024)))
    balanced = ownership.balanced_owners(old, three)
    moved = [g for g, (a, b) in enumerate(zip(old, balanced)) if a != b]
    assert by_rule == 511
    assert len(moved) == 341 and all(balanced[g] == "worker-2" for g in moved)


@pytest.mark.parametrize("runs, why", [
    ([[1, "initializer"]], "does not cover groups 0..1023"),
    ([[0, "initializer"], [0, "worker-1"]], "does not cover"),
    ([[0, "initializer"], [1024, "worker-1"]], "does not cover"),
    ([], "does not cover"),
    ([[0, "worker-9"]], "names 'worker-9', which is not among the members"),
    ("initializer", "not a list of"),
    ([[0]], "not a list of"),
])
def test_a_damaged_map_is_refused_naming_what_is_wrong(runs, why):
    with pytest.raises(ownership.OwnershipError, match=why):
        ownership.decode(runs, 1024, ["initializer", "worker-1"])


def test_a_plan_file_of_an_earlier_release_still_means_contiguous_ranges():
    body = {"id": "1", "old": ["initializer"], "new": ["initializer", "worker-1"],
            "key_groups": 8}
    plan = moves.Plan.from_json(body)
    assert plan.owners is None
    assert [plan.owner(g) for g in range(8)] == ownership.rule_owners(plan.new, 8)
    grown = moves.new_plan(["initializer", "worker-1"],
                           ["initializer", "worker-1", "worker-2"], 8)
    again = moves.Plan.from_json(grown.to_json())
    assert again == grown and again.owners is not None


def test_placement_routes_by_a_saved_map():
    owners = ["worker-1", "initializer", "worker-1", "initializer"]
    p = Placement(["initializer", "worker-1"], "worker-1", 4, owners)
    assert p.groups_of(p.me) == [0, 2] and p.owner_names() == owners


def _where(d: str, names: list[str]) -> dict:
    """(state, key) -> the worker whose database holds its partition."""
    where = {}
    for w in names:
        with sqlite3.connect(moves.db_file(d, w)) as conn:
            for state, key in conn.execute("SELECT state, key_repr FROM partitions"):
                assert (state, key) not in where, f"{state} {key} held twice"
                where[(state, key)] = w
    return where


def _rescale(d: str, old: list[str], new: list[str]) -> dict[str, int]:
    saved = moves.membership_of(d, old[0])
    runs = saved.get("owners")
    plan = moves.new_plan(old, new, 1024, old_owners=None if runs is None
                          else ownership.decode(runs, 1024, old))
    moves.write_plan(d, plan)
    return moves.run_plan(d, plan)


def _outputs(c: ClusterDriver) -> Counter:
    got = Counter()
    for drv in c.drivers:
        got += Counter(split_frames(drv.received(0)) + split_frames(drv.received(1)))
    return got


def test_grow_then_shrink_moves_only_what_must_move_and_keeps_every_state(tmp_path):
    """2 -> 3 workers: only the new member takes, about a third of the
    partitions; then worker-1 leaves (3 -> initializer, worker-2): only its
    partitions move.  Each later run routes by the saved map, and every
    key's state is the fold of the whole input."""
    d = str(tmp_path)
    first = [(k, k + 1, 0, 0) for k in range(256)]
    c = ClusterDriver(m, 2, resilience_dir=d)
    c.start_all()
    for i in range(0, len(first), 16):
        c.feed(0, "A", [m.payload_a(*x) for x in first[i:i + 16]])
    c.run_until_quiet()
    got = _outputs(c)
    for drv in c.drivers:
        drv.stop()
    two = ["initializer", "worker-1"]
    three = two + ["worker-2"]
    before = _where(d, two)

    taken = _rescale(d, two, three)
    assert taken["initializer"] == 0 and taken["worker-1"] == 0
    after = _where(d, three)
    moved = {k for k in after if after[k] != before[k]}
    assert all(after[k] == "worker-2" for k in moved)
    assert 0.2 < len(moved) / len(after) < 0.45, (len(moved), len(after))
    saved = moves.membership_of(d, "worker-2")
    assert saved["members"] == three and saved["owners"][0] == [0, "initializer"]

    c3 = ClusterDriver(m, 3, resilience_dir=d)
    c3.start_all()
    second = [(k, 1000, 0, 0) for k in range(256)]
    c3.feed(2, "A", [m.payload_a(*x) for x in second])
    c3.run_until_quiet()
    got += _outputs(c3)
    for drv in c3.drivers:
        p = drv.core.placement
        assert p.owner_names() == ownership.decode(saved["owners"], 1024, three)
        drv.stop()

    left = ["initializer", "worker-2"]
    before = _where(d, three)
    taken = _rescale(d, three, left)
    after = _where(d, left)
    assert {k for k in after if after[k] != before[k]} == \
        {k for k, w in before.items() if w == "worker-1"}
    assert moves.is_retired(d, "worker-1")

    c2 = ClusterDriver(m, left, resilience_dir=d)
    c2.start_all()
    third = [(k, 7, 0, 0) for k in range(256)]
    c2.feed(0, "A", [m.payload_a(*x) for x in third])
    c2.run_until_quiet()
    got += _outputs(c2)
    counts, total, expected = m.reference(first + second + third, [])
    for key, (n, tot) in counts.items():
        s = c2.state_of("counts", key)
        assert (s.n, s.total) == (n, tot), f"key {key}"
    t = c2.state_of("total")
    assert (t.sum, t.count) == tuple(total)
    assert got == Counter(expected)
    for drv in c2.drivers:
        drv.stop()
