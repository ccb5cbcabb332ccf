"""What the Kafka source and sink share: the client configuration built
from a ``KafkaSourceConfig``/``KafkaSinkConfig``, and librdkafka's errors
turned into log lines that name the topic and the brokers, once per
distinct error per interval (librdkafka retries by itself; repeating every
attempt would bury everything else).

confluent-kafka (librdkafka) is imported here only, when a Kafka connector
is made: an application without Kafka never needs it.
"""

from __future__ import annotations

import logging
import threading
import time

# Wallaroo's log levels -> librdkafka's syslog levels (its own log lines)
LOG_LEVELS = {"Fine": 7, "Info": 6, "Warn": 4, "Error": 3}
# one log line per distinct client error per this many seconds
ERROR_INTERVAL = 10.0


def kafka():
    """The confluent_kafka module, or an error saying how to get it."""
    try:
        import confluent_kafka
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise RuntimeError(
            "Kafka sources and sinks need confluent-kafka: pip install "
            "confluent-kafka") from e
    return confluent_kafka


def bootstrap(brokers) -> str:
    """``[(host, port), ...]`` (or ``"h:p,h2"``) -> ``"h:p,h2:9092"``."""
    if isinstance(brokers, str):
        brokers = [b for b in brokers.split(",") if b.strip()]
    out = []
    for b in brokers:
        if isinstance(b, (tuple, list)):
            host, port = b[0], b[1] if len(b) > 1 and b[1] not in (None, "") else 9092
        else:
            host, sep, port = str(b).strip().rpartition(":")
            if not sep:
                host, port = str(b).strip(), 9092
        out.append(f"{host}:{port}")
    return ",".join(out)


class ClientErrors:
    """librdkafka's ``error_cb`` (called from its poll, in a thread):
    logs each distinct error at most once per ``ERROR_INTERVAL``, naming
    what the client is for, and counts them all."""

    def __init__(self, log: logging.Logger, what: str):
        self.log = log
        self.what = what  # "kafka source of pipeline 'p' (topic t, brokers b)"
        self.count = 0
        self.last: str | None = None
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, err) -> None:
        text = f"{err.name()}: {err.str()}"
        now = time.monotonic()
        with self._lock:
            self.count += 1
            self.last = text
            if now - self._seen.get(text, -ERROR_INTERVAL) < ERROR_INTERVAL:
                return
            self._seen[text] = now
        self.log.warning("%s: %s (the client retries; nothing is lost)", self.what, text)


class _OncePerInterval(logging.Filter):
    """Lets each distinct message through once per ``ERROR_INTERVAL``."""

    def __init__(self):
        super().__init__()
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        now = time.monotonic()
        with self._lock:
            if now - self._seen.get(text, -ERROR_INTERVAL) < ERROR_INTERVAL:
                return False
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[text] = now
        return True


def client_logger(log: logging.Logger) -> logging.Logger:
    """Where librdkafka's own log lines go (instead of its stderr), each
    distinct line once per interval."""
    lg = log.getChild("librdkafka")
    if not any(isinstance(f, _OncePerInterval) for f in lg.filters):
        lg.addFilter(_OncePerInterval())
    return lg


def parse_options(items) -> dict[str, str]:
    """``["security.protocol=SASL_SSL", ...]`` -> a dict; ValueError naming
    an item without ``=``."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--kafka-option {item!r}: expected KEY=VALUE (a "
                             f"librdkafka setting, e.g. security.protocol=SASL_SSL)")
        out[key.strip()] = value
    return out


def base_config(brokers, log_level: str | None, errors: ClientErrors,
                extra: dict | None = None) -> dict:
    """The settings every client gets; ``extra`` (``--kafka-option``) is
    applied last, so a user's setting wins."""
    return {**_defaults(brokers, log_level, errors), **(extra or {})}


def _defaults(brokers, log_level: str | None, errors: ClientErrors) -> dict:
    return {
        "bootstrap.servers": bootstrap(brokers),
        "error_cb": errors,
        "logger": client_logger(errors.log),
        "log_level": LOG_LEVELS.get(log_level or "Warn", 4),
        # a missing topic is an error to report, never created by a typo
        "allow.auto.create.topics": False,
        "topic.metadata.propagation.max.ms": 5000,
        "socket.connection.setup.timeout.ms": 5000,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 5000,
    }


def check_options(options: dict) -> None:
    """Refuse, with librdkafka's own words, settings it does not accept
    (ValueError), before the worker starts: a typo in ``--kafka-option`` is
    an operator's mistake to report, not a broker error to retry."""
    if not options:
        return
    ck = kafka()
    conf = {"bootstrap.servers": "127.0.0.1:1", "log_level": 0,
            "error_cb": lambda err: None, **options}
    try:
        client = ck.Producer({k: v for k, v in conf.items()
                              if k not in ("group.id", "isolation.level")})
    except ck.KafkaException as e:
        err = e.args[0] if e.args else e
        raise ValueError(f"--kafka-option: {getattr(err, 'str', lambda: err)()}") from None
    client.purge()
    client.flush(0)
