"""Windows over aggregations, the Wallaroo 0.6 API
(``wallaroo.count_windows``, ``wallaroo.range_windows``,
``wallaroo.Aggregation`` and the time helpers).

A window step is a state step: each key's open windows are one partition,
snapshotted, checkpointed and replayed like any other state (docs/windows.md).

- **Range windows** place a message by its event time, which is its ingest
  time: the time the worker that owns the key took it in, recorded in the
  log with it (``_keyed.CLOCK.now``).  Windows start every ``slide``
  nanoseconds from the epoch and last ``range``.  The watermark is the
  largest ingest time the worker has processed (rows of the log carry it),
  and on an idle worker it advances with the clock (the engine logs a tick),
  so windows close without new input.  A window fires (``output(key, acc)``)
  once the watermark passes its end plus ``delay``; a message whose
  windows have all fired is late: dropped and counted.  A window no
  message went into does not exist, so it emits nothing.
- **Count windows** emit every ``count`` messages per key, and flush a
  partial window once ``COUNT_FLUSH_NS`` (5 s, as Wallaroo 0.6.1) passed
  since its last message.

``update(input, acc)`` may change ``acc`` in place (the documents' form) or
return the new accumulator (needed for immutable ones such as ints).
"""

from __future__ import annotations

import inspect

from ._errors import WallarooParameterError
from ._keyed import CLOCK, COLLECT_KEY, Keyed, Tick

COUNT_FLUSH_NS = 5_000_000_000


def _duration(n, unit: int, helper: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 0:
        raise WallarooParameterError(
            f"wallaroo.{helper}({n!r}): a duration is a number >= 0")
    return int(round(n * unit))


def nanoseconds(n) -> int:
    return _duration(n, 1, "nanoseconds")


def microseconds(n) -> int:
    return _duration(n, 1_000, "microseconds")


def milliseconds(n) -> int:
    return _duration(n, 1_000_000, "milliseconds")


def seconds(n) -> int:
    return _duration(n, 1_000_000_000, "seconds")


def minutes(n) -> int:
    return _duration(n, 60_000_000_000, "minutes")


def hours(n) -> int:
    return _duration(n, 3_600_000_000_000, "hours")


def describe_ns(ns: int) -> str:
    for unit, name in ((3_600_000_000_000, "h"), (60_000_000_000, "min"),
                       (1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")):
        if ns and ns % unit == 0:
            return f"{ns // unit}{name}"
    return f"{ns}ns"


class Aggregation:
    """Extend this class and implement ``initial_accumulator()``,
    ``update(input, acc)``, ``combine(acc1, acc2)`` and ``output(key, acc)``;
    ``name()`` is optional (the class name otherwise)."""

    def initial_accumulator(self):
        raise NotImplementedError

    def update(self, input, acc):
        raise NotImplementedError

    def combine(self, acc1, acc2):
        raise NotImplementedError

    def output(self, key, acc):
        raise NotImplementedError

    def name(self):
        return type(self).__name__


_REQUIRED = {"initial_accumulator": 0, "update": 2, "combine": 2, "output": 2}


def _aggregation(agg, where: str) -> Aggregation:
    """The aggregation ``over()`` was given, checked and instantiated."""
    cls = agg if inspect.isclass(agg) else type(agg)
    if not (inspect.isclass(cls) and issubclass(cls, Aggregation)):
        raise WallarooParameterError(
            f"{where}: over() takes a class that extends wallaroo.Aggregation, "
            f"got {agg!r}")
    missing = [m for m in _REQUIRED if getattr(cls, m) is getattr(Aggregation, m)]
    if missing:
        raise WallarooParameterError(
            f"{where}: aggregation {cls.__qualname__} does not implement "
            f"{', '.join(m + '()' for m in missing)}; an Aggregation needs "
            f"initial_accumulator(), update(input, acc), combine(acc1, acc2) "
            f"and output(key, acc)")
    for m, arity in _REQUIRED.items():
        try:
            inspect.signature(getattr(cls, m)).bind(None, *range(arity))
        except TypeError:
            raise WallarooParameterError(
                f"{where}: {cls.__qualname__}.{m} must take self and {arity} "
                f"argument{'s' if arity != 1 else ''}") from None
        except ValueError:
            pass
    if inspect.isclass(agg):
        try:
            agg = agg()
        except Exception as e:
            raise WallarooParameterError(
                f"{where}: could not create the aggregation "
                f"{cls.__qualname__}() (it must be constructible without "
                f"arguments): {e!r}") from None
    name = agg.name()
    if not isinstance(name, str) or not name:
        raise WallarooParameterError(
            f"{where}: {cls.__qualname__}.name() must return a non-empty "
            f"string, got {name!r}")
    return agg


def _positive(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise WallarooParameterError(f"{what} must be a positive int, got {n!r}")
    return n


class CountWindowsBuilder:
    """``wallaroo.count_windows(count)``: ``.over(AggregationClass)``."""

    def __init__(self, count):
        self.count = _positive(count, "wallaroo.count_windows(count): count")

    def over(self, aggregation) -> "Windows":
        agg = _aggregation(aggregation, f"count_windows({self.count})")
        return Windows("count", agg, count=self.count)


class RangeWindowsBuilder:
    """``wallaroo.range_windows(range)``: optionally ``.with_slide(s)`` and
    ``.with_delay(d)`` (each once), then ``.over(AggregationClass)``.  Each
    call returns a new builder."""

    def __init__(self, range_, slide=None, delay=None):
        self.range = _positive(range_, "wallaroo.range_windows(range): range "
                                       "(nanoseconds; use wallaroo.seconds(...))")
        self.slide = slide
        self.delay = delay

    def with_slide(self, slide) -> "RangeWindowsBuilder":
        if self.slide is not None:
            raise WallarooParameterError(
                f"range_windows({describe_ns(self.range)}): with_slide() "
                f"was already called (with {describe_ns(self.slide)}); call it "
                f"once")
        slide = _positive(slide, "with_slide(slide): slide (nanoseconds)")
        if slide > self.range:
            raise WallarooParameterError(
                f"range_windows({describe_ns(self.range)}).with_slide("
                f"{describe_ns(slide)}): the slide must not exceed the range")
        return RangeWindowsBuilder(self.range, slide, self.delay)

    def with_delay(self, delay) -> "RangeWindowsBuilder":
        if self.delay is not None:
            raise WallarooParameterError(
                f"range_windows({describe_ns(self.range)}): with_delay() was "
                f"already called (with {describe_ns(self.delay)}); call it once")
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise WallarooParameterError(
                f"with_delay(delay): delay must be an int >= 0 (nanoseconds), "
                f"got {delay!r}")
        return RangeWindowsBuilder(self.range, self.slide, delay)

    def over(self, aggregation) -> "Windows":
        agg = _aggregation(aggregation, f"range_windows({describe_ns(self.range)})")
        return Windows("range", agg, range=self.range,
                       slide=self.range if self.slide is None else self.slide,
                       delay=0 if self.delay is None else self.delay)


def count_windows(count) -> CountWindowsBuilder:
    return CountWindowsBuilder(count)


def range_windows(range) -> RangeWindowsBuilder:  # noqa: A002 (the API's name)
    return RangeWindowsBuilder(range)


class RangeWindowState:
    """One key's open range windows: ``windows[start] = accumulator``;
    ``closed`` is the end of the latest window fired (windows ending at or
    before it are gone); ``late`` counts messages dropped as late."""

    def __init__(self) -> None:
        self.windows: dict = {}
        self.closed = -1 << 62
        self.late = 0


class CountWindowState:
    def __init__(self) -> None:
        self.acc = None
        self.n = 0
        self.last = 0  # ingest time of the window's last message


class Windows:
    """What ``.over()`` returns: the window step ``to()`` takes."""

    def __init__(self, kind: str, agg: Aggregation, count: int = 0,
                 range: int = 0, slide: int = 0, delay: int = 0):  # noqa: A002
        self.kind = kind
        self.agg = agg
        self.count = count
        self.range = range
        self.slide = slide
        self.delay = delay

    def name(self) -> str:
        return self.agg.name()

    def describe(self) -> str:
        cls = type(self.agg)
        over = f"over {cls.__module__}.{cls.__qualname__}"
        if self.kind == "count":
            return f"count windows of {self.count} {over}"
        return (f"range windows of {describe_ns(self.range)} sliding "
                f"{describe_ns(self.slide)} delayed {describe_ns(self.delay)} "
                f"{over}")

    def new_state(self):
        return CountWindowState() if self.kind == "count" else RangeWindowState()

    def next_fire(self, st) -> int | None:
        """When the partition ``st`` next has something to fire (ns)."""
        if self.kind == "count":
            return st.last + COUNT_FLUSH_NS if st.n else None
        return min(st.windows) + self.range + self.delay if st.windows else None

    def step_function(self, state_name: str, keyed: bool):
        """-> fn(item, state) returning the list of outputs (a multi step)."""
        if self.kind == "count":
            return _count_step(self, state_name, keyed)
        return _range_step(self, state_name, keyed)


def _schedule(state_name: str, key, at) -> None:
    timers = CLOCK.timers
    if timers is not None:
        timers.schedule(state_name, key, at)


def _range_step(w: Windows, state_name: str, keyed: bool):
    agg = w.agg
    rng, slide, delay = w.range, w.slide, w.delay
    wait = rng + delay  # from a window's start to its firing
    initial, update, output = agg.initial_accumulator, agg.update, agg.output

    def fire(st: RangeWindowState, key, wm: int) -> list:
        out = []
        windows = st.windows
        for start in sorted(windows):
            end = start + rng
            if start + wait > wm:
                break
            acc = windows.pop(start)
            if end > st.closed:
                st.closed = end
            o = output(key, acc)
            if o is not None:
                out.append(Keyed(key, o) if keyed else o)
        return out

    def step(item, st: RangeWindowState):
        """-> the outputs of the windows that fired (None: none)."""
        out = None
        now = CLOCK.now
        windows = st.windows
        if type(item) is Tick:
            key = item.key
            if windows and min(windows) + wait <= now:
                out = fire(st, key, now)
        else:
            if keyed:
                key, value = item.key, item.value
            else:
                key, value = COLLECT_KEY, item
            if windows and min(windows) + wait <= now:
                out = fire(st, key, now)
            start = now - now % slide
            placed = False
            while start > now - rng:
                if start + rng > st.closed:
                    acc = windows.get(start)
                    if acc is None:
                        acc = windows[start] = initial()
                    r = update(value, acc)
                    if r is not None:
                        windows[start] = r
                    placed = True
                start -= slide
            if not placed:
                st.late += 1
                timers = CLOCK.timers
                if timers is not None:
                    timers.late(state_name)
        _schedule(state_name, key, min(windows) + wait if windows else None)
        return out
    return step


def _count_step(w: Windows, state_name: str, keyed: bool):
    agg = w.agg
    count = w.count
    initial, update, output = agg.initial_accumulator, agg.update, agg.output

    def emit(st: CountWindowState, key, out: list | None) -> list | None:
        o = output(key, st.acc)
        st.acc, st.n = None, 0
        if o is None:
            return out
        o = Keyed(key, o) if keyed else o
        if out is None:
            return [o]
        out.append(o)
        return out

    def step(item, st: CountWindowState):
        """-> the outputs of the windows that closed (None: none)."""
        out = None
        now = CLOCK.now
        if type(item) is Tick:
            key = item.key
            if st.n and now >= st.last + COUNT_FLUSH_NS:
                out = emit(st, key, out)
        else:
            if keyed:
                key, value = item.key, item.value
            else:
                key, value = COLLECT_KEY, item
            if st.n and now >= st.last + COUNT_FLUSH_NS:
                out = emit(st, key, out)  # the quiet window closes first
            if st.acc is None:
                st.acc = initial()
            r = update(value, st.acc)
            if r is not None:
                st.acc = r
            st.n += 1
            st.last = now
            if st.n >= count:
                out = emit(st, key, out)
        _schedule(state_name, key, st.last + COUNT_FLUSH_NS if st.n else None)
        return out
    return step


for _obj in (Aggregation, count_windows, range_windows, nanoseconds,
             microseconds, milliseconds, seconds, minutes, hours):
    _obj.__module__ = "wallaroo"
