"""The windows benchmark's application (the 0.6 API): messages are a 2-byte
key index and a 4-byte value (big-endian); keyed by ``k<index>``, summed in
tumbling range windows (``WINDOW_MS`` in the arguments, default 1000 ms);
each window outputs ``key,sum\\n``."""

import struct

import wallaroo

KEYS = [f"k{i}" for i in range(65536)]
_unpack = struct.Struct(">HI").unpack


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    i, v = _unpack(bs)
    return (KEYS[i], v)


@wallaroo.key_extractor
def key_of(msg):
    return msg[0]


class Sum(wallaroo.Aggregation):
    def initial_accumulator(self):
        return 0

    def update(self, msg, acc):
        return acc + msg[1]

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return "%s,%d\n" % (key, acc)


@wallaroo.encoder
def encode(line):
    return line


def window_ms(args) -> int:
    for a in args:
        if a.startswith("WINDOW_MS="):
            return int(a.split("=", 1)[1])
    return 1000


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    pipeline = (wallaroo.source("sums", wallaroo.TCPSourceConfig(in_host, in_port,
                                                                   decode))
                .key_by(key_of)
                .to(wallaroo.range_windows(wallaroo.milliseconds(window_ms(args)))
                    .over(Sum))
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode)))
    return wallaroo.build_application("window sums", pipeline)
