"""Three-ish agent peers (`cli.demo_agent`) and their merged timeline, for runs that kill them.

The failover benchmark and the multi-host failover tests drive the same harness: one
`cli.demo_agent --commands` process per peer, on a network-namespace host (mDNS on that
host's own address, fixed ports) or, without a host network, on loopback; a sealed
cluster key of their own. Every peer's JSON lines land, stamped with the peer's name
(``peer``), in one ordered `log`, which `wait` scans and extends.

Invariants: every wait is bounded by its timeout; `wait(..., since=i)` only matches
events at index >= i of the log, so a reply is never mistaken for an older one; every
process is ours (`cli.demo.Peer`) and `close()` stops each by pid.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.peer import DEFAULT_PORT
from gossip.keyring import KEY_BYTES, write_key_file
from mesh.agent_process import events_of, pump

__all__ = ["AgentCluster"]

HTTP_PORT = 8080


class AgentCluster:
    """Agent peers p0, p1, ... on `net`'s hosts (or loopback) and their merged event log."""

    def __init__(self, root: Path, cluster: str, net: Any = None) -> None:
        """Write a fresh cluster key under `root`; peers run on `net` (None: loopback)."""
        self.root = root
        self.cluster = cluster
        self.net = net
        self.key = root / "cluster.key"
        write_key_file(self.key, os.urandom(KEY_BYTES))
        self.events: queue.Queue = queue.Queue()
        self.log: list[dict[str, Any]] = []
        self.peers: dict[str, Any] = {}
        self._killed: list[Any] = []

    def start(self, i: int, *extra: str) -> Any:
        """Start peer p`i` (flags `extra` added) and wait (bounded) for its `ready` line."""
        from cli.demo import Peer

        name = f"p{i}"
        if self.net is not None:
            host = self.net.hosts[i]
            addr, http, iface, popen = (
                f"{host.address}:{DEFAULT_PORT}", f"{host.address}:{HTTP_PORT}", host.address, host.popen
            )  # fmt: skip
        else:
            addr, http, iface, popen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1", subprocess.Popen
        argv = [
            sys.executable, "-m", "cli.demo_agent", "--node", name,
            "--data", str(self.root / name), "--key-file", str(self.key),
            "--listen", addr, "--http", http, "--interface", iface,
            "--cluster", self.cluster, "--commands", *extra,
        ]  # fmt: skip
        peer = Peer(name, argv, self.root / f"{name}.log", self.events, popen=popen)
        self.peers[name] = peer
        mark = len(self.log)
        self.wait(lambda e: e["event"] == "ready" and e["peer"] == name, 30, f"{name} ready", mark)
        return peer

    def kill(self, name: str) -> float:
        """SIGKILL peer `name` and forget it; returns the kill time (monotonic)."""
        peer = self.peers.pop(name)
        self._killed.append(peer)  # its pipes are closed by `close`, after its last lines
        return peer.kill()

    def wait(
        self, match: Callable[[dict], bool], timeout: float, what: str = "", since: int = 0
    ) -> dict | None:
        """The first event at log index >= `since` that `match`es, or None after `timeout`."""
        for e in self.log[since:]:
            if match(e):
                return e
        found: list[dict] = []

        def handle(name: str, ev: dict[str, Any]) -> None:
            self._append(name, ev)
            if not found and match(ev):
                found.append(ev)

        pump(self.events, time.monotonic() + timeout, lambda: bool(found), handle)
        return found[0] if found else None

    def drain(self, seconds: float) -> None:
        """Collect events for `seconds` (to see that something does *not* happen)."""
        pump(self.events, time.monotonic() + seconds, lambda: False, self._append)

    def _append(self, name: str, ev: dict[str, Any]) -> None:
        ev["peer"] = name
        self.log.append(ev)

    def ask(self, name: str, line: str, reply: str, timeout: float = 15.0) -> dict | None:
        """Send a command to `name` and wait for its next `reply` event."""
        mark = len(self.log)
        self.peers[name].send(line)
        return self.wait(
            lambda e: e["event"] == reply and e["peer"] == name,
            timeout,
            f"{reply} from {name} after {line!r}",
            mark,
        )

    def _status(self, name: str) -> dict | None:
        # AgentCluster.wait, not an override: a slow status reply is retried by `settle`
        # until its own deadline, never fatal on its own.
        mark = len(self.log)
        self.peers[name].send("status")

        def match(e: dict) -> bool:
            return e["event"] == "status" and e["peer"] == name

        return AgentCluster.wait(self, match, 5, "status", mark)

    def settle(self, names: list[str] | None = None, timeout: float = 40.0) -> bool:
        """Wait until every peer in `names` (all) sees them all alive and stable."""
        names = sorted(self.peers) if names is None else names
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [self._status(n) for n in names]
            if all(s and s["alive"] == names and s["stable"] == names for s in got):
                return True
            time.sleep(0.2)
        return False

    def of(self, kind: str, **match: Any) -> list[dict]:
        """Every logged event of `kind` whose fields equal `match`."""
        return events_of(self.log, kind, **match)

    def close(self) -> None:
        """Stop every peer (graceful, then SIGKILL); the host network is the caller's."""
        for p in [*self.peers.values(), *self._killed]:
            with contextlib.suppress(Exception):
                p.stop()
