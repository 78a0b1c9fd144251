"""The checker of a chaos campaign: reads a recorded history and the final replicas.

Plain records in, a `Verdict` out; no processes, clocks or files, so the unit tests feed
it synthetic histories. Times are seconds on one clock (the orchestrator's monotonic
clock, which is the machine's, so agent processes stamp events on the same clock).

What each count means, precisely:

* `acked_lost`: acknowledged writes absent from at least one survivor's replica of their
  session. A write acknowledged at level `local` (0) is promised only while its writer's
  disk survives: it is not counted when the writer is in `lost_disks`. A write
  acknowledged at `replicas=W` (W >= 1) or `all` was durable on the writer and on W
  others, so it must survive the loss of the writer's disk: it is always counted.
* `converged`: every survivor holds every session, with equal fingerprints.
* `split_brain_after_heal`: sessions whose survivors do not all name the same owner at
  the same epoch, whose owner is not a survivor, or whose epoch is below the highest
  epoch any ownership change in the history reached.
* `false_takeovers`: takeovers whose previous owner was not impaired (stopped, killed,
  leaving, cut off from a majority, or behind heavy loss) at any time during the
  `grace` seconds before the takeover; such an owner was alive and reachable by a
  majority, so nothing justified taking its sessions.
* `max_rto_ms`: the longest time from a kill or freeze of an owner to the first takeover
  of one of its sessions, counting takeovers while the fault lasted or up to `RTO_TAIL`
  seconds after (a later one was caused by something else: a freeze too short to be
  declared dead is not a failover).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "Ack",
    "FaultSpan",
    "FaultWindow",
    "Fencing",
    "OwnerChange",
    "Replica",
    "Verdict",
    "check",
    "level_name",
    "takeover_rto_ms",
]

# Seconds before a takeover in which an impairment of the old owner justifies it: the
# slowest path to `dead` (suspicion timeout after missed probes) plus decision slack.
DEFAULT_GRACE = 15.0
RTO_TAIL = 2.0


@dataclass(frozen=True)
class Ack:
    """A write the mesh acknowledged: `token` appended to `session` by `writer` at `level`."""

    session: str
    token: str
    level: int | str  # 0 (local), W >= 1 (replicas=W), or "all"
    writer: str
    t: float


@dataclass(frozen=True)
class OwnerChange:
    """`owner` took `session` over from `previous` at `epoch` (reported by the new owner)."""

    session: str
    owner: str
    epoch: int
    previous: str | None
    t: float


@dataclass(frozen=True)
class FaultWindow:
    """`node` was impaired by a fault of `kind` from `start` to `end`."""

    node: str
    kind: str
    start: float
    end: float


@dataclass(frozen=True)
class FaultSpan:
    """A fault as applied: `kind` on `nodes` from `start` to `end` (`detail`: sides, loss %).

    Unlike `FaultWindow`, which lists only the nodes a fault impaired (what the checker
    judges takeovers by), a span names every node the fault was aimed at, impaired or not
    (a full disk impairs no one), so the timeline can show every fault.
    """

    kind: str
    nodes: tuple[str, ...]
    start: float
    end: float
    detail: str = ""


@dataclass(frozen=True)
class Fencing:
    """`node` learned it no longer owns `session`: `owner` holds it at `epoch`."""

    node: str
    session: str
    owner: str | None
    epoch: int
    t: float


@dataclass(frozen=True)
class Replica:
    """One survivor's final view of one session."""

    node: str
    session: str
    owner: str | None
    epoch: int
    fingerprint: str
    tokens: frozenset[str]


@dataclass(frozen=True)
class Verdict:
    """The campaign's counts, and the evidence behind each non-zero one."""

    acked_writes: int
    acked_lost: int
    converged: bool
    split_brain_after_heal: int
    false_takeovers: int
    max_rto_ms: float | None
    lost: tuple[Ack, ...] = ()
    divergent: tuple[str, ...] = ()
    split: tuple[str, ...] = ()
    false: tuple[OwnerChange, ...] = ()
    by_level: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the run kept every promise."""
        return (
            self.acked_lost == 0
            and self.converged
            and self.split_brain_after_heal == 0
            and self.false_takeovers == 0
        )


def level_name(level: int | str) -> str:
    """The name of a commit level as the result reports it: local, replicas=W or all."""
    return "local" if level == 0 else "all" if level == "all" else f"replicas={level}"


def check(
    acks: Iterable[Ack],
    changes: Iterable[OwnerChange],
    windows: Iterable[FaultWindow],
    replicas: Iterable[Replica],
    survivors: Iterable[str],
    *,
    lost_disks: Iterable[str] = (),
    grace: float = DEFAULT_GRACE,
) -> Verdict:
    """Count what the history and the final replicas break of the promise (module doc)."""
    acks = list(acks)
    changes = sorted(changes, key=lambda c: c.t)
    windows = list(windows)
    survivors = sorted(set(survivors))
    lost_disks = set(lost_disks)
    views: dict[str, dict[str, Replica]] = {}
    for r in replicas:
        views.setdefault(r.session, {})[r.node] = r
    sessions = sorted(set(views) | {a.session for a in acks})

    lost = []
    by_level: dict[str, int] = {}
    for a in acks:
        by_level[level_name(a.level)] = by_level.get(level_name(a.level), 0) + 1
        if a.level == 0 and a.writer in lost_disks:
            continue
        held = views.get(a.session, {})
        if any(n not in held or a.token not in held[n].tokens for n in survivors):
            lost.append(a)

    divergent = []
    for s in sessions:
        held = views.get(s, {})
        fps = {held[n].fingerprint if n in held else None for n in survivors}
        if len(fps) != 1 or None in fps:
            divergent.append(s)

    top: dict[str, int] = {}
    for c in changes:
        top[c.session] = max(top.get(c.session, 0), c.epoch)
    split = []
    for s in sessions:
        held = views.get(s, {})
        claims = {(held[n].owner, held[n].epoch) if n in held else None for n in survivors}
        if len(claims) != 1 or None in claims:
            split.append(s)
            continue
        ((owner, epoch),) = claims
        if owner not in survivors or epoch < top.get(s, 0):
            split.append(s)

    false = []
    for c in changes:
        if c.previous is None or c.previous == c.owner:
            continue
        justified = any(
            w.node == c.previous and w.start <= c.t and w.end >= c.t - grace for w in windows
        )
        if not justified:
            false.append(c)

    rto: float | None = None
    for w in windows:
        for c in changes:
            if _caused(w, c):
                ms = (c.t - w.start) * 1000.0
                rto = ms if rto is None else max(rto, ms)
                break

    return Verdict(
        acked_writes=len(acks),
        acked_lost=len(lost),
        converged=not divergent,
        split_brain_after_heal=len(split),
        false_takeovers=len(false),
        max_rto_ms=None if rto is None else round(rto, 1),
        lost=tuple(lost),
        divergent=tuple(divergent),
        split=tuple(split),
        false=tuple(false),
        by_level=by_level,
    )


def takeover_rto_ms(change: OwnerChange, windows: Iterable[FaultWindow]) -> float | None:
    """Milliseconds from the kill or freeze of `change.previous` to `change`, if it caused it.

    The same rule as `max_rto_ms` (the fault lasted, or ended at most `RTO_TAIL` seconds
    before the takeover), applied to one takeover; None when no such fault explains it.
    """
    for w in windows:
        if _caused(w, change):
            return round((change.t - w.start) * 1000.0, 1)
    return None


def _caused(w: FaultWindow, c: OwnerChange) -> bool:
    """Whether kill or freeze `w` of the old owner explains takeover `c` (the RTO rule)."""
    return (
        w.kind in ("kill", "stop") and w.node == c.previous and w.start <= c.t <= w.end + RTO_TAIL
    )
