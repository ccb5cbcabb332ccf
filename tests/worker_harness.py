"""A worker on trio in-process, with a receiver for its sink and raw TCP
clients: for tests of what crosses the sockets."""

from __future__ import annotations

import logging
import os
import struct

import trio

from wallaroo.recovery.sqlite_store import SQLiteStore
from wallaroo.recovery.store import MemoryStore
from wallaroo.runtime.loader import load_application
from wallaroo.runtime.worker import Worker, WorkerOptions

APP = os.path.join(os.path.dirname(__file__), "apps", "proto_app.py")
LOG = logging.getLogger("wallaroo.test")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frames(values) -> bytes:
    return b"".join(struct.pack(">IQ", 8, v) for v in values)


class Harness:
    """A worker plus a receiver for its sink, inside one trio nursery."""

    def __init__(self, nursery, tmp=None, max_frame=1 << 20, listen=True, **options):
        self.nursery = nursery
        self.tmp = tmp
        self.max_frame = max_frame
        self.options = options  # more WorkerOptions
        self.listen_at_start = listen
        self.received = bytearray()
        self.reading = trio.Event()  # the receiver reads while this is set
        self.reading.set()
        self.receiver_connections = 0
        self.worker = None

    async def start(self):
        if not hasattr(self, "sink_port"):
            if self.listen_at_start:
                await self.listen()
            else:
                self.sink_port = free_port()
        spec = load_application(APP, [APP, "--in", "127.0.0.1:0", "--out",
                                      f"127.0.0.1:{self.sink_port}"])
        store = SQLiteStore(str(self.tmp), "w") if self.tmp else MemoryStore()
        self.worker = Worker(spec, store, WorkerOptions(
            handle_signals=False, max_frame=self.max_frame, drain_timeout=5,
            **self.options), LOG)
        self._done = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            try:
                await self.worker.run(task_status=task_status)
            finally:
                self._done.set()
        bound = await self.nursery.start(run)
        self.port = bound[0][1]
        return self

    async def stop(self):
        self.worker.request_stop()
        await self._done.wait()

    async def listen(self):
        """Start (or restart) the receiver the worker's sink connects to."""
        listeners = await trio.open_tcp_listeners(getattr(self, "sink_port", 0),
                                                  host="127.0.0.1")
        self.sink_port = listeners[0].socket.getsockname()[1]
        self._receiver_scope = trio.CancelScope()

        async def serve():
            with self._receiver_scope:
                await trio.serve_listeners(self._receive, listeners)
        self.nursery.start_soon(serve)

    def stop_receiver(self):
        """The receiver goes away: its listener and connections close."""
        self._receiver_scope.cancel()

    async def _receive(self, stream):
        self.receiver_connections += 1
        while True:
            await self.reading.wait()
            data = await stream.receive_some(65536)
            if not data:
                return
            self.received.extend(data)

    async def connect(self):
        return Client(await trio.open_tcp_stream("127.0.0.1", self.port))

    async def outputs(self, n, timeout=10):
        with trio.fail_after(timeout):
            while self.received.count(b"\n") < n:
                await trio.sleep(0.01)
        return bytes(self.received).splitlines()


class Client:
    def __init__(self, stream):
        self.stream = stream
        self.buf = b""

    async def send(self, data):
        await self.stream.send_all(data)

    async def line(self, timeout=10) -> bytes | None:
        with trio.fail_after(timeout):
            while b"\n" not in self.buf:
                data = await self.stream.receive_some(4096)
                if not data:
                    return None
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    async def until_ack(self, n, timeout=10) -> list[bytes]:
        seen = []
        with trio.fail_after(timeout):
            while True:
                line = await self.line()
                assert line is not None, f"closed before ACK {n}; got {seen}"
                seen.append(line)
                if line == b"ACK %d\n" % n:
                    return seen

    async def closed(self, timeout=10) -> bool:
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(4096)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True
                self.buf += data

    async def aclose(self):
        await self.stream.aclose()


def run(fn, *args):
    async def main():
        async with trio.open_nursery() as nursery:
            await fn(nursery, *args)
            nursery.cancel_scope.cancel()
    trio.run(main)
