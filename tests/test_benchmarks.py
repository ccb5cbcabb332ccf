"""Smoke test of benchmarks/bench_alphabet.py: the script runs at a tiny
size, its report has every row, and the counts it validated are right.  No
timing assertions: the numbers depend on the machine."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from _engine import latency_segments, percentiles  # noqa: E402
from _workload import (FRAME_SIZE, RECORD_SIZE, expected_output,  # noqa: E402
                       make_input, validate, vote_sums)

N = 20_000
PACED_RATE = 20_000
PACED_SECONDS = 0.3
SEED = 7
HAS_BYTEWAX = importlib.util.find_spec("bytewax") is not None


# -- the validator must be able to fail ---------------------------------------

def test_validate_accepts_the_exact_output():
    framed = make_input(500, seed=3)
    v = validate(framed, expected_output(framed))
    assert v["ok"] and v["order_ok"] and v["count_ok"] and v["records"] == 500
    assert v["final_totals"] == dict(sorted(vote_sums(framed).items()))


def test_validate_catches_lost_duplicated_and_torn_records():
    framed = make_input(500, seed=3)
    good = expected_output(framed)
    rec = RECORD_SIZE
    lost = good[:100 * rec] + good[101 * rec:]
    dup = good[:101 * rec] + good[100 * rec:]
    torn = good[:-3]
    for bad in (lost, dup, torn):
        assert not validate(framed, bad)["ok"]
    # A lost message at the end of a letter's run still shows in its total.
    assert not validate(framed, good[:-rec])["totals_ok"]
    assert not validate(framed, dup)["per_letter_ok"]


def test_validate_accepts_records_reordered_across_letters_only():
    framed = make_input(500, seed=3)
    good = expected_output(framed)
    records = [good[i:i + RECORD_SIZE] for i in range(0, len(good), RECORD_SIZE)]
    by_letter = sorted(records, key=lambda r: r[4:5])  # stable: order per letter kept
    v = validate(framed, b"".join(by_letter))
    assert v["ok"] and not v["order_ok"]


def test_latency_segments_and_percentiles():
    # 10 messages written in two chunks (t=0 and t=10), read in three reads.
    send = [(5, 0), (10, 10)]
    recv = [(3, 100), (7, 200), (10, 300)]
    segs = latency_segments(send, recv)
    assert segs == [(100, 3), (200, 2), (190, 2), (290, 3)]
    p = percentiles([(ns * 1_000_000, w) for ns, w in segs])
    assert p["p50_ms"] == 190 and p["max_ms"] == 290 and p["p99_ms"] == 290


# -- the script itself --------------------------------------------------------

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [sys.executable, str(BENCH / "bench_alphabet.py"), "--messages", str(N),
           "--seed", str(SEED), "--paced-rate", str(PACED_RATE),
           "--paced-seconds", str(PACED_SECONDS), "--profile",
           "--timeout", "30", "--json", str(out)]
    if HAS_BYTEWAX:
        cmd.append("--bytewax")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_report_has_every_row_and_ratio(report):
    res, stdout = report
    expected_rows = ["plain_loop", "engine_in_process", "engine_off", "engine_normal",
                     "engine_full", "logged_loop_rows", "logged_loop"] + (
        ["bytewax", "bytewax_frames"] if HAS_BYTEWAX else [])
    assert list(res["rows"]) == expected_rows
    for key in expected_rows:
        assert res["rows"][key]["msgs_per_s"] > 0, key
        assert res["rows"][key]["name"] in stdout
    names = [r["name"] for r in res["ratios"]]
    assert names[:4] == ["engine (off) / plain loop", "engine (NORMAL) / engine (off)",
                         "engine (NORMAL) / logged loop (row per message)",
                         "engine (NORMAL) / logged loop (row per batch)"]
    assert all(r["value"] > 0 for r in res["ratios"])
    assert res["machine"]["nproc"] >= 1 and res["machine"]["python"]
    assert "bench_alphabet.py --messages 20000" in res["command"]
    assert "command:" in stdout and "What the project targets" in stdout
    assert res["problems"] == []


def test_engine_runs_delivered_exactly_the_input(report):
    res, _ = report
    framed = make_input(N, seed=SEED)
    sums = dict(sorted(vote_sums(framed).items()))
    paced_n = int(PACED_RATE * PACED_SECONDS)
    paced_sums = dict(sorted(vote_sums(framed[:paced_n * FRAME_SIZE]).items()))
    for key in ("engine_off", "engine_normal", "engine_full"):
        row = res["rows"][key]
        for run, n, totals in ([(r, N, sums) for r in row["all_runs"]]
                               + [(r, paced_n, paced_sums)
                                  for r in row["paced"]["all_runs"]]):
            v = run["validation"]
            assert "error" not in run, (key, run.get("error"))
            assert run["worker_exit"] == 0
            assert v["messages"] == n and v["records"] == n, (key, v)
            assert v["ok"] and v["count_ok"] and v["per_letter_ok"], (key, v)
            assert v["final_totals"] == totals, key
            assert run["worker_stats"]["messages_in"] == n
            assert run["worker_stats"]["outputs"] == n
            lat = run["latency"]
            assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert row["latency"]["p99_ms"] > 0 and row["paced"]["latency"]["p99_ms"] > 0


def test_in_process_rows_validated(report):
    res, _ = report
    for key in ("plain_loop", "logged_loop_rows", "logged_loop") + (
            ("bytewax",) if HAS_BYTEWAX else ()):
        v = res["rows"][key]["validation"]
        assert v["ok"] and v["records"] == N, (key, v)


def test_profile_section(report):
    res, stdout = report
    prof = res["profile"]
    assert "error" not in prof, prof.get("error")
    assert "tottime" in prof["top"] and "dataflow.py" in prof["top"]
    cats = {c["category"] for c in prof["by_category"]}
    assert any(c.startswith("application functions") for c in cats)
    assert "Where the time goes" in stdout
