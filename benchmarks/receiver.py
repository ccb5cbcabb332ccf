"""Benchmark receiver: listen for a Wallaroo TCP sink, count its 13-byte
records, time-stamp their arrival, then validate them.

    python benchmarks/receiver.py --listen HOST:PORT --input FRAMES
        --messages N --stamps OUT --result OUT.json

Prints ``listening HOST:PORT`` once it listens and ``done`` once N records
have arrived; then reads on until the worker closes the connection (or
``--idle-timeout``), so records beyond N (duplicates) are seen too.  While
receiving it only copies bytes and records, after every read that completed
records, ``(records_so_far, time.monotonic_ns())`` (native int64 pairs, to
OUT).  Validation (``_workload.validate``) runs afterwards; its result and
the timings go to the result JSON file.

A connection that ends in the middle of a record does not count that
record (DESIGN.md section 5: the sink resends whole outputs on its next
connection).

``--resumable``: speak the resumable sink protocol (answer ``HAVE`` with
what arrived, ``ACK`` every read's complete outputs, no fsync: what the
engine's side of the protocol costs, not a durable receiver's); outputs
arrive as frames (a 4-byte length, then the record) and are validated
without their frame headers.
"""

from __future__ import annotations

import argparse
import array
import json
import socket
import sys
import time

from _workload import FRAME_SIZE, RECORD_SIZE, validate

READ = 1 << 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    ap.add_argument("--input", required=True, help="the frames the sender sends")
    ap.add_argument("--messages", type=int, required=True)
    ap.add_argument("--stamps", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--idle-timeout", type=float, default=60.0,
                    help="give up after this many seconds without data")
    ap.add_argument("--resumable", action="store_true",
                    help="speak the resumable sink protocol")
    a = ap.parse_args()

    n = a.messages
    size = RECORD_SIZE + 4 if a.resumable else RECORD_SIZE
    need = n * size
    host, port = a.listen.rsplit(":", 1)
    lsock = socket.create_server((host, int(port)))
    lsock.settimeout(a.idle_timeout)
    bound = lsock.getsockname()
    print(f"listening {bound[0]}:{bound[1]}", flush=True)

    buf = bytearray(need + READ)
    mv = memoryview(buf)
    pos = 0
    stamps = array.array("q")
    now = time.monotonic_ns
    connections = 0
    timed_out = False
    first_ns = done_ns = None
    extra: list[bytes] = []
    conn = None
    try:
        while pos < need:
            if conn is None:
                conn, _ = lsock.accept()
                conn.settimeout(a.idle_timeout)
                connections += 1
                if a.resumable:
                    hello = b""
                    while not hello.endswith(b"\n"):
                        hello += conn.recv(1)
                    conn.sendall(b"HAVE %d\n" % (pos // size))
            k = conn.recv_into(mv[pos:pos + READ])
            if not k:  # the sink's connection ended: drop a partial record
                conn.close()
                conn = None
                pos -= pos % size
                continue
            t = now()
            if first_ns is None:
                first_ns = t
            pos += k
            recs = pos // size
            if not stamps or recs > stamps[-2]:
                stamps.append(recs)
                stamps.append(t)
                if a.resumable:
                    conn.sendall(b"ACK %d\n" % recs)
        done_ns = stamps[-1]
        print("done", flush=True)
        # Read on until the worker closes: anything more is a duplicate.
        while True:
            more = conn.recv(READ)
            if not more:
                break
            extra.append(more)
    except (socket.timeout, TimeoutError):
        timed_out = True
    except OSError as e:
        print(f"receiver: {e}", file=sys.stderr)
    if conn is not None:
        conn.close()
    lsock.close()
    del mv
    output = bytes(buf[:pos]) + b"".join(extra)
    del buf
    if a.resumable:  # drop the frame headers
        output = b"".join(output[i + 4:i + size] for i in range(0, len(output), size))
    with open(a.stamps, "wb") as f:
        stamps.tofile(f)
    with open(a.input, "rb") as f:
        framed = f.read(n * FRAME_SIZE)
    v = validate(framed, output, n)
    result = {"validation": v, "connections": connections, "timed_out": timed_out,
              "bytes": len(output), "first_recv_ns": first_ns,
              "done_ns": done_ns, "reads": len(stamps) // 2}
    with open(a.result, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
