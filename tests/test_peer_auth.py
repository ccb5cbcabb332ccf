"""The handshake between workers and what authenticates the connection
after it (``wallaroo.connectors.auth``): both sides prove they hold the
secret; a client that expects a given worker proves nothing to another; and
a man in the middle who relays the handshake between two real workers
cannot add or change a line or a peer batch they act on."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from wallaroo.connectors import auth

SECRET = b"a cluster secret of enough length"


async def handshake(secret_client=SECRET, secret_server=SECRET, expect=None):
    client, server = trio.testing.memory_stream_pair()
    out = {}

    async def serve():
        try:
            out["server"] = await auth.accept(server, secret_server, "worker-1",
                                              bytearray())
        except auth.AuthError as e:
            out["server_error"] = e
            await server.aclose()

    async def dial():
        try:
            out["client"] = await auth.connect(client, secret_client, "initializer",
                                               bytearray(), expect)
        except auth.AuthError as e:
            out["client_error"] = e
            await client.aclose()

    async with trio.open_nursery() as n:
        n.start_soon(serve)
        n.start_soon(dial)
    return out


def test_both_sides_authenticate_and_share_a_session_key():
    out = trio.run(handshake)
    (server_name, s_session), (client_name, c_session) = out["client"], out["server"]
    assert (server_name, client_name) == ("worker-1", "initializer")
    assert s_session.key == c_session.key
    line = c_session.seal(b"CHANNEL abc")
    assert s_session.open(line[:-1]) == b"CHANNEL abc"


def test_a_wrong_secret_is_refused():
    out = trio.run(lambda: handshake(secret_client=b"another secret, long enough"))
    assert "server_error" in out and "client" not in out


def test_a_client_expecting_another_worker_proves_nothing():
    async def main():
        client, server = trio.testing.memory_stream_pair()
        await server.send_all(auth.PREFIX + b"worker-2 " + b"a" * 64 + b"\n")
        with pytest.raises(auth.AuthError, match="is worker 'worker-2', not 'worker-1'"):
            await auth.connect(client, SECRET, "initializer", bytearray(),
                               expect="worker-1")
        await client.aclose()
        # nothing was sent back: not even the client's nonce or proof
        assert await server.receive_some(1000) == b""
    trio.run(main)


def test_a_relayed_handshake_gives_the_relay_nothing_to_inject():
    """The relay passes the handshake through unchanged (both real workers
    authenticate each other) but does not know the session key: a line or a
    peer batch it adds or changes does not verify."""
    out = trio.run(handshake)
    _, server_session = out["server"]
    forged_key = auth.Session(b"not the secret at all, but long", b"a" * 64, b"b" * 64)
    with pytest.raises(auth.AuthError):
        server_session.open(forged_key.seal(b"CHANNEL abc")[:-1])
    with pytest.raises(auth.AuthError):
        server_session.open(b"CHANNEL abc " + b"0" * 32)
    _, client_session = out["client"]
    batch = b"\x00\x00\x00\x01\x00\x00\x00\x03Gxy"
    tag = client_session.tag(7, batch)
    assert server_session.verify(7, batch, tag)
    assert not server_session.verify(7, batch[:-1] + b"z", tag)  # changed
    assert not server_session.verify(8, batch, tag)  # replayed at another place
    # a line sealed for one connection does not open on another
    other = trio.run(handshake)["server"][1]
    with pytest.raises(auth.AuthError):
        other.open(client_session.seal(b"ACK 5")[:-1])
