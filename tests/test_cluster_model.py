"""Several in-process workers of one application against the reference fold
of their input, with crashes of any of them at random points (DESIGN.md §6:
exactly-once channels, no global rollback).

Stream "a" is fed to the initializer and stream "b" to worker-1 by resumable
senders; messages whose key group another worker owns travel there as peer
batches (``wallaroo.testing.ClusterDriver`` simulates the channels: sent
after the sender's commit, from the receiver's durable count, acknowledged
after the receiver's commit).  Any worker crashes between compute and
commit, after commit before release, or mid-replay, and recovers alone from
its own log while the others go on.  When everything has arrived, every
key's state on its owner must equal the fold of the input, and every
expected output must have been delivered (duplicates only from resends
after crashes).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter

import hypothesis.strategies as st
from hypothesis import HealthCheck, note, settings
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

from wallaroo.testing import ClusterDriver, SimulatedCrash, split_frames

from .apps import model_app as m

a_message = st.tuples(st.integers(0, 7), st.integers(0, 60), st.integers(0, 1),
                      st.sampled_from([0, 0, 0, 0, 1, 2, 3]))
WORKERS = 3
ENTRY = {"a": 0, "b": 1}  # the worker each resumable stream is sent to


class ClusterWithCrashes(RuleBasedStateMachine):
    @initialize(a=st.lists(a_message, min_size=1, max_size=50),
                b=st.lists(st.integers(0, 60), max_size=25),
                checkpoint_max=st.integers(1, 4))
    def setup(self, a, b, checkpoint_max):
        self.dir = tempfile.mkdtemp(prefix="wallaroo-cluster-model-")
        self.a, self.b = a, b
        self.c = ClusterDriver(m, WORKERS, resilience_dir=self.dir,
                               checkpoint_interval=1.0,
                               checkpoint_max=checkpoint_max)
        self.c.start_all()
        self.sent = {"a": 0, "b": 0}
        self.crashes = 0

    def teardown(self):
        for d in getattr(getattr(self, "c", None), "drivers", []):
            if d.core is not None:
                d.crash()
        if getattr(self, "dir", None):
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the senders ------------------------------------------------------
    def _feed(self, stream: str, n: int) -> None:
        w = ENTRY[stream]
        if not self.c.alive(w):
            return
        msgs = (self.a if stream == "a" else self.b)[self.sent[stream]:
                                                    self.sent[stream] + n]
        if not msgs:
            return
        if stream == "a":
            self.c.feed(w, "A", [m.payload_a(*x) for x in msgs], stream="a")
        else:
            self.c.feed(w, "B", [m.payload_b(x) for x in msgs], stream="b")
        self.sent[stream] += len(msgs)

    @rule(n=st.integers(1, 12))
    def feed_a(self, n):
        self._feed("a", n)

    @rule(n=st.integers(1, 6))
    def feed_b(self, n):
        self._feed("b", n)

    # -- the workers ------------------------------------------------------
    @rule(i=st.integers(0, WORKERS - 1),
          crash_at=st.sampled_from([None, None, None, "after_compute", "after_commit"]))
    def run_batch(self, i, crash_at):
        if not self.c.alive(i):
            return
        note(f"worker {i}: run_batch(crash_at={crash_at})")
        self.c.run_batch(i, crash_at=crash_at)
        if crash_at is not None:
            self.crashes += 1
            self._restart(i)

    @rule()
    def exchange(self):
        note(f"exchange: {self.c.exchange()} peer batches moved")

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0]))
    def advance_clock(self, seconds):
        for d in self.c.drivers:
            d.advance(seconds)

    @rule(i=st.integers(0, WORKERS - 1), after_rows=st.none() | st.integers(1, 3),
          work_first=st.booleans())
    def crash(self, i, after_rows, work_first):
        """Worker i dies; the others may go on working before it is back."""
        if not self.c.alive(i):
            return
        note(f"worker {i} crashes (then again after {after_rows} replayed rows)")
        self.c.crash(i)
        self.crashes += 1
        if work_first:
            for j in range(WORKERS):
                if j != i:
                    self.c.run_batch(j)
            self.c.exchange()
        self._restart(i, after_rows)

    def _restart(self, i, crash_after_rows=None):
        if crash_after_rows is not None:
            try:
                self.c.start(i, crash_after_replayed_rows=crash_after_rows)
            except SimulatedCrash:
                note("crashed mid-replay")
            else:
                self.c.crash(i)
        report = self.c.start(i)
        note(f"worker {i}: {report.summary()}")
        assert report.replay_mismatches == 0
        # the senders of the streams it owns resume from what it holds
        for stream, w in ENTRY.items():
            if w == i:
                pipeline = "A" if stream == "a" else "B"
                self.sent[stream] = self.c.drivers[i].durable_count(pipeline, stream)

    # -- the checks -----------------------------------------------------
    @invariant()
    def acknowledged_peer_batches_are_durable(self):
        """What a receiver acknowledged it holds durably, whatever crashed
        since (DESIGN.md §4.2 across channels)."""
        d = self.c.drivers
        for s, sender in enumerate(d):
            for r, receiver in enumerate(d):
                if s == r or sender.core is None or receiver.core is None:
                    continue
                acked = sender.core.delivered.get(sender.core.peer_dest(r), 0)
                held = receiver.peer_count(self.c.names[s])
                assert acked <= held, (f"{self.c.names[r]} acknowledged {acked} "
                                       f"batches of {self.c.names[s]} but holds {held}")

    @precondition(lambda self: hasattr(self, "c"))
    @rule()
    def finish_and_compare(self):
        """Send everything left, let every peer batch arrive, compare every
        state with the fold of the input and every output."""
        self._feed("a", len(self.a))
        self._feed("b", len(self.b))
        self.c.run_until_quiet()
        d = self.c.drivers
        assert d[ENTRY["a"]].durable_count("A", "a") == len(self.a)
        assert d[ENTRY["b"]].durable_count("B", "b") == len(self.b)
        counts, total, expected = m.reference(self.a, self.b)
        for key, (n, tot) in counts.items():
            got = self.c.state_of("counts", key)
            assert (got.n, got.total) == (n, tot), f"key {key}"
        t = self.c.state_of("total")
        assert (t.sum, t.count) == tuple(total)
        got = Counter()
        for driver in d:
            got += Counter(split_frames(driver.received(0)) + split_frames(driver.received(1)))
        want = Counter(expected)
        missing = want - got
        assert not missing, f"outputs lost: {missing}"
        unexpected = set(got) - set(want)
        assert not unexpected, f"outputs never produced by the input: {unexpected}"
        if self.crashes == 0:
            assert got == want, "duplicates without any crash"


TestClusterWithCrashes = ClusterWithCrashes.TestCase
TestClusterWithCrashes.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_messages_cross_workers_and_states_are_exact(tmp_path):
    """Without crashes: every key's state on its owner is the fold of its
    messages, whichever worker they arrived at."""
    import random
    rnd = random.Random(5)
    a = [(rnd.randrange(8), rnd.randrange(60), 0, 0) for _ in range(300)]
    c = ClusterDriver(m, 3, resilience_dir=str(tmp_path))
    c.start_all()
    for i in range(0, 300, 30):
        c.feed(i // 30 % 3, "A", [m.payload_a(*x) for x in a[i:i + 30]])
    c.run_until_quiet()
    counts, total, expected = m.reference(a, [])
    for key, (n, tot) in counts.items():
        got = c.state_of("counts", key)
        assert (got.n, got.total) == (n, tot)
    owners = {c.drivers[0].core.placement.owners[
        c.drivers[0].core.placement.group_of(c.drivers[0].spec.state("counts"), k)]
        for k in range(8)}
    assert len(owners) > 1  # the keys really are spread over workers
