"""Every example, end to end, with real processes and sockets: the worker is
``wallaroo run``, input comes from ``wallaroo send`` and output is caught by
``wallaroo receive``; the output is compared byte for byte with what a plain
Python fold of the input says it must be.

No fixed sleeps: ports are 0, and the tests wait for the receiver's
``listening on`` line, the worker's ``ready`` line, and the receiver's exit
once it has the expected number of records (``--expect``).
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
WALLAROO = [sys.executable, "-m", "wallaroo.cli"]
START_TIMEOUT = 20.0
RUN_TIMEOUT = 30.0


def example(*parts: str) -> str:
    return os.path.join(EXAMPLES, *parts)


def load_script(name: str, path: str):
    """Import an example's helper script (make_votes.py, word_count.py)
    without putting its directory on sys.path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_block(name: str, first_line: str) -> list[str]:
    """The lines of the README's code block that follow ``first_line``."""
    with open(example(name, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index(first_line) + 1
    end = lines.index("```", start)
    return lines[start:end]


class Proc:
    """A ``wallaroo`` subprocess; a thread reads its stderr line by line."""

    def __init__(self, args: list[str], cwd: str | None = None):
        self.args = args
        self.proc = subprocess.Popen(WALLAROO + args, cwd=cwd,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     errors="replace")
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._q.put(self.lines[-1])
        self._q.put(None)

    def wait_line(self, pred, what: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._q.get(timeout=max(left, 0.001))
            except queue.Empty:
                pytest.fail(f"no {what} within {timeout}s from "
                            f"{' '.join(self.args)}:\n{self.log()}")
            if line is None:
                pytest.fail(f"{' '.join(self.args)} exited "
                            f"{self.proc.wait()} before {what}:\n{self.log()}")
            if pred(line):
                return line

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{' '.join(self.args)} still running after "
                        f"{timeout}s:\n{self.log()}")
        self._t.join(5)
        return code

    def terminate(self, timeout: float = RUN_TIMEOUT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        self._t.join(1)
        return "\n".join(self.lines)


@pytest.fixture
def procs():
    """Start ``wallaroo`` processes; whatever is still running at the end
    of the test is killed."""
    started: list[Proc] = []

    def start(args, cwd=None) -> Proc:
        p = Proc(args, cwd)
        started.append(p)
        return p
    yield start
    for p in started:
        p.kill()


def receiver(procs, output: str, framing: str,
             expect: int | None) -> tuple[Proc, str]:
    r = procs(["receive", "--listen", "127.0.0.1:0", "--framing", framing,
               "--format", "raw", "--output", output, "--timeout",
               str(RUN_TIMEOUT)]
              + ([] if expect is None else ["--expect", str(expect)]))
    first = r.wait_line(lambda line: True, "first line")
    assert first.startswith("listening on "), first
    return r, first.split()[-1]


def worker(procs, app: str, sink_addr: str, *extra: str) -> tuple[Proc, str]:
    w = procs(["run", app, "--in", "127.0.0.1:0", "--out", sink_addr, *extra])
    ready = w.wait_line(lambda line: line.startswith("ready"), "ready line")
    fields = dict(f.split("=", 1) for f in ready.split()[1:] if "=" in f)
    return w, fields["sources"]


def send(addr: str, *args: str) -> str:
    done = subprocess.run(WALLAROO + ["send", addr, *args, "--quiet"],
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stderr


def run_example(procs, tmp_path, app: str, send_args: list[str], framing: str,
                expect: int, *worker_args: str) -> tuple[bytes, Proc]:
    """Receiver, worker, sender; wait for ``expect`` records, stop the
    worker with SIGTERM (exit 0) -> (bytes received, worker)."""
    out = str(tmp_path / "received.bin")
    r, sink_addr = receiver(procs, out, framing, expect)
    w, source = worker(procs, app, sink_addr, *worker_args)
    send(source, *send_args)
    assert r.wait() == 0, r.log()
    assert w.terminate() == 0, w.log()
    with open(out, "rb") as f:
        return f.read(), w


# -- the examples --------------------------------------------------------------

def test_reverse(procs, tmp_path):
    got, w = run_example(procs, tmp_path, example("reverse", "reverse.py"),
                         ["--file", example("reverse", "words.txt")], "lines", 5)
    assert got == "olleh\noorallaw\ngnissecorp maerts\nracecar\néfac evïan\n" \
        .encode("utf-8")
    assert readme_block("reverse", "listening on 127.0.0.1:7002") == \
        got.decode("utf-8").splitlines()
    assert "stopped: 5 messages in, 5 outputs, 0 failed messages" in w.log()


def test_celsius_skips_the_bad_line_only(procs, tmp_path):
    got, w = run_example(procs, tmp_path, example("celsius", "celsius.py"),
                         ["--file", example("celsius", "temperatures.txt")],
                         "lines", 6)
    assert got == b"-40.00\n32.00\n70.70\n98.60\n212.00\n-459.67\n"
    assert readme_block("celsius", "listening on 127.0.0.1:7002") == \
        got.decode().splitlines()
    log = w.log()
    assert "could not convert string to float: 'not a number'" in log
    assert "stopped: 7 messages in, 6 outputs, 1 failed messages" in log


def alphabet_expected(votes) -> bytes:
    """The reference fold: each vote's running total, packed ``>IsQ``."""
    totals: dict[bytes, int] = {}
    out = []
    for letter, n in votes:
        totals[letter] = totals.get(letter, 0) + n
        out.append(struct.pack(">IsQ", 9, letter, totals[letter]))
    return b"".join(out)


@pytest.mark.parametrize("name", ["alphabet", "alphabet_partitioned"])
def test_alphabet(procs, tmp_path, name):
    make_votes = load_script("make_votes_" + name,
                             example("alphabet", "make_votes.py"))
    votes = make_votes.make_votes(500, seed=7)
    votes_file = str(tmp_path / "votes.bin")
    assert make_votes.main([votes_file, "--count", "500", "--seed", "7"]) == 0
    with open(votes_file, "rb") as f:
        assert f.read() == make_votes.frames(votes)
    got, _ = run_example(procs, tmp_path, example(name, name + ".py"),
                         ["--frames", votes_file], "length", 500)
    assert got == alphabet_expected(votes)


@pytest.mark.parametrize("name", ["alphabet", "alphabet_partitioned"])
def test_alphabet_read_totals_agrees_with_make_votes(tmp_path, capsys, name):
    make_votes = load_script("mv_" + name, example("alphabet", "make_votes.py"))
    read_totals = load_script("rt_" + name, example("alphabet", "read_totals.py"))
    votes = make_votes.make_votes(200, seed=3)
    received = tmp_path / "out.bin"
    received.write_bytes(alphabet_expected(votes))
    assert read_totals.main([str(received)]) == 0
    printed = capsys.readouterr().out
    assert make_votes.main([str(tmp_path / "v.bin"), "--count", "200",
                            "--seed", "3", "--totals"]) == 0
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize("name", ["alphabet", "alphabet_partitioned"])
def test_alphabet_readme_shows_what_its_votes_give(name):
    # The README's small run: 10 votes for a, b, c with the default seed.
    make_votes = load_script("mv_readme_" + name, example("alphabet", "make_votes.py"))
    votes = make_votes.make_votes(10, letters="abc")
    data = alphabet_expected(votes)
    shown = [repr(data[i + 4:i + 13]) for i in range(0, len(data), 13)]
    assert readme_block(name, "listening on 127.0.0.1:7002") == shown
    totals = ["%s %d" % (k.decode(), v)
              for k, v in sorted(make_votes.totals(votes).items())]
    assert readme_block(name, "wrote 10 messages (90 bytes) to votes.bin") \
        == totals


def read_or_empty(path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def last_totals(data: bytes) -> dict[bytes, int]:
    whole = len(data) - len(data) % 13
    return {letter: total for _, letter, total in
            (struct.unpack_from(">IsQ", data, i) for i in range(0, whole, 13))}


def test_alphabet_keeps_its_totals_across_a_sigkill(procs, tmp_path):
    # The README's promise: with --resilience-dir the totals carry on after
    # the worker is killed and started again.
    make_votes = load_script("mv_kill", example("alphabet", "make_votes.py"))
    votes = make_votes.make_votes(300, seed=11)
    votes_file = tmp_path / "votes.bin"
    votes_file.write_bytes(make_votes.frames(votes))
    state = str(tmp_path / "state")
    out = tmp_path / "received.bin"
    r, sink_addr = receiver(procs, str(out), "length", None)
    app = example("alphabet", "alphabet.py")
    w, source = worker(procs, app, sink_addr, "--resilience-dir", state)
    # A resumable send returns once every vote is acknowledged, and
    # acknowledged means durable: kill the worker the hard way right then.
    send(source, "--frames", str(votes_file), "--resumable", "votes")
    w.proc.send_signal(signal.SIGKILL)
    assert w.wait() == -signal.SIGKILL
    w2, source = worker(procs, app, sink_addr, "--resilience-dir", state)
    send(source, "--frames", str(votes_file))
    twice = {}
    for letter, n in votes + votes:
        twice[letter] = twice.get(letter, 0) + n
    # Outputs are at least once (a resend after the kill may repeat some),
    # so wait for the final totals rather than for a number of records.
    deadline = time.monotonic() + RUN_TIMEOUT
    while last_totals(read_or_empty(out)) != twice:
        if time.monotonic() > deadline:
            pytest.fail(f"final totals never arrived: "
                        f"{last_totals(read_or_empty(out))} != {twice}\n"
                        f"{w2.log()}")
        time.sleep(0.05)
    assert w2.terminate() == 0, w2.log()
    assert r.terminate() == 0, r.log()
    got = out.read_bytes()
    assert last_totals(got) == twice
    assert len(got) % 13 == 0 and len(got) >= 600 * 13
    # Every running total of the second send is there, in order, at the end.
    assert got.endswith(alphabet_expected(votes + votes)[300 * 13:])


def word_count_expected(sample: str) -> bytes:
    """What word_count.py must send for ``sample`` sent with --file: one
    ``word => count`` line per word occurrence, in order."""
    wc = load_script("word_count_reference", example("word_count",
                                                     "word_count.py"))
    split = wc.Split()
    counts: dict[str, int] = {}
    out = []
    with open(sample, encoding="utf-8", newline="") as f:
        text = f.read()
    # `wallaroo send --file`: one message per line, "\n" or "\r\n" stripped.
    for line in text.removesuffix("\n").split("\n"):
        for word in split.compute_multi(line.removesuffix("\r")):
            counts[word] = counts.get(word, 0) + 1
            out.append("%s => %d\n" % (word, counts[word]))
    return "".join(out).encode("utf-8")


def test_word_count(procs, tmp_path):
    sample = example("word_count", "sample.txt")
    expected = word_count_expected(sample)
    n = expected.count(b"\n")
    assert n > 1000
    got, w = run_example(procs, tmp_path, example("word_count", "word_count.py"),
                         ["--file", sample], "lines", n)
    assert got == expected
    assert "0 failed messages" in w.log()


def test_word_count_demo(tmp_path):
    done = subprocess.run([sys.executable, example("word_count", "demo.py")],
                          cwd=str(tmp_path),
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "top 20 words:" in out
    table = [line for line in out.splitlines()
             if re.match(r"\s+\d+\. ", line)]
    assert len(table) == 20
    assert table[0].split()[:3] == ["1.", "the", "545"]
    # The README shows this table as the demo's real output.
    assert readme_block("word_count", "top 20 words:")[:20] == table
    assert "stopped on SIGTERM, exit status 0" in out
    assert "every final count matches the sample" in out


def test_word_count_demo_fails_clearly(tmp_path):
    missing = str(tmp_path / "no such file.txt")
    done = subprocess.run([sys.executable, example("word_count", "demo.py"),
                           "--sample", missing], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "FAILED" in done.stderr and "does not exist" in done.stderr


def test_word_count_demo_reports_a_timeout_with_the_worker_log(tmp_path):
    # An input that cannot all arrive in time: 0.001 s to send and count.
    big = tmp_path / "big.txt"
    big.write_text("lorem ipsum dolor sit amet\n" * 20000)
    done = subprocess.run([sys.executable, example("word_count", "demo.py"),
                           "--sample", str(big), "--timeout", "0.001"],
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stdout
    assert "FAILED" in done.stdout
    assert "--- worker stderr ---" in done.stdout
    assert "ready worker=" in done.stdout


@pytest.mark.parametrize("name", ["reverse", "celsius", "alphabet",
                                  "alphabet_partitioned", "word_count"])
def test_each_example_has_a_readme_with_the_three_commands(name):
    with open(example(name, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for command in ("wallaroo run", "wallaroo send", "wallaroo receive"):
        assert command in readme, (name, command)


# -- the 0.6 API's examples -------------------------------------------------------

def test_word_count_06_gives_what_word_count_gives(procs, tmp_path):
    sample = example("word_count", "sample.txt")
    expected = word_count_expected(sample)
    got, w = run_example(procs, tmp_path, example("word_count", "word_count_06.py"),
                         ["--file", sample], "lines", expected.count(b"\n"))
    assert got == expected
    assert "0 failed messages" in w.log()


def alerts_module(name: str):
    """An alerts example, imported with transactions.py beside it."""
    sys.path.insert(0, example("alerts"))
    try:
        return load_script(f"{name}_reference", example("alerts", f"{name}.py"))
    finally:
        sys.path.remove(example("alerts"))


def run_generated(procs, tmp_path, name: str, expect: int, *args: str) -> bytes:
    """An alerts example over the first 1000 transactions: wait for
    ``expect`` records, stop the worker (exit 0) -> what the sink got."""
    out = str(tmp_path / "received.bin")
    r, sink_addr = receiver(procs, out, "lines", expect)
    w, sources = worker(procs, example("alerts", f"{name}.py"), sink_addr,
                        "--transactions", "1000", *args)
    assert sources == "gen:TransactionsGenerator"
    assert r.wait() == 0, r.log()
    assert w.terminate() == 0, w.log()
    assert "1000 messages in" in w.log() and "0 failed messages" in w.log()
    with open(out, "rb") as f:
        return f.read()


def test_alerts_stateless(procs, tmp_path):
    mod = alerts_module("alerts_stateless")
    alerts = [mod.check_transaction(tx)
              for tx in alerts_module("transactions").transactions(1000)]
    expected = "".join(a + "\n" for a in alerts if a is not None).encode()
    assert expected.count(b"\n") > 100
    got = run_generated(procs, tmp_path, "alerts_stateless", expected.count(b"\n"))
    assert got == expected


def test_alerts_stateful(procs, tmp_path):
    mod = alerts_module("alerts_stateful")
    balances: dict = {}
    expected = []
    for tx in alerts_module("transactions").transactions(1000):
        b = balances.setdefault(tx.user, mod.Balance())
        alert = mod.check_balance(tx, b)
        if alert is not None:
            expected.append(alert + "\n")
    assert len(expected) > 5
    got = run_generated(procs, tmp_path, "alerts_stateful", len(expected))
    # each user's alerts in order; users interleave as their messages did
    assert got == "".join(expected).encode()


def test_alerts_windowed_every_transaction_is_in_three_windows(procs, tmp_path):
    """9 s windows sliding by 3 s over 1000 transactions made at once: each
    is in three windows, which close by the clock once the stream ends."""
    txs = list(alerts_module("transactions").transactions(1000))
    out = str(tmp_path / "received.bin")
    r, sink_addr = receiver(procs, out, "lines", None)
    w, _ = worker(procs, example("alerts", "alerts_windowed.py"), sink_addr,
                  "--transactions", "1000", "--all")
    deadline = time.monotonic() + RUN_TIMEOUT
    windows: list = []
    while time.monotonic() < deadline:
        with open(out, "rb") if os.path.exists(out) else open(os.devnull, "rb") as f:
            windows = [re.fullmatch(r"(\w+) ([+-]\d+) over (\d+) transactions", line)
                       for line in f.read().decode().splitlines()]
        if sum(int(m.group(3)) for m in windows if m) >= 3 * len(txs):
            break
        time.sleep(0.2)
    assert w.terminate() == 0, w.log()
    assert all(windows), windows
    for user in {tx.user for tx in txs}:
        mine = [m for m in windows if m.group(1) == user]
        assert sum(int(m.group(3)) for m in mine) == 3 * sum(
            1 for tx in txs if tx.user == user)
        assert sum(int(m.group(2)) for m in mine) == 3 * sum(
            tx.amount for tx in txs if tx.user == user)
    assert "1000 messages in" in w.log()
