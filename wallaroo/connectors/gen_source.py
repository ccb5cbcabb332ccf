"""A generator source (``wallaroo.GenSourceConfig``, the 0.6 API): messages
made by ``initial_value()`` and ``apply(previous)``.

Its position is a stream count like a resumable stream's (stream ``gen`` of
its pipeline): the engine commits it with every batch that took its
messages, and each logged row holds the values themselves (pickled, behind a
4-byte length), so replay never calls the generator.  At start the
generator is advanced from ``initial_value()`` to the committed position
(``apply`` called that many times: it must be deterministic), so a restart
continues the sequence: nothing made twice, nothing skipped.  On a cluster
one worker runs it (the owner of stream ``gen``, like any resumable stream),
and a rescale moves its count with it.
"""

from __future__ import annotations

import logging
import pickle
import struct

import trio

GEN = "gen"  # the connector of its input rows, and its stream's name
CHUNK = 256  # values per queued run
_LEN = struct.Struct(">I")


class GenSource:
    def __init__(self, index: int, spec, inbox, counts: dict,
                 log: logging.Logger, runs_here: bool = True):
        self.index = index
        self.spec = spec
        self.generator = spec.config.generator
        self.inbox = inbox
        self.counts = counts  # (pipeline, stream) -> messages committed
        self.log = log
        self.runs_here = runs_here
        self.made = 0
        self.bad_frames = self.torn_frames = 0  # TCP notions: none here
        self.what = f"generator source of pipeline {spec.pipeline!r}"

    @property
    def address(self) -> str:
        return self.spec.address if self.runs_here else f"{self.spec.address}(elsewhere)"

    async def bind(self):
        return None

    def _advance(self, n: int):
        """The value after the first ``n`` (None: the stream ended)."""
        gen = self.generator
        v = gen.initial_value()
        for _ in range(n):
            if v is None:
                break
            v = gen.apply(v)
        return v

    async def serve(self) -> None:
        if not self.runs_here:
            await trio.sleep_forever()
        pipeline = self.spec.pipeline
        count = self.counts.get((pipeline, GEN), 0)
        try:
            value = await trio.to_thread.run_sync(self._advance, count)
        except Exception as e:
            self.log.error("%s: the generator failed while advancing to its "
                           "committed position %d: %s: %s; it makes nothing",
                           self.what, count, type(e).__name__, e)
            await trio.sleep_forever()
        if count:
            self.log.info("%s: continuing after the %d messages it made before",
                          self.what, count)
        key = ("stream", self.index, GEN)
        apply = self.generator.apply
        while value is not None:
            await self.inbox.reserve(self)
            self.inbox.release(self)  # reserve's overdraft is only for this wait
            payloads = []
            try:
                for _ in range(CHUNK):
                    payloads.append(pickle.dumps(value, protocol=5))
                    value = apply(value)
                    if value is None:
                        break
            except Exception as e:
                self.log.error("%s: after %d messages: %s: %s; it makes no "
                               "more", self.what, count + len(payloads),
                               type(e).__name__, e)
                value = None
            if payloads:
                frames = b"".join(_LEN.pack(len(p)) + p for p in payloads)
                self.inbox.put_nowait(None, key, self.index, payloads, frames,
                                      GEN, count, self.what, count, GEN)
                count += len(payloads)
                self.made += len(payloads)
            await trio.sleep(0)
        self.log.info("%s: the generator ended after %d messages", self.what, count)
        await trio.sleep_forever()
