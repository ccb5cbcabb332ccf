"""Moving key groups between in-process workers' databases (DESIGN.md §6
"Rescaling"), with a crash at every step of a move, against the reference
fold of the input.

N workers (``wallaroo.testing.ClusterDriver``) take the first part of the
input, some crashing and recovering as they go, and stop as the
supervisor's drain stops them.  The plan from N to M members then runs and
crashes before one of its steps or before one of their commits (hypothesis
picks which); a second run of the plan, as the next supervisor does,
finishes it.  M workers then take the rest of the input.  Every key's state
on its new owner must be the fold of the whole input, every expected
output delivered, nothing produced that the input does not make, and the
workers that left must hold no partition.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections import Counter

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, note, settings

from wallaroo.recovery import moves
from wallaroo.testing import ClusterDriver, SimulatedCrash, split_frames

from .apps import model_app as m

a_message = st.tuples(st.integers(0, 7), st.integers(0, 60), st.integers(0, 1),
                      st.sampled_from([0, 0, 0, 0, 1, 2, 3]))


def _outputs(c: ClusterDriver) -> Counter:
    got = Counter()
    for d in c.drivers:
        got += Counter(split_frames(d.received(0)) + split_frames(d.received(1)))
    return got


def _feed(c: ClusterDriver, a, b) -> None:
    # one entry for pipeline A: messages of one key arriving at two workers
    # take two routes, whose order nothing promises (DESIGN.md §6)
    n = len(c.drivers)
    for i in range(0, len(a), 7):
        c.feed(0, "A", [m.payload_a(*x) for x in a[i:i + 7]])
    if b:
        c.feed(n - 1, "B", [m.payload_b(x) for x in b])


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(old=st.integers(1, 3), new=st.integers(1, 4),
       a1=st.lists(a_message, min_size=1, max_size=40),
       b1=st.lists(st.integers(0, 60), max_size=10),
       a2=st.lists(a_message, max_size=30),
       crash_worker=st.none() | st.integers(0, 2),
       crashes=st.lists(st.floats(0, 1, exclude_max=True), max_size=2))
def test_moves_with_a_crash_at_any_step_keep_every_state(
        old, new, a1, b1, a2, crash_worker, crashes):
    if old == new:
        new += 1
    d = tempfile.mkdtemp(prefix="wallaroo-rescale-model-")
    try:
        c = ClusterDriver(m, old, resilience_dir=d, checkpoint_max=2)
        c.start_all()
        _feed(c, a1, b1)
        if crash_worker is not None and crash_worker < old:
            # a worker dies with its batch committed but not released
            c.run_batch(crash_worker, crash_at="after_commit")
            c.start(crash_worker)
        c.run_until_quiet()
        before = _outputs(c)
        for drv in c.drivers:  # the drain's stop: every partition checkpointed
            drv.stop()
        for name in c.names:
            assert moves.check_quiet(d, name) == [], name

        plan = moves.new_plan(c.names, ClusterDriver(m, new, resilience_dir=d).names,
                              1024)
        moves.write_plan(d, plan)
        # steps: each take, give and membership, and each one's commit; finish
        total = 2 * (len(plan.new) + len(plan.old)
                     + len(set(plan.old) | set(plan.new))) + 1
        for frac in crashes:  # each run of the plan crashes once, then the last ends it
            steps = []

            def before_step(step, at=int(frac * total)):
                steps.append(step)
                if len(steps) - 1 == at:
                    raise SimulatedCrash(step)
            again = moves.read_plan(d)
            if again is None:
                break
            assert again == plan
            try:
                moves.run_plan(d, again, before=before_step)
            except SimulatedCrash as e:
                note(f"crashed before {e}")
        again = moves.read_plan(d)
        if again is not None:
            moves.run_plan(d, again)
        assert moves.read_plan(d) is None

        c2 = ClusterDriver(m, new, resilience_dir=d, checkpoint_max=2)
        c2.start_all()
        _feed(c2, a2, [])
        c2.run_until_quiet()
        counts, total, expected = m.reference(a1 + a2, b1)
        for key, (n, tot) in counts.items():
            got = c2.state_of("counts", key)
            assert (got.n, got.total) == (n, tot), f"key {key}"
        t = c2.state_of("total")
        assert (t.sum, t.count) == tuple(total)
        got = before + _outputs(c2)
        want = Counter(expected)
        assert not want - got, f"outputs lost: {want - got}"
        assert not set(got) - set(want), "outputs the input never made"
        if crash_worker is None or crash_worker >= old:
            assert got == want, "duplicates without a crash"
        # a key's partition lives once, on one worker: its owner
        seen = Counter()
        for drv in c2.drivers:
            p = drv.core.placement
            with sqlite3.connect(moves.db_file(d, drv.worker_name)) as conn:
                rows = conn.execute("SELECT state, key_repr, key_group "
                                    "FROM partitions").fetchall()
            assert all(p.owners[g] == p.me for _, _, g in rows), drv.worker_name
            seen.update((state, key) for state, key, _ in rows)
        assert all(n == 1 for n in seen.values()), seen
        for name in plan.old:
            if name not in plan.new:
                assert moves.is_retired(d, name)
        for drv in c2.drivers:
            drv.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _one_worker_of(tmp_path, keys: int) -> str:
    """A stopped one-worker directory holding ``keys`` partitions."""
    d = str(tmp_path)
    c = ClusterDriver(m, 1, resilience_dir=d)
    c.start_all()
    _feed(c, [(k, 5, 0, 0) for k in range(keys)], [])
    c.run_until_quiet()
    c.drivers[0].stop()
    return d


def _grow_plan(d: str) -> moves.Plan:
    plan = moves.new_plan(["initializer"], ["initializer", "worker-1"], 1024)
    moves.write_plan(d, plan)
    return plan


def test_a_damaged_row_of_a_giver_is_refused_not_copied(tmp_path):
    """DESIGN.md §4.7 holds across a move: a snapshot whose bytes no longer
    match its checksum stops the take, naming the giver's file; nothing is
    copied under a fresh checksum, and the giver keeps its rows."""
    from wallaroo.recovery.errors import CorruptionError
    d = _one_worker_of(tmp_path, keys=8)
    with sqlite3.connect(moves.db_file(d, "initializer")) as conn:
        conn.execute("UPDATE snapshots SET state = CAST(x'00' || state AS BLOB)")
    plan = _grow_plan(d)
    with pytest.raises(CorruptionError, match="initializer.db.*failed its checksum"):
        for w in ("initializer", "worker-1"):
            moves.take(d, w, plan)
    with sqlite3.connect(moves.db_file(d, "worker-1")) as conn:
        assert conn.execute("SELECT count(*) FROM partitions").fetchone() == (0,)


@pytest.mark.parametrize("attached", [moves.ATTACH_MAX, 0])
def test_a_take_copies_split_snapshots_whole(tmp_path, monkeypatch, attached):
    """Snapshots stored in parts, and snapshots larger than the taker's
    part size, move whole (the take copies most rows with SQL statements
    and these row by row; a giver past the ``attached`` first is read row
    by row): the taker's every state is the fold of the input."""
    from wallaroo.recovery import sqlite_store
    monkeypatch.setattr(sqlite_store, "PART_BYTES", 16)
    monkeypatch.setattr(moves, "ATTACH_MAX", attached)
    d = _one_worker_of(tmp_path, keys=40)
    with sqlite3.connect(moves.db_file(d, "initializer")) as conn:
        (split,) = conn.execute("SELECT count(*) FROM snapshots WHERE parts > 0"
                                ).fetchone()
    assert split > 0
    moves.run_plan(d, _grow_plan(d))
    with sqlite3.connect(moves.db_file(d, "worker-1")) as conn:
        (taken,) = conn.execute("SELECT count(*) FROM snapshots WHERE parts > 0"
                                ).fetchone()
    assert taken > 0
    c = ClusterDriver(m, 2, resilience_dir=d)
    c.start_all()
    counts, _, _ = m.reference([(k, 5, 0, 0) for k in range(40)], [])
    for key, (n, total) in counts.items():
        s = c.state_of("counts", key)
        assert (s.n, s.total) == (n, total), f"key {key}"
    for drv in c.drivers:
        drv.stop()


def test_a_take_reports_its_progress(tmp_path, monkeypatch, caplog):
    """A long take says how far it has come: ``progress(giver, n)`` after
    every FLUSH_ROWS partitions copied and at the giver's end (counts only
    grow, the last is what the take returns); ``TakeProgress`` logs that,
    at most every few seconds, and keeps a short text for status."""
    import logging
    d = _one_worker_of(tmp_path, keys=40)
    plan = _grow_plan(d)
    monkeypatch.setattr(moves, "FLUSH_ROWS", 4)
    calls = []
    n = moves.take(d, "worker-1", plan, progress=lambda g, k: calls.append((g, k)))
    counts = [k for g, k in calls if g == "initializer"]
    assert len(counts) == len(calls) >= n // 4 and n > 4
    assert counts == sorted(counts) and counts[-1] == n
    progress = moves.TakeProgress(logging.getLogger("wallaroo"), "worker-1",
                                  plan.id, every=0)
    with caplog.at_level(logging.INFO, logger="wallaroo"):
        progress("initializer", 4096)
    assert f"rescale {plan.id}: worker-1 taking from initializer: 4,096 " \
           f"partitions so far" in caplog.text
    assert progress.step == "take: 4,096 partitions from initializer"
