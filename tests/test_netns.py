"""Self-test of the namespace-host harness (mesh.hosts via tests.netns), with real sockets.

Connectivity is checked with real TCP connects and UDP datagrams between processes in
different namespaces (a small helper script run with `python -c`); faults are the real
nftables rules. Every test also checks that the namespaces it made are gone afterwards.
"""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from crdt_types.errors import LocalError
from tests.netns import NETWORK, Host, HostNetwork, cleanup_stale, list_namespaces

# `_netns_session` (tests/conftest.py) skips with the reason where hosts cannot be built.
pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("_netns_session")]

# Modes: tcp-serve PORT SECONDS | tcp-connect HOST PORT TIMEOUT |
#        udp-count PORT MAXSECONDS (counts b"x" datagrams until b"END", then drains 0.3 s) |
#        udp-send HOST PORT N PAYLOAD
HELPER = textwrap.dedent(
    """
    import socket, sys, time
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "tcp-serve":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(args[0])))
        s.listen(64)
        s.settimeout(0.1)
        print("ready", flush=True)
        end = time.monotonic() + float(args[1])
        while time.monotonic() < end:
            try:
                s.accept()[0].close()
            except OSError:
                pass
    elif mode == "tcp-connect":
        try:
            socket.create_connection((args[0], int(args[1])), timeout=float(args[2])).close()
            print("ok")
        except OSError as exc:
            print("fail", exc)
    elif mode == "udp-count":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root)
        s.bind(("0.0.0.0", int(args[0])))
        print("ready", flush=True)
        count, end, stop = 0, time.monotonic() + float(args[1]), None
        while time.monotonic() < end and (stop is None or time.monotonic() < stop):
            s.settimeout(0.05)
            try:
                data = s.recv(64)
            except OSError:
                continue
            if data == b"END":
                stop = time.monotonic() + 0.3
            elif data == b"x":
                count += 1
        print(count, flush=True)
    elif mode == "udp-send":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(int(args[2])):
            s.sendto(args[3].encode(), (args[0], int(args[1])))
            if i % 100 == 99:
                time.sleep(0.002)  # pacing keeps the receiver's buffer out of the count
    """
)


def helper(*args: object) -> list[str]:
    return [sys.executable, "-c", HELPER, *map(str, args)]


def tcp_ok(src: Host, dst: Host, port: int) -> bool:
    out = src.run(helper("tcp-connect", dst.address, port, 0.5), timeout=15).stdout
    return out.startswith("ok")


def serve_tcp(h: Host, port: int) -> subprocess.Popen[str]:
    p = h.popen(helper("tcp-serve", port, 60), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def udp_received(src: Host, dst: Host, port: int, n: int) -> int:
    """Send `n` datagrams from `src` to `dst`; return how many arrived."""
    rx = dst.popen(helper("udp-count", port, 30), stdout=subprocess.PIPE, text=True)
    assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
    src.run(helper("udp-send", dst.address, port, n, "x"), timeout=30)
    # The stop marker comes over the receiver's own loopback: no fault rule touches it.
    dst.run(helper("udp-send", "127.0.0.1", port, 1, "END"), timeout=15)
    out, _ = rx.communicate(timeout=30)
    return int(out.strip())


def ours(net: HostNetwork) -> set[str]:
    return {n for n in list_namespaces() if n.startswith(net.tag)}


# --- building and tearing down ---------------------------------------------------------


def root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def test_hosts_get_distinct_addresses_in_the_test_range_and_only_private_routes(
    host_network_factory: Callable[..., HostNetwork],
) -> None:
    before = root_links()
    net = host_network_factory(3)
    # Nothing was created in the root namespace, not even a veth end.
    assert root_links() == before
    assert len(net.hosts) == 3 and len(set(net.addresses)) == 3
    assert all(ipaddress.ip_address(a) in NETWORK for a in net.addresses)
    assert ours(net) == {net.bridge, *(h.name for h in net.hosts)}
    for h in net.hosts:
        routes = h.run(["ip", "-4", "route"]).stdout.split("\n")
        dests = sorted(r.split()[0] for r in routes if r.strip())
        # No default route: nothing in a host can reach a real network.
        assert dests == sorted([str(net.subnet), "224.0.0.0/4"]), routes


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_popen_runs_inside_the_host_and_close_kills_it_and_removes_namespaces() -> None:
    net = HostNetwork(2)
    try:
        h = net.hosts[1]
        # The shell names its own namespace, then becomes `sleep` under the same pid.
        p = h.popen(["sh", "-c", "ip netns identify $$; exec sleep 600"], stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().decode().strip() == h.name
        # A grandchild that popen never saw must be swept by close() too.
        q = h.popen(["sh", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE)
        assert q.stdout is not None
        grandchild = int(q.stdout.readline())
    finally:
        net.close()
    assert p.poll() == -signal.SIGKILL and q.poll() == -signal.SIGKILL
    assert gone(grandchild)
    assert ours(net) == set()
    net.close()  # idempotent


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_everything_is_removed_when_the_body_raises(exc_type: type[BaseException]) -> None:
    with pytest.raises(exc_type), HostNetwork(2) as net:
        p = net.hosts[0].popen(["sleep", "600"])
        raise exc_type("boom")
    assert p.poll() == -signal.SIGKILL
    assert ours(net) == set()


def test_atexit_removes_a_network_its_program_forgot_to_close() -> None:
    code = "from mesh.hosts import HostNetwork; n = HostNetwork(2); print(n.tag, flush=True)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    tag = out.strip()
    assert tag and not [n for n in list_namespaces() if n.startswith(tag)]


def test_cleanup_stale_removes_leftovers_of_a_killed_run_and_spares_live_ones() -> None:
    code = (
        "import os, signal; from mesh.hosts import HostNetwork\n"
        "n = HostNetwork(2, prefix='smtstale'); print(n.tag, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    tag = proc.stdout.strip()
    left = {n for n in list_namespaces() if n.startswith(tag)}
    assert len(left) == 3, "SIGKILL skips atexit: the namespaces must still be there"
    with HostNetwork(1, prefix="smtstale") as live:
        removed = set(cleanup_stale("smtstale"))
        assert left <= removed
        assert ours(live) == {live.bridge, live.hosts[0].name}
    assert not {n for n in list_namespaces() if n.startswith(tag)}


# --- faults --------------------------------------------------------------------------


@pytest.mark.slow
def test_partition_stops_tcp_and_udp_between_sides_and_heal_restores(
    host_network: HostNetwork,
) -> None:
    net = host_network
    a, b, c = net.hosts
    for h in net.hosts:
        serve_tcp(h, 9100)
    assert tcp_ok(a, c, 9100) and tcp_ok(c, a, 9100)
    net.partition({a, b}, {c})
    assert not tcp_ok(a, c, 9100) and not tcp_ok(c, b, 9100)
    assert tcp_ok(a, b, 9100) and tcp_ok(b, a, 9100)
    assert udp_received(a, c, 9101, 50) == 0
    assert udp_received(c, b, 9102, 50) == 0
    assert udp_received(b, a, 9103, 50) > 0
    net.heal()
    assert tcp_ok(a, c, 9100) and tcp_ok(c, b, 9100)
    assert udp_received(a, c, 9104, 50) > 0


def test_one_way_partition_drops_one_direction_only(host_network: HostNetwork) -> None:
    net = host_network
    a, b, _ = net.hosts
    net.partition([a], [b], oneway=True)
    assert udp_received(a, b, 9110, 50) == 0
    assert udp_received(b, a, 9111, 50) > 0
    net.heal()
    assert udp_received(a, b, 9112, 50) > 0


def test_loss_drops_about_the_requested_share_of_datagrams(host_network: HostNetwork) -> None:
    net = host_network
    a, b, _ = net.hosts
    net.loss(b, 50)
    got = udp_received(a, b, 9120, 2000)
    # Binomial(2000, 0.5) has sd 22: this band is 13 sd wide and cannot flake.
    assert 700 <= got <= 1300, got
    net.loss(b, 0)
    assert udp_received(a, b, 9121, 200) >= 190  # cleared; only the buffer could drop any


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"n": 33}, {"n": "3"}, {"n": True}, {"prefix": "Bad"}, {"prefix": "a-b"}],
)
def test_bad_network_arguments_raise_local_error(kwargs: dict[str, object]) -> None:
    before = set(list_namespaces())
    with pytest.raises(LocalError):
        HostNetwork(**kwargs)  # type: ignore[arg-type]
    assert set(list_namespaces()) == before


BAD_FAULTS: list[Callable[[HostNetwork, HostNetwork], None]] = [
    lambda net, other: net.partition({0, 1}),
    lambda net, other: net.partition({0, 1}, set()),
    lambda net, other: net.partition({0, 1}, {1, 2}),
    lambda net, other: net.partition({0}, {1}, {2}, oneway=True),
    lambda net, other: net.partition({0}, {7}),
    lambda net, other: net.partition({0}, {other.hosts[0]}),
    lambda net, other: net.loss(0, -1),
    lambda net, other: net.loss(0, 101),
    lambda net, other: net.loss(0, "50"),  # type: ignore[arg-type]
    lambda net, other: net.loss(9, 10),
    lambda net, other: net.hosts[0].popen("sleep 1"),  # type: ignore[arg-type]
]


def test_bad_fault_arguments_raise_local_error_and_change_nothing(
    host_network_factory: Callable[..., HostNetwork],
) -> None:
    net, other = host_network_factory(3), host_network_factory(1)
    rules_before = [h.run(["nft", "list", "ruleset"]).stdout for h in net.hosts]
    for i, bad in enumerate(BAD_FAULTS):
        with pytest.raises(LocalError):
            bad(net, other)
            pytest.fail(f"BAD_FAULTS[{i}] was accepted")
    assert [h.run(["nft", "list", "ruleset"]).stdout for h in net.hosts] == rules_before


def test_use_after_close_raises_local_error() -> None:
    net = HostNetwork(1)
    net.close()
    for use in (
        lambda: net.hosts[0].popen(["true"]),
        lambda: net.hosts[0].run(["true"]),
        lambda: net.partition({0}, {0}),
        lambda: net.loss(0, 5),
        net.heal,
    ):
        with pytest.raises(LocalError, match="closed"):
            use()
