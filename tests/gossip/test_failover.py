"""Tests of gossip.failover: takeover plans, split brain, hand-off, standby and fencing."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_types.docs import new_doc
from crdt_types.errors import InvalidValue, LocalError
from crdt_types.ownership import Claim, OwnershipTable
from crdt_types.vv import VersionVector
from gossip.events import OwnerChanged, StandbyAssigned, TakeoverPlanned, WorkloadFenced
from gossip.failover import (
    FailoverPolicy,
    FailoverState,
    FailoverView,
    MemberView,
    coverage_target,
    fenced,
    member_views,
    next_deadline,
    owner_changes,
    plan_handoff,
    plan_takeovers,
    quorum_ok,
    standby_changes,
    standbys,
)
from gossip.messages import ALIVE, DEAD, LEFT, MEMBER_STATES, SUSPECT
from gossip.quorum import AVAILABILITY, MAJORITY
from gossip.successor import rank, standby

OWNER_CLIENT = 7  # the dead owner's pycrdt client id in every vector below
# Unless a test says otherwise, every member up was heard after every failure and
# answered a request sent after it, and no dead or left member was heard after it went down.
HEARD = 100.0


def _default_heard(state: str) -> float | None:
    return HEARD if state in (ALIVE, SUSPECT) else None


STAGGER = 0.25
CATCHUP = 2.0


def vv(clock: int) -> VersionVector:
    """A durable vector holding the owner's first `clock` operations."""
    return VersionVector.from_dict({OWNER_CLIENT: clock})


def view(
    me: str,
    states: dict[str, str],
    claims=(),
    durable: dict[tuple[str, str], VersionVector] | None = None,
    *,
    since: dict[str, float] | None = None,
    unready=(),
    stable=None,
    policy: FailoverPolicy | None = None,
    heard: dict[str, float | None] | None = None,
    answered: dict[str, float | None] | None = None,
) -> FailoverView:
    since = since or {}
    heard = heard or {}
    answered = answered or {}
    members = {
        n: MemberView(
            n,
            s,
            since.get(n, 0.0),
            n not in unready,
            heard.get(n, _default_heard(s)),
            answered.get(n, _default_heard(s)),
        )
        for n, s in states.items()
    }
    table = dict(durable or {})
    return FailoverView(
        me=me,
        members=members,
        claims=tuple(claims),
        durable=lambda node, workload: table.get((node, workload)),
        stable=frozenset(states) if stable is None else frozenset(stable),
        policy=policy or FailoverPolicy(stagger=STAGGER, catchup_timeout=CATCHUP),
    )


def workloads_where(owner: str, nodes: list[str], want_first: str, n: int = 1) -> list[str]:
    """Workload ids whose rendezvous ranking over `nodes` minus the owner starts with `want_first`."""
    out = []
    for i in range(10_000):
        w = f"session/{i}"
        if rank(w, [x for x in nodes if x != owner])[0] == want_first:
            out.append(w)
            if len(out) == n:
                return out
    raise AssertionError("no such workload in 10k tries")


# --- every peer decides alike --------------------------------------------------------


@st.composite
def meshes(draw):
    n = draw(st.integers(2, 9))
    nodes = [f"n{i}" for i in range(n)]
    states = {x: draw(st.sampled_from(MEMBER_STATES)) for x in nodes}
    owner = draw(st.sampled_from(nodes))
    states[owner] = DEAD
    unready = {x for x in nodes if draw(st.booleans()) and draw(st.booleans())}
    clocks = {x: draw(st.integers(0, 4)) for x in nodes}
    workloads = [f"session/{i}" for i in range(draw(st.integers(1, 4)))]
    epochs = [draw(st.integers(1, 50)) for _ in workloads]
    now = draw(st.floats(0.0, 5.0))
    policy = draw(st.sampled_from([MAJORITY, AVAILABILITY]))
    return nodes, states, owner, unready, clocks, workloads, epochs, now, policy


def _mesh_view(me, nodes, states, owner, unready, clocks, workloads, epochs, policy, seed):
    order = nodes[:]
    random.Random(seed).shuffle(order)  # each peer lists members in its own order
    durable = {(x, w): vv(clocks[x]) for x in nodes for w in workloads}
    claims = [Claim(w, owner, e) for w, e in zip(workloads, epochs, strict=True)]
    random.Random(seed + 1).shuffle(claims)
    return view(
        me,
        {x: states[x] for x in order},
        claims,
        durable,
        since={owner: 0.0},
        unready=unready,
        stable=nodes,
        policy=FailoverPolicy(split_brain=policy, stagger=STAGGER, catchup_timeout=CATCHUP),
    )


def _decisions(plans):
    return sorted((t.workload, t.successor, t.reason, t.not_before, t.epoch) for t in plans)


@settings(max_examples=300, deadline=None)
@given(mesh=meshes(), seed=st.integers(0, 2**32))
def test_every_live_peer_plans_the_same_successor(mesh, seed):
    nodes, states, owner, unready, clocks, workloads, epochs, now, policy = mesh
    # Peers that share one view of the mesh; a node always sees itself alive.
    peers = [x for x in nodes if states[x] == ALIVE]
    results = []
    for i, me in enumerate(peers):
        v = _mesh_view(
            me, nodes, states, owner, unready, clocks, workloads, epochs, policy, seed + i
        )
        results.append(_decisions(plan_takeovers(now, v)))
    assert all(r == results[0] for r in results), (seed, mesh)


@settings(max_examples=300, deadline=None)
@given(mesh=meshes(), seed=st.integers(0, 2**32))
def test_successor_and_claimants_are_alive_ready_and_not_the_owner(mesh, seed):
    nodes, states, owner, unready, clocks, workloads, epochs, now, policy = mesh
    for me in [x for x in nodes if states[x] == ALIVE]:
        v = _mesh_view(me, nodes, states, owner, unready, clocks, workloads, epochs, policy, seed)
        for t in plan_takeovers(now, v):
            assert t.epoch == epochs[workloads.index(t.workload)] + 1
            for who in [t.successor] + ([me] if t.my_slot is not None else []):
                if who is None:
                    continue
                assert who != owner, (seed, mesh)
                assert states[who] == ALIVE and who not in unready, (seed, mesh, t)
            if t.reason == "caught_up" and t.my_slot is not None:
                # This node claims only if it holds everything any live member reported.
                assert clocks[me] == max(
                    clocks[x] for x in nodes if x != owner and states[x] in (ALIVE, SUSPECT)
                ), (seed, mesh, t)
            if t.reason == "caught_up":
                # Nobody who is behind the target is ever the successor while caught up.
                assert clocks[t.successor] == max(
                    clocks[x] for x in nodes if x != owner and states[x] in (ALIVE, SUSPECT)
                )


# --- successor choice ----------------------------------------------------------------


def test_a_behind_replica_is_not_chosen_while_a_caught_up_one_exists():
    nodes = ["a", "b", "c", "d"]
    # b ranks first for these workloads, but b is behind and knows it.
    ws = workloads_where("a", nodes, "b", n=3)
    claims = [Claim(w, "a", 3) for w in ws]
    durable = {}
    for w in ws:
        durable |= {("b", w): vv(5), ("c", w): vv(9), ("d", w): vv(9)}
    states = {"a": DEAD, "b": ALIVE, "c": ALIVE, "d": ALIVE}
    for me in "bcd":
        for now in (0.0, 0.5, 10.0):
            for t in plan_takeovers(now, view(me, states, claims, durable)):
                assert t.reason == "caught_up"
                assert t.successor in ("c", "d") and t.successor == rank(t.workload, "cd")[0]
                assert t.target == vv(9)
                if me == "b":
                    assert t.my_slot is None and not t.claim_due(now)
    # The successor's slot is its place in the full ranking: b's slot is left unused.
    t = plan_takeovers(0.0, view("c", states, claims[:1], durable))[0]
    assert t.not_before == rank(t.workload, "bcd").index(t.successor) * STAGGER


def test_the_top_ranked_caught_up_member_claims_at_once():
    nodes = ["a", "b", "c"]
    w = workloads_where("a", nodes, "b")[0]
    states = {"a": DEAD, "b": ALIVE, "c": ALIVE}
    durable = {("b", w): vv(4), ("c", w): vv(4)}
    plans = plan_takeovers(1.0, view("b", states, [Claim(w, "a", 1)], durable, since={"a": 1.0}))
    assert [(t.successor, t.epoch, t.my_slot) for t in plans] == [("b", 2, 1.0)]
    assert plans[0].claim_due(1.0)
    assert plans[0].event() == TakeoverPlanned(w, "a", "b", 2, "caught_up")
    # c is the backup: it claims one stagger later if b's claim has not arrived.
    c_plan = plan_takeovers(1.0, view("c", states, [Claim(w, "a", 1)], durable, since={"a": 1.0}))
    assert c_plan[0].successor == "b" and c_plan[0].my_slot == 1.0 + STAGGER
    assert not c_plan[0].claim_due(1.2) and c_plan[0].claim_due(1.25)
    assert next_deadline(1.0, c_plan) == 1.25


def test_stale_reports_stagger_claims_instead_of_colliding():
    # b and c both hold everything, but each last heard an old vector from the other.
    nodes = ["a", "b", "c"]
    w = workloads_where("a", nodes, "b")[0]
    states = {"a": DEAD, "b": ALIVE, "c": ALIVE}
    b_view = view("b", states, [Claim(w, "a", 1)], {("b", w): vv(9), ("c", w): vv(2)})
    c_view = view("c", states, [Claim(w, "a", 1)], {("b", w): vv(2), ("c", w): vv(9)})
    (tb,) = plan_takeovers(0.0, b_view)
    (tc,) = plan_takeovers(0.0, c_view)
    assert tb.successor == "b" and tb.my_slot == 0.0
    # c thinks it is the only one caught up, yet it waits for b's earlier slot.
    assert tc.successor == "c" and tc.my_slot == STAGGER
    assert tb.my_slot < tc.my_slot


def test_waits_for_catch_up_then_falls_back_to_the_most_caught_up():
    nodes = ["a", "b", "c", "d", "e"]
    w = workloads_where("a", nodes, "b")[0]
    claims = [Claim(w, "a", 1)]
    # d alone holds the newest acknowledged write, and d is suspect.
    states = {"a": DEAD, "b": ALIVE, "c": ALIVE, "d": SUSPECT, "e": ALIVE}
    durable = {("b", w): vv(3), ("c", w): vv(6), ("d", w): vv(9), ("e", w): vv(2)}
    (t,) = plan_takeovers(0.5, view("c", states, claims, durable))
    assert (t.successor, t.reason, t.not_before, t.my_slot) == (None, "waiting", CATCHUP, None)
    assert t.target == vv(9)
    assert next_deadline(0.5, [t]) == CATCHUP
    # d refutes in time: it is alive and caught up, so it is the one.
    alive = dict(states, d=ALIVE)
    (t,) = plan_takeovers(1.0, view("c", alive, claims, durable))
    assert (t.successor, t.reason) == ("d", "caught_up")
    # d does not come back: after the wait, c (ahead of b and e) takes it, never b or e.
    for me in "bce":
        (t,) = plan_takeovers(CATCHUP, view(me, states, claims, durable))
        assert (t.successor, t.reason) == ("c", "fallback")
        assert (t.my_slot is not None) == (me == "c")
        if me == "c":
            assert t.my_slot == CATCHUP + rank(w, "bce").index("c") * STAGGER


def test_a_replica_that_catches_up_becomes_eligible():
    nodes = ["a", "b", "c"]
    w = workloads_where("a", nodes, "b")[0]
    states = {"a": DEAD, "b": ALIVE, "c": ALIVE}
    behind = {("b", w): vv(3), ("c", w): vv(9)}
    (t,) = plan_takeovers(0.0, view("b", states, [Claim(w, "a", 1)], behind))
    assert t.successor == "c" and t.my_slot is None
    caught_up = {("b", w): vv(9), ("c", w): vv(9)}
    (t,) = plan_takeovers(0.0, view("b", states, [Claim(w, "a", 1)], caught_up))
    assert t.successor == "b" and t.my_slot == 0.0


def test_durable_vectors_may_be_state_vector_bytes():
    w = "session/x"
    states = {"a": DEAD, "b": ALIVE, "c": ALIVE}  # c reported nothing: it covers nothing
    v = view("b", states, [Claim(w, "a", 1)])
    raw = vv(4).to_state_vector()
    v = FailoverView(
        me="b",
        members=v.members,
        claims=v.claims,
        durable=lambda node, workload: raw if node == "b" else None,
        stable=v.stable,
    )
    assert coverage_target(v, w, "a") == vv(4)
    (t,) = plan_takeovers(0.0, v)
    assert t.successor == "b"


def test_nothing_to_do_when_no_member_can_take_over():
    states = {"a": DEAD, "b": SUSPECT, "c": ALIVE}
    policy = FailoverPolicy(split_brain=AVAILABILITY)
    (t,) = plan_takeovers(
        0.0, view("c", states, [Claim("w", "a", 1)], unready={"c"}, policy=policy)
    )
    assert (t.successor, t.reason, t.my_slot, t.event()) == (None, "no_candidate", None, None)
    assert next_deadline(0.0, [t]) == math.inf


# --- which owners count as failed ------------------------------------------------------


def test_only_dead_owners_are_taken_over():
    states = {"a": SUSPECT, "b": ALIVE, "c": ALIVE, "d": DEAD}
    claims = [Claim("w1", "a", 1), Claim("w2", "b", 1), Claim("w3", "d", 1)]
    plans = plan_takeovers(0.0, view("b", states, claims))
    assert [t.workload for t in plans] == ["w3"]


def test_a_left_owner_is_handed_over_not_taken_over_until_orphaned():
    states = {"a": LEFT, "b": ALIVE, "c": ALIVE}
    claims = [Claim("w", "a", 4)]
    policy = FailoverPolicy(orphan_after=5.0, stagger=STAGGER)
    assert plan_takeovers(14.9, view("b", states, claims, since={"a": 10.0}, policy=policy)) == []
    (t,) = plan_takeovers(15.0, view("b", states, claims, since={"a": 10.0}, policy=policy))
    assert t.reason == "caught_up" and t.epoch == 5
    assert t.not_before == 15.0 + rank("w", "bc").index(t.successor) * STAGGER


def test_owner_unknown_to_us_is_not_assumed_dead():
    # A node that just started knows nobody yet; it must not grab every session.
    plans = plan_takeovers(0.0, view("b", {"b": ALIVE}, [Claim("w", "a", 1)]))
    assert plans == []


def test_an_old_owner_restarting_plans_no_reclaim():
    # a owned w at 1, died, b took over at 2; a restarts (fresh membership, b alive).
    after = [Claim("w", "b", 2), Claim("v", "a", 1)]
    states = {"a": ALIVE, "b": ALIVE, "c": ALIVE}
    assert plan_takeovers(0.0, view("a", states, after)) == []
    # Even from its own stale table, saying it still owns w, and with others dead, it
    # plans nothing for itself: it follows the table once the merge arrives.
    stale = [Claim("w", "a", 1)]
    assert plan_takeovers(0.0, view("a", {"a": ALIVE, "b": DEAD}, stale)) == []
    assert fenced("a", {}, after) == []
    assert fenced("a", {"w": 1}, after) == [WorkloadFenced("w", "b", 2, 1)]


# --- split brain ---------------------------------------------------------------------


def _side_plans(me, side, other, claims, policy=MAJORITY, stable=None):
    states = {n: ALIVE for n in side} | {n: DEAD for n in other}
    v = view(
        me,
        states,
        claims,
        stable=stable or sorted(side + other),
        policy=FailoverPolicy(split_brain=policy, stagger=STAGGER),
    )
    return plan_takeovers(10.0, v)


def _acting(plans):
    return [t for t in plans if t.successor is not None]


@pytest.mark.parametrize(
    ("side", "other"),
    [
        (["a", "b", "c"], ["d", "e"]),  # 5 nodes, 3 | 2
        (["a", "b"], ["c"]),  # 3 nodes, 2 | 1
        (["b", "c"], ["a"]),
        (["a"], ["b"]),  # 2 nodes, tie: the lowest id proceeds
    ],
)
@pytest.mark.parametrize("policy", [MAJORITY, AVAILABILITY])
def test_only_the_majority_side_takes_over(side, other, policy):
    claims = [Claim(f"session/{n}", n, 1) for n in side + other]
    for me in side:
        plans = _side_plans(me, side, other, claims, policy)
        assert sorted(t.previous_owner for t in _acting(plans)) == sorted(other)
    for me in other:
        plans = _side_plans(me, other, side, claims, policy)
        if policy == MAJORITY:
            assert _acting(plans) == []
            assert {t.reason for t in plans} == {"no_quorum"}
            assert len(plans) == len(side)
        else:
            # Availability: the minority side takes over as well.
            assert sorted(t.previous_owner for t in _acting(plans)) == sorted(side)


def test_two_node_mesh_exactly_one_side_proceeds():
    claims = [Claim("wa", "a", 1), Claim("wb", "b", 1)]
    a_side = _acting(_side_plans("a", ["a"], ["b"], claims))
    b_side = _acting(_side_plans("b", ["b"], ["a"], claims))
    assert [t.workload for t in a_side] == ["wb"] and b_side == []
    # When b really died, a fails over alone; had a died, b would wait (cannot tell).
    assert a_side[0].successor == "a" and a_side[0].claim_due(10.0)


def test_suspects_do_not_count_towards_quorum():
    states = {"a": ALIVE, "b": SUSPECT, "c": SUSPECT, "d": DEAD, "e": DEAD}
    v = view("a", states, [Claim("w", "d", 1)], stable="abcde")
    assert not quorum_ok(v, 0.0)
    assert [t.reason for t in plan_takeovers(0.0, v)] == ["no_quorum"]


def test_a_member_that_has_not_answered_since_the_failure_does_not_make_a_quorum():
    # 3 nodes, partition {a, b} | {c}: c declared a dead at 5.0 but has not probed b yet.
    states = {"a": DEAD, "b": ALIVE, "c": ALIVE}
    claims = [Claim("w", "a", 1)]
    stale = view("c", states, claims, since={"a": 5.0}, answered={"a": 4.0, "b": 4.1})
    assert not quorum_ok(stale, 5.0)
    assert [t.reason for t in plan_takeovers(5.5, stale)] == ["no_quorum"]
    # Had a really crashed, b would answer c's request sent after the verdict: c may act.
    fresh = view("c", states, claims, since={"a": 5.0}, answered={"a": 4.0, "b": 5.1})
    assert quorum_ok(fresh, 5.0)
    assert [t.reason for t in plan_takeovers(5.5, fresh)] == ["caught_up"]
    never = view("c", states, claims, since={"a": 5.0}, answered={"a": 4.0, "b": None})
    assert not quorum_ok(never, 5.0)
    # The availability policy does not ask for evidence.
    avail = FailoverPolicy(split_brain=AVAILABILITY)
    stale_avail = view("c", states, claims, since={"a": 5.0}, answered={"b": 4.1}, policy=avail)
    assert quorum_ok(stale_avail, 5.0)


def test_an_owner_heard_after_its_death_is_given_time_to_refute():
    # A healed partition: the "dead" owner's frames arrive again before its refutation.
    states = {"a": DEAD, "b": ALIVE, "c": ALIVE}
    claims = [Claim("w", "a", 1)]
    v = view("b", states, claims, since={"a": 5.0}, heard={"a": 6.0})
    (t,) = plan_takeovers(6.5, v)
    assert (t.reason, t.successor, t.my_slot, t.not_before) == (
        "owner_heard",
        None,
        None,
        6.0 + CATCHUP,
    )
    assert next_deadline(6.5, [t]) == 6.0 + CATCHUP
    # One late packet from a really dead node does not block the takeover for ever.
    (t,) = plan_takeovers(6.0 + CATCHUP, v)
    assert t.reason == "caught_up"
    # Frames from before the death declaration mean nothing.
    (t,) = plan_takeovers(5.0, view("b", states, claims, since={"a": 5.0}, heard={"a": 4.9}))
    assert t.reason == "caught_up"


def test_a_member_that_was_down_after_the_failure_cannot_vouch_for_it():
    # c's view after a partition {a, b} | {c} healed: a (the owner) is still listed dead
    # (its refutation has not arrived), b is alive again since 12.0 and answered: b was
    # across the partition when a "died" at 5.0, so it does not count.
    states = {"a": DEAD, "b": ALIVE, "c": ALIVE}
    claims = [Claim("w", "a", 1)]
    v = view("c", states, claims, since={"a": 5.0, "b": 12.0, "c": 0.0}, answered={"b": 12.1})
    assert not quorum_ok(v, 5.0, "a")
    assert [t.reason for t in plan_takeovers(12.2, v)] == ["no_quorum"]
    # A member up since before the failure and answering after it counts.
    v = view("c", states, claims, since={"a": 5.0, "b": 1.0, "c": 0.0}, answered={"b": 5.2})
    assert quorum_ok(v, 5.0, "a")
    # Once this side adopted a stable set without the owner (under quorum, at 7.0),
    # members up since that adoption vouch for it.
    v = view("c", states, claims, since={"a": 5.0, "b": 6.0, "c": 0.0}, answered={"b": 7.5})
    assert not quorum_ok(v, 5.0, "a")
    adopted = FailoverView(v.me, v.members, v.claims, v.durable, frozenset("bc"), v.policy, 7.0)
    assert quorum_ok(adopted, 5.0, "a")
    assert [t.reason for t in plan_takeovers(8.0, adopted)] == ["caught_up"]


def test_no_stable_membership_yet_means_no_quorum_in_majority_mode():
    states = {"a": ALIVE, "b": DEAD}
    v = view("a", states, [Claim("w", "b", 1)])
    v = FailoverView(v.me, v.members, v.claims, v.durable, None, v.policy)
    assert not quorum_ok(v, 0.0)
    assert [t.reason for t in plan_takeovers(0.0, v)] == ["no_quorum"]


# --- ownership table merge and fencing ----------------------------------------------


def _sync(a: OwnershipTable, b: OwnershipTable) -> None:
    b.doc.apply_update(a.doc.get_update(b.doc.get_state()))
    a.doc.apply_update(b.doc.get_update(a.doc.get_state()))


@pytest.mark.parametrize("seed", range(6))
def test_concurrent_claims_from_two_sides_merge_to_one_owner_and_fence_the_loser(seed):
    rng = random.Random(seed)
    left = OwnershipTable(new_doc(rng=rng))
    right = OwnershipTable(new_doc(rng=rng))
    left.claim("w", "e", 1)
    left.claim("v", "a", 1)
    _sync(left, right)
    # Availability policy, partition {a, b} | {d, e}: both sides take over the other's.
    epochs = (rng.randint(2, 4), rng.randint(2, 4))
    left.claim("w", "a", epochs[0])  # a takes e's session on the left
    right.claim("w", "d", epochs[1])  # d takes it on the right
    right.claim("v", "e", 2)  # e takes a's session on the right
    beliefs = {"a": {"w": epochs[0], "v": 1}, "d": {"w": epochs[1]}, "e": {"v": 2}}
    _sync(left, right)
    assert left.claims() == right.claims()
    winner = left.owner_of("w")
    expected = max(("a", epochs[0]), ("d", epochs[1]), key=lambda x: (x[1], x[0]))
    assert (winner.owner, winner.epoch) == expected, seed
    loser = "d" if winner.owner == "a" else "a"
    claims = left.claims()
    assert fenced(loser, beliefs[loser], claims) == (
        [WorkloadFenced("v", "e", 2, 1)] if loser == "a" else []
    ) + [WorkloadFenced("w", winner.owner, winner.epoch, beliefs[loser]["w"])]
    assert fenced(winner.owner, {"w": winner.epoch}, claims) == []
    assert fenced("e", beliefs["e"], claims) == []


def test_fencing_rules():
    claims = [Claim("w", "b", 5), Claim("x", "a", 7)]
    assert fenced("a", {"w": 4}, claims) == [WorkloadFenced("w", "b", 5, 4)]
    assert fenced("a", {"w": 5}, claims) == [WorkloadFenced("w", "b", 5, 5)]  # a < b
    assert fenced("c", {"w": 5}, claims) == []  # c > b: c's own claim wins
    assert fenced("a", {"x": 3}, claims) == []  # our own, at a higher epoch: still ours
    assert fenced("a", {"gone": 1}, claims) == []


def test_owner_changes_for_routing():
    before = [Claim("w", "a", 1), Claim("x", "b", 1)]
    after = [Claim("w", "c", 2), Claim("x", "b", 1), Claim("y", "b", 1)]
    assert owner_changes(before, after) == [
        OwnerChanged("w", "c", 2, "a"),
        OwnerChanged("y", "b", 1, None),
    ]
    assert owner_changes(after, after) == []


# --- standby and graceful hand-off --------------------------------------------------


def test_standby_is_the_member_that_would_take_over():
    nodes = ["a", "b", "c", "d"]
    states = dict.fromkeys(nodes, ALIVE)
    claims = [Claim(f"session/{i}", "a", 1) for i in range(20)]
    before = standbys(view("a", states, claims))
    for c in claims:
        owner, chosen = before[c.workload]
        assert owner == "a" and chosen == standby(c.workload, "a", nodes)
        # When a dies with everyone caught up, the standby is the successor.
        dead = dict(states, a=DEAD)
        (t,) = plan_takeovers(0.0, view("b", dead, [c]))
        assert t.successor == chosen and t.not_before == 0.0
    # The standby moves when it stops being eligible; the events say where.
    moved = standbys(view("a", states, claims, unready={"b"}))
    events = standby_changes(before, moved)
    assert events and all(isinstance(e, StandbyAssigned) and e.standby != "b" for e in events)
    assert {e.workload for e in events} == {w for w, (_, s) in before.items() if s == "b"}
    assert standby_changes(moved, moved) == []
    # Sessions of dead owners have no standby (they are being taken over).
    assert standbys(view("b", dict(states, a=DEAD), claims)) == {}


def test_graceful_hand_off_claims_for_the_standby():
    nodes = ["a", "b", "c"]
    states = dict.fromkeys(nodes, ALIVE)
    ws = [f"session/{i}" for i in range(8)]
    table = OwnershipTable(new_doc(rng=random.Random(1)))
    for w in ws:
        table.claim(w, "a", 3)
    durable = {(n, w): vv(5) for n in nodes for w in ws}
    plans = plan_handoff("a", view("a", states, table.claims(), durable))
    assert len(plans) == len(ws)
    for t in plans:
        assert t.reason == "handoff" and t.claim_due(0.0)  # a claims for the successor
        assert t.successor == standby(t.workload, "a", nodes)
        table.claim(t.workload, t.successor, t.epoch)
    # After the hand-off a leaves; nobody plans a takeover, a owns nothing.
    left = dict(states, a=LEFT)
    assert plan_takeovers(100.0, view("b", left, table.claims(), durable)) == []
    assert table.workloads_of("a") == []
    assert all(table.epoch_of(w) == 4 for w in ws)


def test_hand_off_prefers_a_caught_up_member_and_flags_a_sync():
    nodes = ["a", "b", "c"]
    w = workloads_where("a", nodes, "b")[0]
    states = dict.fromkeys(nodes, ALIVE)
    durable = {("a", w): vv(9), ("b", w): vv(4), ("c", w): vv(9)}
    (t,) = plan_handoff("a", view("a", states, [Claim(w, "a", 1)], durable))
    assert (t.successor, t.reason, t.target) == ("c", "handoff", vv(9))
    behind = {("a", w): vv(9), ("b", w): vv(4), ("c", w): vv(4)}
    (t,) = plan_handoff("a", view("a", states, [Claim(w, "a", 1)], behind))
    assert (t.successor, t.reason) == ("b", "handoff_sync")
    # Seen from b, the plan is the same, but only the leaving owner makes the claim.
    (tb,) = plan_handoff("a", view("b", states, [Claim(w, "a", 1)], behind))
    assert tb.successor == "b" and tb.my_slot is None
    (t,) = plan_handoff("a", view("a", {"a": ALIVE, "b": SUSPECT}, [Claim(w, "a", 1)]))
    assert (t.successor, t.reason) == (None, "no_candidate")


# --- a small simulated run ----------------------------------------------------------


@pytest.mark.parametrize("stale", [False, True])
@pytest.mark.parametrize("seed", range(15))
def test_simulated_failover_ends_with_exactly_one_owner(seed, stale):
    """Peers plan every 50 ms of simulated time; claims spread with a random delay.

    With fresh reports the owner is always one holding the last acknowledged write. With
    stale ones (each peer knows only a lower bound of the others' vectors) a peer may
    claim while behind, but only if nothing it knew said so; still exactly one owner.
    """
    rng = random.Random(seed)
    nodes = [f"n{i}" for i in range(rng.randint(3, 6))]
    owner, peers = nodes[0], nodes[1:]
    w = f"session/{rng.randrange(10**6)}"
    acked = rng.randint(3, 9)
    # Some survivors hold the last acknowledged write, others are behind; at least one has it.
    clocks = {n: rng.choice([acked, acked - rng.randint(1, 2)]) for n in peers}
    clocks[rng.choice(peers)] = acked
    knows = {
        me: {
            (n, w): vv(clocks[n] if n == me or not stale else rng.randint(0, clocks[n]))
            for n in peers
        }
        for me in peers
    }
    dead_at = {n: 1.0 + rng.uniform(0, 0.05) for n in peers}  # declarations spread a little
    tables = {n: Claim(w, owner, 1) for n in peers}
    in_flight: list[tuple[float, str, Claim]] = []
    claimed: list[str] = []
    t = 0.0
    for _ in range(200):  # 10 s of simulated time
        t = round(t + 0.05, 6)
        for item in [x for x in in_flight if x[0] <= t]:
            in_flight.remove(item)
            _, dest, claim = item
            cur = tables[dest]
            if (claim.epoch, claim.owner) > (cur.epoch, cur.owner):
                tables[dest] = claim
        for me in peers:
            if t < dead_at[me]:
                continue
            states = dict.fromkeys(peers, ALIVE) | {owner: DEAD}
            v = view(me, states, [tables[me]], knows[me], since={owner: dead_at[me]})
            for plan in plan_takeovers(t, v):
                if plan.claim_due(t):
                    claim = Claim(w, me, plan.epoch)
                    tables[me] = claim
                    claimed.append(me)
                    for n in peers:
                        if n != me:
                            in_flight.append((t + rng.uniform(0.01, 0.1), n, claim))
    finals = set(tables.values())
    assert len(finals) == 1, (seed, finals)
    final = finals.pop()
    assert final.epoch == 2 and claimed.count(final.owner) == 1, (seed, claimed)
    known_max = max(v.get(OWNER_CLIENT) for v in knows[final.owner].values())
    assert clocks[final.owner] >= known_max, (seed, final, clocks)
    if not stale:
        assert clocks[final.owner] == acked, (seed, final, clocks)
        assert claimed == [final.owner], seed
    # Everyone that claimed and lost is fenced by the merged table.
    for loser in set(claimed) - {final.owner}:
        assert fenced(loser, {w: 2}, [final]) == [WorkloadFenced(w, final.owner, 2, 2)]


# --- bad input ------------------------------------------------------------------------


def _members():
    return {"a": MemberView("a", ALIVE, 0.0), "b": MemberView("b", DEAD, 0.0)}


@pytest.mark.parametrize(
    "make",
    [
        lambda: MemberView("", ALIVE, 0.0),
        lambda: MemberView("a", "zombie", 0.0),
        lambda: MemberView("a", ALIVE, "now"),
        lambda: MemberView("a", ALIVE, math.nan),
        lambda: MemberView("a", ALIVE, 0.0, ready=1),
        lambda: MemberView("a", ALIVE, 0.0, heard="then"),
        lambda: MemberView("a", ALIVE, 0.0, heard=math.nan),
        lambda: FailoverPolicy(split_brain="yolo"),
        lambda: FailoverPolicy(stagger=-1),
        lambda: FailoverPolicy(catchup_timeout=math.inf),
        lambda: FailoverPolicy(catchup_timeout=math.nan),
        lambda: FailoverPolicy(orphan_after="5"),
        lambda: FailoverPolicy(max_slots=0),
        lambda: FailoverPolicy(max_slots=2.5),
        lambda: FailoverView("c", _members()),  # we are not a member
        lambda: FailoverView("", _members()),
        lambda: FailoverView("a", [MemberView("a", ALIVE, 0.0)]),
        lambda: FailoverView("a", {"a": MemberView("b", ALIVE, 0.0)}),
        lambda: FailoverView("a", {"a": "alive"}),
        lambda: FailoverView("a", _members(), claims=[("w", "b", 1)]),
        lambda: FailoverView("a", _members(), claims=[Claim("w", "b", 1), Claim("w", "a", 2)]),
        lambda: FailoverView("a", _members(), durable={}),
        lambda: FailoverView("a", _members(), stable=frozenset()),
        lambda: FailoverView("a", _members(), stable=frozenset({"a", 3})),
        lambda: FailoverView("a", _members(), policy="majority"),
        lambda: FailoverView("a", _members(), stable_since=math.nan),
        lambda: FailoverView("a", _members(), stable_since="now"),
    ],
)
def test_bad_inputs_are_refused(make):
    with pytest.raises(InvalidValue):
        make()


@pytest.mark.parametrize(
    "durable",
    [
        lambda n, w: b"\xff\xff",  # truncated state vector
        lambda n, w: "not a vector",
        lambda n, w: 5,
    ],
)
def test_a_malformed_durable_vector_is_a_clear_error(durable):
    v = FailoverView(
        "a", _members(), (Claim("w", "b", 1),), durable, frozenset("ab"), FailoverPolicy()
    )
    with pytest.raises(InvalidValue, match="durable"):
        plan_takeovers(0.0, v)


def test_bad_call_arguments_are_refused():
    v = FailoverView("a", _members(), (Claim("w", "b", 1),), stable=frozenset("ab"))
    for now in (math.nan, math.inf, "0", None):
        with pytest.raises(InvalidValue):
            plan_takeovers(now, v)
    with pytest.raises(LocalError, match="not a member"):
        plan_handoff("zz", v)
    with pytest.raises(InvalidValue):
        plan_handoff("", v)
    with pytest.raises(InvalidValue):
        fenced("a", {"w": 0}, [])
    with pytest.raises(InvalidValue):
        fenced("a", {"w": True}, [])
    with pytest.raises(InvalidValue):
        fenced("", {}, [])


def test_member_views_from_membership_records():
    from gossip.config import lan
    from gossip.membership import Membership

    m = Membership("a", "127.0.0.1:1", lan(), random.Random(1))
    views = member_views(m.members.values(), ready=lambda n: n == "a", heard={"a": 2.0})
    assert views == {"a": MemberView("a", ALIVE, 0.0, True, 2.0)}
    assert member_views(m.members.values(), ready=bool) == {"a": MemberView("a", ALIVE, 0.0)}


@pytest.mark.parametrize("policy", [MAJORITY, AVAILABILITY])
def test_partition_3_2_then_heal_leaves_one_owner_per_session(policy):
    """Both sides plan on their own table replica, claim, then the replicas merge."""
    rng = random.Random(5)
    nodes = ["a", "b", "c", "d", "e"]
    sides = (["a", "b", "c"], ["d", "e"])
    base = OwnershipTable(new_doc(rng=rng))
    for i in range(30):
        base.claim(f"session/{i}", nodes[i % 5], 1)
    tables = []
    for side, other in (sides, sides[::-1]):
        table = OwnershipTable(new_doc(rng=rng))
        _sync(base, table)
        states = dict.fromkeys(side, ALIVE) | dict.fromkeys(other, DEAD)
        pol = FailoverPolicy(split_brain=policy, stagger=STAGGER)
        for me in side:  # every member of the side plans; the due ones claim
            for t in plan_takeovers(
                10.0, view(me, states, table.claims(), stable=nodes, policy=pol)
            ):
                if t.claim_due(10.0) and table.epoch_of(t.workload) < t.epoch:
                    table.claim(t.workload, me, t.epoch)
        tables.append(table)
    majority, minority = tables
    # What each node believed it owned on its own side just before the heal.
    beliefs = {n: _owned(majority, n) for n in sides[0]}
    beliefs |= {n: _owned(minority, n) for n in sides[1]}
    _sync(majority, minority)
    assert majority.claims() == minority.claims()
    merged = {c.workload: c for c in majority.claims()}
    originally = {f"session/{i}": nodes[i % 5] for i in range(30)}
    for w, c in merged.items():
        moved = originally[w] in sides[1] or policy == AVAILABILITY
        assert c.epoch == (2 if moved else 1), (w, c)
        # Under the majority rule the minority took nothing: every owner is on the 3 side.
        assert policy == AVAILABILITY or c.owner in sides[0]
    for n in nodes:
        events = fenced(n, beliefs[n], merged.values())
        lost = {w for w, o in originally.items() if o == n and merged[w].owner != n}
        assert {e.workload for e in events} == lost, n
        assert all(e.owner != n and (e.epoch, e.owner) > (e.fenced_epoch, n) for e in events)
        # Exactly the old owners are fenced: d and e under the majority rule, everyone
        # whose session the other side claimed under availability.
        assert bool(lost) == (n in sides[1] or policy == AVAILABILITY)


def _owned(table: OwnershipTable, node: str) -> dict[str, int]:
    return {c.workload: c.epoch for c in table.claims() if c.owner == node}


# --- the state machine ----------------------------------------------------------------


def _members_at(states: dict[str, str], since: float = 0.0) -> dict[str, MemberView]:
    return {
        n: MemberView(n, s, since, True, _default_heard(s), _default_heard(s))
        for n, s in states.items()
    }


def test_two_nodes_in_one_process_rank_from_their_own_memos():
    # Two failover states in one process (as in the simulator) that see different
    # members: each names the standby its own members give, from a memo of its own.
    ws = [f"session/{i}" for i in range(12)]
    claims = [Claim(w, "o", 1) for w in ws]
    seen = {"x": ["o", "x", "p", "q"], "y": ["o", "y", "r", "s", "t"]}
    states = {me: FailoverState(me, settle=1.0) for me in seen}
    assert states["x"].ranker is not states["y"].ranker
    for me, state in states.items():
        d = state.step(0.0, _members_at(dict.fromkeys(seen[me], ALIVE)), claims)
        got = {e.workload: e.standby for e in d.events if isinstance(e, StandbyAssigned)}
        assert got == {w: standby(w, "o", seen[me]) for w in ws}, me
        assert len(state.ranker) == len(ws), me
    # More workloads for y only: x's memo is untouched and still answers x's rankings.
    more = claims + [Claim(f"session/{i}", "o", 1) for i in range(12, 30)]
    states["y"].step(1.0, _members_at(dict.fromkeys(seen["y"], ALIVE)), more)
    assert len(states["y"].ranker) == 30 and len(states["x"].ranker) == len(ws)


def test_state_machine_takes_over_once_and_raises_each_event_once():
    nodes = ["a", "b", "c"]
    w = workloads_where("a", nodes, "b")[0]
    table = OwnershipTable(new_doc(rng=random.Random(3)))
    table.claim(w, "a", 1)
    durable = {(n, w): vv(5) for n in nodes}
    b = FailoverState("b", FailoverPolicy(stagger=STAGGER), settle=1.0)
    up = dict.fromkeys(nodes, ALIVE)

    def step(now, states, since=0.0):
        return b.step(
            now, _members_at(states, since), table.claims(), lambda n, x: durable.get((n, x))
        )

    d = step(0.0, up)
    assert d.claims == [] and d.deadline == 1.0  # the stable set settles at 1.0
    assert d.events == [OwnerChanged(w, "a", 1, None), StandbyAssigned(w, "a", "b")]
    d = step(1.0, up)
    assert d.events == [] and b.membership.stable == set(nodes) and d.deadline == math.inf
    # a dies at 3.0: b is the standby, caught up, first in rank: it claims at once.
    dead = dict(up, a=DEAD)
    d = b.step(
        3.0,
        _members_at(up) | {"a": MemberView("a", DEAD, 3.0)},
        table.claims(),
        lambda n, x: durable.get((n, x)),
    )
    assert [(t.workload, t.epoch) for t in d.claims] == [(w, 2)]
    assert d.events == [TakeoverPlanned(w, "a", "b", 2, "caught_up")]
    for t in d.claims:
        table.claim(t.workload, "b", t.epoch)
    d = step(3.1, dead, since=3.0)
    assert d.claims == [] and d.plans == []
    assert d.events == [OwnerChanged(w, "b", 2, "a"), StandbyAssigned(w, "b", "c")]
    assert b.owned == {w: 2} and not b.is_fenced(w)
    assert step(3.2, dead, since=3.0).events == []


def test_state_machine_fences_the_old_owner_once_and_it_follows_the_table():
    a = FailoverState("a", settle=0.0)
    states = _members_at({"a": ALIVE, "b": ALIVE})
    assert a.step(0.0, states, [Claim("w", "a", 1)]).claims == []
    assert a.owned == {"w": 1}
    # The partition heals: b's claim at epoch 2 arrives in the merged table.
    d = a.step(1.0, states, [Claim("w", "b", 2)])
    assert WorkloadFenced("w", "b", 2, 1) in d.events
    assert a.is_fenced("w") and a.owned == {}
    assert not any(
        isinstance(e, WorkloadFenced) for e in a.step(2.0, states, [Claim("w", "b", 2)]).events
    )
    # b dies later: a may take w over again, as a new claim at epoch 3 (not a reclaim).
    d = a.step(3.0, _members_at({"a": ALIVE, "b": DEAD}, 3.0), [Claim("w", "b", 2)])
    assert [(t.workload, t.epoch) for t in d.claims] == [("w", 3)]
    d = a.step(3.1, _members_at({"a": ALIVE, "b": DEAD}, 3.0), [Claim("w", "a", 3)])
    assert not a.is_fenced("w") and a.owned == {"w": 3}


def test_state_machine_restarted_old_owner_never_reclaims():
    # a restarts from disk with a fresh state machine; the merged table says b owns w.
    a = FailoverState("a", settle=0.0, stable=["a", "b", "c"])
    for t in (0.0, 1.0, 5.0):
        d = a.step(t, _members_at({"a": ALIVE, "b": ALIVE, "c": ALIVE}), [Claim("w", "b", 2)])
        assert d.claims == [] and not any(isinstance(e, WorkloadFenced) for e in d.events)
    assert a.owned == {} and not a.is_fenced("w")


def test_state_machine_waits_for_a_stable_membership_before_acting():
    b = FailoverState("b", settle=2.0)
    members = _members_at({"a": DEAD, "b": ALIVE, "c": ALIVE})
    d = b.step(0.0, members, [Claim("w", "a", 1)])
    assert d.claims == [] and [t.reason for t in d.plans] == ["no_quorum"]
    assert d.deadline == 0.25  # re-checked soon: hearing from members can complete a quorum
    d = b.step(2.0, members, [Claim("w", "a", 1)])
    assert [t.reason for t in d.plans] == ["caught_up"] and d.plans[0].successor in "bc"


def test_state_machine_refuses_bad_input_and_changes_nothing():
    b = FailoverState("b", settle=0.0)
    b.step(0.0, _members_at({"a": ALIVE, "b": ALIVE}), [Claim("w", "b", 1)])
    before = (b.membership.stable, b.owned)
    assert before == ({"a", "b"}, {"w": 1})
    # c joining would settle a new stable set at once; the malformed vector undoes that.
    grown = _members_at({"a": ALIVE, "b": ALIVE, "c": ALIVE, "d": DEAD})
    with pytest.raises(InvalidValue, match="durable"):
        b.step(1.0, grown, [Claim("x", "d", 1)], lambda n, w: b"\xff")
    with pytest.raises(InvalidValue):
        b.step(1.0, {"b": "alive"}, [])
    with pytest.raises(InvalidValue):
        b.step(math.nan, grown, [])
    with pytest.raises(InvalidValue):
        b.step(1.0, grown, [("w", "b", 1)])
    assert (b.membership.stable, b.owned) == before
    # The same step with good input does what the bad one would have.
    b.step(1.0, grown, [Claim("w", "b", 1), Claim("x", "d", 1)])
    assert b.membership.stable == {"a", "b", "c"}
    with pytest.raises(InvalidValue):
        FailoverState("", settle=1.0)
    with pytest.raises(InvalidValue):
        FailoverState("b", policy="majority")
    with pytest.raises(InvalidValue):
        FailoverState("b", settle=-1)


def test_state_machine_hand_off():
    a = FailoverState("a")
    members = _members_at({"a": ALIVE, "b": ALIVE, "c": ALIVE})
    plans = a.handoff(members, [Claim("w", "a", 4), Claim("v", "b", 1)])
    assert [(t.workload, t.successor, t.epoch, t.claim_due(0.0)) for t in plans] == [
        ("w", standby("w", "a", ["b", "c"]), 5, True)
    ]


def _healed_view(heard_majority: float) -> dict[str, MemberView]:
    """e's view: a died at 1.0; b, c, d alive since 0, last heard and answering at `heard_majority`."""
    views = {n: MemberView(n, ALIVE, 0.0, True, heard_majority, heard_majority) for n in "bcd"}
    views["a"] = MemberView("a", DEAD, 1.0, True, 0.5)
    views["e"] = MemberView("e", ALIVE, 0.0, True, None)
    return views


def test_quorum_that_arrives_long_after_the_death_waits_for_a_refutation():
    # Found by `statemesh chaos` (5 hosts, seed 2): the minority of a healed partition
    # heard members of the majority it had never suspected, counted them as fresh
    # evidence for a death it declared alone, and took over the sessions of a live owner
    # before that owner's refutation arrived.
    e = FailoverState("e", FailoverPolicy(catchup_timeout=CATCHUP), settle=0.0)
    up = {n: MemberView(n, ALIVE, 0.0, True, 0.0, 0.0) for n in "abcde"}
    e.step(0.0, up, [Claim("w", "a", 1)])
    assert e.membership.stable == set("abcde")
    d = e.step(1.0, _healed_view(0.5), [Claim("w", "a", 1)])  # cut off: no quorum
    assert [t.reason for t in d.plans] == ["no_quorum"]
    d = e.step(3.0, _healed_view(3.0), [Claim("w", "a", 1)])  # healed: quorum, 2 s late
    assert [t.reason for t in d.plans] == ["late_quorum"] and d.claims == []
    assert d.deadline <= 3.0 + CATCHUP
    # Had a not refuted by then, it is taken over.
    d = e.step(3.0 + CATCHUP, _healed_view(4.9), [Claim("w", "a", 1)])
    assert [t.reason for t in d.plans] != ["late_quorum"]


def test_quorum_within_a_round_trip_of_the_death_acts_at_once():
    e = FailoverState("e", FailoverPolicy(catchup_timeout=CATCHUP), settle=0.0)
    up = {n: MemberView(n, ALIVE, 0.0, True, 0.0, 0.0) for n in "abcde"}
    e.step(0.0, up, [Claim("w", "a", 1)])
    d = e.step(1.05, _healed_view(1.05), [Claim("w", "a", 1)])
    assert [t.reason for t in d.plans] not in (["late_quorum"], ["no_quorum"])


def test_a_verdict_formed_while_cut_off_waits_for_a_refutation_however_soon_the_cut_heals():
    # Found by `statemesh chaos` (5 hosts, 10 minutes, seed 10): a node that could send
    # but not receive declared the others dead one by one; the last verdict came 0.3 s
    # before the heal, so its quorum was not "late", and it took a live owner's session.
    e = FailoverState("e", FailoverPolicy(catchup_timeout=CATCHUP), settle=0.0)
    up = {n: MemberView(n, ALIVE, 0.0, True, 0.0, 0.0) for n in "abcde"}
    e.step(0.0, up, [Claim("w", "a", 1)])
    cut = {n: MemberView(n, ALIVE, 0.0, True, 1.0, 1.0) for n in "bcd"}  # last heard at 1.0
    cut["a"] = MemberView("a", DEAD, 3.0, True, 1.0)
    cut["e"] = MemberView("e", ALIVE, 0.0, True, None)
    d = e.step(3.0, cut, [Claim("w", "a", 1)])
    assert [t.reason for t in d.plans] == ["no_quorum"]
    healed = {**cut, **{n: MemberView(n, ALIVE, 0.0, True, 3.3, 3.3) for n in "bcd"}}
    d = e.step(3.3, healed, [Claim("w", "a", 1)])
    assert [t.reason for t in d.plans] == ["late_quorum"] and d.claims == []
    d = e.step(3.3 + CATCHUP, healed, [Claim("w", "a", 1)])
    assert [t.reason for t in d.plans] != ["late_quorum"]


def test_members_heard_but_not_answering_are_no_quorum_one_way_cut():
    # Issue 8 (`statemesh chaos`, 5 hosts, seed 10): e's outbound traffic is cut. It
    # still hears everyone, its probes get no answer, it declares a dead; the members it
    # merely heard after the verdict made it a quorum, and it took a live owner's session.
    states = {"a": DEAD, "b": ALIVE, "c": ALIVE, "d": ALIVE, "e": ALIVE}
    claims = [Claim("w", "a", 1)]
    heard_all = dict.fromkeys("bcd", 5.5)
    cut = view(
        "e", states, claims, since={"a": 5.0}, heard=heard_all, answered=dict.fromkeys("bcd")
    )
    assert not quorum_ok(cut, 5.0, "a")
    assert [t.reason for t in plan_takeovers(6.0, cut)] == ["no_quorum"]
    # Answers to requests sent before the verdict prove nothing about after it.
    stale = view(
        "e", states, claims, since={"a": 5.0}, heard=heard_all, answered=dict.fromkeys("bcd", 4.9)
    )
    assert [t.reason for t in plan_takeovers(6.0, stale)] == ["no_quorum"]
    # One answer is not a majority of five (e and b); two are.
    one = view(
        "e",
        states,
        claims,
        since={"a": 5.0},
        heard=heard_all,
        answered={"b": 5.1, "c": None, "d": None},
    )
    assert [t.reason for t in plan_takeovers(6.0, one)] == ["no_quorum"]
    two = view(
        "e",
        states,
        claims,
        since={"a": 5.0},
        heard=heard_all,
        answered={"b": 5.1, "c": 5.2, "d": None},
    )
    assert quorum_ok(two, 5.0, "a")
    assert [t.reason for t in plan_takeovers(6.0, two)] == ["caught_up"]


def test_the_stable_set_shrinks_only_on_answers_not_on_frames_heard():
    # e, cut off one way, sees a, b die in turn (its own probes fail) and still hears
    # c and d: the old evidence let it adopt {c, d, e} and hold a majority of that.
    e = FailoverState("e", settle=1.0)
    up = {n: MemberView(n, ALIVE, 0.0, True, 0.0, 0.0) for n in "abcde"}
    e.step(0.0, up, [])
    e.step(1.0, up, [])
    assert e.membership.stable == set("abcde")
    cut = dict(up)
    cut["a"] = MemberView("a", DEAD, 2.0, True, 1.5, 1.0)
    cut["b"] = MemberView("b", DEAD, 2.0, True, 1.5, 1.0)
    for n in "cd":
        cut[n] = MemberView(n, ALIVE, 0.0, True, 9.0, 1.0)  # heard, never answered since
    for t in (2.0, 3.0, 5.0, 9.0):
        d = e.step(t, cut, [Claim("w", "a", 1)])
        assert d.ask and d.claims == [] and [p.reason for p in d.plans] == ["no_quorum"], t
    assert e.membership.stable == set("abcde")
    # c and d answer requests sent after the change: now the majority is real.
    for n in "cd":
        cut[n] = MemberView(n, ALIVE, 0.0, True, 9.5, 9.5)
    e.step(9.5, cut, [Claim("w", "a", 1)])
    assert e.membership.stable == set("cde")


def test_the_decision_asks_for_evidence_only_while_it_waits_for_some():
    b = FailoverState("b", settle=0.0)
    up = _members_at({"a": ALIVE, "b": ALIVE, "c": ALIVE})
    assert not b.step(0.0, up, [Claim("w", "a", 1)]).ask
    assert not b.step(1.0, up, [Claim("w", "a", 1)]).ask
    avail = FailoverState("b", FailoverPolicy(split_brain=AVAILABILITY), settle=0.0)
    dead = {**up, "a": MemberView("a", DEAD, 2.0), "c": MemberView("c", ALIVE, 0.0, True, 2.5)}
    assert b.step(2.0, dead, [Claim("w", "a", 1)]).ask  # c has not answered since 2.0
    avail.step(0.0, up, [Claim("w", "a", 1)])
    assert not avail.step(2.0, dead, [Claim("w", "a", 1)]).ask


def test_a_claim_by_a_member_held_dead_that_arrives_after_the_verdict_waits_for_it():
    # After a 2|1 partition with the availability policy healed, p2's claim reached p1
    # through p0 while p2 was still dead in p1's view: p1 claimed a third epoch.
    avail = FailoverPolicy(split_brain=AVAILABILITY, catchup_timeout=CATCHUP)
    p1 = FailoverState("p1", avail, settle=0.0)
    up = _members_at({"p0": ALIVE, "p1": ALIVE, "p2": ALIVE})
    p1.step(0.0, up, [Claim("w", "p0", 1)])
    cut = {**up, "p2": MemberView("p2", DEAD, 5.0)}
    assert p1.step(6.0, cut, [Claim("w", "p0", 1)]).plans == []
    # The heal: p2's claim arrives (through p0), p2 is still dead to p1.
    d = p1.step(7.0, cut, [Claim("w", "p2", 2)])
    assert [(t.reason, t.not_before) for t in d.plans] == [("owner_heard", 7.0 + CATCHUP)]
    assert d.claims == [] and d.deadline == 7.0 + CATCHUP
    assert p1.step(7.5, cut, [Claim("w", "p2", 2)]).claims == []
    # Had p2 really died meanwhile, the wait is bounded: p1 takes it over after it.
    d = p1.step(7.0 + CATCHUP, cut, [Claim("w", "p2", 2)])
    assert [(t.workload, t.epoch) for t in d.claims] == [("w", 3)]


def test_a_claim_seen_before_the_verdict_does_not_wait():
    b = FailoverState("b", FailoverPolicy(catchup_timeout=CATCHUP), settle=0.0)
    up = _members_at({"a": ALIVE, "b": ALIVE, "c": ALIVE})
    b.step(0.0, up, [Claim("w", "c", 1)])
    b.step(1.0, up, [Claim("w", "a", 2)])  # a took w over at 1.0, then died at 3.0
    dead = {**up, "a": MemberView("a", DEAD, 3.0)}
    d = b.step(3.0, dead, [Claim("w", "a", 2)])
    assert [t.reason for t in d.plans] == ["caught_up"]
    # Claims read at the first step (a restart) count as old too.
    fresh = FailoverState("b", FailoverPolicy(catchup_timeout=CATCHUP), settle=0.0, stable="abc")
    assert [t.reason for t in fresh.step(3.0, dead, [Claim("w", "a", 2)]).plans] == ["caught_up"]


def test_member_views_carry_the_direct_probe_ack_of_each_record():
    from gossip.config import lan
    from gossip.membership import Membership
    from gossip.messages import Ack, Ping

    m = Membership("a", "127.0.0.1:1", lan(), random.Random(1))
    m.start(0.0, known=[("b", "127.0.0.1:2")])
    m.take()
    m.tick(1.0)
    [ping] = [msg for _, msg in m.take()[0] if isinstance(msg, Ping)]
    m.handle(1.01, "127.0.0.1:2", Ack(ping.seq))
    views = member_views(m.members.values(), ready=bool)
    assert views["b"].acked == 1.01 and views["a"].acked is None


def _flooded_members(seed: int, n: int) -> dict[str, MemberView]:
    """a, b, c, d up (d only acked a probe of ours), plus `n` made-up members that never answered."""
    rng = random.Random(seed)
    members = _members_at({"a": ALIVE, "b": ALIVE, "c": ALIVE})
    members["d"] = MemberView("d", ALIVE, 2.0, True, 2.1, None, 2.1)
    for _ in range(n):
        fake = f"made-up-{rng.getrandbits(48):012x}"
        members[fake] = MemberView(fake, ALIVE, 2.0, True, None, None, None)
    return members


@pytest.mark.parametrize("seed", [1, 2])
def test_state_machine_admits_a_member_that_acked_a_probe_and_no_made_up_one(seed):
    # A key holder named 2,048 made-up members (alive until each is probed); d is real
    # and answered one of our probes. Only d joins the stable set, and when b dies the
    # decision is the one a mesh without the flood makes, at the same moment.
    claims = [Claim("w", "b", 1)]
    plans = {}
    for n in (0, 2048):
        a = FailoverState("a", FailoverPolicy(stagger=STAGGER), settle=1.0, stable="abc")
        members = _flooded_members(seed, n)
        for t in (2.0, 2.5, 3.0):
            a.step(t, members, claims)
        assert a.membership.stable == set("abcd"), (seed, n)
        members["b"] = MemberView("b", DEAD, 5.0)
        d = a.step(5.0, members, claims)
        plans[n] = [(t.reason, t.successor, t.not_before) for t in d.plans]
        assert plans[n][0][0] == "caught_up", (seed, n, plans[n])
    assert plans[2048] == plans[0], seed
