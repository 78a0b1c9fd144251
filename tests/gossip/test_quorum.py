"""Tests of gossip.quorum: the majority rule, its tie break, and the stable membership."""

from __future__ import annotations

import math
import random

import pytest

from crdt_types.errors import InvalidValue
from gossip.messages import ALIVE, DEAD, LEFT, SUSPECT, Ack, DocVectors
from gossip.quorum import RoundTrips, StableMembership, has_quorum, visible

FIVE = ["a", "b", "c", "d", "e"]


def states(alive=(), suspect=(), dead=(), left=()):
    out = {n: ALIVE for n in alive}
    out.update({n: SUSPECT for n in suspect})
    out.update({n: DEAD for n in dead})
    out.update({n: LEFT for n in left})
    return out


@pytest.mark.parametrize(
    ("stable", "alive", "expected"),
    [
        (FIVE, ["a", "b", "c"], True),  # 3 of 5
        (FIVE, ["d", "e"], False),  # 2 of 5
        (["a", "b", "c"], ["a", "b"], True),  # 2 of 3
        (["a", "b", "c"], ["c"], False),  # 1 of 3
        (["a", "b"], ["a"], True),  # tie: holds the lowest id
        (["a", "b"], ["b"], False),  # tie: does not
        (["a", "b", "c", "d"], ["a", "d"], True),
        (["a", "b", "c", "d"], ["b", "c"], False),
        (["a", "b", "c"], ["x", "y", "z", "c"], False),  # outsiders do not count
        ([], ["a"], False),
    ],
)
def test_has_quorum(stable, alive, expected):
    assert has_quorum(stable, alive) is expected


def test_either_half_of_an_even_split_but_never_both():
    for n in (2, 4, 6):
        nodes = [f"n{i}" for i in range(n)]
        half = nodes[: n // 2]
        other = nodes[n // 2 :]
        assert has_quorum(nodes, half) != has_quorum(nodes, other)


def fresh(st: dict[str, str], t: float) -> dict[str, float]:
    """Heard from every member listed alive or suspect at `t` (no partition)."""
    return {n: t for n, s in st.items() if s in (ALIVE, SUSPECT)}


def obs(sm: StableMembership, t: float, st: dict[str, str]) -> bool:
    return sm.observe(t, st, fresh(st, t))


def test_no_stable_set_until_the_first_one_settles():
    sm = StableMembership("a", settle=5.0)
    up = states(alive="abc")
    assert sm.stable is None and not sm.has_quorum(up, fresh(up, 0.0), 0.0)
    assert obs(sm, 0.0, up) is False
    assert sm.next_deadline() == 5.0
    assert obs(sm, 4.9, up) is False
    assert obs(sm, 5.0, up) is True
    assert sm.stable == {"a", "b", "c"}
    assert sm.next_deadline() == math.inf


def test_a_change_restarts_the_settle_clock_and_suspects_count_as_up():
    sm = StableMembership("a", settle=2.0, stable="abc")
    obs(sm, 0.0, states(alive="abcd"))
    obs(sm, 1.0, states(alive="abc", suspect="d"))  # suspect is still up: no change
    obs(sm, 1.5, states(alive="abc"))  # d forgotten: the candidate changed
    obs(sm, 2.5, states(alive="abcd"))  # and back: the clock starts again
    assert obs(sm, 4.4, states(alive="abcd")) is False
    assert sm.stable == set("abc")
    assert sm.next_deadline() == 4.5
    assert obs(sm, 4.5, states(alive="abc", suspect="d")) is True
    assert sm.stable == set("abcd")


def _partition(sm: StableMembership, side: str, other: str, start: float) -> None:
    # The other side goes suspect, then dead; nothing from it arrives after `start`.
    for t in range(0, 40):
        st = states(alive=side, suspect=other) if t == 0 else states(alive=side, dead=other)
        heard = {n: start + t for n in side} | {n: start - 0.5 for n in other}
        sm.observe(start + t, st, heard)


def test_a_minority_never_adopts_itself_as_the_stable_set():
    majority = StableMembership("a", settle=5.0, stable=FIVE)
    minority = StableMembership("d", settle=5.0, stable=FIVE)
    _partition(majority, "abc", "de", 0.0)
    _partition(minority, "de", "abc", 0.0)
    assert majority.stable == set("abc")
    assert majority.has_quorum(states(alive="abc"), fresh(states(alive="abc"), 50.0), 40.0)
    assert minority.stable == set(FIVE)
    assert not minority.has_quorum(states(alive="de", dead="abc"), {"e": 50.0}, 40.0)


def test_a_member_listed_alive_but_not_heard_since_the_failure_does_not_count():
    # The minority {d, e} has declared a and b dead but has not probed c yet: c is still
    # listed alive, last heard before the partition began at 3.0.
    sm = StableMembership("d", settle=1.0, stable=FIVE)
    st = states(alive="cde", dead="ab")
    heard = {"c": 2.9, "e": 4.5}
    assert not sm.has_quorum(st, heard, 4.4)
    assert sm.has_quorum(st, heard | {"c": 4.5}, 4.4)  # a real majority: c answered since
    # Nor can the minority shrink its stable set on that stale evidence.
    for t in (4.4, 5.0, 6.0, 9.0):
        sm.observe(t, st, {"c": 2.9, "e": t})
    assert sm.stable == set(FIVE)
    assert sm.next_deadline() == 9.0 + 1.0  # re-checks while evidence is missing


def test_a_shrunk_majority_survives_a_second_failure():
    sm = StableMembership("a", settle=1.0, stable="abc")
    _partition(sm, "ab", "c", 0.0)
    assert sm.stable == set("ab")
    # Now b dies: 1 of 2 with the lowest id still holds.
    assert sm.has_quorum(states(alive="a", dead="bc"), {}, 50.0)
    other = StableMembership("b", settle=1.0, stable="ab")
    assert not other.has_quorum(states(alive="b", dead="a"), {}, 50.0)


def test_a_member_that_left_is_dropped_at_once_even_without_quorum():
    sm = StableMembership("a", settle=100.0, stable=FIVE)
    assert obs(sm, 0.0, states(alive="a", dead="bc", left="de")) is True
    assert sm.stable == set("abc")
    assert not sm.has_quorum(states(alive="a", dead="bc"), {}, 0.0)


def test_restored_stable_set_includes_us_and_gives_a_restarted_minority_no_quorum():
    sm = StableMembership("a", settle=5.0, stable=["b", "c"])
    assert sm.stable == set("abc")
    obs(sm, 0.0, states(alive="a"))
    obs(sm, 10.0, states(alive="a"))
    assert sm.stable == set("abc")  # alone: no quorum to shrink to {a}


@pytest.mark.parametrize(
    "make",
    [
        lambda: StableMembership("", 1.0),
        lambda: StableMembership(None, 1.0),
        lambda: StableMembership("a", -1.0),
        lambda: StableMembership("a", math.inf),
        lambda: StableMembership("a", math.nan),
        lambda: StableMembership("a", "1"),
        lambda: StableMembership("a", True),
        lambda: StableMembership("a", 1.0, stable=[]),
        lambda: StableMembership("a", 1.0, stable=["b", 3]),
    ],
)
def test_bad_construction_is_refused(make):
    with pytest.raises(InvalidValue):
        make()


@pytest.mark.parametrize("bad", [{"b": "zombie"}, {"": ALIVE}, {3: ALIVE}])
def test_bad_states_are_refused_and_change_nothing(bad):
    sm = StableMembership("a", settle=0.0, stable="ab")
    with pytest.raises(InvalidValue):
        sm.observe(1.0, {"a": ALIVE, **bad}, {})
    assert sm.stable == set("ab")


@pytest.mark.parametrize("heard", [{"b": "now"}, {"b": math.nan}, {"b": True}, [("b", 1.0)]])
def test_bad_heard_times_are_refused_and_change_nothing(heard):
    sm = StableMembership("a", settle=0.0, stable="ab")
    with pytest.raises(InvalidValue):
        sm.observe(1.0, {"a": ALIVE, "b": ALIVE, "c": ALIVE}, heard)
    assert sm.stable == set("ab")


def test_visible_counts_us_and_members_alive_throughout_and_heard_since():
    st = states(alive="abcd", suspect="e")
    heard = {"b": 5.0, "c": 4.0, "d": 6.0, "e": 6.0}
    assert visible("a", st, heard, 5.0) == {"a", "b", "d"}  # c is stale, e is suspect
    up_since = {"b": 1.0, "d": 5.5}  # d came back after the failure at 5.0
    assert visible("a", st, heard, 5.0, up_since) == {"a", "b"}
    assert visible("a", {}, {}, 0.0) == {"a"}


def _healed_minority_views():
    """e's view in the minority {b, e} of a healed 2|3 partition; c was held dead by it."""
    during = {"a": SUSPECT, "b": ALIVE, "c": DEAD, "d": SUSPECT, "e": ALIVE}
    after = {"a": ALIVE, "b": ALIVE, "c": DEAD, "d": ALIVE, "e": ALIVE}
    up_since = {"a": 3.0, "b": 0.0, "c": 1.0, "d": 3.0, "e": 0.0}  # a, d came back at 3.0
    return during, after, up_since


def test_members_that_came_back_after_a_failure_cannot_vouch_for_dropping_it():
    # Found by `statemesh chaos` (5 hosts, seed 2): the healed minority saw the majority
    # return before the member it held dead refuted, adopted a stable set without that
    # member and took its sessions over although it had been alive all along.
    during, after, up_since = _healed_minority_views()
    stable = ["a", "b", "c", "d", "e"]
    sm = StableMembership("e", settle=0.5, stable=stable)
    assert not sm.observe(1.0, during, {"b": 1.0}, up_since)
    assert not sm.observe(2.0, during, {"b": 2.0}, up_since)
    heard = dict.fromkeys("abd", 3.1)
    for t in (3.1, 3.6, 4.5):
        assert not sm.observe(t, after, heard, up_since), t
    assert sm.stable == frozenset(stable)
    # Without the times members came back (the former rule), c would have been dropped.
    old = StableMembership("e", settle=0.5, stable=stable)
    old.observe(1.0, during, {"b": 1.0})
    assert old.observe(3.1, after, heard) and "c" not in old.stable


def test_members_up_throughout_still_vouch_for_dropping_a_dead_member():
    stable = ["a", "b", "c", "d", "e"]
    states = {"a": ALIVE, "b": ALIVE, "c": DEAD, "d": ALIVE, "e": ALIVE}
    up_since = {"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.0, "e": 0.0}
    sm = StableMembership("e", settle=0.5, stable=stable)
    sm.observe(1.0, states, dict.fromkeys("abd", 1.0), up_since)
    assert sm.observe(1.6, states, dict.fromkeys("abd", 1.5), up_since)
    assert sm.stable == frozenset("abde")


def _answer(session: int) -> DocVectors:
    return DocVectors(session, (), (), False)


def test_round_trips_record_the_send_time_of_answered_requests():
    trips = RoundTrips()
    trips.sent(5.0, "b", 11)
    trips.sent(5.1, "c", 12)
    trips.sent(5.2, "b", 13)
    assert trips.outstanding() == 3
    # Not answers: a request of the peer's own, another message, an unknown session.
    assert not trips.received("b", [DocVectors(11, (), (), True), Ack(11), _answer(99)])
    assert trips.answered == {}
    assert trips.received("b", [_answer(13)])
    assert trips.answered == {"b": 5.2}
    # An older request answered later does not move the evidence back.
    assert not trips.received("b", [_answer(11)])
    assert trips.answered == {"b": 5.2}
    # Each answer counts once.
    assert not trips.received("b", [_answer(13)])
    assert trips.outstanding() == 1


def test_round_trips_count_only_the_asked_peer():
    # A member cannot vouch for another by echoing its session id.
    trips = RoundTrips()
    trips.sent(1.0, "b", 7)
    assert not trips.received("c", [_answer(7)])
    assert trips.answered == {}
    assert trips.received("b", [_answer(7)])
    assert trips.answered == {"b": 1.0}


def test_round_trips_forget_the_oldest_requests_beyond_the_limit():
    trips = RoundTrips(limit=2)
    for i, peer in enumerate("bcd"):
        trips.sent(float(i), peer, i)
    assert trips.outstanding() == 2
    assert not trips.received("b", [_answer(0)])  # forgotten: a partition ate it
    assert trips.received("d", [_answer(2)])
    assert trips.answered == {"d": 2.0}


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.sent(1.0, "", 1),
        lambda t: t.sent(1.0, 3, 1),
        lambda t: t.sent(math.nan, "b", 1),
        lambda t: t.sent("now", "b", 1),
        lambda t: t.sent(True, "b", 1),
    ],
)
def test_round_trips_refuse_bad_input_and_change_nothing(call):
    trips = RoundTrips()
    trips.sent(1.0, "b", 1)
    with pytest.raises(InvalidValue):
        call(trips)
    assert trips.outstanding() == 1 and trips.answered == {}
    with pytest.raises(InvalidValue):
        RoundTrips(limit=0)


# --- admission: only members that answered a request of ours enter the stable set ----------


def _made_up(seed: int, n: int) -> list[str]:
    """`n` made-up member ids, as a key holder's flood would name them (seeded)."""
    rng = random.Random(seed)
    return [f"made-up-{rng.getrandbits(48):012x}" for _ in range(n)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_keyed_flood_of_made_up_alive_members_does_not_enlarge_the_stable_set(seed):
    # The made-up members are alive in our view (nobody has probed them yet) and never
    # answer: before admission they settled into the stable set and outvoted the real ones.
    fakes = _made_up(seed, 2048)
    sm = StableMembership("a", settle=1.0, stable="abc")
    st = states(alive=["a", "b", "c", *fakes])
    for t in (0.0, 0.5, 1.0, 2.0, 10.0):
        assert not sm.observe(t, st, dict.fromkeys("bc", t)), (seed, t)
        assert sm.next_deadline() == math.inf, (seed, t)  # nothing pending: no asks either
    assert sm.stable == set("abc"), seed
    # So a death among the real members still meets quorum at once (2 of 3).
    dead = states(alive=["a", "b", *fakes], dead="c")
    assert sm.has_quorum(dead, {"b": 11.0}, 11.0), seed


def test_a_real_member_that_answered_enters_and_one_that_did_not_waits():
    sm = StableMembership("a", settle=1.0, stable="abc")
    st = states(alive="abcd")
    answered = dict.fromkeys("bc", 0.0)
    assert not sm.observe(0.0, st, answered) and sm.next_deadline() == math.inf
    assert not sm.observe(5.0, st, answered)
    assert sm.stable == set("abc")  # d is listed alive but never answered us
    # d answers an exchange we sent at 5.0; b and c answer since: d is adopted a settle later.
    answered = dict.fromkeys("bcd", 5.0)
    assert not sm.observe(5.1, st, answered)
    assert sm.next_deadline() == 6.1
    assert sm.observe(6.1, st, dict.fromkeys("bcd", 6.0))
    assert sm.stable == set("abcd")


def test_a_probe_acknowledged_by_the_member_itself_admits_it_too():
    sm = StableMembership("a", settle=1.0, stable="ab")
    st = states(alive="abe")
    sm.observe(0.0, st, {"b": 0.0}, proven=["e"])
    assert sm.observe(1.0, st, {"b": 1.0}, proven=["e"])
    assert sm.stable == set("abe")


def test_members_of_a_restored_stable_set_stay_without_answering():
    # After a restart nobody has answered yet; the persisted members keep their weight.
    sm = StableMembership("a", settle=1.0, stable="abcde")
    st = states(alive=["a", "b", "c", "d", "e", *_made_up(4, 16)])
    for t in (0.0, 1.0, 5.0):
        assert not sm.observe(t, st, {})
    assert sm.stable == set("abcde")
    assert sm.admitted(st, {}) == set("abcde")


def test_the_first_stable_set_holds_only_members_that_answered():
    sm = StableMembership("a", settle=1.0)
    st = states(alive=["a", "b", "c", *_made_up(5, 8)])
    sm.observe(0.0, st, {"b": 0.0})
    assert sm.observe(1.0, st, {"b": 0.0}) and sm.stable == set("ab")
    # c answers later: it joins, under the quorum of {a, b}.
    sm.observe(2.0, st, {"b": 2.0, "c": 2.0})
    assert sm.observe(3.0, st, {"b": 3.0, "c": 3.0}) and sm.stable == set("abc")


@pytest.mark.parametrize("proven", ["e", b"e", 5, [""], [3], [["e"]], [None]])
def test_bad_proven_members_are_refused_and_change_nothing(proven):
    sm = StableMembership("a", settle=0.0, stable="ab")
    with pytest.raises(InvalidValue):
        sm.observe(1.0, states(alive="abe"), {"b": 1.0}, proven=proven)
    assert sm.stable == set("ab") and sm.next_deadline() == math.inf
    # The same call with good input admits e (settle 0: at once).
    assert sm.observe(1.0, states(alive="abe"), {"b": 1.0}, proven=["e"])
    assert sm.stable == set("abe")


def test_no_first_stable_set_of_us_alone_while_others_are_listed_up_and_silent():
    # A node joining during a flood hears of 2,048 made-up members and of its seed b,
    # whose answer has not come yet: adopting {a} would give it a quorum of one.
    fakes = _made_up(6, 2048)
    sm = StableMembership("a", settle=1.0)
    st = states(alive=["a", "b", *fakes])
    for t in (0.0, 1.0, 2.0, 5.0):
        assert not sm.observe(t, st, {}), t
        assert sm.stable is None and sm.next_deadline() < math.inf, t  # asks go on
    assert not sm.has_quorum(st, {}, 0.0)
    sm.observe(5.5, st, {"b": 5.4})  # b answers: {a, b} settles a settle later
    assert sm.observe(6.5, st, {"b": 6.4}) and sm.stable == set("ab")
    # Alone, knowing nobody up (the others died), a node still adopts itself.
    lone = StableMembership("a", settle=1.0)
    gone = states(alive="a", dead=["b", *fakes[:8]])
    lone.observe(0.0, gone, {})
    assert lone.observe(1.0, gone, {}) and lone.stable == {"a"}
