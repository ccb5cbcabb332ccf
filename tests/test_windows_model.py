"""Windows against a reference model (``tests/windows_model.py``), with an
injected ingest clock: tumbling and sliding range windows, a delay, count
windows with their quiet flush; several keys; ticks of an idle worker; and
crashes (before or after a commit) with recovery, on one worker; on three
workers, keys routed to their owners.  After every committed batch the
outputs delivered so far, each exactly once, are exactly the windows the
watermark has closed."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from wallaroo.testing import ClusterDriver, Driver

from tests.windows_model import Model, by_key, exactly_once

APP = os.path.join(os.path.dirname(__file__), "apps", "windows_app.py")
KINDS = ("tumbling", "sliding", "delayed", "count")
T0 = 1_000 * 10**9 + 123

steps = st.lists(st.tuples(
    st.integers(0, 4000),  # ms the clock moves before the step
    st.one_of(st.just("tick"),
              st.lists(st.sampled_from("abcd"), min_size=1, max_size=6)),
    st.sampled_from([None, None, None, "after_compute", "after_commit",
                     "restart"]),
    st.booleans(),  # a checkpoint is due (else the replay tail grows)
), min_size=1, max_size=25)


def frames(msgs):
    return [f"{k},{i}".encode() for k, i in msgs]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps, rewinds=st.lists(st.integers(0, 30000), max_size=6))
def test_one_worker_with_crashes_matches_the_model(kind, script, rewinds):
    """Restarts may also come back on a clock that is behind (``rewinds``,
    ms): messages whose windows have all fired are then late."""
    now = [T0]
    d = Driver(APP, args=["--in", "x:0", "--out", "x:0", f"WINDOWS={kind}"],
               resilience_dir=tempfile.mkdtemp(), checkpoint_interval=1.0,
               event_clock=lambda: now[0])
    d.start()
    model = Model(kind)
    unsent: list[tuple[str, str]] = []  # a resumable sender resends these
    next_id = 0
    rewinds = list(rewinds)
    for ms, what, crash, checkpoint in script:
        now[0] += ms * 10**6
        if what == "tick":
            d.tick()
        else:
            for k in what:
                unsent.append((k, str(next_id)))
                next_id += 1
        if unsent:
            d.feed("ids", frames(unsent))
        crash_at = crash if crash in ("after_compute", "after_commit") else None
        if checkpoint:  # checkpoints come due by the driver's clock
            d.advance(1.0)
        t = max(d.core.clock_ns, now[0])  # the batch's ingest time
        batch = d.run_batch(crash_at=crash_at)
        if crash_at != "after_compute":
            model.row(unsent, t)
            unsent = []
        if crash is not None:
            if crash == "restart":
                d.stop()  # a polite stop: every partition checkpointed
            elif batch is not None:
                d.crash()
            if rewinds:  # back on a clock that is behind (it counts once
                now[0] -= rewinds.pop() * 10**6  # nothing is left to replay)
            d.start()
        note(f"t={t - T0} {what} {crash} checkpoint={checkpoint}")
        got = by_key(exactly_once(d.delivered_rows[0]))
        assert got == model.out
    # the end: the clock moves past every window and an idle worker ticks
    now[0] += 60 * 10**9
    d.feed("ids", frames(unsent))
    t = max(d.core.clock_ns, now[0])
    d.run_batch()
    model.row(unsent, t)
    now[0] += 60 * 10**9
    d.tick()
    t = max(d.core.clock_ns, now[0])
    d.run_batch()
    model.row([], t)
    assert by_key(exactly_once(d.delivered_rows[0])) == model.out
    event("some messages late" if model.late else "no message late")
    if not model.count:  # each partition counts its late messages
        late = sum(st.late for st in d.core.spaces["ids windows"].parts.values())
        assert late == model.late


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(st.tuples(
    st.integers(0, 4000), st.integers(0, 2),
    st.one_of(st.just("tick"),
              st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6))),
    min_size=1, max_size=15))
def test_three_workers_match_the_model(kind, script):
    now = [T0]
    c = ClusterDriver(APP, 3, resilience_dir=tempfile.mkdtemp(),
                      args=["--in", "x:0", "--out", "x:0", f"WINDOWS={kind}"],
                      event_clock=lambda: now[0])
    c.start_all()
    model = Model(kind)
    next_id = 0

    def outputs():
        lines = []
        for d in c.drivers:
            lines += exactly_once(d.delivered_rows[0])
        return by_key(lines)

    for ms, worker, what in script:
        now[0] += ms * 10**6
        if what == "tick":  # every worker: each one's watermark is now
            for d in c.drivers:
                d.tick()
            c.run_until_quiet()
            model.row([], now[0])
            assert outputs() == model.out
            continue
        msgs = []
        for k in what:
            msgs.append((k, str(next_id)))
            next_id += 1
        c.feed(worker, "ids", frames(msgs))
        c.run_until_quiet()  # every batch of the step at this time
        model.row(msgs, now[0])
    now[0] += 60 * 10**9
    for d in c.drivers:
        d.tick()
    c.run_until_quiet()
    model.row([], now[0])
    assert outputs() == model.out
    owners = {d.core.name for d in c.drivers if d.delivered_rows[0]}
    note(f"outputs from {sorted(owners)}")


@pytest.mark.parametrize("kind", KINDS)
def test_open_windows_move_with_their_keys_in_a_rescale(kind):
    """One worker holds open windows of eight keys; the cluster rescales to
    three (the offline move of docs/cluster.md, "Rescaling"); the new owners
    fire them with every message they held, each window once."""
    from wallaroo.recovery import moves
    now = [T0]
    d = tempfile.mkdtemp(prefix="wallaroo-windows-rescale-")
    args = ["--in", "x:0", "--out", "x:0", f"WINDOWS={kind}"]
    model = Model(kind)
    one = ClusterDriver(APP, 1, resilience_dir=d, args=args,
                        event_clock=lambda: now[0])
    one.start_all()
    ids = iter(range(10**6))
    for step in range(3):
        msgs = [(k, str(next(ids))) for k in "abcdefgh" for _ in range(step + 1)]
        one.feed(0, "ids", frames(msgs))
        one.run_until_quiet()
        model.row(msgs, now[0])
        now[0] += 1_500 * 10**6
    rows = {"initializer": list(one.drivers[0].delivered_rows[0])}
    one.drivers[0].stop()  # the drain's stop: every partition checkpointed
    assert moves.check_quiet(d, "initializer") == []
    three = ClusterDriver(APP, 3, resilience_dir=d, args=args,
                          event_clock=lambda: now[0])
    plan = moves.new_plan(["initializer"], three.names, 1024)
    moves.write_plan(d, plan)
    moves.run_plan(d, plan)
    three.start_all()
    msgs = [(k, str(next(ids))) for k in "abcdefgh"]
    three.feed(1, "ids", frames(msgs))
    three.run_until_quiet()
    model.row(msgs, now[0])
    now[0] += 60 * 10**9
    for drv in three.drivers:
        drv.tick()
    three.run_until_quiet()
    lines = []
    for name, drv in zip(three.names, three.drivers):
        lines += exactly_once(rows.get(name, []) + drv.delivered_rows[0])
    owners = [n for n, drv in zip(three.names, three.drivers)
              if drv.core.spaces["ids windows"].parts]
    assert len(owners) >= 2  # the keys did spread
    model.row([], now[0])
    assert by_key(lines) == model.out
