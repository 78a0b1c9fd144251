"""The split-brain rule: may this side of a partition take over the sessions of the dead?

A node cannot tell a dead peer from one it merely cannot reach. If both sides of a
partition took over each other's sessions, every session would briefly have two owners
running the same agent. So by default (`MAJORITY`) a side takes over only if it can see,
as *alive*, a strict majority of the **stable membership**; when it sees exactly half,
the half holding the lowest node id of the stable set proceeds, so a two-node mesh still
fails over when its higher-id node dies (not when the lower one does: from one node alone
a dead peer and a cut cable look the same, and only one of the two may act). The
`AVAILABILITY` policy lets every side take over; the ownership table's epochs then resolve
the double claims to one owner when the partition heals, and the loser is fenced, but
until then two agents may run the same session.

The stable membership. `StableMembership` follows the set of members that are up (alive
or suspect, this node included) and adopts it as the stable set once it has held, unchanged,
for `settle` seconds, and only if this side has a quorum of the stable set it replaces.
That second condition is what makes the rule hold over time: the minority side of a
partition sees the majority go dead, but it never reaches quorum, so it never shrinks its
stable set to itself and never gains the right to take over; the majority side does, so a
3-node mesh that lost one node can lose another later (2 of 3, then 1 of 2 with the tie
rule) and keep failing over. A member that *left* gracefully is removed at once without
quorum: it announced it will not act again, and removing a member of one's own side never
creates a majority (k-1 of n-1 is a majority only if k of n already was).

Limits, honestly: until the first adoption (`settle` seconds after start) a node has no
stable set and `has_quorum` says no; a node that starts fresh inside a minority partition,
knowing nobody, adopts that minority as its stable set. Persist `stable` (the runtime can
store it next to its data) and pass it back on restart to close that gap. Quorum here is
a local decision from gossiped membership, not consensus: with partitions that change
faster than `settle`, two sides can still both act, and the epochs in the ownership table
are what finally leave one owner.

Pure: time is passed in, nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from crdt_types.errors import InvalidValue
from gossip.messages import ALIVE, LEFT, MEMBER_STATES, SUSPECT

__all__ = ["AVAILABILITY", "MAJORITY", "POLICIES", "StableMembership", "has_quorum"]

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
        self._since = -math.inf
        self._last = -math.inf

    @property
    def stable(self) -> frozenset[str] | None:
        """The stable membership, or None until the first one settled (or was restored)."""
        return self._stable

    def observe(self, now: float, states: Mapping[str, str]) -> bool:
        """Feed the member states seen at `now` ({node: state}); True if the stable set changed."""
        _check_states(states)
        changed = False
        left = {n for n, s in states.items() if s == LEFT and n != self.me}
        if self._stable is not None and self._stable & left:
            self._stable = self._stable - left
            changed = True
        up = frozenset(n for n, s in states.items() if s in (ALIVE, SUSPECT)) | {self.me}
        if up != self._candidate:
            self._candidate = up
            self._since = now
        self._last = now
        settled = now - self._since >= self.settle and up != self._stable
        if settled and (self._stable is None or self.has_quorum(states)):
            self._stable = up
            changed = True
        return changed

    def has_quorum(self, states: Mapping[str, str]) -> bool:
        """True if the members alive in `states` (and us) hold a quorum of the stable set."""
        if self._stable is None:
            return False
        alive = {n for n, s in states.items() if s == ALIVE} | {self.me}
        return has_quorum(self._stable, alive)

    def next_deadline(self) -> float:
        """When `observe` should next be called for a pending set to settle (inf: none pending).

        A set that settled without quorum waits for a membership change, which the caller
        observes anyway, so it yields inf rather than a deadline in the past.
        """
        if self._candidate is None or self._candidate == self._stable:
            return math.inf
        due = self._since + self.settle
        return due if due > self._last else math.inf
