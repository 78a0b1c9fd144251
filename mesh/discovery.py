"""mDNS discovery of statemesh peers, bridged from zeroconf's threads into trio.

A `Discovery` registers this node as a `_statemesh._tcp.local.` service on the interfaces
it is given, browses for the others, and reports them as `PeerFound` / `PeerLost` events
on an unbounded trio channel. The TXT record carries the node id (`id`), the protocol
version (`pv`), a hash of the cluster name (`ch`: blake3 in key-derivation mode, 64 bits;
never the key), the gossip port (`gp`, also the SRV port) and optionally the HTTP port
(`hp`). Services of another cluster, another protocol version, or with a malformed record
are ignored and counted in `ignored`.

How zeroconf meets trio (see FIELD-NOTES): `Zeroconf()` runs its own asyncio loop in a
thread, and its blocking methods (construct, register, resolve, close) run in trio worker
threads so the trio loop never blocks. Browser callbacks arrive on zeroconf's thread; they
only hand `(name, change)` to trio with `TrioToken.run_sync_soon` into an unbounded channel
(never `trio.from_thread`, which deadlocks against `browser.cancel()`), and swallow the
errors of a channel or run that is already gone.

Invariants:

* Interfaces are always explicit (a list of IPv4 addresses); library code never defaults
  to every interface. Sockets bound to 127.0.0.1 cannot emit packets on a real interface,
  which is what makes the loopback tests safe.
* mDNS is not liveness. A SIGKILLed peer stays in caches for up to ~19 minutes, so
  `PeerFound` means "worth contacting" and `PeerLost` (a goodbye or expiry) is only a hint;
  membership decides who is alive.
* Shutdown (cancel the browser, withdraw our record, close zeroconf) runs shielded with a
  bound on its time, also when the body is cancelled; afterwards `events()` ends.
* Events for one service name are applied in arrival order: a resolution that finishes
  after a newer change of the same name is dropped.

`python -m mesh.discovery --node N --cluster C --port P --interface IP --expect K` runs a
probe that prints one JSON line per event and a summary (the namespace tests use it).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import json
import math
import re
import signal
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType, TracebackType
from typing import Any

import blake3
import trio
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from crdt_types.errors import LocalError
from gossip.messages import PROTOCOL_VERSION

__all__ = [
    "SERVICE_TYPE",
    "Discovery",
    "PeerFound",
    "PeerLost",
    "all_interface_addresses",
    "cluster_hash",
]

SERVICE_TYPE = "_statemesh._tcp.local."
# A LAN full of fake services must not grow our memory without bound.
MAX_PEERS = 1024
_RESOLVE_TIMEOUT_MS = 3000
_CLOSE_TIMEOUT_S = 5.0
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_HASH_CONTEXT = "statemesh 2026 mdns cluster-name hash v1"
IGNORE_REASONS = ("cluster", "version", "malformed", "unresolved", "overflow")


def cluster_hash(cluster: str) -> str:
    """The 16-hex-digit tag of a cluster name that goes in TXT `ch` (not secret, not the key)."""
    digest = blake3.blake3(cluster.encode(), derive_key_context=_HASH_CONTEXT)
    return digest.hexdigest()[:16]


def all_interface_addresses() -> list[str]:
    """Every IPv4 address of this machine (for a CLI default; tests never use it)."""
    import ifaddr  # a zeroconf dependency; imported late since only the CLI needs it

    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip not in out:
                out.append(ip.ip)
    return out


@dataclass(frozen=True, slots=True)
class PeerFound:
    """A peer of our cluster and protocol version advertises itself (new or changed)."""

    node_id: str
    host: str  # first advertised IPv4 address
    port: int  # gossip port
    txt: Mapping[str, str] = field(hash=False)
    addresses: tuple[str, ...] = ()
    http_port: int | None = None


@dataclass(frozen=True, slots=True)
class PeerLost:
    """A peer withdrew its record or it expired: a hint only, never proof of death."""

    node_id: str


PeerEvent = PeerFound | PeerLost


def _instance_label(node_id: str) -> str:
    # DNS-SD instance labels are at most 63 bytes, and dots would confuse naive parsers;
    # the real node id always travels in TXT `id`.
    if _INSTANCE_RE.match(node_id):
        return node_id
    return "sm-" + blake3.blake3(node_id.encode()).hexdigest()[:24]


def _check_port(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise LocalError(f"{name} must be an int in 1..65535, got {value!r}")
    return value


def _check_text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise LocalError(f"{name} must be a non-empty string, got {value!r}")
    if len(value.encode()) > limit or not value.isprintable():
        raise LocalError(f"{name} must be printable and at most {limit} bytes, got {value!r}")
    return value


def _check_ipv4(name: str, value: object) -> str:
    try:
        addr = ipaddress.IPv4Address(value)  # type: ignore[arg-type]
    except (ipaddress.AddressValueError, ValueError, TypeError) as exc:
        raise LocalError(f"{name} must be an IPv4 address, got {value!r}") from exc
    if addr.is_unspecified or addr.is_multicast:
        raise LocalError(f"{name} must name one interface, got {value!r}")
    return str(addr)


class Discovery:
    """Announce this node and find peers over mDNS on the given interfaces (async context manager)."""

    def __init__(
        self,
        node_id: str,
        cluster: str,
        port: int,
        interfaces: list[str],
        *,
        address: str | None = None,
        http_port: int | None = None,
        extra_txt: Mapping[str, str] | None = None,
    ) -> None:
        self.node_id = _check_text("node_id", node_id, 200)
        self.cluster = _check_text("cluster", cluster, 200)
        self.port = _check_port("port", port)
        if (
            isinstance(interfaces, str)
            or not isinstance(interfaces, list | tuple)
            or not interfaces
        ):
            raise LocalError(
                f"interfaces must be a non-empty list of IPv4 addresses, got {interfaces!r}"
            )
        self.interfaces = [_check_ipv4("interface", i) for i in interfaces]
        self.address = _check_ipv4("address", address) if address is not None else None
        self.http_port = _check_port("http_port", http_port) if http_port is not None else None
        txt = {
            "id": self.node_id,
            "pv": str(PROTOCOL_VERSION),
            "ch": cluster_hash(self.cluster),
            "gp": str(self.port),
        }
        if self.http_port is not None:
            txt["hp"] = str(self.http_port)
        for k, v in (extra_txt or {}).items():
            if k in txt or not isinstance(k, str) or not isinstance(v, str):
                raise LocalError(f"extra_txt entry {k!r} is reserved or not str -> str")
            if len(k.encode()) + len(v.encode()) + 1 > 255 or "=" in k or not k:
                raise LocalError(f"extra_txt entry {k!r} is malformed or over 255 bytes")
            txt[k] = v
        self._txt = txt
        label = _instance_label(self.node_id)
        self._info = ServiceInfo(
            SERVICE_TYPE,
            f"{label}.{SERVICE_TYPE}",
            port=self.port,
            properties=txt,
            server=f"{label}.local.",
            parsed_addresses=[self.address] if self.address else self.interfaces,
        )
        self._peers: dict[str, PeerFound] = {}
        self._name_to_node: dict[str, str] = {}
        # Per service name, the stamp of its latest change; stamps never repeat, so a
        # resolution that finishes after a newer change (even remove + re-add) is dropped.
        self._generation: dict[str, int] = {}
        self._stamps = itertools.count(1)
        self._ignored: Counter[str] = Counter()
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._entered = False
        self._closed = False

    # --- public view ----------------------------------------------------------------

    @property
    def peers(self) -> dict[str, PeerFound]:
        """The peers currently advertised, by node id (a copy)."""
        return dict(self._peers)

    @property
    def ignored(self) -> dict[str, int]:
        """How many resolved records were ignored, by reason (see IGNORE_REASONS)."""
        return dict(self._ignored)

    def events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        """The channel of PeerFound / PeerLost events; it ends when discovery closes."""
        if not self._entered:
            raise LocalError("use `async with Discovery(...)` before reading events")
        return self._events_recv

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Discovery:
        if self._entered:
            raise LocalError("a Discovery can be entered only once")
        self._entered = True
        self._token = trio.lowlevel.current_trio_token()
        self._events_send, self._events_recv = trio.open_memory_channel[PeerEvent](math.inf)
        self._raw_send, self._raw_recv = trio.open_memory_channel[tuple[str, Any]](math.inf)
        self._limiter = trio.CapacityLimiter(4)
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        try:
            # Worker threads here are not abandoned (they own sockets), so a cancel that
            # arrives meanwhile is only seen at the explicit checkpoints between steps.
            self._zc = await trio.to_thread.run_sync(
                partial(Zeroconf, interfaces=self.interfaces, ip_version=IPVersion.V4Only)
            )
            await trio.lowlevel.checkpoint_if_cancelled()
            self._browser = await trio.to_thread.run_sync(
                partial(ServiceBrowser, self._zc, SERVICE_TYPE, handlers=[self._on_change])
            )
            await trio.lowlevel.checkpoint_if_cancelled()
            # Cooperating responders skip probing (0.45 s instead of 1.7 s) and let a
            # restarted node take over its stale record instead of failing on a conflict.
            await trio.to_thread.run_sync(
                partial(self._zc.register_service, self._info, cooperating_responders=True)
            )
            await trio.lowlevel.checkpoint_if_cancelled()
            self._nursery.start_soon(self._process)
        except BaseException:
            await self._close()
            await self._nursery_cm.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        await self._close()
        # Our tasks were cancelled by _close; the body's own exception (if any) is not
        # handed to the nursery so it propagates as itself, not wrapped in a group.
        await self._nursery_cm.__aexit__(None, None, None)
        return False

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._nursery.cancel_scope.cancel()
        browser, zc = self._browser, self._zc

        def close_sync() -> None:
            # Our own browser is not stopped by zc.close(); cancel it first.
            if browser is not None:
                browser.cancel()
            if zc is not None:
                zc.close()  # sends goodbyes for our registration, then stops its loop

        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
            await trio.to_thread.run_sync(close_sync, abandon_on_cancel=True)
        self._raw_send.close()
        self._events_send.close()

    # --- zeroconf thread -> trio ----------------------------------------------------

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Browser callback (zeroconf's thread): hand the change to trio, never block."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._deliver, (name, state_change))

    def _deliver(self, item: tuple[str, ServiceStateChange]) -> None:
        # Runs on the trio thread outside any task: an exception here would crash the run.
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._raw_send.send_nowait(item)

    # --- trio side ------------------------------------------------------------------

    async def _process(self) -> None:
        async for name, change in self._raw_recv:
            if change is ServiceStateChange.Removed:
                self._generation.pop(name, None)
                node = self._name_to_node.pop(name, None)
                if node is not None and self._peers.pop(node, None) is not None:
                    self._emit(PeerLost(node))
            else:
                stamp = self._generation[name] = next(self._stamps)
                self._nursery.start_soon(self._resolve, name, stamp)

    async def _resolve(self, name: str, generation: int) -> None:
        assert self._zc is not None
        info = ServiceInfo(SERVICE_TYPE, name)
        if not info.load_from_cache(self._zc):
            ok = await trio.to_thread.run_sync(
                partial(info.request, self._zc, _RESOLVE_TIMEOUT_MS),
                limiter=self._limiter,
                abandon_on_cancel=True,
            )
            if not ok:
                if self._generation.get(name) == generation:
                    self._ignored["unresolved"] += 1
                return
        if self._generation.get(name) == generation:
            self._accept(name, info)

    def _accept(self, name: str, info: ServiceInfo) -> None:
        txt: dict[str, str] = {}
        try:
            for k, v in info.properties.items():
                txt[k.decode()] = v.decode() if v is not None else ""
        except UnicodeDecodeError:
            self._ignored["malformed"] += 1
            return
        node = txt.get("id")
        if node == self.node_id:
            return
        if not node or "pv" not in txt or "ch" not in txt:
            self._ignored["malformed"] += 1
            return
        if txt["pv"] != str(PROTOCOL_VERSION):
            self._ignored["version"] += 1
            return
        if txt["ch"] != self._txt["ch"]:
            self._ignored["cluster"] += 1
            return
        addresses = tuple(info.parsed_addresses(IPVersion.V4Only))
        port = info.port
        http_port: int | None = None
        if "hp" in txt:
            http_port = int(txt["hp"]) if txt["hp"].isdigit() else 0
        if not addresses or not port or not 1 <= port <= 65535 or http_port == 0:
            self._ignored["malformed"] += 1
            return
        if node not in self._peers and len(self._peers) >= MAX_PEERS:
            self._ignored["overflow"] += 1
            return
        event = PeerFound(
            node_id=node,
            host=addresses[0],
            port=port,
            txt=MappingProxyType(txt),
            addresses=addresses,
            http_port=http_port if http_port is not None and 1 <= http_port <= 65535 else None,
        )
        old_node = self._name_to_node.get(name)
        if old_node is not None and old_node != node:
            # The same service name now carries another node id: the old one is gone.
            self._peers.pop(old_node, None)
            self._emit(PeerLost(old_node))
        self._name_to_node[name] = node
        if self._peers.get(node) != event:
            self._peers[node] = event
            self._emit(event)

    def _emit(self, event: PeerEvent) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._events_send.send_nowait(event)


# --- probe: python -m mesh.discovery ------------------------------------------------


async def _probe(args: argparse.Namespace) -> int:
    found: set[str] = set()  # found and not lost since
    ever: set[str] = set()

    def say(obj: dict[str, Any]) -> None:
        print(json.dumps(obj, sort_keys=True), flush=True)

    d = Discovery(args.node, args.cluster, args.port, args.interface, http_port=args.http_port)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        with trio.move_on_after(args.timeout):
            async with d, trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(on_signal)
                say({"event": "registered", "node": args.node})
                async for ev in d.events():
                    if isinstance(ev, PeerFound):
                        found.add(ev.node_id)
                        ever.add(ev.node_id)
                        say(
                            {"event": "found", "node": ev.node_id, "host": ev.host, "port": ev.port}
                        )
                    else:
                        found.discard(ev.node_id)
                        say({"event": "lost", "node": ev.node_id})
                    if args.expect and len(found) >= args.expect:
                        say({"event": "complete", "peers": sorted(found)})
                        # Stay announced a little so slower starters can find us too.
                        await trio.sleep(args.linger)
                        nursery.cancel_scope.cancel()
    say(
        {
            "event": "summary",
            "node": args.node,
            "found": sorted(ever),
            "peers": {n: [p.host, p.port] for n, p in sorted(d.peers.items())},
            "ignored": d.ignored,
        }
    )
    return 0 if not args.expect or len(ever) >= args.expect else 1


def main(argv: list[str] | None = None) -> int:
    """Run the discovery probe; exit 0 when `--expect` peers were found, 1 if not, 2 on bad flags."""
    p = argparse.ArgumentParser(prog="python -m mesh.discovery", description=main.__doc__)
    p.add_argument("--node", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interface", action="append", required=True, help="IPv4 address; repeatable")
    p.add_argument("--http-port", type=int)
    p.add_argument("--expect", type=int, default=0, help="peers to find before finishing")
    p.add_argument("--linger", type=float, default=3.0, help="seconds to stay after --expect")
    p.add_argument("--timeout", type=float, default=30.0, help="hard bound on the run")
    args = p.parse_args(argv)
    try:
        return trio.run(_probe, args)
    except LocalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
