"""Mutual authentication on a worker's control and data ports (DESIGN.md
§6 "Authentication"): an HMAC-SHA256 challenge on the cluster secret,
before anything is deserialized.  Until it succeeds only short, bounded
text lines are read; a stranger is logged with its address and dropped.

    server: WALLAROO-PEER 1 <server name> <server nonce>\n
    client: <client name> <client nonce> <proof>\n
            proof = hmac(secret, "client|" sn "|" cn "|" client name "|" server name)
    server: OK <hmac(secret, "server|" cn "|" sn "|" server name "|" client name)>\n

(sn, cn: the server's and the client's nonce, 32 random bytes in hex; names
use the stream-name alphabet; every MAC in lowercase hex.)  Each side proves
it holds the secret without sending it; a recorded exchange cannot be
replayed (the other side's nonce is fresh), and a client that expects a
given worker checks the server's name before it sends its proof.

The handshake also gives both sides a **session key**,
``hmac(secret, "session|" sn "|" cn)``, that authenticates what follows on
the connection (``Session``): a man in the middle who relays the handshake
between two real workers still cannot change or add a byte they act on.
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


def _mac(secret: bytes, role: bytes, *fields: bytes) -> bytes:
    return hmac.new(secret, b"|".join((role,) + fields),
                    hashlib.sha256).hexdigest().encode()


TAG_SIZE = 16  # bytes of a truncated HMAC-SHA256 tag


class Session:
    """What authenticates a connection after the handshake: sealed lines
    (``<text> <tag>\n``) and tags over binary payloads, under the session
    key.  Lines and payloads carry their own labels, so nothing from one
    place verifies in another."""

    def __init__(self, secret: bytes, server_nonce: bytes, client_nonce: bytes):
        self.key = hmac.new(secret, b"session|" + server_nonce + b"|" + client_nonce,
                            hashlib.sha256).digest()

    def _tag(self, label: bytes, data) -> bytes:
        h = hmac.new(self.key, label, hashlib.sha256)
        h.update(data)
        return h.digest()[:TAG_SIZE]

    def seal(self, text: bytes) -> bytes:
        """One line: the text and its tag."""
        return text + b" " + self._tag(b"line|", text).hex().encode() + b"\n"

    def open(self, line: bytes) -> bytes:
        """The text of a sealed line (without its newline); AuthError if
        its tag does not verify."""
        text, _, tag = line.rpartition(b" ")
        if not hmac.compare_digest(tag, self._tag(b"line|", text).hex().encode()):
            raise AuthError(f"a line that does not verify under the session key: "
                            f"{line[:60]!r}")
        return text

    def tag(self, seq: int, data) -> bytes:
        """The tag of the ``seq``-th binary payload of this connection."""
        h = hmac.new(self.key, b"payload|" + seq.to_bytes(8, "big"), hashlib.sha256)
        h.update(data)
        return h.digest()[:TAG_SIZE]

    def verify(self, seq: int, data, tag: bytes) -> bool:
        return hmac.compare_digest(self.tag(seq, data), tag)


async def read_line(stream: trio.abc.Stream, buf: bytearray,
                    limit: int = MAX_LINE) -> bytes:
    """One line of at most ``limit`` bytes; what follows it stays in ``buf``."""
    while b"\n" not in buf:
        if len(buf) > limit:
            raise AuthError("a line longer than the handshake allows")
        more = await stream.receive_some(max(MAX_LINE, min(limit, 65536)))
        if not more:
            raise AuthError("closed during the handshake")
        buf += more
    i = buf.index(b"\n")
    line = bytes(buf[:i])
    del buf[:i + 1]
    return line


async def accept(stream: trio.abc.Stream, secret: bytes, me: str,
                 buf: bytearray) -> tuple[str, Session]:
    """The server's side: the authenticated client's name, and the session."""
    nonce = secrets.token_hex(32).encode()
    me_b = me.encode()
    with trio.fail_after(TIMEOUT):
        await stream.send_all(PREFIX + me_b + b" " + nonce + b"\n")
        parts = (await read_line(stream, buf)).split(b" ")
    if len(parts) != 3 or not NAME.fullmatch(parts[0]) or not NONCE.fullmatch(
            parts[1]) or not MAC.fullmatch(parts[2]):
        raise AuthError("not a worker of this cluster (a malformed handshake)")
    name, their_nonce, mac = parts
    if not hmac.compare_digest(mac, _mac(secret, b"client", nonce, their_nonce,
                                         name, me_b)):
        raise AuthError(f"{name.decode()!r} does not hold the cluster secret")
    await stream.send_all(b"OK " + _mac(secret, b"server", their_nonce, nonce,
                                        me_b, name) + b"\n")
    return name.decode(), Session(secret, nonce, their_nonce)


async def connect(stream: trio.abc.Stream, secret: bytes, me: str,
                  buf: bytearray, expect: str | None = None) -> tuple[str, Session]:
    """The client's side: the authenticated server's name, and the session.
    With ``expect``, a server with another name is refused before this side
    proves anything."""
    me_b = me.encode()
    with trio.fail_after(TIMEOUT):
        hello = await read_line(stream, buf)
        if not hello.startswith(PREFIX):
            raise AuthError(f"not a Wallaroo worker's port (it said {hello[:60]!r})")
        parts = hello[len(PREFIX):].split(b" ")
        if len(parts) != 2 or not NAME.fullmatch(parts[0]) or not NONCE.fullmatch(
                parts[1]):
            raise AuthError("a malformed handshake from the server")
        server, nonce = parts
        if expect is not None and server != expect.encode():
            raise AuthError(f"this port is worker {server.decode()!r}, not "
                            f"{expect!r}")
        mine = secrets.token_hex(32).encode()
        await stream.send_all(me_b + b" " + mine + b" "
                              + _mac(secret, b"client", nonce, mine, me_b, server)
                              + b"\n")
        answer = await read_line(stream, buf)
    if not answer.startswith(b"OK ") or not hmac.compare_digest(
            answer[3:], _mac(secret, b"server", mine, nonce, server, me_b)):
        raise AuthError(f"worker {server.decode()!r} does not hold the cluster "
                        f"secret, or refused ours ({answer[:60]!r})")
    return server.decode(), Session(secret, nonce, mine)


async def accept_request(stream: trio.abc.Stream, secret: bytes, me: str, log,
                         port: str, limit: int = MAX_LINE):
    """The server side of a control or data port connection: authenticate
    the client and read its first sealed line.  Returns ``(peer, name,
    session, line, buf)`` (``peer``: the client's address; ``buf``: what was
    read beyond the line), or None once the
    connection is logged (naming ``port`` and the address) and closed."""
    try:
        peer = "{}:{}".format(*stream.socket.getpeername()[:2])
    except (OSError, AttributeError):
        peer = "unknown"
    buf = bytearray()
    try:
        name, session = await accept(stream, secret, me, buf)
        with trio.fail_after(TIMEOUT):
            line = session.open(await read_line(stream, buf, limit))
    except (AuthError, trio.TooSlowError, trio.BrokenResourceError,
            trio.ClosedResourceError, OSError) as e:
        log.warning("%s: dropped a connection from %s: %s", port, peer,
                    e if str(e) else type(e).__name__)
        await trio.aclose_forcefully(stream)
        return None
    return peer, name, session, line, buf
