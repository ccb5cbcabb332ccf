"""The application the in-process recovery tests crash.

Pipeline "A": payload ">BIBB" = key (0-7), value (u32), save flag, fail code
  -> "counts": to_state_partition by key (keys 0-3 declared, 4-7 created on
     first use); state keeps (n, total); emits (key, n, total, value, fail)
     and asks save_state when the save flag is set
  -> "fanout": compute_multi: None when value % 7 == 0 (filtered), the item
     twice (second tagged "echo") when value % 5 == 0, else once
  -> "total": to_stateful, shared with pipeline B: adds the value, counts
  -> encoder: repr of the item, length-prefixed (">I")
Pipeline "B": payload ">I" value -> "total" (shared) -> encoder.

fail codes: 1 the decoder raises, 2 the state computation raises before
touching the state, 3 the encoder raises.  Everything else is deterministic,
so a reference fold of the input predicts every state and output.
"""

import struct

import wallaroo


def application_setup(args):
    ab = wallaroo.ApplicationBuilder("model")
    ab.new_pipeline("A", wallaroo.TCPSourceConfig("127.0.0.1", "0", decode_a))
    ab.to_state_partition(count, Counts, "counts", by_key, [0, 1, 2, 3])
    ab.to(fanout)
    ab.to_stateful(absorb, Total, "total")
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "0", encode))
    ab.new_pipeline("B", wallaroo.TCPSourceConfig("127.0.0.1", "0", decode_b))
    ab.to_stateful(absorb, Total, "total")
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "0", encode))
    return ab.build()


class Counts:
    def __init__(self):
        self.n = 0
        self.total = 0


class Total:
    def __init__(self):
        self.sum = 0
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_a(bs):
    key, value, save, fail = struct.unpack(">BIBB", bs)
    if fail == 1:
        raise ValueError("decoder told to fail")
    return (key, value, save, fail)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_b(bs):
    (value,) = struct.unpack(">I", bs)
    return ("b", value)


@wallaroo.partition
def by_key(msg):
    return msg[0]


@wallaroo.state_computation("count")
def count(msg, state):
    key, value, save, fail = msg
    if fail == 2:
        raise RuntimeError("state computation told to fail")
    state.n += 1
    state.total += value
    return ((key, state.n, state.total, value, fail), bool(save))


@wallaroo.computation_multi("fanout")
def fanout(item):
    value = item[3]
    if value % 7 == 0:
        return None
    if value % 5 == 0:
        return [item, ("echo",) + item]
    return [item]


@wallaroo.state_computation("absorb")
def absorb(item, state):
    value = item[1] if item[0] == "b" else item[-2]
    state.sum += value
    state.count += 1
    return (item, value % 3 == 0)


@wallaroo.encoder
def encode(item):
    if item[-1] == 3 and item[0] != "b":
        raise ValueError("encoder told to fail")
    text = repr(item).encode()
    return struct.pack(">I", len(text)) + text


def payload_a(key, value, save, fail):
    return struct.pack(">BIBB", key, value, save, fail)


def payload_b(value):
    return struct.pack(">I", value)


def reference(a_msgs, b_msgs):
    """The fold the engine must agree with: final states and the multiset
    of outputs (as repr bytes), for inputs accepted exactly once."""
    counts = {k: [0, 0] for k in range(4)}
    total = [0, 0]
    outputs = []
    for key, value, save, fail in a_msgs:
        if fail in (1, 2):
            continue
        c = counts.setdefault(key, [0, 0])
        c[0] += 1
        c[1] += value
        item = (key, c[0], c[1], value, fail)
        fanned = fanout(item)
        for x in fanned or []:
            total[0] += value
            total[1] += 1
            if fail != 3:
                outputs.append(repr(x).encode())
    for value in b_msgs:
        total[0] += value
        total[1] += 1
        outputs.append(repr(("b", value)).encode())
    return counts, total, outputs
