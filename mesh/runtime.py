"""The mesh runtime: one gossip `Node` driven on trio, its documents durable in SQLite.

`open_mesh(config)` is the embedding API's entry point: an async context manager that
loads the node's documents from its data directory, binds the transport, joins the mesh
(static seeds, and mDNS on the configured interfaces) and yields a `Mesh`. Leaving the
block leaves the mesh gracefully: the departure is announced (members see `left`, not
`dead`, so nothing fails over), every queued write is flushed to disk, and the sockets
close, all within `MeshConfig.leave_timeout` plus the transport's flush timeout. A
database file SQLite cannot read at all is, by `MeshConfig.on_unreadable_store`, either
moved into `DATA_DIR/unreadable-<UTC time>/` (the node starts empty, is not ready until
its first catch-up, and refills from peers) or raised as `UnreadableStore`.

How the parts meet (all on the one trio thread, which is the only thread that touches a
pycrdt document):

* receive task: frames from the `Transport` are opened by the `FrameCodec` (a bad frame
  is counted in `codec.rejected` and dropped) and fed to `Node.receive`;
* timer task: calls `Node.tick` at `Node.next_deadline()`, woken early whenever a call
  may have moved the deadline;
* change pump: every transaction on a document, local or remote, is observed by the
  `DurableReplica` and submitted to the store's group commit; local ones also start a
  rumour (`Node.local_update`), remote ones were already forwarded by the replicator;
* durability task: awaits the store's batches in order, records each document's durable
  state vector, and calls `Node.on_durable` so replica acks carry only what is on disk;
* discovery task (mDNS): a found peer is contacted with a membership push-pull
  (`Node.join`); mDNS never decides liveness, membership does.

Time: `trio.current_time()` (monotonic) drives the protocol; `time.time()` (wall clock)
stamps sealed frames, whose replay window compares wall clocks across nodes.

Commit levels (`Session.commit`): with no `replicas`, return once this node's store has
fsync'd every write made so far to the session; with `replicas=W`, also wait until W
other peers have reported (in `ReplicaAck`s or anti-entropy vectors) a durable state
vector covering the session's state vector at the call; `replicas="all"` waits for every
member alive or suspect at each check. A timeout raises `CommitTimeout` and rolls nothing
back: the write stays and keeps spreading.

Nothing is unbounded: the transport bounds its queues, subscribers get a bounded buffer
each (events that do not fit are dropped and counted in `Subscription.dropped`), the
store's group commit is bounded by what writers submit.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import pycrdt
import trio

from crdt_types.cluster import ClusterState
from crdt_types.errors import (
    BadFrame,
    Closed,
    CommitTimeout,
    LocalError,
    StatemeshError,
    StorageError,
    UnreadableStore,
)
from crdt_types.fingerprint import fingerprint_hex
from crdt_types.ownership import OwnershipTable
from crdt_types.session import SessionState, check_session_id
from gossip.events import (
    MEMBERSHIP_EVENTS,
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
)
from gossip.messages import Ack, Envelope, MembershipSync, MemberUpdate, Nack, Ping, PingReq
from gossip.node import Node, Output
from gossip.replication import ReplicaAcked
from gossip.seal import FrameCodec, Sealer
from mesh.config import MeshConfig
from mesh.failover import Failover
from mesh.ops import Operations
from mesh.replica_store import CLIENT_ID_POOL, DurableReplica
from mesh.storage import AsyncStore, Pending, move_unreadable
from mesh.transport import Transport, parse_address

_log = logging.getLogger("statemesh.peer")

__all__ = [
    "Mesh",
    "MemberAlive",
    "MemberDead",
    "MemberJoined",
    "MemberLeft",
    "MemberReaped",
    "MemberSuspected",
    "MemberUpdated",
    "Session",
    "SessionChanged",
    "Subscription",
    "open_mesh",
]

SESSION_PREFIX = "session/"
# Probe traffic goes as UDP datagrams when it fits one: it is small, loss-tolerant by
# design (SWIM), and must not queue behind a bulk transfer on the TCP connection.
_DATAGRAM_MAX = 1200
_PROBE_TYPES = (Ping, Ack, PingReq, Nack)
# The timer never sleeps longer than this, so a missed wake-up costs at most this much.
_MAX_TIMER_SLEEP = 0.5
EVENT_BUFFER = 1024
# A commit still waiting for replicas after this long re-sends the write (see `_nudge`).
NUDGE_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class SessionChanged:
    """Session `session_id` changed: written here (`local`) or by a peer."""

    session_id: str
    local: bool


class Subscription:
    """A bounded stream of events; `async for ev in sub`. Overflow is dropped and counted."""

    def __init__(self, max_buffer: int) -> None:
        self._send, self._recv = trio.open_memory_channel[object](max_buffer)
        self.dropped = 0

    def _offer(self, event: object) -> bool:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            # A slow subscriber must not stall the protocol nor grow memory: drop.
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def _close(self) -> None:
        self._send.close()

    async def receive(self) -> object:
        """The next event; raises `Closed` once the mesh closed and the buffer is empty."""
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise Closed("the mesh is closed") from None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> object:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None


class Session:
    """A handle on one agent session: read and write `state`, then `commit`."""

    def __init__(self, mesh: Mesh, session_id: str, state: SessionState) -> None:
        self.mesh = mesh
        self.id = session_id
        self.doc_id = SESSION_PREFIX + session_id
        self.state = state

    async def commit(
        self, replicas: int | str | None = None, timeout: float | None = None
    ) -> list[str]:
        """Wait until the writes so far are durable here (and on `replicas` peers); see module doc."""
        self.mesh._authorize_write(self.doc_id)
        self.mesh.replica.check_durable(self.doc_id)  # before its ownership claim is committed
        ops = self.mesh.ops
        if ops is None:
            return await self._replicate(replicas, timeout)
        started = trio.current_time()
        try:
            holders = await self._replicate(replicas, timeout)
        except CommitTimeout:
            ops.commit_observed(replicas, trio.current_time() - started, False)
            raise
        ops.commit_observed(replicas, trio.current_time() - started, True)
        return holders

    async def _replicate(self, replicas: int | str | None, timeout: float | None) -> list[str]:
        # The session's ownership claim must reach the peers that hold its data: a peer
        # holding the session but not the claim finds it unowned when this node dies, and
        # nobody takes it over. So the first commit at a level after a claim also commits
        # the ownership document at that level (later ones find it covered at once).
        if replicas is not None:
            epoch = self.mesh.ownership.epoch_of(self.doc_id)
            if self.mesh._claims_replicated.get(self.doc_id) != (epoch, replicas):
                budget = self.mesh.config.commit_timeout if timeout is None else timeout
                started = trio.current_time()
                await self.mesh.commit("ownership", replicas=replicas, timeout=budget)
                self.mesh._claims_replicated[self.doc_id] = (epoch, replicas)
                timeout = max(0.0, budget - (trio.current_time() - started))
        return await self.mesh.commit(self.doc_id, replicas=replicas, timeout=timeout)

    def fingerprint(self) -> str:
        """The convergence fingerprint (hex) of this session's document."""
        return fingerprint_hex(self.state.doc)

    def __repr__(self) -> str:
        return f"<Session {self.id!r} on {self.mesh.node_id!r}>"


class Mesh:
    """A running mesh node; made by `open_mesh`, valid inside its `async with` block."""

    def __init__(
        self,
        config: MeshConfig,
        store: AsyncStore,
        transport: Transport,
        docs: dict[str, pycrdt.Doc],
        rng: random.Random,
    ) -> None:
        self.config = config
        self.node_id = config.node
        self.store = store
        self.transport = transport
        self.address = config.advertise or transport.address
        if parse_address(self.address)[1] == 0:
            # advertise="host:0" means "this host, the port we bound".
            host, _ = parse_address(self.address)
            self.address = f"{host}:{transport.port}"
        self.replica = DurableReplica(store, docs, on_change=self._changed)
        # Where an unreadable database file was moved at start (open_mesh), else None.
        self.store_recovered_from: str | None = None
        # session doc id -> (epoch, replicas) at which its ownership claim is known held
        self._claims_replicated: dict[str, tuple[int, int | str]] = {}
        # Seeds and addresses given to join(): a node that leaves before it has heard
        # back from them is already a member *there*, so they must hear the leave too.
        self._introduced: set[str] = set(config.seeds)
        self.node = Node(
            self.node_id,
            self.address,
            config.gossip_config(),
            rng,
            self.replica,
            replication=config.replication,
        )
        self.codec = FrameCodec(
            Sealer(
                config.cluster,
                config.keyring,
                self.node_id,
                secrets.randbits(64),  # fresh per process start: nonces must never repeat
                insecure=config.insecure,
            )
        )
        self.http_address: str | None = None
        self.stats: Counter[str] = Counter()
        self.ready = False
        self._closed = False
        self._leaving = False
        self._sessions: dict[str, Session] = {}
        self._cluster: ClusterState | None = None
        self._ownership: OwnershipTable | None = None
        self._subscribers: list[Subscription] = []
        self._last_pending: dict[str, Pending] = {}
        self._last_local: dict[str, bytes] = {}  # per document, for commit nudges
        self._durable_queue: deque[tuple[Pending, str, bytes]] = deque()
        self._durable_wake = trio.Event()
        self._pump_wake = trio.Event()
        self._timer_wake = trio.Event()
        self._acks_changed = trio.Event()
        # Committers wait on their document's event: an ack for one document must not wake
        # every waiting committer (with many concurrent sessions that herd cost most CPU).
        self._doc_acks: dict[str, trio.Event] = {}
        self._pool_wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.storage_error: StorageError | None = None
        self.failover: Failover | None = None  # made by _start (mesh.failover)
        self.ops: Operations | None = None  # made by _start (mesh.ops: health, metrics)

    # --- public API ---------------------------------------------------------------------

    async def session(self, session_id: str) -> Session:
        """Open session `session_id`, creating it if no replica holds it yet."""
        self._check_open()
        check_session_id(session_id)
        handle = self._sessions.get(session_id)
        if handle is not None:
            return handle
        doc_id = SESSION_PREFIX + session_id
        # Ownership plugs in here: the failover work makes opening a session claim it
        # (a higher epoch in the ownership table) and makes `_authorize_write` refuse
        # writes to sessions this node does not own with `NotOwner` / `Fenced`.
        self._claim(doc_id)
        doc = self.replica.doc(doc_id)
        if doc is None:
            client_id = await self.store.new_client_id(doc_id)
            self._check_open()
            # A peer's update may have created it while we drew the id.
            doc = self.replica.doc(doc_id) or self.replica.create(doc_id, client_id)
        handle = self._sessions.get(session_id)
        if handle is None:
            if self.failover is not None:
                state = self.failover.guarded_state(doc_id, session_id, doc)
            else:
                state = SessionState.new(session_id, doc)
            handle = self._sessions[session_id] = Session(self, session_id, state)
        return handle

    def sessions(self) -> list[str]:
        """Ids of every session this replica holds, sorted."""
        n = len(SESSION_PREFIX)
        return sorted(d[n:] for d in self.replica.doc_ids() if d.startswith(SESSION_PREFIX))

    def has_session(self, session_id: str) -> bool:
        """Whether this replica holds session `session_id` (without creating it)."""
        return (SESSION_PREFIX + session_id) in self.replica

    def read_session(self, session_id: str) -> SessionState | None:
        """A read view of a session held here, or None; never creates one."""
        handle = self._sessions.get(session_id)
        if handle is not None:
            return handle.state
        doc = self.replica.doc(SESSION_PREFIX + session_id)
        return None if doc is None else SessionState(doc)

    @property
    def cluster(self) -> ClusterState:
        """The cluster document (settings and sealed secrets), shared by every node."""
        self._check_open()
        if self._cluster is None:
            doc = self.replica.doc("cluster") or self.replica.create("cluster")
            self._cluster = ClusterState(doc)
        return self._cluster

    @property
    def ownership(self) -> OwnershipTable:
        """The ownership table (read it; the failover work writes it)."""
        self._check_open()
        if self._ownership is None:
            doc = self.replica.doc("ownership") or self.replica.create("ownership")
            self._ownership = OwnershipTable(doc)
        return self._ownership

    async def commit(
        self, doc_id: str, replicas: int | str | None = None, timeout: float | None = None
    ) -> list[str]:
        """Wait for durability of `doc_id` here (and on `replicas` peers); returns the peers holding it."""
        self._check_open()
        if replicas is not None and replicas != "all" and not _is_count(replicas):
            raise LocalError(f"replicas must be None, an int >= 0 or 'all', got {replicas!r}")
        if timeout is None:
            timeout = self.config.commit_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise LocalError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if doc_id not in self.replica:
            raise LocalError(f"no document {doc_id!r} on this node")
        self.replica.check_durable(doc_id)  # CorruptRecord while the store cannot honour it
        if self.replica.queued:
            # Let the other tasks that are about to commit queue their writes too, so one
            # pump sends them all in one frame per peer instead of one frame per commit.
            await trio.lowlevel.checkpoint()
        self._pump()
        target = self.replica.state_vector(doc_id)
        deadline = trio.current_time() + timeout
        pending = self._last_pending.get(doc_id)
        if pending is not None:
            with trio.move_on_at(deadline):
                await pending.wait()
            if not pending.done:
                raise CommitTimeout(f"{doc_id}: not durable on this node after {timeout} s")
            if pending.batch.error is not None:
                raise pending.batch.error
            # Record durable vectors (and send the acks) now rather than when the
            # durability task next runs, so what commit reports is what peers are told.
            self._mark_done()
        replicator = self.node.replicator
        nudge_at = trio.current_time() + NUDGE_INTERVAL
        while True:
            holders = replicator.replicas_covering(doc_id, target)
            if replicas is None or replicas == 0:
                return holders
            if replicas == "all":
                missing = set(self.node.membership.live_members()) - set(holders)
                if not missing:
                    return holders
                want = f"all live members (missing {sorted(missing)})"
            elif len(holders) >= replicas:
                return holders
            else:
                want = f"{replicas} replicas (have {len(holders)}: {holders})"
            if self._closed:
                raise Closed("the mesh closed while a commit was waiting")
            changed = self._doc_acks.get(doc_id)
            if changed is None:
                changed = self._doc_acks[doc_id] = trio.Event()
            with trio.move_on_at(min(deadline, nudge_at)):
                await changed.wait()
            now = trio.current_time()
            if now >= deadline:
                raise CommitTimeout(
                    f"{doc_id}: {want} not reached in {timeout} s; the write stays and keeps spreading"
                )
            if now >= nudge_at:
                nudge_at = now + NUDGE_INTERVAL
                self._nudge(doc_id)

    @contextlib.asynccontextmanager
    async def subscribe(self, max_buffer: int = EVENT_BUFFER) -> AsyncIterator[Subscription]:
        """Receive membership events and `SessionChanged` while the block runs."""
        self._check_open()
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise LocalError(f"max_buffer must be a positive int, got {max_buffer!r}")
        sub = Subscription(max_buffer)
        self._subscribers.append(sub)
        try:
            yield sub
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(sub)
            sub._close()

    def join(self, addresses: Iterable[str]) -> None:
        """Contact more peers ("host:port") at runtime, like extra `--join` seeds."""
        self._check_open()
        addresses = list(addresses)
        for address in addresses:
            parse_address(address)
        self._introduced.update(addresses)
        self._emit(self.node.join(trio.current_time(), addresses))

    def members(self) -> list[dict[str, Any]]:
        """Every member this node knows, itself included: node, state, address, incarnation."""
        out = []
        for m in self.node.membership.members.values():
            out.append(
                {
                    "node": m.node,
                    "state": m.state,
                    "address": m.address,
                    "incarnation": m.incarnation,
                }
            )
        out.sort(key=lambda x: x["node"])
        return out

    def documents(self) -> dict[str, str]:
        """{document id: fingerprint (hex)} of every document held here."""
        return {d: self.replica.fingerprint(d).hex() for d in sorted(self.replica.doc_ids())}

    def document(self, doc_id: str) -> dict[str, Any] | None:
        """One document as JSON data: fingerprint, state vector and content; None if unknown."""
        doc = self.replica.doc(doc_id)
        if doc is None:
            return None
        if doc_id == "cluster":
            content: Any = self.cluster.to_dict()
        elif doc_id == "ownership":
            content = self.ownership.to_dict()
        elif doc_id.startswith(SESSION_PREFIX):
            content = SessionState(doc).to_dict()
        else:
            content = None
        return {
            "id": doc_id,
            "fingerprint": self.replica.fingerprint(doc_id).hex(),
            "state_vector": self.replica.state_vector(doc_id).hex(),
            "durable_state_vector": self.replica.durable_state_vector(doc_id).hex(),
            "content": content,
        }

    def status(self) -> dict[str, Any]:
        """What `GET /status` serves: node, cluster, members, documents, started, counters."""
        return {
            "node": self.node_id,
            "cluster": self.config.cluster,
            "address": self.address,
            "http": self.http_address,
            "started": self.ready and not self._leaving,
            "incarnation": self.node.membership.incarnation,
            "members": self.members(),
            "documents": len(self.replica),
            "root": self.node.replicator.root.hex(),
            "bad_frames": dict(self.codec.rejected),
            "frames_accepted": self.codec.accepted,
            "counters": dict(self.stats),
            "store_recovered_from": self.store_recovered_from,
            **({} if self.failover is None else self.failover.status()),
        }

    # --- ownership hook (the failover work fills these in) -----------------------------

    def _claim(self, doc_id: str) -> None:
        """Called when a session is opened: claim it if nobody owns it (mesh.failover)."""
        if self.failover is not None:
            self.failover.claim_on_open(doc_id)

    def _authorize_write(self, doc_id: str) -> None:
        """Called before a commit: raise NotOwner/Fenced for sessions not owned here."""
        if self.failover is not None:
            self.failover.authorize(doc_id)

    def owner_of(self, session_id: str) -> str | None:
        """The node that owns session `session_id` now (any peer can answer), or None."""
        self._check_open()
        return None if self.failover is None else self.failover.owner_of(session_id)

    def on_takeover(self, handler: Any) -> None:
        """Call `await handler(session, pending_tool_calls)` when this node takes a session over."""
        if not callable(handler):
            raise LocalError("the takeover handler must be an async callable")
        assert self.failover is not None
        self.failover.takeover_handlers.append(handler)

    def on_prewarm(self, handler: Any) -> None:
        """Call `await handler(session_id, owner)` when this node becomes a session's standby."""
        if not callable(handler):
            raise LocalError("the prewarm handler must be an async callable")
        assert self.failover is not None
        self.failover.prewarm_handlers.append(handler)

    # --- lifecycle ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"mesh node {self.node_id!r} is closed")

    async def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        from gossip.failover import FailoverPolicy

        self.failover = Failover(self, FailoverPolicy(split_brain=self.config.split_brain))
        # Client ids for documents peers create here are drawn in the background: start
        # must not wait for 32 fsyncs.
        self._pool_wake.set()
        nursery.start_soon(self._receive_loop)
        nursery.start_soon(self._timer_loop)
        nursery.start_soon(self._pump_loop)
        nursery.start_soon(self._durable_loop)
        nursery.start_soon(self._pool_loop)
        await nursery.start(self.failover.run)
        self.ops = Operations(self)
        self.store.on_commit = self.ops.store_committed
        await nursery.start(self.ops.run)
        self._emit(self.node.start(trio.current_time(), self.config.seeds))
        if self.config.http is not None:
            from mesh.http import serve_http

            self.http_address = await nursery.start(serve_http, self, self.config.http)
        if self.config.mdns and self.config.interfaces:
            await nursery.start(self._discovery_loop)
        self.ready = True

    async def _shutdown(self) -> None:
        """Announce departure, flush the log; bounded by `leave_timeout`."""
        if self._closed:
            return
        self._leaving = True
        with trio.move_on_after(self.config.leave_timeout):
            with contextlib.suppress(StatemeshError):
                self._pump()
            if self.failover is not None and not self.node.left:
                # Hand sessions to their successors before announcing the departure.
                with contextlib.suppress(StatemeshError):
                    await self.failover.handoff()
            if not self.node.left:
                self._emit(self.node.leave(trio.current_time()))
                self._announce_leave()
            with contextlib.suppress(StorageError):
                await self.store.flush()
            # Durable vectors of the last writes, for anyone waiting on them.
            await self._settle_durable()
        self._closed = True
        self._wake_committers()
        self.replica.close()
        for sub in self._subscribers:
            sub._close()
        self._subscribers.clear()

    def _announce_leave(self) -> None:
        """Tell every member with a known address, and every seed, by datagram and stream, that we left.

        `Node.leave` tells a sample of the members it believes alive. Under load this
        node may wrongly hold a peer dead and skip it; that peer would then declare us
        dead (and fail our sessions over) instead of seeing a graceful leave. A node that
        leaves right after joining may not have heard back from its seeds yet, while they
        already list it alive: they are told too. Duplicates are harmless: the same
        `left` rumour applies once.
        """
        me = self.node.membership.me
        env = Envelope(self.node_id, me.address, me.incarnation, (me.update(),))
        members = self.node.membership.members.values()
        targets = {m.address for m in members if m.node != self.node_id} | self._introduced
        targets.discard(self.address)
        for address in sorted(targets):
            # One frame per send: a frame sent twice would be refused as a replay.
            with contextlib.suppress(StatemeshError):
                self.transport.send_datagram(address, self.codec.pack(time.time(), env))
            with contextlib.suppress(StatemeshError):
                self.transport.send(address, self.codec.pack(time.time(), env))

    # --- driving the node ---------------------------------------------------------------

    def _emit(self, out: Output) -> None:
        """Seal and send what the node produced; dispatch its events."""
        if out.sends:
            now = time.time()
            transport = self.transport
            for address, env in out.sends:
                try:
                    frame = self.codec.pack(now, env)
                except LocalError:
                    self.stats["pack_errors"] += 1
                    continue
                if self.ops is not None:
                    self.ops.frame_sent(env.messages, len(frame))
                try:
                    if len(frame) <= _DATAGRAM_MAX and any(
                        isinstance(m, _PROBE_TYPES) for m in env.messages
                    ):
                        transport.send_datagram(address, frame)
                    else:
                        transport.send(address, frame)
                except (LocalError, Closed):
                    # An address we cannot send to (or we are closing): gossip is lossy.
                    self.stats["send_errors"] += 1
        for event in out.events:
            self._on_event(event)
        self._timer_wake.set()

    def _emit_all(self, outputs: list[Output]) -> None:
        """Emit outputs made at one instant with one frame per destination, not one each."""
        if len(outputs) <= 1:
            for out in outputs:
                self._emit(out)
            return
        # Many concurrent writers make many updates per pump: a frame (seal, syscall,
        # unseal) each costs more than the updates themselves. The replicator already
        # keeps what it sends to one destination at one `now` under the frame budget.
        groups: dict[str, list[Envelope]] = {}
        events: list[object] = []
        for out in outputs:
            events.extend(out.events)
            for address, env in out.sends:
                groups.setdefault(address, []).append(env)
        sends = []
        for address, envs in groups.items():
            if len(envs) == 1:
                sends.append((address, envs[0]))
                continue
            msgs: list[object] = []
            seen: set[object] = set()
            table_part = False
            for env in envs:
                for msg in env.messages:
                    if isinstance(msg, MemberUpdate):
                        # Every envelope piggybacks the same pending rumours: keep one.
                        if msg in seen:
                            continue
                        seen.add(msg)
                    elif isinstance(msg, MembershipSync):
                        table_part = True
                    msgs.append(msg)
            if table_part:
                # A part of a membership table is sized to fill a frame of its own.
                sends.extend((address, env) for env in envs)
                continue
            last = envs[-1]
            sends.append(
                (address, Envelope(last.sender, last.sender_address, last.incarnation, tuple(msgs)))
            )
        self._emit(Output(sends, events))

    def _on_event(self, event: object) -> None:
        if self.failover is not None:
            self.failover.on_event(event)
        if isinstance(event, ReplicaAcked):
            waiters = self._doc_acks.pop(event.doc_id, None)
            if waiters is not None:
                waiters.set()
            return
        if isinstance(event, MEMBERSHIP_EVENTS):
            if isinstance(event, MemberReaped):
                self.node.replicator.forget_peer(event.node)
            self._wake_committers()
            self._publish(event)

    def _nudge(self, doc_id: str) -> None:
        """Push the document's last local update again, so that its holders ack again.

        An ack can be lost, or dropped because its sender could not address us yet, and
        anti-entropy between converged replicas ends at the digest root without
        exchanging durable vectors; a retransmit from the writer makes each holder re-ack.
        """
        update = self._last_local.get(doc_id)
        if update is not None and not self.node.left and not self._closed:
            self.stats["commit_nudges"] += 1
            self._emit(self.node.local_update(trio.current_time(), doc_id, update))

    def _wake_committers(self) -> None:
        self._acks_changed.set()
        self._acks_changed = trio.Event()
        for waiters in self._doc_acks.values():
            waiters.set()
        self._doc_acks.clear()

    def _publish(self, event: object) -> None:
        if self._subscribers:
            self._subscribers = [s for s in self._subscribers if s._offer(event)]

    def _changed(self) -> None:
        # Called from inside a pycrdt observer: only wake the pump, never raise.
        self._pump_wake.set()

    def _pump(self) -> None:
        """Submit observed changes to the store; start rumours for local ones."""
        items = self.replica.drain()
        if not items:
            return
        now = trio.current_time()
        last: dict[str, Pending] = {}
        published: set[tuple[str, bool]] = set()
        outputs: list[Output] = []
        for change, pending in items:
            doc_id = change.doc_id
            last[doc_id] = pending
            if change.local:
                self._last_local[doc_id] = change.update
            if change.local and not self.node.left:
                outputs.append(self.node.local_update(now, doc_id, change.update))
            if doc_id.startswith(SESSION_PREFIX) and (doc_id, change.local) not in published:
                published.add((doc_id, change.local))
                self._publish(SessionChanged(doc_id[len(SESSION_PREFIX) :], change.local))
        self._emit_all(outputs)
        for doc_id, pending in last.items():
            self._last_pending[doc_id] = pending
            self._durable_queue.append((pending, doc_id, self.replica.state_vector(doc_id)))
        self._durable_wake.set()

    async def _pump_loop(self) -> None:
        while True:
            await self._pump_wake.wait()
            self._pump_wake = trio.Event()
            try:
                self._pump()
            except StatemeshError as exc:
                # The store is closing or refused a write: it is reported to committers
                # through their pending writes; nothing here can fix it.
                self.stats["pump_errors"] += 1
                self.storage_error = exc if isinstance(exc, StorageError) else None
            if len(self.replica.client_ids) < CLIENT_ID_POOL // 2:
                self._pool_wake.set()

    async def _settle_durable(self) -> None:
        while self._durable_queue:
            pending, _, _ = self._durable_queue[0]
            with contextlib.suppress(StatemeshError):
                await pending.wait()
            self._mark_done()

    def _mark_done(self) -> None:
        queue = self._durable_queue
        docs: dict[str, None] = {}
        while queue and queue[0][0].done:
            pending, doc_id, sv = queue.popleft()
            if pending.batch.error is None:
                self.replica.mark_durable(doc_id, sv)
                docs[doc_id] = None
            else:
                self.storage_error = pending.batch.error  # type: ignore[assignment]
        if docs:
            now = trio.current_time()
            self._emit(self.node.on_durable_many(now, list(docs)))

    async def _durable_loop(self) -> None:
        while True:
            if not self._durable_queue:
                await self._durable_wake.wait()
                self._durable_wake = trio.Event()
                continue
            pending = self._durable_queue[0][0]
            with contextlib.suppress(StatemeshError):
                await pending.wait()
            self._mark_done()

    async def _receive_loop(self) -> None:
        codec, node = self.codec, self.node
        async for _source, frame in self.transport.incoming():
            try:
                env = codec.unpack(time.time(), frame)
            except BadFrame:
                continue  # counted by the codec, by reason
            if self.ops is not None:
                self.ops.frame_received(env.messages, len(frame))
            try:
                out = node.receive(trio.current_time(), env)
            except LocalError:
                # A well-formed frame whose content the protocol refuses (e.g. a member
                # update with a malformed address): drop it, count it.
                self.stats["refused_messages"] += 1
                continue
            self._pump()
            self._emit(out)
            if self.failover is not None:
                self.failover.on_envelope(trio.current_time(), env)

    async def _timer_loop(self) -> None:
        node = self.node
        while True:
            now = trio.current_time()
            deadline = min(node.next_deadline(), now + _MAX_TIMER_SLEEP)
            with trio.move_on_at(deadline):
                await self._timer_wake.wait()
            self._timer_wake = trio.Event()
            now = trio.current_time()
            if now >= node.next_deadline():
                self._emit(node.tick(now))
                self._pump()
                if node.next_deadline() <= now:
                    # A deadline that did not move must not turn this into a busy loop.
                    await trio.sleep(0.001)

    async def _refill_pool(self) -> None:
        need = CLIENT_ID_POOL - len(self.replica.client_ids)
        for _ in range(max(0, need)):
            self.replica.client_ids.append(await self.store.new_client_id())

    async def _pool_loop(self) -> None:
        while True:
            await self._pool_wake.wait()
            self._pool_wake = trio.Event()
            with contextlib.suppress(StatemeshError):
                await self._refill_pool()

    async def _discovery_loop(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from mesh.discovery import Discovery, PeerFound

        host, port = parse_address(self.address)
        http_port = parse_address(self.http_address)[1] if self.http_address else None
        async with Discovery(
            self.node_id,
            self.config.cluster,
            port,
            list(self.config.interfaces),
            address=host,
            http_port=http_port,
        ) as discovery:
            task_status.started()
            async for event in discovery.events():
                if isinstance(event, PeerFound) and event.node_id != self.node_id:
                    self.stats["mdns_found"] += 1
                    if not self._leaving:
                        peer = f"{event.host}:{event.port}"
                        self._emit(self.node.join(trio.current_time(), [peer]))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _single_leaf(group: BaseExceptionGroup) -> BaseException | None:
    """The one non-cancellation exception inside nested groups, if there is exactly one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


async def _open_store(
    config: MeshConfig, stack: contextlib.AsyncExitStack
) -> tuple[AsyncStore, dict[str, Any], list[Any], str | None]:
    """Open the store into `stack` and load it; by policy, move an unreadable file aside.

    Returns the store, what `recover_all` loaded, and where the unreadable file went.
    """
    recovered_from: str | None = None
    for attempt in range(2):  # the second open is of a fresh, empty file
        inner = contextlib.AsyncExitStack()
        try:
            store = await inner.enter_async_context(
                AsyncStore.open(config.data_dir, node_name=config.node)
            )
            # Salvage: a damaged document keeps what came before the damage and is marked;
            # the node serves, reports it on /readyz and refills it from peers (mesh.ops).
            loaded, unloadable = await store.recover_all(salvage=True)
        except UnreadableStore as exc:
            await inner.aclose()  # releases the directory lock before the move takes it
            if attempt or config.on_unreadable_store != "refill":
                raise
            # Nothing acknowledged is lost by starting empty: every acknowledgement named
            # replicas that hold it, and the node refills from them; the old file is kept
            # for `statemesh inspect`.
            moved = await trio.to_thread.run_sync(move_unreadable, config.data_dir)
            recovered_from = str(moved)
            _log.warning(
                "store %s is unreadable (%s): moved it and its -wal/-shm files to %s;"
                " this peer starts empty and refills from its peers",
                exc.path,
                exc.__cause__ or exc,
                moved,
            )
            continue
        except BaseException:
            await inner.aclose()
            raise
        await stack.enter_async_context(inner.pop_all())
        return store, loaded, unloadable, recovered_from
    raise AssertionError("unreachable: the second attempt returns or raises")


@contextlib.asynccontextmanager
async def open_mesh(config: MeshConfig) -> AsyncIterator[Mesh]:
    """Run a mesh node for the duration of the block (see the module docstring)."""
    if not isinstance(config, MeshConfig):
        raise LocalError("open_mesh takes a MeshConfig")
    rng = random.Random(config.seed if config.seed is not None else secrets.randbits(64))
    try:
        stack = contextlib.AsyncExitStack()
        store, loaded, unloadable, recovered_from = await _open_store(config, stack)
        async with stack:
            docs = {doc_id: result.doc for doc_id, result in loaded.items()}
            async with Transport(config.listen, config.transport, rng=rng) as transport:
                mesh = Mesh(config, store, transport, docs, rng)
                mesh.store_recovered_from = recovered_from
                for result in loaded.values():
                    if result.error is not None:
                        mesh.replica.mark_damaged(result.error)
                for error in unloadable:
                    mesh.replica.mark_damaged(error)
                async with trio.open_nursery() as nursery:
                    try:
                        await mesh._start(nursery)
                        yield mesh
                    finally:
                        with trio.CancelScope(shield=True):
                            await mesh._shutdown()
                        nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Nurseries wrap even the body's own exception; give the caller the one error.
        leaf = _single_leaf(group)
        if leaf is None:
            raise
        raise leaf from None
