"""Kafka options from the command line, as Wallaroo 0.5's Python API read
them.

``kafka_parse_source_options(args)`` and ``kafka_parse_sink_options(args)``
read the ``--kafka_source_*`` / ``--kafka_sink_*`` flags from a list of
arguments.  ``CustomKafkaSourceCLIParser(args, decoder)`` and
``CustomKafkaSinkCLIParser(args, encoder)`` do the same at construction and
can be given to ``new_pipeline`` / ``to_sink``.
``DefaultKafkaSourceCLIParser(decoder, name)`` and
``DefaultKafkaSinkCLIParser(encoder, name)`` take no arguments: their flags
are ``--<name>_topic`` and so on, read when the builder meets them from the
arguments the application was started with (``application_args``), or from
``sys.argv[1:]`` for an application built outside the loader.

Flags are written ``--flag value`` or ``--flag=value``; the last one given
wins; every other argument is left to the application.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from typing import Iterator

from . import _kafka_options as opts
from ._configs import KafkaSinkConfig, KafkaSourceConfig
from ._errors import WallarooParameterError

# The arguments of the application being set up, while the loader runs its
# application_setup(args); None outside of that call.
_application_args: contextvars.ContextVar[tuple[str, ...] | None] = \
    contextvars.ContextVar("wallaroo_application_args", default=None)


@contextlib.contextmanager
def application_args(args) -> Iterator[None]:
    """While this block runs, Default*CLIParser options come from ``args``
    (the loader wraps ``application_setup(args)`` in it)."""
    token = _application_args.set(tuple(str(a) for a in args))
    try:
        yield
    finally:
        _application_args.reset(token)


def current_args() -> list[str]:
    """The arguments Default*CLIParser options are read from: those given
    to ``application_args``, else ``sys.argv[1:]``."""
    args = _application_args.get()
    return list(args) if args is not None else list(sys.argv[1:])


# -- reading flags -------------------------------------------------------------

def _flag_value(args, flag: str) -> str | None:
    """The value of the last ``flag VALUE`` / ``flag=VALUE`` in ``args``, or
    None.  A flag with no value after it (the end of the arguments, or
    another ``--option``) is an error."""
    args = [str(a) for a in args]
    value = None
    for i, a in enumerate(args):
        if a == flag:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or nxt.startswith("--"):
                raise WallarooParameterError(
                    f"{flag} is given without a value: write {flag} VALUE or "
                    f"{flag}=VALUE")
            value = nxt
        elif a.startswith(flag + "="):
            value = a[len(flag) + 1:]
    return value


def _example(prefix: str, what: str) -> str:
    return (f"give the Kafka {what}'s options as --{prefix}_topic TOPIC "
            f"--{prefix}_brokers HOST[:PORT][,HOST[:PORT]...] (e.g. "
            f"--{prefix}_topic my-topic --{prefix}_brokers "
            f"127.0.0.1:9092,127.0.0.2)")


def _topic_and_brokers(args, prefix: str, what: str):
    topic_flag, brokers_flag = f"--{prefix}_topic", f"--{prefix}_brokers"
    topic = _flag_value(args, topic_flag)
    brokers = _flag_value(args, brokers_flag)
    missing = [f for f, v in ((topic_flag, topic), (brokers_flag, brokers))
               if not v]
    if missing:
        raise WallarooParameterError(
            f"missing {' and '.join(missing)}: {_example(prefix, what)}")
    return (opts.topic(topic, topic_flag),
            opts.parse_brokers(brokers, brokers_flag))


def _log_level(args, prefix: str) -> str:
    flag = f"--{prefix}_log_level"
    value = _flag_value(args, flag)
    return opts.DEFAULT_LOG_LEVEL if value is None else opts.log_level(value, flag)


def _integer(args, flag: str, default: int, minimum: int) -> int:
    value = _flag_value(args, flag)
    return default if value is None else opts.integer(value, flag, minimum)


def _source_options(args, prefix: str):
    topic, brokers = _topic_and_brokers(args, prefix, "source")
    return topic, brokers, _log_level(args, prefix)


def _sink_options(args, prefix: str):
    topic, brokers = _topic_and_brokers(args, prefix, "sink")
    return (topic, brokers, _log_level(args, prefix),
            _integer(args, f"--{prefix}_max_produce_buffer_ms",
                     opts.DEFAULT_MAX_PRODUCE_BUFFER_MS, 0),
            _integer(args, f"--{prefix}_max_message_size",
                     opts.DEFAULT_MAX_MESSAGE_SIZE, 1))


def kafka_parse_source_options(args):
    """``--kafka_source_topic T --kafka_source_brokers H1:P1,H2
    [--kafka_source_log_level Fine|Info|Warn|Error]`` ->
    ``(T, [("H1", "P1"), ("H2", "9092")], log_level)``; the log level is
    ``"Warn"`` unless given.  Raises ``WallarooParameterError`` when the topic
    or brokers are missing or a value is malformed."""
    return _source_options(args, "kafka_source")


def kafka_parse_sink_options(args):
    """``--kafka_sink_topic``, ``--kafka_sink_brokers``,
    ``--kafka_sink_log_level`` (default ``"Warn"``),
    ``--kafka_sink_max_produce_buffer_ms`` (default 0) and
    ``--kafka_sink_max_message_size`` (default 100000) ->
    ``(topic, brokers, log_level, max_produce_buffer_ms, max_message_size)``,
    brokers as in ``kafka_parse_source_options``."""
    return _sink_options(args, "kafka_sink")


# -- the parsers an application passes to the builder ------------------------

class CustomKafkaSourceCLIParser:
    """A Kafka source whose options are read from ``args`` now, as by
    ``kafka_parse_source_options``; use it like a ``KafkaSourceConfig``."""

    def __init__(self, args, decoder):
        self.topic, self.brokers, self.log_level = \
            kafka_parse_source_options(args)
        self.decoder = decoder

    def to_tuple(self):
        return ("kafka", self.topic, self.brokers, self.log_level, self.decoder)

    def __repr__(self):
        return (f"CustomKafkaSourceCLIParser(topic={self.topic!r}, "
                f"brokers={self.brokers!r}, log_level={self.log_level!r}, "
                f"decoder={self.decoder!r})")


class CustomKafkaSinkCLIParser:
    """A Kafka sink whose options are read from ``args`` now, as by
    ``kafka_parse_sink_options``; use it like a ``KafkaSinkConfig``."""

    def __init__(self, args, encoder):
        (self.topic, self.brokers, self.log_level, self.max_produce_buffer_ms,
         self.max_message_size) = kafka_parse_sink_options(args)
        self.encoder = encoder

    def to_tuple(self):
        return ("kafka", self.topic, self.brokers, self.log_level,
                self.max_produce_buffer_ms, self.max_message_size, self.encoder)

    def __repr__(self):
        return (f"CustomKafkaSinkCLIParser(topic={self.topic!r}, "
                f"brokers={self.brokers!r}, log_level={self.log_level!r}, "
                f"max_produce_buffer_ms={self.max_produce_buffer_ms!r}, "
                f"max_message_size={self.max_message_size!r}, "
                f"encoder={self.encoder!r})")


class DefaultKafkaSourceCLIParser:
    """A Kafka source configured by the worker's command line:
    ``--<name>_topic``, ``--<name>_brokers``, ``--<name>_log_level``
    (with the default name, the ``--kafka_source_*`` flags).  Read when the
    builder meets it, from the application's arguments."""

    def __init__(self, decoder, name="kafka_source"):
        self.decoder = decoder
        self.name = name

    def to_tuple(self):
        return ("kafka-internal", self.name, self.decoder)

    def __repr__(self):
        return (f"DefaultKafkaSourceCLIParser({self.decoder!r}, "
                f"name={self.name!r})")


class DefaultKafkaSinkCLIParser:
    """A Kafka sink configured by the worker's command line:
    ``--<name>_topic``, ``--<name>_brokers``, ``--<name>_log_level``,
    ``--<name>_max_produce_buffer_ms``, ``--<name>_max_message_size`` (with
    the default name, the ``--kafka_sink_*`` flags).  Read when the builder
    meets it, from the application's arguments."""

    def __init__(self, encoder, name="kafka_sink"):
        self.encoder = encoder
        self.name = name

    def to_tuple(self):
        return ("kafka-internal", self.name, self.encoder)

    def __repr__(self):
        return (f"DefaultKafkaSinkCLIParser({self.encoder!r}, "
                f"name={self.name!r})")


SOURCE_FORMS = (KafkaSourceConfig, CustomKafkaSourceCLIParser,
                DefaultKafkaSourceCLIParser)
SINK_FORMS = (KafkaSinkConfig, CustomKafkaSinkCLIParser,
              DefaultKafkaSinkCLIParser)


def _prefix(name, what: str) -> str:
    if not isinstance(name, str) or not name or "=" in name \
            or any(c.isspace() for c in name):
        raise WallarooParameterError(
            f"Default{what}CLIParser name {name!r}: the name must be a "
            f"non-empty string without spaces or '=' (its flags are "
            f"--NAME_topic, --NAME_brokers, ...)")
    return name


def source_config(cfg) -> KafkaSourceConfig:
    """The checked ``KafkaSourceConfig`` of any form in ``SOURCE_FORMS``;
    a Default parser's flags are read from ``current_args()`` now."""
    if isinstance(cfg, DefaultKafkaSourceCLIParser):
        prefix = _prefix(cfg.name, "KafkaSource")
        cfg = KafkaSourceConfig(*_source_options(current_args(), prefix),
                                cfg.decoder)
    elif isinstance(cfg, CustomKafkaSourceCLIParser):
        cfg = KafkaSourceConfig(cfg.topic, cfg.brokers, cfg.log_level,
                                cfg.decoder)
    return opts.checked_source_config(cfg)


def sink_config(cfg) -> KafkaSinkConfig:
    """The checked ``KafkaSinkConfig`` of any form in ``SINK_FORMS``;
    a Default parser's flags are read from ``current_args()`` now."""
    if isinstance(cfg, DefaultKafkaSinkCLIParser):
        prefix = _prefix(cfg.name, "KafkaSink")
        cfg = KafkaSinkConfig(*_sink_options(current_args(), prefix),
                              cfg.encoder)
    elif isinstance(cfg, CustomKafkaSinkCLIParser):
        cfg = KafkaSinkConfig(cfg.topic, cfg.brokers, cfg.log_level,
                              cfg.max_produce_buffer_ms, cfg.max_message_size,
                              cfg.encoder)
    return opts.checked_sink_config(cfg)


for _obj in (kafka_parse_source_options, kafka_parse_sink_options,
             CustomKafkaSourceCLIParser, CustomKafkaSinkCLIParser,
             DefaultKafkaSourceCLIParser, DefaultKafkaSinkCLIParser):
    _obj.__module__ = "wallaroo"
del _obj
