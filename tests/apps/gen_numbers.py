"""A generator source of the 0.6 API: 1, 2, ... ``COUNT=N`` (in the
arguments; default 100000), each sent on as ``n\\n``."""

import wallaroo


class Numbers(object):
    def __init__(self, count):
        self.count = count

    def initial_value(self):
        return 1

    def apply(self, v):
        return v + 1 if v < self.count else None


@wallaroo.computation(name="as text")
def as_text(n):
    return "%d\n" % n


@wallaroo.encoder
def encode(line):
    return line


def application_setup(args):
    count = next((int(a.split("=", 1)[1]) for a in args if a.startswith("COUNT=")),
                 100000)
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    pipeline = (wallaroo.source("numbers", wallaroo.GenSourceConfig(Numbers(count)))
                .to(as_text)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode)))
    return wallaroo.build_application("numbers", pipeline)
