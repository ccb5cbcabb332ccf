"""``runtime/threads.run_sync_now``: the commit thread starts before the
committing task yields, so the engine loop (the next task to run) computes
while the commit runs instead of before it; the result and the exception
come back as from ``trio.to_thread.run_sync``."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from wallaroo.runtime.threads import run_sync_now


def _started_while_a_sibling_computes(run_in_thread) -> bool:
    """A task starts a busy sibling, then runs ``started.set`` through
    ``run_in_thread``: whether the sibling, computing as soon as it is
    scheduled, saw the thread start (it gives up after 2 s)."""
    started = threading.Event()
    seen = []

    def busy() -> None:
        t = time.monotonic()
        while not started.is_set() and time.monotonic() - t < 2.0:
            pass
        seen.append(started.is_set())

    async def sibling() -> None:
        busy()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sibling)  # runs once the caller yields
            await run_in_thread(started.set)
    trio.run(main)
    return seen[0]


def test_the_thread_starts_before_the_caller_yields():
    # what it replaced, trio's to_thread.run_sync, yields first (for its
    # limiter): in the half of the runs where trio's scheduler then runs
    # the sibling first, the sibling computed its whole turn before the
    # thread began: about half of the tries, so five catch it in nearly
    # every run
    for _ in range(5):
        assert _started_while_a_sibling_computes(run_sync_now)


def test_the_result_and_the_exception_come_back():
    def fail():
        raise ValueError("disk full")

    async def main():
        assert await run_sync_now(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ValueError, match="disk full"):
            await run_sync_now(fail)
    trio.run(main)
