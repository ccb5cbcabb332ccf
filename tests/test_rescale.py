"""Rescaling a one-host cluster at a restart (DESIGN.md §6 "Rescaling"):
the same resilience directory run with ``--workers 1``, then 3, 2 and 1,
the input sent once per run, gives every example application the outputs
(per key, in order) and the final state of one worker that got the input
four times.  Key groups move with their state; workers that leave are
marked retired, never deleted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter

import pytest

from wallaroo.recovery import moves

from .conftest import WALLAROO, start_receiver
from .test_cluster_examples import CASES, EXAMPLES, per_key, run_cluster, send
from .test_upgrades import VERSIONS as UPGRADE_VERSIONS

STAGES = (1, 3, 2, 1)


def _votes(tmp_path):
    votes = tmp_path / "votes.frames"
    if not votes.exists():
        subprocess.run(["python", str(EXAMPLES / "alphabet" / "make_votes.py"),
                        "--count", "2000", str(votes)], check=True,
                       capture_output=True)
    return votes


def _send_args(name, tmp_path):
    return [str(_votes(tmp_path)) if a == "VOTES" else
            (str(EXAMPLES / a) if "/" in a else a) for a in CASES[name][1]]


def _wait_records(path, split, n: int, timeout: float = 60) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        got = split(path.read_bytes()) if path.exists() else []
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _settled(path, split, quiet: float = 0.5, timeout: float = 30) -> int:
    """How many records the file holds once it stopped growing."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = len(split(path.read_bytes())) if path.exists() else 0
        if n != last:
            last, since = n, time.monotonic()
        elif n and time.monotonic() - since >= quiet:
            return n
        time.sleep(0.05)
    return last


def run_stages(procs, tmp_path, name: str, stages, tag: str,
               passes: int = 1) -> list[bytes]:
    """One receiver; a cluster per stage on one directory, the input sent
    ``passes`` times to each; every output as the receiver got it."""
    app, _, framing, split, _ = CASES[name]
    out = tmp_path / f"{name}-{tag}.bin"
    recv, sink = start_receiver(procs, "--framing", framing, "--format", "raw",
                                "--output", out)
    state = str(tmp_path / f"state-{tag}")
    expected = 0
    for i, workers in enumerate(stages):
        sup, fields = run_cluster(procs, EXAMPLES / app, workers, "--out",
                                  f"127.0.0.1:{sink}", resilience_dir=state)
        for k in range(passes):
            send(fields["sources"], *_send_args(name, tmp_path))
            if i == k == 0:  # how many outputs one pass of the input makes
                expected = _settled(out, split)
                assert expected, "no output at all"
            else:
                _wait_records(out, split, expected * (i * passes + k + 1))
        assert sup.terminate(timeout=60) == 0, sup.stderr
        if i and stages[i] != stages[i - 1]:
            assert f"rescaling from {stages[i - 1]} workers" in sup.stderr
    recv.terminate()
    return split(out.read_bytes())


@pytest.mark.parametrize("name", sorted(CASES))
def test_rescale_1_3_2_1_gives_the_outputs_of_one_worker(procs, tmp_path, name):
    key = CASES[name][4]
    rescaled = run_stages(procs, tmp_path, name, STAGES, "rescaled")
    plain = run_stages(procs, tmp_path, name, (1,), "plain", passes=len(STAGES))
    assert len(plain) == len(rescaled)
    assert Counter(rescaled) == Counter(plain)
    if key is not None:  # per key, in the same order: the state moved whole
        assert per_key(rescaled, key) == per_key(plain, key)
    state = tmp_path / "state-rescaled"
    # worker-1 and worker-2 left at the last rescale: retired, files kept
    shown = subprocess.run(WALLAROO + ["recovery", "inspect", str(state), "--json"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    workers = {w["worker"]: w for w in json.loads(shown.stdout)}
    assert set(workers) == {"initializer", "worker-1", "worker-2"}
    assert workers["worker-1"]["retired"] and workers["worker-2"]["retired"]
    assert not workers["initializer"]["retired"]
    if key is not None:
        for w in ("worker-1", "worker-2"):
            assert workers[w]["partitions_total"] == 0, workers[w]
    # each records the cluster it left
    assert workers["worker-1"]["members"] == ["initializer"]
    assert workers["worker-2"]["members"] == ["initializer", "worker-1"]
    assert not os.path.exists(state / "rescale.json")


def test_a_worker_that_left_comes_back_with_its_retired_database(procs, tmp_path):
    """1 -> 3 -> 2 -> 3: worker-2 retires, then is a member again on the
    database it kept (its channel and output counts still agree with the
    others'); word count's outputs per key are those of one worker."""
    key = CASES["word_count"][4]
    rescaled = run_stages(procs, tmp_path, "word_count", (1, 3, 2, 3), "back")
    plain = run_stages(procs, tmp_path, "word_count", (1,), "plain", passes=4)
    assert per_key(rescaled, key) == per_key(plain, key)
    shown = subprocess.run(WALLAROO + ["recovery", "inspect",
                                       str(tmp_path / "state-back"), "--json"],
                           capture_output=True, text=True, timeout=60)
    workers = {w["worker"]: w for w in json.loads(shown.stdout)}
    assert not any(w["retired"] for w in workers.values())
    assert workers["worker-2"]["partitions_total"] > 0


@pytest.mark.parametrize("version", UPGRADE_VERSIONS)
def test_a_directory_of_an_earlier_release_rescales_like_any_other(
        procs, tmp_path, version):
    """DESIGN.md §4.8: a fixture directory of an earlier release (one worker,
    an input log tail to replay, 500 outputs undelivered, stream 'up-1' at
    1000) opened by --workers 2: the old worker drains (replays, delivers),
    the key groups and the stream's count move, and the stream resumes at
    1000 on its new owner, every window exact."""
    from .chaos.validate import read_frames, validate
    from .conftest import u64_frames
    from .test_upgrades import APP, FIXTURES
    fixture = FIXTURES / version
    state = tmp_path / "state"
    shutil.copytree(fixture / "state", state)
    out = tmp_path / "out.bin"
    recv, sink = start_receiver(procs, "--framing", "length", "--format", "raw",
                                "--output", out)
    sup, fields = run_cluster(procs, APP, 2, "--out", f"127.0.0.1:{sink}",
                              resilience_dir=str(state))
    assert "rescaling from 1 workers (initializer) to 2" in sup.stderr
    frames = tmp_path / "more.frames"
    frames.write_bytes(u64_frames(range(1, 1201)))
    done = subprocess.run(WALLAROO + ["send", fields["sources"], "--frames",
                                      str(frames), "--resumable", "up-1", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "resumed at message 1000" in done.stderr
    _wait_records(out, read_frames, 700)
    assert sup.terminate(timeout=60) == 0, sup.stderr
    recv.terminate()
    before = read_frames((fixture / "received-before.bin").read_bytes())
    report = validate(before + read_frames(out.read_bytes()), 1200)
    assert report.ok, report.summary()


def test_kafka_offsets_follow_their_partitions(procs, kafka_broker, kafka_topic,
                                               tmp_path):
    """kafka_count on 1 worker consumes a 4-partition topic; at --workers 2
    partitions 1 and 3 belong to worker-1, which must start at the offsets
    the initializer recorded: every key's final count is exact and every
    count appears (a partition read again from the start would count its
    records twice; one skipped would leave counts missing)."""
    from .test_kafka import COUNT, finals, kafka_args, ready
    from wallaroo.tools.kafka_broker import produce_all, read_all
    src, out = kafka_topic(4), kafka_topic(2)
    boot = kafka_broker.bootstrap
    keys = [f"r{i % 13}".encode() for i in range(3000)]
    state = str(tmp_path / "state")
    args = ["run", COUNT, "--resilience-dir", state, *kafka_args(boot, src, out)]
    produce_all(boot, src, keys[:2000], keys[:2000])
    sup = procs(*args, "--workers", "1")
    ready(sup)
    read_all(boot, out, 2, 2000, timeout=60, settle=0.5)
    assert sup.terminate() == 0
    produce_all(boot, src, keys[2000:], keys[2000:])
    sup = procs(*args, "--workers", "2")
    ready(sup)
    assert "rescaling from 1 workers (initializer) to 2" in sup.stderr
    got = read_all(boot, out, 2, 3000, timeout=60, settle=1.0)
    assert "consuming partitions 1,3 of 4" in sup.stderr
    expected = Counter(k.decode() for k in keys)
    assert finals(got) == dict(expected)
    seen = Counter(v.decode() for _, v, _ in got)
    for k, n in expected.items():
        assert all(seen[f"{k}:{i}"] == 1 for i in range(1, n + 1)), k
    assert len(got) == 3000
    assert sup.terminate() == 0


def test_a_retired_worker_delivers_what_its_sink_did_not_take(procs, tmp_path):
    """The sink is away while 2 workers count words and when the cluster
    shrinks to 1: worker-1 leaves holding outputs.  The supervisor runs it
    on its own, with no sources, until they are delivered; once the
    receiver is back, every output of both workers arrives exactly once."""
    from .conftest import free_port
    app = EXAMPLES / "word_count" / "word_count.py"
    sink = free_port()
    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, app, 2, "--out", f"127.0.0.1:{sink}",
                              resilience_dir=state)
    send(fields["sources"], "--file", str(EXAMPLES / "word_count" / "sample.txt"))
    time.sleep(1)
    assert sup.terminate(timeout=60) == 0, sup.stderr
    held = {w: moves.undelivered_outputs(state, w) for w in ("initializer", "worker-1")}
    assert all(held.values()), held
    sup = procs("run", str(app), "--in", "127.0.0.1:0", "--out", f"127.0.0.1:{sink}",
                "--workers", "1", "--resilience-dir", state,
                env={**os.environ, "WALLAROO_RESCALE_LEAVING_WAIT": "0.5"})
    sup.wait_line(lambda line: line.startswith("ready "), timeout=60)
    sup.wait_line(lambda line: "retired worker worker-1 holds" in line, timeout=30)
    out = tmp_path / "out.txt"
    recv = procs("receive", "--listen", f"127.0.0.1:{sink}", "--framing", "lines",
                 "--format", "raw", "--output", str(out))
    sup.wait_line(lambda line: "retired worker worker-1: every output delivered"
                  in line, timeout=60)
    got = _wait_records(out, lines_of, sum(held.values()))
    assert sup.terminate(timeout=60) == 0, sup.stderr
    recv.terminate()
    plain = run_stages(procs, tmp_path, "word_count", (1,), "plain")
    assert Counter(lines_of(out.read_bytes())) == Counter(plain)
    assert len(got) == sum(held.values())
    assert moves.is_retired(state, "worker-1")
    assert moves.undelivered_outputs(state, "worker-1") == 0


def lines_of(data: bytes) -> list[bytes]:
    return data.splitlines()


def test_another_application_is_refused_before_anything_moves(procs, tmp_path):
    """A rescale never moves state another application wrote: --workers 2
    with word count on alphabet's directory is refused (exit 2), and the
    directory is as it was."""
    state = str(tmp_path / "state")
    sup, _ = run_cluster(procs, EXAMPLES / "alphabet" / "alphabet.py", 1, "--out",
                         "127.0.0.1:9", resilience_dir=state)
    assert sup.terminate(timeout=60) == 0, sup.stderr
    other = procs("run", str(EXAMPLES / "word_count" / "word_count.py"), "--in",
                  "127.0.0.1:0", "--out", "127.0.0.1:9", "--workers", "2",
                  "--resilience-dir", state)
    assert other.wait(timeout=60) == 2
    assert "holds state this application cannot use" in other.stderr
    assert "nothing was moved" in other.stderr
    assert not os.path.exists(os.path.join(state, "worker-1.db"))
    assert not os.path.exists(os.path.join(state, "rescale.json"))
