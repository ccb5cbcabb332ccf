"""States of several shapes, each counting messages per key; every step
asks save_state, so each batch snapshots the partitions it touched.

``--kind`` picks the state class: ``plain`` (attributes only), ``parented``
(a child object pointing back at the state, which it updates), ``slotted``
(``__slots__``), ``mapping`` (a ``dict`` subclass) or ``guarded`` (a custom
``__setattr__``).  Payloads are the key; outputs ``key:count``.
"""

import wallaroo


def application_setup(args):
    kind = args[args.index("--kind") + 1] if "--kind" in args else "plain"
    ab = wallaroo.ApplicationBuilder("layout")
    ab.new_pipeline("in", wallaroo.TCPSourceConfig("127.0.0.1", "0", decode))
    ab.to_state_partition(count, KINDS[kind], "counts", by_key, [])
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "0", encode))
    return ab.build()


class Plain:
    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n


class _Child:
    def __init__(self, parent):
        self.parent = parent

    def bump(self):
        self.parent.n += 1  # the state, through the back pointer


class Parented:
    def __init__(self):
        self.n = 0
        self.child = _Child(self)

    def bump(self):
        self.child.bump()
        return self.n


class Slotted:
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n


class Mapping(dict):
    def bump(self):
        self["n"] = self.get("n", 0) + 1
        return self["n"]


class Guarded:
    def __init__(self):
        self.n = 0

    def __setattr__(self, name, value):
        if name != "n":
            raise AttributeError(name)
        object.__setattr__(self, name, value)

    def bump(self):
        self.n += 1
        return self.n


KINDS = {"plain": Plain, "parented": Parented, "slotted": Slotted,
         "mapping": Mapping, "guarded": Guarded}


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode()


@wallaroo.partition
def by_key(key):
    return key


@wallaroo.state_computation(name="count")
def count(key, state):
    return f"{key}:{state.bump()}", True


@wallaroo.encoder
def encode(text):
    return text.encode() + b"\n"
