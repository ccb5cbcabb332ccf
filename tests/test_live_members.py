"""A running cluster taking new members (runtime/live_members.py), in
process (``wallaroo.testing.ClusterDriver``): the membership grows while
input keeps arriving, nothing moves by itself, live moves then give the
new member key groups; workers that crash before the grown membership's
commit, or are down during the grow, take it when they start.  Checked
against the reference fold of the input: every key's state on its owner,
every output exactly once, each partition on one worker only."""

from __future__ import annotations

import shutil
import tempfile

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, note, settings

from wallaroo.recovery import ownership
from wallaroo.runtime.live_moves import LiveMoveError
from wallaroo.testing import ClusterDriver

from .apps import model_app as m
from .test_live_moves import _check, _feed, _group

NAMES = ["initializer", "worker-1"]


def _msgs(first: int, n: int, keys: int = 40) -> list[tuple]:
    return [(k, first + v, 0, 0) for v in range(n) for k in range(keys)]


def test_a_cluster_grows_while_input_flows_and_moves_groups_to_the_new_member(tmp_path):
    c = ClusterDriver(m, NAMES, resilience_dir=str(tmp_path), checkpoint_max=5)
    c.start_all()
    a1 = _msgs(1, 3)
    _feed(c, a1)
    c.run_until_quiet()
    owners_before = list(c.drivers[0].core.placement.owners)
    counted = [{(p, st): n[0] for p, st, n in d.core.step_counts} for d in c.drivers]
    assert any(n for count in counted for n in count.values())
    (new,) = c.grow()
    # the routing was compiled again; the steps' counters (metrics) go on
    for d, count in zip(c.drivers, counted):
        assert {(p, st): n[0] for p, st, n in d.core.step_counts} == count
    assert c.names == ["initializer", "worker-1", "worker-2"]
    for d in c.drivers:  # the same map everywhere, the new member owning nothing
        p = d.core.placement
        assert p.members == c.names and p.owners == owners_before
    assert not c.drivers[new].core.placement.groups_of(new)
    # input through the new member too: it routes every key to its owner
    # (one key's messages entering through two workers take two routes,
    # whose order is not promised: one entry at a time)
    a2 = _msgs(10, 2)
    _feed(c, a2[: len(a2) // 2], at=new)
    c.run_until_quiet()
    _feed(c, a2[len(a2) // 2:], at=0)
    c.run_until_quiet()
    _check(c, a1 + a2, [], str(tmp_path))
    # live moves give it its share, as a rescale would plan it
    target = ownership.balanced_owners(
        [c.names[o] for o in owners_before], c.names)
    for giver in (0, 1):
        groups = [g for g, o in enumerate(target)
                  if o == c.names[new] and owners_before[g] == giver]
        for i in range(0, len(groups), 300):
            c.live_move(groups[i:i + 300], giver, new)
    p = c.drivers[new].core.placement
    assert [c.names[o] for o in p.owners] == target
    a3 = _msgs(20, 2)
    _feed(c, a3, at=1)
    c.run_until_quiet()
    assert any(c.drivers[new].core.spaces["counts"].parts)
    _check(c, a1 + a2 + a3, [], str(tmp_path))
    for i in range(3):  # a restart of everyone rebuilds the same
        c.crash(i)
        c.start(i)
    c.run_until_quiet()
    _check(c, a1 + a2 + a3, [], str(tmp_path))


def test_growing_is_refused_while_a_move_waits_and_for_members_out_of_order(tmp_path):
    c = ClusterDriver(m, NAMES, resilience_dir=str(tmp_path))
    c.start_all()
    core = c.drivers[0].core
    with pytest.raises(LiveMoveError, match="members join at the end"):
        core.live_add_members(["worker-1", "initializer", "worker-2"])
    with pytest.raises(LiveMoveError, match="one-host cluster's members have no "
                                            "fixed addresses"):
        core.live_add_members(c.names + ["worker-2"], {"worker-2": {
            "control": "10.0.0.3:7100", "data": "10.0.0.3:7101"}})
    g = _group(c, "counts", 3)
    giver = core.placement.owners[g]
    c.drivers[1 - giver].switch(1, [g], c.names[giver], c.names[1 - giver])
    with pytest.raises(LiveMoveError, match="waits for the hand-over"):
        c.drivers[1 - giver].core.live_add_members(c.names + ["worker-2"])


a_crash = st.sampled_from(["none", "before commit", "down during the grow"])


@settings(max_examples=40, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(a1=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60),
                             st.integers(0, 1), st.sampled_from([0, 0, 0, 1, 2, 3])),
                   min_size=1, max_size=30),
       a2=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60),
                             st.integers(0, 1), st.just(0)), max_size=30),
       crashes=st.tuples(a_crash, a_crash), entry=st.integers(0, 2),
       moved=st.integers(0, 3))
def test_a_grow_with_crashes_keeps_every_state(a1, a2, crashes, entry, moved):
    """Each old worker takes the new member normally, crashes before that
    commit, or is down during the grow; each comes back with the grown
    membership.  Then groups move to the new member, input enters through
    any worker, and everything matches the reference fold, before and
    after a restart of everyone."""
    d = tempfile.mkdtemp(prefix="wallaroo-live-members-")
    c = ClusterDriver(m, NAMES, resilience_dir=d, checkpoint_max=2)
    try:
        c.start_all()
        _feed(c, a1, at=entry % 2)
        c.run_until_quiet()
        note(f"crashes {crashes}, entry {entry}, moved {moved}")
        for i, how in enumerate(crashes):
            if how == "down during the grow":
                c.crash(i)
        if all(how != "none" for how in crashes):
            crashes = ("none", crashes[1])  # one must take it to pass it on
            if not c.alive(0):
                c.start(0)
        (new,) = c.grow(crash_before_commit=tuple(
            i for i, how in enumerate(crashes) if how == "before commit"))
        for i in range(2):
            if not c.alive(i):
                c.start(i)
        for dr in c.drivers:
            assert dr.core.placement.members == c.names
        keys = sorted({x[0] for x in a1 + a2})[:moved]
        groups = sorted({_group(c, "counts", k) for k in keys})
        owners = c.drivers[0].core.placement.owners
        for giver in (0, 1):
            gs = [g for g in groups if owners[g] == giver]
            if gs:
                c.live_move(gs, giver, new)
        _feed(c, a2, at=entry)
        c.run_until_quiet()
        _check(c, a1 + a2, [], d)
        for i in range(3):
            c.crash(i)
            c.start(i)
        c.run_until_quiet()
        _check(c, a1 + a2, [], d)
    finally:
        for i in range(len(c.drivers)):
            if c.alive(i):
                c.crash(i)
        shutil.rmtree(d, ignore_errors=True)


def _give_back(c: ClusterDriver, leaving: int) -> None:
    """Live moves give the groups of member ``leaving`` to the others, as
    a rescale to the members before it would plan them."""
    owners = [c.names[o] for o in c.drivers[0].core.placement.owners]
    target = ownership.balanced_owners(owners, c.names[:leaving])
    for taker in range(leaving):
        groups = [g for g, o in enumerate(target)
                  if o == c.names[taker] and owners[g] == c.names[leaving]]
        for i in range(0, len(groups), 300):
            c.live_move(groups[i:i + 300], leaving, taker)


def test_a_member_that_joined_leaves_while_input_flows(tmp_path):
    """Grow 2 -> 3, give the new member its share, then take it back and
    let the member leave: its channels drained, the others drop it in one
    commit each, and nothing of the fold is lost or doubled, before and
    after a restart of everyone (which takes the short membership)."""
    c = ClusterDriver(m, NAMES, resilience_dir=str(tmp_path), checkpoint_max=5)
    c.start_all()
    a1 = _msgs(1, 3)
    _feed(c, a1)
    c.run_until_quiet()
    (new,) = c.grow()
    owners = [c.names[o] for o in c.drivers[0].core.placement.owners]
    target = ownership.balanced_owners(owners, c.names)
    for giver in (0, 1):
        groups = [g for g, o in enumerate(target)
                  if o == c.names[new] and owners[g] == c.names[giver]]
        c.live_move(groups, giver, new)
    a2 = _msgs(10, 2)
    _feed(c, a2, at=new)
    c.run_until_quiet()
    # it cannot leave while it owns key groups
    with pytest.raises(LiveMoveError, match="still own key groups"):
        c.drivers[0].core.live_remove_members(NAMES)
    _give_back(c, new)
    a3 = _msgs(20, 2)
    _feed(c, a3[: len(a3) // 2], at=new)  # still an entry until it leaves
    c.run_until_quiet()
    assert c.shrink() == ["worker-2"]
    for d in c.drivers:
        assert d.core.placement.members == NAMES
        assert d.core.destinations == len(d.spec.sinks) + 2
    _feed(c, a3[len(a3) // 2:], at=1)
    c.run_until_quiet()
    _check(c, a1 + a2 + a3, [], str(tmp_path))
    for i in range(2):
        c.crash(i)
        c.start(i)
    c.run_until_quiet()
    _check(c, a1 + a2 + a3, [], str(tmp_path))
    # and it grows again, under a new name: the new channel, in the freed
    # destination's place, starts empty, and groups move to the new member
    (again,) = c.grow()
    assert c.names[again] == "worker-3"
    owners = [c.names[o] for o in c.drivers[0].core.placement.owners]
    target = ownership.balanced_owners(owners, c.names)
    for giver in (0, 1):
        c.live_move([g for g, o in enumerate(target) if o == "worker-3"
                     and owners[g] == c.names[giver]], giver, again)
    a4 = _msgs(30, 1)
    _feed(c, a4, at=again)
    c.run_until_quiet()
    _check(c, a1 + a2 + a3 + a4, [], str(tmp_path))
    for i in range(3):
        c.crash(i)
        c.start(i)
    c.run_until_quiet()
    _check(c, a1 + a2 + a3 + a4, [], str(tmp_path))


def test_an_acknowledgement_noted_but_not_committed_is_saved_with_the_drop(tmp_path):
    """A worker noted the leaving member's last acknowledgement but had not
    committed it when it drops the member: the drop's commit saves it under
    the member's sink id, and no position of the dropped destination stays
    behind in the store to be written under the next member's id."""
    c = ClusterDriver(m, NAMES, resilience_dir=str(tmp_path), checkpoint_max=5)
    c.start_all()
    (new,) = c.grow()
    g = _group(c, "counts", 3)
    c.live_move([g], c.drivers[0].core.placement.owners[g], new)
    _feed(c, _msgs(1, 2, keys=5))
    c.run_until_quiet()
    _give_back(c, new)
    x = c.drivers[0].core
    d = x.peer_dest(new)
    assert x.delivered[d] > 0  # the initializer sent it batches
    c.run_until_quiet()
    x._delivered_pending[d] = x.delivered[d]  # as if its ack came just now
    c.drivers[0].remove_members(NAMES)  # the initializer drops it first
    c.shrink()
    store = c.drivers[0].store
    assert all(i < x.destinations for i in store._delivered), store._delivered
    (again,) = c.grow()
    c.live_move([g], c.drivers[0].core.placement.owners[g], again)
    _feed(c, _msgs(10, 2, keys=5))
    c.run_until_quiet()
    for i in range(3):
        c.crash(i)
        c.start(i)
    c.run_until_quiet()
    _check(c, _msgs(1, 2, keys=5) + _msgs(10, 2, keys=5), [], str(tmp_path))


def test_a_member_that_left_does_not_join_again_under_its_name(tmp_path):
    """Its channels' positions stay in the others' databases, under its
    name's sink id: a live grow takes names never used in the cluster."""
    c = ClusterDriver(m, NAMES, resilience_dir=str(tmp_path))
    c.start_all()
    c.grow()
    c.shrink()
    core = c.drivers[0].core
    with pytest.raises(LiveMoveError, match="takes a name never used"):
        core.live_add_members(NAMES + ["worker-2"])
    (again,) = c.grow()
    assert c.names[again] == "worker-3"


def test_shrinking_live_is_refused_for_members_that_did_not_join_live(tmp_path):
    c = ClusterDriver(m, NAMES + ["worker-2"], resilience_dir=str(tmp_path))
    c.start_all()
    core = c.drivers[0].core
    with pytest.raises(LiveMoveError, match="did not join while the cluster ran"):
        core.live_remove_members(NAMES)
    with pytest.raises(LiveMoveError, match="less its last ones"):
        core.live_remove_members(["initializer", "worker-2"])
    with pytest.raises(LiveMoveError, match="is one of those leaving"):
        c.drivers[2].core.live_remove_members(NAMES)


a_shrink_crash = st.sampled_from(["none", "before commit", "after commit",
                                  "down during the shrink"])


@settings(max_examples=30, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(a1=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60),
                             st.integers(0, 1), st.sampled_from([0, 0, 0, 1, 2, 3])),
                   min_size=1, max_size=30),
       a2=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60),
                             st.integers(0, 1), st.just(0)), max_size=30),
       crashes=st.tuples(a_shrink_crash, a_shrink_crash), entry=st.integers(0, 2))
def test_a_shrink_with_crashes_keeps_every_state(a1, a2, crashes, entry):
    """A member that joined takes groups and input, gives them back and
    leaves; each remaining worker drops it normally, crashes before that
    commit, or is down during it, and comes back with the short
    membership.  Everything matches the reference fold, before and after
    a restart of everyone.  (Or crashes just after that commit, and starts
    again with the short membership, as the supervisor starts it.)"""
    d = tempfile.mkdtemp(prefix="wallaroo-live-shrink-")
    c = ClusterDriver(m, NAMES, resilience_dir=d, checkpoint_max=2)
    try:
        c.start_all()
        (new,) = c.grow()
        keys = sorted({x[0] for x in a1})[:3]
        groups = sorted({_group(c, "counts", k) for k in keys})
        owners = c.drivers[0].core.placement.owners
        for giver in (0, 1):
            gs = [g for g in groups if owners[g] == giver]
            if gs:
                c.live_move(gs, giver, new)
        _feed(c, a1, at=entry)
        c.run_until_quiet()
        _give_back(c, new)
        note(f"crashes {crashes}, entry {entry}")
        for i, how in enumerate(crashes):
            if how == "down during the shrink":
                c.crash(i)
        c.shrink(crash_before_commit=tuple(
            i for i, how in enumerate(crashes) if how == "before commit"),
                 crash_after_commit=tuple(
            i for i, how in enumerate(crashes) if how == "after commit"))
        for i in range(2):
            if not c.alive(i):
                c.start(i)
        for dr in c.drivers:
            assert dr.core.placement.members == NAMES
        _feed(c, a2, at=entry % 2)
        c.run_until_quiet()
        _check(c, a1 + a2, [], d)
        for i in range(2):
            c.crash(i)
            c.start(i)
        c.run_until_quiet()
        _check(c, a1 + a2, [], d)
    finally:
        for i in range(len(c.drivers)):
            if c.alive(i):
                c.crash(i)
        shutil.rmtree(d, ignore_errors=True)
