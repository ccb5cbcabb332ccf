"""``wallaroo receive --resumable --output FILE``: receive outputs exactly
once from workers that speak the resumable sink protocol (DESIGN.md §5).

The protocol is ``wallaroo.receiver.ResumableReceiver``'s; the durable
file is ``file_store.FileStore``'s (its docstring describes FILE and its
index).  Each output is one protocol frame's payload, split into records
and written with ``--framing``/``--format`` exactly as ``wallaroo
receive`` writes the bytes of a plain sink connection.  An output is
acknowledged (``ACK``) only once FILE and the index are fsynced, in group
commits: what arrived on every connection meanwhile, one fsync pair, then
an ACK to every stream that grew.  After a restart (SIGKILL included) the
torn tail of FILE is truncated and ``HAVE`` says what FILE holds, so the
workers resend exactly what is missing.

``--expect N`` counts the records FILE holds, this run's and earlier runs'
alike, over all streams.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import trio

from ..receiver import ResumableReceiver
from .common import BaseExceptionGroup, ToolError, listen_or_explain, plural
from .file_store import FileStore
from .receiver import ReceiveOptions, check_options

STREAMS_SHOWN = 8  # per-stream counts in the summary, then "..."


@dataclass
class ResumableStats:
    path: str = ""
    outputs: int = 0
    bytes: int = 0
    connections: int = 0
    refused: int = 0
    commits: int = 0
    dropped_outputs: int = 0
    dropped_bytes: int = 0
    records: int = 0  # held in FILE
    streams: dict[str, int] = field(default_factory=dict)  # outputs held per stream
    first_data: float | None = None
    last_data: float | None = None
    seconds: float = 0.0
    stopped_by: str = ""
    expect: int | None = None
    address: str = ""

    def summary(self) -> str:
        span = (self.last_data - self.first_data) if self.first_data is not None else 0.0
        rate = f", {self.outputs / span:.0f} outputs/s" if span > 0 else ""
        shown = ", ".join(f"{name}: {n}" for name, n in
                          sorted(self.streams.items())[:STREAMS_SHOWN])
        if len(self.streams) > STREAMS_SHOWN:
            shown += ", ..."
        held = f"{plural(len(self.streams), 'stream')}" + (f" ({shown})" if shown else "")
        line = (f"received {plural(self.outputs, 'output')} ({self.bytes} bytes) on "
                f"{plural(self.connections, 'connection')} in {span:.2f}s{rate}, "
                f"{plural(self.commits, 'commit')}; {self.path} holds "
                f"{plural(self.records, 'record')} from {held}; "
                f"{plural(self.dropped_outputs, 'incomplete output')} dropped")
        if self.dropped_outputs:
            line += f" ({self.dropped_bytes} bytes)"
        if self.refused:
            line += f"; {plural(self.refused, 'connection')} refused"
        if self.expect is not None and self.records < self.expect:
            line += f"; expected {self.expect}"
        if self.stopped_by:
            line += f"; stopped: {self.stopped_by}"
        return line


class _Lines(logging.Handler):
    def __init__(self, err: TextIO):
        super().__init__()
        self.err = err

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=self.err, flush=True)


class ResumableFileReceiver:
    def __init__(self, opts: ReceiveOptions, store: FileStore, err: TextIO):
        self.opts, self.store, self.err = opts, store, err
        self.stats = ResumableStats(path=store.path, expect=opts.expect)
        self.receiver = ResumableReceiver(store, max_output_size=opts.max_record,
                                          on_durable=self._durable)
        self._data: trio.Event | None = None  # set by every commit (idle timeout)

    def run(self) -> ResumableStats:
        log = logging.getLogger("wallaroo.receiver")
        handler = _Lines(self.err)
        handler.setLevel(logging.INFO if self.opts.verbose else logging.WARNING)
        saved = log.level, log.propagate
        log.setLevel(logging.INFO)
        log.propagate = False
        if not self.opts.quiet:
            log.addHandler(handler)
        t0 = time.perf_counter()
        try:
            trio.run(self._main)
        except BaseExceptionGroup as group:  # trio wraps what tasks raise
            e = group
            while isinstance(e, BaseExceptionGroup):
                e = e.exceptions[0]
            raise e from None
        finally:
            self.stats.seconds = time.perf_counter() - t0
            log.removeHandler(handler)
            log.level, log.propagate = saved
            self._collect()
        return self.stats

    async def _main(self) -> None:
        opts = self.opts
        self._data = trio.Event()
        listeners = await listen_or_explain(opts.host, opts.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._serve, listeners, nursery.cancel_scope)
            self.stats.address = self.receiver.address
            print(f"listening on {self.receiver.address}", file=self.err, flush=True)
            if opts.expect is not None and self.store.synced_records >= opts.expect:
                self._finish("expected count reached")
            nursery.start_soon(self._signals)
            if opts.idle_timeout is not None:
                nursery.start_soon(self._idle_watch, opts.idle_timeout)
            if opts.timeout is not None:
                nursery.start_soon(self._timeout, opts.timeout)

    async def _serve(self, listeners, done: trio.CancelScope,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.receiver.serve(listeners=listeners, task_status=task_status)
        done.cancel()  # the watchers below

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self._finish(f"received {signal.Signals(signum).name}")
                return

    async def _idle_watch(self, idle: float) -> None:
        while True:
            await self._data.wait()
            self._data = trio.Event()
            with trio.move_on_after(idle) as quiet:
                await self._data.wait()
            if quiet.cancelled_caught:
                self._finish(f"no data for {idle:g}s")
                return

    async def _timeout(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self._finish(f"timeout of {seconds:g}s")

    def _durable(self, counts: dict[str, int]) -> None:
        # From the first output the store took to the last commit.
        self.stats.first_data = self.store.first_append
        self.stats.last_data = time.perf_counter()
        self._data.set()
        expect = self.opts.expect
        if expect is not None and self.store.synced_records >= expect:
            self._finish("expected count reached")

    def _finish(self, why: str) -> None:
        if not self.stats.stopped_by:
            self.stats.stopped_by = why
        self.receiver.stop()

    def _collect(self) -> None:
        s = self.receiver.statistics()
        st = self.stats
        st.outputs, st.bytes, st.connections = s.outputs, s.bytes, s.connections
        st.refused, st.commits = s.refused, s.commits
        st.dropped_outputs, st.dropped_bytes = s.dropped_outputs, s.dropped_bytes
        st.records = self.store.synced_records
        st.streams = self.store.durable_counts()


def receive_resumable(opts: ReceiveOptions, output: str,
                      err: TextIO | None = None) -> ResumableStats:
    """Run until stopped; print notes and the summary unless quiet."""
    check_options(opts)
    if output == "-":
        raise ToolError("--resumable needs --output FILE: stdout cannot take back "
                        "a torn write after a crash")
    err = err or sys.stderr
    store = FileStore(output, opts.framing, opts.format, opts.header_fmt, opts.max_record)
    try:
        if not opts.quiet:
            for note in store.notes:
                print(note, file=err, flush=True)
        receiver = ResumableFileReceiver(opts, store, err)
        try:
            stats = receiver.run()
        except OSError as e:  # the store's writes or fsyncs
            raise ToolError(f"cannot write {output} or its index: {e.strerror or e}; "
                            f"what was not acknowledged will be sent again") from None
    finally:
        store.close()
    if not opts.quiet:
        print(stats.summary(), file=err, flush=True)
    return stats
