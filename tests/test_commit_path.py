"""``runtime/commit_path.py``: small batches commit on the event loop's
thread, large ones (and those with much snapshot data, deletes or the
pending table) in the commit thread; outputs wait for the commit either way."""

from __future__ import annotations

import threading

import trio

from wallaroo.recovery.records import CommitRecord, SnapshotRow
from wallaroo.runtime import commit_path
from wallaroo.runtime.commit_path import INLINE_SNAPSHOT_BYTES, commits_inline
from wallaroo.runtime.core import Batch

from .worker_harness import Harness, frames, run


def _batch(messages, **record) -> Batch:
    return Batch(CommitRecord(**record), [], {}, messages, 0)


def test_which_batches_commit_on_the_loops_thread():
    assert commits_inline(_batch(1), 500)
    assert commits_inline(_batch(500), 500)
    assert not commits_inline(_batch(501), 500)
    assert not commits_inline(_batch(1), 0)  # --inline-commit-max 0
    # idle commits may run a vacuum step: in the thread
    assert not commits_inline(_batch(0), 500)
    small = SnapshotRow(1, 5, b"x" * 1000)
    big = SnapshotRow(2, 5, b"x" * INLINE_SNAPSHOT_BYTES)
    assert commits_inline(_batch(10, snapshots=[small]), 500)
    assert not commits_inline(_batch(10, snapshots=[small, big]), 500)
    assert not commits_inline(_batch(10, deleted=[3]), 500)
    assert not commits_inline(_batch(10, pending=[]), 500)


def test_the_cli_default_is_the_runtimes():
    from wallaroo.cli import run as run_cmd
    opt = next(p for p in run_cmd.params if p.name == "inline_commit_max")
    assert opt.default == commit_path.INLINE_MAX


def _threads_of_commits(tmp_path, inline_max, sends):
    """Run a durable worker, send ``sends`` (lists of values, one write
    each, waiting for their outputs between writes); -> (outputs, the set
    of thread names the store's commits ran in, the worker's commits and
    thread commits)."""
    seen = set()
    got = {}

    async def t(nursery):
        h = await Harness(nursery, tmp=tmp_path, inline_commit_max=inline_max).start()
        store = h.worker.store
        commit = store.commit

        def watched(rec):
            if rec.inputs:
                seen.add(threading.current_thread() is threading.main_thread())
            return commit(rec)
        store.commit = watched
        c = await h.connect()
        n = 0
        for values in sends:
            await c.send(frames(values))
            n += len(values)
            lines = await h.outputs(n)
        await h.stop()
        got["lines"] = lines
        got["counts"] = (h.worker.commits, h.worker.thread_commits)
    run(t)
    return got["lines"], seen, got["counts"]


def test_small_batches_commit_on_the_loops_thread_and_large_in_the_thread(tmp_path):
    small = [[v] for v in range(1, 21)]  # one message a write: small batches
    lines, on_main, (commits, in_thread) = _threads_of_commits(
        tmp_path / "a", 500, small)
    assert len(lines) == 20 and on_main == {True}
    assert commits > in_thread  # the input batches did not use the thread
    lines, on_main, _ = _threads_of_commits(tmp_path / "b", 0, small)
    assert len(lines) == 20 and on_main == {False}
    big = [list(range(1, 5001))]
    lines, on_main, _ = _threads_of_commits(tmp_path / "c", 100, big)
    assert len(lines) == 5000 and False in on_main  # batches past 100 messages
