"""The outbox rows of a batch (a mixin of ``WorkerCore``, runtime/core.py):
one row per sink with outputs (split when large), and one peer batch per
worker that gets messages of the batch."""

from __future__ import annotations

from ..recovery.records import MAX_OUTPUT_BYTES, MAX_ROW_BYTES, OutputRow
from . import channels
from .dataflow import StepError


class OutputRows:
    def _output_rows(self) -> list[OutputRow]:
        """One outbox row per sink with outputs in this batch (framed
        sinks' lists alternate frame header and output)."""
        outputs: list[OutputRow] = []
        for i, lst in enumerate(self.out_lists):
            if not lst:
                continue
            framed = i in self.framed_sinks
            data = b"".join(lst)
            if len(data) <= MAX_ROW_BYTES:
                n = len(lst) // 2 if framed else len(lst)
                seq = self.next_out_seq[i]
                outputs.append(OutputRow(i, seq, n, data, framed))
                self.next_out_seq[i] = seq + n
            else:
                outputs.extend(self._split_outputs(i, lst, framed))
            lst.clear()
        return outputs

    def _peer_rows(self) -> list[OutputRow]:
        """One outbox row per peer that gets messages of this batch: one
        peer batch, serialized once (``channels``)."""
        rows: list[OutputRow] = []
        for member in range(self.route.members):
            groups = self.route.collect(member)
            if not groups:
                continue
            unit = self.codec.encode(groups, self._unserializable(member))
            if unit is None:
                continue
            dest = self.peer_dest(member)
            seq = self.next_out_seq[dest]
            rows.append(OutputRow(dest, seq, 1, unit))
            self.next_out_seq[dest] = seq + 1
        return rows

    def _unserializable(self, member: int):
        peer = self.placement.members[member]

        def failed(msg, exc):
            what = channels.describe_message(self.app, *msg)
            self.failures.fail_unindexed(
                f"channel to worker {peer!r}", StepError(
                    f"cannot serialize {what} for worker {peer!r}: "
                    f"{type(exc).__name__}: {exc}"))
        return failed

    def _split_outputs(self, sink: int, lst: list[bytes],
                       framed: bool) -> list[OutputRow]:
        """A batch's outputs for one sink over several rows of at most about
        ``MAX_ROW_BYTES``; an output too large to store at all is dropped and
        counted as a failure of its message (it was already computed)."""
        rows: list[OutputRow] = []
        group: list[bytes] = []
        size = 0
        name = f"encoder of {self.app.sinks[sink].label}"
        items = ([lst[k] + lst[k + 1] for k in range(0, len(lst), 2)] if framed
                 else lst)
        extra = 4 if framed else 0

        def flush():
            nonlocal group, size
            if group:
                seq = self.next_out_seq[sink]
                rows.append(OutputRow(sink, seq, len(group), b"".join(group), framed))
                self.next_out_seq[sink] = seq + len(group)
                group, size = [], 0
        for out in items:
            if len(out) - extra > MAX_OUTPUT_BYTES:
                self.failures.fail(name, StepError(
                    f"output of {len(out) - extra} bytes exceeds the largest "
                    f"output the outbox can store ({MAX_OUTPUT_BYTES} bytes); "
                    f"dropped"))
                continue
            if size and size + len(out) > MAX_ROW_BYTES:
                flush()
            group.append(out)
            size += len(out)
        flush()
        return rows

