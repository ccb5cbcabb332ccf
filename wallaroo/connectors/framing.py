"""Wallaroo framing: a header of ``header_length`` bytes giving the payload
length, then the payload.  One frame is one message, whether or not it
decodes."""

from __future__ import annotations

import struct

from .._spec import DecoderSpec

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
# frames of one length in a row worth the fixed-stride split (Framer)
UNIFORM_RUN = 8


class FrameError(Exception):
    """A length header that cannot be honoured (over the limit, negative, or
    a decoder's payload_length that raised).  Closes only that connection."""


class PartialFrames(FrameError):
    """A bad header after some good frames: the good ones still count."""

    def __init__(self, payloads: list[bytes], consumed: int, cause: FrameError):
        super().__init__(str(cause))
        self.payloads = payloads
        self.consumed = consumed


class Framer:
    """Splits received bytes into complete frames.

    ``split(data)`` returns ``(payloads, consumed)``: the payloads of the
    complete frames at the front of ``data`` and how many bytes they span;
    the caller keeps ``data[consumed:]`` for the next read.
    """

    def __init__(self, decoder: DecoderSpec, max_frame: int = DEFAULT_MAX_FRAME):
        self.header_length = decoder.header_length
        self.max_frame = max_frame
        self.decoder_name = decoder.name
        if decoder.length_fmt is not None:
            self.split = self._make_struct_split(struct.Struct(decoder.length_fmt))
        else:
            self._payload_length = decoder.payload_length
            self.split = self._generic_split

    def _too_big(self, n) -> FrameError:
        if not isinstance(n, int) or n < 0:
            return FrameError(f"invalid payload length {n!r} in a frame header")
        return FrameError(f"frame of {n} bytes exceeds the maximum frame size "
                          f"of {self.max_frame} bytes")

    def _make_struct_split(self, st: struct.Struct):
        unpack_from = st.unpack_from
        hl = self.header_length
        max_frame = self.max_frame
        too_big = self._too_big

        # a length that can be negative (all bits set reads below 0: a signed
        # type, whatever padding or spaces the format has) needs the checked
        # loop: the fast one would stand still or go backwards on it
        signed = st.unpack(b"\xff" * st.size)[0] < 0

        # the loop runs once per message: as few operations as it can
        def split_from(data, pos: int, payloads: list) -> tuple[list[bytes], int]:
            append = payloads.append
            n = len(data)
            last = n - hl  # a header fits while pos <= last
            while pos <= last:
                (ln,) = unpack_from(data, pos)
                if ln > max_frame:
                    raise PartialFrames(payloads, pos, too_big(ln))
                start = pos + hl
                pos = start + ln
                if pos > n:  # incomplete: it starts at the header
                    return payloads, start - hl
                append(data[start:pos])
            return payloads, pos

        # Fixed-size messages (market data, sensor readings, the
        # benchmarks) give runs of frames of one length.  A run is checked
        # with one C-level comparison per header byte (every stride-th byte
        # against the first header's) and cut with one comprehension: about
        # twice as fast as the loop.  Anything else (a different
        # length anywhere, a bad header) leaves it to the loop above.
        def split(data) -> tuple[list[bytes], int]:
            n = len(data)
            if n < hl * UNIFORM_RUN:
                return split_from(data, 0, [])
            (ln,) = unpack_from(data, 0)
            stride = hl + ln
            count = n // stride
            if count < UNIFORM_RUN or ln > max_frame:
                return split_from(data, 0, [])
            end = count * stride
            for k in range(hl):
                if data[k:end:stride] != data[k:k + 1] * count:
                    return split_from(data, 0, [])
            payloads = [data[i:i + ln] for i in range(hl, end - ln + 1, stride)]
            if end == n:
                return payloads, n
            return split_from(data, end, payloads)

        def split_signed(data: bytes) -> tuple[list[bytes], int]:
            payloads: list[bytes] = []
            append = payloads.append
            pos = 0
            n = len(data)
            while n - pos >= hl:
                (ln,) = unpack_from(data, pos)
                if ln > max_frame or ln < 0:
                    raise PartialFrames(payloads, pos, too_big(ln))
                start = pos + hl
                end = start + ln
                if end > n:
                    break
                append(data[start:end])
                pos = end
            return payloads, pos
        return split_signed if signed else split

    def _generic_split(self, data: bytes) -> tuple[list[bytes], int]:
        payloads: list[bytes] = []
        hl = self.header_length
        pos = 0
        n = len(data)
        while n - pos >= hl:
            try:
                ln = self._payload_length(data[pos:pos + hl])
            except Exception as e:
                raise PartialFrames(payloads, pos, FrameError(
                    f"decoder {self.decoder_name}.payload_length raised "
                    f"{type(e).__name__}: {e}")) from None
            if not isinstance(ln, int) or ln > self.max_frame or ln < 0:
                raise PartialFrames(payloads, pos, self._too_big(ln))
            start = pos + hl
            end = start + ln
            if end > n:
                break
            payloads.append(data[start:end])
            pos = end
        return payloads, pos

    def split_all(self, data: bytes) -> list[bytes]:
        """Split bytes that must hold whole frames (a logged input row)."""
        payloads, consumed = self.split(data)
        if consumed != len(data):
            raise FrameError(f"{len(data) - consumed} trailing bytes are not "
                             f"a whole frame")
        return payloads
