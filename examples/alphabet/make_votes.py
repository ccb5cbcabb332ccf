"""Write a file of alphabet votes for ``wallaroo send HOST:PORT --frames FILE``.

Each message is a Wallaroo frame: a big-endian u32 payload length (5), then
the payload, one lowercase letter and a big-endian u32 vote count (struct
``>sI``).  The votes are pseudo-random but reproducible (``--seed``).

    python make_votes.py votes.bin --count 1000
    python make_votes.py votes.bin --count 1000 --totals   # also print totals

With ``--totals`` the final total of every letter is printed, one
``letter total`` line each: what the application's last output for each
letter must say.
"""

import argparse
import random
import string
import struct
import sys

FRAME = struct.Struct(">IsI")  # length header, letter, votes


def make_votes(count, seed=1, letters=string.ascii_lowercase, max_votes=10):
    """The (letter, votes) pairs, letter as a 1-byte ``bytes``."""
    rng = random.Random(seed)
    return [(rng.choice(letters).encode("ascii"), rng.randint(1, max_votes))
            for _ in range(count)]


def frames(votes):
    return b"".join(FRAME.pack(5, letter, n) for letter, n in votes)


def totals(votes):
    out = {}
    for letter, n in votes:
        out[letter] = out.get(letter, 0) + n
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the frames file to write")
    parser.add_argument("--count", type=int, default=1000,
                        help="number of messages (default 1000)")
    parser.add_argument("--seed", type=int, default=1,
                        help="random seed (default 1)")
    parser.add_argument("--letters", default=string.ascii_lowercase,
                        help="letters to vote for (default a-z)")
    parser.add_argument("--max-votes", type=int, default=10,
                        help="votes per message are 1..MAX (default 10)")
    parser.add_argument("--totals", action="store_true",
                        help="print each letter's final total")
    args = parser.parse_args(argv)
    if args.count < 0 or not args.letters or args.max_votes < 1:
        parser.error("--count must be >= 0, --letters non-empty, "
                     "--max-votes >= 1")
    votes = make_votes(args.count, args.seed, args.letters, args.max_votes)
    data = frames(votes)
    with open(args.output, "wb") as f:
        f.write(data)
    print("wrote %d messages (%d bytes) to %s"
          % (len(votes), len(data), args.output), file=sys.stderr)
    if args.totals:
        for letter, total in sorted(totals(votes).items()):
            print(letter.decode("ascii"), total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
