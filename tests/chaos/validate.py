"""Check the outputs of the sequence-window application.

Every window must be gap-free and repeat-free (each value is the previous one
plus 2, zeros only before the first value of a parity), every input 1..N must
have the window that ends with it, and the windows ending with N and N-1
must hold the last four values of each parity.  Repeated identical windows
are duplicate outputs: allowed (at-least-once delivery to the sink) and
counted.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

WINDOW = struct.Struct(">QQQQ")


@dataclass
class Report:
    expected: int
    windows: int = 0
    distinct: int = 0
    duplicates: int = 0
    lost: list[int] = field(default_factory=list)
    bad_windows: list[tuple] = field(default_factory=list)
    final_ok: bool = False

    @property
    def ok(self) -> bool:
        return not self.lost and not self.bad_windows and self.final_ok

    def summary(self) -> str:
        return (f"inputs {self.expected}, outputs {self.windows} "
                f"({self.distinct} distinct, {self.duplicates} duplicates), "
                f"lost outputs {len(self.lost)}, bad windows "
                f"{len(self.bad_windows)}, final windows "
                f"{'ok' if self.final_ok else 'WRONG'}")


def window_ok(w: tuple[int, ...]) -> bool:
    vals = [v for v in w if v]
    if any(w[i] for i in range(len(w) - len(vals))):  # zeros only in front
        return False
    if not vals:
        return False
    parity = vals[0] % 2
    if any(v % 2 != parity for v in vals):
        return False
    if len(vals) < len(w) and vals[0] != (1 if parity else 2):  # a partial
        return False
    return all(b - a == 2 for a, b in zip(vals, vals[1:]))


def validate(records: list[bytes], n: int) -> Report:
    rep = Report(expected=n)
    counts = Counter(records)
    rep.windows = len(records)
    rep.distinct = len(counts)
    rep.duplicates = len(records) - len(counts)
    last_values = set()
    by_last: dict[int, tuple] = {}
    for rec in counts:
        if len(rec) != WINDOW.size:
            rep.bad_windows.append(("bad length", len(rec)))
            continue
        w = WINDOW.unpack(rec)
        last_values.add(w[-1])  # the output of w[-1] arrived, right or wrong
        if not window_ok(w):
            rep.bad_windows.append(w)
            continue
        if w[-1] in by_last and by_last[w[-1]] != w:
            rep.bad_windows.append(("two windows end with", w[-1], by_last[w[-1]], w))
        by_last[w[-1]] = w
    rep.lost = [v for v in range(1, n + 1) if v not in last_values]
    extra = [v for v in last_values if not 1 <= v <= n]
    if extra:
        rep.bad_windows.append(("values never sent", sorted(extra)[:10]))

    def tail(last):
        vals = [last - 6, last - 4, last - 2, last]
        return tuple(v if v > 0 else 0 for v in vals)
    rep.final_ok = n < 2 or (by_last.get(n) == tail(n)
                             and by_last.get(n - 1) == tail(n - 1))
    return rep


def read_frames(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        (ln,) = struct.unpack_from(">I", data, pos)
        if pos + 4 + ln > len(data):
            break
        out.append(data[pos + 4:pos + 4 + ln])
        pos += 4 + ln
    return out
