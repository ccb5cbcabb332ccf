"""A small app for protocol tests: u64 payloads, a running total per parity,
output "value total\\n" lines."""

import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("proto")
    ab.new_pipeline("numbers", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_state_partition(add, Total, "totals", parity, [0, 1])
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


class Total:
    def __init__(self):
        self.total = 0
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return struct.unpack(">Q", bs)[0]


@wallaroo.partition
def parity(v):
    return v % 2


@wallaroo.state_computation("add")
def add(v, state):
    state.total += v
    state.count += 1
    return ((v, state.total), v % 4 == 0)


@wallaroo.encoder
def encode(out):
    return "%d %d\n" % out
