"""A worker's control port: authenticated (``connectors.auth``) one-line
requests, one JSON line back, both sealed with the session key.

    STATUS\\n    this worker's status (``wallaroo status``)
    MEMBERS\\n   the cluster's members with their control and data addresses
    JOIN <name> <control H:P> <data H:P>\\n
                (several hosts, the initializer while the cluster forms) a
                worker joins; the answer comes once every worker has joined:
                the membership, in order
    <VERB> <json>\n
                a verb of ``verbs`` with a JSON body (several hosts'
                rescale: ``host_rescale.py``); a verb may answer with a file:
                a sealed header line ``{"size", "sha256"}``, then the bytes
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from ..connectors import auth


# what asking a control port may raise: it is down or restarting, it closed
# before answering, it does not hold the secret, or the answer is not JSON
ASK_ERRORS = (OSError, auth.AuthError, trio.TooSlowError, trio.BrokenResourceError,
              trio.ClosedResourceError, ValueError)
REQUEST_LIMIT = 64 * 1024  # a request line with its JSON body
FILE_CHUNK = 1 << 20


@dataclass
class FileAnswer:
    """A verb's answer that is a file's bytes (``path``), removed once sent
    when ``remove``."""
    path: str
    remove: bool = True


Verb = Callable[[dict], Awaitable["dict | FileAnswer"]]


class ControlServer:
    def __init__(self, me: str, secret: bytes, log: logging.Logger,
                 status: Callable[[], dict], members: Callable[[], dict],
                 join: Callable[[str, str, str], Awaitable[dict]] | None = None,
                 verbs: dict[str, Verb] | None = None):
        self.me = me
        self.secret = secret
        self.log = log
        self.status = status
        self.members = members
        self.join = join
        self.verbs = dict(verbs or {})
        self.listeners: list[trio.SocketListener] = []
        self.answering = 0  # requests being answered now

    async def answered(self, limit: float) -> None:
        """Wait until no request is being answered (the answer to the one
        that ended move mode has left), ``limit`` seconds at most."""
        with trio.move_on_after(limit):
            while self.answering:
                await trio.sleep(0.005)

    async def bind(self, host: str, port: int) -> tuple[str, int]:
        self.listeners = await trio.open_tcp_listeners(port, host=host)
        return self.listeners[0].socket.getsockname()[:2]

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await trio.serve_listeners(self._handle, self.listeners,
                                   task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        got = await auth.accept_request(stream, self.secret, self.me, self.log,
                                        "control port", REQUEST_LIMIT)
        if got is None:
            return
        _, name, session, line, _ = got
        verb, _, body = line.partition(b" ")
        self.answering += 1
        try:
            if verb.decode("ascii", "replace") in self.verbs:
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    request = None
                if not isinstance(request, dict):
                    answer = {"error": f"{verb.decode()}: the body is not a JSON object"}
                else:
                    try:
                        answer = await self.verbs[verb.decode()](request)
                    except Exception as e:  # noqa: BLE001 - answered, not fatal
                        self.log.exception("control port: %s failed", verb.decode())
                        answer = {"error": f"worker {self.me!r}: {verb.decode()} "
                                           f"failed: {type(e).__name__}: {e}"}
                if isinstance(answer, FileAnswer):
                    await send_file(stream, session, answer)
                    return
            elif line == b"STATUS":
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
            self.answering -= 1
            await trio.aclose_forcefully(stream)


async def send_file(stream, session, answer: FileAnswer) -> None:
    try:
        digest = hashlib.sha256()
        with open(answer.path, "rb") as f:
            while chunk := f.read(FILE_CHUNK):
                digest.update(chunk)
            size = f.tell()
            header = {"size": size, "sha256": digest.hexdigest()}
            await stream.send_all(session.seal(json.dumps(header).encode()))
            f.seek(0)
            while chunk := f.read(FILE_CHUNK):
                await stream.send_all(chunk)
    finally:
        if answer.remove:
            try:
                os.unlink(answer.path)
            except OSError:
                pass


async def fetch_file(address: tuple[str, int], secret: bytes, verb: str,
                     body: dict, dest: str, me: str = "wallaroo-cli",
                     timeout: float = 600.0) -> int:
    """Ask for a file with ``verb``; write it to ``dest`` (fsynced), its
    SHA-256 checked against the sealed header.  Returns its size; an
    error answer raises ``ControlError``."""
    from ..connectors.channel import open_authenticated
    with trio.fail_after(timeout):
        stream, _, session = await open_authenticated(address, secret, me)
        try:
            await stream.send_all(session.seal(
                verb.encode() + b" " + json.dumps(body).encode()))
            buf = bytearray()
            header = json.loads(session.open(
                await auth.read_line(stream, buf, REQUEST_LIMIT)))
            if "error" in header:
                raise ControlError(header["error"])
            size, want = int(header["size"]), header["sha256"]
            digest = hashlib.sha256()
            got = 0
            with open(dest, "wb") as f:
                while True:
                    data = bytes(buf) if buf else await stream.receive_some(FILE_CHUNK)
                    buf.clear()
                    if not data:
                        break
                    f.write(data)
                    digest.update(data)
                    got += len(data)
                    if got >= size:
                        break
                f.flush()
                os.fsync(f.fileno())
        finally:
            await trio.aclose_forcefully(stream)
    if got != size or digest.hexdigest() != want:
        raise ControlError(f"{address[0]}:{address[1]}: the file arrived damaged "
                           f"or cut short ({got} of {size} bytes)")
    return size


class ControlError(Exception):
    """A control request was answered with an error, or failed."""


async def ask_verb(address: tuple[str, int], secret: bytes, verb: str, body: dict,
                   me: str = "wallaroo-cli", timeout: float = 10.0) -> dict:
    """``ask`` with a verb and a JSON body."""
    return await ask(address, secret, f"{verb} {json.dumps(body)}", me, timeout)


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
