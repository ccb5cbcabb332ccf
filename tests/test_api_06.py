"""The Wallaroo 0.6 API (``../shared/docs/wallaroo-0.6/``): every form of
its API page builds and runs, in-process, and its misuses fail when the
application is built, with a message that says what to do."""

from __future__ import annotations

import pickle
import tempfile

import pytest

import wallaroo
from wallaroo import WallarooParameterError
from wallaroo.testing import Driver

from tests.apps.api_helpers import frames, lines, sink, source


@wallaroo.computation(name="upper")
def upper(data):
    return data.upper()


@wallaroo.computation(name="drop x")
def drop_x(data):
    return None if data.startswith("x") else data


@wallaroo.computation_multi(name="split")
def split(data):
    return data.split()


@wallaroo.key_extractor
def first_letter(data):
    return data[0]


@wallaroo.key_extractor
def length_key(data):
    return len(data) + 64  # an int: becomes chr(int), as in Wallaroo


class Count(object):
    def __init__(self):
        self.n = 0


@wallaroo.state_computation(name="count", state=Count)
def count(data, state):
    state.n += 1
    return "%s:%d" % (data, state.n)


@wallaroo.state_computation(name="count quietly", state=Count)
def count_quietly(data, state):
    state.n += 1
    return None if state.n % 2 else "%s:%d" % (data, state.n)


@wallaroo.state_computation_multi(name="count twice", state=Count)
def count_twice(data, state):
    state.n += 1
    return ["%s:%d" % (data, state.n), "again %s" % data]


class Sum(wallaroo.Aggregation):
    def initial_accumulator(self):
        return 0

    def update(self, input, acc):
        return acc + int(input[1:])

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return "%r=%d" % (key, acc)


class Listing(wallaroo.Aggregation):
    """A mutable accumulator changed in place (the documents' form)."""

    def initial_accumulator(self):
        return []

    def update(self, input, acc):
        acc.append(input)

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return None if not acc else "%s:%s" % (key, ",".join(acc))

    def name(self):
        return "listing"


def run06(pipeline, messages, *, name="app06", clock=None, batches=None):
    spec = wallaroo.build_application(name, pipeline)
    d = Driver(spec, resilience_dir=tempfile.mkdtemp(), event_clock=clock)
    d.start()
    for group in (batches or [messages]):
        d.feed(0, frames=frames(group))
        d.run_batch()
    return d


def src(name="in"):
    return wallaroo.source(name, source())


# -- forms that build and run ------------------------------------------------

def test_a_stateless_pipeline():
    d = run06(src().to(upper).to_sink(sink()), ["ab", "cd"])
    assert lines(d) == ["AB", "CD"]


def test_a_computation_returning_none_emits_nothing():
    d = run06(src().to(drop_x).to(upper).to_sink(sink()), ["xa", "b", "xc"])
    assert lines(d) == ["B"]


def test_computation_multi_sends_each_item():
    d = run06(src().to(split).to_sink(sink()), ["a b", "c"])
    assert lines(d) == ["a", "b", "c"]


def test_key_by_gives_each_key_its_own_state():
    d = run06(src().to(split).key_by(first_letter).to(count).to_sink(sink()),
              ["apple avocado banana", "axe"])
    assert lines(d) == ["apple:1", "avocado:2", "banana:1", "axe:3"]
    assert d.state("count", "a").n == 3 and d.state("count", "b").n == 1


def test_the_key_stays_with_the_message_through_stateless_steps():
    # key_by(first letter of the lower-case word), then upper() changes the
    # value: the state is still per lower-case letter
    d = run06(src().key_by(first_letter).to(upper).to(count).to_sink(sink()),
              ["ab", "ac", "b"])
    assert lines(d) == ["AB:1", "AC:2", "B:1"]
    assert d.state("count", "a").n == 2


def test_an_int_key_becomes_chr_and_bytes_keys_stay_bytes():
    d = run06(src().key_by(length_key).to(count).to_sink(sink()), ["a", "bb", "c"])
    assert lines(d) == ["a:1", "bb:1", "c:2"]
    assert d.state("count", chr(65)).n == 2

    @wallaroo.key_extractor
    def as_bytes(data):
        return data[:1].encode()
    d = run06(src().key_by(as_bytes).to(wallaroo.count_windows(2).over(Listing))
              .to_sink(sink()), ["a1", "a2"])
    assert lines(d) == ["b'a':a1,a2"]


def test_a_state_computation_without_key_by_has_one_state():
    d = run06(src().to(count).to_sink(sink()), ["a", "b", "c"])
    assert lines(d) == ["a:1", "b:2", "c:3"]


def test_collect_puts_every_key_back_in_one_state():
    d = run06(src().key_by(first_letter).to(count_twice).collect().to(count)
              .to_sink(sink()), ["ab", "cd"])
    # count_twice per letter, then one count over everything
    assert lines(d) == ["ab:1:1", "again ab:2", "cd:1:3", "again cd:4"]


def test_a_state_computation_returning_none_emits_nothing():
    d = run06(src().key_by(first_letter).to(count_quietly).to_sink(sink()),
              ["a1", "a2", "a3", "a4"])
    assert lines(d) == ["a2:2", "a4:4"]


def test_to_sinks_sends_every_output_to_each_sink():
    spec = wallaroo.build_application(
        "two", src().to(upper).to_sinks([sink(), sink()]))
    assert len(spec.sinks) == 2
    d = Driver(spec)
    d.start()
    d.feed(0, frames=frames(["x"]))
    d.run_batch()
    assert lines(d, 0) == lines(d, 1) == ["X"]


def test_merge_joins_two_sources_into_one_state():
    a = wallaroo.source("a", source()).to(upper)
    b = wallaroo.source("b", source())
    spec = wallaroo.build_application(
        "merged", a.merge(b).key_by(first_letter).to(count).to_sink(sink()))
    assert [p.name for p in spec.pipelines] == ["a", "b"]
    assert [s.name for s in spec.states] == ["count"]
    d = Driver(spec)
    d.start()
    d.feed("a", frames=frames(["pa"]))
    d.feed("b", frames=frames(["PB", "pc"]))
    d.run_batch()
    # "pa" became "PA": key P, shared with "PB"; "pc" is key p
    assert lines(d, 0) + lines(d, 1) == ["PA:1", "PB:2", "pc:1"]


def test_each_method_returns_a_new_pipeline_and_leaves_the_old_one():
    base = src()
    keyed = base.key_by(first_letter)
    with_upper = base.to(upper)
    assert base is not keyed and base is not with_upper
    # base is still partial and usable on its own
    d = run06(base.to_sink(sink()), ["ab"])
    assert lines(d) == ["ab"]
    d = run06(with_upper.to_sink(sink()), ["ab"])
    assert lines(d) == ["AB"]


def test_count_windows_emit_every_n_messages_per_key():
    d = run06(src().key_by(first_letter)
              .to(wallaroo.count_windows(2).over(Listing)).to_sink(sink()),
              ["a1", "b1", "a2", "b2", "a3"])
    assert lines(d) == ["a:a1,a2", "b:b1,b2"]


def test_over_takes_the_class_and_instantiates_it():
    w = wallaroo.count_windows(3).over(Sum)
    assert isinstance(w.agg, Sum)


def test_range_windows_fire_by_ingest_time():
    now = [10 * 10**9]
    d = run06(src().key_by(first_letter)
              .to(wallaroo.range_windows(wallaroo.seconds(3)).over(Sum))
              .to_sink(sink()), [], clock=lambda: now[0], batches=[["a1", "b5"]])
    assert lines(d) == []
    now[0] = 12 * 10**9 + 5
    d.feed(0, frames=frames(["a2"]))
    d.run_batch()
    # [9 s, 12 s) closed at 12 s; a2 is in [12 s, 15 s)
    assert lines(d) == ["'a'=1", "'b'=5"]
    now[0] += 10**9
    d.tick()
    d.run_batch()
    assert lines(d) == ["'a'=1", "'b'=5"]  # [12 s, 15 s) is still open
    now[0] = 15 * 10**9
    d.tick()
    d.run_batch()
    assert lines(d)[2:] == ["'a'=2"]


def test_sliding_windows_and_a_delay():
    now = [0]
    pipe = (src().to(wallaroo.range_windows(wallaroo.seconds(6))
                     .with_slide(wallaroo.seconds(3))
                     .with_delay(wallaroo.seconds(2)).over(Sum)).to_sink(sink()))
    d = run06(pipe, [], clock=lambda: now[0], batches=[])
    for t, msg in ((4, "x1"), (1, None), (6, "x10"), (8, "x100")):
        now[0] = max(now[0], t * 10**9)
        if msg:
            d.feed(0, frames=frames([msg]))
        else:
            d.tick()
        d.run_batch()
    assert lines(d) == ["''=1"]  # [0 s, 6 s) closed at 6 + 2 s
    now[0] = 20 * 10**9
    d.tick()
    d.run_batch()
    # [3, 9) holds 1, 10 and 100; [6, 12) holds 10 and 100
    assert lines(d) == ["''=1", "''=111", "''=110"]


def test_time_helpers_are_nanoseconds():
    assert wallaroo.nanoseconds(5) == 5
    assert wallaroo.microseconds(2) == 2_000
    assert wallaroo.milliseconds(3) == 3_000_000
    assert wallaroo.seconds(1.5) == 1_500_000_000
    assert wallaroo.minutes(1) == 60 * 10**9
    assert wallaroo.hours(1) == 3600 * 10**9


def test_tcp_source_config_takes_parallelism():
    cfg = wallaroo.TCPSourceConfig("127.0.0.1", 0, source().decoder, parallelism=4)
    assert cfg.parallelism == 4
    assert wallaroo.TCPSourceConfig("h", 1, None).parallelism == 10


def test_keyed_messages_pickle_between_workers():
    from wallaroo._keyed import Keyed
    k = pickle.loads(pickle.dumps(Keyed("a", [1, 2])))
    assert (k.key, k.value) == ("a", [1, 2])


# -- misuse: at build time, with a clear message -------------------------------

def test_a_pipeline_without_a_sink_is_refused():
    with pytest.raises(WallarooParameterError, match="has no sink.*to_sink"):
        wallaroo.build_application("app", src().to(upper))


def test_build_application_wants_a_pipeline_and_a_name():
    with pytest.raises(WallarooParameterError, match="name must be"):
        wallaroo.build_application("", src().to_sink(sink()))
    with pytest.raises(WallarooParameterError, match="wallaroo.source"):
        wallaroo.build_application("app", [upper])


def test_with_slide_or_with_delay_twice_is_refused():
    r = wallaroo.range_windows(wallaroo.seconds(6))
    with pytest.raises(WallarooParameterError, match="with_slide\\(\\) was already"):
        r.with_slide(wallaroo.seconds(3)).with_slide(wallaroo.seconds(2))
    with pytest.raises(WallarooParameterError, match="with_delay\\(\\) was already"):
        r.with_delay(1).with_delay(2)
    # the builder that was not changed still takes its one call
    assert r.with_slide(wallaroo.seconds(2)).slide == wallaroo.seconds(2)


def test_window_parameters_are_checked():
    with pytest.raises(WallarooParameterError, match="positive int"):
        wallaroo.count_windows(0)
    with pytest.raises(WallarooParameterError, match="positive int"):
        wallaroo.range_windows(-1)
    with pytest.raises(WallarooParameterError, match="must not exceed the range"):
        wallaroo.range_windows(wallaroo.seconds(1)).with_slide(wallaroo.seconds(2))
    with pytest.raises(WallarooParameterError, match="a duration"):
        wallaroo.seconds("3")


def test_a_non_aggregation_in_over_is_refused():
    class NotAnAggregation(object):
        def initial_accumulator(self):
            return 0
    with pytest.raises(WallarooParameterError,
                       match="extends wallaroo.Aggregation.*NotAnAggregation"):
        wallaroo.count_windows(2).over(NotAnAggregation)
    with pytest.raises(WallarooParameterError, match="extends wallaroo.Aggregation"):
        wallaroo.range_windows(5).over(len)


def test_an_aggregation_missing_a_method_is_refused():
    class NoCombine(wallaroo.Aggregation):
        def initial_accumulator(self):
            return 0

        def update(self, input, acc):
            return acc

        def output(self, key, acc):
            return acc
    with pytest.raises(WallarooParameterError,
                       match="NoCombine does not implement combine\\(\\)"):
        wallaroo.count_windows(2).over(NoCombine)

    class BadOutput(Sum):
        def output(self, acc):
            return acc
    with pytest.raises(WallarooParameterError, match="output must take self and 2"):
        wallaroo.count_windows(2).over(BadOutput)


def test_key_by_wants_a_key_extractor():
    with pytest.raises(WallarooParameterError, match="@wallaroo.key_extractor"):
        src().key_by(lambda x: x)


def test_steps_after_the_sink_are_refused():
    done = src().to_sink(sink())
    with pytest.raises(WallarooParameterError, match="already ends in its sinks"):
        done.to(upper)


def test_to_wants_a_decorated_step():
    with pytest.raises(WallarooParameterError, match="to\\(\\) takes"):
        wallaroo.build_application("app", src().to(str.upper).to_sink(sink()))


def test_a_state_computation_needs_its_state_class():
    @wallaroo.state_computation(name="no state")
    def no_state(data, state):
        return data
    with pytest.raises(WallarooParameterError, match="has no state class"):
        wallaroo.build_application("app", src().to(no_state).to_sink(sink()))


def test_two_steps_with_one_name_are_refused():
    @wallaroo.state_computation(name="count", state=Count)
    def other_count(data, state):
        return data
    with pytest.raises(WallarooParameterError, match="already named 'count'"):
        wallaroo.build_application(
            "app", src().to(count).to(other_count).to_sink(sink()))


def test_one_source_cannot_reach_the_sinks_twice():
    s = src()
    with pytest.raises(WallarooParameterError, match="by two paths"):
        wallaroo.build_application(
            "app", s.to(upper).merge(s.to(split)).to_sink(sink()))


def test_source_names_are_unique_and_configs_checked():
    with pytest.raises(WallarooParameterError, match="names must be unique"):
        wallaroo.build_application(
            "app", src("a").merge(src("a")).to_sink(sink()))
    with pytest.raises(WallarooParameterError, match="source config"):
        wallaroo.source("a", "127.0.0.1:7000")


def test_to_sinks_wants_a_list():
    with pytest.raises(WallarooParameterError, match="non-empty list"):
        src().to_sinks(sink())


def test_a_bad_key_costs_that_message_only():
    @wallaroo.key_extractor
    def bad_key(data):
        return [data]
    spec = wallaroo.build_application(
        "app", src().key_by(bad_key).to(count).to_sink(sink()))
    d = Driver(spec)
    d.start()
    d.feed(0, frames=frames(["a"]))
    batch = d.run_batch()
    assert batch.failures == 1 and lines(d) == []


def test_a_generator_source_needs_initial_value_and_apply():
    with pytest.raises(WallarooParameterError, match="needs initial_value\\(\\)"):
        wallaroo.GenSourceConfig(object())


def test_a_late_message_is_dropped_and_counted():
    """A worker whose clock is behind the windows it holds (a key moved from
    a host whose clock was ahead): the message's windows have all fired."""
    now = [10 * 10**9]
    pipeline = (src().key_by(first_letter)
                .to(wallaroo.range_windows(wallaroo.seconds(3)).over(Sum))
                .to_sink(sink()))
    spec = wallaroo.build_application("late", pipeline)
    tmp = tempfile.mkdtemp()
    d = Driver(spec, resilience_dir=tmp, event_clock=lambda: now[0])
    d.start()
    d.feed(0, frames=frames(["a1"]))
    d.run_batch()
    now[0] = 20 * 10**9
    d.tick()
    d.run_batch()
    d.stop()  # every partition checkpointed: nothing to replay
    assert lines(d) == ["'a'=1"]
    now[0] = 5 * 10**9  # behind: [3 s, 6 s) ended before [9 s, 12 s) fired
    d.start()
    d.feed(0, frames=frames(["a7", "b2"]))
    d.run_batch()
    now[0] = 30 * 10**9
    d.tick()
    d.run_batch()
    assert lines(d) == ["'a'=1", "'b'=2"]  # a7 was late: dropped
    assert d.core.timers.late_by_state == {"Sum windows": 1}
    assert d.state("Sum windows", "a").late == 1


def test_a_kafka_source_and_sink_build_in_a_06_pipeline():
    @wallaroo.encoder
    def to_kafka(data):
        return (data.encode(), None)
    src_cfg = wallaroo.KafkaSourceConfig("in-topic", [("127.0.0.1", "9092")],
                                         "Warn", source().decoder)
    sink_cfg = wallaroo.KafkaSinkConfig("out-topic", [("127.0.0.1", "9092")],
                                        "Warn", 0, 100000, to_kafka)
    spec = wallaroo.build_application(
        "kafka06", wallaroo.source("k", src_cfg).to(upper).to_sink(sink_cfg))
    assert spec.pipelines[0].source.address == "kafka:in-topic"
    assert spec.sinks[0].address == "kafka:out-topic"


def test_a_source_name_with_quotes_names_its_pipeline():
    spec = wallaroo.build_application(
        "quotes", wallaroo.source("it's \"here\"", source()).to(upper).to_sink(sink()))
    assert [p.name for p in spec.pipelines] == ["it's \"here\""]
