"""The split-brain rule: may this side of a partition take over the sessions of the dead?

A node cannot tell a dead peer from one it merely cannot reach. If both sides of a
partition took over each other's sessions, every session would briefly have two owners
running the same agent. So by default (`MAJORITY`) a side takes over only if it can
*see* a strict majority of the **stable membership**; when it sees exactly half, the
half holding the lowest node id of the stable set proceeds, so a two-node mesh still
fails over when its higher-id node dies (not when the lower one does: from one node
alone a dead peer and a cut cable look the same, and only one of the two may act). The
`AVAILABILITY` policy lets every side take over; the ownership table's epochs then
resolve the double claims to one owner when the partition heals, and the loser is
fenced, but until then two agents may run the same session.

*Seeing* a member means: it is `alive` in our membership view **and it answered a request
this node sent at or after the failure we are about to act on** (a round trip, see
`RoundTrips`). State alone is not enough: SWIM probes one member per period, so when the
first members across a partition are declared dead, others there can still be listed
alive, not yet probed (the simulator showed a 2-node minority of 5 counting a stale third
member and taking over). Hearing from a member is not enough either: a node whose
*outbound* traffic is cut still hears everyone, declares the members it probes dead one
after the other and, counting the rest as heard, took a live owner's session over
(`statemesh chaos`, a one-way nftables cut; nobody could hear it, so nobody told the
owner to refute). An answer to our own request proves the path works both ways. On the
side that holds the majority the runtime asks live members as soon as it declares a
death, so a real failure costs one round trip. Suspects never count.

The stable membership. `StableMembership` follows the set of members that are up (alive
or suspect, this node included) and *admitted* (below), and adopts it as the stable set
once it has held, unchanged, for `settle` seconds, and only if this side has a quorum of
the stable set it replaces (answers to requests sent since the change). That second
condition is what makes the rule hold over time: the minority side of a partition sees
the majority go dead, but it never reaches quorum, so it never shrinks its stable set to
itself and never gains the right to take over; the majority side does, so a 3-node mesh
that lost one node can lose another later (2 of 3, then 1 of 2 with the tie rule) and
keep failing over. A member that *left* gracefully is removed at once without quorum: it
announced it will not act again, and removing a member of one's own side never creates a
majority (k-1 of n-1 is a majority only if k of n already was).

Admission (`admitted`, the one place that defines it). A member enters the stable set
only once it has answered a request this node sent (a `RoundTrips` exchange, or a probe
it acknowledged itself): it exists and talks to us. Gossip saying it is alive is not
enough: a peer holding the cluster key can announce 2,048 made-up members in one frame,
which stay alive until each is probed; counted in the stable set, they made a quorum
that only they could complete, so a real death waited for answers that never came (and
since the set shrinks only under quorum, it could not drop them either). Members already
in the stable set (restored from disk or adopted) stay until they leave or the set
shrinks without them. A first stable set of this node alone is not adopted while other
members are listed up and none has answered yet: it would be a quorum of one.

Limits, honestly: until the first adoption (`settle` seconds after the first answers) a
node has no stable set and has no quorum; a node that starts fresh inside a minority
partition, knowing nobody, adopts that minority as its stable set. Members that answer
late join the set a `settle` after they do (SWIM probes every live member once per
round, and the runtime exchanges the ownership table with each member that joins and
asks its seeds first). A made-up member whose address a key holder answers from is
admitted like a real one: admission proves that a peer talks to us, not that it is
honest. Persist `stable` (the runtime can store it next to its data) and pass it back on
restart to close the first gap. Quorum here is a local decision from gossiped
membership, not consensus: with partitions that change faster than `settle`, two sides
can still both act, and the epochs in the ownership table are what finally leave one
owner.

Pure: time is passed in, nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from crdt_types.errors import InvalidValue
from gossip.messages import ALIVE, LEFT, MEMBER_STATES, SUSPECT, DocVectors

__all__ = [
    "AVAILABILITY",
    "MAJORITY",
    "POLICIES",
    "RECHECK",
    "RoundTrips",
    "StableMembership",
    "admitted",
    "has_quorum",
    "visible",
]

MAJORITY = "majority"
AVAILABILITY = "availability"
POLICIES = (MAJORITY, AVAILABILITY)


def _check_states(states: Mapping[str, str]) -> None:
    for node, state in states.items():
        if not isinstance(node, str) or not node:
            raise InvalidValue(f"member id must be a non-empty str, not {node!r}")
        if state not in MEMBER_STATES:
            raise InvalidValue(f"member {node!r} has unknown state {state!r}")


def has_quorum(stable: Iterable[str], alive: Iterable[str]) -> bool:
    """True if `alive` holds a strict majority of `stable`, or exactly half with its lowest id."""
    stable_set = frozenset(stable)
    if not stable_set:
        return False
    seen = stable_set & frozenset(alive)
    if 2 * len(seen) > len(stable_set):
        return True
    return 2 * len(seen) == len(stable_set) and min(stable_set) in seen


class StableMembership:
    """Tracks the last stable membership of one node; see the module docstring."""

    def __init__(self, me: str, settle: float, stable: Iterable[str] | None = None) -> None:
        if not isinstance(me, str) or not me:
            raise InvalidValue(f"node id must be a non-empty str, not {me!r}")
        if isinstance(settle, bool) or not isinstance(settle, int | float):
            raise InvalidValue(f"settle must be a number of seconds, not {settle!r}")
        if not 0 <= settle < math.inf:
            raise InvalidValue(f"settle must be finite and >= 0, got {settle!r}")
        self.me = me
        self.settle = float(settle)
        self._stable: frozenset[str] | None = None
        if stable is not None:
            restored = frozenset(stable)
            if not restored or any(not isinstance(n, str) or not n for n in restored):
                raise InvalidValue(f"a restored stable set must list node ids, got {stable!r}")
            # Whatever was persisted, we are a member now.
            self._stable = restored | {me}
        self._candidate: frozenset[str] | None = None
        self._missing_since: float | None = None  # since when a stable member is down
        self._since = -math.inf
        self._last = -math.inf
        self._adopted = -math.inf

    @property
    def stable(self) -> frozenset[str] | None:
        """The stable membership, or None until the first one settled (or was restored)."""
        return self._stable

    @property
    def adopted_at(self) -> float:
        """When the stable set was last adopted under quorum (-inf: restored or never)."""
        return self._adopted

    def observe(
        self,
        now: float,
        states: Mapping[str, str],
        answered: Mapping[str, float],
        up_since: Mapping[str, float] | None = None,
        proven: Iterable[str] = (),
    ) -> bool:
        """Feed member states, when each last answered us (and entered its state) at `now`.

        `answered[n]` is when we sent the latest request that `n` answered (`RoundTrips`);
        `proven` names members that answered some other request of ours (a probe they
        acknowledged themselves). Only those, and members of the stable set, are admitted.

        Returns True if the stable set changed.
        """
        _check_states(states)
        _check_answered(answered)
        proven = _check_proven(proven)
        changed = False
        left = {n for n, s in states.items() if s == LEFT and n != self.me}
        if self._stable is not None and self._stable & left:
            self._stable = self._stable - left
            changed = True
        up = self.admitted(states, answered, proven)
        if up != self._candidate:
            self._candidate = up
            self._since = now
        self._last = now
        removed = self._stable - up if self._stable is not None else frozenset()
        if not removed:
            self._missing_since = None
        elif self._missing_since is None:
            self._missing_since = now
        settled = now - self._since >= self.settle and up != self._stable
        if settled and self._stable is None and up == {self.me}:
            # A first stable set of us alone is a quorum of one. While others are listed
            # up but none has answered yet (slow answers, or a flood of made-up members
            # hiding the real ones), wait: without a stable set we have no quorum, the
            # safe side. A node that knows nobody still adopts itself, as before.
            settled = not any(s in (ALIVE, SUSPECT) for n, s in states.items() if n != self.me)
        # Evidence must postdate the change: a member still listed alive that has not
        # answered since may be on the far side of the partition that caused it. And a
        # member that came back (to us) after the removed ones went down was not on our
        # side when they did: it cannot vouch for dropping them. Without that, the
        # minority of a healed 2|3 partition, seeing the majority return before the
        # member it held dead refuted, adopted a set without it and took its sessions
        # over although it had been alive with the majority all along (statemesh chaos).
        vouch = None
        if removed and up_since is not None:
            vouch = {n for n, t in up_since.items() if t <= self._missing_since}
        if settled and (
            self._stable is None or self.has_quorum(states, answered, self._since, vouch)
        ):
            self._stable = up
            self._adopted = now
            changed = True
        return changed

    def admitted(
        self, states: Mapping[str, str], answered: Mapping[str, float], proven: Iterable[str] = ()
    ) -> frozenset[str]:
        """Us and the members up that are in the stable set or answered a request of ours."""
        return admitted(self.me, states, answered, proven, self._stable)

    def has_quorum(
        self,
        states: Mapping[str, str],
        answered: Mapping[str, float],
        since: float,
        among: Iterable[str] | None = None,
    ) -> bool:
        """True if we and the members alive that answered requests sent at or after `since` hold a quorum.

        With `among`, only those members (and us) count.
        """
        if self._stable is None:
            return False
        seen = visible(self.me, states, answered, since)
        if among is not None:
            seen &= set(among) | {self.me}
        return has_quorum(self._stable, seen)

    def next_deadline(self) -> float:
        """When `observe` should next be called (inf: nothing pending).

        A pending set is due when it has settled; one that settled without quorum is
        checked again every `settle` seconds (at least `RECHECK`), since hearing from
        members, which is not a membership change, can complete the quorum.
        """
        if self._candidate is None or self._candidate == self._stable:
            return math.inf
        due = self._since + self.settle
        return due if due > self._last else self._last + max(self.settle, RECHECK)


RECHECK = 0.25  # seconds between quorum re-checks while evidence is missing


def admitted(
    me: str,
    states: Mapping[str, str],
    answered: Mapping[str, float],
    proven: Iterable[str] = (),
    stable: Iterable[str] | None = None,
) -> frozenset[str]:
    """Us and the members up (alive or suspect) in `stable` or that answered a request of ours.

    The admission rule, in one place: `answered` holds members that answered an exchange
    (`RoundTrips`), `proven` those that acknowledged a probe themselves. A member only
    gossip speaks of, made up or not yet heard from, is not admitted.
    """
    known = set(proven)
    if stable is not None:
        known.update(stable)
    return frozenset(
        n for n, s in states.items() if s in (ALIVE, SUSPECT) and (n in known or n in answered)
    ) | {me}


def visible(
    me: str,
    states: Mapping[str, str],
    answered: Mapping[str, float],
    since: float,
    up_since: Mapping[str, float] | None = None,
) -> set[str]:
    """Us, plus the members alive in `states` that answered a request sent at or after `since`.

    With `up_since` (when each entered its current state), a member also must have been
    alive since `since` or before: one that was down to us after the failure (healed
    partition, refuted suspicion) was not on our side throughout, so it cannot vouch.
    """
    out = {me}
    for node, state in states.items():
        if state != ALIVE or answered.get(node, -math.inf) < since:
            continue
        if up_since is not None and up_since.get(node, math.inf) > since:
            continue
        out.add(node)
    return out


def _check_answered(answered: Mapping[str, float]) -> None:
    if not isinstance(answered, Mapping):
        raise InvalidValue(f"answered must map node id -> time, not {type(answered).__name__}")
    for node, t in answered.items():
        if isinstance(t, bool) or not isinstance(t, int | float) or math.isnan(t):
            raise InvalidValue(f"answered time of {node!r} must be a number, not {t!r}")


def _check_proven(proven: Iterable[str]) -> frozenset[str]:
    if isinstance(proven, str | bytes) or not isinstance(proven, Iterable):
        raise InvalidValue(f"proven must be a collection of member ids, not {proven!r}")
    out = []
    for node in proven:
        if not isinstance(node, str) or not node:
            raise InvalidValue(f"proven member id must be a non-empty str, not {node!r}")
        out.append(node)
    return frozenset(out)


class RoundTrips:
    """Requests this node sent and the members that answered them: the quorum's evidence.

    The runtime registers each request it sends that the peer must answer (today the
    targeted exchange `Replicator.pull`, whose `DocVectors` reply carries the session id)
    and shows it every authenticated envelope. An answer records, for its sender, the
    time the request was *sent*: the path worked both ways at some moment after that.
    Only the named peer's answer counts, so a member cannot vouch by echoing another's
    session. At most `limit` requests are outstanding (the oldest are forgotten): a
    partition leaves every request unanswered, and memory must stay bounded.
    """

    def __init__(self, limit: int = 1024) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidValue(f"limit must be an int >= 1, not {limit!r}")
        self.limit = limit
        self.answered: dict[str, float] = {}
        self._pending: dict[int, tuple[str, float]] = {}  # session -> (peer, sent at)

    def sent(self, now: float, peer: str, session: int) -> None:
        """Register a request with exchange id `session` sent to `peer` at `now`."""
        if not isinstance(peer, str) or not peer:
            raise InvalidValue(f"peer must be a non-empty str, not {peer!r}")
        if isinstance(now, bool) or not isinstance(now, int | float) or math.isnan(now):
            raise InvalidValue(f"now must be a number, not {now!r}")
        self._pending[session] = (peer, float(now))
        while len(self._pending) > self.limit:
            del self._pending[next(iter(self._pending))]

    def received(self, sender: str, messages: Iterable[object]) -> bool:
        """Look for answers in an envelope from `sender`; True if one was new evidence."""
        new = False
        for msg in messages:
            if type(msg) is not DocVectors or msg.reply:
                continue
            pending = self._pending.get(msg.session)
            if pending is None or pending[0] != sender:
                continue
            del self._pending[msg.session]
            if pending[1] > self.answered.get(sender, -math.inf):
                self.answered[sender] = pending[1]
                new = True
        return new

    def outstanding(self) -> int:
        """Requests sent and not answered (nor forgotten) yet."""
        return len(self._pending)
