"""A worker's control port: authenticated (``connectors.auth``) one-line
requests, one JSON line back, both sealed with the session key.

    STATUS\\n    this worker's status (``wallaroo status``)
    MEMBERS\\n   the cluster's members with their control and data addresses
    JOIN <name> <control H:P> <data H:P>\\n
                (several hosts, the initializer while the cluster forms) a
                worker joins; the answer comes once every worker has joined:
                the membership, in order
"""

from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable

import trio

from ..connectors import auth


class ControlServer:
    def __init__(self, me: str, secret: bytes, log: logging.Logger,
                 status: Callable[[], dict], members: Callable[[], dict],
                 join: Callable[[str, str, str], Awaitable[dict]] | None = None):
        self.me = me
        self.secret = secret
        self.log = log
        self.status = status
        self.members = members
        self.join = join
        self.listeners: list[trio.SocketListener] = []

    async def bind(self, host: str, port: int) -> tuple[str, int]:
        self.listeners = await trio.open_tcp_listeners(port, host=host)
        return self.listeners[0].socket.getsockname()[:2]

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await trio.serve_listeners(self._handle, self.listeners,
                                   task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        got = await auth.accept_request(stream, self.secret, self.me, self.log,
                                        "control port")
        if got is None:
            return
        _, name, session, line, _ = got
        try:
            if line == b"STATUS":
                answer = self.status()
            elif line == b"MEMBERS":
                answer = self.members()
            elif line.startswith(b"JOIN ") and self.join is not None:
                parts = line.decode("ascii", "replace").split(" ")
                if len(parts) != 4:
                    answer = {"error": "JOIN <name> <control> <data>"}
                else:
                    answer = await self.join(parts[1], parts[2], parts[3])
            else:
                answer = {"error": f"unknown request {line[:40]!r}"}
            await stream.send_all(session.seal(json.dumps(answer).encode()))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def ask(address: tuple[str, int], secret: bytes, request: str,
              me: str = "wallaroo-cli", timeout: float = 10.0) -> dict:
    """Send one request to a worker's control port; its JSON answer."""
    from ..connectors.channel import open_authenticated
    with trio.fail_after(timeout):
        stream, _, session = await open_authenticated(address, secret, me)
        try:
            await stream.send_all(session.seal(request.encode()))
            data = b""
            while not data.endswith(b"\n"):
                more = await stream.receive_some(65536)
                if not more:
                    raise trio.BrokenResourceError(
                        f"{address[0]}:{address[1]} closed before answering")
                data += more
        finally:
            await trio.aclose_forcefully(stream)
    return json.loads(session.open(data[:-1]))
