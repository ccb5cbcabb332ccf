"""A state that cannot be pickled (it holds a lock): fine without
resilience, an error naming the state class and key at its first snapshot
with it."""

import threading

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("unpicklable")
    ab.new_pipeline("words", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_state_partition(remember, Guarded, "guarded", first_letter, [])
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


class Guarded:
    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode()


@wallaroo.partition
def first_letter(word):
    return word[:1]


@wallaroo.state_computation("remember")
def remember(word, state):
    with state.lock:
        state.n += 1
    return ("%s %d" % (word, state.n), True)


@wallaroo.encoder
def encode(line):
    return line + "\n"
