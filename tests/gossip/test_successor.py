"""Tests of gossip.successor: rendezvous ranking, successor and standby choice."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_types.errors import InvalidValue
from gossip.successor import Ranker, rank, standby, successor, weight

node_ids = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
node_sets = st.lists(node_ids, min_size=1, max_size=12, unique=True)


def test_weight_is_a_fixed_function_of_its_inputs():
    # Peers running different builds must rank alike: a change to the hash is a protocol
    # change, and this golden value catches it.
    assert weight("session/a", "n1") == weight("session/a", "n1")
    assert weight("session/a", "n1") == GOLDEN
    assert weight("session/a", "n1") != weight("session/a", "n2")
    assert weight("session/a", "n1") != weight("session/b", "n1")


# blake3("statemesh/rendezvous/v1\0" + u32be(9) + "session/a" + u32be(2) + "n1")[:8]
GOLDEN = 12794649956116330832


def test_ids_are_length_prefixed():
    # Without prefixes both pairs would hash the same bytes "abc".
    assert weight("ab", "c") != weight("a", "bc")


@settings(max_examples=200, deadline=None)
@given(nodes=node_sets, workload=node_ids, seed=st.integers(0, 2**32))
def test_every_listing_order_gives_the_same_ranking(nodes, workload, seed):
    shuffled = nodes[:] + nodes[: len(nodes) // 2]  # duplicates too
    random.Random(seed).shuffle(shuffled)
    assert rank(workload, shuffled) == rank(workload, nodes), seed
    by_weight = sorted(nodes, key=lambda n: (weight(workload, n), n), reverse=True)
    assert rank(workload, nodes) == by_weight
    assert successor(workload, shuffled) == successor(workload, nodes) in nodes


@settings(max_examples=200, deadline=None)
@given(nodes=node_sets, workload=node_ids, data=st.data())
def test_removing_a_node_moves_only_its_own_workloads(nodes, workload, data):
    top = successor(workload, nodes)
    gone = data.draw(st.sampled_from(nodes))
    rest = [n for n in nodes if n != gone]
    if gone == top:
        assert successor(workload, rest) == (rank(workload, nodes)[1:2] or [None])[0]
    else:
        assert successor(workload, rest) == top


def test_successor_of_no_candidates_is_none():
    assert successor("w", []) is None
    assert rank("w", []) == []


def test_workloads_spread_evenly():
    nodes = [f"node-{i}" for i in range(5)]
    counts = Counter(successor(f"session/{i}", nodes) for i in range(2000))
    assert set(counts) == set(nodes)
    # Expected 400 each; binomial sd ~18, so 300..500 fails only on a broken hash.
    assert all(300 <= c <= 500 for c in counts.values()), counts


def test_standby_is_the_successor_without_the_owner():
    nodes = ["a", "b", "c", "d"]
    for i in range(50):
        w = f"session/{i}"
        owner = successor(w, nodes)
        s = standby(w, owner, nodes)
        assert s != owner and s in nodes
        # When the owner dies, the standby is exactly who takes over.
        assert successor(w, [n for n in nodes if n != owner]) == s
    assert standby("w", "a", ["a"]) is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: weight("", "n"),
        lambda: weight("w", ""),
        lambda: weight(b"w", "n"),
        lambda: weight("w", None),
        lambda: weight("w", "\ud800"),
        lambda: rank(3, ["a"]),
        lambda: rank("w", ["a", 5]),
        lambda: successor("w", [""]),
        lambda: standby("w", "", ["a"]),
    ],
)
def test_bad_ids_are_refused(call):
    with pytest.raises(InvalidValue):
        call()


def _computed(workload: str, nodes: list[str]) -> list[str]:
    return sorted(set(nodes), key=lambda n: (weight(workload, n), n), reverse=True)


def test_a_remembered_ranking_is_a_fresh_list_equal_to_a_computed_one():
    ranker = Ranker()
    nodes = ["a", "b", "c"]
    first = ranker.rank("session/memo", nodes)
    first.reverse()  # a caller mutating its list must not change later answers
    second = ranker.rank("session/memo", reversed(nodes))
    assert len(ranker) == 1  # the second call was answered from the memo
    assert second == _computed("session/memo", nodes) == rank("session/memo", nodes)
    assert second is not ranker.rank("session/memo", nodes)


def test_the_ranking_memo_stays_bounded():
    ranker = Ranker(max_entries=50)
    for i in range(50 + 10):
        ranker.rank(f"session/{i}", ["a", "b"])
        assert len(ranker) <= 50, i
    # After the memo was cleared the answers are still the computed ones.
    assert ranker.rank("session/1", ["b", "a"]) == _computed("session/1", ["a", "b"])


@settings(max_examples=100, deadline=None)
@given(nodes=node_sets, owner=node_ids, workload=node_ids)
def test_a_ranker_answers_exactly_what_the_functions_answer(nodes, owner, workload):
    ranker = Ranker(max_entries=3)
    for _ in range(2):  # computed, then remembered
        assert ranker.rank(workload, nodes) == rank(workload, nodes)
        assert ranker.successor(workload, nodes) == successor(workload, nodes)
        assert ranker.standby(workload, owner, nodes) == standby(workload, owner, nodes)


def test_two_nodes_in_one_process_keep_their_own_rankings():
    # Two failover states in one process (as in the simulator), with different members:
    # each ranks from its own memo, and filling one never touches the other's.
    a, b = Ranker(max_entries=4), Ranker(max_entries=4)
    members_a, members_b = ["n1", "n2", "n3"], ["n1", "n4", "n5", "n6"]
    got_a = a.rank("session/x", members_a)
    got_b = b.rank("session/x", members_b)
    assert got_a == _computed("session/x", members_a)
    assert got_b == _computed("session/x", members_b)
    assert len(a) == len(b) == 1
    for i in range(10):  # b fills and clears its memo several times over
        b.rank(f"session/{i}", members_b)
    assert len(a) == 1 and a.rank("session/x", members_a) == got_a
    assert len(a) == 1  # answered from a's memo, which b's churn left alone


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8", None])
def test_a_ranker_bound_must_be_a_positive_int(bad):
    with pytest.raises(InvalidValue, match="max_entries"):
        Ranker(max_entries=bad)


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.rank(3, ["a"]),
        lambda r: r.rank("w", ["a", 5]),
        lambda r: r.successor("", ["a"]),
        lambda r: r.standby("w", "", ["a"]),
    ],
)
def test_a_ranker_refuses_bad_ids_and_remembers_nothing(call):
    ranker = Ranker()
    with pytest.raises(InvalidValue):
        call(ranker)
    assert len(ranker) == 0
