"""Source and sink configurations, and the command-line address helpers."""

from __future__ import annotations

from ._errors import WallarooParameterError


class TCPSourceConfig:
    """Listen on ``host:port`` and decode Wallaroo-framed messages with
    ``decoder``.  Port ``0`` binds a free port (reported in the ``ready``
    log line)."""

    def __init__(self, host, port, decoder):
        self.host = str(host)
        self.port = str(port)
        self.decoder = decoder

    def to_tuple(self):
        return ("tcp", self.host, self.port, self.decoder)

    def __repr__(self):
        return f"TCPSourceConfig({self.host!r}, {self.port!r}, {self.decoder!r})"


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
    """Part of the API so applications that mention Kafka still load; this
    engine runs TCP sources only and says so when such a pipeline is run."""

    def __init__(self, topic, brokers, log_level, decoder):
        self.topic = topic
        self.brokers = brokers
        self.log_level = log_level
        self.decoder = decoder

    def to_tuple(self):
        return ("kafka", self.topic, self.brokers, self.log_level, self.decoder)


class KafkaSinkConfig:
    """See ``KafkaSourceConfig``."""

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
             tcp_parse_input_addrs, tcp_parse_output_addrs):
    _obj.__module__ = "wallaroo"
del _obj
