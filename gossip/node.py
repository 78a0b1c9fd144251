"""One gossip peer as a sans-IO state machine: membership composed with replication.

`Node` is what the runtime (`mesh`) and the simulator drive. It is fed the time and
incoming envelopes and returns an `Output`: envelopes to send, each with its destination
address, and events for the layer above. The runtime must call `tick(now)` no later than
`next_deadline()`; calling it earlier, or more often, is harmless.

Invariants:

* Every message produced in one call for one destination travels in one `Envelope`, and
  each envelope carries up to `max_piggyback` membership rumours (SWIM piggybacking), so
  membership news rides on replication traffic for free. The exception is a full
  membership table: each of its parts (`Membership.table_parts`) travels alone, first, so
  that every frame stays under the limit however large the table.
* Replication talks in node ids; the node maps them to addresses through membership. A
  message for a member we do not know an address for is dropped (anti-entropy repairs).
* A message from a node that is not a live member is still processed (probes, rumours,
  updates and diffs are idempotent, and a member that we think dead may be the other half
  of a healed partition), except a request for document data: a `Digest` or a
  `DocVectors` asking for a reply is served only to members alive or suspect here. Any
  other sender is refused (counted, `refused["non_member"]`) and invited to join
  (`Membership.refuse_non_member`); once it is a member its next request is served.
* After `leave`, the node stops probing and replicating and only spreads its departure.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from crdt_types.errors import LocalError
from gossip.config import GossipConfig
from gossip.membership import Membership
from gossip.messages import (
    Ack,
    Digest,
    DocVectors,
    Envelope,
    MembershipSync,
    MemberUpdate,
    Nack,
    Ping,
    PingReq,
)

_MEMBERSHIP_TYPES = (MemberUpdate, Ping, Ack, PingReq, Nack, MembershipSync)


def _asks_for_data(msg: object) -> bool:
    """Whether `msg` asks us to serve document data (anti-entropy), not answers our request."""
    kind = type(msg)
    return kind is Digest or (kind is DocVectors and msg.reply)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Output:
    """What one call produced: envelopes to send (address, envelope) and events."""

    sends: list[tuple[str, Envelope]] = field(default_factory=list)
    events: list[object] = field(default_factory=list)


class Node:
    """A gossip peer: SWIM/Lifeguard membership plus CRDT replication over a `ReplicaPort`."""

    def __init__(
        self,
        node_id: str,
        address: str,
        config: GossipConfig,
        rng: random.Random,
        replica: object | None = None,
        *,
        incarnation: int = 0,
        meta: bytes = b"",
        replication: object | None = None,
        replicator: object | None = None,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.config = config
        self._rng = rng
        self.membership = Membership(
            node_id, address, config, rng, incarnation=incarnation, meta=meta
        )
        self.replica = replica
        if replicator is None and replica is not None:
            from gossip.replication import Replicator

            replicator = Replicator(
                node_id,
                replica,
                rng,
                replication,
                is_member=self.membership.is_live,
                first_hand=self.membership.is_first_hand,
            )
        self.replicator = replicator
        self._next_gossip = math.inf
        self._started = False
        self.left = False

    # --- driving ---------------------------------------------------------------------

    def start(
        self, now: float, seeds: Sequence[str] = (), known: Sequence[tuple[str, str]] = ()
    ) -> Output:
        """Start probing and join through `seeds` ("host:port"); `known` are (id, address) peers."""
        self.membership.start(now, seeds, known)
        self._started = True
        self._next_gossip = now + self._rng.random() * self.config.gossip_interval
        return self._flush([])

    def tick(self, now: float) -> Output:
        """Run the timers due at `now`: probes, suspicions, gossip rounds, anti-entropy."""
        if not self._started:
            raise LocalError("Node.tick before Node.start")
        m = self.membership
        m.tick(now)
        extra: list[tuple[str, object]] = []
        events: list[object] = []
        if now >= self._next_gossip:
            self._next_gossip = now + self.config.gossip_interval
            if not self.left and self.replicator is not None:
                extra.extend(self._resolve(self.replicator.tick(now, m.live_members())))
            if m.pending_broadcasts():
                # A gossip round: carriers for membership rumours to a few random members.
                for address in m.gossip_targets(now, self.config.gossip_nodes):
                    extra.append((address, None))
        return self._flush(extra, events)

    def receive(self, now: float, env: Envelope) -> Output:
        """Process one envelope from a peer (already decoded and authenticated)."""
        if not self._started:
            raise LocalError("Node.receive before Node.start")
        m = self.membership
        extra: list[tuple[str, object]] = []
        events: list[object] = []
        # Membership first: replication may need to address a member that this very
        # envelope introduces (piggybacked rumours travel after the payload).
        m.begin_envelope()
        for msg in env.messages:
            if isinstance(msg, _MEMBERSHIP_TYPES):
                m.handle(now, env.sender_address, msg)
        m.heard_from(env.sender, env.sender_address)
        for msg in env.messages:
            if isinstance(msg, _MEMBERSHIP_TYPES):
                continue
            if self.replicator is not None and not self.left:
                if _asks_for_data(msg) and not m.is_live(env.sender):
                    m.refuse_non_member(env.sender, env.sender_address)
                    continue
                sends, evs = self.replicator.receive(now, env.sender, msg)
                extra.extend(self._resolve(sends, env))
                events.extend(evs)
        return self._flush(extra, events)

    def local_update(self, now: float, doc_id: str, update: bytes) -> Output:
        """Spread an update written locally (already applied to our replica)."""
        if self.replicator is None:
            raise LocalError("this node has no replica")
        if self.left:
            raise LocalError("node has left the mesh")
        return self._flush(self._resolve(self.replicator.on_local_update(now, doc_id, update)))

    def on_durable(self, now: float, doc_id: str) -> Output:
        """Tell the writers that `doc_id` is durable here (replica acknowledgements)."""
        if self.replicator is None:
            raise LocalError("this node has no replica")
        return self._flush(self._resolve(self.replicator.on_durable(now, doc_id)))

    def on_durable_many(self, now: float, doc_ids: Sequence[str]) -> Output:
        """Like `on_durable` for one group commit: one ack per peer covers every document."""
        if self.replicator is None:
            raise LocalError("this node has no replica")
        return self._flush(self._resolve(self.replicator.on_durable_many(now, doc_ids)))

    def pull(self, now: float, peer: str, doc_ids: Sequence[str]) -> tuple[int, Output]:
        """Start a targeted exchange of `doc_ids` with `peer`: its session id and what to send.

        Each message goes to its own destination: the replicator's send budget may release
        messages held back for other peers along with this one, or hold this one back.
        """
        if self.replicator is None:
            raise LocalError("this node has no replica")
        session, sends = self.replicator.pull(now, peer, doc_ids)
        return session, self._flush(self._resolve(sends))

    def join(self, now: float, addresses: Sequence[str]) -> Output:
        """Contact peers found after start (mDNS, a seed added at runtime) with a push-pull."""
        self.membership.join(addresses)
        return self._flush([])

    def leave(self, now: float) -> Output:
        """Leave gracefully: members will see `left`, not `dead` (no failover)."""
        self.left = True
        self.membership.leave(now)
        return self._flush([])

    def next_deadline(self) -> float:
        """When the runtime should call `tick` next (virtual or monotonic seconds)."""
        return min(self.membership.next_deadline(), self._next_gossip)

    # --- plumbing --------------------------------------------------------------------

    def _resolve(self, sends, env: Envelope | None = None) -> list[tuple[str, object]]:
        """Turn (node id, message) pairs into (address, message) pairs."""
        out = []
        m = self.membership
        for node, msg in sends:
            address = m.address_of(node)
            if address is None and env is not None and node == env.sender:
                address = env.sender_address
            if address is not None:
                out.append((address, msg))
        return out

    def _flush(self, extra: list[tuple[str, object]], events: list[object] | None = None) -> Output:
        """Batch everything queued into one envelope per destination, with piggyback."""
        m = self.membership
        sends, mevents = m.take()
        if events:
            mevents.extend(events)
        if extra:
            sends.extend(extra)
        if not sends:
            return Output([], mevents)
        batches: dict[str, list[object]] = {}
        for address, msg in sends:
            batch = batches.get(address)
            if batch is None:
                batch = batches[address] = []
            if msg is not None:
                batch.append(msg)
        out = []
        me = m.me
        limit = self.config.max_piggyback
        for address, msgs in batches.items():
            if address == self.address:
                continue
            parts = [x for x in msgs if type(x) is MembershipSync]
            if parts:
                # Each part of a table in an envelope of its own, first: a part and the
                # replicator's send budget would not fit one frame together, and the
                # members it introduces are known when the rest arrives.
                for x in parts:
                    out.append((address, Envelope(self.node_id, me.address, me.incarnation, (x,))))
                msgs = [x for x in msgs if type(x) is not MembershipSync]
            accusation = m.accusation_for(address)
            if accusation is not None and accusation not in msgs:
                msgs.append(accusation)
            if not parts:  # a table already carries every member: no piggyback needed
                rumours = sum(type(x) is MemberUpdate for x in msgs)
                msgs.extend(m.piggyback(limit - rumours))
            if msgs:
                out.append(
                    (address, Envelope(self.node_id, me.address, me.incarnation, tuple(msgs)))
                )
        return Output(out, mevents)
