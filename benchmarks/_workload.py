"""The alphabet benchmark's workload and its validation, shared by the
driver (``bench_alphabet.py``), the sender and the receiver.

Input: N Wallaroo frames of the alphabet example, each a 4-byte big-endian
length (5) then the payload ``>sI`` (letter, votes).  Every frame is 9 bytes,
so the whole input is ``struct.iter_unpack(">IsI", data)``.  Letters and vote
counts are drawn from a seeded RNG; votes vary (1..1000) so a lost or a
duplicated message changes a letter's totals.

Output: per message one 13-byte record ``>IsQ`` (9, letter, the letter's
running total).
"""

from __future__ import annotations

import random
import string
import struct

FRAME = struct.Struct(">IsI")  # header + payload, as the sender writes it
FRAME_SIZE = FRAME.size  # 9
RECORD = struct.Struct(">IsQ")  # what the sink writes
RECORD_SIZE = RECORD.size  # 13
LETTERS = [c.encode("ascii") for c in string.ascii_lowercase]


def make_input(n: int, seed: int = 1) -> bytes:
    """``n`` framed messages, deterministic for a given seed."""
    rng = random.Random(seed)
    letters = rng.choices(LETTERS, k=n)
    votes = rng.choices(range(1, 1001), k=n)
    pack = FRAME.pack
    return b"".join([pack(5, ltr, v) for ltr, v in zip(letters, votes)])


def payloads(framed: bytes) -> list[bytes]:
    """The payloads of ``framed`` (for in-memory sources such as Bytewax's)."""
    return [framed[i + 4:i + FRAME_SIZE] for i in range(0, len(framed), FRAME_SIZE)]


def vote_sums(framed: bytes) -> dict[str, int]:
    sums: dict[str, int] = {}
    for _, ltr, v in FRAME.iter_unpack(framed):
        k = ltr.decode("ascii")
        sums[k] = sums.get(k, 0) + v
    return sums


def expected_output(framed: bytes) -> bytes:
    """The exact output of the alphabet application for ``framed``, computed
    independently of the application's code."""
    totals: dict[bytes, int] = {}
    pack = RECORD.pack
    out = []
    for _, ltr, v in FRAME.iter_unpack(framed):
        t = totals.get(ltr, 0) + v
        totals[ltr] = t
        out.append(pack(9, ltr, t))
    return b"".join(out)


def validate(framed: bytes, output: bytes, messages: int | None = None) -> dict:
    """Check the records in ``output`` against the input ``framed``.

    - ``records``: whole 13-byte records received (``trailing_bytes`` after);
    - ``count_ok``: exactly one record per input message;
    - ``per_letter_ok``: for every letter, its records carry exactly the
      running sums of that letter's votes, in order (a lost message shows as
      a wrong total, a duplicate as a repeated one);
    - ``totals_ok``: each letter's last total equals the sum of its votes;
    - ``order_ok``: the whole output is byte-identical to the expected one
      (records in input order: what the latency computation assumes);
    - ``bad_headers``: records whose length field is not 9.
    """
    n = len(framed) // FRAME_SIZE if messages is None else messages
    usable = len(output) - len(output) % RECORD_SIZE
    records = usable // RECORD_SIZE
    res = {"messages": n, "records": records,
           "trailing_bytes": len(output) - usable,
           "count_ok": records == n and usable == len(output)}
    expected = expected_output(framed)
    res["order_ok"] = output == expected
    if res["order_ok"]:
        sums = vote_sums(framed)
        res.update(per_letter_ok=True, totals_ok=True, bad_headers=0,
                   final_totals=dict(sorted(sums.items())))
        res["ok"] = res["count_ok"]
        return res
    # Slow path: say what is wrong.
    bad_headers = 0
    got: dict[bytes, list[int]] = {}
    for hdr, ltr, total in RECORD.iter_unpack(memoryview(output)[:usable]):
        if hdr != 9:
            bad_headers += 1
        got.setdefault(ltr, []).append(total)
    want: dict[bytes, list[int]] = {}
    for _, ltr, total in RECORD.iter_unpack(expected):
        want.setdefault(ltr, []).append(total)
    wrong_letters = sorted(k.decode("ascii", "replace") for k in set(got) | set(want)
                           if got.get(k) != want.get(k))
    res["bad_headers"] = bad_headers
    res["per_letter_ok"] = not wrong_letters
    res["wrong_letters"] = wrong_letters
    res["totals_ok"] = all((got.get(k) or [None])[-1] == (want.get(k) or [None])[-1]
                           for k in set(got) | set(want))
    res["final_totals"] = {k.decode("ascii", "replace"): (v[-1] if v else None)
                           for k, v in sorted(got.items())}
    res["ok"] = (res["count_ok"] and res["per_letter_ok"] and res["totals_ok"]
                 and not bad_headers)
    return res
