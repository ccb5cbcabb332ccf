"""A windowed application of the 0.6 API for the windows tests: input
``key,id`` lines, keyed by ``key``; each window outputs ``key:id.id...`` (the
ids it holds, in arrival order).  ``WINDOWS=...`` in the arguments picks the
windows: ``tumbling``, ``sliding``, ``delayed``, ``count`` or ``second``."""

import wallaroo

SECOND = 10**9
KINDS = {
    "tumbling": lambda: wallaroo.range_windows(3 * SECOND),
    "sliding": lambda: wallaroo.range_windows(6 * SECOND).with_slide(2 * SECOND),
    "delayed": lambda: wallaroo.range_windows(3 * SECOND).with_delay(2 * SECOND),
    "count": lambda: wallaroo.count_windows(3),
    "second": lambda: wallaroo.range_windows(SECOND),  # the chaos run's
}


class Ids(wallaroo.Aggregation):
    def initial_accumulator(self):
        return []

    def update(self, input, acc):
        acc.append(input[1])

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return "%s:%s" % (key, ".".join(acc))

    def name(self):
        return "ids"


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return tuple(bs.decode().split(","))


@wallaroo.encoder
def encode(line):
    return line + "\n"


@wallaroo.key_extractor
def by_key(msg):
    return msg[0]


def application_setup(args):
    kind = next((a.split("=", 1)[1] for a in args if a.startswith("WINDOWS=")),
                "tumbling")
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    pipeline = (wallaroo.source("ids", wallaroo.TCPSourceConfig(in_host, in_port,
                                                                  decode))
                .key_by(by_key)
                .to(KINDS[kind]().over(Ids))
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode)))
    return wallaroo.build_application("windows " + kind, pipeline)
