"""A cluster over network-namespace hosts for the rescale tests
(``tests/test_host_rescale.py``, ``tests/chaos/test_host_rescale_chaos.py``):
``cluster_app.py`` on the initializer (host 1, ``--worker-count 2``),
worker-1 (host 2) and worker-2 (host 3, which joins with ``--join``), fed by
two resumable senders (u64 values for the sequence windows, votes for 1000
keys) and read by a resumable receiver in the root namespace; every output
checked."""

from __future__ import annotations

import os
import struct
import subprocess
import time

from .chaos.cluster_chaos import APP, check, read_frames, vote_keys
from .conftest import WALLAROO, free_port
from .netns import BRIDGE_ADDR, Hosts

NAMES = {1: "initializer", 2: "worker-1", 3: "worker-2"}


class Cluster:
    def __init__(self, procs, hosts: Hosts, tmp_path, messages: int, votes: int,
                 rate: int):
        self.procs, self.hosts, self.tmp = procs, hosts, tmp_path
        self.secret = tmp_path / "secret"
        self.secret.write_text("a cluster secret of enough length\n")
        os.chmod(self.secret, 0o600)
        self.out = tmp_path / "received.bin"
        self.sink = free_port()
        self.recv = procs("receive", "--listen", f"{BRIDGE_ADDR}:{self.sink}",
                          "--resumable", "--framing", "length", "--output", self.out)
        self.recv.wait_line(lambda line: line.startswith("listening"))
        self.messages, self.votes = messages, votes
        self.keys = vote_keys(votes, 7)
        self.rate = rate
        self.workers: dict[int, object] = {}
        # each host's worker name and resilience directory (a host may
        # join again as another worker)
        self.names = dict(NAMES)
        self.states = {i: str(tmp_path / f"state{i}") for i in NAMES}

    def state(self, i: int) -> str:
        return self.states[i]

    def args(self, i: int) -> list[str]:
        me = self.hosts.address(i)
        base = ["run", APP, "--in", f"{me}:7000,{me}:7001", "--out",
                f"{BRIDGE_ADDR}:{self.sink}", "--resilience-dir", self.state(i),
                "--cluster-secret-file", str(self.secret), "--resumable-sinks",
                "--checkpoint-interval", "0.5"]
        if i == 1:
            return base + ["--cluster-initializer", "--worker-count", "2",
                           "--control", f"{me}:7100", "--data", f"{me}:7101"]
        ctl = f"{self.hosts.address(1)}:7100"
        how = ["--control", ctl] if i == 2 else ["--join", ctl]
        return base + how + ["--name", self.names[i], "--my-control", f"{me}:7100",
                             "--my-data", f"{me}:7101"]

    def start(self, i: int, env: dict | None = None):
        self.workers[i] = self.procs(*self.args(i), prefix=self.hosts.run_in(i, []),
                                     env=env)
        return self.workers[i]

    def send(self, host: int) -> list:
        frames = self.tmp / "votes.frames"
        frames.write_bytes(b"".join(struct.pack(">IIH", 6, n, k)
                                    for n, k in enumerate(self.keys)))
        to = self.hosts.address(host)
        self.senders = [
            self.procs("send", f"{to}:7000", "--u64", str(self.messages),
                       "--resumable", "seq", "--rate", str(self.rate),
                       "--connect-timeout", "180", "--quiet"),
            self.procs("send", f"{to}:7001", "--frames", frames, "--resumable",
                       "votes", "--rate", str(self.rate), "--connect-timeout",
                       "180", "--quiet")]
        return self.senders

    def received(self) -> int:
        return len(read_frames(self.out.read_bytes()))

    def check_all(self) -> None:
        assert [s.wait(timeout=240) for s in self.senders] == [0, 0]
        assert_exactly_once(self.out, self.messages, self.keys, 90)

    def start_two_and_send(self, to: int, after: float,
                           env: dict | None = None) -> None:
        """The cluster of the initializer and worker-1, both ready; the
        senders to host ``to``, then ``after`` seconds."""
        for i in (1, 2):
            self.start(i, env)
        for i in (1, 2):
            self.workers[i].wait_line(lambda line: line.startswith("ready"),
                                      timeout=60)
        self.send(to)
        time.sleep(after)

    def grown_and_checked(self, timeout: float) -> None:
        """The grow to three workers done and every worker ready again;
        every output exactly once; every worker stops with exit 0."""
        self.workers[1].wait_line(lambda l: " done: 2 -> 3 workers" in l,
                                  timeout=timeout)
        for i in (1, 2, 3):
            self.workers[i].wait_line(lambda line: line.startswith("ready"),
                                      timeout=120)
        self.check_all()
        for w in self.workers.values():
            assert w.terminate(timeout=60) == 0

    def shrink_args(self, via: int, *args: str) -> list[str]:
        return WALLAROO + ["cluster", "shrink", "--control",
                           f"{self.hosts.address(via)}:7100", "--cluster-secret-file",
                           str(self.secret), *args]

    def shrink(self, via: int, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.shrink_args(via, *args), capture_output=True,
                              text=True, timeout=300)


def assert_exactly_once(out, messages: int, keys: list[int], timeout: float) -> None:
    """Every window and vote in the receiver's file ``out`` (waiting for
    them up to ``timeout`` seconds), each once, gap- and repeat-free."""
    deadline = time.monotonic() + timeout
    while len(read_frames(out.read_bytes())) < messages + len(keys):
        assert time.monotonic() < deadline, "outputs missing"
        time.sleep(0.2)
    time.sleep(0.5)

    class R:
        lost_windows = duplicate_windows = bad_windows = 0
        lost_votes = duplicate_votes = wrong_totals = 0
    res = R()
    check(read_frames(out.read_bytes()), messages, keys, res)
    assert (res.lost_windows, res.duplicate_windows, res.bad_windows) == (0, 0, 0)
    assert (res.lost_votes, res.duplicate_votes, res.wrong_totals) == (0, 0, 0)
