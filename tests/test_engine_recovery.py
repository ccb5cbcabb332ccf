"""The whole engine in-process against a reference fold of its input, with
crashes at random points (DESIGN.md §7, contract §4.2-4.4).

A resumable "sender" feeds two streams; the engine crashes between compute
and commit, after commit before release, and in the middle of replay; after
each crash the sender resumes from the engine's durable count, exactly as
`wallaroo send --resumable` does.  At every step the in-memory state must
equal the fold of the inputs processed so far; at the end every expected
output must have been delivered (duplicates only from resends after crashes)
and nothing else.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

from wallaroo.recovery import key_index
from wallaroo.testing import Driver, SimulatedCrash, split_frames

from .apps import model_app as m

a_message = st.tuples(st.integers(0, 7), st.integers(0, 60), st.integers(0, 1),
                      st.sampled_from([0, 0, 0, 0, 1, 2, 3]))


class EngineWithCrashes(RuleBasedStateMachine):
    @initialize(a=st.lists(a_message, min_size=1, max_size=60),
                b=st.lists(st.integers(0, 60), max_size=30),
                checkpoint_max=st.integers(1, 4),
                state_cache=st.sampled_from([None, None, 1, 2, 4]),
                epoch=st.sampled_from([None, 2, 3, 5]),
                save_state_interval=st.sampled_from([0.0, 0.0, 0.5, 2.0]))
    def setup(self, a, b, checkpoint_max, state_cache, epoch, save_state_interval):
        # a small key-index epoch: new partitions merged into the index in
        # steps (two buckets) across commits and crashes, found through it
        self.epoch = (key_index.EPOCH, key_index.BUCKETS)
        if epoch is not None:
            key_index.EPOCH, key_index.BUCKETS = epoch, 2
        self.dir = tempfile.mkdtemp(prefix="wallaroo-model-")
        self.a, self.b = a, b
        self.driver = Driver(m, resilience_dir=self.dir,
                             checkpoint_interval=1.0,
                             checkpoint_max=checkpoint_max,
                             state_cache=state_cache,
                             save_state_interval=save_state_interval)
        self.driver.start()
        self.sent_a = self.sent_b = 0  # the senders' cursors

    def teardown(self):
        if getattr(self, "epoch", None) is not None:
            key_index.EPOCH, key_index.BUCKETS = self.epoch
        if getattr(self, "driver", None) is not None and self.driver.core is not None:
            self.driver.crash()
        if getattr(self, "dir", None):
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the senders ------------------------------------------------------
    @rule(n=st.integers(1, 12))
    def feed_a(self, n):
        msgs = self.a[self.sent_a:self.sent_a + n]
        if msgs:
            self.driver.feed("A", [m.payload_a(*x) for x in msgs], stream="a")
            self.sent_a += len(msgs)

    @rule(n=st.integers(1, 6))
    def feed_b(self, n):
        msgs = self.b[self.sent_b:self.sent_b + n]
        if msgs:
            self.driver.feed("B", [m.payload_b(x) for x in msgs], stream="b")
            self.sent_b += len(msgs)

    # -- the worker -------------------------------------------------------
    @rule(crash_at=st.sampled_from([None, None, None, "after_compute", "after_commit"]))
    def run_batch(self, crash_at):
        note(f"run_batch(crash_at={crash_at})")
        self.driver.run_batch(crash_at=crash_at)
        if crash_at is not None:
            self._restart()
            return
        core = self.driver.core
        if core.state_cache is not None:  # bounded at every batch boundary
            in_memory = sum(len(s.parts) for s in core.spaces.values())
            assert in_memory <= core.state_cache, (in_memory, core.state_cache)
            note(f"{in_memory} partitions in memory, {core.evictions} evictions")

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0]))
    def advance_clock(self, seconds):
        self.driver.advance(seconds)

    @rule(after_rows=st.none() | st.integers(1, 3))
    def crash(self, after_rows):
        note(f"crash (then crash again after {after_rows} replayed rows)")
        self.driver.crash()
        self._restart(after_rows)

    @rule()
    def clean_restart(self):
        self.driver.stop()
        self._restart()

    def _restart(self, crash_after_rows=None):
        if crash_after_rows is not None:
            try:
                self.driver.start(crash_after_replayed_rows=crash_after_rows)
            except SimulatedCrash:
                note("crashed mid-replay")
            else:
                # fewer rows than that to replay: it started; crash it anyway
                self.driver.crash()
        report = self.driver.start()
        note(report.summary())
        assert report.replay_mismatches == 0
        # the senders resume from what the engine holds durably
        self.sent_a = self.driver.durable_count("A", "a")
        self.sent_b = self.driver.durable_count("B", "b")

    # -- checks ---------------------------------------------------------
    @invariant()
    def state_is_fold_of_processed_input(self):
        d = self.driver
        if d is None or d.core is None:
            return
        counts = d.core.stream_counts
        na, nb = counts.get(("A", "a"), 0), counts.get(("B", "b"), 0)
        want_counts, want_total, _ = m.reference(self.a[:na], self.b[:nb])
        for key, (n, total) in want_counts.items():
            got = d.state("counts", key)
            assert (got.n, got.total) == (n, total), f"key {key}"
        t = d.state("total")
        assert (t.sum, t.count) == tuple(want_total)

    @precondition(lambda self: hasattr(self, "driver"))
    @rule()
    def finish_and_compare_outputs(self):
        """Send everything left, drain, and compare all outputs."""
        d = self.driver
        self.feed_a(len(self.a))
        self.feed_b(len(self.b))
        d.run_batch()
        assert d.durable_count("A", "a") == len(self.a)
        assert d.durable_count("B", "b") == len(self.b)
        _, _, expected = m.reference(self.a, self.b)
        got = Counter(split_frames(d.received(0)) + split_frames(d.received(1)))
        want = Counter(expected)
        missing = want - got
        assert not missing, f"outputs lost: {missing}"
        unexpected = set(got) - set(want)
        assert not unexpected, f"outputs never produced by the input: {unexpected}"
        if d.crashes == 0:
            assert got == want, "duplicates without any crash"


TestEngineWithCrashes = EngineWithCrashes.TestCase
TestEngineWithCrashes.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize("crash_at", ["after_compute", "after_commit"])
def test_one_crash_then_resume_is_exact(tmp_path, crash_at):
    a = [(k % 6, v, v % 2, 0) for k, v in zip(range(40), range(1, 41))]
    d = Driver(m, resilience_dir=str(tmp_path))
    d.start()
    d.feed("A", [m.payload_a(*x) for x in a[:25]], stream="a")
    d.run_batch()
    d.feed("A", [m.payload_a(*x) for x in a[25:]], stream="a")
    d.run_batch(crash_at=crash_at)
    d.start()
    n = d.durable_count("A", "a")
    assert n == (25 if crash_at == "after_compute" else 40)
    d.feed("A", [m.payload_a(*x) for x in a[n:]], stream="a")
    d.run_batch()
    counts, total, expected = m.reference(a, [])
    for key, (cnt, tot) in counts.items():
        assert (d.state("counts", key).n, d.state("counts", key).total) == (cnt, tot)
    got = Counter(split_frames(d.received(0)))
    assert not Counter(expected) - got, "outputs lost"
    assert set(got) == set(expected)
    # after_compute: the first batch was delivered, but its delivery position
    # was to be saved by the commit that never happened: it is resent, and
    # nothing else.  after_commit: that commit saved it; nothing is resent.
    resent = Counter(m.reference(a[:25], [])[2]) if crash_at == "after_compute" \
        else Counter()
    assert got - Counter(expected) == resent


def test_a_missing_input_log_row_is_detected_not_replayed_around(tmp_path):
    import sqlite3

    from wallaroo.recovery.errors import CorruptionError
    d = Driver(m, resilience_dir=str(tmp_path), checkpoint_interval=1e9)
    d.start()
    for i in range(3):  # three rows, none snapshotted (save flag 0)
        d.feed("A", [m.payload_a(1, i + 1, 0, 0)], stream="a")
        d.run_batch()
    d.crash()
    conn = sqlite3.connect(tmp_path / "initializer.db")
    assert conn.execute("SELECT count(*) FROM input_log").fetchone()[0] == 3
    conn.execute("DELETE FROM input_log WHERE first_lsn = 1")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptionError, match=r"lsn 1\.\.1 are missing"):
        d.start()


def test_save_state_requests_coalesce_to_one_snapshot_per_interval(tmp_path):
    """--save-state-interval: a partition whose step asked save_state is
    snapshotted once its interval has passed, not in every batch; a crash
    before then replays what came after its last snapshot."""
    from tests.apps.api_helpers import frames
    app = "examples/alphabet_partitioned/alphabet_partitioned.py"
    args = ["--in", "x:0", "--out", "x:0"]
    vote = frames([b"a\x00\x00\x00\x01"])
    d = Driver(app, args=args, resilience_dir=str(tmp_path),
               save_state_interval=1.0, checkpoint_interval=60.0)
    d.start()
    snapshots = []
    for _ in range(5):
        d.feed("alphabet", frames=vote)
        snapshots.append(len(d.run_batch().record.snapshots))
    assert snapshots == [0, 0, 0, 0, 0]  # asked five times, not yet due
    d.advance(1.0)
    d.feed("alphabet", frames=vote)
    assert len(d.run_batch().record.snapshots) == 1  # once, with all six votes
    d.feed("alphabet", frames=vote)
    assert len(d.run_batch().record.snapshots) == 0
    d.crash()
    report = d.start()
    assert report.replayed_messages == 1  # only the vote after the snapshot
    assert d.state("letter state", "a").votes == 7

    every = Driver(app, args=args, resilience_dir=str(tmp_path / "every"))
    every.start()
    for _ in range(3):
        every.feed("alphabet", frames=vote)
        assert len(every.run_batch().record.snapshots) == 1
