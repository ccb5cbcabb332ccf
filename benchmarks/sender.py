"""Benchmark sender: write pre-framed messages to a Wallaroo TCP source.

    python benchmarks/sender.py --connect HOST:PORT --input FRAMES --messages N
        --stamps OUT [--chunk-bytes B | --rate R]

Loads the first N frames of FRAMES (9-byte frames, see ``_workload``) into
memory before connecting, then writes them:
- full speed (default): in chunks of about B bytes, back to back;
- paced (``--rate R``): every ~1 ms, the messages due by then at R msg/s.
Before each write it records ``(end_message_index, time.monotonic_ns())``:
all messages of a chunk share the time their write began.  The stamps go to
OUT as native int64 pairs; the last line on stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import array
import json
import socket
import sys
import time

from _workload import FRAME_SIZE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connect", required=True, metavar="HOST:PORT")
    ap.add_argument("--input", required=True, help="file of pre-framed messages")
    ap.add_argument("--messages", type=int, required=True)
    ap.add_argument("--stamps", required=True, help="where to write the stamps")
    ap.add_argument("--chunk-bytes", type=int, default=64 * 1024)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="messages per second (0: as fast as possible)")
    ap.add_argument("--tick", type=float, default=0.001,
                    help="paced mode: seconds between writes")
    a = ap.parse_args()

    with open(a.input, "rb") as f:
        data = f.read(a.messages * FRAME_SIZE)
    n = len(data) // FRAME_SIZE
    if n != a.messages:
        print(f"sender: {a.input} holds only {n} messages", file=sys.stderr)
        return 2
    view = memoryview(data)
    host, port = a.connect.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stamps = array.array("q")
    now = time.monotonic_ns
    sendall = sock.sendall
    t_first = now()
    if a.rate <= 0:
        per_chunk = max(1, a.chunk_bytes // FRAME_SIZE)
        i = 0
        while i < n:
            j = min(n, i + per_chunk)
            stamps.append(j)
            stamps.append(now())
            sendall(view[i * FRAME_SIZE:j * FRAME_SIZE])
            i = j
    else:
        rate = a.rate
        tick = a.tick
        i = 0
        t0 = time.monotonic()
        while i < n:
            due = min(n, int((time.monotonic() - t0) * rate) + 1)
            if due > i:
                stamps.append(due)
                stamps.append(now())
                sendall(view[i * FRAME_SIZE:due * FRAME_SIZE])
                i = due
            if i < n:
                time.sleep(tick)
    t_last = now()
    sock.close()
    with open(a.stamps, "wb") as f:
        stamps.tofile(f)
    print(json.dumps({"messages": n, "writes": len(stamps) // 2,
                      "first_write_ns": t_first, "last_write_ns": t_last}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
