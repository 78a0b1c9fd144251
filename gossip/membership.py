"""SWIM membership with the Lifeguard refinements, as a pure state machine.

`Membership` is fed `tick(now)` and `handle(now, sender_address, message)` and leaves
what it wants sent in an outbox of `(address, message)` pairs and what happened in an
event list; `take()` drains both. It never reads a clock or global randomness: `now` is
passed in and every random choice comes from the `random.Random` it was given, so a
seeded run replays exactly.

The protocol (Das et al. SWIM, with Hashicorp's Lifeguard and memberlist's choices):

* Each protocol period we probe one member, round-robin over a shuffled list: `Ping`; no
  `Ack` within the probe timeout -> `PingReq` to k members, which probe for us and answer
  `Nack` if the target stays silent; no ack by the end of the period -> we *suspect* it.
* A suspicion becomes *dead* when its timeout expires. The timeout starts at
  `suspicion_max` and shrinks logarithmically towards `suspicion_min` as independent
  members report the same suspicion (Lifeguard's dogpile), so a real failure is declared
  quickly while a lone, possibly unhealthy accuser has to wait longest.
* Incarnation numbers order rumours about one member. A member hearing that it is
  suspected (or dead) refutes by gossiping `alive` at a higher incarnation; only that
  member ever raises its own incarnation. Precedence at equal incarnation:
  left > dead > suspect > alive.
* Lifeguard local health awareness: a score in [0, awareness_max] that missed nacks,
  failed probes and refuting our own suspicion raise and successful probes lower. Probe
  interval and probe timeout are multiplied by (score + 1), so a node that is itself slow
  probes less and waits longer before it accuses anyone.
* `left` (graceful leave) is distinct from `dead`: failover only happens on dead.
* Dead and left members are forgotten (`MemberReaped`) after `reap_after`; until then we
  periodically ping a random dead member and, if it answers, push-pull with it, so the
  halves of a healed partition find each other again.
* Membership changes travel as `MemberUpdate` rumours piggybacked on other traffic, each
  sent `retransmit_limit(N)` times. Joining and periodic anti-entropy use a full
  `MembershipSync` push-pull.

Bounded against authenticated peers (issue 8): a peer holding the cluster key could name
30,000 made-up members in one frame. One envelope introduces at most `max_new_members`
members we did not know (`begin_envelope` starts the count; `take` starts it too), and
the table never holds more than `max_members` records: when it is full, the members that
have been dead or left longest are reaped early to make room (a batch per scan), and if
every record is up the newcomer is dropped. A rumour with metadata over `max_meta_bytes` is refused.
Indirect probes run for others are capped at `max_forwards`, and one batch of output
carries at most one full membership table to any address (in parts that each fit a
frame, `table_parts`). Whatever a cap drops is
counted in `refused`, by reason; nothing else changes. A request for document data from
a sender that is not a live member is refused by the node (`gossip.node`), counted here
(`non_member`), and answered with an invitation to join (`refuse_non_member`). Members
that a peer merely announces do not talk to us: a member is *first-hand* (`is_first_hand`)
once a frame naming it as sender, from the address we hold for it, reached us while it is
alive, and replication puts one such member in every rumour push, so a flood of
announced members cannot dilute the fan-out. The sender and its address are what the
frame says: a peer holding the cluster key can make a made-up member first-hand by
sending frames in its name (the key is the trust boundary).

Three choices beyond memberlist, each found necessary in the simulator (a live member
declared dead after a partition heals, or under 10 % loss):

* A push-pull merge never starts a suspicion of a member we know: the other side's view
  may be stale (it could not reach that member), and our own probes find real failures.
* A third party's `dead` never kills directly: it starts our own suspicion or confirms
  the running one (many such verdicts shrink it to the minimum), and only our own timer
  declares the death, so a verdict formed across a partition, or delivered twice, can
  still be refuted.
* The accused is told directly, when the suspicion starts, twice more before it expires,
  and on every frame we send it (Lifeguard's buddy system); it refutes straight back to
  the accuser, so refutation does not wait on busy gossip queues.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Sequence

from crdt_types.errors import LocalError
from gossip.config import GossipConfig
from gossip.events import (
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
)
from gossip.messages import (
    ALIVE,
    DEAD,
    LEFT,
    MEMBER_STATES,
    SUSPECT,
    Ack,
    MembershipSync,
    MemberUpdate,
    Nack,
    Ping,
    PingReq,
)

# Why a member rumour (or a request) was dropped by a cap: the keys of `Membership.refused`.
# non_member: a request for document data (anti-entropy) from a sender not alive or suspect here.
REFUSED_REASONS = ("envelope_cap", "table_full", "forwards", "sync_replies", "non_member")
# Precedence of states at an equal incarnation: a rumour overrides ours only if it ranks higher.
_RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}
_EVICT_BATCH = 64  # down members reaped early at once when the table is full
_REAP_CHECK = 1.0  # seconds between reap sweeps: reaping is not time-critical
# Rumours at or above this incarnation are refused: the wire carries at most 2**63-1, so a
# member accused at the very top could never refute (and its refutation would not encode,
# silencing it). Honest members climb by one per refutation and never get near it.
MAX_INCARNATION = 2**63 - 2**32


class Member:
    """What we believe about one member (mutable, owned by `Membership`)."""

    __slots__ = ("node", "address", "incarnation", "state", "since", "origin", "meta", "acked")

    def __init__(
        self,
        node: str,
        address: str,
        incarnation: int,
        state: str,
        since: float,
        origin: str,
        meta: bytes,
    ) -> None:
        self.node = node
        self.address = address
        self.incarnation = incarnation
        self.state = state
        self.since = since  # when it entered `state`, for reaping and gossip-to-the-dead
        self.origin = origin
        self.meta = meta
        # When it last acknowledged one of our probes itself (None: never): proof that it
        # exists and talks to us, which gossip about it is not (gossip.quorum admission).
        self.acked: float | None = None

    def update(self) -> MemberUpdate:
        """This record as a wire rumour."""
        return MemberUpdate(
            self.node, self.address, self.incarnation, self.state, self.origin, self.meta
        )

    def __repr__(self) -> str:
        return f"Member({self.node}@{self.address} {self.state} inc={self.incarnation})"


class _Suspicion:
    """Lifeguard suspicion timer: deadline shrinks with each independent confirmation."""

    __slots__ = ("start", "k", "low", "high", "confirmers", "deadline", "notify_at", "notices")

    def __init__(self, start: float, origin: str, k: int, low: float, high: float) -> None:
        self.start = start
        self.notify_at = start + low / 2  # when to tell the accused again (frames get lost)
        self.notices = 2  # re-notifications left
        self.k = k
        self.low = low
        self.high = high
        self.confirmers = {origin}
        self.deadline = start + (low if k < 1 else high)

    def confirm(self, origin: str) -> bool:
        """Count an independent suspicion from `origin`; True if it was new."""
        if self.k < 1 or origin in self.confirmers or len(self.confirmers) > self.k:
            return False
        self.confirmers.add(origin)
        c = len(self.confirmers) - 1
        frac = math.log(c + 1) / math.log(self.k + 1)
        timeout = max(self.low, self.high - frac * (self.high - self.low))
        self.deadline = self.start + timeout
        return True


class _Probe:
    __slots__ = ("seq", "target", "direct_deadline", "end", "acked", "indirect", "nacks")

    def __init__(self, seq: int, target: str, direct_deadline: float, end: float) -> None:
        self.seq = seq
        self.target = target
        self.direct_deadline = direct_deadline
        self.end = end
        self.acked = False
        self.indirect = -1  # intermediaries asked; -1 until the indirect phase starts
        self.nacks = 0


class _Forward:
    __slots__ = ("requester", "seq", "nack_at", "expires", "nacked")

    def __init__(self, requester: str, seq: int, nack_at: float, expires: float) -> None:
        self.requester = requester
        self.seq = seq
        self.nack_at = nack_at
        self.expires = expires
        self.nacked = False


class _LiveSet:
    """Members we probe and gossip to, with O(1) add, remove and random choice."""

    __slots__ = ("items", "pos")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.pos: dict[str, int] = {}

    def add(self, node: str) -> None:
        if node not in self.pos:
            self.pos[node] = len(self.items)
            self.items.append(node)

    def discard(self, node: str) -> None:
        i = self.pos.pop(node, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def sample(self, rng: random.Random, k: int, exclude: Iterable[str] = ()) -> list[str]:
        """Up to k distinct members not in `exclude`, uniformly chosen."""
        skip = set(exclude)
        n = len(self.items)
        if n - len(skip) <= 2 * k:
            pool = [x for x in self.items if x not in skip]
            return rng.sample(pool, min(k, len(pool)))
        chosen: list[str] = []
        seen = set(skip)
        # Rejection sampling: bounded because at least half the pool is eligible.
        for _ in range(8 * k + 8):
            x = self.items[rng.randrange(n)]
            if x not in seen:
                seen.add(x)
                chosen.append(x)
                if len(chosen) == k:
                    break
        return chosen


class Membership:
    """SWIM + Lifeguard membership of one node; see the module docstring."""

    def __init__(
        self,
        node_id: str,
        address: str,
        config: GossipConfig,
        rng: random.Random,
        *,
        incarnation: int = 0,
        meta: bytes = b"",
    ) -> None:
        if not node_id or not isinstance(node_id, str):
            raise LocalError("node_id must be a non-empty string")
        _check_address(address)
        _check_meta(meta, config)
        self.node_id = node_id
        self.config = config
        self._rng = rng
        self.members: dict[str, Member] = {
            node_id: Member(node_id, address, incarnation, ALIVE, 0.0, node_id, meta)
        }
        self._live = _LiveSet()  # alive or suspect members other than us
        self._down: set[str] = set()  # dead or left members, for reaping and reconnecting
        self._suspicions: dict[str, _Suspicion] = {}
        self._suspect_at: dict[str, str] = {}  # address -> suspected member living there
        # Earliest suspicion timer (deadline or notice), cached: a partition leaves hundreds
        # of suspicions open and the runtime asks for the next deadline after every event.
        # It may be early (a suspicion ended), never late: it is recomputed on every change.
        self._susp_due = math.inf
        self._susp_dirty = False
        self._broadcasts: dict[str, list] = {}  # node -> [MemberUpdate, times sent, order]
        self._bcast_order = 0
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._forwards: dict[int, _Forward] = {}
        self._reconnects: dict[int, str] = {}  # ping seq -> dead member we are checking on
        self._seq = 0
        self.awareness = 0
        self.leaving = False
        self._seeds: tuple[str, ...] = ()
        self._started = False
        self._next_probe = math.inf
        self._next_push_pull = math.inf
        self._next_reconnect = math.inf
        self._next_reap = math.inf
        self._outbox: list[tuple[str, object]] = []
        self._events: list[object] = []
        self._new_budget = config.max_new_members  # new members the current envelope may add
        self._synced: set[str] = set()  # addresses sent our whole table in this batch
        self._invited: set[str] = set()  # addresses asked to (re)join in this batch
        # Alive members a frame reached us from directly since they last became alive at
        # their address: known to exist, unlike what gossip alone says (`is_first_hand`).
        self._first_hand: set[str] = set()
        # What the caps dropped, by reason; only ever increases (exported as metrics).
        self.refused: dict[str, int] = dict.fromkeys(REFUSED_REASONS, 0)

    # --- queries ---------------------------------------------------------------------

    @property
    def me(self) -> Member:
        """Our own record."""
        return self.members[self.node_id]

    @property
    def incarnation(self) -> int:
        """Our current incarnation number."""
        return self.me.incarnation

    def live_members(self) -> list[str]:
        """Ids of members (not us) currently alive or suspect, in a deterministic order."""
        return list(self._live.items)

    def is_live(self, node: str) -> bool:
        """Whether `node` is a member (not us) alive or suspect now; O(1)."""
        return node in self._live.pos

    def is_first_hand(self, node: str) -> bool:
        """Whether `node` is alive and a frame from it reached us since it became so; O(1)."""
        return node in self._first_hand

    def heard_from(self, node: str, address: str) -> None:
        """A frame sent by `node` from `address` reached us: note it first-hand if it is alive there."""
        if node not in self._first_hand:
            m = self.members.get(node)
            if m is not None and m.state == ALIVE and m.address == address and node != self.node_id:
                self._first_hand.add(node)

    def state_of(self, node: str) -> str | None:
        """The state we hold for `node`, or None if unknown (or reaped)."""
        m = self.members.get(node)
        return m.state if m else None

    def address_of(self, node: str) -> str | None:
        """The address we hold for `node`, or None."""
        m = self.members.get(node)
        return m.address if m else None

    def estimated_size(self) -> int:
        """Members believed up (us included): the N in the timing formulas."""
        return len(self._live.items) + 1

    def scaled(self, seconds: float) -> float:
        """Lifeguard: stretch a probe timing by our local health multiplier."""
        return seconds * (self.awareness + 1)

    def suspicion_deadline(self, node: str) -> float | None:
        """When our suspicion of `node` turns into dead, or None if we do not suspect it."""
        s = self._suspicions.get(node)
        return s.deadline if s is not None else None

    def accusation_for(self, address: str) -> MemberUpdate | None:
        """Our suspicion of the member at `address`, to piggyback on whatever we send it.

        Lifeguard's buddy system: a suspected member learns it from the very frames it
        receives from its accuser, so a live one refutes before the timeout whatever the
        state of the gossip queues.
        """
        node = self._suspect_at.get(address)
        if node is None:
            return None
        m = self.members.get(node)
        if m is None or m.state != SUSPECT or m.address != address:
            self._suspect_at.pop(address, None)
            return None
        return m.update()

    def pending_broadcasts(self) -> int:
        """Membership rumours still waiting to be piggybacked."""
        return len(self._broadcasts)

    # --- driving ---------------------------------------------------------------------

    def take(self) -> tuple[list[tuple[str, object]], list[object]]:
        """Drain and return (sends, events) produced since the last call."""
        out, ev = self._outbox, self._events
        self._outbox, self._events = [], []
        self._synced.clear()
        self._invited.clear()
        self._new_budget = self.config.max_new_members
        return out, ev

    def begin_envelope(self) -> None:
        """Start a received envelope: it may introduce up to `max_new_members` new members."""
        self._new_budget = self.config.max_new_members

    def start(
        self,
        now: float,
        seeds: Sequence[str] = (),
        known: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Begin probing; join through `seeds` (addresses) and/or assume `known` (id, address) alive."""
        if self._started:
            raise LocalError("membership already started")
        for address in seeds:
            _check_address(address)
        self._started = True
        self.me.since = now
        members = self.members
        for node, address in known:
            if node != self.node_id and node not in members:
                _check_address(address)
                members[node] = Member(node, address, 0, ALIVE, now, node, b"")
                self._live.add(node)
        self._seeds = tuple(a for a in seeds if a != self.me.address)
        # Stagger the first probe and push-pull so that nodes started together do not
        # act in lockstep.
        n = self.estimated_size()
        self._next_probe = now + self._rng.random() * self.config.probe_interval
        self._next_push_pull = now + self._rng.random() * self.config.push_pull_period(n)
        self._next_reconnect = now + self.config.reconnect_interval
        self._next_reap = now + _REAP_CHECK
        # Announce ourselves by gossip too (memberlist does): a member that hears of us only
        # through a seed's push-pull does not re-gossip us, so without this the others
        # would learn of us only at their next push-pull, up to push_pull_interval later.
        self._queue(self.me.update())
        self._join()

    def _join(self) -> None:
        sync = MembershipSync((self.me.update(),), True)
        for address in self._seeds:
            self._outbox.append((address, sync))

    def join(self, addresses: Sequence[str]) -> None:
        """Push-pull with peers found after start (discovery); skips addresses of live members."""
        if not self._started or self.leaving:
            return
        live = {self.members[n].address for n in self._live.items}
        for address in addresses:
            _check_address(address)
            if address != self.me.address and address not in live:
                self._send_sync(address, reply=True)

    def next_deadline(self) -> float:
        """Earliest time at which `tick` has something to do."""
        t = min(self._next_probe, self._next_push_pull, self._next_reconnect, self._next_reap)
        p = self._probe
        if p is not None:
            t = min(t, p.end if p.acked or p.indirect >= 0 else p.direct_deadline)
        for f in self._forwards.values():
            t = min(t, f.expires if f.nacked else f.nack_at)
        if self._suspicions:
            t = min(t, self._suspicions_due())
        return t

    def _suspicions_due(self) -> float:
        if self._susp_dirty:
            self._susp_dirty = False
            self._susp_due = min(
                (min(s.deadline, s.notify_at) for s in self._suspicions.values()),
                default=math.inf,
            )
        return self._susp_due

    def tick(self, now: float) -> None:
        """Run every timer that is due at `now`."""
        if not self._started:
            return
        self._tick_probe(now)
        if self._forwards:
            self._tick_forwards(now)
        if self._suspicions and now >= self._suspicions_due():
            self._susp_dirty = True
            for node in [n for n, s in self._suspicions.items() if s.deadline <= now]:
                self._suspicion_expired(now, node)
            for node, s in self._suspicions.items():
                if s.notices and now >= s.notify_at:
                    # Our first notice to the accused may have been lost, and gossip may be
                    # slow to reach it: repeat a bounded number of times before the deadline.
                    s.notices -= 1
                    s.notify_at = now + s.low / 2 if s.notices else math.inf
                    m = self.members[node]
                    self._outbox.append((m.address, m.update()))
        if self.leaving:
            return
        if now >= self._next_push_pull:
            n = self.estimated_size()
            self._next_push_pull = now + self.config.push_pull_period(n)
            peer = self._live.sample(self._rng, 1)
            if peer:
                self._send_sync(self.members[peer[0]].address, reply=True)
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.config.reconnect_interval
            self._reconnect()
        if now >= self._next_reap:
            self._next_reap = now + _REAP_CHECK
            self._reap(now)

    def leave(self, now: float) -> None:
        """Leave gracefully: tell members we are `left`, then stop probing."""
        if self.leaving:
            return
        self.leaving = True
        me = self.me
        me.state = LEFT
        me.since = now
        me.origin = self.node_id
        upd = me.update()
        self._queue(upd)
        self._probe = None
        self._next_probe = self._next_push_pull = self._next_reconnect = math.inf
        for node in self._live.sample(self._rng, self.config.leave_fanout):
            self._outbox.append((self.members[node].address, upd))

    def set_meta(self, now: float, meta: bytes) -> None:
        """Change our metadata: a new incarnation so the change wins everywhere."""
        _check_meta(meta, self.config)
        me = self.me
        me.meta = meta
        me.incarnation += 1
        self._queue(me.update())

    # --- probing ---------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _tick_probe(self, now: float) -> None:
        p = self._probe
        if p is not None:
            if not p.acked and p.indirect < 0 and now >= p.direct_deadline:
                self._indirect_probe(now, p)
            if now >= p.end:
                self._finish_probe(now, p)
                p = None
        if p is None and now >= self._next_probe and not self.leaving:
            self._next_probe = now + self.scaled(self.config.probe_interval)
            self._start_probe(now)

    def _start_probe(self, now: float) -> None:
        target = self._next_target()
        if target is None:
            return
        m = self.members[target]
        seq = self._next_seq()
        self._probe = _Probe(
            seq,
            target,
            now + self.scaled(self.config.probe_timeout),
            now + self.scaled(self.config.probe_interval),
        )
        if m.state == SUSPECT:
            # Lifeguard "buddy system": tell a suspect directly so it can refute at once.
            self._outbox.append((m.address, m.update()))
        self._outbox.append((m.address, Ping(seq, target)))

    def _next_target(self) -> str | None:
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                node = self._probe_order[self._probe_index]
                self._probe_index += 1
                if node in self._live.pos:
                    return node
            # One full pass done: reshuffle so no member is probed twice before all once.
            self._probe_order = list(self._live.items)
            self._rng.shuffle(self._probe_order)
            self._probe_index = 0
            if not self._probe_order:
                return None
        return None

    def _indirect_probe(self, now: float, p: _Probe) -> None:
        target = self.members.get(p.target)
        if target is None:
            p.indirect = 0
            return
        # Only members we believe alive make useful helpers (memberlist does the same).
        helpers = self._live.sample(
            self._rng, self.config.indirect_checks, exclude=(p.target, *self._suspicions)
        )
        p.indirect = len(helpers)
        req = PingReq(p.seq, p.target, target.address)
        for node in helpers:
            self._outbox.append((self.members[node].address, req))

    def _finish_probe(self, now: float, p: _Probe) -> None:
        self._probe = None
        if p.acked:
            return
        # Missing nacks mean *our* messages or our intermediaries' are not getting through:
        # evidence that we may be the unhealthy one, so slow down before accusing more.
        if p.indirect > 0:
            self._adjust_awareness(p.indirect - p.nacks)
        else:
            self._adjust_awareness(1)
        m = self.members.get(p.target)
        if m is None:
            return
        if m.state == ALIVE:
            self._suspect(now, m, m.incarnation, self.node_id)
        elif m.state == SUSPECT:
            # Our own failed probe is an independent confirmation (Lifeguard dogpile).
            self._confirm(m, m.incarnation, self.node_id)

    def _adjust_awareness(self, delta: int) -> None:
        self.awareness = max(0, min(self.config.awareness_max, self.awareness + delta))

    def _tick_forwards(self, now: float) -> None:
        for seq in list(self._forwards):
            f = self._forwards[seq]
            if not f.nacked and now >= f.nack_at:
                f.nacked = True
                self._outbox.append((f.requester, Nack(f.seq)))
            if now >= f.expires:
                del self._forwards[seq]

    # --- incoming --------------------------------------------------------------------

    def handle(self, now: float, sender_address: str, msg: object) -> None:
        """Process one membership message received from `sender_address`."""
        if isinstance(msg, MemberUpdate):
            self.apply(now, msg, sender_address=sender_address)
        elif isinstance(msg, Ping):
            # A probe meant for whoever had this address before us is not ours to answer.
            if msg.target == self.node_id:
                self._outbox.append((sender_address, Ack(msg.seq)))
        elif isinstance(msg, Ack):
            self._on_ack(now, sender_address, msg.seq)
        elif isinstance(msg, PingReq):
            self._on_ping_req(now, sender_address, msg)
        elif isinstance(msg, Nack):
            p = self._probe
            if p is not None and p.seq == msg.seq:
                p.nacks += 1
        elif isinstance(msg, MembershipSync):
            self._on_sync(now, sender_address, msg)
        else:
            raise LocalError(f"not a membership message: {type(msg).__name__}")

    def _on_ack(self, now: float, sender_address: str, seq: int) -> None:
        p = self._probe
        if p is not None and p.seq == seq:
            target = self.members.get(p.target)
            if target is not None and target.address == sender_address:
                target.acked = now  # from the target, not relayed by a helper
            if not p.acked:
                p.acked = True
                self._adjust_awareness(-1)
            return
        f = self._forwards.pop(seq, None)
        if f is not None:
            self._outbox.append((f.requester, Ack(f.seq)))
            return
        node = self._reconnects.pop(seq, None)
        m = self.members.get(node) if node is not None else None
        if m is not None and m.state == DEAD:
            # The other side of a healed partition: merge views; it refutes its death.
            self._send_sync(m.address, reply=True)

    def _on_ping_req(self, now: float, sender_address: str, msg: PingReq) -> None:
        if msg.target == self.node_id:
            self._outbox.append((sender_address, Ack(msg.seq)))
            return
        # A malformed address is the requester's fault: refuse it here, not at the socket.
        _check_address(msg.target_address)
        if len(self._forwards) >= self.config.max_forwards:
            # Each forward is a probe we send to an address someone else chose: a frame of
            # thousands would make us ping on its behalf. The requester sees a missing nack.
            self.refused["forwards"] += 1
            return
        seq = self._next_seq()
        timeout = self.scaled(self.config.probe_timeout)
        self._forwards[seq] = _Forward(
            sender_address,
            msg.seq,
            now + self.config.nack_fraction * timeout,
            now + self.scaled(self.config.probe_interval),
        )
        self._outbox.append((msg.target_address, Ping(seq, msg.target)))

    def _on_sync(self, now: float, sender_address: str, msg: MembershipSync) -> None:
        for upd in msg.members:
            # The sender's word about itself is first-hand: gossip it on like a rumour, so
            # a member that joined through us is known to the others within a few rounds
            # (they must be able to address it, e.g. to send it replica acks).
            about_sender = upd.address == sender_address and upd.state == ALIVE
            self.apply(now, upd, from_sync=not about_sender, sender_address=sender_address)
        if msg.reply:
            self._send_sync(sender_address, reply=False)

    def refuse_non_member(self, node: str, address: str) -> None:
        """Count a request for document data from `node`, not a live member; invite it to join.

        The join path is how a peer becomes a member here: one we do not know gets our
        record and a request for its table (what a joiner sends its seeds), so its own
        record comes back first-hand; one we hold dead or left also gets our record of it,
        so that a live one refutes straight back to us. At most one invitation per address
        per batch of output, and none to an address that is not "host:port".
        """
        self.refused["non_member"] += 1
        if node == self.node_id or address in self._invited or address in self._synced:
            return
        try:
            _check_address(address)
        except LocalError:
            return
        self._invited.add(address)
        m = self.members.get(node)
        if m is None:
            self._outbox.append((address, MembershipSync((self.me.update(),), True)))
        else:
            self._outbox.append((address, MembershipSync((self.me.update(), m.update()), False)))

    def _send_sync(self, address: str, *, reply: bool) -> None:
        if address in self._synced:
            # A second copy of the whole table in the same batch says nothing new; without
            # this one frame of many syncs asking for replies multiplies our table that often.
            self.refused["sync_replies"] += 1
            return
        self._synced.add(address)
        for part in self.table_parts(reply=reply):
            self._outbox.append((address, part))

    def table_parts(self, *, reply: bool) -> list[MembershipSync]:
        """Our whole table as `MembershipSync` parts, each fit to travel in a frame of its own.

        A part holds at most `max_sync_bytes` (estimated: 4,096 members with the largest
        metadata are some 2.4 MB, over the frame limit) and at most `max_new_members`
        records, so a peer with our caps admits every member of it. Only the last part
        asks for a reply: the peer answers once, having merged all of ours.
        """
        budget = self.config.max_sync_bytes
        most = self.config.max_new_members
        parts: list[tuple[MemberUpdate, ...]] = []
        part: list[MemberUpdate] = []
        size = 0
        for m in self.members.values():
            upd = m.update()
            cost = _record_bytes(upd)
            if part and (size + cost > budget or len(part) >= most):
                parts.append(tuple(part))
                part, size = [], 0
            part.append(upd)
            size += cost
        parts.append(tuple(part))
        last = len(parts) - 1
        return [MembershipSync(p, reply and i == last) for i, p in enumerate(parts)]

    def _reconnect(self) -> None:
        """Ping a random dead member (push-pull follows if it answers); re-join when alone."""
        if not self._live.items and self._seeds:
            self._join()
        dead = [n for n in self._down if self.members[n].state == DEAD]
        if dead:
            # A ping, not a full sync: a member that is really dead costs one small frame.
            dead.sort()
            node = dead[self._rng.randrange(len(dead))]
            seq = self._next_seq()
            self._reconnects[seq] = node
            while len(self._reconnects) > 16:
                del self._reconnects[next(iter(self._reconnects))]
            self._outbox.append((self.members[node].address, Ping(seq, node)))

    # --- applying rumours ------------------------------------------------------------

    def apply(
        self,
        now: float,
        upd: MemberUpdate,
        *,
        from_sync: bool = False,
        sender_address: str | None = None,
    ) -> None:
        """Merge one rumour into our view (validated: a bad one raises LocalError)."""
        if upd.state not in MEMBER_STATES:
            raise LocalError(f"unknown member state {upd.state!r}")
        if upd.incarnation < 0:
            raise LocalError("negative incarnation")
        if upd.incarnation >= MAX_INCARNATION:
            raise LocalError(f"incarnation {upd.incarnation} is beyond any a member can reach")
        if len(upd.meta) > self.config.max_meta_bytes:
            raise LocalError(
                f"member metadata of {len(upd.meta)} bytes exceeds {self.config.max_meta_bytes}"
            )
        if upd.node == self.node_id:
            self._about_me(upd, sender_address)
            return
        m = self.members.get(upd.node)
        state = upd.state
        if from_sync and state in (SUSPECT, DEAD) and m is not None:
            # A merged view may be stale (the other side of a healed partition). Starting
            # suspicions from it would make the two halves accuse each other's members
            # faster than they can refute; our own probes find real failures, and the
            # accused hear of it from the syncs they take part in and refute.
            return
        if from_sync and state == DEAD:
            state = SUSPECT  # an unknown member someone holds dead: let it refute if it lives
        if m is None:
            if state in (DEAD, LEFT):
                return
            _check_address(upd.address)
            if not self._admit(now):
                return
            m = Member(upd.node, upd.address, upd.incarnation, ALIVE, now, upd.node, upd.meta)
            self.members[upd.node] = m
            self._live.add(upd.node)
            self._insert_probe_target(upd.node)
            self._events.append(MemberJoined(m.node, m.address, m.incarnation, m.meta))
            if not from_sync:
                self._queue(m.update())
            if state == SUSPECT:
                self._suspect(now, m, upd.incarnation, upd.origin)
            return
        if state == ALIVE:
            self._alive(now, m, upd)
        elif state == SUSPECT:
            if m.state in (DEAD, LEFT) or upd.incarnation < m.incarnation:
                return
            if m.state == SUSPECT:
                self._confirm(m, upd.incarnation, upd.origin)
                return
            self._suspect(now, m, upd.incarnation, upd.origin)
        elif state == DEAD:
            if m.state in (DEAD, LEFT) or upd.incarnation < m.incarnation:
                return
            # A third party's verdict (possibly formed across a partition that just
            # healed, possibly a duplicate) never kills directly: it starts our own
            # suspicion, or confirms the one running (shrinking its timer), and only our
            # own timer declares the death, so a live member can still refute.
            # (A verdict at a later incarnation than any we know is about a life we never
            # saw alive: nothing to refute there, so it is accepted.)
            if upd.incarnation == m.incarnation:
                if m.state == SUSPECT:
                    self._confirm(m, upd.incarnation, upd.origin)
                else:
                    self._suspect(now, m, upd.incarnation, upd.origin)
                return
            self._set_down(now, m, DEAD, upd.incarnation, upd.origin)
        else:  # LEFT
            if m.state == LEFT or upd.incarnation < m.incarnation:
                return
            self._set_down(now, m, LEFT, upd.incarnation, upd.origin)

    def _admit(self, now: float) -> bool:
        """Whether one more unknown member fits the envelope's budget and the table."""
        if self._new_budget <= 0:
            self.refused["envelope_cap"] += 1
            return False
        if len(self.members) >= self.config.max_members:
            # Make room with the members down longest (they would be reaped first anyway);
            # members believed up are never evicted, so a flood cannot push out real peers.
            # A batch per scan: one scan per newcomer would make a flood quadratic.
            members = self.members
            oldest = heapq.nsmallest(_EVICT_BATCH, self._down, key=lambda n: (members[n].since, n))
            if not oldest:
                self.refused["table_full"] += 1
                return False
            for node in oldest:
                self._forget(node)
        self._new_budget -= 1
        return True

    def _forget(self, node: str) -> None:
        m = self.members.pop(node)
        self._first_hand.discard(node)
        self._down.discard(node)
        self._broadcasts.pop(node, None)
        self._events.append(MemberReaped(node, m.state))

    def _alive(self, now: float, m: Member, upd: MemberUpdate) -> None:
        if upd.incarnation <= m.incarnation:
            return
        _check_address(upd.address)
        previous = m.state
        changed = upd.address != m.address or upd.meta != m.meta
        if upd.address != m.address:
            self._first_hand.discard(m.node)  # heard at the old address: not there yet
        m.incarnation = upd.incarnation
        m.address = upd.address
        m.meta = upd.meta
        m.origin = upd.node
        if previous != ALIVE:
            m.state = ALIVE
            m.since = now
            self._suspicions.pop(m.node, None)
            self._down.discard(m.node)
            if m.node not in self._live.pos:
                self._live.add(m.node)
                self._insert_probe_target(m.node)
            reason = "refuted" if previous == SUSPECT else "recovered"
            self._events.append(MemberAlive(m.node, m.address, m.incarnation, reason, m.meta))
        elif changed:
            self._events.append(MemberUpdated(m.node, m.address, m.incarnation, m.meta))
        self._queue(m.update())

    def _suspect(self, now: float, m: Member, incarnation: int, origin: str) -> None:
        m.state = SUSPECT
        self._first_hand.discard(m.node)  # it must be heard again once it refutes
        m.incarnation = incarnation
        m.since = now
        m.origin = origin
        n = self.estimated_size()
        k = self.config.suspicion_confirmations
        if n - 2 < k:
            k = 0
        self._suspect_at[m.address] = m.node
        self._susp_dirty = True
        self._suspicions[m.node] = _Suspicion(
            now, origin, k, self.config.suspicion_min(n), self.config.suspicion_max(n)
        )
        self._events.append(MemberSuspected(m.node, incarnation, origin))
        self._queue(m.update())
        # Lifeguard's buddy system, sooner: tell the accused at once so that a live member
        # refutes (straight back to us) long before our timer runs out, even when the
        # gossip queues are busy. One message per suspicion, wasted only on the dead.
        self._outbox.append((m.address, m.update()))

    def _confirm(self, m: Member, incarnation: int, origin: str) -> None:
        if incarnation > m.incarnation:
            m.incarnation = incarnation
        s = self._suspicions.get(m.node)
        if s is not None and s.confirm(origin):
            self._susp_dirty = True
            # Re-gossip the confirmation: others count distinct origins too.
            self._queue(MemberUpdate(m.node, m.address, m.incarnation, SUSPECT, origin, m.meta))

    def _suspicion_expired(self, now: float, node: str) -> None:
        self._suspicions.pop(node, None)
        m = self.members.get(node)
        if m is not None and m.state == SUSPECT:
            self._set_down(now, m, DEAD, m.incarnation, self.node_id)

    def _set_down(self, now: float, m: Member, state: str, incarnation: int, origin: str) -> None:
        m.state = state
        self._first_hand.discard(m.node)
        m.incarnation = incarnation
        m.since = now
        m.origin = origin
        self._suspicions.pop(m.node, None)
        self._live.discard(m.node)
        self._down.add(m.node)
        if state == DEAD:
            self._events.append(MemberDead(m.node, incarnation, origin))
        else:
            self._events.append(MemberLeft(m.node, incarnation))
        self._queue(m.update())

    def _about_me(self, upd: MemberUpdate, sender_address: str | None) -> None:
        me = self.me
        if self.leaving:
            return
        if upd.state == ALIVE and upd.incarnation <= me.incarnation:
            return
        if upd.incarnation < me.incarnation:
            # Already refuted; the accuser has not heard yet: answer it directly.
            if sender_address is not None:
                self._outbox.append((sender_address, me.update()))
            return
        # Someone holds a view of us at our incarnation or newer that is not plainly alive
        # (or an alive one from a previous life): refute with a higher incarnation.
        if upd.state == SUSPECT or upd.state == DEAD:
            # Being suspected hints that we are the slow one (Lifeguard).
            self._adjust_awareness(1)
        me.incarnation = upd.incarnation + 1
        self._queue(me.update())
        if sender_address is not None:
            # The accuser is the member most in need of the refutation: tell it first.
            self._outbox.append((sender_address, me.update()))

    def _insert_probe_target(self, node: str) -> None:
        # Random position among the members not yet probed this pass (memberlist does this).
        lo = self._probe_index
        self._probe_order.insert(self._rng.randint(lo, len(self._probe_order)), node)

    def _reap(self, now: float) -> None:
        limit = self.config.reap_after
        for node in sorted(self._down):
            m = self.members[node]
            if now - m.since >= limit:
                self._forget(node)

    # --- rumours -----------------------------------------------------------------------

    def _queue(self, upd: MemberUpdate) -> None:
        # A newer rumour about a member replaces the older one still queued (memberlist's
        # invalidation): only the latest state is worth retransmitting.
        self._bcast_order += 1
        self._broadcasts[upd.node] = [upd, 0, self._bcast_order]

    def piggyback(self, limit: int, about: str | None = None) -> list[MemberUpdate]:
        """Up to `limit` queued rumours to attach to an envelope, fewest-sent first."""
        if not self._broadcasts or limit <= 0:
            return []
        items = self._broadcasts
        if len(items) <= limit:
            chosen = list(items.items())
        else:
            chosen = heapq.nsmallest(limit, items.items(), key=lambda kv: (kv[1][1], kv[1][2]))
        # The limit follows the cluster's current size (memberlist does the same), so a
        # rumour queued while the cluster was small still reaches members who joined since.
        most = self.config.retransmit_limit(self.estimated_size())
        out = []
        for node, entry in chosen:
            out.append(entry[0])
            entry[1] += 1
            if entry[1] >= most:
                del items[node]
        return out

    def gossip_targets(self, now: float, k: int) -> list[str]:
        """Addresses of up to k members to gossip rumours to (recently dead ones included)."""
        nodes = self._live.sample(self._rng, k)
        out = [self.members[n].address for n in nodes]
        if self._down and len(out) < k + 1:
            recent = sorted(
                n
                for n in self._down
                if self.members[n].state == DEAD
                and now - self.members[n].since < self.config.gossip_to_dead
            )
            if recent:
                # Gossiping to the recently dead lets a falsely accused member refute.
                out.append(self.members[recent[self._rng.randrange(len(recent))]].address)
        return out


def _record_bytes(upd: MemberUpdate) -> int:
    """An upper bound of one record's msgpack size inside a `MembershipSync`."""
    size = 48 + len(upd.meta)  # array and field headers, incarnation, state
    for text in (upd.node, upd.address, upd.origin):
        size += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return size


def _check_meta(meta: bytes, config: GossipConfig) -> None:
    if not isinstance(meta, bytes) or len(meta) > config.max_meta_bytes:
        raise LocalError(f"member metadata must be bytes of at most {config.max_meta_bytes}")


_checked_addresses: set[str] = set()  # addresses already found valid: a pure cache


def _check_address(address: str) -> None:
    if address in _checked_addresses:
        return
    host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LocalError(f"member address must be 'host:port', got {address!r}")
    if len(_checked_addresses) < 100_000:
        _checked_addresses.add(address)
