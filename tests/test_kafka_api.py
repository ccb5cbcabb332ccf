"""The Kafka part of the Wallaroo Python API, as Wallaroo 0.5 shipped it:
``kafka_parse_source_options`` / ``kafka_parse_sink_options``, the Custom*
and Default* CLI parsers, and what the builder makes of every Kafka form.

All in-process: no broker is involved.  Whatever form an application uses,
a Kafka source or sink reaches the runtime as ``kind == "kafka"`` with
``spec.config`` a checked ``KafkaSourceConfig`` / ``KafkaSinkConfig``.
"""

from __future__ import annotations

import pickle
import sys
import textwrap
import uuid

import pytest

import wallaroo
from wallaroo import WallarooParameterError
from wallaroo._kafka_cli import application_args, current_args
from wallaroo.runtime.loader import load_application

from tests.apps.api_helpers import line_encoder, sink, source, text_decoder


@wallaroo.computation("upper")
def upper(data):
    return data.upper()


@wallaroo.encoder
def kafka_encoder(data):
    return (data, data[:1])


SOURCE_ARGS = ["--kafka_source_topic", "in-topic",
               "--kafka_source_brokers", "127.0.0.1:9093,kafka2"]
SINK_ARGS = ["--kafka_sink_topic", "out-topic",
             "--kafka_sink_brokers", "127.0.0.1"]


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(WallarooParameterError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.fixture
def argv(monkeypatch):
    """Set ``sys.argv`` (the fallback of the Default parsers)."""
    def set_argv(*args):
        monkeypatch.setattr(sys, "argv", ["app.py", *args])
    set_argv()
    return set_argv


# -- kafka_parse_source_options -------------------------------------------------

def test_source_options_give_topic_broker_pairs_and_the_default_log_level():
    assert wallaroo.kafka_parse_source_options(SOURCE_ARGS) == (
        "in-topic", [("127.0.0.1", "9093"), ("kafka2", "9092")], "Warn")


def test_source_options_in_the_equals_form():
    args = ["--kafka_source_topic=in-topic",
            "--kafka_source_brokers=h1:1,h2:2",
            "--kafka_source_log_level=Info"]
    assert wallaroo.kafka_parse_source_options(args) == (
        "in-topic", [("h1", "1"), ("h2", "2")], "Info")


@pytest.mark.parametrize("level", ["Fine", "Info", "Warn", "Error"])
def test_source_options_take_each_log_level(level):
    args = SOURCE_ARGS + ["--kafka_source_log_level", level]
    assert wallaroo.kafka_parse_source_options(args)[2] == level


def test_log_level_case_is_normalized():
    args = SOURCE_ARGS + ["--kafka_source_log_level", "error"]
    assert wallaroo.kafka_parse_source_options(args)[2] == "Error"


def test_source_options_ignore_unrelated_arguments():
    args = (["app.py", "--in", "127.0.0.1:7000", "-o", "127.0.0.1:7001",
             "--topic", "mine", "--kafka_source_topics", "x", "positional",
             "--kafka_sink_topic", "out", "--kafka_sink_brokers", "sinkhost",
             "--kafka_source_log_levelx", "bogus"]
            + SOURCE_ARGS + ["--verbose"])
    assert wallaroo.kafka_parse_source_options(args) == (
        "in-topic", [("127.0.0.1", "9093"), ("kafka2", "9092")], "Warn")


def test_the_last_occurrence_of_a_flag_wins():
    args = SOURCE_ARGS + ["--kafka_source_topic=second",
                          "--kafka_source_log_level", "Fine",
                          "--kafka_source_log_level", "Error"]
    topic, _, level = wallaroo.kafka_parse_source_options(args)
    assert (topic, level) == ("second", "Error")


def test_brokers_with_ipv6_addresses_in_brackets():
    args = ["--kafka_source_topic", "t",
            "--kafka_source_brokers", "[::1]:9000,[fe80::2]"]
    assert wallaroo.kafka_parse_source_options(args)[1] == [
        ("::1", "9000"), ("fe80::2", "9092")]


def test_brokers_are_stripped_of_spaces_around_commas():
    args = ["--kafka_source_topic", "t",
            "--kafka_source_brokers", "a:1, b:2"]
    assert wallaroo.kafka_parse_source_options(args)[1] == [
        ("a", "1"), ("b", "2")]


# -- kafka_parse_sink_options ---------------------------------------------------

def test_sink_options_defaults():
    assert wallaroo.kafka_parse_sink_options(SINK_ARGS) == (
        "out-topic", [("127.0.0.1", "9092")], "Warn", 0, 100000)


def test_sink_options_all_given_in_both_forms():
    args = ["--kafka_sink_topic=out", "--kafka_sink_brokers", "b1:1,b2:2",
            "--kafka_sink_log_level", "Fine",
            "--kafka_sink_max_produce_buffer_ms=25",
            "--kafka_sink_max_message_size", "2048"]
    assert wallaroo.kafka_parse_sink_options(args) == (
        "out", [("b1", "1"), ("b2", "2")], "Fine", 25, 2048)


def test_sink_options_ignore_source_flags_and_the_applications_own():
    args = SOURCE_ARGS + ["--out", "127.0.0.1:7002", "--max_message_size",
                          "x"] + SINK_ARGS
    assert wallaroo.kafka_parse_sink_options(args)[:2] == (
        "out-topic", [("127.0.0.1", "9092")])


def test_source_and_sink_flags_are_not_interchangeable():
    msg = error_of(wallaroo.kafka_parse_source_options, SINK_ARGS)
    assert "missing --kafka_source_topic and --kafka_source_brokers" in msg
    msg = error_of(wallaroo.kafka_parse_sink_options, SOURCE_ARGS)
    assert "missing --kafka_sink_topic and --kafka_sink_brokers" in msg


# -- errors -------------------------------------------------------------------------

def test_missing_source_topic_names_the_flag_and_shows_an_example():
    msg = error_of(wallaroo.kafka_parse_source_options,
                   ["--kafka_source_brokers", "h:9092", "--in", "x:1"])
    assert msg.startswith("missing --kafka_source_topic:")
    assert "--kafka_source_brokers:" not in msg
    assert "e.g. --kafka_source_topic my-topic --kafka_source_brokers " \
           "127.0.0.1:9092" in msg


def test_missing_source_brokers_names_the_flag():
    msg = error_of(wallaroo.kafka_parse_source_options,
                   ["--kafka_source_topic", "t"])
    assert msg.startswith("missing --kafka_source_brokers:")
    assert "e.g." in msg


def test_missing_sink_topic_and_brokers_are_both_named():
    msg = error_of(wallaroo.kafka_parse_sink_options, [])
    assert msg.startswith(
        "missing --kafka_sink_topic and --kafka_sink_brokers:")
    assert "e.g. --kafka_sink_topic my-topic --kafka_sink_brokers " in msg


def test_an_empty_value_counts_as_missing():
    msg = error_of(wallaroo.kafka_parse_sink_options,
                   ["--kafka_sink_topic=", "--kafka_sink_brokers", "h"])
    assert msg.startswith("missing --kafka_sink_topic:")


def test_a_flag_without_its_value_is_an_error():
    msg = error_of(wallaroo.kafka_parse_source_options,
                   ["--kafka_source_brokers", "h", "--kafka_source_topic"])
    assert "--kafka_source_topic is given without a value" in msg
    msg = error_of(wallaroo.kafka_parse_source_options,
                   ["--kafka_source_topic", "--kafka_source_brokers", "h"])
    assert "--kafka_source_topic is given without a value" in msg


@pytest.mark.parametrize("parse, flag, base", [
    (wallaroo.kafka_parse_source_options, "--kafka_source_log_level",
     SOURCE_ARGS),
    (wallaroo.kafka_parse_sink_options, "--kafka_sink_log_level", SINK_ARGS),
])
def test_a_bad_log_level_names_the_flag_and_the_value(parse, flag, base):
    msg = error_of(parse, base + [flag, "Debug"])
    assert msg == (f"{flag} 'Debug': the log level must be one of "
                   f"Fine, Info, Warn, Error")


@pytest.mark.parametrize("flag, value, problem", [
    ("--kafka_sink_max_produce_buffer_ms", "soon", "must be an integer"),
    ("--kafka_sink_max_produce_buffer_ms", "1.5", "must be an integer"),
    ("--kafka_sink_max_produce_buffer_ms", "-1", "must be at least 0"),
    ("--kafka_sink_max_message_size", "big", "must be an integer"),
    ("--kafka_sink_max_message_size", "0", "must be at least 1"),
])
def test_bad_sink_numbers_name_the_flag_and_the_value(flag, value, problem):
    msg = error_of(wallaroo.kafka_parse_sink_options,
                   SINK_ARGS + [f"{flag}={value}"])
    assert msg == f"{flag} {value!r}: {problem}"


@pytest.mark.parametrize("brokers, problem", [
    ("h:port", "broker port 'port' is not a port number"),
    ("h:70000", "broker port '70000' is not a port number"),
    ("a,,b", "an empty broker between commas"),
    ("a,", "an empty broker between commas"),
    (":9092", "broker host '' is not a host name"),
    ("::1", "is not HOST[:PORT]"),
])
def test_bad_brokers_name_the_flag_and_the_value(brokers, problem):
    msg = error_of(wallaroo.kafka_parse_source_options,
                   ["--kafka_source_topic", "t",
                    "--kafka_source_brokers", brokers])
    assert msg.startswith(f"--kafka_source_brokers {brokers!r}: ")
    assert problem in msg


def test_a_topic_kafka_would_refuse_is_an_error():
    msg = error_of(wallaroo.kafka_parse_source_options,
                   ["--kafka_source_topic", "two words",
                    "--kafka_source_brokers", "h"])
    assert msg.startswith("--kafka_source_topic 'two words': a topic is")


def test_the_error_is_the_wallaroo_parameter_error():
    with pytest.raises(ValueError) as info:
        wallaroo.kafka_parse_source_options([])
    assert type(info.value) is WallarooParameterError


# -- the parser classes ------------------------------------------------------------

def test_custom_source_parser_reads_its_args_at_construction():
    p = wallaroo.CustomKafkaSourceCLIParser(
        ["app.py", "--in", "x:1"] + SOURCE_ARGS, text_decoder)
    assert (p.topic, p.brokers, p.log_level, p.decoder) == (
        "in-topic", [("127.0.0.1", "9093"), ("kafka2", "9092")], "Warn",
        text_decoder)
    assert p.to_tuple() == ("kafka", "in-topic", p.brokers, "Warn",
                            text_decoder)


def test_custom_sink_parser_reads_its_args_at_construction():
    p = wallaroo.CustomKafkaSinkCLIParser(
        SINK_ARGS + ["--kafka_sink_max_message_size=500"], kafka_encoder)
    assert (p.topic, p.brokers, p.log_level, p.max_produce_buffer_ms,
            p.max_message_size, p.encoder) == (
        "out-topic", [("127.0.0.1", "9092")], "Warn", 0, 500, kafka_encoder)
    assert p.to_tuple() == ("kafka", "out-topic", [("127.0.0.1", "9092")],
                            "Warn", 0, 500, kafka_encoder)


def test_custom_parsers_fail_at_construction_naming_the_flag():
    msg = error_of(wallaroo.CustomKafkaSourceCLIParser, ["--in", "h:1"],
                   text_decoder)
    assert msg.startswith("missing --kafka_source_topic and "
                          "--kafka_source_brokers:")
    msg = error_of(wallaroo.CustomKafkaSinkCLIParser,
                   SINK_ARGS + ["--kafka_sink_log_level", "Loud"],
                   kafka_encoder)
    assert msg.startswith("--kafka_sink_log_level 'Loud':")


def test_default_parsers_take_no_args_and_keep_their_name():
    src = wallaroo.DefaultKafkaSourceCLIParser(text_decoder)
    snk = wallaroo.DefaultKafkaSinkCLIParser(kafka_encoder)
    assert (src.decoder, src.name) == (text_decoder, "kafka_source")
    assert (snk.encoder, snk.name) == (kafka_encoder, "kafka_sink")
    assert src.to_tuple() == ("kafka-internal", "kafka_source", text_decoder)
    named = wallaroo.DefaultKafkaSinkCLIParser(kafka_encoder, name="audit")
    assert named.to_tuple() == ("kafka-internal", "audit", kafka_encoder)


def test_parsers_pickle_by_reference():
    # (The decoder is left out: pickling decorated functions is not what
    # this checks.)
    p = wallaroo.CustomKafkaSourceCLIParser(SOURCE_ARGS, None)
    back = pickle.loads(pickle.dumps(p))
    assert type(back) is wallaroo.CustomKafkaSourceCLIParser
    assert back.brokers == p.brokers
    d = pickle.loads(pickle.dumps(
        wallaroo.DefaultKafkaSinkCLIParser(None, "out")))
    assert type(d) is wallaroo.DefaultKafkaSinkCLIParser and d.name == "out"


# -- what the builder makes of each form ------------------------------------------

def build(source_config, *sink_configs):
    ab = wallaroo.ApplicationBuilder("kafka app")
    ab.new_pipeline("convert", source_config)
    ab.to(upper)
    if len(sink_configs) == 1:
        ab.to_sink(sink_configs[0])
    else:
        ab.to_sinks(list(sink_configs))
    return ab.build()


def build_error(source_config, *sink_configs) -> str:
    return error_of(build, source_config, *sink_configs)


def assert_kafka_source(spec, topic, brokers, log_level):
    s = spec.pipelines[0].source
    assert (s.kind, s.host, s.port) == ("kafka", topic, "")
    assert type(s.config) is wallaroo.KafkaSourceConfig
    assert (s.config.topic, s.config.brokers, s.config.log_level) == (
        topic, brokers, log_level)
    assert s.config.decoder is text_decoder
    assert s.decoder.decode is text_decoder.fn


def assert_kafka_sink(sink_spec, topic, brokers, log_level, buffer_ms, size):
    assert (sink_spec.kind, sink_spec.host, sink_spec.port) == (
        "kafka", topic, "")
    c = sink_spec.config
    assert type(c) is wallaroo.KafkaSinkConfig
    assert (c.topic, c.brokers, c.log_level, c.max_produce_buffer_ms,
            c.max_message_size) == (topic, brokers, log_level, buffer_ms, size)
    assert c.encoder is kafka_encoder
    assert sink_spec.encoder.encode is kafka_encoder.fn


def test_direct_configs_give_kafka_specs_with_the_same_values():
    spec = build(
        wallaroo.KafkaSourceConfig("in", [("h1", "9092")], "Info",
                                   text_decoder),
        wallaroo.KafkaSinkConfig("out", [("h2", "9093")], "Error", 5, 1000,
                                 kafka_encoder))
    assert_kafka_source(spec, "in", [("h1", "9092")], "Info")
    assert_kafka_sink(spec.sinks[0], "out", [("h2", "9093")], "Error", 5, 1000)


@pytest.mark.parametrize("brokers", [
    [("h1", 9000), ("h2", "9092")],
    ["h1:9000", "h2"],
    "h1:9000,h2",
    ("h1:9000", "h2"),
    [["h1", "9000"], "h2:9092"],
])
def test_direct_config_brokers_are_normalized_to_str_pairs(brokers):
    spec = build(
        wallaroo.KafkaSourceConfig("in", brokers, "warn", text_decoder),
        wallaroo.KafkaSinkConfig("out", brokers, "Warn", "0", "100",
                                 kafka_encoder))
    want = [("h1", "9000"), ("h2", "9092")]
    assert_kafka_source(spec, "in", want, "Warn")
    assert_kafka_sink(spec.sinks[0], "out", want, "Warn", 0, 100)


def test_the_users_config_object_is_left_as_it_was():
    cfg = wallaroo.KafkaSourceConfig("in", "h1", "Warn", text_decoder)
    spec = build(cfg, sink())
    assert cfg.brokers == "h1"
    assert spec.pipelines[0].source.config is not cfg
    assert spec.pipelines[0].source.config.brokers == [("h1", "9092")]


@pytest.mark.parametrize("cfg, fragment", [
    (wallaroo.KafkaSourceConfig("in", [("h", "9092")], "Loud", text_decoder),
     "KafkaSourceConfig log_level 'Loud': the log level must be one of "
     "Fine, Info, Warn, Error"),
    (wallaroo.KafkaSourceConfig("in", [], "Warn", text_decoder),
     "KafkaSourceConfig brokers []: brokers are a non-empty list"),
    (wallaroo.KafkaSourceConfig("in", ("h", "9092"), "Warn", text_decoder),
     "KafkaSourceConfig brokers ('h', '9092'): brokers are a list of "
     "(host, port) pairs; write [('h', '9092')]"),
    (wallaroo.KafkaSourceConfig("in", [("h", "x")], "Warn", text_decoder),
     "KafkaSourceConfig brokers [('h', 'x')]: broker port 'x' is not a "
     "port number (1-65535)"),
    (wallaroo.KafkaSourceConfig("", [("h", "9092")], "Warn", text_decoder),
     "KafkaSourceConfig topic '': a topic is"),
    (wallaroo.KafkaSourceConfig(None, [("h", "9092")], "Warn", text_decoder),
     "KafkaSourceConfig topic None: a topic is"),
])
def test_bad_direct_source_configs_name_the_pipeline_and_the_value(cfg,
                                                                   fragment):
    msg = build_error(cfg, sink())
    assert "pipeline 'convert' source: " + fragment in msg


@pytest.mark.parametrize("args, fragment", [
    (("Warn", True, 100), "KafkaSinkConfig max_produce_buffer_ms True: "
                          "must be an integer"),
    (("Warn", 0, "big"), "KafkaSinkConfig max_message_size 'big': "
                         "must be an integer"),
    (("Warn", 0, 1.5), "KafkaSinkConfig max_message_size 1.5: "
                       "must be an integer"),
    (("Warn", -3, 10), "KafkaSinkConfig max_produce_buffer_ms -3: "
                       "must be at least 0"),
    (("Verbose", 0, 10), "KafkaSinkConfig log_level 'Verbose'"),
])
def test_bad_direct_sink_configs_name_the_pipeline_sink_and_value(args,
                                                                  fragment):
    cfg = wallaroo.KafkaSinkConfig("out", "h", *args, kafka_encoder)
    msg = build_error(source(), sink(), cfg)
    assert "pipeline 'convert' sink 1: " + fragment in msg


def test_the_decoder_and_encoder_are_checked_as_for_tcp():
    msg = build_error(
        wallaroo.KafkaSourceConfig("in", "h", "Warn", object()), sink())
    assert "pipeline 'convert' source: " in msg and "is not a decoder" in msg
    msg = build_error(
        source(), wallaroo.KafkaSinkConfig("out", "h", "Warn", 0, 10, 42))
    assert "pipeline 'convert' sink 0: " in msg and "is not an encoder" in msg


def test_custom_parsers_give_kafka_specs():
    args = SOURCE_ARGS + SINK_ARGS + ["--kafka_sink_max_produce_buffer_ms",
                                      "7"]
    spec = build(wallaroo.CustomKafkaSourceCLIParser(args, text_decoder),
                 wallaroo.CustomKafkaSinkCLIParser(args, kafka_encoder))
    assert_kafka_source(spec, "in-topic",
                        [("127.0.0.1", "9093"), ("kafka2", "9092")], "Warn")
    assert_kafka_sink(spec.sinks[0], "out-topic", [("127.0.0.1", "9092")],
                      "Warn", 7, 100000)


def test_default_parsers_read_sys_argv_outside_the_loader(argv):
    argv("--in", "x:1", *SOURCE_ARGS, "--kafka_source_log_level=Fine",
         *SINK_ARGS, "--kafka_sink_max_message_size", "4096")
    spec = build(wallaroo.DefaultKafkaSourceCLIParser(text_decoder),
                 wallaroo.DefaultKafkaSinkCLIParser(kafka_encoder))
    assert_kafka_source(spec, "in-topic",
                        [("127.0.0.1", "9093"), ("kafka2", "9092")], "Fine")
    assert_kafka_sink(spec.sinks[0], "out-topic", [("127.0.0.1", "9092")],
                      "Warn", 0, 4096)


def test_default_parsers_with_a_custom_name_read_their_own_flags(argv):
    argv(*SOURCE_ARGS, *SINK_ARGS,
         "--events_topic", "events", "--events_brokers", "e1:1",
         "--audit_topic=audit", "--audit_brokers=a1", "--audit_log_level=Info",
         "--audit_max_produce_buffer_ms=3", "--audit_max_message_size=9")
    spec = build(
        wallaroo.DefaultKafkaSourceCLIParser(text_decoder, name="events"),
        wallaroo.DefaultKafkaSinkCLIParser(kafka_encoder, name="audit"),
        wallaroo.DefaultKafkaSinkCLIParser(kafka_encoder))
    assert_kafka_source(spec, "events", [("e1", "1")], "Warn")
    assert_kafka_sink(spec.sinks[0], "audit", [("a1", "9092")], "Info", 3, 9)
    assert_kafka_sink(spec.sinks[1], "out-topic", [("127.0.0.1", "9092")],
                      "Warn", 0, 100000)


def test_default_parser_errors_name_the_pipeline_and_the_flag(argv):
    argv("--in", "x:1", *SINK_ARGS)
    msg = build_error(wallaroo.DefaultKafkaSourceCLIParser(text_decoder),
                      wallaroo.DefaultKafkaSinkCLIParser(kafka_encoder))
    assert ("pipeline 'convert' source: missing --kafka_source_topic and "
            "--kafka_source_brokers: ") in msg
    argv(*SOURCE_ARGS, "--out_topic", "t")
    msg = build_error(
        wallaroo.DefaultKafkaSourceCLIParser(text_decoder),
        wallaroo.DefaultKafkaSinkCLIParser(kafka_encoder, name="out"))
    assert "pipeline 'convert' sink 0: missing --out_brokers: " in msg
    assert "e.g. --out_topic my-topic --out_brokers 127.0.0.1:9092" in msg


def test_a_default_parser_name_must_make_flags(argv):
    argv(*SOURCE_ARGS)
    msg = build_error(
        wallaroo.DefaultKafkaSourceCLIParser(text_decoder, name="my source"),
        sink())
    assert ("pipeline 'convert' source: DefaultKafkaSourceCLIParser name "
            "'my source': the name must be a non-empty string") in msg


def test_kafka_and_tcp_sinks_together():
    spec = build(source(),
                 wallaroo.KafkaSinkConfig("out", "h", "Warn", 0, 10,
                                          kafka_encoder),
                 sink(line_encoder))
    assert [s.kind for s in spec.sinks] == ["kafka", "tcp"]
    assert spec.sinks[0].config.brokers == [("h", "9092")]


# -- the args of load_application ----------------------------------------------------

APP = textwrap.dedent('''
    import wallaroo

    @wallaroo.decoder(header_length=4, length_fmt=">I")
    def decoder(bs):
        return float(bs.decode("utf-8"))

    @wallaroo.computation(name="multiply by 1.8")
    def multiply(data):
        return data * 1.8

    @wallaroo.encoder
    def encoder(data):
        return ("%.6f" % data, None, None)

    def application_setup(args):
        ab = wallaroo.ApplicationBuilder("Celsius to Fahrenheit with Kafka")
        ab.new_pipeline("convert",
                        wallaroo.DefaultKafkaSourceCLIParser(decoder{src_name}))
        ab.to(multiply)
        ab.to_sink(wallaroo.DefaultKafkaSinkCLIParser(encoder{sink_name}))
        return ab.build()
''')


@pytest.fixture
def app_file(tmp_path, monkeypatch):
    """Write an application like Wallaroo's celsius-kafka example to a
    uniquely named file; forget its module afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = []

    def write(src_name="", sink_name=""):
        name = f"kafka_app_{uuid.uuid4().hex}"
        names.append(name)
        path = tmp_path / f"{name}.py"
        path.write_text(APP.format(src_name=src_name, sink_name=sink_name))
        return str(path)
    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_load_application_resolves_default_parsers_from_its_args(app_file,
                                                                 argv):
    argv("--kafka_source_topic", "from-argv", "--kafka_source_brokers", "argv",
         "--kafka_sink_topic", "from-argv", "--kafka_sink_brokers", "argv")
    path = app_file()
    spec = load_application(path, [path, "--kafka_source_topic", "celsius",
                                   "--kafka_source_brokers=k1:9001,k2",
                                   "--kafka_sink_topic=fahrenheit",
                                   "--kafka_sink_brokers", "k3",
                                   "--kafka_sink_log_level", "Error",
                                   "--app-own-option", "1"])
    src = spec.pipelines[0].source
    assert (src.kind, src.host) == ("kafka", "celsius")
    assert type(src.config) is wallaroo.KafkaSourceConfig
    assert src.config.brokers == [("k1", "9001"), ("k2", "9092")]
    assert src.config.log_level == "Warn"
    assert src.decoder.decode(b"100") == 100.0
    snk = spec.sinks[0]
    assert (snk.kind, snk.host) == ("kafka", "fahrenheit")
    assert type(snk.config) is wallaroo.KafkaSinkConfig
    assert (snk.config.brokers, snk.config.log_level,
            snk.config.max_produce_buffer_ms, snk.config.max_message_size) == (
        [("k3", "9092")], "Error", 0, 100000)
    assert snk.encoder.encode(212.0) == ("212.000000", None, None)


def test_load_application_with_custom_parser_names(app_file, argv):
    path = app_file(src_name=', name="celsius"', sink_name=', "fahrenheit"')
    spec = load_application(path, [path, "--celsius_topic", "c",
                                   "--celsius_brokers", "k1",
                                   "--fahrenheit_topic", "f",
                                   "--fahrenheit_brokers", "k2:1",
                                   "--fahrenheit_max_message_size", "64"])
    assert spec.pipelines[0].source.config.topic == "c"
    assert spec.sinks[0].config.topic == "f"
    assert spec.sinks[0].config.brokers == [("k2", "1")]
    assert spec.sinks[0].config.max_message_size == 64


def test_load_application_does_not_fall_back_to_sys_argv(app_file, argv):
    argv(*SOURCE_ARGS, *SINK_ARGS)
    path = app_file()
    with pytest.raises(WallarooParameterError) as info:
        load_application(path, [path, *SINK_ARGS])
    assert ("pipeline 'convert' source: missing --kafka_source_topic and "
            "--kafka_source_brokers") in str(info.value)


def test_the_application_args_are_set_only_during_the_call(argv):
    argv("--from-argv")
    assert current_args() == ["--from-argv"]
    with application_args(["app.py", "--given"]):
        assert current_args() == ["app.py", "--given"]
        with application_args([]):
            assert current_args() == []
        assert current_args() == ["app.py", "--given"]
    assert current_args() == ["--from-argv"]
