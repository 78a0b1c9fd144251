"""The seeded fault schedule of a chaos campaign: plain data, replayable through JSON.

`plan(rng, hosts, seconds)` draws a list of `Fault`s, one after another with a recovery
gap between them, cycling through every kind in a shuffled order so even a short campaign
exercises each kind. A fault names host *indices* (not addresses or node names), so a
schedule written by one run replays on the hosts of another.

`impaired(fault, hosts)` says which hosts a fault cuts off from a majority of the cluster
(or stops altogether); the checker uses it to tell a justified takeover from a false one.

Invariants: the schedule is a pure function of the seed and the arguments; it never holds
more than `max_faults` faults, every fault ends before `seconds`, and faults never overlap
(one at a time keeps a majority reachable, which the checker's definition relies on).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from crdt_types.errors import LocalError

__all__ = ["FAULT_KINDS", "Fault", "dump_schedule", "impaired", "load_schedule", "plan"]

FAULT_KINDS = ("kill", "stop", "partition", "oneway", "loss", "leave", "disk_full")
# Time a fault lasts, and the gap after it (the cluster must re-admit a restarted peer
# and finish a takeover before the next fault, or faults would pile up).
DURATION = (1.5, 4.0)
GAP = (3.0, 5.0)
WARMUP = 3.0
MAX_FAULTS = 500
LOSS_PERCENT = (10, 40)


@dataclass(frozen=True)
class Fault:
    """One fault: `kind` on `hosts` from `at` for `duration` seconds (campaign time)."""

    at: float
    kind: str
    hosts: tuple[int, ...]
    duration: float
    # partition/oneway: the sides (host indices); oneway cuts sides[0] -> sides[1].
    sides: tuple[tuple[int, ...], ...] = ()
    percent: float = 0.0  # loss

    @property
    def end(self) -> float:
        """Campaign time at which the fault is healed."""
        return self.at + self.duration


def _check(fault: Fault, hosts: int) -> Fault:
    if fault.kind not in FAULT_KINDS:
        raise LocalError(f"unknown fault kind {fault.kind!r} (known: {', '.join(FAULT_KINDS)})")
    for h in (*fault.hosts, *(x for side in fault.sides for x in side)):
        if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < hosts:
            raise LocalError(f"fault {fault.kind} at {fault.at}: no host {h!r} of {hosts}")
    if not fault.hosts:
        raise LocalError(f"fault {fault.kind} at {fault.at}: names no host")
    if not (fault.at >= 0 and fault.duration > 0):
        raise LocalError(f"fault {fault.kind}: at must be >= 0 and duration > 0")
    if fault.kind in ("partition", "oneway") and len(fault.sides) != 2:
        raise LocalError(f"fault {fault.kind} at {fault.at}: needs two sides")
    if fault.kind == "loss" and not 0 < fault.percent <= 100:
        raise LocalError(f"fault loss at {fault.at}: percent must be in (0, 100]")
    return fault


def plan(
    rng: random.Random,
    hosts: int,
    seconds: float,
    *,
    disk_host: int = 0,
    max_faults: int = MAX_FAULTS,
    kinds: Sequence[str] = FAULT_KINDS,
) -> list[Fault]:
    """Draw a schedule of non-overlapping faults within `seconds` for `hosts` hosts."""
    if hosts < 3:
        raise LocalError(
            f"a campaign needs at least 3 hosts (a majority survives one), got {hosts}"
        )
    bad = [k for k in kinds if k not in FAULT_KINDS]
    if bad or not kinds:
        raise LocalError(f"unknown fault kinds {bad} (known: {', '.join(FAULT_KINDS)})")
    faults: list[Fault] = []
    t = WARMUP
    order: list[str] = []
    while len(faults) < max_faults:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        kind = order.pop()
        duration = round(rng.uniform(*DURATION), 2)
        if t + duration > seconds:
            break
        everyone = list(range(hosts))
        sides: tuple[tuple[int, ...], ...] = ()
        percent = 0.0
        if kind == "disk_full":
            targets: tuple[int, ...] = (disk_host,)
        elif kind == "partition":
            minority = sorted(rng.sample(everyone, rng.randint(1, (hosts - 1) // 2)))
            rest = [h for h in everyone if h not in minority]
            sides = (tuple(minority), tuple(rest))
            targets = tuple(minority)
        elif kind == "oneway":
            lone = rng.randrange(hosts)
            rest = tuple(h for h in everyone if h != lone)
            sides = ((lone,), rest) if rng.random() < 0.5 else (rest, (lone,))
            targets = (lone,)
        else:
            targets = (rng.randrange(hosts),)
            if kind == "loss":
                percent = float(rng.randint(*LOSS_PERCENT))
        faults.append(Fault(round(t, 2), kind, targets, duration, sides, percent))
        t += duration + rng.uniform(*GAP)
    return faults


def impaired(fault: Fault, hosts: int) -> set[int]:
    """Hosts that `fault` stops or cuts off from a majority of the `hosts` hosts."""
    majority = hosts // 2 + 1
    if fault.kind in ("partition", "oneway"):
        out: set[int] = set()
        listed = {h for side in fault.sides for h in side}
        free = hosts - len(listed)
        for side in fault.sides:
            # One-way cuts break the round trip a probe needs in both directions, so a
            # side counts as cut off exactly as in a two-way partition.
            if len(side) + free < majority:
                out.update(side)
        return out
    # kill/stop/leave stop the process; loss makes its host unreliable to everyone;
    # disk_full leaves it alive and reachable (a takeover then would be false).
    if fault.kind == "disk_full":
        return set()
    return set(fault.hosts)


def dump_schedule(faults: Iterable[Fault], **meta: Any) -> str:
    """The schedule (and `meta`, e.g. seed and hosts) as JSON text."""
    rows = []
    for f in faults:
        row = asdict(f)
        row["hosts"] = list(f.hosts)
        row["sides"] = [list(s) for s in f.sides]
        rows.append(row)
    return json.dumps({**meta, "faults": rows}, indent=1)


def load_schedule(text: str, hosts: int) -> list[Fault]:
    """Parse a schedule written by `dump_schedule`; LocalError naming what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LocalError(f"schedule is not JSON: {exc}") from exc
    rows = data.get("faults") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise LocalError("schedule must be an object with a list 'faults'")
    faults = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise LocalError(f"schedule fault {i} is not an object")
        try:
            fault = Fault(
                at=float(row["at"]),
                kind=str(row["kind"]),
                hosts=tuple(row["hosts"]),
                duration=float(row["duration"]),
                sides=tuple(tuple(s) for s in row.get("sides", ())),
                percent=float(row.get("percent", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalError(f"schedule fault {i}: {type(exc).__name__}: {exc}") from exc
        faults.append(_check(fault, hosts))
    faults.sort(key=lambda f: f.at)
    for a, b in zip(faults, faults[1:], strict=False):
        if b.at < a.end:
            raise LocalError(f"schedule faults at {a.at} and {b.at} overlap")
    return faults
