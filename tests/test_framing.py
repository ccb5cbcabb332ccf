"""Framer.split against a reference: any bytes, cut anywhere, give the
complete frames at the front and how far they reach; a length over the
limit (or negative, for a signed header) is refused after the good frames."""

from __future__ import annotations

import struct

import hypothesis.strategies as st
from hypothesis import given, settings

from wallaroo._spec import DecoderSpec
from wallaroo.connectors.framing import Framer, PartialFrames


def reference(data: bytes, fmt: str, max_frame: int):
    s = struct.Struct(fmt)
    out, pos = [], 0
    while len(data) - pos >= s.size:
        (ln,) = s.unpack_from(data, pos)
        if ln > max_frame or ln < 0:
            return out, pos, "refused"
        if pos + s.size + ln > len(data):
            break
        out.append(data[pos + s.size:pos + s.size + ln])
        pos += s.size + ln
    return out, pos, None


@st.composite
def streams(draw):
    fmt = draw(st.sampled_from([">I", "<H", ">B", ">Q", ">i", "<h", ">q",
                                "!i ", ">ix", ">hx", "!I "]))
    s = struct.Struct(fmt)
    signed = s.unpack(b"\xff" * s.size)[0] < 0
    parts = []
    for payload in draw(st.lists(st.binary(max_size=40), max_size=12)):
        ln = len(payload)
        roll = draw(st.integers(0, 30))
        if roll == 0:
            ln = 41 + draw(st.integers(0, 200))  # over the limit below
        elif roll == 1 and signed:
            ln = -draw(st.integers(1, 100))
        parts.append(s.pack(ln) + payload)
    data = b"".join(parts)
    cut = draw(st.integers(0, len(data)))
    return fmt, data[:cut]


def assert_splits_like_the_reference(fmt: str, data: bytes) -> None:
    framer = Framer(DecoderSpec("d", struct.calcsize(fmt), fmt, None, bytes),
                    max_frame=40)
    want, pos, refused = reference(data, fmt, 40)
    try:
        got, consumed = framer.split(data)
    except PartialFrames as e:
        assert refused and e.payloads == want and e.consumed == pos
    else:
        assert not refused and got == want and consumed == pos


@settings(max_examples=400, deadline=None)
@given(streams())
def test_split_matches_the_reference(case):
    assert_splits_like_the_reference(*case)


@st.composite
def uniform_streams(draw):
    """Runs of frames of one length (the fixed-stride split's case), with
    now and then a frame of another length or a bad header, cut anywhere."""
    fmt = draw(st.sampled_from([">I", "<H", ">B", ">Q", "!I "]))
    s = struct.Struct(fmt)
    ln = draw(st.integers(0, 12))
    parts = []
    for _ in range(draw(st.integers(0, 40))):
        roll = draw(st.integers(0, 20))
        n = ln if roll > 2 else draw(st.integers(0, 12)) if roll else 41
        parts.append(s.pack(n) + bytes([roll]) * min(n, 12))
    data = b"".join(parts)
    return fmt, data[:draw(st.integers(0, len(data)))]


@settings(max_examples=400, deadline=None)
@given(uniform_streams())
def test_uniform_runs_split_like_the_reference(case):
    assert_splits_like_the_reference(*case)
