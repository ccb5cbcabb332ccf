"""Shared helpers for tests that run real ``wallaroo`` processes.

``procs`` starts ``python -m wallaroo.cli ...`` processes whose stderr is
read line by line in a thread, so a test waits for a line (``ready``,
``listening on``) with a timeout instead of sleeping; whatever is still
running at the end of the test is killed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "tests" / "apps"
WAIT = 20.0  # generous: the machine is shared
WALLAROO = [sys.executable, "-m", "wallaroo.cli"]


class Proc:
    """A ``wallaroo`` subprocess whose stderr is read line by line in a
    thread, so a test can wait for a line with a timeout."""

    def __init__(self, args, stdout=subprocess.DEVNULL, env=None, preexec_fn=None,
                 prefix: list[str] | None = None):
        """``prefix``: run it through this (e.g. ``ip netns exec NS``)."""
        self.args = [str(a) for a in args]
        self.p = subprocess.Popen((prefix or []) + WALLAROO + self.args, stdout=stdout,
                                  stdin=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, cwd=REPO,
                                  env=None if env is None else {**os.environ, **env},
                                  preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        for raw in self.p.stderr:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self.cond.notify_all()

    @property
    def pid(self) -> int:
        return self.p.pid

    @property
    def stderr(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def wait_line(self, pred, timeout: float = WAIT) -> str:
        """The first stderr line for which ``pred(line)`` is true (a string:
        the line contains it)."""
        if isinstance(pred, str):
            text = pred
            pred = lambda line: text in line  # noqa: E731
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not self.thread.is_alive()):
                    raise AssertionError(
                        f"no matching line from wallaroo {' '.join(self.args)} "
                        f"(exit {self.p.poll()}); stderr:\n" + "\n".join(self.lines))
                self.cond.wait(min(left, 0.1))

    def wait(self, timeout: float = WAIT) -> int:
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"wallaroo {' '.join(self.args)} still running "
                                 f"after {timeout}s; stderr:\n{self.stderr}") from None
        self.thread.join(5)
        return rc

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def terminate(self, timeout: float = WAIT) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        self.thread.join(5)


@pytest.fixture
def procs():
    started: list[Proc] = []

    def start(*args, **kw) -> Proc:
        proc = Proc(args, **kw)
        started.append(proc)
        return proc
    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


@pytest.fixture
def hosts():
    """Three hosts: network namespaces at 10.77.0.1 .. 10.77.0.3
    (``tests/netns.py``); a test using them skips where they cannot be
    made (``netns.can_make_hosts``)."""
    from .netns import Hosts
    h = Hosts(3)
    try:
        yield h
    finally:
        h.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready_fields(line: str) -> dict[str, str]:
    return dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)


def start_worker(procs, app, *extra, out_port: int | None = None,
                 in_addr: str = "127.0.0.1:0", **kw) -> tuple[Proc, int]:
    """``wallaroo run APP --in ... --out ...``; waits for ``ready`` and
    returns the process and its (first) source port."""
    out = f"127.0.0.1:{out_port if out_port is not None else free_port()}"
    proc = procs("run", app, "--in", in_addr, "--out", out, *extra, **kw)
    ready = proc.wait_line(lambda line: line.startswith("ready"))
    m = re.search(r"sources=[^:]+:(\d+)", ready)
    assert m, ready
    return proc, int(m.group(1))


def start_receiver(procs, *args, stdout=subprocess.DEVNULL) -> tuple[Proc, int]:
    proc = procs("receive", "--listen", "127.0.0.1:0", *args, stdout=stdout)
    first = proc.wait_line(lambda line: True)
    m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", first)
    assert m, f"first stderr line is {first!r}"
    return proc, int(m.group(1))


def u64_frames(values, fmt=">I") -> bytes:
    return b"".join(struct.pack(fmt, 8) + struct.pack(">Q", v) for v in values)


def connect(port: int, timeout: float = WAIT) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def send_all_and_close(port: int, data: bytes) -> None:
    with connect(port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(WAIT)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass


def sums(data: bytes) -> list[tuple[int, int]]:
    """(value, running sum) records of the u64-sum apps' output."""
    out, pos = [], 0
    while pos + 20 <= len(data):
        n, v, s = struct.unpack_from(">IQQ", data, pos)
        assert n == 16
        out.append((v, s))
        pos += 20
    return out


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """One Kafka-protocol broker for the session (the noida-db wheel's
    binary, stopped with SIGTERM at the end); each test makes its own
    topics with ``kafka_broker.create_topic(name, partitions)``."""
    from wallaroo.tools.kafka_broker import Broker
    b = Broker()
    b.start(tmp_path_factory.mktemp("kafka"))
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def kafka_topic(kafka_broker, request):
    """A function making fresh topics named after the test."""
    made = []

    def make(partitions: int = 1, suffix: str = "") -> str:
        name = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:150]
        name = f"{name}-{suffix or len(made)}"
        kafka_broker.create_topic(name, partitions=partitions)
        made.append(name)
        return name
    return make
