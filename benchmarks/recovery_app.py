"""Many keys of small state, for the recovery benchmark: each u64 message is
its own partition key (to_state_partition_u64, no declared keys); the state
counts messages; save_state is never asked, so recovery rests on the
periodic incremental checkpoints and on replay of the log."""

import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("many keys")
    ab.new_pipeline("keys", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_state_partition_u64(count, Counter, "counters", key, [])
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


class Counter:
    def __init__(self):
        self.n = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return struct.unpack(">Q", bs)[0]


@wallaroo.partition
def key(v):
    return v


@wallaroo.state_computation("count")
def count(v, state):
    state.n += 1
    return ((v, state.n), False)


@wallaroo.encoder
def encode(out):
    return struct.pack(">IQQ", 16, *out)
