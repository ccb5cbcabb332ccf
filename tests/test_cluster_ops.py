"""Operating a cluster: ``wallaroo status``, strangers on the control and
data ports (nothing is deserialized before the secret is proven), the
application's own ``serialize``/``deserialize``, and a directory from an
earlier release opened as a one-worker cluster."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from .chaos.validate import read_frames, validate
from .conftest import APPS, REPO, WAIT, WALLAROO, start_receiver, u64_frames
from .test_cluster_examples import run_cluster, send

ALPHABET = REPO / "examples" / "alphabet_partitioned" / "alphabet_partitioned.py"


def workers_of(state: str) -> dict:
    """Every worker of the cluster on ``state`` as `wallaroo status --json`
    shows it, by name."""
    done = subprocess.run(WALLAROO + ["status", state, "--json"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return {w["name"]: w for w in json.loads(done.stdout)["workers"]}


def test_status_shows_every_worker(procs, tmp_path):
    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, ALPHABET, 3, "--out", "127.0.0.1:9",
                              resilience_dir=state)
    done = subprocess.run(WALLAROO + ["status", state, "--json"], capture_output=True,
                          text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)
    body = json.load(open(fields["cluster_file"]))
    assert [w["name"] for w in st["workers"]] == ["initializer", "worker-1", "worker-2"]
    assert [w["pid"] for w in st["workers"]] == [w["pid"] for w in body["workers"]]
    assert sum(w["key_groups"] for w in st["workers"]) == 1024
    assert sum(w["partitions"] for w in st["workers"]) == 26  # the letters
    for w in st["workers"]:
        assert w["state"] == "ready" and "error" not in w
        assert [c["peer"] for c in w["channels"]] == [
            n for n in ("initializer", "worker-1", "worker-2") if n != w["name"]]
    text = subprocess.run(WALLAROO + ["status", state], capture_output=True,
                          text=True, timeout=WAIT)
    assert text.returncode == 0 and "worker-2" in text.stdout
    # several hosts' form: any worker's control address and the secret
    ctl = subprocess.run(WALLAROO + ["status", "--control", st["workers"][1]["control"],
                                     "--cluster-secret-file",
                                     os.path.join(state, "cluster.secret"), "--json"],
                         capture_output=True, text=True, timeout=WAIT)
    assert ctl.returncode == 0, ctl.stderr
    sup.terminate()


class _Evil:
    """Unpickling this creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_connection_without_the_secret_cannot_make_a_worker_deserialize(
        procs, tmp_path):
    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, ALPHABET, 2, "--out", "127.0.0.1:9",
                              resilience_dir=state)
    body = json.load(open(fields["cluster_file"]))
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))
    for addr in (body["workers"][1]["data"], body["workers"][1]["control"]):
        host, port = addr.rsplit(":", 1)
        for payload in (evil, b"worker-9 " + b"0" * 64 + b" " + b"0" * 64 + b"\n" + evil,
                        b"CHANNEL\n" + evil):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(payload)
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
    time.sleep(0.5)
    assert not marker.exists()
    assert sup.stderr.count("dropped a connection from 127.0.0.1") >= 6
    assert "does not hold the cluster secret" in sup.stderr
    # the cluster still works
    done = subprocess.run(WALLAROO + ["status", state, "--json"], capture_output=True,
                          text=True, timeout=WAIT)
    assert all(w["state"] == "ready" for w in json.loads(done.stdout)["workers"])
    sup.terminate()


def test_the_applications_serialize_carries_messages_and_snapshots(procs, tmp_path):
    calls = tmp_path / "calls.txt"
    state = str(tmp_path / "state")
    out = tmp_path / "out.txt"
    recv, sink = start_receiver(procs, "--framing", "lines", "--format", "text",
                                "--output", out)
    sup, fields = run_cluster(procs, APPS / "serializing_app.py", 2, "--out",
                              f"127.0.0.1:{sink}", "--calls", str(calls),
                              resilience_dir=state)
    words = tmp_path / "words.txt"
    text = ["apple banana cherry LOCK date", "apple zebra yak LOCK xylophone"] * 20
    words.write_text("\n".join(text) + "\n")
    # two connections at once: the supervisor gives one to each worker, so
    # the LOCK words of one of them must travel to the other (and cannot)
    senders = [subprocess.Popen(WALLAROO + ["send", fields["sources"], "--file",
                                            str(words), "--rate", "20", "--quiet"])
               for _ in range(2)]
    assert [p.wait(timeout=WAIT) for p in senders] == [0, 0]
    expected = {}
    for line in text * 2:
        for w in line.split():
            expected[w] = expected.get(w, 0) + 1
    expected["LOCK"] = 40  # those of the connection on their counter's worker
    deadline = time.monotonic() + WAIT
    while len(out.read_text().splitlines() if out.exists() else []) < sum(
            expected.values()):
        assert time.monotonic() < deadline, sup.stderr
        time.sleep(0.05)
    assert sup.terminate() == 0
    got = {}
    for line in out.read_text().splitlines():
        w, n = line.split()
        got[w] = max(got.get(w, 0), int(n))
    assert got == expected
    kinds = calls.read_text().split()
    assert kinds.count("serialize") > 0 and kinds.count("deserialize") > 0
    # a LOCK word whose counter lives on the other worker could not travel
    assert sup.stderr.count("cannot serialize step 'count' of pipeline 'words', "
                            "message of type Word for worker") == 20  # logged 20
    assert "(40 failures" not in sup.stderr
    import sqlite3
    picklers = set()
    for name in ("initializer", "worker-1"):
        conn = sqlite3.connect(os.path.join(state, f"{name}.db"))
        picklers |= {p for (p,) in conn.execute("SELECT pickler FROM snapshots")}
        conn.close()
    assert picklers == {"application"}


@pytest.mark.parametrize("version", sorted(
    p.name for p in (REPO / "tests" / "fixtures" / "upgrade").iterdir() if p.is_dir()))
def test_an_earlier_release_directory_opens_as_a_one_worker_cluster(
        procs, tmp_path, version):
    fixture = REPO / "tests" / "fixtures" / "upgrade" / version
    state = tmp_path / "state"
    shutil.copytree(fixture / "state", state)
    out = tmp_path / "out.bin"
    recv, sink = start_receiver(procs, "--framing", "length", "--output", out)
    sup, fields = run_cluster(procs, REPO / "tests" / "chaos" / "sequence_window.py",
                              1, "--out", f"127.0.0.1:{sink}", resilience_dir=str(state))
    frames = tmp_path / "more.frames"
    frames.write_bytes(u64_frames(range(1, 1201)))
    done = subprocess.run(WALLAROO + ["send", fields["sources"], "--frames",
                                      str(frames), "--resumable", "up-1", "--quiet"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert "resumed at message 1000" in done.stderr
    deadline = time.monotonic() + WAIT
    while len(read_frames(out.read_bytes() if out.exists() else b"")) < 700:
        assert time.monotonic() < deadline, sup.stderr
        time.sleep(0.05)
    assert sup.terminate() == 0
    before = read_frames((fixture / "received-before.bin").read_bytes())
    report = validate(before + read_frames(out.read_bytes()), 1200)
    assert report.ok, report.summary()


def test_full_peer_outboxes_both_ways_do_not_deadlock(procs, tmp_path):
    """Each worker's outbox to the other holds at most one peer batch
    (--peer-outbox-max 1), and two senders feed both workers at once: each
    waits for room toward the other, and must still take the other's
    batches as they arrive (two full workers waiting on each other would
    otherwise stop for good)."""
    votes = tmp_path / "votes.frames"
    subprocess.run(["python", str(REPO / "examples" / "alphabet" / "make_votes.py"),
                    "--count", "20000", str(votes)], check=True, capture_output=True)
    out = tmp_path / "out.bin"
    recv, sink = start_receiver(procs, "--framing", "length", "--format", "raw",
                                "--output", out, "--expect", "40000")
    sup, fields = run_cluster(procs, ALPHABET, 2, "--out", f"127.0.0.1:{sink}",
                              "--peer-outbox-max", "1", "--max-batch", "50",
                              resilience_dir=str(tmp_path / "state"))
    senders = [subprocess.Popen(WALLAROO + ["send", fields["sources"], "--frames",
                                            str(votes), "--quiet"])
               for _ in range(2)]
    for s in senders:
        assert s.wait(timeout=WAIT) == 0
    assert recv.wait(timeout=60) == 0, "not every output arrived: stuck"
    assert sup.terminate(timeout=60) == 0, sup.stderr


def test_a_stream_whose_owner_does_not_answer_is_closed_not_fatal(procs, tmp_path):
    """A resumable client reaches a worker that does not own its stream
    while the owner is stopped (SIGSTOP: its port accepts, nothing answers):
    the connection is closed and the client retries; the worker that
    forwards stays up, and once the owner runs again every message lands."""
    import signal

    from wallaroo.runtime.placement import Placement
    place = Placement(["initializer", "worker-1"], "initializer")
    stream = next(f"s{i}" for i in range(100)
                  if place.owner_of_stream("alphabet", f"s{i}") == 1)
    votes = tmp_path / "votes.frames"
    subprocess.run(["python", str(REPO / "examples" / "alphabet" / "make_votes.py"),
                    "--count", "2000", str(votes)], check=True, capture_output=True)
    recv, sink = start_receiver(procs, "--framing", "length", "--format", "raw",
                                "--output", tmp_path / "out.bin", "--expect", "2000")
    sup, fields = run_cluster(procs, ALPHABET, 2, "--out", f"127.0.0.1:{sink}",
                              resilience_dir=str(tmp_path / "state"))
    body = json.load(open(fields["cluster_file"]))
    pids = {w["name"]: w["pid"] for w in body["workers"]}
    os.kill(pids["worker-1"], signal.SIGSTOP)
    try:
        sender = subprocess.Popen(WALLAROO + ["send", fields["sources"], "--frames",
                                              str(votes), "--resumable", stream,
                                              "--quiet"], stderr=subprocess.PIPE,
                                  text=True)
        sup.wait_line(lambda line: "cannot reach worker 'worker-1'" in line,
                      timeout=30)
    finally:
        os.kill(pids["worker-1"], signal.SIGCONT)
    assert sender.wait(timeout=WAIT) == 0, sender.stderr.read()
    assert recv.wait(timeout=WAIT) == 0
    after = json.load(open(fields["cluster_file"]))
    assert {w["name"]: w["pid"] for w in after["workers"]} == pids
    assert all(w["restarts"] == 0 for w in after["workers"])
    assert sup.terminate(timeout=60) == 0, sup.stderr


def test_another_number_of_workers_on_a_formed_directory_rescales(procs, tmp_path):
    """A different --workers on one host is a rescale (tests/test_rescale.py
    checks the outputs); a stray database of a worker the cluster never
    had is refused before anything moves."""
    state = str(tmp_path / "state")
    sup, _ = run_cluster(procs, ALPHABET, 2, "--out", "127.0.0.1:9",
                         resilience_dir=state)
    assert sup.terminate(timeout=60) == 0, sup.stderr
    shutil.copy(os.path.join(state, "worker-1.db"), os.path.join(state, "worker-2.db"))
    again = procs("run", str(ALPHABET), "--in", "127.0.0.1:0", "--out", "127.0.0.1:9",
                  "--workers", "3", "--resilience-dir", state)
    assert again.wait(timeout=WAIT) == 2
    assert "holds a database for worker 'worker-2', which is not a member" \
        in again.stderr
    os.unlink(os.path.join(state, "worker-2.db"))
    sup, _ = run_cluster(procs, ALPHABET, 3, "--out", "127.0.0.1:9",
                         resilience_dir=state)
    assert "rescaling from 2 workers (initializer, worker-1) to 3" in sup.stderr
    assert sup.terminate(timeout=60) == 0, sup.stderr


def test_a_channel_from_another_application_is_refused_before_any_batch(
        procs, tmp_path):
    """A worker holding the secret but running another application (or
    another membership) announces another fingerprint: its channel is
    refused, naming it, and the batch it sends is never deserialized."""
    import trio

    from wallaroo.connectors import auth

    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, ALPHABET, 2, "--out", "127.0.0.1:9",
                              resilience_dir=state)
    body = json.load(open(fields["cluster_file"]))
    secret = auth.load_secret(os.path.join(state, "cluster.secret"))
    host, port = body["workers"][1]["data"].rsplit(":", 1)
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))

    async def pose_as_the_initializer():
        stream = await trio.open_tcp_stream(host, int(port))
        buf = bytearray()
        name, session = await auth.connect(stream, secret, "initializer", buf,
                                           expect="worker-1")
        assert name == "worker-1"
        await stream.send_all(session.seal(b"CHANNEL " + b"f" * 32))
        blob = b"G" + evil
        batch = len(blob).to_bytes(4, "big") * 2 + blob
        await stream.send_all(batch + session.tag(0, batch))
        with trio.move_on_after(5):
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass  # the worker closed it: the expected end
        await stream.aclose()

    trio.run(pose_as_the_initializer)
    assert sup.wait_line("runs another application or membership", timeout=WAIT)
    time.sleep(0.5)
    assert not marker.exists()
    sup.terminate()


def test_a_channel_reset_mid_batch_does_not_stop_the_worker(procs, tmp_path):
    """A peer killed while its batch is half sent resets the connection (a
    RST, not an end of stream): the worker logs it and keeps running.
    (It used to escape the channel's task group and stop the worker.)"""
    import struct as _struct

    import trio

    from wallaroo.connectors import auth

    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, ALPHABET, 2, "--out", "127.0.0.1:9",
                              resilience_dir=state)
    body = json.load(open(fields["cluster_file"]))
    secret = auth.load_secret(os.path.join(state, "cluster.secret"))
    host, port = body["workers"][1]["data"].rsplit(":", 1)

    async def channel(fingerprint: bytes, then):
        stream = await trio.open_tcp_stream(host, int(port))
        _, session = await auth.connect(stream, secret, "initializer", bytearray(),
                                        expect="worker-1")
        await stream.send_all(session.seal(b"CHANNEL " + fingerprint))
        await then(stream)

    async def closes(stream):
        with trio.move_on_after(5):
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass
        await stream.aclose()

    async def half_a_batch_then_reset(stream):
        await stream.receive_some(4096)  # HAVE
        await stream.send_all(_struct.pack(">II", 1, 1000) + b"G" * 10)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 _struct.pack("ii", 1, 0))
        await stream.aclose()  # RST

    # the worker's own fingerprint, from its refusal of a wrong one
    trio.run(channel, b"0" * 32, closes)
    line = sup.wait_line("runs another application or membership", timeout=WAIT)
    fingerprint = line.split("this worker's ")[1].split(")")[0].encode()
    for _ in range(3):
        trio.run(channel, fingerprint, half_a_batch_then_reset)
    time.sleep(1.0)
    assert "worker failed" not in sup.stderr, sup.stderr[-3000:]
    done = subprocess.run(WALLAROO + ["status", state, "--json"], capture_output=True,
                          text=True, timeout=WAIT)
    st = json.loads(done.stdout)
    assert [w["restarts"] for w in st["workers"]] == [0, 0], st
    sup.terminate()


def test_cluster_move_moves_groups_live_and_finishes_one_left_half_done(
        procs, tmp_path):
    """`wallaroo cluster move`: a move left half done (switched, never
    handed over) shows in `wallaroo status`; the command finishes it first,
    then moves what it was asked; the workers' key groups follow, and the
    state moves with them (every letter's partition exists once)."""
    from .chaos.live_move_chaos import half_move
    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, ALPHABET, 3, "--out", "127.0.0.1:9",
                              resilience_dir=state)

    def move(*args) -> subprocess.CompletedProcess:
        return subprocess.run(WALLAROO + ["cluster", "move", state, *args],
                              capture_output=True, text=True, timeout=WAIT)

    bad = move("--groups", "0-9", "--to", "worker-7")
    assert bad.returncode != 0 and "'worker-7' is not a member" in bad.stderr
    bad = move("--groups", "2000", "--to", "worker-1")
    assert bad.returncode != 0 and "2000 is not a key group" in bad.stderr
    bad = move("--groups", "9-3", "--to", "worker-1")
    assert bad.returncode != 0 and "not a group or a range" in bad.stderr

    giver = half_move(state, list(range(0, 100)), "worker-2")
    assert giver == "initializer"
    st = workers_of(state)
    assert st["worker-2"]["live_move"]["groups"] == 100
    text = subprocess.run(WALLAROO + ["status", state], capture_output=True,
                          text=True, timeout=WAIT).stdout
    assert "live move 1 under way: 100 key groups initializer -> worker-2" in text
    # stopped with the move half done, the cluster starts again as it was
    sup.terminate()
    sup.wait(WAIT)
    sup, fields = run_cluster(procs, ALPHABET, 3, "--out", "127.0.0.1:9",
                              resilience_dir=state)
    assert workers_of(state)["worker-2"]["live_move"]["groups"] == 100

    done = move("--groups", "300-399", "--to", "worker-1", "--step", "50")
    assert done.returncode == 0, done.stderr
    assert "move 1 (found under way, finished): 100 key groups initializer -> " \
           "worker-2" in done.stdout
    # epochs after the first come from the clock (microseconds)
    assert re.search(r"^move \d+: 42 key groups initializer -> worker-1 in ",
                     done.stdout, re.M), done.stdout
    assert done.stdout.count("\n") == 3  # two moves and the total
    st = workers_of(state)
    assert st["worker-2"]["live_move"] is None
    # contiguous ranges at the start: initializer 0-341, worker-1 342-682,
    # worker-2 683-1023
    assert [st[n]["key_groups"] for n in ("initializer", "worker-1", "worker-2")] \
        == [342 - 100 - 42, 341 + 42, 341 + 100]
    assert sum(w["partitions"] for w in st.values()) == 26  # each letter once
    again = move("--groups", "0-99", "--to", "worker-2")
    assert again.returncode == 0 and "nothing to move" in again.stdout
    sup.terminate()


def _worker_pid(fields: dict, name: str) -> int:
    """A worker's pid, from the cluster file its supervisor writes."""
    body = json.load(open(fields["cluster_file"]))
    return next(w["pid"] for w in body["workers"] if w["name"] == name)


def test_a_stop_while_a_worker_waits_for_its_restart_is_clean(procs, tmp_path):
    """SIGTERM to the supervisor while a SIGKILLed worker waits out its
    --restart-delay: the stop does not wait for the delay, the worker is
    not restarted, and the supervisor exits 0 (its database recovers it at
    the next start, as docs/cluster.md says of a stop), saying so.  It
    exited 1 before, naming the SIGKILL, when a chaos run's last kill came
    just before its stop."""
    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, ALPHABET, 2, "--out", "127.0.0.1:9",
                              "--restart-delay", "60", resilience_dir=state)
    pid = _worker_pid(fields, "worker-1")
    os.kill(pid, signal.SIGKILL)
    sup.wait_line("worker worker-1 exited (killed by SIGKILL); restarting it in 60.0s")
    t0 = time.monotonic()
    assert sup.terminate(timeout=WAIT) == 0, sup.stderr[-2000:]
    assert time.monotonic() - t0 < 15
    line = sup.wait_line("[supervisor] info: stopped: ")
    assert ("worker-1 down since it exited (killed by SIGKILL), its restart "
            "pending when the stop came") in line, line
    assert "initializer exit status 0" in line
    assert sup.stderr.count("worker-1 | ") and "worker-1 ready again" not in sup.stderr
    # a worker that died during the stop itself is still an error: exit 1
    sup2, fields = run_cluster(procs, ALPHABET, 2, "--out", "127.0.0.1:9",
                               resilience_dir=state)
    pid = _worker_pid(fields, "worker-1")
    os.kill(pid, signal.SIGSTOP)  # it cannot drain; the grace period ends it
    try:
        sup2.signal(signal.SIGTERM)
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        assert sup2.wait(WAIT) == 1
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_stop_that_reaches_a_worker_while_it_restarts_is_clean(procs, tmp_path):
    """SIGTERM to the supervisor just after it restarted a SIGKILLed worker:
    the worker, still starting, dies of the stop's SIGTERM, which loses
    nothing (its database recovers it at the next start), and the
    supervisor exits 0, saying so.  A slow chaos run's stop came at that
    moment and the supervisor exited 1."""
    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, ALPHABET, 2, "--out", "127.0.0.1:9",
                              "--restart-delay", "0", resilience_dir=state)
    pid = _worker_pid(fields, "worker-1")
    os.kill(pid, signal.SIGKILL)
    sup.wait_line("worker worker-1 exited (killed by SIGKILL); restarting it in 0.0s")
    time.sleep(0.05)  # started again, its interpreter still loading
    assert sup.terminate(timeout=WAIT) == 0, sup.stderr[-2000:]
    line = sup.wait_line("[supervisor] info: stopped: ")
    assert "initializer exit status 0" in line
    assert ("worker-1 killed by SIGTERM while it was starting (the stop came "
            "before it could stop cleanly)") in line or \
        "worker-1 exit status 0" in line, line
    sup, fields = run_cluster(procs, ALPHABET, 2, "--out", "127.0.0.1:9",
                              resilience_dir=state)
    assert sup.terminate(timeout=WAIT) == 0, sup.stderr[-2000:]


def test_cluster_grow_live_adds_a_worker_without_stopping_the_others(procs, tmp_path):
    """`wallaroo cluster grow --live`: the workers take the new member
    without a restart (their pids stay), it starts with no key groups, and
    live moves give it the share a rescale would: initializer 342,
    worker-1 341, worker-2 341 of 1,024 groups, every letter's partition
    once.  A restart with --workers 3 finds the same; a worker down during
    the grow takes the new member when it starts."""
    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, ALPHABET, 2, "--out", "127.0.0.1:9",
                              resilience_dir=state)
    votes = tmp_path / "votes.frames"
    subprocess.run(["python", str(REPO / "examples" / "alphabet" / "make_votes.py"),
                    "--count", "2600", str(votes)], check=True, capture_output=True)
    send(fields["sources"], "--frames", str(votes))

    pids = {n: w["pid"] for n, w in workers_of(state).items()}
    done = subprocess.run(WALLAROO + ["cluster", "grow", state, "--live"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr + sup.stderr[-3000:]
    assert re.match(r"grew live in \d+\.\d\ds: 3 workers \(initializer, worker-1, "
                    r"worker-2\); 341 key groups moved to the new workers in 6 "
                    r"moves, the longest wait of a moving group \d+\.\d{3}s$",
                    done.stdout.strip()), done.stdout
    st = workers_of(state)
    assert {n: st[n]["pid"] for n in pids} == pids  # nobody restarted
    assert [st[n]["key_groups"] for n in ("initializer", "worker-1", "worker-2")] \
        == [342, 341, 341]
    assert sum(w["partitions"] for w in st.values()) == 26
    assert not os.path.exists(os.path.join(state, "membership.json"))
    assert "the cluster grew to 3 workers (initializer, worker-1, worker-2); " \
           "nothing moved" in sup.stderr
    assert sup.terminate(timeout=WAIT) == 0, sup.stderr[-2000:]
    sup, fields = run_cluster(procs, ALPHABET, 3, "--out", "127.0.0.1:9",
                              resilience_dir=state)
    st = workers_of(state)
    assert [st[n]["key_groups"] for n in ("initializer", "worker-1", "worker-2")] \
        == [342, 341, 341]
    # worker-2 is down while the cluster grows again: it takes worker-3 at
    # its restart
    os.kill(st["worker-2"]["pid"], signal.SIGKILL)
    done = subprocess.run(WALLAROO + ["cluster", "grow", state, "--live"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr + sup.stderr[-3000:]
    st = workers_of(state)
    assert sorted(st) == ["initializer", "worker-1", "worker-2", "worker-3"]
    assert sum(w["key_groups"] for w in st.values()) == 1024
    assert [st[n]["key_groups"] for n in ("initializer", "worker-1", "worker-2",
                                           "worker-3")] == [256, 256, 256, 256]
    assert sum(w["partitions"] for w in st.values()) == 26
    sup.terminate(timeout=WAIT)


def test_a_live_grow_refused_or_taken_half_way(procs, tmp_path):
    """A member that does not answer (SIGSTOP) before anything changed: the
    grow is refused and nothing changes.  A grow that only the initializer
    took (its LIVE_ADD_MEMBERS asked directly, as a grow that stopped
    after it): the next `grow --live` finds it taken there, has worker-1
    take the same membership, and finishes it."""
    import trio

    from wallaroo.connectors.auth import load_secret
    from wallaroo.runtime.live_coordinator import Coordinator
    state = str(tmp_path / "state")
    sup = procs("run", ALPHABET, "--in", "127.0.0.1:0", "--out", "127.0.0.1:9",
                "--workers", "2", "--resilience-dir", state,
                env={"WALLAROO_GROW_WAIT": "3"})
    sup.wait_line(lambda line: line.startswith("ready "), timeout=60)

    def grow(*args) -> subprocess.CompletedProcess:
        return subprocess.run(WALLAROO + ["cluster", "grow", state, *args],
                              capture_output=True, text=True, timeout=WAIT)

    st = workers_of(state)
    pid = st["worker-1"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        refused = grow("--live")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert refused.returncode != 0
    assert "worker 'worker-1' did not answer LIVE_STATUS in time" in refused.stderr
    assert "nothing changed" in refused.stderr
    assert sorted(workers_of(state)) == ["initializer", "worker-1"]
    # the initializer alone takes worker-2
    control = st["initializer"]["control"]
    addresses = {"initializer": (control.rpartition(":")[0],
                                 int(control.rpartition(":")[2]))}
    c = Coordinator(addresses, load_secret(os.path.join(state, "cluster.secret")), 30)
    trio.run(lambda: c.ask("initializer", "LIVE_ADD_MEMBERS",
                           {"members": ["initializer", "worker-1", "worker-2"]}))
    done = grow("--live")
    assert done.returncode == 0, done.stderr + sup.stderr[-3000:]
    assert ": 3 workers (initializer, worker-1, worker-2); 341 key groups" \
        in done.stdout, done.stdout
    st = workers_of(state)
    assert [st[n]["key_groups"] for n in ("initializer", "worker-1", "worker-2")] \
        == [342, 341, 341]
    assert sum(w["partitions"] for w in st.values()) == 26  # each letter once
    sup.terminate(timeout=WAIT)


def test_cluster_shrink_live_lets_a_member_that_joined_leave_while_input_flows(
        procs, tmp_path):
    """2 workers grow live to 3, then worker-2 leaves live while a
    resumable sender streams 1..3000 (its connection is worker-2's, which
    is SIGKILLed and restarted just before: it reconnects and resumes).
    The supervisor's exit status forgets that kill once worker-2 left.  The others keep their pids, take its key
    groups back (512/512), and every sequence window arrives once; its
    database is marked retired, `--query` says who may leave live, and a
    restart with --workers 2 starts the two without rescaling."""
    state = str(tmp_path / "state")
    out = tmp_path / "out.bin"
    recv, sink = start_receiver(procs, "--framing", "length", "--output", out)
    sup, fields = run_cluster(procs, REPO / "tests" / "chaos" / "sequence_window.py",
                              2, "--out", f"127.0.0.1:{sink}", resilience_dir=state)

    def cluster(*args):
        return subprocess.run(WALLAROO + ["cluster", *args], capture_output=True,
                              text=True, timeout=WAIT)

    done = cluster("shrink", state, "--count", "1", "--live")
    assert done.returncode != 0
    assert "worker-1 did not join while the cluster ran" in done.stderr, done.stderr
    done = cluster("grow", state, "--live")
    assert done.returncode == 0, done.stderr + sup.stderr[-3000:]
    done = cluster("shrink", state, "--query")
    assert "may leave with --live (the last ones of these): worker-2" in done.stdout
    frames = tmp_path / "in.frames"
    frames.write_bytes(u64_frames(range(1, 3001)))
    # two idle clients first: the supervisor hands each connection to the
    # member holding the fewest, so the sender's is worker-2's
    host, port = fields["sources"].rsplit(":", 1)
    idle = []
    for _ in range(2):
        idle.append(socket.create_connection((host, int(port))))
        time.sleep(0.3)
    sender = subprocess.Popen(WALLAROO + ["send", fields["sources"], "--frames",
                                          str(frames), "--resumable", "seq",
                                          "--rate", "1000", "--quiet"],
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    pids = {n: w["pid"] for n, w in workers_of(state).items()}
    # killed once before it leaves: that exit is not the cluster's at the stop
    os.kill(pids["worker-2"], signal.SIGKILL)
    done = cluster("shrink", state, "--count", "1", "--live")
    assert done.returncode == 0, done.stderr + sup.stderr[-3000:]
    assert re.match(r"shrank live in \d+\.\d\ds: 2 workers \(initializer, "
                    r"worker-1\); 341 key groups moved from the leaving workers "
                    r"in \d+ moves, the longest wait of a moving group "
                    r"\d+\.\d{3}s$", done.stdout.strip()), done.stdout
    assert sender.wait(timeout=WAIT) == 0, sender.stderr.read()
    assert "forwarded by worker 'worker-2'" in sup.stderr  # its connection
    for s in idle:
        s.close()
    st = workers_of(state)
    assert sorted(st) == ["initializer", "worker-1"]
    assert {n: st[n]["pid"] for n in st} == {n: pids[n] for n in st}
    assert [st[n]["key_groups"] for n in ("initializer", "worker-1")] == [512, 512]
    assert "worker worker-2 left the cluster" in sup.stderr
    assert "the cluster shrank to 2 workers (initializer, worker-1); nothing " \
           "moved" in sup.stderr
    deadline = time.monotonic() + WAIT
    while len(read_frames(out.read_bytes() if out.exists() else b"")) < 3000:
        assert time.monotonic() < deadline, sup.stderr[-3000:]
        time.sleep(0.05)
    report = validate(read_frames(out.read_bytes()), 3000)
    assert report.ok, report.summary()
    inspect = subprocess.run(WALLAROO + ["recovery", "inspect", state, "--worker",
                                         "worker-2"], capture_output=True,
                             text=True, timeout=WAIT)
    assert "retired" in inspect.stdout and "left the cluster while it ran" in \
        inspect.stdout, inspect.stdout + inspect.stderr
    assert sup.terminate(timeout=WAIT) == 0, sup.stderr[-2000:]
    sup, fields = run_cluster(procs, REPO / "tests" / "chaos" / "sequence_window.py",
                              2, "--out", f"127.0.0.1:{sink}", resilience_dir=state)
    assert "rescaling from" not in sup.stderr
    frames.write_bytes(u64_frames(range(1, 3601)))
    send(fields["sources"], "--frames", str(frames), "--resumable", "seq")
    while len(read_frames(out.read_bytes())) < 3600:
        assert time.monotonic() < deadline, sup.stderr[-3000:]
        time.sleep(0.05)
    assert sup.terminate(timeout=WAIT) == 0, sup.stderr[-2000:]
    report = validate(read_frames(out.read_bytes()), 3600)
    assert report.ok, report.summary()
