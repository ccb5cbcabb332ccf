"""What flows between the steps of a 0.6 pipeline (``wallaroo.source``),
and the clock its windows read.

After ``key_by`` every message travels as ``Keyed(key, value)``: the key
the extractor gave stays with the message through stateless steps (the
0.6 API page: "this scheme will apply to both f and g") and picks the
partition of each state step and window; user functions only ever see the
value.  ``collect()`` drops the key again.

``CLOCK`` is set by the engine (``runtime/core.py``) before it runs a row
of input: ``now`` is the row's ingest time as recorded in the log (so a
replay puts every message in the window it went to the first time), and
``timers`` is the worker's schedule of windows waiting to fire.
"""

from __future__ import annotations


class Keyed:
    __slots__ = ("key", "value")

    def __init__(self, key, value):
        self.key = key
        self.value = value

    def __reduce__(self):
        return (Keyed, (self.key, self.value))

    def __eq__(self, other):
        return (type(other) is Keyed and self.key == other.key
                and self.value == other.value)

    def __hash__(self):
        return hash((self.key, self.value))

    def __repr__(self) -> str:
        return f"Keyed({self.key!r}, {self.value!r})"


class Tick:
    """Not a message: the engine asks a window's partition ``key`` to fire
    what the watermark has passed."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __reduce__(self):
        return (Tick, (self.key,))


class Clock:
    __slots__ = ("now", "timers")

    def __init__(self) -> None:
        self.now = 0  # ns since the epoch: the row being run's ingest time
        self.timers = None  # runtime.timers.Timers of the running worker


CLOCK = Clock()

# The one key of a state step or window that no key_by precedes (and of
# those after collect()): every message goes to the same partition.
COLLECT_KEY = ""


def partition_key(m):
    """The partition function of a state step or window after key_by."""
    return m.key


def unkeyed_key(m):
    """... and of one with no key_by before it, or after collect()."""
    return COLLECT_KEY
