"""Jepsen-style fault-injection campaigns against real peers on namespace hosts.

`statemesh chaos` is built from four parts, each in its own module:

* `schedule`: the seeded fault schedule (what to break, when, for how long), plain data
  that round-trips through JSON so a failing run can be replayed exactly;
* `agent`: the process each host runs (a mesh peer plus an agent that writes to the
  sessions it owns at mixed commit levels and reports every acknowledgement);
* `campaign`: the orchestrator that starts the agents, applies the schedule, heals,
  waits (bounded) for convergence and collects the final state of every replica;
* `checker`: pure functions that read the recorded history and the final state and
  count what the promise forbids (lost acknowledged writes, divergence, split brain,
  takeovers of a live owner).

Invariants: nothing here runs without an explicit bound (faults, time, waits), and the
checker never needs the processes: it works on plain records, so unit tests feed it
synthetic histories.
"""

from __future__ import annotations

from mesh.chaos.checker import (
    Ack,
    FaultWindow,
    OwnerChange,
    Replica,
    Verdict,
    check,
)
from mesh.chaos.schedule import FAULT_KINDS, Fault, dump_schedule, load_schedule, plan

__all__ = [
    "FAULT_KINDS",
    "Ack",
    "Fault",
    "FaultWindow",
    "OwnerChange",
    "Replica",
    "Verdict",
    "check",
    "dump_schedule",
    "load_schedule",
    "plan",
]
