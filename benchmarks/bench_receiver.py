"""How many outputs per second ``wallaroo receive --resumable`` keeps
durably, beside a plain ``wallaroo receive`` taking the same bytes.

    python benchmarks/bench_receiver.py --outputs 1000000 --streams 4 --repeat 3

Each run starts the receiver as its own process (``python -m wallaroo.cli
receive --resumable --output FILE --framing length --expect N``) and one
fake worker per stream (a thread on a blocking socket, in this process):
handshake, ``HAVE``, then every output framed as the worker frames it,
written in 64 KiB slices, then ACKs read until the last.  The time is from
the first byte sent to the last ``ACK`` of every stream, so it includes
every fsync; the outputs are ``--size``-byte records (a 4-byte length and
the payload, like the alphabet example's) and the file is checked after
each run: every output of every stream exactly once, in order.  The plain
row sends the same records on one plain connection to ``wallaroo receive
--framing length --expect N`` and times until that process exits.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

from _machine import machine_line

SLICE = 64 * 1024


def records(stream: int, n: int, size: int) -> list[bytes]:
    pad = size - 4 - 12
    if pad < 0:
        raise SystemExit("--size must be at least 16")
    return [struct.pack(">IIQ", size - 4, stream, i) + b"x" * pad for i in range(n)]


def framed(outputs: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(o)) + o for o in outputs)


def start(args: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "wallaroo.cli", "receive",
                             "--listen", "127.0.0.1:0", *args],
                            stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    m = re.match(r"listening on 127\.0\.0\.1:(\d+)", first)
    if not m:
        raise SystemExit(f"receiver did not start: {first}{proc.stderr.read()}")
    return proc, int(m.group(1))


def worker(port: int, name: str, data: bytes, n: int, go: threading.Barrier,
           done: list[float]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"WALLAROO-OUT 1 %s\n" % name.encode())
        lines = s.makefile("rb")
        assert lines.readline() == b"HAVE 0\n"
        go.wait()
        view = memoryview(data)
        for i in range(0, len(view), SLICE):
            s.sendall(view[i:i + SLICE])
        while True:
            line = lines.readline()
            assert line.startswith(b"ACK "), line
            if int(line[4:]) == n:
                done.append(time.perf_counter())
                return


def run_resumable(n: int, streams: int, size: int, fmt: str) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.bin")
        proc, port = start(["--resumable", "--output", path, "--framing", "length",
                            "--format", fmt, "--expect", str(n * streams)])
        per_stream = [records(k, n, size) for k in range(streams)]
        data = [framed(outs) for outs in per_stream]
        go = threading.Barrier(streams + 1)
        done: list[float] = []
        threads = [threading.Thread(target=worker, args=(port, f"bench.p.0.w{k}", data[k],
                                                         n, go, done))
                   for k in range(streams)]
        for t in threads:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = max(done) - t0
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0 or len(done) != streams:
            raise SystemExit(f"resumable receiver failed ({proc.returncode}):\n{err}")
        if fmt == "raw":
            check(path, per_stream)
        line = next(x for x in err.splitlines() if x.startswith("received "))
        return seconds, line


def check(path: str, per_stream: list[list[bytes]]) -> None:
    with open(path, "rb") as f:
        data = f.read()
    size = len(per_stream[0][0])
    got: dict[int, list[bytes]] = {}
    for pos in range(0, len(data), size):
        rec = data[pos:pos + size]
        got.setdefault(struct.unpack_from(">I", rec, 4)[0], []).append(rec)
    for k, outs in enumerate(per_stream):
        if got.get(k) != outs:
            raise SystemExit(f"stream {k}: the file does not hold every output once, "
                             f"in order")


def run_plain(n: int, streams: int, size: int, fmt: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(["--output", os.path.join(tmp, "out.bin"), "--framing",
                            "length", "--format", fmt, "--expect", str(n * streams)])
        data = b"".join(b"".join(records(k, n, size)) for k in range(streams))
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(data)
            proc.wait(60)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"plain receiver failed:\n{proc.stderr.read()}")
        return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outputs", type=int, default=200000,
                    help="outputs in all, split evenly over --streams")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--size", type=int, default=20, help="bytes per record")
    ap.add_argument("--format", default="raw", choices=["raw", "hex", "text", "repr"])
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    n = a.outputs // a.streams
    total = n * a.streams
    print(f"receiver benchmark: {total:,} outputs ({a.size}-byte records) on "
          f"{a.streams} streams, --framing length --format {a.format}, repeat {a.repeat}")
    print(f"command: {sys.executable} {' '.join(sys.argv)}")
    print(machine_line())
    res, plain = [], []
    for i in range(a.repeat):
        seconds, line = run_resumable(n, a.streams, a.size, a.format)
        res.append(total / seconds)
        commits = re.search(r"(\d+) commits?", line)
        checked = "file checked" if a.format == "raw" else "file not checked: not raw"
        print(f"  resumable run {i + 1}: {total / seconds:>10,.0f} outputs/s "
              f"({seconds:.2f}s to the last ACK, {commits.group(1) if commits else '?'} "
              f"group commits, {checked})")
        seconds = run_plain(n, a.streams, a.size, a.format)
        plain.append(total / seconds)
        print(f"  plain run {i + 1}:     {total / seconds:>10,.0f} records/s "
              f"({seconds:.2f}s, no durability)")
    r, p = statistics.median(res), statistics.median(plain)
    print(f"median: resumable {r:,.0f} outputs/s (fsynced, acknowledged), plain "
          f"{p:,.0f} records/s; ratio {r / p:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
