"""Mutual authentication on a worker's control and data ports (DESIGN.md
§6 "Authentication"): an HMAC-SHA256 challenge on the cluster secret,
before anything is deserialized.  Until it succeeds only short, bounded
text lines are read; a stranger is logged with its address and dropped.

    server: WALLAROO-PEER 1 <server name> <server nonce>\\n
    client: <client name> <client nonce> <hmac(secret, "client"|server nonce|client name)>\\n
    server: OK <hmac(secret, "server"|client nonce|server name)>\\n

Nonces are 32 random bytes in hex; names use the stream-name alphabet.
Each side proves it holds the secret without sending it, and a recorded
exchange cannot be replayed (the other side's nonce is fresh).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets

import trio

PREFIX = b"WALLAROO-PEER 1 "
NAME = re.compile(rb"[A-Za-z0-9._:-]{1,255}")
NONCE = re.compile(rb"[0-9a-f]{64}")
MAC = re.compile(rb"[0-9a-f]{64}")
MAX_LINE = 600
TIMEOUT = 10.0


class AuthError(Exception):
    """The peer did not prove it holds the cluster secret."""


def load_secret(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise AuthError(f"cannot read the cluster secret {path}: "
                        f"{e.strerror or e}") from None
    if len(secret) < 16:
        raise AuthError(f"the cluster secret in {path} is too short (at least "
                        f"16 bytes; e.g. `openssl rand -hex 32 > {path}`)")
    return secret


def create_secret(path: str) -> bytes:
    """A new random secret in a 0600 file (one host: the supervisor's)."""
    secret = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret + b"\n")
    finally:
        os.close(fd)
    return secret


def _mac(secret: bytes, role: bytes, nonce: bytes, name: bytes) -> bytes:
    return hmac.new(secret, role + b"|" + nonce + b"|" + name,
                    hashlib.sha256).hexdigest().encode()


async def read_line(stream: trio.abc.Stream, buf: bytearray) -> bytes:
    """One line of at most MAX_LINE bytes; what follows it stays in ``buf``."""
    while b"\n" not in buf:
        if len(buf) > MAX_LINE:
            raise AuthError("a line longer than the handshake allows")
        more = await stream.receive_some(MAX_LINE)
        if not more:
            raise AuthError("closed during the handshake")
        buf += more
    i = buf.index(b"\n")
    line = bytes(buf[:i])
    del buf[:i + 1]
    return line


async def accept(stream: trio.abc.Stream, secret: bytes, me: str,
                 buf: bytearray) -> str:
    """The server's side; returns the authenticated client's name."""
    nonce = secrets.token_hex(32).encode()
    with trio.fail_after(TIMEOUT):
        await stream.send_all(PREFIX + me.encode() + b" " + nonce + b"\n")
        parts = (await read_line(stream, buf)).split(b" ")
    if len(parts) != 3 or not NAME.fullmatch(parts[0]) or not NONCE.fullmatch(
            parts[1]) or not MAC.fullmatch(parts[2]):
        raise AuthError("not a worker of this cluster (a malformed handshake)")
    name, their_nonce, mac = parts
    if not hmac.compare_digest(mac, _mac(secret, b"client", nonce, name)):
        raise AuthError(f"{name.decode()!r} does not hold the cluster secret")
    await stream.send_all(b"OK " + _mac(secret, b"server", their_nonce,
                                        me.encode()) + b"\n")
    return name.decode()


async def connect(stream: trio.abc.Stream, secret: bytes, me: str,
                  buf: bytearray) -> str:
    """The client's side; returns the authenticated server's name."""
    with trio.fail_after(TIMEOUT):
        hello = await read_line(stream, buf)
        if not hello.startswith(PREFIX):
            raise AuthError(f"not a Wallaroo worker's port (it said {hello[:60]!r})")
        parts = hello[len(PREFIX):].split(b" ")
        if len(parts) != 2 or not NAME.fullmatch(parts[0]) or not NONCE.fullmatch(
                parts[1]):
            raise AuthError("a malformed handshake from the server")
        server, nonce = parts
        mine = secrets.token_hex(32).encode()
        await stream.send_all(me.encode() + b" " + mine + b" "
                              + _mac(secret, b"client", nonce, me.encode()) + b"\n")
        answer = await read_line(stream, buf)
    if not answer.startswith(b"OK ") or not hmac.compare_digest(
            answer[3:], _mac(secret, b"server", mine, server)):
        raise AuthError(f"worker {server.decode()!r} does not hold the cluster "
                        f"secret, or refused ours ({answer[:60]!r})")
    return server.decode()
