"""mesh.discovery: real zeroconf on loopback (127.0.0.1 only), and probes on namespace hosts.

Loopback is shared with whatever else runs on this machine, so every test uses a cluster
name unique to this process and asserts exactly which peers it found; records of other
clusters that happen to be on loopback can only raise `ignored["cluster"]`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import trio
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from crdt_types.errors import LocalError
from gossip.messages import PROTOCOL_VERSION
from mesh.discovery import (
    SERVICE_TYPE,
    Discovery,
    PeerFound,
    PeerLost,
    cluster_hash,
)
from tests.netns import HostNetwork

LO = ["127.0.0.1"]
BOUND = 10.0  # generous bound on any wait; never a performance assertion


def cluster(tag: str) -> str:
    return f"test-{os.getpid()}-{tag}"


def zeroconf_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "zeroconf" in t.name or "_run_loop" in t.name]


async def next_found(d: Discovery, node_id: str) -> PeerFound:
    """Read events until `node_id` is found (other nodes of our cluster are unexpected)."""
    with trio.fail_after(BOUND):
        async for ev in d.events():
            if isinstance(ev, PeerFound):
                assert ev.node_id == node_id, f"unexpected peer {ev}"
                return ev
    raise AssertionError("event channel ended before the peer was found")


class RawServices:
    """Records registered with plain zeroconf: lets a test advertise what Discovery never would."""

    def __init__(self, records: dict[str, dict[bytes, bytes]], port: int = 7999) -> None:
        self.infos = [
            ServiceInfo(
                SERVICE_TYPE,
                f"{label}.{SERVICE_TYPE}",
                port=port,
                properties=props,
                server=f"{label}.local.",
                parsed_addresses=["127.0.0.1"],
            )
            for label, props in records.items()
        ]
        self.zc: Zeroconf | None = None

    async def __aenter__(self) -> RawServices:
        self.zc = await trio.to_thread.run_sync(
            lambda: Zeroconf(interfaces=LO, ip_version=IPVersion.V4Only)
        )
        async with trio.open_nursery() as nursery:
            for info in self.infos:
                nursery.start_soon(
                    trio.to_thread.run_sync,
                    lambda info=info: self.zc.register_service(info, cooperating_responders=True),
                )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.zc is not None:
            await trio.to_thread.run_sync(self.zc.close)


# --- loopback ------------------------------------------------------------------------


async def test_two_peers_find_each_other_with_port_and_node_id() -> None:
    c = cluster("pair")
    async with (
        Discovery("alpha", c, 7101, LO) as a,
        Discovery("beta", c, 7102, LO, http_port=8102) as b,
    ):
        fa = await next_found(a, "beta")
        fb = await next_found(b, "alpha")
        assert set(a.peers) == {"beta"} and set(b.peers) == {"alpha"}
    assert (fa.host, fa.port, fa.http_port) == ("127.0.0.1", 7102, 8102)
    assert (fb.host, fb.port, fb.http_port) == ("127.0.0.1", 7101, None)
    assert fa.txt["pv"] == str(PROTOCOL_VERSION) and fa.txt["ch"] == cluster_hash(c)
    assert c not in "".join(fa.txt.values()), "the cluster name itself must not be advertised"


async def test_node_id_that_is_not_a_dns_label_round_trips() -> None:
    c = cluster("label")
    odd = "agent.7/zürich node"
    async with Discovery(odd, c, 7103, LO), Discovery("plain", c, 7104, LO) as b:
        found = await next_found(b, odd)
    assert found.node_id == odd and found.port == 7103


async def test_other_cluster_other_version_and_malformed_records_are_ignored() -> None:
    c = cluster("ignore")
    good_hash = cluster_hash(c).encode()
    pv = str(PROTOCOL_VERSION).encode()
    records = {
        "v-other": {b"id": b"v-other", b"pv": b"99", b"ch": good_hash},
        "c-other": {b"id": b"c-other", b"pv": pv, b"ch": b"0123456789abcdef"},
        "no-id": {b"pv": pv, b"ch": good_hash},
        "bad-utf8": {b"id": b"\xff\xfe", b"pv": pv, b"ch": good_hash},
        "bad-hp": {b"id": b"bad-hp", b"pv": pv, b"ch": good_hash, b"hp": b"x"},
    }
    async with (
        RawServices(records),
        Discovery("watcher", c, 7105, LO) as d,
        Discovery("good", c, 7106, LO),
    ):
        await next_found(d, "good")
        # Every raw record answers the same query as "good"; wait (bounded) until each
        # has been resolved and judged.
        with trio.fail_after(BOUND):
            while not (
                d.ignored.get("version", 0) >= 1
                and d.ignored.get("cluster", 0) >= 1
                and d.ignored.get("malformed", 0) >= 3
            ):
                await trio.sleep(0.05)
        assert set(d.peers) == {"good"}, d.peers


async def test_peers_of_another_cluster_never_see_each_other() -> None:
    async with (
        Discovery("red", cluster("red"), 7107, LO) as red,
        Discovery("blue", cluster("blue"), 7108, LO) as blue,
        Discovery("red2", cluster("red"), 7109, LO),
    ):
        await next_found(red, "red2")
        with trio.fail_after(BOUND):
            while blue.ignored.get("cluster", 0) < 2:
                await trio.sleep(0.05)
        assert blue.peers == {}
        assert set(red.peers) == {"red2"}


async def test_goodbye_gives_peer_lost() -> None:
    c = cluster("lost")
    async with Discovery("stay", c, 7110, LO) as stay:
        async with Discovery("leave", c, 7111, LO):
            await next_found(stay, "leave")
        with trio.fail_after(BOUND):
            ev = await stay.events().receive()
        assert ev == PeerLost("leave")
        assert stay.peers == {}


async def test_shutdown_is_clean_and_ends_the_event_stream() -> None:
    before = zeroconf_threads()
    with trio.fail_after(BOUND):
        async with Discovery("solo", cluster("close"), 7112, LO) as d:
            assert zeroconf_threads() != before
        events = [ev async for ev in d.events()]  # ends: the channel is closed
    assert events == []
    assert zeroconf_threads() == before


async def test_cancellation_in_body_still_shuts_down() -> None:
    before = zeroconf_threads()
    with trio.fail_after(BOUND):
        with trio.move_on_after(0.5) as scope:
            async with Discovery("cancelled", cluster("cancel"), 7113, LO):
                await trio.sleep_forever()
    assert scope.cancelled_caught
    assert zeroconf_threads() == before


@pytest.mark.parametrize("after", [0.0, 0.05, 0.2])
async def test_cancellation_during_registration_cleans_up(after: float) -> None:
    before = zeroconf_threads()
    entered = False
    with trio.fail_after(BOUND):
        with trio.move_on_after(after):
            async with Discovery("early", cluster("early"), 7114, LO):
                entered = True
                await trio.sleep_forever()
    if after == 0.0:
        assert not entered, "a cancel pending before entry must stop the entry"
    assert zeroconf_threads() == before


async def test_exception_in_body_propagates_unwrapped() -> None:
    before = zeroconf_threads()
    with pytest.raises(KeyError, match="boom"):
        async with Discovery("raiser", cluster("raise"), 7115, LO):
            raise KeyError("boom")
    assert zeroconf_threads() == before


# --- bad input -------------------------------------------------------------------------

GOOD = dict(node_id="n", cluster="c", port=7000, interfaces=["127.0.0.1"])


@pytest.mark.parametrize(
    "change",
    [
        {"node_id": ""},
        {"node_id": 7},
        {"node_id": "x" * 201},
        {"node_id": "tab\there"},
        {"cluster": ""},
        {"cluster": None},
        {"port": 0},
        {"port": 65536},
        {"port": True},
        {"port": "7000"},
        {"interfaces": []},
        {"interfaces": "127.0.0.1"},
        {"interfaces": None},
        {"interfaces": ["eth0"]},
        {"interfaces": ["0.0.0.0"]},
        {"interfaces": ["224.0.0.251"]},
        {"interfaces": ["::1"]},
        {"address": "not-an-ip"},
        {"http_port": 0},
        {"extra_txt": {"id": "spoof"}},
        {"extra_txt": {"k": "v" * 300}},
        {"extra_txt": {"a=b": "v"}},
    ],
)
def test_bad_arguments_raise_local_error(change: dict[str, object]) -> None:
    kwargs = {**GOOD, **change}
    with pytest.raises(LocalError):
        Discovery(**kwargs)  # type: ignore[arg-type]


async def test_misuse_raises_local_error() -> None:
    d = Discovery(**GOOD)  # type: ignore[arg-type]
    with pytest.raises(LocalError, match="async with"):
        d.events()
    async with d:
        pass
    with pytest.raises(LocalError, match="only once"):
        async with d:
            pass


# --- the probe (python -m mesh.discovery) ---------------------------------------------


def probe_argv(*extra: str) -> list[str]:
    return [sys.executable, "-m", "mesh.discovery", "--cluster", cluster("probe"), *extra]


@pytest.mark.parametrize(
    "flags",
    [
        ["--node", "p", "--port", "0", "--interface", "127.0.0.1"],
        ["--node", "p", "--port", "7300", "--interface", "eth0"],
        ["--node", "p", "--port", "7300"],  # no interface: there is no default
        ["--node", "p", "--port", "x", "--interface", "127.0.0.1"],
    ],
)
def test_probe_rejects_bad_flags_with_exit_2(flags: list[str]) -> None:
    proc = subprocess.run(probe_argv(*flags), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    assert proc.stdout == "" and "error" in proc.stderr


def test_probe_exits_1_when_the_expected_peers_never_come() -> None:
    argv = probe_argv("--node", "lonely", "--port", "7301", "--interface", "127.0.0.1")
    proc = subprocess.run(
        argv + ["--expect", "1", "--timeout", "1.5"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["event"] == "summary" and summary["peers"] == {}


def test_probe_shuts_down_cleanly_on_sigterm() -> None:
    argv = probe_argv("--node", "term", "--port", "7302", "--interface", "127.0.0.1")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert json.loads(p.stdout.readline())["event"] == "registered"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=BOUND)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["event"] == "summary"


# --- namespace hosts ------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.slow
def test_three_hosts_discover_each_other_on_their_own_interface(
    host_network: HostNetwork,
) -> None:
    net = host_network
    c = cluster("netns")
    probes = [
        h.popen(
            [sys.executable, "-m", "mesh.discovery", "--node", f"n{h.index}", "--cluster", c]
            + ["--port", str(7200 + h.index), "--interface", h.address]
            + ["--expect", "2", "--linger", "2", "--timeout", "20"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in net.hosts
    ]
    results = [p.communicate(timeout=40) for p in probes]
    for h, p, (out, err) in zip(net.hosts, probes, results, strict=True):
        assert p.returncode == 0, f"probe on {h.name} failed:\n{out}\n{err}"
        found = {
            e["node"]: (e["host"], e["port"])
            for e in map(json.loads, out.splitlines())
            if e["event"] == "found"
        }
        expected = {f"n{o.index}": (o.address, 7200 + o.index) for o in net.hosts if o is not h}
        assert found == expected, f"{h.name}: {out}"
