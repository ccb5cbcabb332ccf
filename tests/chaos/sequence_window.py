"""The sequence-window validator application (chaos tests).

Input: u64 values 1..N (8-byte big-endian payloads).  They are split by
parity into two partitions; each partition keeps the last four values it
saw and emits them after every message, so the output is a sliding window
over each parity's sequence.  The state is saved (``save_state=True``) only
on every tenth value, so most recovery goes through replay of the log.

An exactly-once engine produces windows like [1, 3, 5, 7]: any gap (a lost
update) or repeat (an update applied twice) shows in every later window of
that parity, and every input has the window that ends with it.

Output frame: ">I" length 32, then four ">Q" values, oldest first (0 until
the partition has seen four values).
"""

import struct

import wallaroo

OUT = struct.Struct(">IQQQQ")


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("sequence window")
    ab.new_pipeline("sequence",
                    wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_state_partition(observe, Window, "windows", parity, [0, 1])
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


class Window:
    def __init__(self):
        self.values = [0, 0, 0, 0]


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return struct.unpack(">Q", bs)[0]


@wallaroo.partition
def parity(value):
    return value % 2


@wallaroo.state_computation("observe")
def observe(value, state):
    state.values = state.values[1:] + [value]
    return (tuple(state.values), value % 10 == 0)


@wallaroo.encoder
def encode(window):
    return OUT.pack(32, *window)
