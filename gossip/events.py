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


# --- failover (decided by gossip.failover; the runtime raises them) ------------------------
# Fencing is `WorkloadFenced`, not `Fenced`, so that it never shadows the exception
# `crdt_types.errors.Fenced` that the runtime raises on writes in the same module.


@dataclass(frozen=True, slots=True)
class OwnerChanged:
    """The winning claim on `workload` changed: `owner` at `epoch` (routing follows it)."""

    workload: str
    owner: str
    epoch: int
    previous_owner: str | None


@dataclass(frozen=True, slots=True)
class WorkloadFenced:
    """This node owned `workload` at `fenced_epoch`; `owner` took it at `epoch`."""

    workload: str
    owner: str
    epoch: int
    fenced_epoch: int


@dataclass(frozen=True, slots=True)
class TakeoverPlanned:
    """`successor` is to claim `workload` from `previous_owner` at `epoch` (`reason`)."""

    workload: str
    previous_owner: str
    successor: str
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class StandbyAssigned:
    """`standby` is now the designated next owner of `workload` (pre-warm it); None: nobody."""

    workload: str
    owner: str
    standby: str | None


FAILOVER_EVENTS = (OwnerChanged, WorkloadFenced, TakeoverPlanned, StandbyAssigned)


def __getattr__(name: str) -> type:
    # Replication events live with their state machine; importing them lazily keeps this
    # module free of import cycles while `from gossip.events import DocumentUpdated` works.
    if name in ("DocumentUpdated", "ReplicaAcked"):
        from gossip import replication

        return getattr(replication, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
