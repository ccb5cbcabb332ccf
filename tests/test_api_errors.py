"""Mistakes in describing an application, and bad input at run time.

Description errors: ``build()`` raises ``WallarooParameterError`` naming the
pipeline and step at fault; decorators fail at decoration time naming the
function.  Bad input (DESIGN.md contract 6): a user function that raises on
one message costs that message only; the Driver's ``batch.failures`` counts
it and the log names the step.
"""

from __future__ import annotations

import logging
import re

import pytest

import wallaroo
from wallaroo import WallarooParameterError

from tests.apps.api_helpers import (frames, lines, one_step_app, run, sink,
                                    source, start)


@wallaroo.computation("upper")
def upper(data):
    return data.upper()


class Counter(object):
    def __init__(self):
        self.count = 0


class OtherCounter(object):
    def __init__(self):
        self.count = 0


@wallaroo.state_computation("count")
def count_step(data, state):
    state.count += 1
    return (state.count, True)


@wallaroo.partition
def first_letter(data):
    return data[0]


def build_error(ab) -> str:
    with pytest.raises(WallarooParameterError) as info:
        ab.build()
    return str(info.value)


def test_the_error_is_a_value_error_and_names_the_application():
    ab = wallaroo.ApplicationBuilder("my app")
    assert issubclass(WallarooParameterError, ValueError)
    assert "'my app'" in build_error(ab)


# -- build(): structure ----------------------------------------------------------

def test_no_pipeline():
    assert "no pipeline" in build_error(wallaroo.ApplicationBuilder("empty"))


def test_step_before_new_pipeline():
    ab = wallaroo.ApplicationBuilder("app")
    ab.to(upper)
    ab.new_pipeline("p", source())
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "to()" in msg and "before new_pipeline()" in msg


@pytest.mark.parametrize("call", [
    lambda ab: ab.to_stateful(count_step, Counter, "c"),
    lambda ab: ab.to_sink(sink()),
    lambda ab: ab.done(),
], ids=["to_stateful", "to_sink", "done"])
def test_other_calls_before_new_pipeline(call):
    ab = wallaroo.ApplicationBuilder("app")
    call(ab)
    assert "before new_pipeline()" in build_error(ab)


def test_pipeline_without_sink_names_the_pipeline():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("no sink here", source())
    ab.to(upper)
    msg = build_error(ab)
    assert "'no sink here'" in msg and "no sink" in msg and "to_sink" in msg


def test_done_pipeline_without_state_keeps_nothing():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("pointless", source())
    ab.to(upper)
    ab.done()
    msg = build_error(ab)
    assert "'pointless'" in msg and "no sink and no state step" in msg


def test_new_pipeline_while_the_previous_is_unclosed():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("first", source())
    ab.to(upper)
    ab.new_pipeline("second", source())
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "'first' is not closed" in msg and "new_pipeline('second')" in msg


@pytest.mark.parametrize("closer", ["to_sink", "done"])
def test_step_after_the_pipeline_is_closed(closer):
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("closed", source())
    ab.to_stateful(count_step, Counter, "c")
    if closer == "to_sink":
        ab.to_sink(sink())
    else:
        ab.done()
    ab.to(upper)
    msg = build_error(ab)
    assert "'closed'" in msg and "to() after" in msg and closer in msg


def test_two_sinks_calls_on_one_pipeline():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_sink(sink())
    ab.to_sink(sink())
    assert "already closed" in build_error(ab)


def test_to_sinks_needs_a_non_empty_list():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_sinks(sink())
    assert "list of sink configs" in build_error(ab)
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_sinks([])
    assert "no sinks" in build_error(ab)


def test_duplicate_pipeline_names():
    ab = wallaroo.ApplicationBuilder("app")
    for _ in range(2):
        ab.new_pipeline("same", source())
        ab.to_sink(sink())
    msg = build_error(ab)
    assert "'same'" in msg and "already has this name" in msg


def test_a_bad_source_config_names_the_pipeline():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", ("127.0.0.1", 7000))
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "pipeline 'p'" in msg and "TCPSourceConfig" in msg


def test_a_bad_sink_config_names_the_pipeline():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_sinks([sink(), "127.0.0.1:7001"])
    msg = build_error(ab)
    assert "pipeline 'p'" in msg and "TCPSinkConfig" in msg
    assert "'127.0.0.1:7001'" in msg


def test_all_errors_are_reported_together():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("one", source())
    ab.to(len)
    ab.to_sink(sink())
    ab.new_pipeline("two", source())
    ab.to(upper)
    msg = build_error(ab)
    assert "pipeline 'one'" in msg and "pipeline 'two'" in msg


# -- build(): the user's objects ------------------------------------------------

def plain_function(data):
    return data


def test_an_undecorated_function_names_pipeline_step_and_function():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to(upper)
    ab.to(plain_function)
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "pipeline 'p', step 2 to()" in msg
    assert "plain_function" in msg and "@wallaroo.computation" in msg


def test_a_state_computation_given_to_to_stateful_must_be_one():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_stateful(upper, Counter, "c")
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "step 1 to_stateful()" in msg and "'upper'" in msg
    assert "stateless" in msg


def test_a_state_computation_given_to_to_is_refused():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to(count_step)
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "step 1 to()" in msg and "'count'" in msg and "to_stateful" in msg


class NotAComputation(object):
    def name(self):
        return "nothing"


class WrongArity(object):
    def name(self):
        return "wrong arity"

    def compute(self, a, b, c):
        return a


class NeedsArguments(object):
    def __init__(self, x):
        self.x = x

    def compute(self, data):
        return data


@pytest.mark.parametrize("obj, words", [
    (NotAComputation(), ["not a computation", "compute(data)"]),
    (WrongArity(), ["wrong arity.compute", "exactly 1"]),
    (NeedsArguments, ["NeedsArguments()", "without arguments"]),
    (42, ["not a computation"]),
], ids=["no compute", "arity", "constructor", "int"])
def test_bad_class_based_computations(obj, words):
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to(obj)
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "pipeline 'p', step 1 to()" in msg
    for w in words:
        assert w in msg


class StateComputeOneArg(object):
    def name(self):
        return "one arg"

    def compute(self, data):
        return (data, True)


def test_class_based_state_computation_needs_two_arguments():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_stateful(StateComputeOneArg(), Counter, "c")
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "step 1 to_stateful()" in msg and "one arg.compute" in msg
    assert "exactly 2" in msg


class NeedsInit(object):
    def __init__(self, initial):
        self.initial = initial


@pytest.mark.parametrize("state, words", [
    (NeedsInit, ["NeedsInit", "without arguments"]),
    (object(), ["not a state", "build()"]),
], ids=["state class with arguments", "not a state"])
def test_bad_state_objects(state, words):
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_stateful(count_step, state, "c")
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "step 1 to_stateful()" in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("name", ["", None, 3])
def test_state_name_must_be_a_non_empty_string(name):
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_stateful(count_step, Counter, name)
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "step 1 to_stateful()" in msg and "state name" in msg


@pytest.mark.parametrize("part", [42, object(), None])
def test_partition_function_must_be_one(part):
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_state_partition(count_step, Counter, "c", part, ["a"])
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "step 1 to_state_partition()" in msg
    assert "not a partition function" in msg


def test_a_string_is_not_a_partition_function():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_state_partition(count_step, Counter, "c", "first letter", ["a"])
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "step 1 to_state_partition()" in msg
    assert "not a partition function" in msg


def _single(ab):
    ab.to_stateful(count_step, Counter, "shared")


def _keyed_a(ab):
    ab.to_state_partition(count_step, Counter, "shared", first_letter, ["a"])


def _keyed_ab(ab):
    ab.to_state_partition(count_step, Counter, "shared", first_letter,
                          ["a", "b"])


def _u64(ab):
    ab.to_state_partition_u64(count_step, Counter, "shared", first_letter, [1])


@pytest.mark.parametrize("first, second", [
    (_single, _keyed_a), (_keyed_a, _keyed_ab), (_keyed_a, _u64),
], ids=["single vs keyed", "different keys", "keyed vs u64"])
def test_state_name_reused_with_another_partitioning(first, second):
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("first", source())
    first(ab)
    ab.to_sink(sink())
    ab.new_pipeline("second", source())
    second(ab)
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "pipeline 'second', step 1" in msg
    assert "'shared'" in msg and "partitioned differently" in msg
    assert "pipeline 'first'" in msg


@pytest.mark.parametrize("keys, words", [
    (["a", ["not", "hashable"]], ["['not', 'hashable']", "not hashable"]),
    (["a", {"b": 1}], ["not hashable"]),
    (["a", "b", "a"], ["'a'", "more than once"]),
    ("abc", ["must be a list"]),
    (5, ["must be a list"]),
], ids=["list key", "dict key", "duplicate", "string", "int"])
def test_bad_partition_keys(keys, words):
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_state_partition(count_step, Counter, "c", first_letter, keys)
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "pipeline 'p', step 1 to_state_partition()" in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("key", [-1, 2 ** 64, "1", 1.0, True, None])
def test_u64_keys_must_be_non_negative_ints(key):
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to_state_partition_u64(count_step, Counter, "c", first_letter, [0, key])
    ab.to_sink(sink())
    msg = build_error(ab)
    assert "pipeline 'p', step 1 to_state_partition_u64()" in msg
    assert repr(key) in msg and "0..2**64-1" in msg


def test_u64_keys_accept_the_whole_range():
    spec = one_step_app(lambda ab: ab.to_state_partition_u64(
        count_step, Counter, "c", first_letter, [0, 1, 2 ** 64 - 1]))
    assert spec.state("c").keys == (0, 1, 2 ** 64 - 1)


class ZeroHeader(object):
    def header_length(self):
        return 0

    def payload_length(self, bs):
        return 0

    def decode(self, bs):
        return bs


class NoDecode(object):
    def header_length(self):
        return 4


def test_bad_class_based_decoders_name_the_pipeline():
    for dec, words in [(ZeroHeader(), ["header_length()", "positive int", "0"]),
                       (NoDecode(), ["missing payload_length, decode"])]:
        ab = wallaroo.ApplicationBuilder("app")
        ab.new_pipeline("in", source(dec))
        ab.to_sink(sink())
        msg = build_error(ab)
        assert "pipeline 'in' source" in msg
        for w in words:
            assert w in msg


def test_bad_encoder_names_the_pipeline_and_sink():
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("out", source())
    ab.to_sink(sink(object()))
    msg = build_error(ab)
    assert "pipeline 'out' sink 0" in msg and "not an encoder" in msg


# -- decoration-time errors ---------------------------------------------------

def two_args(a, b):
    return a


def one_arg(a):
    return a


@pytest.mark.parametrize("decorate, fn, words", [
    (wallaroo.computation("c"), two_args, ["two_args", "exactly 1"]),
    (wallaroo.computation_multi("c"), two_args, ["two_args", "exactly 1"]),
    (wallaroo.state_computation("s"), one_arg, ["one_arg", "exactly 2"]),
    (wallaroo.state_computation_multi("s"), one_arg, ["one_arg", "exactly 2"]),
    (wallaroo.partition, two_args, ["two_args", "@wallaroo.partition"]),
    (wallaroo.key_extractor, two_args, ["two_args", "@wallaroo.key_extractor"]),
    (wallaroo.encoder, two_args, ["two_args", "@wallaroo.encoder"]),
    (wallaroo.decoder(), two_args, ["two_args", "@wallaroo.decoder"]),
    (wallaroo.computation("c"), 42, ["must decorate a function", "42"]),
    (wallaroo.encoder, "text", ["must decorate a function", "'text'"]),
], ids=["computation", "computation_multi", "state_computation",
        "state_computation_multi", "partition", "key_extractor", "encoder",
        "decoder", "non-callable", "non-callable encoder"])
def test_decorators_check_the_function_when_applied(decorate, fn, words):
    with pytest.raises(WallarooParameterError) as info:
        decorate(fn)
    for w in words:
        assert w in str(info.value)


def test_decorator_errors_name_the_step_being_defined():
    with pytest.raises(WallarooParameterError, match="'my step'"):
        wallaroo.computation("my step")(two_args)


@pytest.mark.parametrize("name", ["", 3, None])
def test_decorator_names_must_be_non_empty_strings(name):
    with pytest.raises(WallarooParameterError, match="non-empty string"):
        wallaroo.computation(name)


def test_defaults_and_varargs_are_accepted():
    @wallaroo.computation("defaults")
    def with_default(data, extra=1):
        return data

    @wallaroo.state_computation("varargs")
    def with_varargs(*args):
        return (args[0], False)

    assert with_default("x") == "x"


@pytest.mark.parametrize("kwargs, words", [
    (dict(header_length=0), ["header_length", "positive int"]),
    (dict(header_length="4"), ["header_length", "positive int"]),
    (dict(header_length=True), ["header_length", "positive int"]),
    (dict(header_length=4, length_fmt=">H"), ["'>H'", "2 bytes", "4"]),
    (dict(header_length=2, length_fmt="zz"), ["'zz'", "not a struct format"]),
    (dict(header_length=4, length_fmt=">HH"), ["'>HH'", "one integer"]),
    (dict(header_length=4, length_fmt=">f"), ["'>f'", "one integer"]),
    (dict(header_length=4, length_fmt=None), ["None", "struct format"]),
], ids=["zero", "str", "bool", "size mismatch", "bad format", "two ints",
        "float", "no format"])
def test_bad_decoder_header_arguments(kwargs, words):
    with pytest.raises(WallarooParameterError) as info:
        wallaroo.decoder(**kwargs)
    msg = str(info.value)
    assert "@wallaroo.decoder" in msg
    for w in words:
        assert w in msg


# -- bad input costs one message (DESIGN.md contract 6) -------------------------

def boom_on(bad):
    def check(x):
        if x == bad:
            raise RuntimeError("boom on %r" % (x,))
    return check


def assert_one_failure(caplog, batch, step_words, out, expected):
    assert out == expected
    assert batch.failures == 1
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "wallaroo" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    for w in step_words:
        assert w in warnings[0], warnings[0]


MESSAGES = ["a1", "bad", "b2", "a3"]


@pytest.mark.parametrize("first_step, expected", [
    (lambda ab: ab.to(upper), ["A1", "B2", "A3"]),
    # a state step first: the fused source loop decodes too
    (lambda ab: ab.to_stateful(tally, Tally, "t"), ["a1 1", "b2 2", "a3 3"]),
], ids=["computation", "state step"])
def test_a_raising_decoder_costs_one_message(caplog, first_step, expected):
    @wallaroo.decoder(header_length=4, length_fmt=">I")
    def strict_decoder(bs):
        text = bs.decode("utf-8")
        boom_on("bad")(text)
        return text

    d, batch = run(one_step_app(first_step, decoder=strict_decoder), MESSAGES)
    assert_one_failure(caplog, batch, ["decoder", "strict_decoder", "boom",
                                       "message 1"], lines(d), expected)


def test_an_undecodable_payload_costs_one_message(caplog):
    d = start(one_step_app(lambda ab: ab.to(upper)))
    d.feed("p", [b"ok", b"\xff\xfe", b"fine"])
    batch = d.run_batch()
    assert_one_failure(caplog, batch, ["UnicodeDecodeError", "message 1"],
                       lines(d), ["OK", "FINE"])


def test_a_raising_computation_costs_one_message(caplog):
    @wallaroo.computation("fragile")
    def fragile(data):
        boom_on("bad")(data)
        return data.upper()

    d, batch = run(one_step_app(lambda ab: ab.to(fragile)), MESSAGES)
    assert_one_failure(caplog, batch, ["fragile", "RuntimeError"],
                       lines(d), ["A1", "B2", "A3"])


def test_a_raising_compute_multi_costs_one_message(caplog):
    class Fragile(object):
        def name(self):
            return "fragile multi"

        def compute_multi(self, data):
            boom_on("bad")(data)
            return [data, data]

    d, batch = run(one_step_app(lambda ab: ab.to(Fragile())), MESSAGES)
    assert_one_failure(caplog, batch, ["fragile multi"], lines(d),
                       ["a1", "a1", "b2", "b2", "a3", "a3"])


def test_compute_multi_returning_a_non_list_costs_one_message(caplog):
    @wallaroo.computation_multi("sloppy")
    def sloppy(data):
        return "oops" if data == "bad" else [data]

    d, batch = run(one_step_app(lambda ab: ab.to(sloppy)), MESSAGES)
    assert_one_failure(caplog, batch, ["sloppy", "list"], lines(d),
                       ["a1", "b2", "a3"])


class Tally(object):
    def __init__(self):
        self.total = 0


@wallaroo.state_computation("tally")
def tally(data, state):
    state.total += 1
    return ("%s %d" % (data, state.total), True)


@wallaroo.computation("same")
def same(data):
    return data


@pytest.fixture(params=["first", "after a computation"])
def placed(request):
    """A state step that comes first runs inside the source loop
    (dataflow's fused slices); after another step it runs in push(): each
    failure must cost the same one message either way.
    ``placed(add_step)`` -> the add_step for one_step_app."""
    def place(add_step):
        def add(ab):
            if request.param != "first":
                ab.to(same)
            add_step(ab)
        return add
    return place


def test_a_raising_partition_function_costs_one_message(caplog, placed):
    @wallaroo.partition
    def picky(data):
        boom_on("bad")(data)
        return data[0]

    spec = one_step_app(placed(lambda ab: ab.to_state_partition(
        tally, Tally, "letters", picky, ["a", "b"])))
    d, batch = run(spec, MESSAGES)
    assert_one_failure(caplog, batch, ["partition function", "picky"],
                       lines(d), ["a1 1", "b2 1", "a3 2"])
    assert d.state("letters", "a").total == 2


def test_an_unhashable_key_at_run_time_costs_one_message(caplog, placed):
    @wallaroo.partition
    def listy(data):
        return [data] if data == "bad" else data[0]

    spec = one_step_app(placed(lambda ab: ab.to_state_partition(
        tally, Tally, "letters", listy, ["a", "b"])))
    d, batch = run(spec, MESSAGES)
    assert_one_failure(caplog, batch, ["unhashable", "['bad']"], lines(d),
                       ["a1 1", "b2 1", "a3 2"])


def test_a_bad_u64_key_at_run_time_costs_one_message(caplog, placed):
    @wallaroo.partition
    def number(data):
        return -1 if data == "bad" else ord(data[0])

    spec = one_step_app(placed(lambda ab: ab.to_state_partition_u64(
        tally, Tally, "codes", number, [])))
    d, batch = run(spec, MESSAGES)
    assert_one_failure(caplog, batch, ["-1", "2**64"], lines(d),
                       ["a1 1", "b2 1", "a3 2"])
    with pytest.raises(KeyError):
        d.state("codes", -1)


def test_a_raising_state_computation_costs_one_message(caplog, placed):
    @wallaroo.state_computation("fragile tally")
    def fragile_tally(data, state):
        boom_on("bad")(data)
        state.total += 1
        return (state.total, True)

    spec = one_step_app(placed(lambda ab: ab.to_stateful(fragile_tally, Tally, "t")))
    d, batch = run(spec, MESSAGES)
    assert_one_failure(caplog, batch, ["fragile tally", "boom"], lines(d),
                       ["1", "2", "3"])
    assert d.state("t").total == 3


def test_a_state_computation_not_returning_a_pair_costs_one_message(caplog, placed):
    @wallaroo.state_computation("forgetful")
    def forgetful(data, state):
        state.total += 1
        return "no tuple" if data == "bad" else (data, True)

    spec = one_step_app(placed(lambda ab: ab.to_stateful(forgetful, Tally, "t")))
    d, batch = run(spec, MESSAGES)
    assert_one_failure(caplog, batch, ["forgetful", "(output, save_state)"],
                       lines(d), ["a1", "b2", "a3"])


def test_a_failing_state_constructor_costs_one_message(caplog, placed):
    class Fussy(object):
        def __init__(self):
            self.total = 0
            if _fussy_fail[0]:
                raise RuntimeError("cannot build")

    _fussy_fail = [False]
    spec = one_step_app(placed(lambda ab: ab.to_state_partition(
        tally, Fussy, "fussy", first_letter, ["a"])))
    d = start(spec)
    _fussy_fail[0] = True
    d.feed("p", [b"a1", b"z9", b"a2"])
    batch = d.run_batch()
    assert_one_failure(caplog, batch, ["constructor", "cannot build"],
                       lines(d), ["a1 1", "a2 2"])


def test_a_raising_encoder_costs_one_message_on_that_sink_only(caplog):
    @wallaroo.encoder
    def fragile_encoder(data):
        boom_on("BAD")(data)
        return data + "\n"

    @wallaroo.encoder
    def safe_encoder(data):
        return data + ";"

    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("p", source())
    ab.to(upper)
    ab.to_sinks([sink(fragile_encoder), sink(safe_encoder)])
    d, batch = run(ab.build(), MESSAGES)
    assert_one_failure(caplog, batch, ["encoder", "fragile_encoder", "sink 0"],
                       lines(d, 0), ["A1", "B2", "A3"])
    assert d.received(1) == b"A1;BAD;B2;A3;"


def test_an_encoder_returning_a_non_bytes_value_costs_one_message(caplog):
    @wallaroo.encoder
    def numeric(data):
        return 7 if data == "BAD" else data + "\n"

    d, batch = run(one_step_app(lambda ab: ab.to(upper), encoder=numeric),
                   MESSAGES)
    assert_one_failure(caplog, batch, ["numeric", "not bytes"], lines(d),
                       ["A1", "B2", "A3"])


def test_many_failures_are_each_counted(caplog):
    @wallaroo.computation("odd only")
    def odd_only(data):
        n = int(data)
        if n % 2 == 0:
            raise ValueError("even")
        return n

    d = start(one_step_app(lambda ab: ab.to(odd_only)))
    d.feed("p", [str(i).encode() for i in range(100)])
    batch = d.run_batch()
    assert batch.failures == 50
    assert lines(d) == [str(i) for i in range(1, 100, 2)]
    d.feed("p", [b"x", b"101"])
    batch = d.run_batch()
    assert batch.failures == 1 and lines(d)[-1] == "101"
    assert d.core.stats.failures == 51


def test_failure_log_names_the_message_position(caplog):
    d = start(one_step_app(lambda ab: ab.to(upper)))
    d.feed("p", [b"ok", b"ok", b"\xff"])
    d.run_batch()
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "wallaroo"]
    assert re.search(r"message 2\b", msg), msg
    assert "skipped" in msg


class _Unpicklable(object):
    """A hashable key that pickle refuses (like a lock or a socket)."""

    def __init__(self, name):
        self.name = name

    def __hash__(self):
        return hash(self.name)

    def __eq__(self, other):
        return isinstance(other, _Unpicklable) and other.name == self.name

    def __reduce__(self):
        raise TypeError("cannot pickle %r" % self.name)


def test_an_unpicklable_partition_key_costs_one_message_with_resilience(
        tmp_path, caplog):
    from wallaroo.testing import Driver

    @wallaroo.partition
    def odd_key(data):
        return _Unpicklable(data) if data == "bad" else data[0]

    spec = one_step_app(lambda ab: ab.to_state_partition(
        tally, Tally, "letters", odd_key, ["a", "b"]))
    d = Driver(spec, resilience_dir=str(tmp_path))
    d.start()
    d.feed("p", frames=frames(MESSAGES))
    batch = d.run_batch()
    assert batch.failures == 1
    assert lines(d) == ["a1 1", "b2 1", "a3 2"]


# -- what `wallaroo run` says about such mistakes -------------------------------

def _run_cli(*args):
    import os
    import subprocess
    import sys
    app = os.path.join(os.path.dirname(__file__), "apps", "api_bad_app.py")
    return subprocess.run([sys.executable, "-m", "wallaroo.cli", "run", app,
                           *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def test_wallaroo_run_refuses_an_invalid_application_naming_the_pipeline():
    done = _run_cli("--in", "127.0.0.1:0")
    assert done.returncode == 2, done.stderr
    assert "pipeline 'forgetful pipeline' has no sink" in done.stderr
    assert "ready" not in done.stderr


def test_wallaroo_run_reports_a_missing_address_option():
    done = _run_cli("--out", "127.0.0.1:0")
    assert done.returncode == 2, done.stderr
    assert "--in" in done.stderr and "HOST:PORT" in done.stderr


@pytest.mark.parametrize("bad_output, words", [
    (lambda data: 1 / 0, ["division by zero"]),
    (lambda data: 7, ["not bytes"]),
])
def test_an_encoder_after_a_state_step_fails_one_message(caplog, placed, bad_output, words):
    """A state step followed by one plain sink runs the sink's body inlined
    (dataflow.py): its failures are still the encoder's, one message each,
    and a str output is still sent as UTF-8."""
    @wallaroo.encoder
    def picky(data):
        if data.startswith("bad"):
            return bad_output(data)
        return data + "\n" if data.startswith("a") else (data + "\n").encode()

    d, batch = run(one_step_app(placed(lambda ab: ab.to_stateful(tally, Tally, "t")),
                                encoder=picky), MESSAGES)
    assert_one_failure(caplog, batch, ["picky", *words], lines(d),
                       ["a1 1", "b2 3", "a3 4"])
    assert d.state("t").total == 4
