"""A thread for work that must start before the event loop runs on.

``trio.to_thread.run_sync`` yields to the event loop once before its thread
starts (to take its ``CapacityLimiter``).  The worker's committer calls it
right after the engine loop hands over a batch, and the engine loop is the
next task to run: it computed the whole next batch (milliseconds of Python
holding the GIL) before the commit thread even began, and then waited for
that commit, so commits and computing took turns instead of overlapping.
Timestamps of one run at full speed: computing 9.4 ms, then the commit
started 0.36 ms after the hand-over, ran 1.0 ms, and the engine loop's hand-over
returned only after it (about 2 ms of every 11.5 ms cycle idle).

``run_sync_now`` starts the thread before the calling task yields, then
waits for its outcome.  It cannot be cancelled (a commit in flight is
waited for, as ``to_thread.run_sync`` without ``abandon_on_cancel`` does),
and it has no limiter: its callers run one at a time.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import trio

T = TypeVar("T")


async def run_sync_now(fn: Callable[..., T], *args, name: str = "commit") -> T:
    """``fn(*args)`` in a (cached) thread started now; its result, or its
    exception raised here."""
    token = trio.lowlevel.current_trio_token()
    task = trio.lowlevel.current_task()

    def deliver(result) -> None:  # in the thread, with an outcome.Outcome
        try:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)
        except trio.RunFinishedError:  # pragma: no cover - the run ended
            pass

    trio.lowlevel.start_thread_soon(lambda: fn(*args), deliver, name=name)
    return await trio.lowlevel.wait_task_rescheduled(
        lambda _raise_cancel: trio.lowlevel.Abort.FAILED)
