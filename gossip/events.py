"""Events the gossip state machines raise for the layer above, as frozen dataclasses.

A `gossip.node.Node` returns these in `Output.events`; the runtime (`mesh`) turns them
into callbacks, metrics and failover decisions. Membership events describe one member's
state change as *this* node sees it; they are raised once per change, never for a rumour
that changes nothing. Failover acts only on `MemberDead`: `MemberSuspected` may still be
refuted, and `MemberLeft` is a graceful exit whose sessions were handed over on purpose.
Replication events (`DocumentUpdated`, `ReplicaAcked`) are defined by
`gossip.replication` and re-exported here so that there is one place to import from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member we did not know about is alive."""

    node: str
    address: str
    incarnation: int
    meta: bytes = b""


@dataclass(frozen=True, slots=True)
class MemberAlive:
    """A known member is alive again: `reason` is "refuted" (was suspect) or "recovered"."""

    node: str
    address: str
    incarnation: int
    reason: str
    meta: bytes = b""


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    """A member failed a probe (ours, or `origin`'s); it may still refute."""

    node: str
    incarnation: int
    origin: str


@dataclass(frozen=True, slots=True)
class MemberDead:
    """A member is declared failed: its suspicion timed out here or `origin` said so."""

    node: str
    incarnation: int
    origin: str


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """A member left gracefully (distinct from dead: no failover)."""

    node: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberReaped:
    """A dead or left member was forgotten after `GossipConfig.reap_after`."""

    node: str
    state: str


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """A live member changed its address or metadata (a new incarnation)."""

    node: str
    address: str
    incarnation: int
    meta: bytes = b""


MEMBERSHIP_EVENTS = (
    MemberJoined,
    MemberAlive,
    MemberSuspected,
    MemberDead,
    MemberLeft,
    MemberReaped,
    MemberUpdated,
)
