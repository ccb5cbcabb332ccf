"""One partition of very large state, for the big-state benchmark.

Messages are text lines (4-byte length header):
    fill <key> <shape> <MB>   make the key's state about MB megabytes when
                              pickled: shape ``bytes`` (one bytearray) or
                              ``dict`` (many small str -> str entries)
    ping <key> <t>            count; the output echoes t (the sender's clock)
Neither asks for ``save_state``: the big partition is snapshotted by the
periodic checkpoint, which is what the benchmark measures.  Both are
deterministic, so replay rebuilds the same state.
"""

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("big state")
    ab.new_pipeline("big", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_state_partition(apply, Big, "big state", key, ["small", "big"])
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


class Big:
    def __init__(self):
        self.data = None
        self.pings = 0


def build(shape: str, mb: int):
    if shape == "bytes":
        chunk = bytes(range(256)) * 4096  # 1 MiB
        out = bytearray()
        for _ in range(mb):
            out += chunk
        return out
    if shape == "dict":
        # ~100 pickled bytes per entry (keys of 10 characters, values of 80)
        return {f"k{i:09d}": f"{i:080d}" for i in range(mb * 1_000_000 // 100)}
    raise ValueError(f"unknown shape {shape!r}")


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode().split()


@wallaroo.partition
def key(msg):
    return msg[1]


@wallaroo.state_computation("apply")
def apply(msg, state):
    if msg[0] == "fill":
        state.data = build(msg[2], int(msg[3]))
        return (f"filled {msg[1]} {len(state.data)}", False)
    state.pings += 1
    return (f"ping {msg[1]} {state.pings} {msg[2]}", False)


@wallaroo.encoder
def encode(out):
    return out.encode() + b"\n"
