"""A running sum of u64 values, for the send/receive tests.

Input: Wallaroo frames (``>I`` length) whose payload is one big-endian u64.
Output per message: a frame ``>IQQ`` of length 16, the value, then the sum
of every value applied so far.  With values 1..N sent in order, exactly-once
state means each output (v, s) has s == v * (v + 1) / 2: a lost update or a
repeated one shows up in every later sum.
"""

import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("u64 sum")
    ab.new_pipeline("u64 sum", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to_stateful(add, RunningSum, "running sum")
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


class RunningSum(object):
    def __init__(self):
        self.total = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return struct.unpack(">Q", bs)[0]


@wallaroo.state_computation(name="add")
def add(value, state):
    state.total += value
    return ((value, state.total), True)


@wallaroo.encoder
def encoder(pair):
    return struct.pack(">IQQ", 16, pair[0], pair[1])
