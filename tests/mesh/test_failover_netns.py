"""Failover between real processes on namespace hosts: SIGKILL, partitions, restarts, leave.

Three network-namespace hosts on a private bridge (198.18.0.0/15), one agent peer process
(`cli.demo_agent`: the embedding API plus a scripted agent) per host, mDNS on each host's
own address, a sealed cluster key. The tests drive peers through stdin commands and read
their JSON timeline lines; faults are real: SIGKILL of the process, nftables partitions.
Every wait is bounded; every process is ours and killed by pid (the harness also kills
whatever is left in its namespaces). Skipped with the reason when not root.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks._agents import AgentCluster
from cli.demo import _present
from cli.demo_agent import SCRIPT

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(120)]


class Agents(AgentCluster):
    """The benchmark's agent harness, whose waits fail the test instead of returning None."""

    def __init__(self, net: Any, root: Path, cluster: str) -> None:
        super().__init__(root, cluster, net)

    def wait(self, match, timeout: float, what: str = "", since: int = 0) -> dict:
        ev = super().wait(match, timeout, what, since)
        if ev is None:
            tail = "\n".join(str(e) for e in self.log[-30:])
            raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{tail}")
        return ev

    def settle(self, names: list[str], timeout: float = 30.0) -> bool:
        """Wait until every peer sees all `names` alive and has adopted them as stable."""
        if not super().settle(names, timeout):
            last = {e["peer"]: (e["alive"], e["stable"]) for e in self.of("status")}
            raise AssertionError(f"membership did not settle on {names}: {last}")
        return True

    def summary(self, name: str, session: str) -> dict:
        return self.ask(name, f"summary {session}", "summary")

    def converged(self, names: list[str], session: str, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = [self.summary(n, session) for n in names]
            if len({(v["fingerprint"], v["owner"]) for v in views}) == 1:
                return views
            time.sleep(0.2)
        raise AssertionError(f"{session} did not converge on {names}: {views}")


@pytest.fixture
def agents(host_network, tmp_path, request):
    a = Agents(host_network, tmp_path, f"fo-{os.getpid()}-{request.node.name[-20:]}")
    yield a
    a.close()


NAMES = ["p0", "p1", "p2"]


def test_sigkill_of_the_owner_mid_conversation_one_successor_nothing_acked_lost(agents):
    agents.start(0)
    agents.start(1)
    agents.start(2, "--agent", "chat", "--wait-go", "--speed", "0.05")
    agents.settle(NAMES)
    agents.peers["p2"].send("go")
    last = len(SCRIPT) - 1
    agents.wait(lambda e: e["event"] == "acked" and e["step"] == last, 30, "last step acked")
    agents.kill("p2")
    resumed = agents.wait(lambda e: e["event"] == "resumed", 20, "the takeover")
    agents.drain(2.0)  # a second successor would have claimed by now
    takeovers = agents.of("takeover")
    assert [t["peer"] for t in takeovers] == [resumed["peer"]], takeovers
    acked = agents.of("acked", peer="p2")
    assert len(acked) == len(SCRIPT)
    held = takeovers[0]["summary"]
    assert all(_present(a, held) for a in acked), (acked, held)
    assert takeovers[0]["fingerprint"] == acked[-1]["fingerprint"]
    assert [c["key"] for c in takeovers[0]["pending"]] == ["call-1-k"]
    assert resumed["keys"] == ["call-1-k"]
    views = agents.converged(["p0", "p1"], "chat")
    assert views[0]["owner"] == resumed["peer"]
    assert views[0]["summary"]["tool_calls"] == ["call-1"]


def test_partition_2_1_majority_takes_over_minority_does_not_then_one_owner(agents):
    for i in range(3):
        agents.start(i)
    agents.settle(NAMES)
    assert agents.ask("p2", "write lonely first 1", "wrote")["ok"]
    assert agents.ask("p0", "write busy first 1", "wrote")["ok"]
    agents.converged(NAMES, "lonely")
    agents.converged(NAMES, "busy")
    agents.net.partition([0, 1], [2])
    taken = agents.wait(
        lambda e: e["event"] == "takeover" and e["session"] == "lonely", 20, "majority takeover"
    )
    assert taken["peer"] in ("p0", "p1")
    # The minority wrote on, not knowing; its write is local (no replica can ack it).
    assert agents.ask("p2", "write lonely minority 0", "wrote")["ok"]
    agents.drain(3.0)
    assert not agents.of("takeover", peer="p2"), "the minority took over"
    assert len(agents.of("takeover")) == 1
    agents.net.heal()
    agents.wait(
        lambda e: e["event"] == "fenced" and e["peer"] == "p2" and e["session"] == "session/lonely",
        20,
        "p2 fenced",
    )
    wrote = agents.ask("p2", "write lonely after-heal 0", "wrote")
    assert not wrote["ok"] and wrote["error"] == "Fenced"
    lonely = agents.converged(NAMES, "lonely")
    assert lonely[0]["owner"] == taken["peer"]
    # Nothing written on either side is lost by the merge.
    assert {"first", "minority"} <= set(lonely[0]["summary"]["messages"])
    assert agents.converged(NAMES, "busy")[0]["owner"] == "p0"


def test_replaced_owner_restarts_from_disk_and_follows(agents):
    for i in range(3):
        agents.start(i)
    agents.settle(NAMES)
    assert agents.ask("p2", "write chat before 1", "wrote")["ok"]
    agents.kill("p2")
    taken = agents.wait(lambda e: e["event"] == "takeover", 20, "takeover")
    agents.start(2)
    deadline = time.monotonic() + 15
    while agents.summary("p2", "chat")["owner"] != taken["peer"]:
        assert time.monotonic() < deadline, "the restarted node never learned the new owner"
        time.sleep(0.2)
    wrote = agents.ask("p2", "write chat stale 0", "wrote")
    assert not wrote["ok"] and wrote["error"] == "Fenced"
    agents.drain(1.0)
    # It never claimed anything back.
    assert not [e for e in agents.of("owner", owner="p2") if e["epoch"] > 1]
    views = agents.converged(NAMES, "chat")
    assert views[0]["owner"] == taken["peer"] and "stale" not in views[0]["summary"]["messages"]


def test_graceful_leave_hands_over_with_no_dead(agents):
    for i in range(3):
        agents.start(i)
    agents.settle(NAMES)
    assert agents.ask("p2", "write chat hello 2", "wrote")["ok"]
    peer = agents.peers.pop("p2")
    os.kill(peer.proc.pid, signal.SIGTERM)
    assert peer.proc.wait(timeout=15) == 0
    peer.stop()
    taken = agents.wait(lambda e: e["event"] == "takeover", 10, "hand-off")
    agents.wait(
        lambda e: e["event"] == "member" and e["node"] == "p2" and e["state"] == "left",
        10,
        "p2 left",
    )
    agents.drain(2.0)
    assert not agents.of("member", node="p2", state="dead")
    assert [t["peer"] for t in agents.of("takeover")] == [taken["peer"]]
    assert agents.converged(["p0", "p1"], "chat")[0]["owner"] == taken["peer"]


def test_partition_with_the_availability_policy_both_sides_act_then_one_owner(agents):
    for i in range(3):
        agents.start(i, "--split-brain", "availability")
    agents.settle(NAMES)
    assert agents.ask("p0", "write busy first 1", "wrote")["ok"]
    agents.converged(NAMES, "busy")
    agents.net.partition([0, 1], [2])
    # The lone side takes over too: availability first, fencing after the heal.
    agents.wait(
        lambda e: e["event"] == "takeover" and e["peer"] == "p2" and e["session"] == "busy",
        20,
        "minority takeover",
    )
    agents.net.heal()
    agents.wait(
        lambda e: e["event"] == "fenced" and e["session"] == "session/busy",
        20,
        "one side fenced",
    )
    views = agents.converged(NAMES, "busy")
    winner = views[0]["owner"]  # the one owner every peer agrees on (converged above)
    # Usually p2: its availability claim (epoch 2) beats p0's epoch 1. A claim by a member
    # p1 still holds dead now counts as a sign of life (gossip.failover holds it for
    # catchup_timeout), which removed the extra epoch-3 claim in the simulator; on real
    # hosts the timing can still differ, so what is asserted is the promise: one owner, at
    # the highest epoch, and every other claimant fenced.
    for loser in sorted({"p0", "p2"} - {winner}):
        wrote = agents.ask(loser, "write busy late 0", "wrote")
        assert not wrote["ok"] and wrote["error"] == "Fenced", (loser, wrote)
