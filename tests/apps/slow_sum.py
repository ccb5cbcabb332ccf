"""u64_sum with a slow decoder, for the tests of a slow application: the
decoder sleeps ``--delay-ms`` milliseconds per message (default 1), then
decodes a big-endian u64.  Output per message: ``>IQQ`` (16, value, sum of
every value so far), so exactly-once state shows as s == v * (v + 1) / 2
when 1..N are sent in order.  ``--state-bytes N`` pads the state with N
bytes (a big snapshot).  ``--save-every N``: the state asks for a snapshot
after every value divisible by N (default 100; 0: never, so only periodic
checkpoints take one)."""

import struct
import time

import wallaroo


def _arg(args, name, default):
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return type(default)(args[i + 1])
        if a.startswith(name + "="):
            return type(default)(a.split("=", 1)[1])
    return default


DELAY = [0.001]
PAD = [0]
SAVE_EVERY = [100]


def application_setup(args):
    DELAY[0] = _arg(args, "--delay-ms", 1.0) / 1000.0
    PAD[0] = _arg(args, "--state-bytes", 0)
    SAVE_EVERY[0] = _arg(args, "--save-every", 100)
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("slow sum")
    ab.new_pipeline("slow sum", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to_stateful(add, RunningSum, "running sum")
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


class RunningSum(object):
    def __init__(self):
        self.total = 0
        self.pad = b""


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    if DELAY[0]:
        time.sleep(DELAY[0])
    return struct.unpack(">Q", bs)[0]


@wallaroo.state_computation(name="add")
def add(value, state):
    state.total += value
    if PAD[0] and len(state.pad) != PAD[0]:
        state.pad = bytes(range(256)) * (PAD[0] // 256) + bytes(PAD[0] % 256)
    return ((value, state.total), bool(SAVE_EVERY[0]) and value % SAVE_EVERY[0] == 0)


@wallaroo.encoder
def encoder(pair):
    return struct.pack(">IQQ", 16, pair[0], pair[1])
