"""Moving key groups while the cluster runs (runtime/live_moves.py), in
process: three workers of the model application
(``wallaroo.testing.ClusterDriver``), groups moving between them while
input keeps arriving, with crashes of the giver, the taker and a bystander
before and after every step of a move, against the reference fold of the
input: every key's state on its owner, every output exactly once (a
crash may resend outputs, never make new ones), each partition on one
worker only."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections import Counter

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, note, settings

from wallaroo.recovery import moves
from wallaroo.runtime.live_moves import LiveMoveError
from wallaroo.testing import ClusterDriver, split_frames

from .apps import model_app as m

NAMES = ["initializer", "worker-1", "worker-2"]


def _group(c: ClusterDriver, state: str, key) -> int:
    d0 = next(d for d in c.drivers if d.core is not None)
    return d0.core.placement.group_of(d0.spec.state(state), key)


def _waiting(driver) -> int:
    """Messages the taker holds for a hand-over."""
    core = driver.core
    return sum(len(items) for unit in core.deferred_units
               for _, _, _, items in core.codec.decode(unit))


def _outputs(c: ClusterDriver) -> Counter:
    """Outputs delivered, each (worker, sink, sequence number) once: a
    resend after a crash repeats a number, a duplicate would not."""
    got = Counter()
    for d in c.drivers + c.retired:  # members that left delivered theirs
        for sink, rows in d.delivered_rows.items():
            seen = set()
            for row in rows:
                if row.first_seq in seen:
                    continue
                seen.add(row.first_seq)
                got.update(split_frames(row.data))
    return got


def _check(c: ClusterDriver, a_msgs, b_msgs, d: str) -> None:
    counts, total, expected = m.reference(a_msgs, b_msgs)
    for key, (n, tot) in counts.items():
        s = c.state_of("counts", key)
        assert (s.n, s.total) == (n, tot), f"key {key}"
    t = c.state_of("total")
    assert (t.sum, t.count) == tuple(total)
    got, want = _outputs(c), Counter(expected)
    assert not want - got, f"outputs lost: {want - got}"
    assert not got - want, f"outputs duplicated or made up: {got - want}"
    seen = Counter()
    for drv in c.drivers:
        p = drv.core.placement
        with sqlite3.connect(moves.db_file(d, drv.worker_name)) as conn:
            rows = conn.execute("SELECT state, key_repr, key_group "
                                "FROM partitions").fetchall()
        assert all(p.owners[g] == p.me for _, _, g in rows), drv.worker_name
        seen.update((state, key) for state, key, _ in rows)
    assert all(n == 1 for n in seen.values()), seen


def _feed(c: ClusterDriver, msgs, at: int = 0) -> None:
    for i in range(0, len(msgs), 5):
        c.feed(at, "A", [m.payload_a(*x) for x in msgs[i:i + 5]])


@pytest.fixture
def cluster(tmp_path):
    c = ClusterDriver(m, NAMES, resilience_dir=str(tmp_path), checkpoint_max=2)
    c.start_all()
    return c


def test_groups_move_while_the_others_flow(cluster, tmp_path):
    """Key 5's group moves from its owner to another worker: while the
    taker waits for the hand-over, key 5's messages wait and the other
    keys' are applied; after the take key 5 goes on from its moved state,
    and a restart of every worker rebuilds the same."""
    c = cluster
    a1 = [(k, v, 0, 0) for v in range(1, 9) for k in range(8)]
    _feed(c, a1)
    c.run_until_quiet()
    g = _group(c, "counts", 5)
    giver = c.drivers[0].core.placement.owners[g]
    taker = (giver + 1) % 3
    epoch = 1
    markers = {c.names[i]: c.drivers[i].switch(epoch, [g], c.names[giver],
                                               c.names[taker])
               for i in range(3) if i != giver}
    # the taker routes key 5 to itself, where it waits; others flow
    a2 = [(k, 10 + v, 0, 0) for v in range(3) for k in range(8)]
    _feed(c, a2, at=taker)
    c.run_until_quiet()
    waiting = _waiting(c.drivers[taker])
    assert waiting == 3  # key 5's three messages
    other = next(k for k in range(8) if _group(c, "counts", k) != g
                 and c.drivers[0].core.placement.owners[_group(c, "counts", k)] != taker)
    assert c.state_of("counts", other).n == 11  # applied meanwhile
    # a restart of the taker sets them aside again
    c.crash(taker)
    c.start(taker)
    waiting = _waiting(c.drivers[taker])
    assert waiting == 3
    c.finish_move(epoch, [g], giver, taker, markers)
    owners = [d.core.placement.owners[g] for d in c.drivers]
    assert owners == [taker] * 3
    assert c.state_of("counts", 5).n == 11
    a3 = [(5, 100, 0, 0), (2, 100, 0, 0)]
    _feed(c, a3, at=giver)
    c.run_until_quiet()
    _check(c, a1 + a2 + a3, [], str(tmp_path))
    for i in range(3):
        c.crash(i)
        c.start(i)
    c.run_until_quiet()
    _check(c, a1 + a2 + a3, [], str(tmp_path))


def test_steps_asked_wrongly_are_refused(cluster):
    c = cluster
    c.run_until_quiet()
    g = 0
    giver = c.drivers[0].core.placement.owners[g]
    with pytest.raises(LiveMoveError, match="is the giver of move 1"):
        c.drivers[giver].switch(1, [g], c.names[giver], c.names[(giver + 1) % 3])
    other = (giver + 1) % 3
    with pytest.raises(LiveMoveError, match="does not own them"):
        c.drivers[giver].hand_over(1, [g + 1000 % 1024], c.names[other])
    with pytest.raises(LiveMoveError, match="would give key groups to itself"):
        c.drivers[other].switch(1, [g], c.names[giver], c.names[giver])
    # a step asked again answers the same; the same epoch for another move
    # (two commands at once) is refused
    assert c.drivers[other].switch(1, [g], c.names[giver], c.names[other]) == \
        c.drivers[other].switch(1, [g], c.names[giver], c.names[other])
    with pytest.raises(LiveMoveError, match="move 1 is another move"):
        c.drivers[other].switch(1, [g, g + 1], c.names[giver], c.names[other])


a_message = st.tuples(st.integers(0, 7), st.integers(0, 60), st.integers(0, 1),
                      st.sampled_from([0, 0, 0, 0, 1, 2, 3]))
# (who, when): worker 0-2 crashes before (0) or after (1) the commit of one
# step of the move: the switches (0-1), the hand-over (2), the take (3)
a_crash = st.tuples(st.integers(0, 2), st.integers(0, 3), st.booleans())


@settings(max_examples=100, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(a1=st.lists(a_message, min_size=1, max_size=30),
       a2=st.lists(a_message, max_size=20),
       a3=st.lists(a_message, max_size=20),
       b=st.lists(st.integers(0, 60), max_size=6),
       keys=st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True),
       move_total=st.booleans(),
       taker_shift=st.integers(1, 2), entry=st.integers(0, 2),
       crashes=st.lists(a_crash, max_size=3),
       cache=st.sampled_from([None, None, 1, 3]))
def test_a_live_move_with_crashes_at_any_step_keeps_every_state(
        a1, a2, a3, b, keys, move_total, taker_shift, entry, crashes, cache):
    """Pipeline A's input enters through one worker (``entry``: the
    giver, the taker or a bystander): the order of a key's messages is
    promised along one route only (DESIGN.md §6).  ``cache``: the
    workers' --state-cache (None: every partition in memory); with one,
    moving partitions are handed over from the store and taken into it
    without being loaded."""
    d = tempfile.mkdtemp(prefix="wallaroo-live-move-")
    c = ClusterDriver(m, NAMES, resilience_dir=d, checkpoint_max=2,
                      state_cache=cache)
    try:
        c.start_all()
        _feed(c, a1, at=entry)
        c.feed(2, "B", [m.payload_b(x) for x in b])
        c.run_until_quiet()
        groups = {_group(c, "counts", k) for k in keys}
        if move_total:
            groups.add(_group(c, "total", None))
        owners = c.drivers[0].core.placement.owners
        giver = owners[min(groups)]
        groups = sorted(x for x in groups if owners[x] == giver)
        taker = (giver + taker_shift) % 3
        a, t = c.names[giver], c.names[taker]
        note(f"move {groups} from {a} to {t}, input at {c.names[entry]}; "
             f"crashes {crashes}; state cache {cache}")

        def crash_at(step: int, after: bool):
            for who, when, aft in crashes:
                if when == step and aft == after:
                    yield who

        def restart(i):
            if c.alive(i):
                c.crash(i)
            c.start(i)

        # switches, with input arriving between them
        markers = {}
        # the taker first, as the coordinator asks
        others = sorted((i for i in range(3) if i != giver), key=lambda i: i != taker)
        for n, i in enumerate(others):
            before = list(crash_at(n, False))
            marker = c.drivers[i].switch(1, groups, a, t,
                                         crash_before_commit=i in before)
            if marker is None:  # asked again after its restart
                c.start(i)
                marker = c.drivers[i].switch(1, groups, a, t)
            markers[c.names[i]] = marker
            for j in crash_at(n, True):
                restart(j)
            _feed(c, a2[n::2], at=entry)
            c.run_until_quiet()
        # the hand-over
        for _ in range(20):
            if c.drivers[giver].core.live_hand_over_ready(markers):
                break
            c.run_until_quiet()
        if giver in crash_at(2, False):
            assert not c.drivers[giver].hand_over(1, groups, t,
                                                  crash_before_commit=True)
            c.start(giver)
            c.run_until_quiet()
        c.drivers[giver].hand_over(1, groups, t)
        for j in crash_at(2, True):
            restart(j)
        # the take, in the taker's next batch with the hand-over
        _feed(c, a3, at=entry)
        if entry != taker:  # committed there, on its way to the taker
            c.run_batch(entry)
        c.exchange()
        if taker in crash_at(3, False):
            c.run_batch(taker, crash_at="after_compute")
            c.start(taker)
            if entry == taker:  # its sender sends again what was not committed
                _feed(c, a3, at=entry)
            c.exchange()
        c.run_batch(taker)
        for j in crash_at(3, True):
            restart(j)
        c.run_until_quiet()
        assert 1 in c.drivers[taker].core.taken
        assert all(d.core.placement.owners[x] == taker
                   for d in c.drivers for x in groups)
        fed = a1 + a2[0::2] + a2[1::2] + a3  # in the order they entered
        _check(c, fed, b, d)
        for i in range(3):  # a restart of everyone rebuilds the same
            restart(i)
        c.run_until_quiet()
        _check(c, fed, b, d)
    finally:
        for i in range(3):
            if c.alive(i):
                c.crash(i)
        shutil.rmtree(d, ignore_errors=True)


def test_inspect_tells_held_messages_from_outputs_to_deliver(cluster, tmp_path):
    """``wallaroo recovery inspect`` on a taker waiting for a hand-over:
    the messages it holds (its own channel destination's rows) are named
    so, and are not counted among the outputs and peer batches still to
    deliver; sinks and channels are named too."""
    import io

    from rich.console import Console

    from wallaroo.recovery.inspect import inspect_db, undelivered
    from wallaroo.tools.inspect_view import render
    c = cluster
    _feed(c, [(k, v, 0, 0) for v in range(1, 4) for k in range(8)])
    c.run_until_quiet()
    g = _group(c, "counts", 5)
    giver = c.drivers[0].core.placement.owners[g]
    taker = (giver + 1) % 3
    for i in range(3):
        if i != giver:
            c.drivers[i].switch(1, [g], c.names[giver], c.names[taker])
    _feed(c, [(5, 10 + v, 0, 0) for v in range(3)], at=taker)
    c.run_until_quiet()
    infos = [inspect_db(moves.db_file(str(tmp_path), n)) for n in c.names]
    info = infos[taker]
    kinds = {o["kind"]: o for o in info.outbox}
    assert "held" in kinds and "channel" in kinds, info.outbox
    held = kinds["held"]
    assert held["name"] == "messages held for a live move's hand-over"
    waiting = held["next_seq"] - held["delivered"]
    assert waiting == held["rows"] >= 1  # a row per batch that held some
    everything = sum(o["next_seq"] - o["delivered"] for o in info.outbox)
    assert undelivered(info) == everything - waiting
    names = [o["name"] for i in infos for o in i.outbox]
    assert not [i for i in infos if i is not info
                and any(o["kind"] == "held" for o in i.outbox)]
    assert any(n.startswith("the channel to worker ") for n in names)
    assert any(n.startswith("sink 0 of pipeline 'A'") for n in names), names
    out = io.StringIO()
    render([info], Console(file=out, width=240), None)
    assert "messages held for a live move's hand-over" in out.getvalue()


def test_a_move_with_a_state_cache_loads_none_of_the_moved_partitions(
        tmp_path, monkeypatch):
    """With --state-cache, the giver hands over its stored partitions as
    the bytes it stores them as, and the taker stores them as they came
    (docs/cluster.md, "Moving key groups live"): neither loads a moved
    partition that is not in its memory, the taker's memory stays within
    its cache, and every key's state is right, after the move and after a
    restart of every worker."""
    from wallaroo.runtime.states import StateSpace
    loads = Counter()
    for name in ("_load", "_unstore"):
        real = getattr(StateSpace, name)

        def counted(self, *args, real=real, name=name, **kw):
            loads[name] += 1
            return real(self, *args, **kw)
        monkeypatch.setattr(StateSpace, name, counted)
    cache = 4
    c = ClusterDriver(m, NAMES, resilience_dir=str(tmp_path), state_cache=cache)
    c.start_all()
    a1 = [(k, v, 0, 0) for v in (1, 2) for k in range(200)]
    _feed(c, a1)
    c.run_until_quiet()
    owners = c.drivers[0].core.placement.owners
    giver = Counter(owners[_group(c, "counts", k)]
                    for k in range(200)).most_common(1)[0][0]
    groups = sorted({_group(c, "counts", k) for k in range(200)
                     if owners[_group(c, "counts", k)] == giver})
    moved = [k for k in range(200) if _group(c, "counts", k) in groups]
    taker = (giver + 1) % 3
    kept = c.drivers[giver].core.spaces["counts"].parts
    in_memory = sum(1 for k in moved if k in kept)
    assert len(moved) >= 40 and in_memory <= cache
    loads.clear()
    c.live_move(groups, giver, taker)
    assert loads == Counter(), "a moved partition was loaded"
    counts = c.drivers[taker].core.spaces["counts"]
    assert len(counts.parts) <= cache
    with sqlite3.connect(moves.db_file(str(tmp_path), NAMES[taker])) as conn:
        (stored,) = conn.execute("SELECT count(*) FROM partitions p JOIN "
                                 "snapshots s USING (pid) WHERE p.state='counts'"
                                 ).fetchone()
    assert stored >= len(moved)
    # the moved keys go on from their moved states, on the taker
    a2 = [(k, 7, 0, 0) for k in moved[:10]]
    _feed(c, a2, at=taker)
    c.run_until_quiet()
    assert loads["_load"] >= 10
    _check(c, a1 + a2, [], str(tmp_path))
    for i in range(3):
        c.crash(i)
        c.start(i)
    c.run_until_quiet()
    _check(c, a1 + a2, [], str(tmp_path))
