"""Every example application on a cluster of 1, 2 and 3 workers on this
host (``wallaroo run APP --workers N``): the same outputs per key as one
worker (DESIGN.md §6: a message continues on the owner of its key group;
messages of one connection that take the same route keep their order).

Also: the supervisor's ``ready`` line and ``cluster.json`` as DESIGN.md §6
pins them, a killed worker restarted while the others go on, and the
no-resilience rule (a worker's death stops the cluster).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict

import pytest

from .conftest import REPO, WAIT, WALLAROO, start_receiver

EXAMPLES = REPO / "examples"


def run_cluster(procs, app, workers: int, *extra, resilience_dir=None):
    """A supervisor with ``workers`` workers; waits for its ready line."""
    args = ["run", app, "--in", "127.0.0.1:0", *extra, "--workers", str(workers)]
    if resilience_dir:
        args += ["--resilience-dir", resilience_dir]
    sup = procs(*args)
    ready = sup.wait_line(lambda line: line.startswith("ready "), timeout=60)
    fields = dict(f.split("=", 1) for f in ready.split()[1:])
    return sup, fields


def send(addr: str, *args: str) -> None:
    done = subprocess.run(WALLAROO + ["send", addr, *args, "--quiet"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr


def per_key(records: list[bytes], key) -> dict:
    """Records grouped by key, each group in arrival order."""
    groups = defaultdict(list)
    for r in records:
        groups[key(r)].append(r)
    return dict(groups)


def lines(data: bytes) -> list[bytes]:
    return data.splitlines()


def length_records(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        out.append(data[pos:pos + 4 + n])
        pos += 4 + n
    return out


# name -> (app file, send args, receiver framing, records, key of a record)
CASES = {
    "reverse": ("reverse/reverse.py", ["--file", "reverse/words.txt"], "lines",
                lines, None),
    "celsius": ("celsius/celsius.py", ["--file", "celsius/temperatures.txt"],
                "lines", lines, None),
    "alphabet": ("alphabet/alphabet.py", ["--frames", "VOTES"], "length",
                 length_records, lambda r: r[4:5]),
    "alphabet_partitioned": ("alphabet_partitioned/alphabet_partitioned.py",
                             ["--frames", "VOTES"], "length", length_records,
                             lambda r: r[4:5]),
    "word_count": ("word_count/word_count.py", ["--file", "word_count/sample.txt"],
                   "lines", lines, lambda r: r.split(b" => ")[0]),
    # the 0.6 API: key_by routes each word to the owner of its key group
    "word_count_06": ("word_count/word_count_06.py",
                      ["--file", "word_count/sample.txt"], "lines", lines,
                      lambda r: r.split(b" => ")[0]),
}


def outputs(procs, tmp_path, name: str, workers: int) -> list[bytes]:
    app, send_args, framing, split, _ = CASES[name]
    votes = tmp_path / "votes.frames"
    if not votes.exists():
        subprocess.run(["python", str(EXAMPLES / "alphabet" / "make_votes.py"),
                        "--count", "2000", str(votes)], check=True,
                       capture_output=True)
    out = tmp_path / f"{name}-{workers}.bin"
    recv, sink = start_receiver(procs, "--framing", framing, "--format", "raw",
                                "--output", out, "--idle-timeout", "1.5")
    sup, fields = run_cluster(procs, EXAMPLES / app, workers, "--out",
                              f"127.0.0.1:{sink}")
    args = [str(votes) if a == "VOTES" else
            (str(EXAMPLES / a) if "/" in a else a) for a in send_args]
    send(fields["sources"], *args)
    assert recv.wait(timeout=60) == 0
    assert sup.terminate(timeout=60) == 0, sup.stderr
    return split(out.read_bytes())


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_example_gives_the_same_outputs_per_key_on_1_2_and_3_workers(
        procs, tmp_path, name):
    key = CASES[name][4]
    runs = {n: outputs(procs, tmp_path, name, n) for n in (1, 2, 3)}
    assert runs[1], "no output at all"
    for n in (2, 3):
        assert Counter(runs[n]) == Counter(runs[1]), f"{n} workers"
        if key is not None:  # per key, in the same order
            assert per_key(runs[n], key) == per_key(runs[1], key), f"{n} workers"


def test_ready_line_and_cluster_file(procs, tmp_path):
    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, EXAMPLES / "alphabet_partitioned" /
                              "alphabet_partitioned.py", 3, "--out", "127.0.0.1:9",
                              resilience_dir=state)
    assert fields["workers"] == "3"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", fields["sources"])
    assert fields["sinks"] == "127.0.0.1:9"
    assert fields["cluster_file"] == os.path.join(state, "cluster.json")
    body = json.loads(open(fields["cluster_file"]).read())
    assert body["version"] == 1 and body["application"] == "alphabet"
    names = [w["name"] for w in body["workers"]]
    assert names == ["initializer", "worker-1", "worker-2"]
    for w in body["workers"]:
        assert set(w) >= {"name", "pid", "state", "control", "data", "sources",
                          "metrics", "restarts"}
        assert w["state"] == "ready" and w["restarts"] == 0
        assert w["sources"] == [fields["sources"]]
        assert os.path.exists(os.path.join(state, f"{w['name']}.log"))
    assert oct(os.stat(os.path.join(state, "cluster.secret")).st_mode)[-3:] == "600"
    # every worker's log lines are on the supervisor's stderr, prefixed
    assert any(line.startswith("worker-2 | ") for line in sup.stderr.splitlines())
    assert [line for line in sup.stderr.splitlines()
            if line.startswith("ready")] == [sup.stderr.splitlines()[
                [line.startswith("ready") for line in sup.stderr.splitlines()].index(True)]]
    # a killed worker is restarted while the others go on
    victim = body["workers"][1]
    os.kill(victim["pid"], signal.SIGKILL)
    sup.wait_line("worker worker-1 ready again", timeout=30)
    deadline = time.monotonic() + 10
    while True:
        body = json.loads(open(fields["cluster_file"]).read())
        w1 = body["workers"][1]
        if w1["restarts"] == 1 and w1["state"] == "ready":
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    assert w1["pid"] != victim["pid"]
    assert body["workers"][0]["pid"] == json.loads(open(
        fields["cluster_file"]).read())["workers"][0]["pid"]
    assert sup.terminate(timeout=60) == 0


def test_without_resilience_a_workers_death_stops_the_cluster(procs, tmp_path):
    sup, fields = run_cluster(procs, EXAMPLES / "alphabet_partitioned" /
                              "alphabet_partitioned.py", 2, "--out", "127.0.0.1:9")
    body = json.loads(open(fields["cluster_file"]).read())
    os.kill(body["workers"][1]["pid"], signal.SIGKILL)
    assert sup.wait(timeout=60) == 1
    assert "there is no --resilience-dir to recover it from" in sup.stderr
    logs = os.path.dirname(fields["cluster_file"])
    assert f"the workers' logs are in {logs}" in sup.stderr
    assert os.path.exists(os.path.join(logs, "worker-1.log"))
