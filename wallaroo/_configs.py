"""Source and sink configurations, and the TCP command-line address helpers
(the Kafka ones are in ``_kafka_cli``)."""

from __future__ import annotations

from ._errors import WallarooParameterError


class TCPSourceConfig:
    """Listen on ``host:port`` and decode Wallaroo-framed messages with
    ``decoder``.  Port ``0`` binds a free port (reported in the ``ready``
    log line).

    ``parallelism`` (the 0.6 API's, default 10) is accepted and not used:
    each worker serves every connection of its sources itself."""

    def __init__(self, host, port, decoder, parallelism=10):
        self.host = str(host)
        self.port = str(port)
        self.decoder = decoder
        if isinstance(parallelism, bool) or not isinstance(parallelism, int) \
                or parallelism < 1:
            raise WallarooParameterError(
                f"TCPSourceConfig(parallelism=...) must be a positive int, "
                f"got {parallelism!r}")
        self.parallelism = parallelism

    def to_tuple(self):
        return ("tcp", self.host, self.port, self.decoder)

    def __repr__(self):
        return f"TCPSourceConfig({self.host!r}, {self.port!r}, {self.decoder!r})"


class GenSourceConfig:
    """A source that makes its own messages (the 0.6 API): the first is
    ``generator.initial_value()``, each next one ``generator.apply(previous)``.

    It runs on one worker of a cluster, as fast as the engine takes its
    messages; its position (how many it made) is part of every commit, so a
    restart continues the sequence instead of starting it over (the
    generator is built again by ``application_setup`` and advanced to that
    position, so ``apply`` must be deterministic).  ``apply`` returning
    ``None`` ends the stream (an addition to Wallaroo's API, for finite runs).
    """

    def __init__(self, generator):
        missing = [m for m in ("initial_value", "apply")
                   if not callable(getattr(generator, m, None))]
        if missing:
            raise WallarooParameterError(
                f"GenSourceConfig({generator!r:.60}): the generator needs "
                f"{' and '.join(m + '()' for m in missing)}")
        self.generator = generator

    def __repr__(self):
        return f"GenSourceConfig({self.generator!r})"


class TCPSinkConfig:
    """Connect to ``host:port`` and write whatever ``encoder`` returns."""

    def __init__(self, host, port, encoder):
        self.host = str(host)
        self.port = str(port)
        self.encoder = encoder

    def to_tuple(self):
        return ("tcp", self.host, self.port, self.encoder)

    def __repr__(self):
        return f"TCPSinkConfig({self.host!r}, {self.port!r}, {self.encoder!r})"


class KafkaSourceConfig:
    """Read the records of a Kafka topic.

    ``topic`` is the topic's name.  ``brokers`` is a list of ``(host, port)``
    pairs of strings, e.g. ``[("127.0.0.1", "9092")]``; the builder also
    accepts ``["host:port", "host"]`` or ``"host:port,host"`` (the port is
    9092 when left out) and turns them into pairs.  ``log_level`` is one of
    ``"Fine"``, ``"Info"``, ``"Warn"``, ``"Error"``.

    ``decoder`` is given each record's value, the whole of it, as ``bytes``:
    a Kafka record is one message, so a ``@wallaroo.decoder``'s header
    arguments are not used to frame it.

    ``wallaroo.kafka_parse_source_options(args)``,
    ``wallaroo.CustomKafkaSourceCLIParser(args, decoder)`` and
    ``wallaroo.DefaultKafkaSourceCLIParser(decoder)`` read these options
    from the command line instead.
    """

    def __init__(self, topic, brokers, log_level, decoder):
        self.topic = topic
        self.brokers = brokers
        self.log_level = log_level
        self.decoder = decoder

    def to_tuple(self):
        return ("kafka", self.topic, self.brokers, self.log_level, self.decoder)

    def __repr__(self):
        return (f"KafkaSourceConfig({self.topic!r}, {self.brokers!r}, "
                f"{self.log_level!r}, {self.decoder!r})")


class KafkaSinkConfig:
    """Write a pipeline's output to a Kafka topic.

    ``topic`` and ``brokers``, and ``log_level``, as for
    ``KafkaSourceConfig``.  ``max_produce_buffer_ms`` is how long, in
    milliseconds, records may wait to be sent in a batch (0: send at once;
    Wallaroo's default).  ``max_message_size`` is the maximum Kafka message
    buffer size, in bytes (Wallaroo's default: 100000).  Both are ints.

    ``encoder`` returns ``(value, key)`` for each output: ``value`` is the
    record's value and ``key`` its key (``None`` for none); Wallaroo 0.5's
    ``(value, key, partition)`` is accepted too.  ``str`` values and keys
    are sent UTF-8 encoded, ``bytes`` as they are.

    ``wallaroo.kafka_parse_sink_options(args)``,
    ``wallaroo.CustomKafkaSinkCLIParser(args, encoder)`` and
    ``wallaroo.DefaultKafkaSinkCLIParser(encoder)`` read these options from
    the command line instead.
    """

    def __init__(self, topic, brokers, log_level, max_produce_buffer_ms,
                 max_message_size, encoder):
        self.topic = topic
        self.brokers = brokers
        self.log_level = log_level
        self.max_produce_buffer_ms = max_produce_buffer_ms
        self.max_message_size = max_message_size
        self.encoder = encoder

    def to_tuple(self):
        return ("kafka", self.topic, self.brokers, self.log_level,
                self.max_produce_buffer_ms, self.max_message_size, self.encoder)

    def __repr__(self):
        return (f"KafkaSinkConfig({self.topic!r}, {self.brokers!r}, "
                f"{self.log_level!r}, {self.max_produce_buffer_ms!r}, "
                f"{self.max_message_size!r}, {self.encoder!r})")


def _option_value(args, short: str, long: str) -> str | None:
    """The value of ``short``/``long`` (``-i X``, ``--in X``, ``--in=X``),
    the last one winning.  Only these exact tokens count: an application's
    own ``-iterations 5`` or ``--input-file f`` is left alone."""
    value = None
    args = list(args)
    for i, a in enumerate(args):
        if a in (short, long):
            if i + 1 < len(args):
                value = args[i + 1]
        elif a.startswith(long + "="):
            value = a[len(long) + 1:]
    return value


def _parse_addrs(args, short: str, long: str, what: str):
    value = _option_value(args, short, long)
    if not value:
        raise WallarooParameterError(
            f"no {what} address given: pass {long} HOST:PORT[,HOST:PORT...] "
            f"(one per {'pipeline' if long == '--in' else 'sink'}, in order)")
    addrs = []
    for part in value.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port:
            raise WallarooParameterError(
                f"{long} {value!r}: {part!r} is not HOST:PORT")
        addrs.append((host.strip("[]"), port))
    return addrs


def tcp_parse_input_addrs(args):
    """``--in``/``-i`` ``H1:P1,H2:P2`` -> ``[(H1, P1), (H2, P2)]`` (strings)."""
    return _parse_addrs(args, "-i", "--in", "input")


def tcp_parse_output_addrs(args):
    """``--out``/``-o`` ``H1:P1,H2:P2`` -> ``[(H1, P1), (H2, P2)]`` (strings)."""
    return _parse_addrs(args, "-o", "--out", "output")


for _obj in (TCPSourceConfig, TCPSinkConfig, KafkaSourceConfig, KafkaSinkConfig,
             GenSourceConfig,
             tcp_parse_input_addrs, tcp_parse_output_addrs):
    _obj.__module__ = "wallaroo"
del _obj
