"""The worker's commit path: each batch's commit, then its release (outputs
to their destinations, stream counts acknowledged), in batch order.

Where a batch commits:

- **In the commit thread** (``threads.run_sync_now``), while the engine
  loop computes the next batch: at full speed the two overlap, and a
  commit's SQLite work runs without the GIL.
- **On the event loop's own thread**, when the batch is small: at most
  ``inline_max`` messages (``--inline-commit-max``), a few snapshots of
  little state and no partitions deleted.  Under light load the overlap buys
  nothing (the next batch has few messages or none), and the thread costs a
  small batch more than its commit: the thread's Python (binding the rows)
  needs the GIL, which the engine loop holds while it computes the next
  batch, so each hand-back waited up to the switch interval, and the
  batch's release waited for the loop to notice the commit was done.  At
  50,000 msgs/s (about 55 messages a batch) a commit took 0.27 ms at the
  median and 0.86 ms at the 90th percentile in the thread, 0.20 and 0.29 ms
  on the loop's thread, and a batch's oldest message was released after
  1.8 ms at the median and 5.2 ms at the 99th percentile, against 0.50 and
  1.5 ms (benchmarks/README.md).  As load grows, batches grow past
  ``inline_max`` and commit in the thread again: the switch needs no
  measure of load other than the batch itself.

The contract does not move: a batch's outputs leave and its input is
acknowledged only once its commit returned, wherever it ran.
"""

from __future__ import annotations

import time

from .threads import run_sync_now

INLINE_MAX = 500  # messages: --inline-commit-max's default
# a small batch also carries at most this much snapshot data to commit on
# the loop's thread (a checkpoint of large state goes to the commit thread,
# so that the loop keeps reading, acknowledging and answering meanwhile)
INLINE_SNAPSHOT_BYTES = 256 * 1024


class CommitFailed(Exception):
    """The store could not commit a batch; the worker must stop."""


def commits_inline(batch, inline_max: int) -> bool:
    """A batch small enough to commit on the event loop's thread."""
    if not 0 < batch.messages <= inline_max:
        return False  # idle commits may run a vacuum step (milliseconds)
    rec = batch.record
    if rec.deleted or rec.pending is not None:
        return False
    size = 0
    for s in rec.snapshots:
        size += len(s.blob)
        if size > INLINE_SNAPSHOT_BYTES:
            return False
    return True


def _failed(batch, e: Exception) -> CommitFailed:
    return CommitFailed(
        f"commit of {batch.messages} messages failed: {type(e).__name__}: "
        f"{e}; stopping (the restart recovers from the log)")


class CommitPath:
    """The Worker's committer (a mixin: it uses the Worker's store, core,
    options and destinations)."""

    async def _committer(self, recv_batches, done) -> None:
        async with recv_batches:
            async for batch in recv_batches:
                await self._commit(batch)
                self._release(batch)
                if batch.landed is not None:
                    batch.landed.set()
                self.in_hand -= 1
        done.set()

    def committed_in_place(self, batch) -> bool:
        """Commit and release ``batch`` on the calling task (the engine
        loop's), when it commits on the loop's thread anyway and the
        committer holds no batch, so batches still commit and release in
        order.  Handing it to the committer task costs a turn of trio's
        scheduler: the committer runs only after every other task made
        runnable meanwhile (the sources' readers, the sinks' writers), and
        at 50,000 msgs/s that hand-off was 0.12-0.14 ms of a message's
        1.1-1.3 ms (benchmarks/README.md).  False: send it to the
        committer (``in_hand`` counts what it holds)."""
        if self.in_hand or (self.store.durable and not commits_inline(
                batch, self.opts.inline_commit_max)):
            return False
        self._observe_handoff(batch)
        t0 = time.perf_counter()
        try:
            took = self._timed_commit(batch.record)
        except Exception as e:
            raise _failed(batch, e) from e
        self._committed(t0, took, batch)
        self._release(batch)
        if batch.landed is not None:
            batch.landed.set()
        return True

    async def _commit(self, batch) -> None:
        self._observe_handoff(batch)
        t0 = time.perf_counter()
        try:
            if self.store.durable and not commits_inline(
                    batch, self.opts.inline_commit_max):
                took = await run_sync_now(self._timed_commit, batch.record)
                self.thread_commits += 1
            else:
                took = self._timed_commit(batch.record)
        except Exception as e:
            raise _failed(batch, e) from e
        self._committed(t0, took, batch)

    def _observe_handoff(self, batch) -> None:
        if batch.processed_at:
            self.core.stats.stages.handoff.observe_n(
                time.monotonic() - batch.processed_at, batch.messages)

    def _committed(self, t0: float, took: float, batch) -> None:
        self.commits += 1
        self._last_commit = time.monotonic()
        # the stage includes waiting for the loop to see the commit done (it
        # may be computing the next batch); the commit's own time is ``took``
        self.core.stats.stages.commit.observe_n(time.perf_counter() - t0,
                                                batch.messages)
        self.commit_hist.observe(took)
        if took > self.longest_commit:
            self.longest_commit = took

    def _timed_commit(self, record) -> float:
        """Commit; -> the seconds it took."""
        t0 = time.perf_counter()
        self.store.commit(record)
        return time.perf_counter() - t0

    def _enqueue(self, row) -> None:
        dest = self.dests[row.sink]
        # none: this worker's own channel destination, whose rows are the
        # messages it keeps for a live move's hand-over (live_moves.py)
        if dest is not None:
            dest.enqueue(row)

    def _release(self, batch) -> None:
        for row in batch.outputs:
            self._enqueue(row)
        if batch.streams:
            self.registry.committed(batch.streams)
