"""``wallaroo send`` and ``wallaroo receive``: real processes, real sockets.

Every process is started as ``python -m wallaroo.cli`` and killed in the
``procs`` fixture's teardown.  Tests wait on the lines the tools print
(``listening on``, ``ready``, retry notices), never on fixed sleeps.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import string
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ALPHABET = REPO / "examples" / "alphabet_partitioned" / "alphabet_partitioned.py"
U64_SUM = REPO / "tests" / "apps" / "u64_sum.py"
WAIT = 20.0  # generous: the machine is shared


class Proc:
    """A ``wallaroo`` subprocess whose stderr is read line by line in a
    thread, so a test can wait for a line with a timeout."""

    def __init__(self, args, stdout=subprocess.DEVNULL):
        self.args = [str(a) for a in args]
        self.p = subprocess.Popen([sys.executable, "-m", "wallaroo.cli", *self.args],
                                  stdout=stdout, stderr=subprocess.PIPE, cwd=REPO)
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
    def stderr(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def wait_line(self, pred, timeout: float = WAIT) -> str:
        """The first stderr line for which ``pred(line)`` is true."""
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

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


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


def start_receiver(procs, *args, stdout=subprocess.DEVNULL) -> tuple[Proc, int]:
    proc = procs("receive", "--listen", "127.0.0.1:0", *args, stdout=stdout)
    first = proc.wait_line(lambda line: True)
    m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", first)
    assert m, f"first stderr line is {first!r}"
    port = int(m.group(1))
    assert port != 0
    return proc, port


def start_worker(procs, app, in_addr, out_port, *extra) -> tuple[Proc, int]:
    proc = procs("run", app, "--in", in_addr, "--out", f"127.0.0.1:{out_port}",
                 *extra)
    ready = proc.wait_line(lambda line: line.startswith("ready"))
    m = re.search(r"sources=127\.0\.0\.1:(\d+)", ready)
    assert m, ready
    return proc, int(m.group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def u64_frames(values, fmt=">I") -> bytes:
    return b"".join(struct.pack(fmt, 8) + struct.pack(">Q", v) for v in values)


def summary(proc: Proc, word: str) -> str:
    return proc.wait_line(lambda line: line.startswith(word + " "))


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


# --- send: the three inputs ----------------------------------------------


def test_u64_frames_arrive_exactly(procs, tmp_path):
    out = tmp_path / "out.bin"
    receiver, port = start_receiver(procs, "--framing", "length", "--expect", "1000",
                                    "--output", out)
    sender = procs("send", f"127.0.0.1:{port}", "--u64", "1000", "--start", "5",
                   "--batch", "64")
    assert sender.wait() == 0, sender.stderr
    assert re.match(r"sent 1000 messages \(12000 bytes\) in \d+\.\d\ds \(\d+ msg/s\)$",
                    summary(sender, "sent"))
    assert receiver.wait() == 0, receiver.stderr
    assert out.read_bytes() == u64_frames(range(5, 1005))
    line = summary(receiver, "received")
    assert line.startswith("received 1000 records (12000 bytes) on 1 connection in ")
    assert "0 incomplete records dropped" in line
    assert "stopped: expected count reached" in line


def test_file_lines_are_messages_and_repeat(procs, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes("hello\nwörld\r\n\nlast".encode("utf-8"))  # no final newline
    out = tmp_path / "out.txt"
    receiver, port = start_receiver(procs, "--framing", "length", "--format", "text",
                                    "--expect", "8", "--output", out)
    sender = procs("send", f"127.0.0.1:{port}", "--file", src, "--repeat", "2")
    assert sender.wait() == 0, sender.stderr
    assert summary(sender, "sent").startswith("sent 8 messages (")
    assert receiver.wait() == 0, receiver.stderr
    assert out.read_text("utf-8") == "hello\nwörld\n\nlast\n" * 2


def test_frames_file_with_short_headers_and_repr(procs, tmp_path):
    payloads = [b"a", b"", b"x\x00\xff" * 100, b"'quote'"]
    frames = tmp_path / "in.frames"
    frames.write_bytes(b"".join(struct.pack(">H", len(p)) + p for p in payloads))
    out = tmp_path / "out.txt"
    receiver, port = start_receiver(procs, "--framing", "length", "--header-fmt", ">H",
                                    "--format", "repr", "--expect", "4", "--output", out)
    sender = procs("send", f"127.0.0.1:{port}", "--frames", frames,
                   "--header-fmt", ">H", "--batch", "3")
    assert sender.wait() == 0, sender.stderr
    assert receiver.wait() == 0, receiver.stderr
    assert out.read_text("ascii") == "".join(repr(p) + "\n" for p in payloads)


def test_torn_frames_file_is_refused(procs, tmp_path):
    frames = tmp_path / "torn.frames"
    frames.write_bytes(u64_frames([1, 2]) + b"\x00\x00\x00\x08abc")
    sender = procs("send", f"127.0.0.1:{free_port()}", "--frames", frames)
    assert sender.wait() == 1
    assert str(frames) in sender.stderr and "frame 3" in sender.stderr


def test_line_too_long_for_the_header_is_refused(procs, tmp_path):
    src = tmp_path / "long.txt"
    src.write_bytes(b"short\n" + b"x" * 300 + b"\n")
    sender = procs("send", f"127.0.0.1:{free_port()}", "--file", src,
                   "--header-fmt", ">B")
    assert sender.wait() == 1
    assert f"{src}: line 2 is 300 bytes, too long for a '>B' length header" \
        in sender.stderr


def test_usage_errors(procs, tmp_path):
    cases = [
        ("send", "127.0.0.1:7010"),  # no input
        ("send", "127.0.0.1:7010", "--u64", "3", "--frames", __file__),  # two
        ("send", "127.0.0.1:7010", "--u64", "3", "--header-fmt", ">II"),
        ("send", "127.0.0.1:7010", "--u64", "3", "--resumable", "bad name"),
        ("send", "nowhere", "--u64", "3"),
        ("receive", "--listen", "127.0.0.1:0", "--expect", "3"),  # raw framing
        ("receive", "--listen", "127.0.0.1:0", "--framing", "length",
         "--header-fmt", "x"),
    ]
    started = [procs(*args) for args in cases]
    for args, proc in zip(cases, started):
        assert proc.wait() == 2, (args, proc.stderr)
        assert "Error" in proc.stderr, (args, proc.stderr)


# --- receive: framing, formats, stopping ------------------------------------


def test_raw_framing_passes_bytes_through_to_stdout(procs):
    receiver, port = start_receiver(procs, "--idle-timeout", "0.3",
                                    stdout=subprocess.PIPE)
    with connect(port) as s:
        s.sendall(b"\x00abc\nxyz")
    with connect(port) as s:
        s.sendall(b"second")
    assert receiver.wait() == 0, receiver.stderr
    assert receiver.p.stdout.read() in (b"\x00abc\nxyzsecond", b"second\x00abc\nxyz")
    line = summary(receiver, "received")
    assert "(14 bytes) on 2 connections" in line
    assert "stopped: no data for 0.3s" in line


def test_lines_framing_hex_drops_unterminated_line(procs, tmp_path):
    out = tmp_path / "out.txt"
    receiver, port = start_receiver(procs, "--framing", "lines", "--format", "hex",
                                    "--idle-timeout", "0.3", "--output", out)
    with connect(port) as s:
        s.sendall(b"ab\ncd\r\n")
        s.sendall(b"ef")
    assert receiver.wait() == 0, receiver.stderr
    assert out.read_text() == "6162\n63640d\n"
    line = summary(receiver, "received")
    assert line.startswith("received 2 records (7 bytes) on 1 connection")
    assert "1 incomplete record dropped (2 bytes)" in line


def test_lines_framing_text_and_raw(procs, tmp_path):
    for fmt, expected in (("text", b"one\ntwo\n"), ("raw", b"one\r\ntwo\n")):
        out = tmp_path / f"out.{fmt}"
        receiver, port = start_receiver(procs, "--framing", "lines", "--format", fmt,
                                        "--expect", "2", "--output", out)
        with connect(port) as s:
            s.sendall(b"one\r\ntw")
            s.sendall(b"o\n")
        assert receiver.wait() == 0, receiver.stderr
        assert out.read_bytes() == expected


def test_text_format_replaces_invalid_utf8(procs, tmp_path):
    out = tmp_path / "out.txt"
    receiver, port = start_receiver(procs, "--framing", "length", "--format", "text",
                                    "--expect", "2", "--output", out)
    with connect(port) as s:
        for payload in (b"caf\xc3\xa9", b"bad \xff byte"):
            s.sendall(struct.pack(">I", len(payload)) + payload)
    assert receiver.wait() == 0, receiver.stderr
    assert out.read_text("utf-8") == "caf\u00e9\nbad \ufffd byte\n"


def test_incomplete_record_at_connection_end_is_dropped(procs, tmp_path):
    """Records are split per connection; a torn record is never written,
    even when another connection's data arrives in between."""
    out = tmp_path / "out.bin"
    receiver, port = start_receiver(procs, "--framing", "length", "--expect", "5",
                                    "--verbose", "--output", out)
    whole = u64_frames([1, 2, 3])
    with connect(port) as a, connect(port) as b:
        a.sendall(whole + u64_frames([4])[:7])  # a sink killed mid-record
        b.sendall(u64_frames([10])[:5])
        a.close()
        receiver.wait_line(lambda line: line.startswith("connection 1 ")
                           and "dropped an incomplete record of 7 bytes" in line)
        b.sendall(u64_frames([10])[5:] + u64_frames([11]))
    assert receiver.wait() == 0, receiver.stderr
    assert out.read_bytes() == whole + u64_frames([10, 11])
    line = summary(receiver, "received")
    assert line.startswith("received 5 records (60 bytes) on 2 connections")
    assert "1 incomplete record dropped (7 bytes)" in line


def test_oversized_header_closes_only_that_connection(procs, tmp_path):
    out = tmp_path / "out.bin"
    receiver, port = start_receiver(procs, "--framing", "length", "--idle-timeout",
                                    "0.5", "--max-record-size", "100", "--output", out)
    with connect(port) as s:
        s.sendall(u64_frames([1]) + struct.pack(">I", 1000) + b"junk")
        assert s.recv(10) == b""  # the receiver closed it
    assert receiver.wait() == 0, receiver.stderr
    assert out.read_bytes() == u64_frames([1])
    assert "over --max-record-size 100" in receiver.stderr
    assert "1 incomplete record dropped (8 bytes)" in summary(receiver, "received")


def test_idle_timeout_starts_with_the_first_data(procs):
    receiver, port = start_receiver(procs, "--framing", "length", "--idle-timeout",
                                    "0.3")
    with pytest.raises(subprocess.TimeoutExpired):
        receiver.p.wait(1.0)  # idle, but nothing arrived yet: keeps waiting
    t0 = time.monotonic()
    with connect(port) as s:
        s.sendall(u64_frames([7]))
    assert receiver.wait() == 0
    assert time.monotonic() - t0 < 10
    line = summary(receiver, "received")
    assert line.startswith("received 1 record (12 bytes) on 1 connection")


def test_timeout_and_signals_print_the_summary(procs, tmp_path):
    receiver, _ = start_receiver(procs, "--timeout", "0.3")
    assert receiver.wait() == 0
    assert summary(receiver, "received").startswith(
        "received 0 records (0 bytes) on 0 connections in 0.00s; 0 incomplete "
        "records dropped; stopped: timeout of 0.3s")
    for sig in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / f"out.{sig.name}"
        receiver, port = start_receiver(procs, "--framing", "length", "--output", out)
        with connect(port) as s:
            s.sendall(u64_frames([1, 2]) + b"\x00")  # one segment on loopback
            wait_for(lambda: out.stat().st_size == 24, "the two whole records")
            receiver.p.send_signal(sig)
            assert receiver.wait() == 0
        line = summary(receiver, "received")
        assert line.startswith("received 2 records (24 bytes) on 1 connection"), line
        assert f"1 incomplete record dropped (1 bytes); stopped: received " \
               f"{sig.name}" in line


def test_quiet_receiver_prints_only_the_listening_line(procs):
    receiver, _ = start_receiver(procs, "--timeout", "0.2", "--quiet")
    assert receiver.wait() == 0
    assert receiver.lines == [receiver.lines[0]]


def test_listen_on_a_busy_port_is_an_error(procs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        receiver = procs("receive", "--listen", f"127.0.0.1:{port}")
        assert receiver.wait() == 1
    assert f"cannot listen on 127.0.0.1:{port}" in receiver.stderr


# --- send: pacing, connecting, errors ---------------------------------------


def test_rate_limit(procs, tmp_path):
    out = tmp_path / "out.bin"
    receiver, port = start_receiver(procs, "--framing", "length", "--expect", "300",
                                    "--output", out)
    sender = procs("send", f"127.0.0.1:{port}", "--u64", "300", "--rate", "1000")
    assert sender.wait() == 0, sender.stderr
    seconds = float(re.search(r" in (\d+\.\d+)s", summary(sender, "sent")).group(1))
    assert 0.25 <= seconds < 5, seconds  # 300 messages at 1000/s: about 0.3s
    assert receiver.wait() == 0
    assert out.read_bytes() == u64_frames(range(1, 301))


def test_nothing_listening_exits_1_within_the_connect_timeout(procs):
    port = free_port()
    t0 = time.monotonic()
    sender = procs("send", f"127.0.0.1:{port}", "--u64", "10", "--connect-timeout", "1")
    assert sender.wait() == 1
    assert time.monotonic() - t0 < 10
    assert (f"cannot connect to 127.0.0.1:{port}: Connection refused (is the worker "
            f"running?)") in sender.stderr


def test_sender_waits_for_the_listener(procs):
    port = free_port()
    sender = procs("send", f"127.0.0.1:{port}", "--u64", "3", "--connect-timeout", "20")
    sender.wait_line(lambda line: line.startswith(f"cannot connect to 127.0.0.1:{port}")
                     and "retrying" in line)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        listener.settimeout(WAIT)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT)
            data = b""
            while more := conn.recv(4096):
                data += more
    assert data == u64_frames([1, 2, 3])
    assert sender.wait() == 0


def test_lost_plain_connection_is_an_error(procs):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        sender = procs("send", f"127.0.0.1:{port}", "--u64", "5000000", "--quiet")
        listener.settimeout(WAIT)
        conn, _ = listener.accept()
        conn.recv(1000)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # reset
        assert sender.wait() == 1
    assert f"connection to 127.0.0.1:{port} lost after" in sender.stderr
    assert "--resumable" in sender.stderr


# --- send --resumable against a scripted engine --------------------------------


class FakeEngine:
    """A listener that plays the engine's side of the resumable handshake
    from a script: one function per connection, run in a thread."""

    def __init__(self, *scripts):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.handshakes: list[bytes] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, args=(scripts,), daemon=True)
        self.thread.start()

    def _serve(self, scripts):
        try:
            for script in scripts:
                conn, _ = self.listener.accept()
                conn.settimeout(WAIT)
                with conn, conn.makefile("rb") as f:
                    self.handshakes.append(f.readline())
                    script(conn, f)
        except BaseException as e:  # reported by the test
            self.errors.append(e)
        finally:
            self.listener.close()

    def join(self):
        self.thread.join(WAIT)
        assert not self.errors, self.errors


def read_values(f, n):
    data = f.read(12 * n)
    return [struct.unpack(">Q", data[i + 4:i + 12])[0] for i in range(0, len(data), 12)]


def test_resumable_resumes_where_the_engine_says(procs):
    seen = {}

    def first(conn, f):
        conn.sendall(b"RESUME 3\n")
        seen[1] = read_values(f, 4)  # messages 3..6 (values 4..7)
        conn.sendall(b"ACK 5\n")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def second(conn, f):
        conn.sendall(b"RESUME 5\n")
        seen[2] = read_values(f, 5)  # messages 5..9 (values 6..10)
        conn.sendall(b"ACK 7\nACK 10\n")
        assert f.read() == b""  # the sender closes once all are acknowledged

    engine = FakeEngine(first, second)
    sender = procs("send", f"127.0.0.1:{engine.port}", "--u64", "10", "--resumable",
                   "s1.a:b-c", "--batch", "2")
    assert sender.wait() == 0, sender.stderr
    engine.join()
    assert engine.handshakes == [b"WALLAROO-RESUME 1 s1.a:b-c\n"] * 2
    assert seen == {1: [4, 5, 6, 7], 2: [6, 7, 8, 9, 10]}
    line = summary(sender, "sent")
    assert "; 10 of 10 acknowledged, 1 reconnect, resumed at message 3" in line
    assert "connection to 127.0.0.1:" in sender.stderr  # the reconnect notice


def test_resumable_refuses_a_resume_below_an_ack_it_received(procs):
    """The worker lost messages it had acknowledged as durable (restarted
    without its resilience directory, or a damaged one): the sender says so
    and exits 1 instead of resending over the loss."""
    def first(conn, f):
        conn.sendall(b"RESUME 0\n")
        read_values(f, 100)
        conn.sendall(b"ACK 100\n")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def second(conn, f):
        conn.sendall(b"RESUME 40\n")

    engine = FakeEngine(first, second)
    sender = procs("send", f"127.0.0.1:{engine.port}", "--u64", "1000",
                   "--resumable", "s", "--batch", "100", "--rate", "2000")
    assert sender.wait() == 1, sender.stderr
    engine.join()
    assert "answered RESUME 40 for stream 's', but had acknowledged 100" in sender.stderr
    assert "lost 60 acknowledged messages" in sender.stderr


def test_resumable_with_everything_durable_sends_nothing(procs):
    engine = FakeEngine(lambda conn, f: conn.sendall(b"RESUME 10\n"))
    sender = procs("send", f"127.0.0.1:{engine.port}", "--u64", "10", "--resumable", "s")
    assert sender.wait() == 0, sender.stderr
    engine.join()
    assert summary(sender, "sent").startswith("sent 0 messages (0 bytes)")


def test_resumable_error_from_the_engine_is_fatal(procs):
    engine = FakeEngine(lambda conn, f: conn.sendall(b"ERROR unsupported version\n"))
    sender = procs("send", f"127.0.0.1:{engine.port}", "--u64", "10", "--resumable", "s")
    assert sender.wait() == 1
    engine.join()
    assert "ERROR unsupported version" in sender.stderr


def test_resumable_error_after_frames_is_fatal_even_with_a_reset(procs):
    def refuse(conn, f):
        conn.sendall(b"RESUME 0\n")
        f.read(1200)
        conn.sendall(b"ERROR frame of 9999 bytes exceeds the maximum frame size\n")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    engine = FakeEngine(refuse)
    sender = procs("send", f"127.0.0.1:{engine.port}", "--u64", "2000000",
                   "--resumable", "s", "--quiet")
    assert sender.wait() == 1, sender.stderr
    engine.join()
    assert "ERROR frame of 9999 bytes exceeds the maximum frame size" in sender.stderr


def test_resumable_gives_up_when_nothing_is_ever_acknowledged(procs):
    def drop(conn, f):
        conn.sendall(b"RESUME 0\n")

    engine = FakeEngine(*[drop] * 50)
    t0 = time.monotonic()
    sender = procs("send", f"127.0.0.1:{engine.port}", "--u64", "10", "--resumable", "s",
                   "--connect-timeout", "1")
    assert sender.wait() == 1, sender.stderr
    assert time.monotonic() - t0 < 10
    assert "keeps closing the connection of stream 's' without acknowledging" \
        in sender.stderr
    engine.listener.close()


def test_progress_bar_on_a_terminal():
    from wallaroo.tools.sender import _Reporter

    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    r = _Reporter(100, quiet=False, err=err)
    r.update(50, force=True)
    r.notice("a notice")
    r.update(100, force=True)
    r.close()
    assert "100/100" in err.getvalue() and "a notice" in err.getvalue()
    quiet = Tty()
    r = _Reporter(100, quiet=True, err=quiet)
    r.update(100, force=True)
    r.close()
    assert quiet.getvalue() == ""


# --- through a real worker ---------------------------------------------------


def test_alphabet_votes_end_to_end(procs, tmp_path):
    letters = string.ascii_lowercase
    votes = [(letters[(i * 7) % 26], i % 9 + 1) for i in range(2000)]
    frames = tmp_path / "votes.frames"
    frames.write_bytes(b"".join(struct.pack(">IsI", 5, c.encode(), n) for c, n in votes))
    expected, totals = [], {}
    for c, n in votes:
        totals[c] = totals.get(c, 0) + n
        expected.append((c, totals[c]))
    out = tmp_path / "out.bin"
    receiver, rport = start_receiver(procs, "--framing", "length", "--expect",
                                     str(len(votes)), "--output", out)
    worker, sport = start_worker(procs, ALPHABET, "127.0.0.1:0", rport)
    sender = procs("send", f"127.0.0.1:{sport}", "--frames", frames)
    assert sender.wait() == 0, sender.stderr
    assert receiver.wait() == 0, receiver.stderr + worker.stderr
    data = out.read_bytes()
    got = [struct.unpack_from(">IsQ", data, i) for i in range(0, len(data), 13)]
    assert all(n == 9 for n, _, _ in got)
    got = [(c.decode(), total) for _, c, total in got]
    assert sorted(got) == sorted(expected)
    for c in letters:  # per letter, in input order
        assert [t for x, t in got if x == c] == [t for x, t in expected if x == c]


def read_sums(path: Path, final: bool = True) -> list[tuple[int, int]]:
    data = path.read_bytes() if path.exists() else b""
    if final:
        assert len(data) % 20 == 0  # the receiver writes whole records only
    else:  # still being written
        data = data[:len(data) - len(data) % 20]
    out = []
    for i in range(0, len(data), 20):
        n, v, s = struct.unpack_from(">IQQ", data, i)
        assert n == 16
        out.append((v, s))
    return out


def wait_for(pred, what: str, timeout: float = WAIT, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def test_resumable_send_survives_sigkill_of_the_worker(procs, tmp_path):
    n = 20000
    out = tmp_path / "out.bin"
    state = tmp_path / "state"
    receiver, rport = start_receiver(procs, "--framing", "length", "--output", out)
    port = free_port()
    args = (U64_SUM, f"127.0.0.1:{port}", rport, "--resilience-dir", state)
    worker, _ = start_worker(procs, *args)
    sender = procs("send", f"127.0.0.1:{port}", "--u64", str(n), "--resumable", "s1",
                   "--rate", str(n), "--connect-timeout", "30")
    wait_for(lambda: len(read_sums(out, final=False)) >= 2000, "outputs before the kill")
    assert sender.p.poll() is None, "the sender finished before the kill"
    os.kill(worker.p.pid, signal.SIGKILL)
    worker.p.wait(WAIT)
    worker, _ = start_worker(procs, *args)
    assert sender.wait(60) == 0, sender.stderr + worker.stderr
    line = summary(sender, "sent")
    assert f"; {n} of {n} acknowledged, " in line
    assert not line.endswith(" 0 reconnects"), line
    # Every acknowledged input's output reaches the receiver (at least once).
    wait_for(lambda: {v for v, _ in read_sums(out, final=False)} >= set(range(1, n + 1)),
             "every value in the output")
    receiver.p.send_signal(signal.SIGTERM)
    assert receiver.wait() == 0
    sums = read_sums(out)
    # Exactly-once state: each sum is that of 1..v, so no value was lost
    # before it and none applied twice.
    bad = [(v, s) for v, s in sums if s != v * (v + 1) // 2]
    assert not bad, bad[:5]
    assert "on 2 connections" in summary(receiver, "received")


# --- in-process: the message lists -----------------------------------------


@pytest.mark.parametrize("kind", ["u64", "file", "frames"])
def test_chunks_resume_from_any_message_across_repeats(kind, tmp_path):
    from wallaroo.tools import messages

    values = list(range(3, 10))  # 7 messages; batches of 3; twice
    if kind == "u64":
        msgs = messages.U64Messages(7, start=3, batch=3, repeat=2)
        frame = [struct.pack(">I", 8) + struct.pack(">Q", v) for v in values]
    elif kind == "file":
        path = tmp_path / "in.txt"
        path.write_text("".join(f"{'x' * v}\n" for v in values))
        msgs = messages.from_lines(str(path), batch=3, repeat=2)
        frame = [struct.pack(">I", v) + b"x" * v for v in values]
    else:
        frame = [struct.pack(">I", v) + bytes(v) for v in values]
        path = tmp_path / "in.frames"
        path.write_bytes(b"".join(frame))
        msgs = messages.from_frames(str(path), batch=3, repeat=2)
    everything = frame * 2
    assert msgs.total == 14
    for start in range(15):
        chunks = list(msgs.chunks(start))
        assert b"".join(bytes(b) for b, _ in chunks) == b"".join(everything[start:])
        assert sum(n for _, n in chunks) == 14 - start
        assert all(0 < n <= 3 for _, n in chunks)
