"""Shared by the sender and the receiver: addresses, header formats, errors."""

from __future__ import annotations

import struct
import sys

if sys.version_info < (3, 11):  # pragma: no cover - trio's dependency on 3.10
    from exceptiongroup import BaseExceptionGroup as BaseExceptionGroup
else:
    import builtins
    BaseExceptionGroup = builtins.BaseExceptionGroup


class ToolError(Exception):
    """A failure the user must see: the message says what happened, where,
    and what to do.  The CLI prints it and exits 1."""


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} {text!r} is not HOST:PORT (e.g. 127.0.0.1:7010)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        n = int(port)
    except ValueError:
        raise ValueError(f"{what} {text!r}: port {port!r} is not a number") from None
    if not 0 <= n <= 65535:
        raise ValueError(f"{what} {text!r}: port {n} is not in 0..65535")
    return host, n


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def header_struct(fmt: str) -> struct.Struct:
    """The frame length header: a struct format that packs one unsigned or
    signed integer (``>I``, ``<H``, ``!Q`` ...)."""
    try:
        st = struct.Struct(fmt)
    except struct.error as e:
        raise ValueError(f"header format {fmt!r} is not a struct format: {e}") from None
    if st.size == 0:
        raise ValueError(f"header format {fmt!r} has no bytes")
    try:
        values = st.unpack(bytes(st.size))
    except struct.error as e:  # pragma: no cover - size matches by construction
        raise ValueError(f"header format {fmt!r}: {e}") from None
    if len(values) != 1 or not isinstance(values[0], int) or isinstance(values[0], bool):
        raise ValueError(f"header format {fmt!r} must hold exactly one integer "
                         f"(e.g. '>I' for a 4-byte big-endian length)")
    return st


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"
