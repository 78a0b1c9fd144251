"""Failover in the runtime: ownership of sessions, takeover on `dead`, fencing, hand-off.

`Failover` is the component a `Mesh` composes. The decisions are `gossip.failover`'s
(`FailoverState`, pure); this module feeds it what only the runtime knows and acts on
its answers:

* inputs: membership records, the time each member was last *heard* (any authenticated
  frame), the time of our latest request each member *answered* (a round trip: the
  split-brain rule's evidence, `gossip.quorum.RoundTrips`), the ownership table
  (`ownership` document), and durable vectors (our own from the store, the peers' from
  their acks and anti-entropy);
* it asks live members for that evidence (an exchange of the ownership table) when it
  declares a member dead, and again every `ASK_INTERVAL` while a decision waits for it;
* it exchanges the ownership table with every member that joins or comes back, through a
  bounded queue served by `SYNC_WORKERS` tasks: a keyed peer can announce 2,048 made-up
  members in one frame, and one task and one connection attempt each stalled the loop
  for over a second. The queue keeps at most `SYNC_QUEUE` peers, deduplicated; the
  newest are served first and the oldest dropped (counted, `sync_dropped`), so a real
  join after a flood is served as soon as a worker is free;
* it steps the state machine when one of those changes (coalesced, at most every
  `_MIN_INTERVAL`) and at the decision's deadline, never in a busy loop;
* a claim due now is written into the ownership table (it spreads like any update);
* when the table makes this node the owner of a session that another node owned (a
  takeover or a hand-off), it pulls that session from every live member, checks its
  schema and that it covers the plan's target, and calls the takeover handlers with the
  session and its pending tool calls (each with its idempotency key);
* `StandbyAssigned` naming this node calls the pre-warm handlers;
* on a graceful leave the sessions this node owns are claimed for their successors
  and pushed to them before the departure is announced, so nobody waits for `dead`.

Invariants: writes (`Session.state` write methods and `commit`) to a session that this
node does not own raise `NotOwner`, or `Fenced` if this node owned it before another
node won a higher (epoch, owner); reads are always allowed. Opening a session that no
replica here holds yet claims it at epoch 1 (one that arrived from a peer is its
creator's, whose claim is on its way). A node that restarts never reclaims: sessions its
on-disk table says it owns stay write-blocked until it has exchanged the ownership table
with a live member (or, with seeds or mDNS configured, found none for `_ALONE_AFTER`
seconds), after which it follows the merged table. Handler exceptions are counted
(`handler_errors`), never allowed to stop the mesh.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from crdt_types.errors import Fenced, LocalError, NotOwner, SchemaError, StatemeshError
from crdt_types.ownership import Claim, OwnershipTable
from crdt_types.schema import validate_document
from crdt_types.session import SessionState
from crdt_types.vv import decode_state_vector
from gossip.events import (
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberReaped,
    OwnerChanged,
    StandbyAssigned,
    WorkloadFenced,
)
from gossip.failover import FailoverPolicy, FailoverState, Takeover, member_views
from gossip.messages import DocVectors, Envelope
from gossip.node import Output
from gossip.quorum import RoundTrips
from gossip.replication import DocumentUpdated, ReplicaAcked
from gossip.successor import rank

if TYPE_CHECKING:
    from mesh.runtime import Mesh, Session

__all__ = [
    "Failover",
    "GuardedSessionState",
    "PrewarmHandler",
    "SessionTakenOver",
    "TakeoverFailed",
    "TakeoverHandler",
]

OWNERSHIP = "ownership"
SESSION_PREFIX = "session/"
STABLE_FILE = "failover-stable.json"
# Coalesce bursts of acks and rumours into one decision (a decision over 10k sessions
# costs ~1 s, so it must not run per frame).
_MIN_INTERVAL = 0.005
_MAX_SLEEP = 0.5
# How long a takeover waits for live members to answer its pull of the session. On a
# LAN the answer takes a round trip; a member that does not answer in time is skipped
# (what it holds still arrives later by anti-entropy and merges).
PULL_TIMEOUT = 0.3
# A restarted node that finds no live member for this long trusts its own table.
_ALONE_AFTER = 3.0
# How long a graceful hand-off waits for successors to hold the claim and the session.
HANDOFF_TIMEOUT = 1.0
DEFAULT_SETTLE = 2.0
_ASK_ON_DEAD = 16
# While a decision waits for quorum evidence, ask again this often: a partition can last
# minutes, and each ask costs one small exchange per member asked.
ASK_INTERVAL = 0.5
# Plans that hearing from a member can unblock.
_HEARD_REASONS = ("no_quorum", "owner_heard")
# Ownership exchanges in flight at once, and peers waiting for one. Each worker waits up
# to `SYNC_TIMEOUT` for an answer, so a queue of made-up members drains at
# SYNC_WORKERS / SYNC_TIMEOUT peers a second while a real join, served newest-first,
# waits at most one timeout.
SYNC_WORKERS = 8
SYNC_QUEUE = 256
SYNC_TIMEOUT = 2.0

TakeoverHandler = Callable[["Session", list[Any]], Awaitable[None]]
PrewarmHandler = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SessionTakenOver:
    """This node took `session_id` over from `previous_owner` at `epoch` and called the handlers."""

    session_id: str
    previous_owner: str
    epoch: int
    fingerprint: str
    pending: tuple[str, ...]  # idempotency keys of the pending tool calls handed over
    covered: bool  # the replica covered the plan's target (everything acknowledged)


@dataclass(frozen=True, slots=True)
class TakeoverFailed:
    """The takeover of `session_id` found a document that does not verify; no handler ran."""

    session_id: str
    reason: str


_WRITE_METHODS = (
    "append_message",
    "start_tool_call",
    "finish_tool_call",
    "fail_tool_call",
    "set_memory",
    "delete_memory",
    "add_rag",
    "set_cursor",
)


class GuardedSessionState(SessionState):
    """A `SessionState` whose write methods first ask the mesh whether this node owns it."""

    def __init__(self, doc: Any, authorize: Callable[[], None]) -> None:
        super().__init__(doc)
        self._authorize = authorize


def _guard(name: str) -> Callable[..., Any]:
    plain = getattr(SessionState, name)

    def guarded(self: GuardedSessionState, *args: Any, **kwargs: Any) -> Any:
        # Refuse before the transaction: a write that reached the document would spread.
        self._authorize()
        return plain(self, *args, **kwargs)

    guarded.__name__ = name
    guarded.__doc__ = plain.__doc__
    return guarded


for _name in _WRITE_METHODS:
    setattr(GuardedSessionState, _name, _guard(_name))


class Failover:
    """Ownership, takeover, fencing and hand-off for one `Mesh` (see the module docstring)."""

    def __init__(self, mesh: Mesh, policy: FailoverPolicy, settle: float = DEFAULT_SETTLE) -> None:
        self.mesh = mesh
        self.me = mesh.node_id
        self._stable_path = Path(mesh.config.data_dir) / STABLE_FILE
        self.state = FailoverState(self.me, policy, settle=settle, stable=self._load_stable())
        self._stable_saved = self.state.membership.stable
        self.heard: dict[str, float] = {}
        self.trips = RoundTrips()
        self._next_ask = -math.inf
        self.takeover_handlers: list[TakeoverHandler] = []
        self.prewarm_handlers: list[PrewarmHandler] = []
        self.plans: dict[str, Takeover] = {}
        # (epoch) at which this node last owned each workload, to tell Fenced from NotOwner.
        self._mine: dict[str, int] = {}
        self._wake = trio.Event()
        self._deadline = math.inf
        self._pulls: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._started_at = math.inf
        self.last_error: str | None = None
        self._waiting_quorum = False
        self._first_step = True
        # Peers owed an ownership exchange, oldest first (see the module docstring).
        self._sync_queue: dict[str, None] = {}
        self._sync_ready = trio.Event()
        self.sync_running = 0
        self.sync_peak = 0  # most exchanges ever in flight at once (tests read it)
        # The table is created on the first claim, so a fresh node holds no documents.
        # A restart: what our disk says we own is not ours to write until confirmed.
        table = mesh.ownership if OWNERSHIP in mesh.replica else None
        self._unconfirmed = set(table.workloads_of(self.me)) if table is not None else set()
        config = mesh.config
        # A node with nobody to ask (no seeds, no mDNS) has only its own table to follow.
        solitary = not config.seeds and not (config.mdns and config.interfaces)
        self._confirmed = solitary or not self._unconfirmed
        for claim in table.claims() if table is not None else ():
            if claim.owner == self.me:
                self._mine[claim.workload] = claim.epoch

    # --- public (through Mesh) -----------------------------------------------------------

    def _table(self) -> OwnershipTable | None:
        return self.mesh.ownership if OWNERSHIP in self.mesh.replica else None

    def _claims(self) -> list[Claim]:
        table = self._table()
        return [] if table is None else table.claims()

    def owner_of(self, session_id: str) -> str | None:
        """The node that owns session `session_id` now (per this replica's table), or None."""
        table = self._table()
        claim = None if table is None else table.owner_of(SESSION_PREFIX + session_id)
        return None if claim is None else claim.owner

    def owners(self) -> dict[str, list[str]]:
        """{node: [session ids it owns]} from this replica's ownership table."""
        out: dict[str, list[str]] = {}
        n = len(SESSION_PREFIX)
        for claim in self._claims():
            if claim.workload.startswith(SESSION_PREFIX):
                out.setdefault(claim.owner, []).append(claim.workload[n:])
        return out

    # --- hooks the runtime calls ---------------------------------------------------------

    def claim_on_open(self, doc_id: str) -> None:
        """Claim `doc_id` at epoch 1 if nobody ever claimed it (opening a new session)."""
        if doc_id in self.mesh.replica or self.mesh._leaving:
            # It came from a peer: its creator claimed it first, in the same pump, and
            # that claim is on its way. Claiming too would race it for nothing.
            return
        table = self.mesh.ownership
        if table.owner_of(doc_id) is None:
            table.claim(doc_id, self.me, 1)
            self._mine[doc_id] = 1
            self.wake()

    def authorize(self, doc_id: str) -> None:
        """Raise `NotOwner` or `Fenced` unless this node may write `doc_id` now."""
        table = self._table()
        claim = None if table is None else table.owner_of(doc_id)
        sid = doc_id[len(SESSION_PREFIX) :]
        if claim is None:
            raise NotOwner(sid, None, 0)
        if claim.owner == self.me:
            self._mine[doc_id] = claim.epoch
            if doc_id in self._unconfirmed and not self._confirmed:
                raise NotOwner(sid, claim.owner, claim.epoch)
            if self.mesh._leaving:
                raise NotOwner(sid, claim.owner, claim.epoch)
            return
        mine = self._mine.get(doc_id)
        if mine is not None and (claim.epoch, claim.owner) > (mine, self.me):
            raise Fenced(sid, claim.owner, claim.epoch)
        raise NotOwner(sid, claim.owner, claim.epoch)

    def guarded_state(self, doc_id: str, session_id: str, doc: Any) -> SessionState:
        """The session's typed state, its writes checked by `authorize`."""
        state = GuardedSessionState(doc, lambda: self.authorize(doc_id))
        # `SessionState.new` writes the meta once; that first write is the opener's.
        SessionState.new(session_id, doc)
        return state

    def on_envelope(self, now: float, env: Envelope) -> None:
        """An authenticated envelope arrived (after the node processed it)."""
        if env.sender in self.mesh.node.membership.members:
            # Only members are ever looked up; a made-up sender must not grow the table.
            self.heard[env.sender] = now
        if self.trips.received(env.sender, env.messages) and self._waiting_quorum:
            # Quorum completes by answers from members, which change no state: decide
            # again now rather than at the next re-check.
            self.wake()
        if self._pulls:
            for msg in env.messages:
                if isinstance(msg, DocVectors) and not msg.reply:
                    done = self._pulls.pop(msg.session, None)
                    if done is not None:
                        done.set()

    def on_event(self, event: object) -> None:
        """A membership or replication event: decide again soon."""
        if isinstance(event, MemberJoined | MemberAlive):
            # A member came (back): exchange the ownership table with it at once, so a
            # restarted node learns it was replaced before it writes anything.
            self._want_sync(event.node)
        elif isinstance(event, MemberDead):
            # Quorum needs answers to requests sent after the failure: ask live members
            # now (one round trip) instead of waiting for the next re-check.
            self._next_ask = trio.current_time() + ASK_INTERVAL
            for peer in reversed(self._to_ask()):  # the best-ranked served first
                self._want_sync(peer)
        elif isinstance(event, MemberReaped):
            self.heard.pop(event.node, None)
            self.trips.answered.pop(event.node, None)
            self._sync_queue.pop(event.node, None)
        if isinstance(event, ReplicaAcked) and not self.plans:
            # Durable vectors matter only while a takeover is being planned.
            return
        if isinstance(event, DocumentUpdated) and event.doc_id != OWNERSHIP:
            return
        self.wake()

    def wake(self) -> None:
        """Ask the decision loop to step soon."""
        self._wake.set()

    def _want_sync(self, peer: str) -> None:
        """Queue an ownership exchange with `peer` (newest first; the oldest dropped)."""
        if peer == self.me:
            return
        queue = self._sync_queue
        queue.pop(peer, None)
        queue[peer] = None
        while len(queue) > SYNC_QUEUE:
            del queue[next(iter(queue))]
            self.mesh.stats["sync_dropped"] += 1
        self._sync_ready.set()

    async def _sync_worker(self) -> None:
        while not self.mesh._closed:
            if not self._sync_queue:
                ready = self._sync_ready
                await ready.wait()
                if self._sync_ready is ready:
                    # Only the first worker woken replaces it: a later one replacing the
                    # event another worker already waits on again would strand that worker.
                    self._sync_ready = trio.Event()
                continue
            peer, _ = self._sync_queue.popitem()  # the newest: a real join after a flood
            self.sync_running += 1
            self.sync_peak = max(self.sync_peak, self.sync_running)
            self.mesh.stats["syncs_started"] += 1
            try:
                await self._sync_ownership(peer)
            finally:
                self.sync_running -= 1

    # --- the loop --------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Step the failover state machine on change and at its deadlines (runs forever)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._started_at = trio.current_time()
            for _ in range(SYNC_WORKERS):
                nursery.start_soon(self._sync_worker)
            task_status.started()
            while not self.mesh._closed:
                now = trio.current_time()
                with trio.move_on_at(min(self._deadline, now + _MAX_SLEEP)):
                    await self._wake.wait()
                self._wake = trio.Event()
                if self.mesh._closed:
                    break
                try:
                    self._step()
                except StatemeshError as exc:
                    self.mesh.stats["failover_errors"] += 1
                    self.last_error = str(exc)
                await trio.sleep(_MIN_INTERVAL)
            nursery.cancel_scope.cancel()

    def _durable(self, node: str, workload: str) -> bytes | None:
        if node == self.me:
            return self.mesh.replica.durable_state_vector(workload)
        return self.mesh.node.replicator.peer_durable(node, workload)

    def _members(self) -> dict[str, Any]:
        leaving = self.mesh._leaving
        return member_views(
            self.mesh.node.membership.members.values(),
            ready=lambda n: not (leaving and n == self.me),
            heard=self.heard,
            answered=self.trips.answered,
        )

    def _to_ask(self) -> list[str]:
        """Live members to ask for quorum evidence: enough for a majority, stable ones first.

        At least `_ASK_ON_DEAD` (a spread of its own per node); in a larger mesh a
        majority of the stable set plus a little slack, since only answers count. Next
        come the members at our seed addresses: a node that joins during a flood of
        made-up members has no stable set yet, and its seed's answer is what admits the
        first real member to it (`gossip.quorum.admitted`).
        """
        membership = self.mesh.node.membership
        live = [n for n in membership.live_members() if n != self.me]
        stable = self.state.membership.stable or frozenset()
        seeds = set(self.mesh.config.seeds)
        want = max(_ASK_ON_DEAD, len(stable) // 2 + 2)
        ranked = rank(self.me, live)
        return sorted(
            ranked, key=lambda n: (n not in stable, membership.address_of(n) not in seeds)
        )[:want]

    def _ask(self, now: float) -> None:
        """Send the evidence requests; their answers reach `on_envelope`, no task waits."""
        node = self.mesh.node
        outputs = []
        for peer in self._to_ask():
            if node.membership.address_of(peer) is None:
                continue
            outputs.append(self._start_pull(now, peer, [OWNERSHIP])[1])
        self.mesh._emit_all(outputs)

    def _step(self) -> None:
        mesh = self.mesh
        now = trio.current_time()
        self._check_confirmed(now)
        decision = self.state.step(now, self._members(), self._claims(), self._durable)
        table = mesh.ownership if decision.claims else None
        self._deadline = decision.deadline
        self.plans = {t.workload: t for t in decision.plans}
        self._waiting_quorum = any(t.reason in _HEARD_REASONS for t in decision.plans)
        if decision.ask and now >= self._next_ask and not mesh._closed:
            self._next_ask = now + ASK_INTERVAL
            self._deadline = min(self._deadline, self._next_ask)
            self._ask(now)
        for t in decision.claims:
            assert table is not None
            if table.epoch_of(t.workload) < t.epoch and not mesh._leaving:
                table.claim(t.workload, self.me, t.epoch)
                self._mine[t.workload] = t.epoch
                mesh.stats["takeover_claims"] += 1
                self.wake()  # the claim changed the table: the next step raises OwnerChanged
        if decision.claims:
            mesh._pump()
        for ev in decision.events:
            self._on_decision_event(ev)
        self._first_step = False
        self._save_stable()

    def _on_decision_event(self, ev: object) -> None:
        mesh = self.mesh
        mesh._publish(ev)
        nursery = self._nursery
        if isinstance(ev, OwnerChanged):
            if ev.owner == self.me:
                self._mine[ev.workload] = ev.epoch
                # Given to us: a takeover or a hand-off. A previous owner we never saw (both
                # claims merged between two steps) still shows in the epoch; what our own
                # table said at start (a restart) is not a takeover.
                given = ev.previous_owner is not None or (ev.epoch > 1 and not self._first_step)
                if (
                    given
                    and ev.previous_owner != self.me
                    and ev.workload.startswith(SESSION_PREFIX)
                    and nursery is not None
                ):
                    nursery.start_soon(
                        self._takeover, ev.workload, ev.previous_owner or "", ev.epoch
                    )
        elif isinstance(ev, WorkloadFenced):
            mesh.stats["fenced"] += 1
        elif (
            isinstance(ev, StandbyAssigned)
            and ev.standby == self.me
            and nursery is not None
            and ev.workload.startswith(SESSION_PREFIX)
        ):
            for handler in list(self.prewarm_handlers):
                nursery.start_soon(
                    self._call, handler, ev.workload[len(SESSION_PREFIX) :], ev.owner
                )

    async def _call(self, handler: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await handler(*args)
        except Exception as exc:  # an application bug must not stop the mesh
            self.mesh.stats["handler_errors"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _start_pull(self, now: float, peer: str, doc_ids: list[str]) -> tuple[int, Output]:
        """Start an exchange of `doc_ids` with `peer`, counted as a round trip; what to send."""
        session, out = self.mesh.node.pull(now, peer, doc_ids)
        self.trips.sent(now, peer, session)
        return session, out

    # --- takeover ----------------------------------------------------------------------------

    def pull_peers(self) -> list[str]:
        """The live members `pull` exchanges with: every one but us whose address we know."""
        membership = self.mesh.node.membership
        return [
            p
            for p in membership.live_members()
            if p != self.me and membership.address_of(p) is not None
        ]

    async def pull(self, doc_ids: list[str], timeout: float = PULL_TIMEOUT) -> int:
        """Exchange `doc_ids` with every live member; returns how many answered in `timeout`."""
        mesh = self.mesh
        now = trio.current_time()
        waits: list[trio.Event] = []
        sessions: list[int] = []
        for peer in self.pull_peers():
            session, out = self._start_pull(now, peer, doc_ids)
            done = self._pulls[session] = trio.Event()
            waits.append(done)
            sessions.append(session)
            mesh._emit(out)
        answered = 0
        with trio.move_on_after(timeout):
            for done in waits:
                await done.wait()
                answered += 1
        for session in sessions:
            self._pulls.pop(session, None)  # members that did not answer in time
        mesh._pump()
        return answered

    async def _sync_ownership(self, peer: str) -> None:
        with contextlib.suppress(StatemeshError):
            node = self.mesh.node
            address = node.membership.address_of(peer)
            if address is None or self.mesh._closed:
                return
            now = trio.current_time()
            session, out = self._start_pull(now, peer, [OWNERSHIP])
            done = self._pulls[session] = trio.Event()
            self.mesh._emit(out)
            with trio.move_on_after(SYNC_TIMEOUT):
                await done.wait()
                self._confirmed = True
                self.wake()
            self._pulls.pop(session, None)

    def _check_confirmed(self, now: float) -> None:
        if self._confirmed:
            return
        live = [n for n in self.mesh.node.membership.live_members() if n != self.me]
        if not live and now - self._started_at >= _ALONE_AFTER:
            self._confirmed = True

    async def _takeover(self, doc_id: str, previous: str, epoch: int) -> None:
        mesh = self.mesh
        sid = doc_id[len(SESSION_PREFIX) :]
        plan = self.plans.get(doc_id)
        # Hold everything any live member acknowledged before the agent resumes, and
        # their view of the table: two members may have claimed at the same epoch in the
        # same instant (their views of who is caught up differed). The merge keeps the
        # highest (epoch, owner) everywhere; the loser must not run the handler too.
        await self.pull([OWNERSHIP, doc_id])
        if mesh._closed:
            return
        won = mesh.ownership.owner_of(doc_id)
        if won is None or (won.owner, won.epoch) != (self.me, epoch):
            mesh.stats["takeover_lost_race"] += 1
            return
        try:
            session = await mesh.session(sid)
            validate_document(doc_id, session.state.doc)
        except (SchemaError, LocalError) as exc:
            mesh.stats["takeover_failed"] += 1
            mesh._publish(TakeoverFailed(sid, str(exc)))
            return
        covered = True
        if plan is not None and plan.target:
            ours = decode_state_vector(mesh.replica.state_vector(doc_id))
            covered = all(ours.get(c, 0) >= k for c, k in plan.target.as_dict().items())
        pending = session.state.pending_tool_calls()
        mesh.stats["takeovers"] += 1
        mesh._publish(
            SessionTakenOver(
                sid,
                previous,
                epoch,
                session.fingerprint(),
                tuple(c.idempotency_key for c in pending),
                covered,
            )
        )
        for handler in list(self.takeover_handlers):
            await self._call(handler, session, pending)

    # --- graceful hand-off -------------------------------------------------------------------

    async def handoff(self, timeout: float = HANDOFF_TIMEOUT) -> list[Takeover]:
        """Claim every session this node owns for its successor and push it there first."""
        mesh = self.mesh
        claims = self._claims()
        if not any(c.owner == self.me for c in claims):
            return []
        table = mesh.ownership
        plans = self.state.handoff(self._members(), claims, self._durable)
        given = [t for t in plans if t.successor is not None]
        for t in given:
            if table.epoch_of(t.workload) < t.epoch:
                table.claim(t.workload, t.successor, t.epoch)
        if not given:
            return []
        mesh._pump()
        successors = sorted({t.successor for t in given if t.successor})
        docs = [OWNERSHIP] + sorted({t.workload for t in given})
        with trio.move_on_after(timeout):
            await self.pull(docs, timeout)
            # Wait until each successor's store holds the claim (its ack says so).
            while True:
                sv = mesh.replica.state_vector(OWNERSHIP)
                holders = set(mesh.node.replicator.replicas_covering(OWNERSHIP, sv))
                if all(s in holders for s in successors):
                    break
                await trio.sleep(0.02)
        mesh.stats["handoffs"] += len(given)
        return given

    # --- the stable membership, persisted ------------------------------------------------------

    def _load_stable(self) -> list[str] | None:
        try:
            data = json.loads(self._stable_path.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(data, list) and data and all(isinstance(n, str) and n for n in data):
            return data
        return None

    def _save_stable(self) -> None:
        stable = self.state.membership.stable
        if stable is None or stable == self._stable_saved:
            return
        self._stable_saved = stable
        tmp = self._stable_path.with_suffix(".tmp")
        # Small and rare (membership changes); a lost write only costs the restart gap
        # that `gossip.quorum` documents.
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(sorted(stable)))
            os.replace(tmp, self._stable_path)

    def status(self) -> dict[str, Any]:
        """Ownership and failover figures for `/status`."""
        stable = self.state.membership.stable
        return {
            "owners": self.owners(),
            "stable": sorted(stable) if stable is not None else None,
            "policy": self.state.policy.split_brain,
            "sync": {
                "queued": len(self._sync_queue),
                "running": self.sync_running,
                "peak": self.sync_peak,
                "started": self.mesh.stats.get("syncs_started", 0),
                "dropped": self.mesh.stats.get("sync_dropped", 0),
            },
            "plans": {
                w: {"successor": t.successor, "reason": t.reason, "epoch": t.epoch}
                for w, t in sorted(self.plans.items())
            },
        }
