"""Checks of Kafka option values, and the checked form of a Kafka config.

Every Kafka source or sink, however the application wrote it, reaches the
runtime as a ``KafkaSourceConfig`` / ``KafkaSinkConfig`` made by
``checked_source_config`` / ``checked_sink_config``:

* ``topic``: a non-empty str of Kafka's legal characters;
* ``brokers``: a non-empty list of ``(host, port)`` str pairs;
* ``log_level``: one of ``Fine``, ``Info``, ``Warn``, ``Error``;
* ``max_produce_buffer_ms`` (>= 0) and ``max_message_size`` (>= 1): ints.

Each check takes a ``label`` naming where the value came from (a flag such as
``--kafka_source_brokers``, or ``KafkaSourceConfig brokers``) and raises
``WallarooParameterError`` naming it and the value.
"""

from __future__ import annotations

import re

from ._configs import KafkaSinkConfig, KafkaSourceConfig
from ._errors import WallarooParameterError

LOG_LEVELS = ("Fine", "Info", "Warn", "Error")
DEFAULT_LOG_LEVEL = "Warn"
DEFAULT_PORT = "9092"
DEFAULT_MAX_PRODUCE_BUFFER_MS = 0
DEFAULT_MAX_MESSAGE_SIZE = 100000

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_INT = re.compile(r"[+-]?[0-9]+")
_PORT = re.compile(r"[0-9]{1,5}")


def topic(value, label: str) -> str:
    """A Kafka topic name: 1 to 249 of ``A-Z a-z 0-9 . _ -``."""
    if not isinstance(value, str) or not _TOPIC.fullmatch(value) \
            or value in (".", ".."):
        raise WallarooParameterError(
            f"{label} {value!r}: a topic is a non-empty string of letters, "
            f"digits, '.', '_' and '-' (at most 249), e.g. 'celsius-in'")
    return value


def log_level(value, label: str) -> str:
    """One of ``LOG_LEVELS``, whatever its case, in its canonical case."""
    if isinstance(value, str):
        for level in LOG_LEVELS:
            if value.strip().lower() == level.lower():
                return level
    raise WallarooParameterError(
        f"{label} {value!r}: the log level must be one of "
        f"{', '.join(LOG_LEVELS)}")


def integer(value, label: str, minimum: int) -> int:
    """An int, or a string of decimal digits, that is at least ``minimum``."""
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise WallarooParameterError(
            f"{label} {value!r}: must be an integer")
    if number < minimum:
        raise WallarooParameterError(
            f"{label} {value!r}: must be at least {minimum}")
    return number


def _broker(host, port, label: str, whole) -> tuple[str, str]:
    host = str(host).strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() for c in host):
        raise WallarooParameterError(
            f"{label} {whole!r}: broker host {host!r} is not a host name or "
            f"address")
    if isinstance(port, bool) or not isinstance(port, (str, int)):
        raise WallarooParameterError(
            f"{label} {whole!r}: broker port {port!r} is not a port number")
    port = str(port).strip()
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise WallarooParameterError(
            f"{label} {whole!r}: broker port {port!r} is not a port number "
            f"(1-65535)")
    return host, port


def _split_broker(text: str, label: str, whole) -> tuple[str, str]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1:] if end > 0 else None
        if rest is None or (rest and not rest.startswith(":")):
            raise WallarooParameterError(
                f"{label} {whole!r}: {text!r} is not HOST[:PORT] (write an "
                f"IPv6 address as [ADDRESS]:PORT)")
        return _broker(text[1:end], rest[1:] if rest else DEFAULT_PORT,
                       label, whole)
    if text.count(":") > 1:
        raise WallarooParameterError(
            f"{label} {whole!r}: {text!r} is not HOST[:PORT] (write an IPv6 "
            f"address as [ADDRESS]:PORT)")
    host, sep, port = text.partition(":")
    return _broker(host, port if sep else DEFAULT_PORT, label, whole)


def parse_brokers(text: str, label: str) -> list[tuple[str, str]]:
    """``"h1:p1,h2"`` -> ``[("h1", "p1"), ("h2", "9092")]``."""
    if not isinstance(text, str) or not text.strip():
        raise WallarooParameterError(
            f"{label} {text!r}: no broker given; brokers are "
            f"HOST[:PORT][,HOST[:PORT]...], e.g. 127.0.0.1:9092")
    out = []
    for part in text.split(","):
        if not part.strip():
            raise WallarooParameterError(
                f"{label} {text!r}: an empty broker between commas; brokers "
                f"are HOST[:PORT][,HOST[:PORT]...], e.g. 127.0.0.1:9092")
        out.append(_split_broker(part, label, text))
    return out


def brokers(value, label: str) -> list[tuple[str, str]]:
    """A list of ``(host, port)`` str pairs from any of the forms users
    write: ``[("h", "9092"), ...]`` (ports may be ints), ``["h:9092", "h2"]``
    or ``"h:9092,h2"``.  A port left out is 9092."""
    if isinstance(value, str):
        return parse_brokers(value, label)
    if (isinstance(value, tuple) and len(value) == 2
            and isinstance(value[0], str) and ":" not in value[0]
            and (isinstance(value[1], int) or str(value[1]).isdigit())):
        raise WallarooParameterError(
            f"{label} {value!r}: brokers are a list of (host, port) pairs; "
            f"write [{value!r}]")
    if not isinstance(value, (list, tuple)) or not value:
        raise WallarooParameterError(
            f"{label} {value!r}: brokers are a non-empty list of (host, port) "
            f"pairs, e.g. [('127.0.0.1', '9092')]")
    out = []
    for item in value:
        if isinstance(item, str):
            out.extend(parse_brokers(item, label))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            out.append(_broker(item[0], item[1], label, value))
        else:
            raise WallarooParameterError(
                f"{label} {value!r}: {item!r} is neither a (host, port) pair "
                f"nor a 'HOST[:PORT]' string")
    return out


def checked_source_config(cfg: KafkaSourceConfig) -> KafkaSourceConfig:
    """A new ``KafkaSourceConfig`` with every value checked and normalized
    (the decoder is passed on as it is)."""
    return KafkaSourceConfig(
        topic(cfg.topic, "KafkaSourceConfig topic"),
        brokers(cfg.brokers, "KafkaSourceConfig brokers"),
        log_level(cfg.log_level, "KafkaSourceConfig log_level"),
        cfg.decoder)


def checked_sink_config(cfg: KafkaSinkConfig) -> KafkaSinkConfig:
    """A new ``KafkaSinkConfig`` with every value checked and normalized
    (the encoder is passed on as it is)."""
    return KafkaSinkConfig(
        topic(cfg.topic, "KafkaSinkConfig topic"),
        brokers(cfg.brokers, "KafkaSinkConfig brokers"),
        log_level(cfg.log_level, "KafkaSinkConfig log_level"),
        integer(cfg.max_produce_buffer_ms,
                "KafkaSinkConfig max_produce_buffer_ms", 0),
        integer(cfg.max_message_size, "KafkaSinkConfig max_message_size", 1),
        cfg.encoder)
