"""A partition whose snapshot is slow (a big state) is left out of periodic
checkpoints for ten times as long as its last snapshot took, so a big
partition that changes all the time does not keep the worker pickling; the
other partitions are checkpointed as usual, nothing is lost (replay rebuilds
what was not snapshotted), and save_state=True or a clean stop still
snapshot it."""

from __future__ import annotations

import sqlite3
import time

import wallaroo
from wallaroo.runtime.checkpoints import SLOW_SNAPSHOT, SNAPSHOT_SPACING
from wallaroo.testing import Driver

PICKLE_SECONDS = SLOW_SNAPSHOT * 1.2
# the checkpoint interval and the clock's step: the slow partition is held
# for SNAPSHOT_SPACING * PICKLE_SECONDS, over 9 steps
STEP = 0.0625  # exact in binary: clock sums stay exact


class Slow:
    """A state whose pickling takes PICKLE_SECONDS for the key "big"."""

    def __init__(self):
        self.total = 0
        self.big = False

    def __getstate__(self):
        if self.big:
            time.sleep(PICKLE_SECONDS)
        return self.__dict__


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    key, value, save = bs.decode().split()
    return key, int(value), save == "save"


@wallaroo.partition
def key_of(msg):
    return msg[0]


@wallaroo.state_computation("add")
def add(msg, state):
    state.total += msg[1]
    state.big = msg[0] == "big"
    return (f"{msg[0]} {state.total}", msg[2])


@wallaroo.encoder
def encode(out):
    return out.encode() + b"\n"


def app():
    ab = wallaroo.ApplicationBuilder("slow snapshots")
    ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", 0, decode))
    ab.to_state_partition(add, Slow, "totals", key_of, ["big", "small"])
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", 0, encode))
    return ab.build()


def snapshot_lsns(path) -> dict[str, int | None]:
    """The snapshot lsn of each partition, by key, as the database holds it."""
    import pickle
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT p.key, s.lsn FROM partitions p LEFT JOIN "
                            "snapshots s USING (pid)").fetchall()
    finally:
        conn.close()
    return {pickle.loads(k): lsn for k, lsn in rows}


def send(d, *msgs):
    d.feed("p", [m.encode() for m in msgs])
    return d.run_batch()


def test_a_slow_partition_waits_while_the_others_are_checkpointed(tmp_path):
    db = tmp_path / "initializer.db"
    d = Driver(app(), resilience_dir=str(tmp_path), checkpoint_interval=STEP)
    d.start()
    send(d, "big 1 no", "small 1 no")
    d.advance(STEP)
    send(d, "small 1 no")  # a checkpoint is due: both are snapshotted
    first = snapshot_lsns(db)
    assert first["big"] is not None and first["small"] is not None
    hold = SNAPSHOT_SPACING * PICKLE_SECONDS  # at least this long
    # the big one changes all the time; the small one too
    for _ in range(3):
        send(d, "big 1 no", "small 1 no")
        d.advance(STEP)
        send(d, "small 1 no")
    # a partition dirtied just now is not snapshotted because the held one
    # has been dirty for long
    d.advance(STEP)
    assert send(d, "small 1 no").record.snapshots == []
    now = snapshot_lsns(db)
    assert now["big"] == first["big"], "the slow partition was snapshotted again"
    assert now["small"] > first["small"], "the others are checkpointed as usual"
    # with only the slow partition dirty, no idle commit is due (the worker
    # would otherwise commit empty batches in a loop)
    send(d, "big 1 no")
    d.advance(STEP)
    send(d)  # checkpoints the small one
    d.advance(STEP)
    send(d)  # delivery positions
    d.advance(STEP)
    assert not d.core.idle_commit_due()
    # once its time has passed, the next checkpoint takes it
    d.advance(hold)
    assert d.core.idle_commit_due()
    send(d)
    assert snapshot_lsns(db)["big"] > first["big"]


def test_what_a_held_partition_did_is_rebuilt_after_a_crash(tmp_path):
    d = Driver(app(), resilience_dir=str(tmp_path), checkpoint_interval=STEP)
    d.start()
    send(d, "big 5 no")
    d.advance(STEP)
    send(d, "small 1 no")  # snapshots big (slow): held from now on
    for i in range(4):
        send(d, "big 1 no", "small 1 no")
        d.advance(STEP)
    assert d.state("totals", "big").total == 9
    d.crash()
    d.start()
    assert d.state("totals", "big").total == 9
    assert d.state("totals", "small").total == 5


def test_save_state_and_a_clean_stop_still_snapshot_a_held_partition(tmp_path):
    db = tmp_path / "initializer.db"
    d = Driver(app(), resilience_dir=str(tmp_path), checkpoint_interval=STEP)
    d.start()
    send(d, "big 1 no")
    d.advance(STEP)
    send(d, "small 1 no")
    held = snapshot_lsns(db)["big"]
    batch = send(d, "big 1 save")  # asked for: taken at once
    assert snapshot_lsns(db)["big"] > held
    send(d, "big 1 no")
    before_stop = snapshot_lsns(db)["big"]
    d.stop()
    assert snapshot_lsns(db)["big"] > before_stop
    assert batch is not None
