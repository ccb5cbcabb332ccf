"""Play a worker's resumable sink for one stream, to try a receiver
without an engine: connect, say ``WALLAROO-OUT 1 <stream>``, read ``HAVE
n``, send outputs n .. COUNT-1 (``<stream> <i>`` as bytes, each framed with
a 4-byte big-endian length), and read ACKs until the last one.

    python fake_worker.py 127.0.0.1:7002 --stream demo.p.0.initializer --count 1000
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("address", metavar="HOST:PORT")
    ap.add_argument("--stream", default="demo.p.0.initializer")
    ap.add_argument("--count", type=int, default=1000)
    a = ap.parse_args()
    host, _, port = a.address.rpartition(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"WALLAROO-OUT 1 %s\n" % a.stream.encode())
        lines = s.makefile("rb")
        answer = lines.readline()
        if not answer.startswith(b"HAVE "):
            print(f"the receiver answered {answer!r}", file=sys.stderr)
            return 1
        have = int(answer[5:])
        outputs = [b"%s %d" % (a.stream.encode(), i) for i in range(have, a.count)]
        s.sendall(b"".join(struct.pack(">I", len(o)) + o for o in outputs))
        acks = 0
        acked = have
        while acked < a.count:
            line = lines.readline()
            if not line.startswith(b"ACK "):
                print(f"the receiver answered {line!r}", file=sys.stderr)
                return 1
            acked, acks = int(line[4:]), acks + 1
    print(f"{a.stream}: HAVE {have}, sent {len(outputs)} outputs, {acks} ACKs, "
          f"last ACK {acked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
