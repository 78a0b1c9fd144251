"""Failover decisions, sans-IO: who takes over which session, when, and who is fenced.

The runtime (`mesh`) gathers a `FailoverView` (this node's id, the member states with the
time each entered its state and whether it is ready, the ownership table's winning
claims, the durable version vectors peers reported per document, the last stable
membership and the policy) and asks `plan_takeovers(now, view)`. Nothing here reads a
clock, draws randomness or does I/O, and the answer is a pure function of the view, so
two peers with the same view plan the same thing.

**Takeover.** Only sessions owned by a member in state `dead` are taken over: never on
`suspect` (it may refute), never on `left` (its owner handed them over, see `plan_handoff`;
a left owner's session that is still unclaimed `orphan_after` seconds later is taken over
like a dead one, so a hand-off that crashed midway leaves nothing orphaned). A node never
plans to take over a session the table says it owns itself: an old owner that restarts
follows the table and never reclaims.

**Successor.** The eligible members are the ones alive (not suspect), ready, admitted (in
the stable set, or answered a request of ours: `gossip.quorum.admitted`) and not the
failed owner. They are ranked by rendezvous hashing over (workload, node)
(`gossip.successor`), the same order on every peer (admission can differ between peers
for a moment after a member joins, until each has had its answer; the staggered slots
below absorb that like any other difference of views). The *coverage target* of a session is
the merge of the durable vectors reported for its document by every live member but the
owner (for this node: its own durable vector, known exactly). A write acknowledged with
`replicas=W` is durable on W members besides the owner (their `ReplicaAck` said so), so
once the report of one of them that is still alive has reached this peer (acks and
anti-entropy carry durable vectors), only members holding that write cover the target.
The successor is the best-ranked eligible member whose reported durable vector covers it.

Reported vectors are lower bounds that may be stale: a peer that received an update as a
duplicate does not ack it to everyone, so peers can disagree about who is caught up. The
rule therefore staggers claims instead of trusting one view: each eligible member that
covers the target (in its own view) gets a slot `stagger` seconds apart in ranking order,
counted from the moment the owner was declared dead, and claims at its slot only if the
session is still unclaimed. The best-ranked caught-up member claims first and its claim
reaches the others before their slots; a member that wrongly looks behind to its peers
still claims in time, and one that is stuck leaves the next one to claim. If two claims
at `epoch + 1` do cross, the ownership table keeps the highest (epoch, owner) everywhere
and the other claimant is fenced at once.

**Behind replicas.** A member that does not cover the target never claims while one that
does exists. If no eligible member covers it (the only holder of the newest acknowledged
write is suspect, not ready, or still catching up), we *wait* up to `catchup_timeout`
rather than hand the session to a stale replica: a suspect refutes or dies, anti-entropy
brings the others up to date. After that, the members whose vectors no other eligible
member strictly dominates (the most caught-up) claim in the same staggered way
(`reason="fallback"`). What only the dead owner held (writes committed with `replicas=0`,
or acknowledged by replicas that died too) cannot be recovered by anyone; the CRDT merge
loses nothing that any survivor holds, so a late arrival still lands in the session.

**Limits.** Coverage is judged from reports, not from the replicas themselves: a member
that does not know a peer is ahead of it can claim while behind (the missing writes
arrive by anti-entropy afterwards, so nothing is lost, but the takeover handler may run
before they do; the runtime should pull the document from live peers before calling it).
Peers declare the owner dead at slightly different times, so slots differ by that much;
`stagger` should exceed that spread plus the time a claim takes to spread.

**Split brain** is decided by `gossip.quorum`: act on a failure only while seeing a
majority of the last stable membership (ties to the half with the lowest id; or the
availability policy), where seeing a member means it has been alive since before the
failure *and* it answered a request we sent after the failure was declared: a round trip.
A member enters the stable set only once it has answered some request of ours (a pull,
or a probe it acknowledged itself), so made-up members announced by a key holder never
make a quorum that only they could complete.
Hearing from it is not enough, since a node whose outbound traffic is cut hears everyone
while nobody hears it (`statemesh chaos`, issue 8). An owner we heard from after
declaring it dead is not taken over for `catchup_timeout` (a healed partition: it is
about to refute). Both rules came from the simulator: without them a minority counted a
member it had not probed yet, and after a heal a side counted members that had just come
back while the owner's refutation was still on its way. **Fencing**: after a
merge of the ownership table, `fenced` lists the sessions this node believed it owned
that now belong to someone else at a higher (epoch, owner); the runtime raises
`crdt_types.errors.Fenced` on writes to them and emits the events.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from crdt_types.errors import InvalidValue, LocalError
from crdt_types.ownership import Claim
from crdt_types.vv import VersionVector, decode_state_vector
from gossip.events import OwnerChanged, StandbyAssigned, TakeoverPlanned, WorkloadFenced
from gossip.messages import ALIVE, DEAD, LEFT, MEMBER_STATES, SUSPECT
from gossip.quorum import (
    AVAILABILITY,
    MAJORITY,
    POLICIES,
    RECHECK,
    StableMembership,
    admitted,
    has_quorum,
    visible,
)
from gossip.successor import Ranker

__all__ = [
    "CLAIM_REASONS",
    "Decision",
    "FailoverPolicy",
    "FailoverState",
    "FailoverView",
    "MemberRecord",
    "MemberView",
    "OwnerChanged",
    "StandbyAssigned",
    "Takeover",
    "TakeoverPlanned",
    "WorkloadFenced",
    "coverage_target",
    "fenced",
    "member_views",
    "next_deadline",
    "owner_changes",
    "plan_handoff",
    "plan_takeovers",
    "quorum_ok",
    "standby_changes",
    "standbys",
]

DurableLookup = Callable[[str, str], "VersionVector | bytes | None"]

CLAIM_REASONS = (
    "caught_up",  # the successor's durable replica covers the target
    "fallback",  # nobody covered it within catchup_timeout: the most caught-up claim
    "handoff",  # graceful leave: the leaving owner claims for the successor
    "handoff_sync",  # hand-off to a successor that must first catch up with the owner
    "waiting",  # nobody covers the target yet; wait for catch-up (no successor)
    "no_quorum",  # this side cannot see a quorum of the stable membership
    "owner_heard",  # the owner spoke after it was declared dead: wait for it to refute
    "late_quorum",  # quorum came long after the verdict (a healed partition): let it refute
    "no_candidate",  # no member is alive and ready to take it
)


# --- inputs ------------------------------------------------------------------------------


def _check_number(value: object, what: str, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidValue(f"{what} must be a number, not {value!r}")
    if value < 0 or (value == math.inf and not allow_inf):
        raise InvalidValue(f"{what} must be finite and >= 0, got {value!r}")
    return float(value)


def _check_time(now: object) -> float:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise InvalidValue(f"now must be a finite number, not {now!r}")
    return float(now)


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"{what} must be a non-empty str, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as this node sees it (times are protocol time, like `now`).

    `state` since `since`; `ready`: its replica is caught up and its stores loaded (as it
    announced); `heard`: when this node last received an authenticated frame from it
    (None: never); `answered`: when this node sent the latest request that the member
    answered (`gossip.quorum.RoundTrips`; None: never); `acked`: when the member last
    acknowledged one of our probes itself (`gossip.membership.Member.acked`; None: never).
    The split-brain rule counts only members that answered after a failure, and admits to
    the stable set only members that answered or acked something; `heard` serves the
    `owner_heard` hold.
    """

    node: str
    state: str
    since: float
    ready: bool = True
    heard: float | None = None
    answered: float | None = None
    acked: float | None = None

    def __post_init__(self) -> None:
        _check_id(self.node, "member id")
        if self.state not in MEMBER_STATES:
            raise InvalidValue(f"member {self.node!r}: unknown state {self.state!r}")
        if isinstance(self.since, bool) or not isinstance(self.since, int | float):
            raise InvalidValue(f"member {self.node!r}: since must be a number")
        if math.isnan(self.since):
            raise InvalidValue(f"member {self.node!r}: since is NaN")
        if not isinstance(self.ready, bool):
            raise InvalidValue(f"member {self.node!r}: ready must be a bool")
        for what in ("heard", "answered", "acked"):
            t = getattr(self, what)
            if t is not None and (
                isinstance(t, bool) or not isinstance(t, int | float) or math.isnan(t)
            ):
                raise InvalidValue(f"member {self.node!r}: {what} must be a number or None")


@dataclass(frozen=True, slots=True)
class FailoverPolicy:
    """How failover trades safety for availability, and its timings (seconds)."""

    split_brain: str = MAJORITY  # or AVAILABILITY: any side may take over
    # Between successive claim slots: one LAN gossip round (0.2 s) plus margin, so the
    # first claim usually reaches the next candidate before its slot.
    stagger: float = 0.25
    catchup_timeout: float = 2.0  # how long to wait for a caught-up successor
    orphan_after: float = 5.0  # a left owner's unclaimed sessions are taken after this
    max_slots: int = 8  # slot index cap, so a large mesh waits at most this many staggers

    def __post_init__(self) -> None:
        if self.split_brain not in POLICIES:
            raise InvalidValue(f"split_brain must be one of {POLICIES}, not {self.split_brain!r}")
        _check_number(self.stagger, "stagger")
        _check_number(self.catchup_timeout, "catchup_timeout")
        _check_number(self.orphan_after, "orphan_after", allow_inf=True)
        if isinstance(self.max_slots, bool) or not isinstance(self.max_slots, int):
            raise InvalidValue(f"max_slots must be an int, not {self.max_slots!r}")
        if self.max_slots < 1:
            raise InvalidValue(f"max_slots must be at least 1, got {self.max_slots}")


def _no_durable(node: str, workload: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class FailoverView:
    """Everything a failover decision reads; build one per decision, it is not kept.

    `members` must include this node. `claims` are the ownership table's winning claims
    (`OwnershipTable.claims()`). `durable(node, workload)` returns the durable version
    vector `node` reported for the workload's document (for `me`, our own), as a
    `VersionVector` or pycrdt state-vector bytes, or None if unknown. `stable` is
    `StableMembership.stable` (None: not settled yet, so no quorum in majority mode) and
    `stable_since` its `adopted_at`.
    """

    me: str
    members: Mapping[str, MemberView]
    claims: tuple[Claim, ...] = ()
    durable: DurableLookup = _no_durable
    stable: frozenset[str] | None = None
    policy: FailoverPolicy = field(default_factory=FailoverPolicy)
    stable_since: float = -math.inf

    def __post_init__(self) -> None:
        _check_id(self.me, "node id")
        members = dict(self.members.items()) if isinstance(self.members, Mapping) else None
        if members is None:
            raise InvalidValue("members must map node id -> MemberView")
        for node, view in members.items():
            if not isinstance(view, MemberView) or view.node != node:
                raise InvalidValue(f"members[{node!r}] must be a MemberView for that node")
        if self.me not in members:
            raise InvalidValue(f"members must include this node {self.me!r}")
        claims = tuple(self.claims)
        seen: set[str] = set()
        for claim in claims:
            if not isinstance(claim, Claim):
                raise InvalidValue(f"claims must be Claim objects, not {claim!r}")
            if claim.workload in seen:
                raise InvalidValue(f"claims list workload {claim.workload!r} twice")
            seen.add(claim.workload)
        if not callable(self.durable):
            raise InvalidValue("durable must be callable as durable(node, workload)")
        if self.stable is not None:
            stable = frozenset(self.stable)
            if not stable or any(not isinstance(n, str) or not n for n in stable):
                raise InvalidValue(f"stable must be None or a set of node ids, not {self.stable!r}")
            object.__setattr__(self, "stable", stable)
        if not isinstance(self.policy, FailoverPolicy):
            raise InvalidValue("policy must be a FailoverPolicy")
        t = self.stable_since
        if isinstance(t, bool) or not isinstance(t, int | float) or math.isnan(t):
            raise InvalidValue(f"stable_since must be a number, not {t!r}")
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "claims", claims)

    def vector(self, node: str, workload: str) -> VersionVector:
        """`node`'s reported durable vector of `workload` (empty if unknown)."""
        return VersionVector.from_dict(_Vectors(self).get(node, workload))


class _Vectors:
    """The durable vectors one decision reads, each decoded once, as {client: clock}."""

    __slots__ = ("view", "_by_key", "_by_bytes")

    def __init__(self, view: FailoverView) -> None:
        self.view = view
        self._by_key: dict[tuple[str, str], dict[int, int]] = {}
        self._by_bytes: dict[bytes, dict[int, int]] = {}

    def get(self, node: str, workload: str) -> dict[int, int]:
        key = (node, workload)
        got = self._by_key.get(key)
        if got is None:
            got = self._by_key[key] = self._decode(node, workload)
        return got

    def _decode(self, node: str, workload: str) -> dict[int, int]:
        got = self.view.durable(node, workload)
        if got is None:
            return {}
        if isinstance(got, VersionVector):
            return got.as_dict()
        if not isinstance(got, bytes | bytearray | memoryview):
            raise InvalidValue(f"durable({node!r}, {workload!r}) returned {type(got).__name__}")
        raw = bytes(got)
        clocks = self._by_bytes.get(raw)
        if clocks is None:
            try:
                clocks = decode_state_vector(raw)
            except InvalidValue as exc:
                raise InvalidValue(
                    f"durable vector of {workload!r} on {node!r} is malformed: {exc}"
                ) from None
            self._by_bytes[raw] = clocks
        return clocks

    def target(self, workload: str, owner: str) -> dict[int, int]:
        # What live members other than the owner reported, merged.
        merged: dict[int, int] = {}
        for node, m in self.view.members.items():
            if node != owner and m.state in (ALIVE, SUSPECT):
                _merge_into(merged, self.get(node, workload))
        return merged


def _merge_into(into: dict[int, int], other: dict[int, int]) -> None:
    for client, clock in other.items():
        if clock > into.get(client, 0):
            into[client] = clock


def _covers(mine: dict[int, int], other: dict[int, int]) -> bool:
    return all(mine.get(client, 0) >= clock for client, clock in other.items())


class MemberRecord(Protocol):
    """What `member_views` reads from a membership record (`gossip.membership.Member`)."""

    node: str
    state: str
    since: float
    acked: float | None


def member_views(
    members: Iterable[MemberRecord],
    ready: Callable[[str], bool],
    heard: Mapping[str, float] | None = None,
    answered: Mapping[str, float] | None = None,
) -> dict[str, MemberView]:
    """MemberViews from membership records, a readiness test, last-heard and answered times.

    A record's `acked` (its last direct probe ack) is carried over as is.
    """
    heard = heard or {}
    answered = answered or {}
    return {
        m.node: MemberView(
            m.node,
            m.state,
            m.since,
            bool(ready(m.node)),
            heard.get(m.node),
            answered.get(m.node),
            m.acked,
        )
        for m in members
    }


# --- decisions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Takeover:
    """The plan for one orphaned workload, as this node sees it.

    `successor` is the member expected to claim (None: nobody yet, see `reason`), at
    `not_before`. `my_slot` is when *this* node claims if the workload is still unclaimed
    then (None: this node must not claim it); `claim_due(now)` says whether that is now.
    The claim is `OwnershipTable.claim(workload, successor, epoch)`, made by the successor,
    or for a hand-off by the leaving owner. `target` is what the claimant should hold.
    """

    workload: str
    previous_owner: str
    previous_epoch: int
    successor: str | None
    reason: str
    not_before: float
    my_slot: float | None
    target: VersionVector

    @property
    def epoch(self) -> int:
        """The epoch to claim at."""
        return self.previous_epoch + 1

    def held(self, reason: str, until: float) -> Takeover:
        """This plan put on hold for `reason` until `until`: no successor, no slot."""
        return replace(self, successor=None, reason=reason, not_before=until, my_slot=None)

    def claim_due(self, now: float) -> bool:
        """True if this node should claim the workload at `now`."""
        return self.my_slot is not None and now >= self.my_slot

    def event(self) -> TakeoverPlanned | None:
        """The `TakeoverPlanned` event for this plan, if it names a successor."""
        if self.successor is None:
            return None
        return TakeoverPlanned(
            self.workload, self.previous_owner, self.successor, self.epoch, self.reason
        )


def quorum_ok(view: FailoverView, since: float, owner: str | None = None) -> bool:
    """True if this node's side may act on `owner`'s failure declared at `since`.

    Counted: this node and the members of the stable set alive since before the failure
    that answered a request sent after it (see `gossip.quorum.visible`). If the stable set no longer
    holds the owner, this side already agreed, under quorum, that it is gone; the
    evidence then has to postdate that adoption instead.
    """
    if view.policy.split_brain == AVAILABILITY:
        return True
    if view.stable is None:
        return False
    if owner is not None and owner not in view.stable:
        since = max(since, view.stable_since)
    states = {n: m.state for n, m in view.members.items()}
    answered = {n: m.answered for n, m in view.members.items() if m.answered is not None}
    up_since = {n: m.since for n, m in view.members.items()}
    return has_quorum(view.stable, visible(view.me, states, answered, since, up_since))


class _Eligible:
    """The members that may succeed each owner in one view; `eligible(owner)`.

    Alive, not suspect: a suspect may be on the other side of a partition. Admitted (in
    the stable set, or answered us): a member only gossip speaks of may be made up, and
    ranked first it would hold the real successor's slot back for nothing. Admission is
    worked out once per view, not once per owner (a step plans for every owner).
    """

    def __init__(self, view: FailoverView) -> None:
        self._view = view
        self._base: list[str] | None = None
        self._by_owner: dict[str, list[str]] = {}

    def __call__(self, owner: str) -> list[str]:
        got = self._by_owner.get(owner)
        if got is None:
            if self._base is None:
                ok = _admitted(self._view)
                self._base = [
                    n
                    for n, m in self._view.members.items()
                    if m.state == ALIVE and m.ready and n in ok
                ]
            got = self._by_owner[owner] = [n for n in self._base if n != owner]
        return got


def _admitted(view: FailoverView) -> frozenset[str]:
    states = {n: m.state for n, m in view.members.items()}
    answered = {n: m.answered for n, m in view.members.items() if m.answered is not None}
    proven = [n for n, m in view.members.items() if m.acked is not None]
    return admitted(view.me, states, answered, proven, view.stable)


def coverage_target(view: FailoverView, workload: str, owner: str) -> VersionVector:
    """The merge of durable vectors of `workload` reported by live members other than `owner`."""
    return VersionVector.from_dict(_Vectors(view).target(workload, owner))


def _frontier(vectors: _Vectors, workload: str, nodes: list[str]) -> set[str]:
    # The most caught-up: members whose vector no other candidate's strictly dominates.
    vs = {n: vectors.get(n, workload) for n in nodes}
    return {
        n
        for n in nodes
        if not any(_covers(vs[o], vs[n]) and not _covers(vs[n], vs[o]) for o in nodes if o != n)
    }


def _slot(policy: FailoverPolicy, base: float, index: int) -> float:
    return base + min(index, policy.max_slots) * policy.stagger


def _plan_one(
    now: float,
    view: FailoverView,
    vectors: _Vectors,
    eligible: list[str],
    claim: Claim,
    since: float,
    ranker: Ranker,
) -> Takeover:
    policy = view.policy
    w = claim.workload
    target = vectors.target(w, claim.owner)

    def plan(reason: str, successor: str | None, at: float, mine: float | None) -> Takeover:
        vv = VersionVector.from_dict(target)
        return Takeover(w, claim.owner, claim.epoch, successor, reason, at, mine, vv)

    ranked = ranker.rank(w, eligible)
    if not ranked:
        return plan("no_candidate", None, math.inf, None)
    covering = {n for n in ranked if _covers(vectors.get(n, w), target)}
    if covering:
        pool, reason, base = covering, "caught_up", since
    elif now < since + policy.catchup_timeout:
        return plan("waiting", None, since + policy.catchup_timeout, None)
    else:
        pool, reason = _frontier(vectors, w, ranked), "fallback"
        base = since + policy.catchup_timeout
    # Slots follow the full ranking, not the pool: a member that looks behind to us may
    # be caught up in its own view, and its earlier slot keeps the two of us from
    # claiming at the same moment.
    first = next(i for i, n in enumerate(ranked) if n in pool)
    mine = None
    if view.me in pool:
        mine = _slot(policy, base, ranked.index(view.me))
    return plan(reason, ranked[first], _slot(policy, base, first), mine)


# Seconds after a death beyond which quorum evidence for it counts as late (see
# FailoverState._hold_late_quorum); the majority's evidence takes one round trip.
LATE_QUORUM = 1.0


# How recently, before a death, we must have heard from a quorum for the verdict to
# count as formed in touch with it (members are heard many times a second in a busy
# mesh, about once per probe round in an idle one).
CONTACT_WINDOW = 1.0


def _formed_alone(view: FailoverView, since: float) -> bool:
    """True if, around `since`, this node had not heard from a quorum of the stable set."""
    if view.stable is None:
        return False
    states = {n: m.state for n, m in view.members.items()}
    heard = {n: m.heard for n, m in view.members.items() if m.heard is not None}
    return not has_quorum(view.stable, visible(view.me, states, heard, since - CONTACT_WINDOW))


def plan_takeovers(now: float, view: FailoverView, ranker: Ranker | None = None) -> list[Takeover]:
    """A plan for every workload whose owner is dead (or left without handing it over)."""
    _check_time(now)
    ranker = Ranker() if ranker is None else ranker
    plans: list[Takeover] = []
    quorum: dict[tuple[float, str], bool] = {}
    vectors = _Vectors(view)
    eligible = _Eligible(view)
    for claim in view.claims:
        owner = view.members.get(claim.owner)
        if claim.owner == view.me or owner is None:
            # Our own: we follow the table, never reclaim. Unknown owner: not known dead.
            continue
        if owner.state == DEAD:
            since = owner.since
        elif owner.state == LEFT and now >= owner.since + view.policy.orphan_after:
            since = owner.since + view.policy.orphan_after
        else:
            continue

        def hold(reason: str, until: float, claim: Claim = claim) -> Takeover:
            target = VersionVector.from_dict(vectors.target(claim.workload, claim.owner))
            return Takeover(
                claim.workload, claim.owner, claim.epoch, None, reason, until, None, target
            )

        if owner.heard is not None and owner.heard > since:
            # It spoke after we declared it dead: a healed partition, about to refute.
            # Bounded, so one late packet from a really dead node cannot block forever.
            until = owner.heard + view.policy.catchup_timeout
            if now < until:
                plans.append(hold("owner_heard", until))
                continue
        key = (since, claim.owner)
        if key not in quorum:
            quorum[key] = quorum_ok(view, since, claim.owner)
        if not quorum[key]:
            plans.append(hold("no_quorum", math.inf))
            continue
        plans.append(_plan_one(now, view, vectors, eligible(claim.owner), claim, since, ranker))
    return plans


def plan_handoff(owner: str, view: FailoverView, ranker: Ranker | None = None) -> list[Takeover]:
    """Where each of `owner`'s workloads goes when `owner` leaves gracefully.

    The leaving owner claims each for its successor at epoch + 1 before it announces its
    departure, so there is no gap. The successor is the best-ranked eligible member
    whose durable replica covers the owner's own durable vector; if none does, the
    standby (`reason="handoff_sync"`: push the document to it and wait for its ack first).
    """
    _check_id(owner, "owner node id")
    if owner not in view.members:
        raise LocalError(f"{owner!r} is not a member this node knows")
    ranker = Ranker() if ranker is None else ranker
    plans: list[Takeover] = []
    vectors = _Vectors(view)
    eligible = _Eligible(view)(owner)
    for claim in view.claims:
        if claim.owner != owner:
            continue
        # The owner is alive and knows its own vector exactly, so it is the target.
        clocks = vectors.target(claim.workload, owner)
        _merge_into(clocks, vectors.get(owner, claim.workload))
        target = VersionVector.from_dict(clocks)
        ranked = ranker.rank(claim.workload, eligible)
        if not ranked:
            plans.append(
                Takeover(
                    claim.workload, owner, claim.epoch, None, "no_candidate", math.inf, None, target
                )
            )
            continue
        covering = [n for n in ranked if _covers(vectors.get(n, claim.workload), clocks)]
        chosen, reason = (covering[0], "handoff") if covering else (ranked[0], "handoff_sync")
        mine = -math.inf if owner == view.me else None
        plans.append(
            Takeover(claim.workload, owner, claim.epoch, chosen, reason, -math.inf, mine, target)
        )
    return plans


def standbys(view: FailoverView, ranker: Ranker | None = None) -> dict[str, tuple[str, str | None]]:
    """For each workload whose owner is up: (owner, the member that would succeed it)."""
    ranker = Ranker() if ranker is None else ranker
    out: dict[str, tuple[str, str | None]] = {}
    eligible = _Eligible(view)
    for claim in view.claims:
        owner = view.members.get(claim.owner)
        if owner is None or owner.state not in (ALIVE, SUSPECT):
            continue
        out[claim.workload] = (
            claim.owner,
            ranker.standby(claim.workload, claim.owner, eligible(claim.owner)),
        )
    return out


def standby_changes(
    before: Mapping[str, tuple[str, str | None]], after: Mapping[str, tuple[str, str | None]]
) -> list[StandbyAssigned]:
    """`StandbyAssigned` for every workload whose (owner, standby) is new in `after`."""
    return [
        StandbyAssigned(w, owner, chosen)
        for w, (owner, chosen) in sorted(after.items())
        if before.get(w) != (owner, chosen)
    ]


def next_deadline(now: float, plans: Iterable[Takeover]) -> float:
    """When to plan again for slots still ahead (inf if none): a claim, or the end of a wait."""
    times = [t.not_before for t in plans if now < t.not_before < math.inf]
    times += [t.my_slot for t in plans if t.my_slot is not None and now < t.my_slot]
    return min(times, default=math.inf)


# --- fencing and routing -----------------------------------------------------------------


def fenced(me: str, believed: Mapping[str, int], claims: Iterable[Claim]) -> list[WorkloadFenced]:
    """Workloads this node believed it owned (at the given epochs) that another node won."""
    _check_id(me, "node id")
    winners = {c.workload: c for c in claims}
    out = []
    for workload, epoch in sorted(believed.items()):
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise InvalidValue(f"believed epoch of {workload!r} must be an int >= 1, not {epoch!r}")
        win = winners.get(workload)
        # Equal epochs happen when two sides claimed at once; (epoch, owner) decides, as in
        # the table's merge, so exactly one of the two is fenced.
        if win is not None and win.owner != me and (win.epoch, win.owner) > (epoch, me):
            out.append(WorkloadFenced(workload, win.owner, win.epoch, epoch))
    return out


def owner_changes(before: Iterable[Claim], after: Iterable[Claim]) -> list[OwnerChanged]:
    """`OwnerChanged` for every workload whose winning claim differs between the two lists."""
    old = {c.workload: c for c in before}
    out = []
    for claim in sorted(after):
        prev = old.get(claim.workload)
        if prev is None or (prev.owner, prev.epoch) != (claim.owner, claim.epoch):
            out.append(
                OwnerChanged(claim.workload, claim.owner, claim.epoch, prev.owner if prev else None)
            )
    return out


# --- the state machine the runtime drives ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What one `FailoverState.step` decided.

    `claims`: claim each now with `OwnershipTable.claim(t.workload, me, t.epoch)` (skip
    one whose epoch moved meanwhile: the table refuses it). `plans`: every current plan,
    for status pages. `events`: `OwnerChanged`, `WorkloadFenced`, `TakeoverPlanned`,
    `StandbyAssigned`, each raised once per change. `deadline`: call `step` again by then
    (inf: only when members, claims or durable vectors change). `ask`: quorum evidence is
    wanted (a plan waits for quorum, or a new stable set must be vouched for): send live
    members a request they answer, register it in `RoundTrips`, about every `RECHECK`.
    """

    claims: list[Takeover]
    plans: list[Takeover]
    events: list[object]
    deadline: float
    ask: bool = False


class FailoverState:
    """One node's failover bookkeeping: stable membership, owned workloads, fencing, events.

    Feed it `step(now, members, claims, durable)` whenever membership, the ownership table
    or a durable vector changes, and at `Decision.deadline`. It remembers what this node
    owns (from the table, so a node that restarts owns what the merged table says and
    nothing else: it never reclaims), which workloads it was fenced from, the standbys it
    announced and the takeovers it planned, so every event is raised once per change.
    """

    def __init__(
        self,
        me: str,
        policy: FailoverPolicy | None = None,
        *,
        settle: float = 5.0,
        stable: Iterable[str] | None = None,
    ) -> None:
        _check_id(me, "node id")
        self.me = me
        self.policy = FailoverPolicy() if policy is None else policy
        if not isinstance(self.policy, FailoverPolicy):
            raise InvalidValue("policy must be a FailoverPolicy")
        self.membership = StableMembership(me, settle, stable)
        # This node's own memo of rankings (failover re-ranks every workload each step).
        self.ranker = Ranker()
        self._claims: dict[str, Claim] = {}
        self._owned: dict[str, int] = {}
        self._fenced: dict[str, Claim] = {}
        self._standbys: dict[str, tuple[str, str | None]] = {}
        self._announced: dict[str, TakeoverPlanned] = {}
        self._quorum_at: dict[tuple[str, float], float] = {}  # (owner, since) -> first quorum
        self._alone: dict[tuple[str, float], bool] = {}  # (owner, since) -> verdict formed alone
        # When this node first had a stable set (-inf: restored from disk).
        self._stable_from = -math.inf if self.membership.stable is not None else math.inf
        # When each workload's current winning claim first appeared here (-inf: it was
        # there at our first step, e.g. read from disk on a restart).
        self._claim_seen: dict[str, float] | None = None  # None until the first step

    @property
    def owned(self) -> dict[str, int]:
        """Workloads this node owns, with their epochs, as of the last step."""
        return dict(self._owned)

    def is_fenced(self, workload: str) -> bool:
        """True if this node owned `workload` and another node took it over."""
        return workload in self._fenced

    def step(
        self,
        now: float,
        members: Mapping[str, MemberView],
        claims: Iterable[Claim],
        durable: DurableLookup = _no_durable,
    ) -> Decision:
        """Observe the current view at `now` and decide; see `Decision`."""
        _check_time(now)
        # Validate everything before changing any state: bad input changes nothing.
        view = FailoverView(self.me, members, tuple(claims), durable, None, self.policy)
        # The stable set shrinks only under quorum of the set it replaces, so observing
        # first cannot let a failure grant the quorum to act on itself.
        saved = copy.copy(self.membership)
        states = {n: m.state for n, m in view.members.items()}
        answered = {n: m.answered for n, m in view.members.items() if m.answered is not None}
        up_since = {n: m.since for n, m in view.members.items()}
        # Admission to the stable set: answered a request of ours (a pull or a probe).
        proven = [n for n, m in view.members.items() if m.acked is not None]
        self.membership.observe(now, states, answered, up_since, proven)
        view = FailoverView(
            self.me,
            view.members,
            view.claims,
            durable,
            self.membership.stable,
            self.policy,
            self.membership.adopted_at,
        )
        try:
            plans = plan_takeovers(now, view, self.ranker)
            current = standbys(view, self.ranker)
        except InvalidValue:
            self.membership = saved  # a malformed durable vector: as if never called
            raise
        if self._stable_from == math.inf and self.membership.stable is not None:
            self._stable_from = now
        plans = self._hold_late_quorum(now, view, plans)
        plans = self._hold_claims_of_the_dead(now, view, plans)
        events: list[object] = []
        events.extend(owner_changes(self._claims.values(), view.claims))
        for ev in fenced(self.me, self._owned, view.claims):
            events.append(ev)
            self._fenced[ev.workload] = Claim(ev.workload, ev.owner, ev.epoch)
        self._claims = {c.workload: c for c in view.claims}
        self._owned = {c.workload: c.epoch for c in view.claims if c.owner == self.me}
        # Forget fencing of workloads we own again or that left the table.
        self._fenced = {
            w: c for w, c in self._fenced.items() if w in self._claims and w not in self._owned
        }
        events.extend(self._announce(plans))
        events.extend(standby_changes(self._standbys, current))
        self._standbys = current
        deadline = min(next_deadline(now, plans), self.membership.next_deadline())
        if any(t.reason == "no_quorum" for t in plans):
            # Quorum can complete by hearing from members, which changes no state.
            deadline = min(deadline, now + RECHECK)
        due = [t for t in plans if t.claim_due(now)]
        # Evidence is answers to requests sent after the change it vouches for; nothing
        # else prompts the peers to answer, so ask while some decision waits for it.
        ask = self.policy.split_brain == MAJORITY and (
            any(t.reason == "no_quorum" for t in plans)
            or self.membership.next_deadline() < math.inf
        )
        return Decision(due, plans, events, deadline, ask)

    def _hold_late_quorum(
        self, now: float, view: FailoverView, plans: list[Takeover]
    ) -> list[Takeover]:
        """Hold for `catchup_timeout` plans whose quorum came late or whose verdict came alone.

        On the side that holds the majority, the evidence for a death arrives within a
        round trip of it. Evidence that arrives much later comes from members that were
        out of reach (the minority of a healed partition hearing the majority again),
        while its verdict, formed without quorum, may be about a member that was alive
        with the majority all along and has not refuted yet: acting at once took over the
        sessions of live owners (statemesh chaos, 5 hosts, seed 2). Waiting lets it refute.
        The same holds for a verdict formed while this node had heard from no quorum in
        the `CONTACT_WINDOW` before the death (cut off one way), however soon after it
        the cut heals (statemesh chaos, 5 hosts, 10 minutes, seed 10).
        """
        if self.policy.split_brain == AVAILABILITY:
            return plans  # both sides act by choice there; nothing waits for quorum
        keep: dict[tuple[str, float], float] = {}
        alone: dict[tuple[str, float], bool] = {}
        out = []
        for t in plans:
            owner = view.members.get(t.previous_owner)
            if owner is None or owner.state != DEAD:
                out.append(t)
                continue
            key = (t.previous_owner, owner.since)
            # Judged once, when we first see the death: were we in touch with a quorum
            # just before it? A verdict formed while cut off (a partition, a one-way
            # cut) is as stale as a late quorum, however soon the cut heals after it.
            # (Once per owner, not per workload: an owner's workloads share the verdict.)
            if key not in alone:
                judged = self._alone.get(key)
                alone[key] = _formed_alone(view, owner.since) if judged is None else judged
            if t.reason in ("no_quorum", "owner_heard"):
                out.append(t)
                continue
            first = keep[key] = self._quorum_at.get(key, now)
            until = first + self.policy.catchup_timeout
            # A node that had no stable set yet when the owner died (it was starting)
            # waited for its first one, not for a partition to heal: it is not "late".
            existed = self._stable_from <= owner.since
            stale = first - owner.since > LATE_QUORUM or alone[key]
            if existed and stale and now < until:
                t = t.held("late_quorum", until)
            out.append(t)
        self._quorum_at = keep
        self._alone = alone
        return out

    def _hold_claims_of_the_dead(
        self, now: float, view: FailoverView, plans: list[Takeover]
    ) -> list[Takeover]:
        """Treat a claim that appeared after its owner's death verdict like a frame from it.

        A claim names the member that wrote it (a takeover or an open; a hand-off names
        the successor), so a claim by a member we hold dead that reaches us after the
        verdict means it was alive across a partition, not dead: wait `catchup_timeout`
        for its refutation as for `owner_heard`. Without this, after a 2|1 partition
        with the availability policy healed, the lone side's claim reached the third
        peer through the other before the lone peer was alive again in its view, and
        it claimed a third epoch (tests/mesh/test_failover_netns.py). A claim that
        arrives after a verdict but was made before a real death costs that wait once.
        """
        first = self._claim_seen is None
        seen = self._claim_seen or {}
        current = {}
        for c in view.claims:
            prev = self._claims.get(c.workload)
            same = prev is not None and (prev.owner, prev.epoch) == (c.owner, c.epoch)
            current[c.workload] = seen.get(c.workload, -math.inf) if same or first else now
        self._claim_seen = current
        out = []
        for t in plans:
            owner = view.members.get(t.previous_owner)
            at = current.get(t.workload, -math.inf)
            until = at + self.policy.catchup_timeout
            if (
                owner is not None
                and owner.state == DEAD
                and at > owner.since
                and now < until
                and t.reason not in ("owner_heard", "no_quorum")
            ):
                t = t.held("owner_heard", until)
            out.append(t)
        return out

    def handoff(
        self,
        members: Mapping[str, MemberView],
        claims: Iterable[Claim],
        durable: DurableLookup = _no_durable,
    ) -> list[Takeover]:
        """Plan the graceful hand-off of everything this node owns (see `plan_handoff`)."""
        stable = self.membership.stable
        view = FailoverView(self.me, members, tuple(claims), durable, stable, self.policy)
        return plan_handoff(self.me, view, self.ranker)

    def _announce(self, plans: list[Takeover]) -> list[TakeoverPlanned]:
        out = []
        current: dict[str, TakeoverPlanned] = {}
        for t in plans:
            ev = t.event()
            if ev is None:
                continue
            current[t.workload] = ev
            if self._announced.get(t.workload) != ev:
                out.append(ev)
        self._announced = current
        return out
