"""Counts per key, for the state-at-scale tests.

Input: frames (``>I`` length) holding a Python literal, the key (``'a'``,
``1``, ``1.0``, ``True``, ``('t', 2)``...).  The state of each key counts its
messages; a key whose text starts with ``special`` also keeps an ``Inner``
object (a class of this module referred to from inside the snapshot, not the
state class itself).  Output per message: a frame holding ``repr(key)=n``.
"""

import ast
import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("keyed counts")
    ab.new_pipeline("keys", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_state_partition(count, Count, "counts", by_key)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


class Count(object):
    def __init__(self):
        self.n = 0
        self.extra = None


class Inner(object):
    def __init__(self):
        self.seen = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return ast.literal_eval(bs.decode("utf-8"))


@wallaroo.partition
def by_key(key):
    return key


@wallaroo.state_computation(name="count")
def count(key, state):
    state.n += 1
    if isinstance(key, str) and key.startswith("special"):
        if state.extra is None:
            state.extra = Inner()
        state.extra.seen += 1
    return ("%r=%d" % (key, state.n), False)


@wallaroo.encoder
def encode(text):
    data = text.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def frame(key) -> bytes:
    data = repr(key).encode("utf-8")
    return struct.pack(">I", len(data)) + data
