"""Read what the alphabet application sent to ``wallaroo receive`` and
print each letter's last total, one ``letter total`` line each (the same
lines as ``make_votes.py --totals``, so the two can be compared with diff).

    wallaroo receive --listen 127.0.0.1:7002 --framing length --format raw \\
        --output out.bin
    python read_totals.py out.bin

The file holds the outputs as they arrived: a 4-byte big-endian length (9),
the letter, the letter's total as a big-endian u64 (struct ``>IsQ``).
"""

import argparse
import struct
import sys

RECORD = struct.Struct(">IsQ")


def read_outputs(data):
    """-> [(letter, total)] in arrival order; raises ValueError on a record
    that is not a 9-byte alphabet output."""
    out = []
    for pos in range(0, len(data) - len(data) % RECORD.size, RECORD.size):
        length, letter, total = RECORD.unpack_from(data, pos)
        if length != 9:
            raise ValueError("record at byte %d has length %d, not 9"
                             % (pos, length))
        out.append((letter, total))
    if len(data) % RECORD.size:
        raise ValueError("%d trailing bytes are not a whole record"
                         % (len(data) % RECORD.size))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("received", help="the file wallaroo receive wrote "
                                         "(--framing length --format raw)")
    args = parser.parse_args(argv)
    with open(args.received, "rb") as f:
        data = f.read()
    try:
        outputs = read_outputs(data)
    except ValueError as e:
        print("%s: %s" % (args.received, e), file=sys.stderr)
        return 1
    last = {}
    for letter, total in outputs:
        last[letter] = total
    for letter, total in sorted(last.items()):
        print(letter.decode("ascii"), total)
    print("%d outputs, %d letters" % (len(outputs), len(last)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
