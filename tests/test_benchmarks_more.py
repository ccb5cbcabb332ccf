"""Smoke tests of the cluster, cluster-recovery and big-state benchmarks:
each runs at a tiny size and reports every row it names.  No timing
assertions (the numbers depend on the machine); the counts they wait for
are exact, so a lost output makes them time out and fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"


def run(script: str, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_cluster_benchmark_reports_every_configuration(tmp_path):
    out = tmp_path / "cluster.json"
    stdout = run("bench_cluster.py", "--lines", "2000", "--votes", "20000",
                 "--repeat", "1", "--no-bytewax", "--profile", "--json", str(out))
    res = json.loads(out.read_text())
    for app in ("word_count", "alphabet"):
        for mode in ("off", "NORMAL"):
            for workers in (1, 2):
                row = res[f"{app}/{mode}/{workers}"]
                assert row["msgs_per_s"] > 0 and row["cpu_us_per_msg"] > 0
    assert "ratios, 2 workers over 1" in stdout
    # a profile per worker, the application's own share among the categories
    for app in ("word_count", "alphabet"):
        assert set(res["profiles"][app]) == {"initializer", "worker-1"}
        for cats in res["profiles"][app].values():
            names = {c["category"] for c in cats}
            assert any(n.startswith("application functions") for n in names)


def test_cluster_recovery_benchmark_reports_the_others_meanwhile(tmp_path):
    out = tmp_path / "recovery.json"
    stdout = run("bench_cluster_recovery.py", "--rate", "2000", "--seconds", "4",
                 "--kill-at", "1.5", "--restart-delay", "0.5", "--json", str(out))
    res = json.loads(out.read_text())
    assert res["away_seconds"] > 0
    assert "away" in stdout


def test_big_state_benchmark_reports_one_checkpoint(tmp_path):
    out = tmp_path / "big.json"
    run("bench_big_state.py", "--mb", "4", "--shapes", "bytes", "--busy-seconds", "1",
        "--json", str(out))
    (row,) = json.loads(out.read_text())
    assert row["shape"] == "bytes" and row["mb"] == 4
    assert row["snapshot_work_s"] >= 0 and row["commit_s"] > 0
    assert row["database_mb"] > 4  # the snapshot is on disk
    assert row["busy_pings"] > 0 and row["restart_to_ready_s"] > 0
    assert row["plain"]["pickled_mb"] > 4


def test_recovery_benchmark_reports_every_size_and_the_touch_time(tmp_path):
    out = tmp_path / "rec.json"
    stdout = run("bench_recovery.py", "--sizes", "300,3000", "--modes", "checkpointed",
                 "--repeat", "1", "--creating-baselines", "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    durable = [r for r in rows if r["mode"] == "checkpointed"]
    assert [(r["keys"], r["partitions"], r["replayed"]) for r in durable] == [
        (300, 300, 0), (3000, 3000, 0)]
    for r in durable:
        assert 0 < r["port_s"] and r["touch_all_s"] > 0 and r["db_bytes"] > 0
        # each phase's stalls, reported by the worker on SIGUSR1
        assert list(r["stalls"]) == ["creating", "checkpointing", "loading"]
        for st in r["stalls"].values():  # each phase ran batches and snapshots
            assert st["batch_ms"] > 0 and st["snapshot_work_ms"] > 0
    assert [(r["keys"], r["mode"]) for r in rows if r["mode"] != "checkpointed"] == [
        (300, "no checkpoints"), (300, "no resilience"),
        (3000, "no checkpoints"), (3000, "no resilience")]
    assert "touching every key again" in stdout
    assert "checkpointing longest batch compute" in stdout
    assert all(r["again_seconds"] > 0 for r in durable)
    assert "every key again with all in memory: 3000 messages" in stdout


def test_state_cache_benchmark_compares_with_and_without(tmp_path):
    out = tmp_path / "cache.json"
    stdout = run("bench_state_cache.py", "--keys", "3000", "--cache", "300",
                 "--hot", "100", "--hot-messages", "3000", "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["cache"] for r in rows] == [None, 300]
    for r in rows:
        assert r["hot_msgs_per_s"] > 0 and r["touch_all_s"] > 0
        assert r["peak_rss_mb"] >= r["rss_start_mb"] > 0
    assert "--state-cache 300" in stdout


def test_windows_benchmark_checks_every_row():
    import importlib.util
    out = run("bench_windows.py", "--messages", "3000", "--keys", "200",
                    "--window-ms", "50", "--repeat", "1")
    rows = [line for line in out.splitlines()
            if line.startswith(("plain loop", "engine", "bytewax 0.21"))]
    names = ["plain loop", "engine (resilience off)", "engine (NORMAL)"]
    if importlib.util.find_spec("bytewax") is not None:
        names.append("bytewax 0.21 fold_window")
    assert [r[:28].strip() for r in rows] == names, out
    assert all(r.endswith("ok") for r in rows), out
