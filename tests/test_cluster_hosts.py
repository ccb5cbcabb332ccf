"""A cluster over three real "hosts" (network namespaces with their own
addresses; ``tests/netns.py``), formed with Wallaroo's flags: the initializer
with ``--cluster-initializer --worker-count 3 --control --data``, the others
joining through its control address.  Senders and the receiver run outside
the hosts.  While data flows, one host's link goes down for a few seconds
(a network partition) and the initializer is SIGKILLed and restarted with its
original command line: nothing is lost or applied twice, and the other
workers keep serving the keys they own during the partition."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time

import pytest

from .chaos.cluster_chaos import APP, NAMES, read_frames, vote_keys
from .conftest import WAIT, WALLAROO, free_port
from .host_cluster import assert_exactly_once
from .netns import BRIDGE_ADDR, Hosts, can_make_hosts

why = can_make_hosts()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


def worker_args(i: int, hosts: Hosts, secret: str, state: str, sink: int) -> list[str]:
    me = hosts.address(i)
    base = ["run", APP, "--in", f"{me}:7000,{me}:7001", "--out",
            f"{BRIDGE_ADDR}:{sink}", "--resilience-dir", state,
            "--cluster-secret-file", secret, "--resumable-sinks",
            "--checkpoint-interval", "0.5"]
    if i == 1:
        return base + ["--cluster-initializer", "--worker-count", "3",
                       "--control", f"{me}:7100", "--data", f"{me}:7101"]
    return base + ["--control", f"{hosts.address(1)}:7100", "--name", NAMES[i - 1],
                   "--my-control", f"{me}:7100", "--my-data", f"{me}:7101"]


def test_three_hosts_a_partition_and_a_restarted_initializer(procs, hosts, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("a cluster secret of enough length\n")
    os.chmod(secret, 0o600)
    out = tmp_path / "received.bin"
    sink = free_port()
    recv = procs("receive", "--listen", f"{BRIDGE_ADDR}:{sink}", "--resumable",
                 "--framing", "length", "--output", out)
    recv.wait_line(lambda line: line.startswith("listening"))
    states = [str(tmp_path / f"state{i}") for i in (1, 2, 3)]
    args = {i: worker_args(i, hosts, str(secret), states[i - 1], sink) for i in (1, 2, 3)}
    workers = {i: procs(*args[i], prefix=hosts.run_in(i, [])) for i in (3, 2, 1)}
    for i in (1, 2, 3):
        workers[i].wait_line(lambda line: line.startswith("ready"), timeout=60)
    assert "forming a cluster of 3 workers" in workers[1].stderr
    # every worker's own entry in its directory; status from any of them
    for i in (1, 2, 3):
        own = json.load(open(os.path.join(states[i - 1], "cluster.json")))
        assert [w["name"] for w in own["workers"]] == [NAMES[i - 1]]
        assert own["workers"][0]["state"] == "ready"
    st = subprocess.run(WALLAROO + ["status", states[1], "--cluster-secret-file",
                                    str(secret), "--json"],
                        capture_output=True, text=True, timeout=WAIT)
    assert st.returncode == 0, st.stderr
    assert [(w["name"], w["state"]) for w in json.loads(st.stdout)["workers"]] == [
        (n, "ready") for n in NAMES]
    messages, votes = 6000, 6000
    keys = vote_keys(votes, 99)
    frames = tmp_path / "votes.frames"
    frames.write_bytes(b"".join(struct.pack(">IIH", 6, n, k) for n, k in enumerate(keys)))
    # the senders reach worker-1's sources; streams they do not own go on
    senders = [procs("send", f"{hosts.address(2)}:7000", "--u64", str(messages),
                     "--resumable", "seq", "--rate", "1000", "--connect-timeout", "120",
                     "--quiet"),
               procs("send", f"{hosts.address(2)}:7001", "--frames", frames,
                     "--resumable", "votes", "--rate", "1000", "--connect-timeout",
                     "120", "--quiet")]
    time.sleep(0.5)
    start = len(read_frames(out.read_bytes()))
    time.sleep(1.0)
    # a partition: worker-2's host is cut off for 3 seconds; the others go on
    before = len(read_frames(out.read_bytes()))
    hosts.cut(3)
    time.sleep(3.0)
    during = len(read_frames(out.read_bytes()))
    hosts.heal(3)
    print(f"outputs/s before the partition {before - start:.0f}, while worker-2's "
          f"host is cut off {(during - before) / 3:.0f}")
    assert during > before + 100, (before, during)  # others kept serving
    time.sleep(1.0)
    # the initializer dies and comes back with its original command line
    workers[1].signal(signal.SIGKILL)
    workers[1].wait()
    workers[1] = procs(*args[1], prefix=hosts.run_in(1, []))
    workers[1].wait_line(lambda line: line.startswith("ready"), timeout=60)
    assert "rejoining the cluster of initializer, worker-1, worker-2" in workers[1].stderr
    assert [s.wait(timeout=180) for s in senders] == [0, 0]
    assert_exactly_once(out, messages, keys, 60)
    for w in workers.values():
        assert w.terminate(timeout=60) == 0


def test_a_run_that_does_not_match_the_formed_cluster_is_refused(procs, hosts, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("a cluster secret of enough length\n")
    sink = free_port()
    states = [str(tmp_path / f"state{i}") for i in (1, 2, 3)]
    args = {i: worker_args(i, hosts, str(secret), states[i - 1], sink) for i in (1, 2, 3)}
    workers = {i: procs(*args[i], prefix=hosts.run_in(i, [])) for i in (1, 2, 3)}
    for i in (1, 2, 3):
        workers[i].wait_line(lambda line: line.startswith("ready"), timeout=60)
    for i in (1, 2):
        workers[i].terminate()
    bad = [a if a != "3" else "4" for a in args[1]]  # --worker-count 4
    again = procs(*bad, prefix=hosts.run_in(1, []))
    assert again.wait(timeout=WAIT) == 2
    assert "the cluster was formed with 3 workers" in again.stderr
    moved = [a.replace(":7101", ":7102") for a in args[2]]  # --my-data changed
    again = procs(*moved, prefix=hosts.run_in(2, []))
    assert again.wait(timeout=WAIT) == 2
    assert "start it with its original command line" in again.stderr
    other = tmp_path / "other-secret"
    other.write_text("not the cluster's secret at all\n")
    stranger = [a if a != str(secret) else str(other) for a in args[1]]
    workers[1] = procs(*args[1], prefix=hosts.run_in(1, []))
    workers[1].wait_line(lambda line: line.startswith("ready"), timeout=60)
    intruder = procs(*[a if a != str(secret) else str(other) for a in args[2]],
                     prefix=hosts.run_in(2, []))
    # with the wrong secret it can start from its own database, but no
    # other worker lets it in: its channels are refused, and they drop it
    intruder.wait_line("does not hold the cluster secret", timeout=30)
    assert workers[1].wait_line("dropped a connection from", timeout=30)
    assert stranger
    # a member restarted without its database cannot come back by joining
    # again: the formed cluster says why
    lost = [a if a != states[2] else str(tmp_path / "empty") for a in args[3]]
    workers[3].kill()
    again = procs(*lost, prefix=hosts.run_in(3, []))
    assert again.wait(timeout=WAIT) == 2
    assert "rejoins from the membership saved" in again.stderr
