"""State at scale (DESIGN.md §4, "State at scale"): a restarting worker
loads partitions from the store when a message (or replay) needs them,
checks every class its snapshots refer to before it is ready, checks each
snapshot when it loads it, scrubs the rest in the background, and with
``--state-cache N`` keeps at most N partitions in memory."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess

import pytest

from wallaroo.recovery.errors import CorruptionError
from wallaroo.testing import Driver, split_frames

from .apps import keyed_counts
from .conftest import REPO, WAIT, WALLAROO, start_receiver, start_worker

APP = str(REPO / "tests" / "apps" / "keyed_counts.py")
ARGS = ["--in", "127.0.0.1:0", "--out", "127.0.0.1:0"]


def feed(d: Driver, keys) -> list[bytes]:
    before = len(split_frames(d.received(0)))
    d.feed("keys", frames=b"".join(keyed_counts.frame(k) for k in keys))
    d.run_batch()
    return split_frames(d.received(0))[before:]


def checkpointed(tmp_path, keys, **kw) -> Driver:
    """A worker that counted ``keys`` once each, every partition
    snapshotted (a clean stop), then restarted."""
    d = Driver(APP, args=ARGS, resilience_dir=str(tmp_path / "state"), checkpoint_max=10 ** 6,
               **kw)
    d.start()
    feed(d, keys)
    d.stop()
    d.start()
    return d


def in_memory(d: Driver) -> int:
    return sum(len(s.parts) for s in d.core.spaces.values())


def test_a_restart_loads_no_partition_until_a_message_needs_it(tmp_path):
    keys = [f"k{i}" for i in range(3000)]
    d = checkpointed(tmp_path, keys)
    report = d.reports[-1]
    assert report.partitions == 3000 and report.snapshots == 0
    assert report.replayed_messages == 0
    assert in_memory(d) == 0
    assert "3000 partitions (0 loaded, the rest" in report.summary()
    # each message loads its key's partition, with the count it had
    assert feed(d, ["k7", "k2999", "k7", "new"]) == [
        b"'k7'=2", b"'k2999'=2", b"'k7'=3", b"'new'=1"]
    assert in_memory(d) == 3


def test_1_and_1_0_and_true_are_one_key_in_the_store_too(tmp_path):
    d = checkpointed(tmp_path, [1, ("t", 2)])
    assert feed(d, [1.0, True, ("t", 2.0)]) == [b"1.0=2", b"True=3", b"('t', 2.0)=2"]
    assert d.core.next_pid == 2  # no partition was added


def test_replay_loads_the_partitions_it_needs_at_their_snapshot(tmp_path):
    """Crash with part of the input absorbed by snapshots and part only in
    the log: replay loads the partitions it touches, applies only what their
    snapshots had not absorbed, and the others stay in the store."""
    d = Driver(APP, args=ARGS, resilience_dir=str(tmp_path / "state"), checkpoint_max=10 ** 6)
    d.start()
    feed(d, [f"k{i}" for i in range(100)])
    d.stop()
    d.start()
    feed(d, ["k1", "k2", "k1"])  # logged, not snapshotted
    d.crash()
    report = d.start()
    assert report.replayed_messages == 3 and report.snapshots == 2
    assert in_memory(d) == 2
    assert feed(d, ["k1", "k2", "k3"]) == [b"'k1'=4", b"'k2'=3", b"'k3'=2"]


def test_a_damaged_snapshot_stops_the_worker_when_loaded_before_any_output(tmp_path):
    d = checkpointed(tmp_path, ["a", "b", "c"])
    d.crash()
    path = str(tmp_path / "state" / "initializer.db")
    conn = sqlite3.connect(path)
    (pid,) = conn.execute("SELECT pid FROM partitions WHERE key_repr=?",
                          ("'b'",)).fetchone()
    (blob,) = conn.execute("SELECT state FROM snapshots WHERE pid=?", (pid,)).fetchone()
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x10
    conn.execute("UPDATE snapshots SET state=? WHERE pid=?", (bytes(bad), pid))
    conn.commit()
    conn.close()
    d.start()  # not read yet: the start is quick whatever the state size
    assert feed(d, ["a"]) == [b"'a'=2"]
    delivered = d.received(0)
    d.feed("keys", frames=keyed_counts.frame("c") + keyed_counts.frame("b"))
    with pytest.raises(CorruptionError, match=rf"{re.escape(path)}: the snapshot of "
                       rf"partition {pid} \(state 'counts', key 'b'\)"):
        d.run_batch()
    assert d.received(0) == delivered  # nothing of that batch left


def test_a_snapshot_row_moved_to_another_pid_is_not_taken_for_no_snapshot(tmp_path):
    """A partition without a snapshot is rebuilt from the log; when the log
    it needs is gone, its snapshot row must have been lost: refused."""
    d = checkpointed(tmp_path, ["a", "b"])
    feed(d, ["c"])  # a third partition, never snapshotted: legitimately none
    d.crash()
    path = str(tmp_path / "state" / "initializer.db")
    conn = sqlite3.connect(path)
    (pid,) = conn.execute("SELECT pid FROM partitions WHERE key_repr=?",
                          ("'b'",)).fetchone()
    conn.execute("UPDATE snapshots SET pid=pid+1000 WHERE pid=?", (pid,))
    conn.commit()
    conn.close()
    d.start()
    assert feed(d, ["c", "a"]) == [b"'c'=2", b"'a'=2"]
    d.feed("keys", frames=keyed_counts.frame("b"))
    with pytest.raises(CorruptionError, match=rf"partition {pid} \(state 'counts', "
                       rf"key 'b'\) has no snapshot"):
        d.run_batch()


def test_the_state_cache_bounds_memory_and_keeps_every_count(tmp_path):
    d = Driver(APP, args=ARGS, resilience_dir=str(tmp_path / "state"), state_cache=50,
               checkpoint_interval=1000.0)
    d.start()
    keys = [f"k{i}" for i in range(400)]
    for round_ in range(1, 4):
        for i in range(0, 400, 40):
            out = feed(d, keys[i:i + 40] + keys[i:i + 40])
            assert out[-1] == f"'{keys[i + 39]}'={2 * round_}".encode()
            assert in_memory(d) <= 50
    assert d.core.evictions >= 1000
    # a crash now: everything evicted is in the store, the rest in the log
    d.crash()
    d.start()
    assert feed(d, keys) == [f"'{k}'=7".encode() for k in keys]
    assert in_memory(d) <= 400  # one batch may touch more than the cache...
    feed(d, [])
    assert in_memory(d) <= 50  # ...and the next boundary evicts down to it


def test_state_cache_needs_a_resilience_dir():
    with pytest.raises(ValueError, match="--state-cache needs --resilience-dir"):
        Driver(APP, args=ARGS, state_cache=10).start()
    done = subprocess.run(WALLAROO + ["run", APP, "--in", "127.0.0.1:0", "--out",
                                      "127.0.0.1:9", "--state-cache", "10"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 2
    assert "--state-cache" in done.stderr and "--resilience-dir" in done.stderr


def _run_then_kill(procs, app, state, keys):
    recv, sink = start_receiver(procs)
    w, port = start_worker(procs, app, "--resilience-dir", state,
                           "--checkpoint-interval", "0", out_port=sink)
    frames = state.parent / "keys.frames"
    frames.write_bytes(b"".join(keyed_counts.frame(k) for k in keys))
    done = subprocess.run(WALLAROO + ["send", f"127.0.0.1:{port}", "--frames",
                                      str(frames), "--quiet"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert w.terminate() == 0  # a clean stop: every partition snapshotted
    recv.terminate()


def test_a_renamed_class_in_one_snapshot_is_refused_before_ready(procs, tmp_path):
    """Two thousand partitions; one snapshot refers to class Inner.  The
    class is renamed: the restart is refused before ``ready``, naming that
    partition, without reading the other snapshots."""
    app = tmp_path / "keyed_app.py"
    shutil.copy(APP, app)
    state = tmp_path / "state"
    _run_then_kill(procs, str(app), state,
                   [f"k{i}" for i in range(2000)] + ["special-1"])
    app.write_text(app.read_text().replace("Inner", "Renamed"))
    w = procs("run", str(app), "--in", "127.0.0.1:0", "--out", "127.0.0.1:9",
              "--resilience-dir", state)
    assert w.wait(timeout=WAIT) == 1
    assert "ready" not in w.stderr
    assert re.search(r"cannot load the snapshot of partition \d+ \(state 'counts' "
                     r"\(keyed_app.Count\), key 'special-1'\)", w.stderr), w.stderr
    assert "keyed_app:Inner (module 'keyed_app' has no 'Inner')" in w.stderr


def test_the_background_scrub_finds_damage_nothing_touched(procs, tmp_path):
    state = tmp_path / "state"
    _run_then_kill(procs, APP, state, [f"k{i}" for i in range(1500)])
    conn = sqlite3.connect(state / "initializer.db")
    (pid, blob) = conn.execute("SELECT p.pid, s.state FROM partitions p JOIN "
                               "snapshots s USING (pid) WHERE p.key_repr=?",
                               ("'k1234'",)).fetchone()
    bad = bytearray(blob)
    bad[-2] ^= 0x01
    conn.execute("UPDATE snapshots SET state=? WHERE pid=?", (bytes(bad), pid))
    conn.commit()
    conn.close()
    w = procs("run", APP, "--in", "127.0.0.1:0", "--out", "127.0.0.1:9",
              "--resilience-dir", state)
    assert w.wait(timeout=WAIT) == 1
    assert "ready" in w.stderr  # it started: the damage was found afterwards
    assert f"the snapshot of partition {pid} (state 'counts', key 'k1234')" in w.stderr
    assert str(state / "initializer.db") in w.stderr


def test_a_sound_scrub_says_so(procs, tmp_path):
    state = tmp_path / "state"
    _run_then_kill(procs, APP, state, [f"k{i}" for i in range(1200)])
    w, _ = start_worker(procs, APP, "--resilience-dir", state)
    w.wait_line(lambda line: "scrub:" in line)
    assert "scrub: checked the keys and snapshots of 1200 partitions" in w.stderr
    assert w.terminate() == 0


def test_an_upgraded_directory_gets_its_keys_indexed_once(tmp_path, caplog):
    """A schema 4 directory (tests/fixtures/upgrade/v4): the first start
    indexes its partitions' keys and records its snapshots' classes; from
    then on partitions are found by hash (the upgrade test checks the
    outputs are exact)."""
    state = tmp_path / "state"
    shutil.copytree(REPO / "tests" / "fixtures" / "upgrade" / "v4" / "state", state)
    app = str(REPO / "tests" / "chaos" / "sequence_window.py")
    caplog.set_level("INFO", logger="wallaroo")
    d = Driver(app, args=ARGS, resilience_dir=str(state))
    d.start()
    d.stop()
    indexed = [r.getMessage() for r in caplog.records if "indexed the keys" in
               r.getMessage()]
    assert indexed == ["recovery: indexed the keys of 2 partitions of state "
                       "'windows' (written by an earlier release; once)"]
    conn = sqlite3.connect(state / "initializer.db")
    rows = conn.execute("SELECT count(*), count(key_hash) FROM partitions").fetchone()
    unknown = conn.execute("SELECT count(*) FROM snapshots WHERE classes IS NULL"
                           ).fetchone()[0]
    refs = [r for (r,) in conn.execute("SELECT refs FROM snapshot_classes")]
    conn.close()
    assert rows == (2, 2) and unknown == 0
    assert any("sequence_window:Window" in r for r in refs), refs
    caplog.clear()
    d = Driver(app, args=ARGS, resilience_dir=str(state))
    d.start()
    assert not [r for r in caplog.records if "indexed the keys" in r.getMessage()]
    d.crash()


def test_full_collections_wait_for_an_idle_moment_or_ten_minutes():
    import gc

    from wallaroo.runtime import collections_policy as cp
    before = gc.get_threshold()
    now = [0.0]
    try:
        fc = cp.FullCollections(clock=lambda: now[0])
        assert gc.get_threshold()[:2] == before[:2]
        assert gc.get_threshold()[2] >= 1 << 30  # never started by CPython
        now[0] = cp.IDLE_EVERY + 1
        fc.input()
        assert not fc.due()  # busy: input a moment ago
        now[0] += cp.IDLE_FOR
        assert fc.due()  # idle long enough, and the last one is old
        fc.collect()
        assert fc.count == 1 and not fc.due()
        for _ in range(int(cp.AT_LEAST_EVERY)):  # input every second
            now[0] += 1.0
            fc.input()
        assert fc.due()  # under constant load, at least every ten minutes
    finally:
        gc.set_threshold(*before)


def test_the_state_caches_metrics(procs, tmp_path):
    """--state-cache 100 through a real worker: 1,000 keys twice; the
    partitions in memory stay at the cache, evictions and loads are counted
    and every count is right."""
    from .test_metrics import scrape, value, wait_for
    out = tmp_path / "out.bin"
    recv, sink = start_receiver(procs, "--framing", "length", "--format", "raw",
                                "--output", out)
    w = procs("run", APP, "--in", "127.0.0.1:0", "--out", f"127.0.0.1:{sink}",
              "--resilience-dir", tmp_path / "state", "--state-cache", "100",
              "--metrics", "127.0.0.1:0")
    ready = w.wait_line(lambda line: line.startswith("ready"))
    port = int(re.search(r"sources=[^:]+:(\d+)", ready).group(1))
    addr = re.search(r"metrics=(\S+)", ready).group(1)
    frames = tmp_path / "keys.frames"
    keys = [f"k{i}" for i in range(1000)]
    frames.write_bytes(b"".join(keyed_counts.frame(k) for k in keys))
    for round_ in (1, 2):  # the second round finds every key evicted
        done = subprocess.run(WALLAROO + ["send", f"127.0.0.1:{port}", "--frames",
                                          str(frames), "--resumable", f"s{round_}",
                                          "--quiet"],
                              capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: value(scrape(addr), "wallaroo_sink_delivered_total")
                 == 1000 * round_)
    m = scrape(addr)
    assert value(m, "wallaroo_partitions_in_memory") <= 100
    assert value(m, "wallaroo_partition_evictions_total") >= 900
    assert value(m, "wallaroo_partition_loads_total") >= 900  # the second round
    assert w.terminate() == 0
    recv.terminate()
    got = split_frames(out.read_bytes())
    assert sorted(got) == sorted([f"'{k}'={n}".encode() for k in keys for n in (1, 2)])


def test_a_batch_stops_taking_messages_at_max_new_partitions(tmp_path):
    """Each new partition is a row of the batch's commit: a batch with a
    deadline takes no more messages once it has created
    MAX_NEW_PARTITIONS, and the rest follow in the next batches with
    nothing lost."""
    import time
    from wallaroo.runtime.checkpoints import MAX_NEW_PARTITIONS
    d = Driver(APP, args=ARGS, resilience_dir=str(tmp_path / "state"))
    d.start()
    n = MAX_NEW_PARTITIONS * 2 + 500
    d.feed("keys", frames=b"".join(keyed_counts.frame(f"k{i}") for i in range(n)))
    chunks, d.pending = d.pending, []
    made = []
    while chunks:
        batch = d.core.process(chunks, deadline=time.perf_counter() + 60)
        d.store.commit(batch.record)
        made.append(len(batch.record.partitions))
        chunks = batch.leftover
    assert made == [MAX_NEW_PARTITIONS, MAX_NEW_PARTITIONS, 500]
    d.stop()
    d.start()
    assert feed(d, ["k0", f"k{n - 1}"]) == [b"'k0'=2", f"'k{n - 1}'=2".encode()]
    # without resilience nothing is written per partition: no bound
    m = Driver(APP, args=ARGS)
    m.start()
    m.feed("keys", frames=b"".join(keyed_counts.frame(f"k{i}") for i in range(n)))
    chunks, m.pending = m.pending, []
    batch = m.core.process(chunks, deadline=time.perf_counter() + 60)
    assert not batch.leftover


def test_a_batch_stops_taking_messages_at_max_touched_partitions(tmp_path):
    """Each partition a batch touches is marked dirty at its boundary, on
    the loop: a batch with a deadline takes no more messages once it has
    touched MAX_TOUCHED partitions (existing ones here), and the rest
    follow with nothing lost."""
    import time
    from wallaroo.runtime.checkpoints import MAX_TOUCHED

    def run_all(d: Driver) -> list[int]:
        chunks, d.pending = d.pending, []
        sizes = []
        while chunks:
            batch = d.core.process(chunks, deadline=time.perf_counter() + 60)
            d.store.commit(batch.record)
            sizes.append(batch.messages)
            chunks = batch.leftover
        return sizes

    d = Driver(APP, args=ARGS, resilience_dir=str(tmp_path / "state"))
    d.start()
    n = MAX_TOUCHED + 300
    keys = [f"k{i}" for i in range(n)]
    d.feed("keys", frames=b"".join(keyed_counts.frame(k) for k in keys))
    run_all(d)  # created (in batches of MAX_NEW_PARTITIONS)
    # each key twice: the first MAX_TOUCHED distinct keys fill a batch
    d.feed("keys", frames=b"".join(keyed_counts.frame(k) for k in keys + keys))
    sizes = run_all(d)
    assert sizes[0] == MAX_TOUCHED and sum(sizes) == 2 * n
    d.stop()
    d.start()
    assert feed(d, ["k0", keys[-1]]) == [b"'k0'=4", f"'{keys[-1]}'=4".encode()]
