"""Addresses and listeners shared by the tools and the receiver library.

Imports nothing from the runtime: the tools and ``wallaroo.receiver`` speak
only the wire formats.
"""

from __future__ import annotations

import socket

import trio


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_address(stream: trio.SocketStream) -> str:
    """``HOST:PORT`` of the other end, or ``"unknown peer"``."""
    try:
        return format_address(*stream.socket.getpeername()[:2])
    except OSError:
        return "unknown peer"


async def open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listen on ``host:port``.  Port 0 opens exactly one socket (one per
    address family would each get a port of their own), IPv4 first.  Raises
    ``socket.gaierror`` or ``OSError`` as the socket calls do."""
    if port != 0:
        return await trio.open_tcp_listeners(port, host=host)
    infos = await trio.socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM,
                                          flags=socket.AI_PASSIVE)
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    family, type_, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        await sock.bind(sockaddr)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return [trio.SocketListener(sock)]


def os_error_reason(e: BaseException) -> str:
    """The operating system's words for why a socket call failed, found
    through trio's wrappers (``all attempts to connect ... failed`` hides
    the per-attempt errors in its cause): e.g. "Connection refused", "Too
    many open files"."""
    seen = set()
    todo = [e]
    while todo:
        x = todo.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno:
            import os
            return os.strerror(x.errno)
        todo.extend(getattr(x, "exceptions", ()) or ())
        for nxt in (x.__cause__, x.__context__):
            if nxt is not None:
                todo.append(nxt)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
