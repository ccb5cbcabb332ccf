"""`wallaroo recovery inspect` on a directory left by a crash."""

import json
import subprocess
import sys

import sqlite_utils

from wallaroo.testing import Driver

from .apps import model_app as m


def crashed_dir(tmp_path):
    d = Driver(m, resilience_dir=str(tmp_path), checkpoint_interval=1e9)
    d.start()
    d.feed("A", [m.payload_a(k, v, v % 2, 0) for k, v in zip(range(6), range(1, 7))],
           stream="a1")
    d.feed("B", [m.payload_b(5)])
    d.run_batch()
    d.feed("A", [m.payload_a(7, 11, 0, 0)], stream="a1")
    d.run_batch(crash_at="after_commit")
    return d


def inspect(*args):
    return subprocess.run([sys.executable, "-m", "wallaroo.cli", "recovery", "inspect",
                           *args], capture_output=True, text=True, timeout=60)


def test_json_reports_partitions_backlog_and_streams(tmp_path):
    crashed_dir(tmp_path)
    done = inspect(str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    (w,) = json.loads(done.stdout)
    assert w["worker"] == "initializer" and w["application"] == "model"
    assert w["next_lsn"] == 8
    keys = {(p["state"], p["key"]) for p in w["partitions"]}
    assert ("counts", "7") in keys and ("total", "None") in keys
    # key 7 was never saved (save flag 0), so it waits in the input log
    p7 = next(p for p in w["partitions"] if p["key"] == "7")
    assert p7["snapshot_lsn"] is None
    assert w["input_messages"] >= 1 and w["replay_from"] < w["next_lsn"]
    # the second batch was committed but never released
    assert sum(o["outputs"] for o in w["outbox"]) > 0
    (a1,) = [s for s in w["streams"] if s["stream"] == "a1"]
    assert a1["source"] == "A" and a1["durable"] == 7 and a1["last_seen"] > 0


def test_text_output_and_sqlite_utils_read_the_same_directory(tmp_path):
    crashed_dir(tmp_path)
    done = inspect(str(tmp_path))
    assert done.returncode == 0, done.stderr
    for text in ("worker initializer", "counts", "input log backlog", "outbox",
                 "a1"):
        assert text in done.stdout
    db = sqlite_utils.Database(str(tmp_path / "initializer.db"))
    assert {"partitions", "snapshots", "input_log", "outbox", "streams",
            "sinks", "progress", "meta"} <= set(db.table_names())
    assert db["streams"].count == 1


def test_not_a_resilience_directory(tmp_path):
    done = inspect(str(tmp_path))
    assert done.returncode == 1
    assert "no worker database" in done.stderr
