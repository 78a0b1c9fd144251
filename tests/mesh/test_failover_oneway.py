"""Failover under a one-way cut between real processes on namespace hosts (issue 8).

Three agent peers on network-namespace hosts (as in `test_failover_netns`, whose `Agents`
driver this reuses). A one-way nftables cut leaves p1 able to receive but not to send;
the owner's frames to p1 are cut too, so nothing from the owner holds p1 back. p1's probes
go unanswered and it declares the owner dead. Counting members it merely *heard* as its
quorum, it used to take the live owner's session over and fence the owner on heal
(`statemesh chaos`, 5 hosts, seed 10). Quorum evidence is now an answer to a request p1
sent: nobody can answer p1, so it waits. (With three peers the former rule mostly held
too, since p1 suspects both others within two probe periods; the simulator test
`tests/gossip/test_failover_sim.py` reproduces the former failure deterministically.
This one guards the real path: nftables, sockets, SIGKILL.) Every wait is bounded; the harness kills every
process and deletes every namespace, also on failure. Skipped with the reason when not
root or without `ip`/`nft`.
"""

from __future__ import annotations

import os

import pytest

from tests.mesh.test_failover_netns import Agents

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(120)]

HOLD = 10.0  # seconds the cut lasts: many probe periods and suspicion timeouts
HOSTS = 3
NAMES = [f"p{i}" for i in range(HOSTS)]


@pytest.fixture
def agents(host_network_factory, tmp_path, request):
    net = host_network_factory(HOSTS)
    a = Agents(net, tmp_path, f"ow-{os.getpid()}-{request.node.name[-20:]}")
    yield a
    a.close()


def _epochs(agents: Agents, session: str) -> list[tuple[str, str, int]]:
    return [
        (e["peer"], e["owner"], e["epoch"])
        for e in agents.of("owner", session=f"session/{session}")
    ]


def test_a_peer_that_cannot_send_does_not_take_over_and_sigkill_still_fails_over(agents):
    for i in range(HOSTS):
        agents.start(i)
    agents.settle(NAMES)
    assert agents.ask("p0", "write held first 1", "wrote")["ok"]
    agents.converged(NAMES, "held")
    # p1 hears p2 but nobody hears p1, and the owner p0 does not reach it.
    agents.net.partition([1], [0, 2], oneway=True)
    agents.net.partition([0], [1], oneway=True)
    agents.wait(
        lambda e: e["event"] == "member" and e["peer"] == "p0" and e["node"] == "p1"
        and e["state"] == "dead",
        20,
        "p0 declares p1 dead (the cut is in place)",
    )  # fmt: skip
    agents.drain(HOLD)
    assert not agents.of("takeover"), agents.of("takeover")
    assert not agents.of("taken"), agents.of("taken")
    assert not agents.of("fenced"), agents.of("fenced")
    assert all(epoch == 1 for _, _, epoch in _epochs(agents, "held")), _epochs(agents, "held")
    agents.net.heal()
    agents.drain(5.0)  # p1's view of p0 and everyone's of p1 heal; nothing may move
    views = agents.converged(NAMES, "held")
    assert views[0]["owner"] == "p0"
    assert not agents.of("takeover") and not agents.of("fenced"), agents.log[-20:]
    assert all(epoch == 1 for _, _, epoch in _epochs(agents, "held")), _epochs(agents, "held")
    assert agents.ask("p0", "write held after-heal 1", "wrote")["ok"]
    # A real death still fails over: SIGKILL the owner.
    agents.kill("p0")
    taken = agents.wait(
        lambda e: e["event"] == "takeover" and e["session"] == "held", 20, "the takeover"
    )
    assert taken["peer"] in NAMES[1:]
    agents.drain(1.0)
    assert [t["peer"] for t in agents.of("takeover")] == [taken["peer"]]
    views = agents.converged(NAMES[1:], "held")
    assert views[0]["owner"] == taken["peer"]
    assert {"first", "after-heal"} <= set(views[0]["summary"]["messages"])
