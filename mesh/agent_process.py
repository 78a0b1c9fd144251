"""What every scripted agent process shares: its timeline lines, its stdin and its exit codes.

Two programs run one mesh peer per OS process and are driven by an orchestrator over
pipes: the demo agent (`cli.demo_agent`, used by `statemesh demo`, the failover benchmark
and the failover tests) and the chaos agent (`mesh.chaos.agent`). Both speak the same
protocol, defined here once so the orchestrators can read either:

* Out: one JSON object per stdout line, ``{"event": ..., "t": ..., ...}``, flushed at once.
  ``t`` is `time.monotonic()`, the machine's clock that every process shares, so lines of
  several processes fall on one timeline.
* Member changes are reported as ``member`` with a state from `MEMBER_EVENT_STATES`.
* In: commands, one per stdin line, read without blocking the trio thread.
* Exit: 0 after a graceful leave, 2 with a one-line message on a `StatemeshError`, 130 on
  Ctrl-C.

The orchestrator side (plain threads, no trio: the orchestrators are synchronous) is here
too: `read_events` turns a child's stdout into ``(name, event)`` pairs on one queue shared
by all children, and `pump` hands them to a handler until a condition holds or a
monotonic deadline passes. Lines that are not JSON objects (a stray print) are skipped.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import trio

from crdt_types.errors import StatemeshError
from gossip.events import MemberAlive, MemberDead, MemberJoined, MemberLeft, MemberSuspected

__all__ = [
    "MEMBER_EVENT_STATES",
    "alive_members",
    "events_of",
    "pump",
    "read_events",
    "run",
    "say",
    "stdin_lines",
]

# The subscriber events that are membership changes, and the state each one reports.
MEMBER_EVENT_STATES: dict[type, str] = {
    MemberJoined: "alive",
    MemberAlive: "alive",
    MemberSuspected: "suspect",
    MemberDead: "dead",
    MemberLeft: "left",
}


def say(event: str, **fields: Any) -> None:
    """Print one event as a JSON line stamped with the machine's monotonic clock."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def alive_members(status: dict[str, Any]) -> list[str]:
    """The sorted names a `Mesh.status()` reports alive."""
    return sorted(m["node"] for m in status["members"] if m["state"] == "alive")


async def stdin_lines() -> AsyncIterator[str]:
    """Each line of stdin (decoded, newline dropped) until it closes."""
    # A dup, so closing the stream leaves fd 0 to the interpreter.
    stream = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""
    async with stream:
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line.decode("utf-8", "replace")


def run(main: Callable[[Any], Awaitable[None]], args: Any, name: str) -> None:
    """Run `main(args)` under trio; exit 2 on a `StatemeshError`, 130 on Ctrl-C."""
    try:
        trio.run(main, args)
    except StatemeshError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


# --- the orchestrator side ------------------------------------------------------------------


def read_events(name: str, stdout: Iterable[bytes], events: queue.Queue) -> threading.Thread:
    """Start a daemon thread that puts `(name, event)` on `events` for each JSON object line."""

    def read() -> None:
        for raw in stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                events.put((name, obj))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def events_of(log: Iterable[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    """Every event in `log` of `kind` whose fields equal `match` (orchestrator side)."""
    return [
        e for e in log if e.get("event") == kind and all(e.get(k) == v for k, v in match.items())
    ]


def pump(
    events: queue.Queue,
    until: float,
    done: Callable[[], bool],
    handle: Callable[[str, dict[str, Any]], None],
) -> bool:
    """Hand queued events to `handle` until `done()` or monotonic time `until`; returns done()."""
    while True:
        if done():
            return True
        left = until - time.monotonic()
        if left <= 0:
            return False
        try:
            name, ev = events.get(timeout=min(0.1, left))
        except queue.Empty:
            continue
        handle(name, ev)
