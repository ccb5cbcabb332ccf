"""The cluster chaos application: two pipelines over many keys.

"windows": u64 values 1..N; key v % 7; each key keeps the last four values
it saw and emits them after every message (sequence windows of step 7: a
gap or a repeat shows in every later window of that key).  Output: b"W" and
four ">Q" values, length-prefixed (">I").

"votes": ">IH" (vote number, key 0..999): each key keeps its total of votes
and emits (key, total) after every message.  Output: b"V" + ">HQ",
length-prefixed.  The last output per key must equal its votes, and no
(key, total) may appear twice.

State is saved every tenth message, so recovery replays most of the log.
"""

import struct

import wallaroo

KEYS = 7
WIN = struct.Struct(">IcQQQQ")
VOTE = struct.Struct(">IcHQ")


def application_setup(args):
    ins = wallaroo.tcp_parse_input_addrs(args)
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("cluster chaos")
    ab.new_pipeline("windows", wallaroo.TCPSourceConfig(ins[0][0], ins[0][1], decode_u64))
    ab.to_state_partition(observe, Window, "windows", by_residue, list(range(KEYS)))
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_window))
    ab.new_pipeline("votes", wallaroo.TCPSourceConfig(ins[1][0], ins[1][1], decode_vote))
    ab.to_state_partition(add_vote, Total, "totals", by_key)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_vote))
    return ab.build()


class Window:
    def __init__(self):
        self.values = [0, 0, 0, 0]


class Total:
    def __init__(self):
        self.total = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_u64(bs):
    return struct.unpack(">Q", bs)[0]


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_vote(bs):
    return struct.unpack(">IH", bs)


@wallaroo.partition
def by_residue(v):
    return v % KEYS


@wallaroo.partition
def by_key(vote):
    return vote[1]


@wallaroo.state_computation("observe")
def observe(v, state):
    state.values = state.values[1:] + [v]
    return (tuple(state.values), v % 10 == 0)


@wallaroo.state_computation("add vote")
def add_vote(vote, state):
    state.total += 1
    return ((vote[1], state.total), vote[0] % 10 == 0)


@wallaroo.encoder
def encode_window(w):
    return WIN.pack(WIN.size - 4, b"W", *w)


@wallaroo.encoder
def encode_vote(kt):
    return VOTE.pack(VOTE.size - 4, b"V", *kt)
