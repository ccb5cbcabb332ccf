"""A worker's part in a cluster (DESIGN.md §6): its data port, the channel
to every peer, resumable streams forwarded to their owner, and (one host)
its link to the supervisor.

The engine itself does not know it is in a cluster beyond its routing: the
core sets messages for other workers' key groups aside as peer batches,
which are destinations like sinks; this module gives each peer destination
a ``ChannelSender`` and turns what peers send into inbox input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass, field

import trio

from ..connectors import auth
from ..connectors.channel import ChannelSender, DataServer, open_authenticated
from ..connectors.tcp_sink import OutboxQueue
from ..recovery import ownership
from .control import ControlServer
from .placement import DEFAULT_KEY_GROUPS


@dataclass
class ClusterConfig:
    members: list[str]  # every worker's name, in the cluster's order
    secret: bytes
    data_bind: tuple[str, int] = ("127.0.0.1", 0)  # where this data port listens
    # data address of each peer; on one host the supervisor sends them as
    # workers (re)start, on several they are fixed at formation
    peer_addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    key_groups: int = DEFAULT_KEY_GROUPS
    peer_outbox_max: int = 1 << 30
    supervisor_fd: int | None = None  # one host: the link to the supervisor
    advertise_host: str | None = None  # the host others reach the data port at
    control_bind: tuple[str, int] = ("127.0.0.1", 0)
    # several hosts: every member's {"control", "data"} (saved with the
    # membership in each worker's database)
    addresses: dict | None = None
    # one host, before a rescale (supervisor.py): no sources; at the stop,
    # every partition checkpointed whatever the time, sinks not waited for
    drain_only: bool = False
    # one host, a member the running cluster took (live_members.py): the
    # whole membership to start with, when its database has none
    membership: dict | None = None


class ClusterSide:
    def __init__(self, worker, config: ClusterConfig):
        self.worker = worker
        self.config = config
        self.log: logging.Logger = worker.log
        self.me = worker.opts.name
        self.senders: dict[int, ChannelSender] = {}
        self._scopes: dict[int, trio.CancelScope] = {}  # each sender's
        self.data_address: tuple[str, int] | None = None
        self.server: DataServer | None = None
        self._link = None  # trio socket to the supervisor
        self._handed: dict[int, trio.MemorySendChannel] = {}
        self._reader = self._limiter = None  # the channels' outbox reader, limiter
        self.rescaler = None  # several hosts: host_rescale.RunningSide

    # -- the destinations ------------------------------------------------
    def make_senders(self, reader, limiter) -> dict[int, ChannelSender]:
        """A channel sender for every peer, its queue at the recovered
        delivery position (peer batches the peer acknowledged)."""
        self._reader, self._limiter = reader, limiter
        for member, name in enumerate(self.config.members):
            if name != self.me:
                self._make_sender(member, name)
        return self.senders

    def _make_sender(self, member: int, name: str) -> ChannelSender:
        core = self.worker.core
        reader = self._reader
        dest = core.peer_dest(member)
        # without a store the whole bound is in memory (DESIGN.md §6)
        memory = self.worker.opts.sink_queue_bytes if reader is not None else \
            self.config.peer_outbox_max
        queue = OutboxQueue(dest, memory, self.config.peer_outbox_max,
                            reader, core.delivered.get(dest, 0))
        queue.produced = core.next_out_seq.get(dest, 0)
        if reader is not None and queue.produced > queue.delivered:
            queue.spilled_from = queue.delivered
        sender = self.senders[dest] = ChannelSender(
            name, dest, queue, core.note_delivered, self.log, self.me,
            self.config.secret, self.address_of, self.fingerprint(),
            self._limiter)
        return sender

    def add_members(self, members: list[str], nursery,
                    addresses: dict | None = None) -> dict[int, ChannelSender]:
        """The cluster grew to ``members`` (the core took them:
        live_members.py): a channel to each new member, started in
        ``nursery``, and the fingerprint every channel handshake shows
        (the membership is in it) updated.  ``addresses`` (several hosts):
        every member's, as the membership now saves them."""
        old = len(self.config.members)
        self.config.members = list(members)
        if addresses is not None:
            from .host_rescale import split
            self.config.addresses = dict(addresses)
            for name in members[old:]:
                self.config.peer_addresses[name] = split(
                    addresses[name]["data"])
        core = self.worker.core
        made = {core.peer_dest(i): self._make_sender(i, name)
                for i, name in enumerate(members) if i >= old and name != self.me}
        self._show_membership(members)
        for sender in made.values():
            nursery.start_soon(self._run_sender, sender)
        return made

    def remove_members(self, members: list[str]) -> list[int]:
        """The cluster's last members left (the core dropped them, their
        channels drained: live_members.py): their channels stop, and the
        fingerprint every handshake shows is updated.  Returns the
        destinations gone."""
        self.config.members = list(members)
        core = self.worker.core
        gone = [d for d in self.senders if d >= core.destinations]
        for d in gone:
            sender = self.senders.pop(d)
            scope = self._scopes.pop(d, None)
            if scope is not None:
                scope.cancel()
            self.config.peer_addresses.pop(sender.peer, None)
            if self.config.addresses is not None:  # several hosts
                self.config.addresses.pop(sender.peer, None)
        self._show_membership(members)
        return gone

    def _show_membership(self, members: list[str]) -> None:
        """Every channel handshake shows the fingerprint of the membership
        now (it is in it); the data port takes batches of ``members``."""
        fp = self.fingerprint()
        for sender in self.senders.values():
            sender.fingerprint = fp
        if self.server is not None:
            self.server.fingerprint = fp.encode()
            self.server.members = set(members)

    async def _run_sender(self, sender: ChannelSender) -> None:
        """A channel, until it ends or its member leaves (remove_members)."""
        with trio.CancelScope() as scope:
            self._scopes[sender.spec.index] = scope
            await sender.run()

    def fingerprint(self) -> str:
        """What two workers must agree on to exchange peer batches: the
        application's pipelines, steps and states, and the membership."""
        app = self.worker.app
        body = {"application": app.fingerprint(),
                "steps": [[s.name for s in p.steps] for p in app.pipelines],
                "members": self.config.members,
                "key_groups": self.config.key_groups}
        placement = self.worker.core.placement
        if placement is not None:
            owners = placement.owner_names()
            membership = self.worker.core.membership or {}
            if "rescale_owners" in membership:  # moved live since (live_moves.py)
                base = membership["rescale_owners"]
                owners = ownership.rule_owners(placement.members, placement.key_groups) \
                    if base is None else ownership.decode(
                        base, placement.key_groups, placement.members)
            if owners != ownership.rule_owners(placement.members,
                                               placement.key_groups):
                # a map saved by a rescale: two workers must route alike
                body["owners"] = ownership.encode(owners)
            slots = placement.stream_owner_names()
            if slots is not None:  # and resumable clients alike
                body["stream_owners"] = ownership.encode(slots)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]

    def write_own_entry(self, directory: str, application: str, state: str,
                        sources: list[str]) -> None:
        """``cluster.json`` (as the supervisor writes it, with this worker
        alone; ``several_hosts`` tells ``wallaroo status`` to ask it for the
        others), replaced atomically."""
        write_own_entry(directory, application, self.me, state,
                        self.control_address, self.data_address, sources)

    def members(self) -> dict:
        """The membership, with every worker's addresses as known here."""
        addresses = self.config.addresses or {}
        body = {"members": self.config.members, "me": self.me,
                "addresses": addresses}
        plan = None if self.rescaler is None else (self.rescaler.current
                                                    or self.rescaler.draining)
        if plan is not None:  # as move mode answers (the CLI waits on it)
            body["rescale"] = plan.id
        return body

    async def _join_after_formation(self, who: str, control: str, data: str) -> dict:
        """A JOIN once the cluster is formed: a member restarted without
        its saved membership, or a stranger.  Refused, saying why."""
        members = self.config.members
        if who in members:
            return {"error": f"the cluster {members} is formed and {who!r} is a "
                             f"member: it rejoins from the membership saved in "
                             f"its --resilience-dir database, and this run has "
                             f"none (without --resilience-dir a worker that "
                             f"stopped cannot rejoin: restart every worker)"}
        return {"error": f"the cluster is formed ({members}); {who!r} is not a "
                         f"member"}

    def status(self) -> dict:
        st = self.worker.status()
        if self.rescaler is not None:
            st.update(self.rescaler.status_extra())
        return st

    def address_of(self, name: str) -> tuple[str, int] | None:
        return self.config.peer_addresses.get(name)

    # -- the data port -----------------------------------------------------
    async def start(self, nursery: trio.Nursery) -> tuple[str, int]:
        w = self.worker
        self.server = DataServer(self.me, self.config.secret, w.inbox, w.registry,
                                 w.core.peer_source, self.log, self.forwarded,
                                 self.fingerprint(), tuple(self.config.members))
        host, port = await self.server.bind(*self.config.data_bind)
        host = self.config.advertise_host or host
        self.data_address = (host, port)
        nursery.start_soon(self.server.serve)
        verbs = {}
        if self.config.addresses is not None and self.config.supervisor_fd is None:
            from .host_rescale import RunningSide  # several hosts: rescales
            self.rescaler = RunningSide(self, w.store.directory
                                        if w.store.durable else None)
            self.rescaler.nursery = nursery
            verbs = self.rescaler.verbs()
            self.rescaler.live.resume_shares()
            self.rescaler.leaving.watch()  # a worker leaving live, restarted
        if w.store.durable and w.live is not None:  # live moves (live_control.py)
            verbs.update(w.live.verbs())
        self.control = ControlServer(self.me, self.config.secret, self.log,
                                     status=self.status, members=self.members,
                                     join=self._join_after_formation, verbs=verbs)
        chost, cport = await self.control.bind(*self.config.control_bind)
        self.control_address = (self.config.advertise_host or chost, cport)
        nursery.start_soon(self.control.serve)
        for sender in self.senders.values():
            nursery.start_soon(self._run_sender, sender)
        if self.config.supervisor_fd is not None:
            sock = socket.socket(fileno=self.config.supervisor_fd)
            self._link = trio.socket.from_stdlib_socket(sock)
            nursery.start_soon(self._supervisor_link)
        return self.data_address

    async def forwarded(self, pipeline: int, stream, label: str) -> None:
        """A client connection another worker forwarded: its resumable
        stream is ours."""
        source = self.worker.sources[pipeline]
        await source.handle_forwarded(stream, label)

    # -- resumable streams: served by their owner --------------------------
    def owner_of(self, pipeline: str, stream: str) -> str | None:
        """The owner of a resumable stream, when it is another worker."""
        p = self.worker.core.placement
        owner = p.members[p.owner_of_stream(pipeline, stream)]
        return None if owner == self.me else owner

    async def forward(self, owner: str, pipeline: int, client: str,
                      first_bytes: bytes, client_stream) -> None:
        """Pass a client connection's bytes to the owner of its stream and
        back, until either side closes."""
        address = self.address_of(owner)
        if address is None:
            raise OSError(f"the address of worker {owner!r} is not known yet")
        # a stale address now used by another worker is refused
        peer, _, session = await open_authenticated(address, self.config.secret,
                                                    self.me, expect=owner)
        try:
            await peer.send_all(session.seal(b"FORWARD %d %s" % (pipeline,
                                                                client.encode())))
            await peer.send_all(first_bytes)

            async def pump(src, dst, scope):
                try:
                    while True:
                        data = await src.receive_some(65536)
                        if not data:
                            break
                        await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                scope.cancel()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client_stream, peer, nursery.cancel_scope)
                nursery.start_soon(pump, peer, client_stream, nursery.cancel_scope)
        finally:
            await trio.aclose_forcefully(peer)

    # -- one host: the supervisor ------------------------------------------
    async def _supervisor_link(self) -> None:
        """Messages from the supervisor: peers' addresses, client
        connections handed over (with their descriptor), stop."""
        while True:
            try:
                data, ancdata, _, _ = await self._link.recvmsg(
                    65536, socket.CMSG_SPACE(16 * 4))
            except OSError as e:
                self.log.error("the link to the supervisor broke: %s; stopping", e)
                self.worker.stop_mode = "orphaned"
                self.worker.request_stop()
                return
            if not data:
                self.log.warning("the supervisor is gone; stopping")
                self.worker.stop_mode = "orphaned"
                self.worker.request_stop()
                return
            fds = []
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(int.from_bytes(cdata[i:i + 4], sys.byteorder, signed=True)
                               for i in range(0, len(cdata) - len(cdata) % 4, 4))
            msg = json.loads(data)
            if "peers" in msg:
                self.config.peer_addresses.update(
                    {k: tuple(v) for k, v in msg["peers"].items()})
            if "connection" in msg and fds:
                sock = socket.socket(fileno=fds[0])
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                self.worker.sources[msg["connection"]].hand(stream)
            if msg.get("drain"):  # a rescale: no new input from now on
                self.worker.close_sources()
            if msg.get("stop"):
                if msg["stop"] in ("rescale", "drained"):  # worker.stop_mode
                    self.worker.stop_mode = msg["stop"]
                self.worker.request_stop()

    async def tell_supervisor(self, msg: dict) -> None:
        if self._link is not None:
            try:
                await self._link.send(json.dumps(msg).encode())
            except OSError:
                pass


def write_own_entry(directory: str, application: str | None, me: str, state: str,
                    control, data, sources: list[str], **extra) -> None:
    """A several-host worker's ``cluster.json``: its own entry alone
    (``several_hosts`` tells ``wallaroo status`` to ask it for the others),
    replaced atomically; ``extra``: more fields of the entry."""
    c, d = control, data
    body = {"version": 1, "application": application, "several_hosts": True,
            "workers": [{"name": me, "pid": os.getpid(), "state": state,
                         "control": f"{c[0]}:{c[1]}" if c else None,
                         "data": f"{d[0]}:{d[1]}" if d else None,
                         "sources": sources, "metrics": None, "restarts": 0,
                         **extra}]}
    path = os.path.join(directory, "cluster.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


GROWN_FILE = "membership.json"  # in the resilience directory (one host)


def grown_membership(directory: str | None, members: list[str]) -> dict | None:
    """The membership a running one-host cluster grew to, as its supervisor
    left it for the new members (None: none, or of other members)."""
    if not directory:
        return None
    try:
        with open(os.path.join(directory, GROWN_FILE)) as f:
            body = json.load(f)
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) and body.get("members") == members else None


def load_secret(path: str) -> bytes:
    return auth.load_secret(path)
