"""Test hosts as Linux network namespaces on a private bridge, with partitions and loss.

`HostNetwork(n)` builds `n` "hosts", each a network namespace with loopback and one
interface `eth0` holding an address in 198.18.0.0/15 (the benchmarking range, never
routed), all plugged into a Linux bridge that lives in a namespace of its own. Nothing is
created in, attached to or routed through the root namespace, so nothing a host sends can
reach the machine's real interfaces; multicast (mDNS) works between hosts on the bridge.
Faults are nftables rules inside each host's namespace: partitions drop by source address
on input (one-way partitions drop one direction only), loss drops a random share of what
arrives on `eth0` (`numgen random`); `heal()` flushes them.

Invariants:

* Every name carries a per-run tag `<prefix>-<pid>-<start>-<seq>` (creator pid and its
  start time), so concurrent runs never collide and `cleanup_stale` can tell a leftover of
  a crashed run (creator gone) from a live one.
* `close()` kills every process in our namespaces (they can only be ours: the namespaces
  are ours) and deletes every namespace we made. It runs from the context manager, from
  atexit, and on any failure during setup; it is idempotent.
* Every external command runs with a timeout; every wait is bounded.

This lives in `mesh` rather than `tests` because `statemesh chaos` uses it from an
installed distribution, which does not ship `tests`; `tests.netns` re-exports it and adds
nothing pytest-specific. It needs root, `ip` (iproute2) and `nft` (nftables); call
`available()` first to get a reason when it cannot work.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3

from crdt_types.errors import LocalError

__all__ = ["Host", "HostNetwork", "available", "cleanup_stale", "list_namespaces"]

NETWORK = ipaddress.ip_network("198.18.0.0/15")
DEFAULT_PREFIX = "smt"
MAX_HOSTS = 32
# The interface name inside each host; fixed so programs and docs can say "eth0".
HOST_INTERFACE = "eth0"
_TABLE = "statemesh_harness"
_COMMAND_TIMEOUT = 30.0
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
_seq = itertools.count()


def _fail(what: str, proc: subprocess.CompletedProcess[str]) -> LocalError:
    return LocalError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()}")


def _capture(argv: Sequence[str], *, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with the setup timeout; output captured as text, exit status unchecked."""
    return subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT,
        check=False,
    )


def _run(argv: Sequence[str], *, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a setup command with a timeout; raise LocalError carrying its stderr on failure."""
    try:
        proc = _capture(argv, input=input)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalError(f"{' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise _fail(" ".join(argv), proc)
    return proc


def _start_time(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22, counted after the parenthesised command name (which may hold spaces).
    return stat.rsplit(")", 1)[1].split()[19]


def list_namespaces() -> list[str]:
    """Names of every network namespace `ip netns` knows."""
    proc = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _namespace_pids(name: str) -> list[int]:
    proc = _capture(["ip", "netns", "pids", name])
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_and_delete(names: Iterable[str]) -> list[str]:
    """SIGKILL every process inside `names`, then delete them; return errors as text."""
    names = list(names)
    errors: list[str] = []
    pids: set[int] = set()
    for name in names:
        pids.update(_namespace_pids(name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # A namespace with a live process outlives `ip netns del`: wait (bounded) for the
    # kills to land before deleting.
    deadline = time.monotonic() + 5.0
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if _start_time(p) is not None and not _is_zombie(p)}
        if pids:
            time.sleep(0.02)
    for name in names:
        proc = _capture(["ip", "netns", "del", name])
        if proc.returncode != 0 and "No such file" not in proc.stderr:
            errors.append(f"ip netns del {name}: {proc.stderr.strip()}")
    return errors


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces left by crashed runs under `prefix` (creator gone); return their names."""
    _check_prefix(prefix)
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-(\d+)-\d+-")
    stale = []
    for name in list_namespaces():
        m = pattern.match(name)
        if m and _start_time(int(m.group(1))) != m.group(2):
            stale.append(name)
    errors = _kill_and_delete(stale)
    if errors:
        raise LocalError("; ".join(errors))
    return stale


_available: str | None | bool = False


def available() -> str | None:
    """None if namespace hosts can be built here, else the reason they cannot."""
    global _available
    if _available is not False:
        return _available  # type: ignore[return-value]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "network-namespace hosts need root"
    elif shutil.which("ip") is None:
        reason = "network-namespace hosts need `ip` (Debian package iproute2)"
    elif shutil.which("nft") is None:
        reason = "network-namespace hosts need `nft` (Debian package nftables)"
    else:
        # Root in a container may still lack CAP_SYS_ADMIN or nf_tables: try for real.
        me = os.getpid()
        # Named like a network's namespaces so cleanup_stale sweeps it after a crash.
        probe = f"{DEFAULT_PREFIX}-{me}-{_start_time(me)}-{next(_seq)}-probe"
        try:
            _run(["ip", "netns", "add", probe])
            try:
                _run(
                    ["ip", "netns", "exec", probe, "nft", "-f", "-"],
                    input=f"table inet {_TABLE} {{ }}\n",
                )
            finally:
                _kill_and_delete([probe])
        except LocalError as exc:
            reason = f"cannot build network-namespace hosts here: {exc}"
    _available = reason
    return reason


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise LocalError(f"prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")


@dataclass(eq=False)
class Host:
    """One namespace host: `name` is its namespace, `address` its IPv4 address on `eth0`."""

    index: int
    name: str
    address: str
    network: HostNetwork = field(repr=False)
    interface: str = HOST_INTERFACE

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` prefixed to run inside this host (for trio.run_process and the like)."""
        if isinstance(argv, str) or not argv:
            raise LocalError(f"argv must be a non-empty list of strings, got {argv!r}")
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside this host; `close()` of the network kills it if still running."""
        self.network._check_open()
        # `ip netns exec` execs in place, so the pid is the program's own pid.
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self.network._processes.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        check: bool = True,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run `argv` inside this host to completion (bounded by `timeout`)."""
        self.network._check_open()
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), timeout=timeout, check=check, **kwargs)

    def nft(self, script: str) -> None:
        """Apply an nftables script inside this host atomically."""
        _run(self.command(["nft", "-f", "-"]), input=script)


class HostNetwork:
    """`n` namespace hosts on a private bridge; a context manager that removes it all."""

    def __init__(self, n: int = 3, *, prefix: str = DEFAULT_PREFIX) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_HOSTS:
            raise LocalError(f"n must be an int in 1..{MAX_HOSTS}, got {n!r}")
        _check_prefix(prefix)
        reason = available()
        if reason is not None:
            raise LocalError(reason)
        me = os.getpid()
        self.tag = f"{prefix}-{me}-{_start_time(me)}-{next(_seq)}"
        # Bridges are private, so equal subnets in two runs could not collide; a per-run
        # subnet only keeps captures and logs of parallel runs apart.
        k = int.from_bytes(blake3.blake3(self.tag.encode()).digest(2), "big") % 512
        self.subnet = ipaddress.ip_network(f"{NETWORK[k * 256]}/24")
        self.bridge = f"{self.tag}-br"
        self.hosts: list[Host] = [
            Host(i, f"{self.tag}-h{i}", str(self.subnet[i + 1]), self) for i in range(n)
        ]
        self._processes: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        self._closed = False
        self._owner = me
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<HostNetwork {self.tag} {self.subnet} hosts={len(self.hosts)}>"

    def __enter__(self) -> HostNetwork:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def addresses(self) -> list[str]:
        """Every host's address, in host order."""
        return [h.address for h in self.hosts]

    def _check_open(self) -> None:
        if self._closed:
            raise LocalError(f"{self!r} is closed")

    def _add_namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        self._add_namespace(self.bridge)
        # Snooping off: without an IGMP querier on the bridge, snooping could start to
        # filter the mDNS group after the first report.
        _run(
            ["ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]
        )
        _run(["ip", "-n", self.bridge, "link", "set", "br0", "up"])
        for h in self.hosts:
            self._add_namespace(h.name)
            port = f"v{h.index}"
            # Created inside the bridge namespace with its peer moved straight into the
            # host: no interface ever exists in the root namespace, not even briefly.
            veth = ["type", "veth", "peer", "name", h.interface, "netns", h.name]
            _run(["ip", "-n", self.bridge, "link", "add", port, *veth])
            _run(["ip", "-n", self.bridge, "link", "set", port, "master", "br0", "up"])
            _run(["ip", "-n", h.name, "addr", "add", f"{h.address}/24", "dev", h.interface])
            _run(["ip", "-n", h.name, "link", "set", h.interface, "up"])
            _run(["ip", "-n", h.name, "route", "add", "224.0.0.0/4", "dev", h.interface])
            h.nft(
                f"table inet {_TABLE} {{\n"
                "  chain partition { type filter hook input priority 0; policy accept; }\n"
                "  chain loss { type filter hook input priority 1; policy accept; }\n"
                "}\n"
            )

    def _host(self, h: Host | int) -> Host:
        if isinstance(h, Host):
            if h.network is not self:
                raise LocalError(f"{h.name} is not a host of {self!r}")
            return h
        if isinstance(h, int) and not isinstance(h, bool) and 0 <= h < len(self.hosts):
            return self.hosts[h]
        raise LocalError(f"no host {h!r} in {self!r}")

    def partition(self, *sides: Iterable[Host | int], oneway: bool = False) -> None:
        """Cut traffic between hosts of different `sides`; `oneway` cuts only sides[0] -> sides[1].

        Hosts in no side keep talking to everyone. Rules add up until `heal()`.
        """
        self._check_open()
        groups = [[self._host(h) for h in side] for side in sides]
        if len(groups) < 2 or any(not g for g in groups):
            raise LocalError("partition needs at least two non-empty sides")
        if oneway and len(groups) != 2:
            raise LocalError("a one-way partition needs exactly two sides")
        seen: set[int] = set()
        for g in groups:
            for h in g:
                if h.index in seen:
                    raise LocalError(f"{h.name} is on two sides of the partition")
                seen.add(h.index)
        # drop[receiver] = sources it must not hear from
        drop: dict[int, set[str]] = {}
        for i, g in enumerate(groups):
            for j, other in enumerate(groups):
                if i == j or (oneway and (i, j) != (1, 0)):
                    continue
                for h in g:
                    drop.setdefault(h.index, set()).update(o.address for o in other)
        for idx, sources in sorted(drop.items()):
            addrs = ", ".join(sorted(sources))
            self.hosts[idx].nft(f"add rule inet {_TABLE} partition ip saddr {{ {addrs} }} drop\n")

    def loss(self, host: Host | int, percent: float) -> None:
        """Drop `percent` % (0-100, step 0.01) of packets arriving at `host` on eth0; 0 clears."""
        self._check_open()
        h = self._host(host)
        if (
            isinstance(percent, bool)
            or not isinstance(percent, int | float)
            or not 0 <= percent <= 100
        ):
            raise LocalError(f"percent must be a number in 0..100, got {percent!r}")
        script = f"flush chain inet {_TABLE} loss\n"
        basis = round(percent * 100)
        if basis:
            script += (
                f"add rule inet {_TABLE} loss iifname {h.interface} "
                f"numgen random mod 10000 < {basis} drop\n"
            )
        h.nft(script)

    def heal(self, *, loss: bool = True) -> None:
        """Remove every partition rule (and every loss rule unless `loss=False`)."""
        self._check_open()
        chains = ["partition", "loss"] if loss else ["partition"]
        script = "".join(f"flush chain inet {_TABLE} {c}\n" for c in chains)
        for h in self.hosts:
            h.nft(script)

    def close(self) -> None:
        """Kill every process we started in the hosts and delete every namespace we made."""
        # A forked child inherits our atexit hook but must not tear down its parent's hosts.
        if self._closed or os.getpid() != self._owner:
            return
        self._closed = True
        atexit.unregister(self.close)
        for proc in self._processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        errors = _kill_and_delete(reversed(self._created))
        self._created.clear()
        if errors:
            raise LocalError("; ".join(errors))
