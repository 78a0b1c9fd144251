"""Real peers on real hosts: `statemesh peer` processes in network namespaces.

Five namespace hosts on a private bridge (198.18.0.0/15). Hosts 0-2 run the cluster's
peers with mDNS on their own `eth0` address only and no seeds; host 3 runs a peer with
another key, host 4 a peer of another cluster. Writes go in through a small writer
program that embeds the API (`open_mesh`) as one more node, run inside a host and seeded
with that host's peer: real processes, real sockets, real SQLite files. Peers are read
through their `GET /status` and `GET /documents` (curl inside the namespace, since the
bridge is unreachable from the root namespace) and, once killed, with `statemesh
inspect`.

The tests share one network and one set of peers (module fixture) to stay within a few
minutes; each leaves the cluster as it found it (all three peers up, no fault rules).
Every wait is bounded; every process is ours and killed by pid (and by the harness).

`python -m tests.mesh.test_multihost` measures the figures for the README instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gossip.keyring import write_key_file
from tests.netns import HostNetwork, available, cleanup_stale

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PEERS = 3
PORT = 7946
HTTP_PORT = 8080

WRITER = r"""
import argparse, json, sys, time
import trio
from mesh import MeshConfig, open_mesh

p = argparse.ArgumentParser()
p.add_argument("--node"); p.add_argument("--data"); p.add_argument("--listen")
p.add_argument("--join"); p.add_argument("--key-file"); p.add_argument("--cluster")
p.add_argument("--session"); p.add_argument("--messages", type=int, default=1)
p.add_argument("--replicas", default="0"); p.add_argument("--timeout", type=float, default=10)
p.add_argument("--expect", type=int, default=1)
p.add_argument("--latency", type=int, default=0)
a = p.parse_args()
replicas = a.replicas if a.replicas == "all" else int(a.replicas)

async def main():
    cfg = MeshConfig(node=a.node, data_dir=a.data, listen=a.listen, seeds=[a.join],
                     key=a.key_file, cluster=a.cluster)
    async with open_mesh(cfg) as mesh:
        with trio.move_on_after(15):
            while len([m for m in mesh.members() if m["state"] == "alive"]) < a.expect + 1:
                await trio.sleep(0.02)
        peers = sorted(m["node"] for m in mesh.members() if m["state"] == "alive")
        session = await mesh.session(a.session)
        t0 = time.monotonic()
        for i in range(a.messages):
            session.state.append_message("agent", f"{a.node} message {i}")
        holders = await session.commit(replicas=replicas, timeout=a.timeout)
        elapsed = time.monotonic() - t0
        samples = []
        for i in range(a.latency):
            # Replication latency: one small write until every other live peer holds it.
            session.state.set_memory("tick", i)
            t = time.monotonic()
            await session.commit(replicas="all", timeout=a.timeout)
            samples.append(time.monotonic() - t)
        print(json.dumps({"holders": holders, "fingerprint": session.fingerprint(),
                          "elapsed": elapsed, "peers": peers, "samples": samples}), flush=True)

trio.run(main)
"""


def _read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline()
            return line or None
        if proc.poll() is not None:
            return None
    return None


class Cluster:
    """The namespace hosts and the peer processes on them."""

    def __init__(self, net: HostNetwork, root: Path) -> None:
        self.net = net
        self.root = root
        self.key = root / "cluster.key"
        write_key_file(self.key, os.urandom(32))
        self.other_key = root / "other.key"
        write_key_file(self.other_key, os.urandom(32))
        self.writer = root / "writer.py"
        self.writer.write_text(WRITER)
        self.procs: dict[int, subprocess.Popen] = {}
        self.ready: dict[int, dict[str, Any]] = {}
        self.started_at: dict[int, float] = {}
        self._writers = 0

    def data(self, i: int) -> Path:
        return self.root / f"data{i}"

    def addr(self, i: int, port: int = PORT) -> str:
        return f"{self.net.hosts[i].address}:{port}"

    def launch(self, i: int, *, key: Path | None = None, cluster: str = "mh", extra=()) -> None:
        host = self.net.hosts[i]
        argv = [
            sys.executable, "-m", "cli.main", "peer",
            "--node", f"p{i}", "--data", str(self.data(i)),
            "--listen", self.addr(i), "--http", self.addr(i, HTTP_PORT),
            "--interface", host.address, "--cluster", cluster,
            "--key-file", str(key or self.key), *extra,
        ]  # fmt: skip
        self.started_at[i] = time.monotonic()
        proc = host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs[i] = proc

    def await_ready(self, i: int) -> dict:
        proc = self.procs[i]
        line = _read_line(proc, 20)
        if not line:
            err = proc.stderr.read() if proc.poll() is not None else "(still running)"
            raise AssertionError(f"peer p{i} printed no ready line: {err}")
        info = json.loads(line)
        assert info["event"] == "ready" and info["node"] == f"p{i}", info
        self.ready[i] = info
        return info

    def start(self, i: int, **kw: Any) -> dict:
        self.launch(i, **kw)
        return self.await_ready(i)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(i)
        os.kill(proc.pid, sig)
        return proc.wait(timeout=15)

    def get(self, i: int, path: str) -> Any:
        out = self.net.hosts[i].run(
            ["curl", "-s", "--max-time", "3", f"http://{self.addr(i, HTTP_PORT)}{path}"],
            timeout=10,
        )
        return json.loads(out.stdout)

    def states(self, i: int) -> dict[str, str]:
        return {m["node"]: m["state"] for m in self.get(i, "/status")["members"]}

    def wait_for(self, what: str, check, timeout: float = 20.0, every: float = 0.2):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")

    def write(
        self, i: int, session: str, *, messages: int = 1, replicas="0", expect: int = 1, **kw
    ) -> dict:
        self._writers += 1
        name = f"w{self._writers}"
        argv = [
            sys.executable, str(self.writer), "--node", name,
            "--data", str(self.root / name), "--listen", f"{self.net.hosts[i].address}:0",
            "--join", self.addr(i), "--key-file", str(self.key), "--cluster", "mh",
            "--session", session, "--messages", str(messages), "--replicas", str(replicas),
            "--expect", str(expect),
            *[f"--{k}={v}" for k, v in kw.items()],
        ]  # fmt: skip
        out = self.net.hosts[i].run(argv, timeout=60, check=False)
        assert out.returncode == 0, f"writer failed: {out.stderr[-2000:]}"
        return json.loads(out.stdout.strip().splitlines()[-1])

    def all_alive(self, peers=range(PEERS)) -> bool:
        names = {f"p{j}" for j in peers}
        for i in peers:
            states = self.states(i)
            if any(states.get(n) != "alive" for n in names):
                return False
        return True

    def fingerprints(self, i: int) -> dict[str, str]:
        return self.get(i, "/documents")

    def stop_all(self) -> None:
        for i in list(self.procs):
            proc = self.procs.pop(i)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    cleanup_stale()
    with HostNetwork(5) as net:
        c = Cluster(net, tmp_path_factory.mktemp("multihost"))
        try:
            for i in range(PEERS):
                c.start(i)
            yield c
        finally:
            c.stop_all()


def test_peers_discover_each_other_over_mdns_without_seeds(cluster):
    # No --join anywhere: only mDNS on each host's own interface can introduce them.
    cluster.wait_for("every peer to report every peer alive", cluster.all_alive)
    for i in range(PEERS):
        status = cluster.get(i, "/status")
        assert status["node"] == f"p{i}" and status["cluster"] == "mh" and status["started"]
        me = [m for m in status["members"] if m["node"] == f"p{i}"]
        assert me and me[0]["address"] == cluster.addr(i)


def test_session_written_on_one_host_is_equal_on_all_others(cluster):
    result = cluster.write(0, "replicated", messages=5, replicas="all", expect=PEERS)
    fp = result["fingerprint"]

    def equal_everywhere():
        return all(cluster.fingerprints(i).get("session/replicated") == fp for i in range(PEERS))

    cluster.wait_for("the session's fingerprint on every peer", equal_everywhere)
    doc = cluster.get(2, "/documents/session%2Freplicated")
    assert [m["content"] for m in doc["content"]["messages"]] == [
        f"w{cluster._writers} message {k}" for k in range(5)
    ]


def test_commit_with_two_replicas_returns_once_two_hosts_hold_it(cluster):
    result = cluster.write(1, "two-replicas", messages=3, replicas=2, expect=PEERS)
    holders = [h for h in result["holders"] if h.startswith("p")]
    assert len(holders) >= 2, result
    # Kill the holders at once (no chance to write more) and read their stores offline.
    chosen = holders[:2]
    for name in chosen:
        cluster.kill(int(name[1:]))
    try:
        for name in chosen:
            out = subprocess.run(
                [sys.executable, "-m", "cli.main", "inspect", "--json", str(cluster.data(int(name[1:])))],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            report = json.loads(out.stdout)
            docs = {d["id"]: d["fingerprint"] for d in report["documents"]}
            assert docs.get("session/two-replicas") == result["fingerprint"], (name, report)
    finally:
        for name in chosen:
            cluster.start(int(name[1:]))
    cluster.wait_for("the restarted holders to be alive everywhere", cluster.all_alive, 30)


def test_sigkilled_peer_is_declared_dead_then_rejoins_with_its_state(cluster):
    cluster.wait_for("a healthy cluster", cluster.all_alive, 30)
    cluster.write(0, "before-kill", messages=2, replicas="all", expect=PEERS)
    before = cluster.wait_for(
        "p2 to hold the session",
        lambda: cluster.fingerprints(2).get("session/before-kill"),
    )
    cluster.kill(2)
    cluster.wait_for(
        "p0 and p1 to mark p2 dead",
        lambda: all(cluster.states(i).get("p2") == "dead" for i in (0, 1)),
    )
    info = cluster.start(2)
    assert info["documents"] >= 1  # loaded from its data dir before joining
    assert cluster.fingerprints(2).get("session/before-kill") == before
    cluster.wait_for("p2 to be alive again everywhere", cluster.all_alive, 30)


def test_partition_both_sides_accept_writes_and_converge_after_heal(cluster):
    cluster.wait_for("a healthy cluster", cluster.all_alive, 30)
    net = cluster.net
    net.partition([0], [1, 2])
    try:
        # Both sides accept writes while cut off from each other.
        a = cluster.write(0, "side-a", messages=2, replicas=1, expect=1)
        b = cluster.write(1, "side-b", messages=2, replicas=2, expect=2)
        assert "p0" in a["holders"] and {"p1", "p2"} <= set(b["holders"])
        assert "session/side-b" not in cluster.fingerprints(0)
        assert "session/side-a" not in cluster.fingerprints(1)
    finally:
        net.heal()

    def converged():
        views = [cluster.fingerprints(i) for i in range(PEERS)]
        ok = all(v == views[0] for v in views) and "session/side-a" in views[0]
        return ok and "session/side-b" in views[0] and views

    views = cluster.wait_for("every replica to converge after healing", converged, 30)
    assert views[0]["session/side-a"] == a["fingerprint"]
    assert views[0]["session/side-b"] == b["fingerprint"]
    cluster.wait_for("a healthy cluster after healing", cluster.all_alive, 30)


def test_peer_with_wrong_key_or_other_cluster_is_refused_and_learns_nothing(cluster):
    cluster.wait_for("a healthy cluster", cluster.all_alive, 30)
    # Host 3: same cluster name (mDNS introduces it), another key. Host 4: the right key
    # but another cluster name (mDNS filters it), pointed at p0 with --join.
    cluster.start(3, key=cluster.other_key)
    cluster.start(4, cluster="other", extra=["--join", cluster.addr(0)])
    try:

        def refused():
            bad = cluster.get(0, "/status")["bad_frames"]
            return bad.get("unknown_key", 0) > 0 and bad.get("cluster", 0) > 0 and bad

        cluster.wait_for("p0 to refuse frames of both intruders", refused)
        for i in range(PEERS):
            assert set(cluster.states(i)) & {"p3", "p4"} == set()
        for i in (3, 4):
            status = cluster.get(i, "/status")
            assert [m["node"] for m in status["members"]] == [f"p{i}"]
            assert status["documents"] == len(cluster.fingerprints(i))
            # Nothing of the cluster's reached it (it may keep bookkeeping of its own).
            assert not [d for d in cluster.fingerprints(i) if d.startswith("session/")]
    finally:
        for i in (3, 4):
            cluster.kill(i, signal.SIGTERM)


def _figures(peers: int = PEERS) -> dict[str, float]:
    """Startup-to-full-membership, SIGKILL-to-dead, replication latency (median of 100)."""
    import statistics
    import tempfile

    cleanup_stale()
    with HostNetwork(peers) as net, tempfile.TemporaryDirectory() as tmp:
        c = Cluster(net, Path(tmp))
        # All peers launched together, as an operator starting a fleet would.
        t0 = time.monotonic()
        for i in range(peers):
            c.launch(i)
        ready = max(c.await_ready(i) and time.monotonic() - t0 for i in range(peers))
        c.wait_for("membership", lambda: c.all_alive(range(peers)), 30, every=0.02)
        startup = time.monotonic() - t0
        w = c.write(0, "latency", messages=1, replicas="all", expect=peers, latency=100)
        samples = w["samples"]
        t0 = time.monotonic()
        victim = peers - 1
        c.kill(victim)
        c.wait_for(
            "dead",
            lambda: all(c.states(i).get(f"p{victim}") == "dead" for i in range(victim)),
            30,
            every=0.02,
        )
        dead = time.monotonic() - t0
        c.stop_all()
    return {
        "peers": peers,
        "start_to_ready_s": round(ready, 3),
        "start_to_all_members_s": round(startup, 3),
        "sigkill_to_dead_everywhere_s": round(dead, 3),
        "replication_latency_median_ms": round(statistics.median(samples) * 1000, 3),
        "replication_latency_p90_ms": round(sorted(samples)[int(len(samples) * 0.9)] * 1000, 3),
    }


if __name__ == "__main__":
    print(json.dumps(_figures(int(sys.argv[1]) if len(sys.argv) > 1 else PEERS), indent=2))
