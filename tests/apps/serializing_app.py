"""Word counts whose module defines ``serialize``/``deserialize`` (Wallaroo's
inter-worker contract: used for messages between workers and for state
snapshots), counting how often they are called in a file given by
``--calls``.  A word "LOCK" carries an unpicklable object to its counter: a
message that cannot be serialized for another worker costs only itself."""

import json
import struct
import threading

import wallaroo

CALLS = [None]


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    if "--calls" in args:
        CALLS[0] = args[args.index("--calls") + 1]
    ab = wallaroo.ApplicationBuilder("serializing")
    ab.new_pipeline("words", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_parallel(split)
    ab.to_state_partition(count, Count, "counts", first_letter)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


def _note(kind):
    if CALLS[0]:
        with open(CALLS[0], "a") as f:
            f.write(kind + "\n")


def serialize(obj):
    _note("serialize")
    if isinstance(obj, Count):
        return json.dumps({"count": obj.counts}).encode()
    if isinstance(obj, Word) and isinstance(obj.extra, type(threading.Lock())):
        raise TypeError("a lock cannot travel")
    return json.dumps({"word": obj.text}).encode()


def deserialize(bs):
    _note("deserialize")
    d = json.loads(bs)
    if "count" in d:
        c = Count()
        c.counts = d["count"]
        return c
    return Word(d["word"])


class Word:
    def __init__(self, text, extra=None):
        self.text = text
        self.extra = extra


class Count:
    def __init__(self):
        self.counts = {}


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode()


@wallaroo.computation_multi(name="split")
def split(line):
    return [Word(w, threading.Lock() if w == "LOCK" else None) for w in line.split()]


@wallaroo.partition
def first_letter(word):
    return word.text[0]


@wallaroo.state_computation(name="count")
def count(word, state):
    state.counts[word.text] = state.counts.get(word.text, 0) + 1
    return ((word.text, state.counts[word.text]), True)


@wallaroo.encoder
def encode(pair):
    return "%s %d\n" % pair
