"""What a windowed application must output, from the messages and the
times they were taken in (the reference the windows tests check against;
docs/windows.md has the rules): ``Model``."""

from __future__ import annotations

from wallaroo._windows import COUNT_FLUSH_NS

SECOND = 10**9
PARAMS = {  # (range, slide, delay) or ("count", n)
    "tumbling": (3 * SECOND, 3 * SECOND, 0),
    "sliding": (6 * SECOND, 2 * SECOND, 0),
    "delayed": (3 * SECOND, 3 * SECOND, 2 * SECOND),
    "count": ("count", 3),
}


def by_key(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        out.setdefault(line.split(":", 1)[0], []).append(line)
    return out


def exactly_once(rows) -> list[str]:
    """The output lines of a sink's delivered rows, each sequence number
    once (a resend after a crash repeats numbers with the same bytes)."""
    seen: dict[int, str] = {}
    for row in rows:
        lines = row.data.decode().splitlines()
        assert len(lines) == row.count, row
        for i, line in enumerate(lines):
            seq = row.first_seq + i
            assert seen.setdefault(seq, line) == line, (
                f"output {seq} was {seen[seq]!r}, resent as {line!r}")
    assert sorted(seen) == list(range(len(seen))), "a gap in the outputs"
    return [seen[i] for i in range(len(seen))]


class Model:
    """The rules, message by message, for a clock that may also go back (a
    worker restarted on a host whose clock is behind): each key's
    windows fire when a message of the key comes or after each row, once
    the watermark (the row's time) passes their end plus the delay; a
    message whose windows have all fired is late and dropped."""

    def __init__(self, kind: str):
        self.params = PARAMS[kind]
        self.count = self.params[0] == "count"
        self.out: dict[str, list[str]] = {}
        self.open: dict[str, object] = {}
        self.closed: dict[str, int] = {}
        self.late = 0

    def _emit(self, key: str, ids: list[str]) -> None:
        self.out.setdefault(key, []).append(f"{key}:{'.'.join(ids)}")

    def _fire(self, key: str, wm: int) -> None:
        if self.count:
            g = self.open.get(key)
            if g and wm >= g[1] + COUNT_FLUSH_NS:
                self._emit(key, g[0])
                del self.open[key]
            return
        rng, _, delay = self.params
        windows = self.open.get(key, {})
        for start in sorted(windows):
            if start + rng + delay > wm:
                break
            self._emit(key, windows.pop(start))
            self.closed[key] = max(self.closed.get(key, -1 << 62), start + rng)

    def row(self, messages: list[tuple[str, str]], t: int) -> None:
        for key, mid in messages:
            self._fire(key, t)
            if self.count:
                g = self.open.setdefault(key, [[], t])
                g[0].append(mid)
                g[1] = t
                if len(g[0]) == self.params[1]:
                    self._emit(key, g[0])
                    del self.open[key]
                continue
            rng, slide, _ = self.params
            windows = self.open.setdefault(key, {})
            start, placed = t - t % slide, False
            while start > t - rng:
                if start + rng > self.closed.get(key, -1 << 62):
                    windows.setdefault(start, []).append(mid)
                    placed = True
                start -= slide
            if not placed:
                self.late += 1
        for key in list(self.open):
            self._fire(key, t)
