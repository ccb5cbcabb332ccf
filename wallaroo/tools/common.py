"""Shared by the sender and the receiver: addresses, header formats, errors."""

from __future__ import annotations

import socket
import struct

import trio

from .._net import format_address as format_address
from .._net import open_listeners

from .._compat import BaseExceptionGroup as BaseExceptionGroup


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


async def listen_or_explain(host: str, port: int) -> list[trio.SocketListener]:
    """``open_listeners``, its failures turned into a ``ToolError`` that says
    what to do."""
    addr = format_address(host, port)
    try:
        return await open_listeners(host, port)
    except socket.gaierror as e:
        raise ToolError(f"cannot resolve {host!r} (in {addr}): "
                        f"{e.strerror or e}; check the host name") from None
    except OSError as e:
        hint = (" (is another receiver running there? pick another port, or "
                "port 0 for a free one)" if e.errno in (98, 48, 10048) else "")
        raise ToolError(f"cannot listen on {addr}: {e.strerror or e}{hint}") from None


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
