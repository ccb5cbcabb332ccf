"""Recovery's replay: re-run the logged inputs from ``replay_from`` in
rebuild mode (DESIGN.md §4.3).  A state step applies a message only to a
partition whose snapshot is older than it; outputs are dropped (the outbox
has them), and so are messages for other workers (the original run sent
them: they are in the outbox for that peer)."""

from __future__ import annotations

import time
from typing import Callable

from ..connectors.base import PEER, TICK
from ..recovery.errors import CorruptionError, IncompatibleDirectory, StoreError
from ..recovery.records import InputRow
from . import channels
from .dataflow import (Context, compile_pipeline, first, make_peer_runner,
                       make_runner)
from .failures import FailureLog
from .windowing import tick_appliers


PROGRESS_EVERY = 1.0  # seconds between recovery progress lines


class Progress:
    """Logs ``<what>: <done> of <total> <unit> (<pct>%)`` about once a
    second while long recovery work goes on; silent when it is quick."""

    def __init__(self, log, what: str, total: int, unit: str,
                 every: float | None = None):
        self.log, self.what, self.total, self.unit = log, what, total, unit
        self.every = PROGRESS_EVERY if every is None else every
        self.start = time.monotonic()
        self.next = self.start + self.every
        self.said = False
        self.done = 0

    def tick(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now < self.next or self.log is None:
            return
        self.next = now + self.every
        self.said = True
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("inf")
        self.log.info("%s: %d of %d %s (%.0f%%), about %.0fs left", self.what,
                      done, self.total, self.unit, 100.0 * done / max(self.total, 1),
                      left)


def replay(core, replay_from: int, next_lsn: int,
           on_row: Callable[[InputRow], None] | None) -> tuple[int, int, int]:
    """-> (rows, messages, mismatches)."""
    ctx = Context(fail=None)
    flog = FailureLog(ctx.cell, None)
    ctx.fail = flog.fail
    entries = [compile_pipeline(core.app, p, core.spaces, [], ctx, rebuild=True,
                                route=core.route_for(rebuild=True))
               for p in core.app.pipelines]
    runners = [make_runner(p.source.decoder.decode, p.source.decoder.name,
                           first(entries[p.index]), ctx) for p in core.app.pipelines]
    peer_runner = make_peer_runner(entries, core.codec.decode, ctx,
                                   core.peer_unit_failed(flog))
    appliers = tick_appliers(core.app, entries)
    path = getattr(core.store, "path", "the store")
    rows = messages = mismatches = 0
    # The log holds every input from replay_from to next_lsn, without
    # holes: a missing row would silently leave state short.
    expected = replay_from
    progress = Progress(core.log, "recovery: replaying the input log",
                        next_lsn - replay_from, "messages")
    core.replay_progress = progress  # for --metrics, while it runs
    replayed_src, replayed_peer = core.stats.replayed_by, core.stats.replayed_by_peer
    for row in core.store.replay_inputs(replay_from):
        progress.tick(messages)
        if row.first_lsn > expected:
            raise CorruptionError(
                f"{path}: input-log rows for lsn {expected}..{row.first_lsn - 1} "
                f"are missing; refusing to rebuild state without them")
        expected = max(expected, row.end_lsn)
        skip = max(0, replay_from - row.first_lsn)
        flog.start_chunk(f"input-log row at lsn {row.first_lsn}")
        core.replay_clock(row)
        if row.connector == TICK:  # the windows' clock (windowing.py)
            if core.timers is not None:
                core.fire_due(row.first_lsn, appliers, ctx, True)
            rows += 1
            if on_row is not None:
                on_row(row)
            continue
        if row.connector == PEER:
            units = channels.split_units(row.frames)
            n = sum(channels.messages_in(u) for u in units)
            if n != row.count:
                raise StoreError(f"input-log row at lsn {row.first_lsn} holds "
                                 f"{n} messages, not {row.count}")
            peer_runner(units, row.first_lsn, skip=skip)
            new_failures = set(flog.indices) - set(row.failed)
        else:
            idx = core.pipeline_index.get(row.source)
            if idx is None:
                raise IncompatibleDirectory(
                    f"the input log holds input of pipeline {row.source!r}, "
                    f"which this application does not define")
            payloads = core.framers[idx].split_all(row.frames)
            if len(payloads) != row.count:
                raise StoreError(f"input-log row at lsn {row.first_lsn} holds "
                                 f"{len(payloads)} frames, not {row.count}")
            runners[idx](payloads[skip:], row.first_lsn + skip)
            new_failures = {i + skip for i in flog.indices} - set(row.failed)
        # A frame that failed originally is replayed like any other: the
        # steps before its failure changed state, and that must be rebuilt.
        # One that fails only now means the application changed or is not
        # deterministic: say so loudly.
        if new_failures:
            mismatches += 1
            core.log.error(
                "replay of lsn %d..%d from %s %r differs from the original run: "
                "messages %s fail now but did not then. Is an application "
                "function non-deterministic, or was the application changed? "
                "State may differ from before the crash.", row.first_lsn,
                row.end_lsn - 1, "worker" if row.connector == PEER else "pipeline",
                row.source, sorted(new_failures))
        if row.ingest_ns and core.timers is not None:
            core.fire_due(row.end_lsn - 1, appliers, ctx, True)
        rows += 1
        messages += row.count - skip
        core.evict_clean()
        by = replayed_peer if row.connector == PEER else replayed_src
        by[row.source] = by.get(row.source, 0) + row.count - skip
        if on_row is not None:
            on_row(row)
    if expected < next_lsn:
        raise CorruptionError(
            f"{path}: input-log rows for lsn {expected}..{next_lsn - 1} are "
            f"missing; refusing to rebuild state without them")
    return rows, messages, mismatches
