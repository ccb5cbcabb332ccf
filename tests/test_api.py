"""The Wallaroo Python API as the documents in docs/ describe it: every
ApplicationBuilder method, every decorator, the class-based forms, and what
the engine does with what the user's functions return.

Applications run in-process through ``wallaroo.testing.Driver`` (no
sockets): feed payloads, run a batch, read what each sink received.
"""

from __future__ import annotations

import inspect
import pickle
import string
import struct
import types

import pytest

import wallaroo
from wallaroo.testing import Driver, split_frames

from tests.apps.api_helpers import (frames, line_encoder, lines, one_step_app,
                                    run, sink, source, start, text_decoder)


# -- ApplicationBuilder -------------------------------------------------------

@wallaroo.computation("upper")
def upper(data):
    return data.upper()


@wallaroo.computation(name="exclaim")
def exclaim(data):
    return data + "!"


def test_the_documented_minimal_application():
    # python-api.md, "Application Setup", with the addresses from args.
    def application_setup(args):
        in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
        out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
        ab = wallaroo.ApplicationBuilder("My Application")
        ab.new_pipeline("pipeline 1",
                        wallaroo.TCPSourceConfig(in_host, in_port, text_decoder))
        ab.to(upper)
        ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, line_encoder))
        return ab.build()

    spec = application_setup(["app", "--in", "127.0.0.1:7000",
                              "--out", "127.0.0.1:7001"])
    assert spec.name == "My Application"
    (p,) = spec.pipelines
    assert p.name == "pipeline 1"
    assert (p.source.host, p.source.port) == ("127.0.0.1", "7000")
    assert [(s.host, s.port) for s in spec.sinks] == [("127.0.0.1", "7001")]
    assert [s.name for s in p.steps] == ["upper"]
    d, batch = run(spec, ["why", "hello"])
    assert lines(d) == ["WHY", "HELLO"]
    assert batch.failures == 0


def test_builder_methods_return_the_builder_for_chaining():
    ab = wallaroo.ApplicationBuilder("chain")
    assert ab.new_pipeline("p", source()) is ab
    assert ab.to(upper) is ab
    assert ab.to_parallel(exclaim) is ab
    assert ab.to_sink(sink()) is ab
    assert ab.new_pipeline("q", source()) is ab
    assert ab.to_stateful(count_step, Counter, "c") is ab
    assert ab.done() is ab
    ab.build()


def test_to_runs_steps_in_the_order_they_were_added():
    spec = one_step_app(lambda ab: ab.to(upper).to(exclaim))
    d, _ = run(spec, ["a", "b"])
    assert lines(d) == ["A!", "B!"]
    spec = one_step_app(lambda ab: ab.to(exclaim).to(upper))
    d, _ = run(spec, ["a"])
    assert lines(d) == ["A!"]


def test_to_parallel_is_a_stateless_step():
    spec = one_step_app(lambda ab: ab.to_parallel(upper))
    (step,) = spec.pipelines[0].steps
    assert step.kind == "computation" and step.parallel
    d, _ = run(spec, ["x", "y"])
    assert lines(d) == ["X", "Y"]


class Counter(object):
    def __init__(self):
        self.count = 0


@wallaroo.state_computation("count")
def count_step(data, state):
    state.count += 1
    return ("%s %d" % (data, state.count), True)


def test_to_stateful_keeps_one_state_object():
    spec = one_step_app(lambda ab: ab.to_stateful(count_step, Counter, "counter"))
    d, _ = run(spec, ["a", "b", "c"])
    assert lines(d) == ["a 1", "b 2", "c 3"]
    assert d.state("counter").count == 3
    assert [s.name for s in spec.states] == ["counter"]


def test_state_persists_across_batches():
    spec = one_step_app(lambda ab: ab.to_stateful(count_step, Counter, "counter"))
    d = start(spec)
    for word in ["a", "b", "c"]:
        d.feed("p", [word.encode()])
        d.run_batch()
    assert lines(d) == ["a 1", "b 2", "c 3"]


class Tally(object):
    def __init__(self):
        self.total = 0


@wallaroo.partition
def first_letter(data):
    return data[0]


@wallaroo.state_computation("tally")
def tally(data, state):
    state.total += 1
    return ("%s %d" % (data, state.total), True)


def test_to_state_partition_keeps_a_state_per_key():
    keys = list(string.ascii_lowercase)
    spec = one_step_app(lambda ab: ab.to_state_partition(
        tally, Tally, "by letter", first_letter, keys))
    d, _ = run(spec, ["apple", "avocado", "banana", "apricot", "blueberry"])
    assert lines(d) == ["apple 1", "avocado 2", "banana 1", "apricot 3",
                        "blueberry 2"]
    assert d.state("by letter", "a").total == 3
    assert d.state("by letter", "b").total == 2
    assert d.state("by letter", "c").total == 0


def test_declared_partition_keys_are_created_up_front():
    keys = ["x", "y", ("a", "tuple"), 7]
    spec = one_step_app(lambda ab: ab.to_state_partition(
        tally, Tally, "declared", first_letter, keys))
    d = start(spec)
    for k in keys:
        assert isinstance(d.state("declared", k), Tally)
    with pytest.raises(KeyError):
        d.state("declared", "z")


def test_unseen_keys_create_partitions_on_first_use():
    spec = one_step_app(lambda ab: ab.to_state_partition(
        tally, Tally, "dynamic", first_letter, ["a"]))
    d = start(spec)
    with pytest.raises(KeyError):
        d.state("dynamic", "q")
    d.feed("p", [b"quince", b"quail", b"apple"])
    d.run_batch()
    assert d.state("dynamic", "q").total == 2
    assert d.state("dynamic", "a").total == 1
    assert lines(d) == ["quince 1", "quail 2", "apple 1"]


@pytest.mark.parametrize("keys", [None, []], ids=["omitted", "empty"])
def test_partition_keys_are_optional(keys):
    if keys is None:
        add = lambda ab: ab.to_state_partition(tally, Tally, "s", first_letter)
    else:
        add = lambda ab: ab.to_state_partition(tally, Tally, "s", first_letter,
                                               keys)
    d, _ = run(one_step_app(add), ["kiwi", "kale"])
    assert lines(d) == ["kiwi 1", "kale 2"]


@wallaroo.decoder(header_length=4, length_fmt=">I")
def u64_decoder(bs):
    return struct.unpack(">Q", bs)[0]


@wallaroo.partition
def modulo_4(data):
    return data % 4


@wallaroo.state_computation("sum")
def add_up(data, state):
    state.total += data
    return (state.total, True)


def test_to_state_partition_u64_uses_int_keys():
    spec = one_step_app(lambda ab: ab.to_state_partition_u64(
        add_up, Tally, "sums", modulo_4, [0, 1, 2, 3]), decoder=u64_decoder)
    d = start(spec)
    d.feed("p", [struct.pack(">Q", n) for n in [1, 2, 5, 4, 9, 8]])
    d.run_batch()
    assert lines(d) == ["1", "2", "6", "4", "15", "12"]
    assert [d.state("sums", k).total for k in range(4)] == [12, 15, 2, 0]
    assert spec.state("sums").partitioning == "u64"


def test_to_state_partition_u64_creates_unseen_int_keys():
    @wallaroo.partition
    def identity(data):
        return data

    spec = one_step_app(lambda ab: ab.to_state_partition_u64(
        add_up, Tally, "sums", identity, [0]), decoder=u64_decoder)
    d = start(spec)
    big = 2 ** 64 - 1
    d.feed("p", [struct.pack(">Q", big), struct.pack(">Q", 3)])
    batch = d.run_batch()
    assert batch.failures == 0
    assert d.state("sums", big).total == big
    assert d.state("sums", 3).total == 3


def test_to_sink_sends_every_output_to_its_sink():
    spec = one_step_app(lambda ab: ab.to(upper))
    assert len(spec.sinks) == 1
    d, _ = run(spec, ["one", "two"])
    assert d.received(0) == b"ONE\nTWO\n"


def test_to_sinks_sends_every_output_to_each_sink():
    @wallaroo.encoder
    def bracket(data):
        return "[%s]" % data

    ab = wallaroo.ApplicationBuilder("two sinks")
    ab.new_pipeline("p", source())
    ab.to(upper)
    ab.to_sinks([sink(), sink(bracket), sink()])
    spec = ab.build()
    assert len(spec.sinks) == 3
    d, _ = run(spec, ["a", "b"])
    assert d.received(0) == b"A\nB\n"
    assert d.received(1) == b"[A][B]"
    assert d.received(2) == b"A\nB\n"


def test_done_closes_a_pipeline_without_a_sink():
    ab = wallaroo.ApplicationBuilder("state only")
    ab.new_pipeline("count only", source())
    ab.to_stateful(count_step, Counter, "counter")
    ab.done()
    ab.new_pipeline("echo", source())
    ab.to(upper)
    ab.to_sink(sink())
    spec = ab.build()
    assert spec.pipeline("count only").sinks == ()
    d = start(spec)
    d.feed("count only", [b"a", b"b"])
    d.feed("echo", [b"c"])
    d.run_batch()
    assert d.state("counter").count == 2
    assert d.received(0) == b"C\n"


def test_several_pipelines_each_with_their_own_sink():
    ab = wallaroo.ApplicationBuilder("two pipelines")
    ab.new_pipeline("shout", source())
    ab.to(upper)
    ab.to_sink(sink())
    ab.new_pipeline("cheer", source())
    ab.to(exclaim)
    ab.to_sink(sink())
    spec = ab.build()
    assert [p.name for p in spec.pipelines] == ["shout", "cheer"]
    d = start(spec)
    d.feed("cheer", [b"hi"])
    d.feed("shout", [b"hey"])
    d.feed("cheer", [b"yo"])
    d.run_batch()
    assert d.received(0) == b"HEY\n"
    assert d.received(1) == b"hi!\nyo!\n"


def test_one_state_shared_by_two_pipelines_with_the_same_name():
    ab = wallaroo.ApplicationBuilder("shared")
    ab.new_pipeline("left", source())
    ab.to_stateful(count_step, Counter, "shared counter")
    ab.to_sink(sink())
    ab.new_pipeline("right", source())
    ab.to_stateful(count_step, Counter, "shared counter")
    ab.to_sink(sink())
    spec = ab.build()
    assert [s.name for s in spec.states] == ["shared counter"]
    d = start(spec)
    d.feed("left", [b"l1", b"l2"])
    d.feed("right", [b"r1"])
    d.run_batch()
    d.feed("right", [b"r2"])
    d.feed("left", [b"l3"])
    d.run_batch()
    assert lines(d, 0) == ["l1 1", "l2 2", "l3 5"]
    assert lines(d, 1) == ["r1 3", "r2 4"]
    assert d.state("shared counter").count == 5


def test_shared_partitioned_state_across_pipelines():
    keys = ["a", "b"]
    ab = wallaroo.ApplicationBuilder("shared partitions")
    for name in ("one", "two"):
        ab.new_pipeline(name, source())
        ab.to_state_partition(tally, Tally, "letters", first_letter, keys)
        ab.to_sink(sink())
    d = start(ab.build())
    d.feed("one", [b"ant"])
    d.feed("two", [b"ape", b"bee"])
    d.run_batch()
    assert lines(d, 0) == ["ant 1"]
    assert lines(d, 1) == ["ape 2", "bee 1"]


def test_outputs_come_out_in_input_order():
    @wallaroo.computation_multi("twice")
    def twice(data):
        return [data + "-1", data + "-2"]

    spec = one_step_app(lambda ab: ab.to(twice).to(upper))
    d = start(spec)
    words = ["w%03d" % i for i in range(200)]
    d.feed("p", [w.encode() for w in words[:120]])
    d.run_batch()
    d.feed("p", [w.encode() for w in words[120:150]])
    d.feed("p", [w.encode() for w in words[150:]])
    d.run_batch()
    expected = [w.upper() + s for w in words for s in ("-1", "-2")]
    assert lines(d) == expected


def test_an_encoder_returning_str_is_sent_as_utf8():
    @wallaroo.encoder
    def fancy(data):
        return "«%s» ✓\n" % data

    d, _ = run(one_step_app(lambda ab: ab.to(upper), encoder=fancy),
               ["café", "naïve"])
    assert d.received(0) == "«CAFÉ» ✓\n«NAÏVE» ✓\n".encode("utf-8")


def test_an_encoder_may_return_bytes_or_bytearray():
    @wallaroo.encoder
    def as_bytes(data):
        return data.encode("ascii") if data == "b" else bytearray(b"ba")

    d, batch = run(one_step_app(lambda ab: ab.to(upper).to(
        wallaroo.computation("lower")(str.lower)), encoder=as_bytes), ["b", "x"])
    assert d.received(0) == b"bba"
    assert batch.failures == 0


# -- tcp_parse_input_addrs / tcp_parse_output_addrs --------------------------

@pytest.mark.parametrize("args", [
    ["app", "--in", "127.0.0.1:7000", "--out", "localhost:7001"],
    ["app", "-i", "127.0.0.1:7000", "-o", "localhost:7001"],
    ["app", "--in=127.0.0.1:7000", "--out=localhost:7001"],
    ["app", "--other", "x", "--out", "localhost:7001", "--flag",
     "--in", "127.0.0.1:7000", "trailing"],
])
def test_tcp_parse_addrs(args):
    assert wallaroo.tcp_parse_input_addrs(args) == [("127.0.0.1", "7000")]
    assert wallaroo.tcp_parse_output_addrs(args) == [("localhost", "7001")]


def test_tcp_parse_addrs_comma_lists_keep_their_order():
    args = ["--in", "a:1,b:2,c:3", "--out", "x:10,y:20"]
    assert wallaroo.tcp_parse_input_addrs(args) == [("a", "1"), ("b", "2"),
                                                    ("c", "3")]
    assert wallaroo.tcp_parse_output_addrs(args) == [("x", "10"), ("y", "20")]


def test_tcp_parse_addrs_ipv6_in_brackets():
    assert wallaroo.tcp_parse_input_addrs(["--in", "[::1]:7000"]) == [("::1", "7000")]


@pytest.mark.parametrize("parse, option", [
    (wallaroo.tcp_parse_input_addrs, "--in"),
    (wallaroo.tcp_parse_output_addrs, "--out"),
])
def test_tcp_parse_addrs_missing_option_is_a_clear_error(parse, option):
    with pytest.raises(wallaroo.WallarooParameterError, match=option):
        parse(["app", "--something", "else"])


def test_tcp_parse_addrs_rejects_an_address_without_port():
    with pytest.raises(wallaroo.WallarooParameterError, match="HOST:PORT"):
        wallaroo.tcp_parse_input_addrs(["--in", "localhost"])


# -- decorators ---------------------------------------------------------------

def test_computation_name_positional_keyword_and_bare():
    @wallaroo.computation("positional name")
    def a(data):
        return data

    @wallaroo.computation(name="keyword name")
    def b(data):
        return data

    @wallaroo.computation
    def bare_function(data):
        return data

    spec = one_step_app(lambda ab: ab.to(a).to(b).to(bare_function))
    assert [s.name for s in spec.pipelines[0].steps] == [
        "positional name", "keyword name", "bare_function"]
    assert a.name() == "positional name"


def test_decorated_functions_stay_callable_for_unit_tests():
    assert upper("abc") == "ABC"
    assert count_step("x", Counter()) == ("x 1", True)
    assert first_letter("hello") == "h"
    assert text_decoder(b"hi") == "hi"
    assert line_encoder(3) == "3\n"
    assert upper.__name__ == "upper" and upper.__doc__ is None


def test_computation_multi_sends_each_item_on_alone():
    @wallaroo.computation_multi("split")
    def split(data):
        return data.split()

    @wallaroo.computation_multi(name="identity and double")
    def identity_and_double(data):
        return [data, data * 2]

    spec = one_step_app(lambda ab: ab.to(split).to(identity_and_double))
    d, _ = run(spec, ["why hello", "world"])
    assert lines(d) == ["why", "whywhy", "hello", "hellohello", "world",
                        "worldworld"]


def test_computation_multi_bare_form():
    @wallaroo.computation_multi
    def explode(data):
        return list(data)

    spec = one_step_app(lambda ab: ab.to(explode))
    assert spec.pipelines[0].steps[0].name == "explode"
    d, _ = run(spec, ["abc"])
    assert lines(d) == ["a", "b", "c"]


def test_state_computation_name_forms():
    @wallaroo.state_computation("positional")
    def a(data, state):
        return (data, False)

    @wallaroo.state_computation(name="keyword")
    def b(data, state):
        return (data, False)

    @wallaroo.state_computation
    def bare_state_fn(data, state):
        return (data, False)

    def add(ab):
        ab.to_stateful(a, Counter, "s1").to_stateful(b, Counter, "s2")
        ab.to_stateful(bare_state_fn, Counter, "s3")

    spec = one_step_app(add)
    assert [s.name for s in spec.pipelines[0].steps] == [
        "positional", "keyword", "bare_state_fn"]


class Longest(object):
    def __init__(self):
        self.longest = 0


@wallaroo.state_computation_multi("longest sentence and split words")
def longest_and_split(data, state):
    words = data.split(" ")
    longer = len(words) > state.longest
    if longer:
        state.longest = len(words)
    return (words, longer)


def test_state_computation_multi():
    spec = one_step_app(lambda ab: ab.to_stateful(longest_and_split, Longest,
                                                  "longest"))
    d, _ = run(spec, ["a b", "c", "d e f"])
    assert lines(d) == ["a", "b", "c", "d", "e", "f"]
    assert d.state("longest").longest == 3


def test_state_computation_multi_none_outputs_send_nothing():
    @wallaroo.state_computation_multi("quiet")
    def quiet(data, state):
        state.count += 1
        return (None, True)

    spec = one_step_app(lambda ab: ab.to_stateful(quiet, Counter, "c"))
    d, batch = run(spec, ["a", "b"])
    assert d.received(0) == b""
    assert d.state("c").count == 2 and batch.failures == 0


class StockPrice(object):
    price = 0.0


@wallaroo.state_computation("update stock", state=StockPrice)
def update_stock(data, state):
    # partitioning.md's form: the function returns only its output.
    symbol, price = data.split()
    before = state.price
    state.price = float(price)
    return "%s %.1f->%.1f" % (symbol, before, state.price)


@wallaroo.key_extractor
def extract_symbol(data):
    return data.split()[0]


def test_state_computation_with_state_class_via_to():
    spec = one_step_app(lambda ab: ab.to(update_stock))
    (step,) = spec.pipelines[0].steps
    assert step.kind == "state" and step.state == "update stock"
    assert [s.name for s in spec.states] == ["update stock"]
    d, batch = run(spec, ["ACME 1.5", "ACME 2", "INIT 3"])
    assert lines(d) == ["ACME 0.0->1.5", "ACME 1.5->2.0", "INIT 2.0->3.0"]
    assert isinstance(d.state("update stock"), StockPrice)
    assert batch.failures == 0


def test_state_computation_with_state_class_via_to_stateful():
    spec = one_step_app(lambda ab: ab.to_stateful(update_stock, StockPrice,
                                                  "prices"))
    d, batch = run(spec, ["ACME 1.5", "INIT 3"])
    assert lines(d) == ["ACME 0.0->1.5", "INIT 1.5->3.0"]
    assert d.state("prices").price == 3.0 and batch.failures == 0


def test_state_computation_with_state_class_via_to_state_partition():
    spec = one_step_app(lambda ab: ab.to_state_partition(
        update_stock, StockPrice, "prices", extract_symbol, ["ACME"]))
    d, batch = run(spec, ["ACME 1.5", "INIT 3", "ACME 2"])
    assert lines(d) == ["ACME 0.0->1.5", "INIT 0.0->3.0", "ACME 1.5->2.0"]
    assert d.state("prices", "ACME").price == 2.0
    assert d.state("prices", "INIT").price == 3.0
    assert batch.failures == 0


def test_state_computation_multi_with_state_class_returns_only_outputs():
    @wallaroo.state_computation_multi("echo twice", state=Counter)
    def echo_twice(data, state):
        state.count += 1
        return [data, "%s#%d" % (data, state.count)]

    d, _ = run(one_step_app(lambda ab: ab.to(echo_twice)), ["a", "b"])
    assert lines(d) == ["a", "a#1", "b", "b#2"]


def test_a_step_with_state_class_shares_its_state_across_pipelines():
    ab = wallaroo.ApplicationBuilder("stocks")
    for name in ("feed 1", "feed 2"):
        ab.new_pipeline(name, source())
        ab.to(update_stock)
        ab.to_sink(sink())
    d = start(ab.build())
    d.feed("feed 1", [b"X 1"])
    d.feed("feed 2", [b"Y 2"])
    d.run_batch()
    assert lines(d, 1) == ["Y 1.0->2.0"]


def test_partition_and_key_extractor_decorators():
    assert isinstance(first_letter, type(extract_symbol))
    assert extract_symbol("ACME 1") == "ACME"
    assert first_letter.partition("xyz") == "x"  # the class-based protocol


@pytest.mark.parametrize("make", [
    lambda f: wallaroo.decoder(f),
    lambda f: wallaroo.decoder()(f),
    lambda f: wallaroo.decoder(4, ">I")(f),
    lambda f: wallaroo.decoder(header_length=4, length_fmt=">I")(f),
], ids=["bare", "empty call", "positional", "keyword"])
def test_decoder_forms_default_to_a_u32_header(make):
    def dec(bs):
        return bs.decode()
    spec = one_step_app(lambda ab: None, decoder=make(dec))
    assert spec.pipelines[0].source.decoder.header_length == 4
    d, _ = run(spec, ["x"])
    assert d.received(0) == b"x\n"


@pytest.mark.parametrize("header_length, fmt", [(2, ">H"), (1, "B"), (8, "<Q")])
def test_decoder_header_formats(header_length, fmt):
    @wallaroo.decoder(header_length=header_length, length_fmt=fmt)
    def dec(bs):
        return bs.decode()

    spec = one_step_app(lambda ab: ab.to(upper), decoder=dec)
    d = start(spec)
    d.feed("p", frames=frames(["ab", "", "c" * 200], fmt))
    d.run_batch()
    assert lines(d) == ["AB", "", "C" * 200]


def test_the_documented_struct_decoder():
    # python-api.md: "a character followed by a 32-bit unsigned int".
    @wallaroo.decoder(header_length=4, length_fmt=">I")
    def decoder(bs):
        return struct.unpack('>1sL', bs)

    @wallaroo.encoder
    def tcp_encoder(data):
        fmt = '>H{}'.format('L' * len(data))
        return struct.pack(fmt, len(data), *data)

    @wallaroo.computation("votes")
    def votes(data):
        return [data[1], data[1] * 2]

    spec = one_step_app(lambda ab: ab.to(votes), decoder=decoder,
                        encoder=tcp_encoder)
    d = start(spec)
    d.feed("p", [struct.pack(">1sL", b"a", 5)])
    d.run_batch()
    assert d.received(0) == struct.pack(">HLL", 2, 5, 10)


# -- class-based objects -------------------------------------------------------

class Reverse(object):
    def name(self):
        return "reverse"

    def compute(self, data):
        return data[::-1]


class SplitWords(object):
    def name(self):
        return "split words"

    def compute_multi(self, data):
        return [w or None for w in data.split(" ")]


@pytest.mark.parametrize("obj", [Reverse, Reverse()], ids=["class", "instance"])
def test_class_based_computation(obj):
    spec = one_step_app(lambda ab: ab.to(obj))
    assert spec.pipelines[0].steps[0].name == "reverse"
    d, _ = run(spec, ["hello", "abc"])
    assert lines(d) == ["olleh", "cba"]


@pytest.mark.parametrize("obj", [SplitWords, SplitWords()], ids=["class", "instance"])
def test_class_based_compute_multi(obj):
    d, _ = run(one_step_app(lambda ab: ab.to_parallel(obj)), ["a  b c", "d"])
    assert lines(d) == ["a", "b", "c", "d"]


class Votes(object):
    def __init__(self, letter, votes):
        self.letter = letter
        self.votes = votes


class AllVotes(object):
    def __init__(self):
        self.votes_by_letter = {}

    def update(self, votes):
        v = self.votes_by_letter.get(votes.letter, Votes(votes.letter, 0))
        v.votes += votes.votes
        self.votes_by_letter[votes.letter] = v

    def get_votes(self, letter):
        return Votes(letter, self.votes_by_letter[letter].votes)


class AddVotes(object):
    def name(self):
        return "add votes"

    def compute(self, data, state):
        state.update(data)
        return (state.get_votes(data.letter), True)


class LetterStateBuilder(object):
    def build(self):
        return AllVotes()


class VotesDecoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        (letter, vote_count) = struct.unpack(">sI", bs)
        return Votes(letter, vote_count)


class VotesEncoder(object):
    def encode(self, data):
        return struct.pack(">IsQ", 9, data.letter, data.votes)


def votes_frames(pairs):
    return b"".join(struct.pack(">IsI", 5, letter, n) for letter, n in pairs)


def decode_votes(data):
    return [struct.unpack(">sQ", f) for f in split_frames(data)]


@pytest.mark.parametrize("as_class", [False, True], ids=["instances", "classes"])
def test_class_based_stateful_application(as_class):
    # writing-stateful-application.md: decoder, computation, state builder
    # and encoder are all objects.
    def add(ab):
        ab.to_stateful(AddVotes if as_class else AddVotes(),
                       LetterStateBuilder(), "letter state")

    ab = wallaroo.ApplicationBuilder("alphabet")
    ab.new_pipeline("alphabet", source(VotesDecoder if as_class else VotesDecoder()))
    add(ab)
    ab.to_sink(sink(VotesEncoder if as_class else VotesEncoder()))
    spec = ab.build()
    assert spec.pipelines[0].steps[0].name == "add votes"
    d = start(spec)
    d.feed("alphabet", frames=votes_frames([(b"a", 1), (b"b", 5), (b"a", 2)]))
    batch = d.run_batch()
    assert batch.failures == 0
    assert decode_votes(d.received(0)) == [(b"a", 1), (b"b", 5), (b"a", 3)]
    state = d.state("letter state")
    assert isinstance(state, AllVotes)
    assert state.votes_by_letter[b"a"].votes == 3


class TotalVotes(object):
    def __init__(self):
        self.letter = "X"
        self.votes = 0

    def update(self, votes):
        self.letter = votes.letter
        self.votes += votes.votes

    def get_votes(self):
        return Votes(self.letter, self.votes)


class LetterPartition(object):
    def partition(self, data):
        return data.letter


class AddTotal(object):
    def name(self):
        return "add total"

    def compute(self, data, state):
        state.update(data)
        return (state.get_votes(), False)


class TotalVotesBuilder(object):
    def build(self):
        return TotalVotes()


@pytest.mark.parametrize("state", [TotalVotes, TotalVotesBuilder()],
                         ids=["plain state class", "builder instance"])
@pytest.mark.parametrize("partition", [LetterPartition, LetterPartition()],
                         ids=["partition class", "partition instance"])
def test_class_based_state_partition(state, partition):
    keys = [bytes([c]) for c in string.ascii_lowercase.encode()]
    ab = wallaroo.ApplicationBuilder("alphabet partitioned")
    ab.new_pipeline("alphabet", source(VotesDecoder()))
    ab.to_state_partition(AddTotal(), state, "letters", partition, keys)
    ab.to_sink(sink(VotesEncoder()))
    d = start(ab.build())
    for k in keys:
        assert isinstance(d.state("letters", k), TotalVotes)
    d.feed("alphabet", frames=votes_frames([(b"c", 4), (b"d", 1), (b"c", 6)]))
    d.run_batch()
    assert decode_votes(d.received(0)) == [(b"c", 4), (b"d", 1), (b"c", 10)]
    assert d.state("letters", b"c").votes == 10


def test_class_based_u64_partition():
    class Mod3(object):
        def partition(self, data):
            return data % 3

    class Add(object):
        def name(self):
            return "add"

        def compute(self, data, state):
            state.total += data
            return (state.total, True)

    spec = one_step_app(lambda ab: ab.to_state_partition_u64(
        Add(), Tally, "mod3", Mod3(), [0, 1, 2]), decoder=u64_decoder)
    d = start(spec)
    d.feed("p", [struct.pack(">Q", n) for n in range(7)])
    d.run_batch()
    assert lines(d) == ["0", "1", "2", "3", "5", "7", "9"]


def test_a_plain_state_class_gets_a_fresh_instance_per_partition():
    keys = ["a", "b"]
    spec = one_step_app(lambda ab: ab.to_state_partition(
        tally, Tally, "s", first_letter, keys))
    d = start(spec)
    assert d.state("s", "a") is not d.state("s", "b")


# -- what the user's functions return -----------------------------------------

def test_a_computation_returning_none_filters_the_message():
    @wallaroo.computation("evens only")
    def evens(data):
        return data if int(data) % 2 == 0 else None

    d, batch = run(one_step_app(lambda ab: ab.to(evens).to(exclaim)),
                   [str(i) for i in range(6)])
    assert lines(d) == ["0!", "2!", "4!"]
    assert batch.failures == 0


def test_compute_multi_drops_none_items():
    @wallaroo.computation_multi("sparse")
    def sparse(data):
        return [None, data, None, data + "2", None]

    d, batch = run(one_step_app(lambda ab: ab.to(sparse)), ["x"])
    assert lines(d) == ["x", "x2"]
    assert batch.failures == 0


def test_compute_multi_returning_none_or_empty_sends_nothing():
    @wallaroo.computation_multi("nothing")
    def nothing(data):
        return None if data == "none" else []

    d, batch = run(one_step_app(lambda ab: ab.to(nothing)), ["none", "empty"])
    assert d.received(0) == b""
    assert batch.failures == 0


def test_compute_multi_may_return_a_tuple_or_generator():
    @wallaroo.computation_multi("tuple")
    def as_tuple(data):
        return (data, data)

    @wallaroo.computation_multi("generator")
    def as_gen(data):
        return (c for c in data)

    d, _ = run(one_step_app(lambda ab: ab.to(as_tuple).to(as_gen)), ["ab"])
    assert lines(d) == ["a", "b", "a", "b"]


def test_state_computation_output_none_updates_state_but_sends_nothing():
    @wallaroo.state_computation("count silently")
    def count_silently(data, state):
        state.count += 1
        return (None if data == "quiet" else data, True)

    spec = one_step_app(lambda ab: ab.to_stateful(count_silently, Counter, "c"))
    d, _ = run(spec, ["a", "quiet", "b"])
    assert lines(d) == ["a", "b"]
    assert d.state("c").count == 3


@pytest.mark.parametrize("save", [True, False])
def test_save_state_flag_does_not_change_outputs_or_state(save):
    @wallaroo.state_computation("maybe save")
    def maybe_save(data, state):
        state.count += 1
        return (state.count, save)

    d, batch = run(one_step_app(lambda ab: ab.to_stateful(maybe_save, Counter,
                                                          "c")), ["a", "b"])
    assert lines(d) == ["1", "2"] and batch.failures == 0


def test_the_documented_compute_max_example():
    class Max(object):
        def __init__(self):
            self.max = 0

        def get_max(self):
            return self.max

        def update(self, n):
            self.max = max(self.max, n)

    @wallaroo.state_computation(name='Compute Max')
    def compute_max(data, state):
        before = state.get_max()
        state.update(data)
        out = state.get_max()
        return (out, True if out > before else False)

    @wallaroo.computation("to int")
    def to_int(data):
        return int(data)

    d, _ = run(one_step_app(lambda ab: ab.to(to_int).to_stateful(
        compute_max, Max, "max")), ["3", "1", "7", "5"])
    assert lines(d) == ["3", "3", "7", "7"]


# -- the public names -----------------------------------------------------------

def _public_names():
    if hasattr(wallaroo, "__all__"):
        names = list(wallaroo.__all__)
    else:
        names = [n for n in dir(wallaroo) if not n.startswith("_")]
    return [n for n in names
            if not isinstance(getattr(wallaroo, n), types.ModuleType)]


def test_public_names_are_the_documented_api():
    documented = {
        "ApplicationBuilder", "TCPSourceConfig", "TCPSinkConfig",
        "KafkaSourceConfig", "KafkaSinkConfig", "computation",
        "computation_multi", "state_computation", "state_computation_multi",
        "partition", "key_extractor", "decoder", "encoder",
        "tcp_parse_input_addrs", "tcp_parse_output_addrs",
        # Wallaroo 0.5's Kafka command-line helpers.
        "kafka_parse_source_options", "kafka_parse_sink_options",
        "CustomKafkaSourceCLIParser", "CustomKafkaSinkCLIParser",
        "DefaultKafkaSourceCLIParser", "DefaultKafkaSinkCLIParser",
        # Wallaroo 0.6's API: partial pipelines, generators, windows.
        "source", "build_application", "GenSourceConfig", "Aggregation",
        "count_windows", "range_windows", "nanoseconds", "microseconds",
        "milliseconds", "seconds", "minutes", "hours",
    }
    names = set(_public_names())
    assert documented <= names
    # Nothing else leaks out but the error class.
    assert names - documented <= {"WallarooParameterError"}


def test_each_public_name_is_exported_once_from_the_wallaroo_module():
    # In the style of trio's test_exports: a public object lives at exactly
    # one public name, and its __module__ / __qualname__ lead back to it,
    # which is what pickle (snapshots, inter-worker messages) relies on.
    names = _public_names()
    assert len(names) == len(set(names))
    seen = {}
    for name in names:
        obj = getattr(wallaroo, name)
        assert id(obj) not in seen, f"{name} is also exported as {seen[id(obj)]}"
        seen[id(obj)] = name
        assert inspect.isclass(obj) or inspect.isfunction(obj), name
        assert obj.__module__ == "wallaroo", (name, obj.__module__)
        assert obj.__qualname__ == name
        assert pickle.loads(pickle.dumps(obj)) is obj


def test_public_classes_pickle_by_reference():
    cfg = wallaroo.TCPSinkConfig("h", 1, None)
    back = pickle.loads(pickle.dumps(cfg))
    assert type(back) is wallaroo.TCPSinkConfig and back.port == "1"
    err = pickle.loads(pickle.dumps(wallaroo.WallarooParameterError("x")))
    assert type(err) is wallaroo.WallarooParameterError


def test_types_of_decorated_objects_resolve_where_their_module_says():
    for obj in (upper, count_step, first_letter, text_decoder, line_encoder):
        cls = type(obj)
        module = __import__(cls.__module__, fromlist=["_"])
        assert getattr(module, cls.__qualname__, None) is cls, cls


def test_the_wallaroo_package_does_not_import_the_runtime():
    # DESIGN.md §2: the API imports nothing from runtime/ (checked in a fresh
    # interpreter, since this test process has imported everything).
    import subprocess
    import sys
    code = ("import sys, wallaroo; "
            "print(sorted(m for m in sys.modules if m.startswith('wallaroo.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert "runtime" not in out and "recovery" not in out, out


def test_driver_accepts_a_built_spec():
    # The tests above build specs inline; the Driver runs them directly.
    spec = one_step_app(lambda ab: ab.to(upper))
    d = Driver(spec)
    d.start()
    d.feed("p", [b"ok"])
    d.run_batch()
    assert d.received(0) == b"OK\n"


def test_tcp_parse_addrs_ignore_other_options_that_start_with_i_or_o():
    args = ["app", "--in", "127.0.0.1:7000", "--out", "127.0.0.1:7001",
            "-iterations", "5", "-output-format", "csv"]
    assert wallaroo.tcp_parse_input_addrs(args) == [("127.0.0.1", "7000")]
    assert wallaroo.tcp_parse_output_addrs(args) == [("127.0.0.1", "7001")]


def test_kafka_configs_build_so_applications_that_mention_them_load():
    ab = wallaroo.ApplicationBuilder("kafka")
    ab.new_pipeline("from kafka", wallaroo.KafkaSourceConfig(
        "topic-in", [("127.0.0.1", "9092")], "Warn", text_decoder))
    ab.to(upper)
    ab.to_sink(wallaroo.KafkaSinkConfig("topic-out", [("127.0.0.1", "9092")],
                                        "Warn", 0, 100000, line_encoder))
    spec = ab.build()
    assert spec.pipelines[0].source.kind == "kafka"
    assert spec.sinks[0].kind == "kafka"


@pytest.mark.parametrize("name", ["", None, 7])
def test_application_name_must_be_a_non_empty_string(name):
    ab = wallaroo.ApplicationBuilder(name)
    ab.new_pipeline("p", source())
    ab.to_sink(sink())
    with pytest.raises(wallaroo.WallarooParameterError, match="ApplicationBuilder"):
        ab.build()
