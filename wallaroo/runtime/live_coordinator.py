"""The coordinator of live moves (``wallaroo cluster move``): asks each
worker's control port for the steps of live_moves.py, in order, asking
again what did not answer (a worker restarting, a lost answer), until the
taker has taken.  It keeps nothing itself: a coordinator that dies is
replaced by running the command again, which first finishes any move the
workers say is under way (a taker's LIVE_STATUS names the move it waits
for: the taker switches first, so any switch makes it one), then starts the new one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from ..recovery import ownership
from .control import ASK_ERRORS, ask_verb

POLL = 0.02  # seconds between asks of a step that is not done yet
STEP = 64  # key groups per move (wallaroo cluster move --step)


class MoveFailed(Exception):
    """A move cannot go on (the message says why)."""


class StepRefused(MoveFailed):
    """A worker answered a step with an error (not a worker that did not
    answer): asking again would get the same answer."""


@dataclass
class MoveReport:
    epoch: int
    groups: list[int]
    giver: str
    taker: str
    seconds: float = 0.0  # the first switch (the taker's) -> taken
    waited: float = 0.0  # the same: the moving groups' pause
    resumed: bool = False  # a move found under way, finished
    steps: list[str] = field(default_factory=list)


class Coordinator:
    def __init__(self, addresses: dict[str, tuple[str, int]], secret: bytes,
                 timeout: float = 600.0, refresh=None, step: int = STEP):
        """``addresses``: every member's control address, in the cluster's
        order; ``refresh()``: them again (a worker restarted elsewhere)."""
        self.addresses = addresses
        self.refresh = refresh
        self.step = step
        self.members = list(addresses)
        self.secret = secret
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    async def ask(self, worker: str, verb: str, body: dict) -> dict:
        """Ask until answered (errors of the step itself are raised)."""
        last = None
        while time.monotonic() < self.deadline:
            try:
                answer = await ask_verb(self.addresses[worker], self.secret, verb,
                                        body, timeout=30)
            except ASK_ERRORS as e:
                last = e
                await trio.sleep(0.2)
                if self.refresh is not None:
                    try:
                        self.addresses.update(self.refresh())
                    except Exception:  # noqa: BLE001 - asked again next time
                        pass
                continue
            if "error" in answer:
                if "waited" in answer["error"]:  # the loop was busy: again
                    continue
                raise StepRefused(answer["error"])
            return answer
        raise MoveFailed(f"worker {worker!r} did not answer {verb} in time"
                         + (f" ({type(last).__name__}: {last})" if last else ""))

    async def statuses(self) -> dict[str, dict]:
        return {w: await self.ask(w, "LIVE_STATUS", {}) for w in self.members}

    async def under_way(self, st: dict[str, dict]) -> dict | None:
        """A move whose taker switched (the first step: every other switch
        comes after it) and has not taken."""
        for w, s in st.items():
            d = s.get("deferring")
            if d is not None:
                return {"epoch": int(d["epoch"]), "groups": d["groups"],
                        "giver": d["giver"], "taker": w}
        return None

    async def finish_under_way(self) -> MoveReport | None:
        """Finish the move the workers say is under way, if any."""
        pending = await self.under_way(await self.statuses())
        if pending is None:
            return None
        r = await self.run(pending["epoch"], pending["groups"], pending["giver"],
                           pending["taker"])
        r.resumed = True
        return r

    async def move(self, groups: list[int], taker: str) -> list[MoveReport]:
        """Move ``groups`` to ``taker``: moves of at most ``step`` groups of
        one current owner each (a move's hand-over and take are each one
        batch of their worker: smaller moves hold its other groups for
        less).  A move found under way is finished first."""
        if taker not in self.addresses:
            raise MoveFailed(f"{taker!r} is not a member ({', '.join(self.members)})")
        reports = []
        r = await self.finish_under_way()
        if r is not None:
            reports.append(r)
        st = await self.statuses()
        owners = ownership.decode(st[taker]["owners"], st[taker]["key_groups"],
                                  self.members)
        bad = [g for g in groups if not 0 <= g < len(owners)]
        if bad:
            raise MoveFailed(f"{bad[0]} is not a key group (0..{len(owners) - 1})")
        by_giver: dict[str, list[int]] = {}
        for g in groups:
            if owners[g] != taker:
                by_giver.setdefault(owners[g], []).append(g)
        seen = max([int(e) for s in st.values() for e in s["switched"]]
                   + [e for s in st.values() for e in s["given"] + s["taken"]]
                   + [0])
        for giver, gs in sorted(by_giver.items()):
            for i in range(0, len(gs), self.step):
                # past every epoch seen, and from the clock (microseconds):
                # two commands run at once do not pick the same one
                seen = max(seen + 1, time.time_ns() // 1000)
                reports.append(await self.run(seen, gs[i:i + self.step], giver,
                                              taker))
        return reports

    async def run(self, epoch: int, groups: list[int], giver: str,
                  taker: str) -> MoveReport:
        r = MoveReport(epoch, groups, giver, taker)
        t0 = time.monotonic()
        self.deadline = t0 + self.timeout  # for each move
        markers = {}
        # the taker first: a worker that switched sends the groups'
        # messages to it, where they wait (were it not switched, it would
        # send them on to the giver, behind or ahead of earlier ones)
        for w in sorted((w for w in self.members if w != giver),
                        key=lambda w: w != taker):
            a = await self.ask(w, "LIVE_SWITCH", {"epoch": epoch, "groups": groups,
                                                  "giver": giver, "taker": taker})
            markers[w] = a["marker"]
            r.steps.append(f"{w} switched (marker {a['marker']})")
        body = {"epoch": epoch, "groups": groups, "taker": taker, "markers": markers}
        while not (await self.ask(giver, "LIVE_HAND_OVER", body))["done"]:
            await trio.sleep(POLL)
        r.steps.append(f"{giver} handed over")
        while epoch not in (await self.ask(taker, "LIVE_STATUS", {}))["taken"]:
            await trio.sleep(POLL)
        r.steps.append(f"{taker} took")
        now = time.monotonic()
        r.seconds = r.waited = now - t0  # the groups wait from the taker's switch
        return r


def parse_groups(text: str, key_groups: int | None = None) -> list[int]:
    """``0-99,200,300-310`` -> the groups, in order, each once."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"--groups: {part!r} is not a group or a range "
                             f"A-B") from None
    if not out:
        raise ValueError("--groups: no key groups given")
    if key_groups is not None:
        bad = [g for g in out if not 0 <= g < key_groups]
        if bad:
            raise ValueError(f"--groups: {bad[0]} is not a key group "
                             f"(0..{key_groups - 1})")
    return list(dict.fromkeys(out))
