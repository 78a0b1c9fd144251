"""mesh.failover in one process: ownership, NotOwner/Fenced, owner_of, events, hand-off.

Real meshes on loopback (real sockets, real SQLite files) in one trio run. What needs a
process killed with SIGKILL or a network partition is in `test_failover_netns.py`.
Randomness is seeded (`SEED`); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import trio

from crdt_types.errors import Fenced, LocalError, NotOwner
from crdt_types.vv import decode_state_vector
from gossip.events import (
    MemberDead,
    MemberJoined,
    MemberLeft,
    OwnerChanged,
    StandbyAssigned,
    WorkloadFenced,
)
from gossip.failover import FailoverPolicy
from gossip.messages import DocDiff, DocUpdate, Envelope
from gossip.node import Output
from gossip.successor import rank
from mesh import open_mesh
from mesh.failover import STABLE_FILE, SYNC_QUEUE, SessionTakenOver
from tests.mesh.helpers import MeshKit, alive

SEED = 5150

pytestmark = pytest.mark.timeout(60)


_kit = MeshKit(SEED)
config, wait_until, nodes = _kit.config, _kit.wait_until, _kit.nodes


async def test_opening_claims_and_every_peer_answers_owner_of(tmp_path):
    async with nodes(tmp_path, 3) as (a, b, c):
        assert a.owner_of("chat") is None
        s = await a.session("chat")
        assert a.owner_of("chat") == "n0"
        s.state.append_message("user", "hi")
        await s.commit(replicas=2, timeout=10)
        await wait_until("claim spread", lambda: b.owner_of("chat") == c.owner_of("chat") == "n0")
        assert a.status()["owners"] == {"n0": ["chat"]}
        await wait_until("status owners", lambda: c.status()["owners"] == {"n0": ["chat"]})


async def test_writes_to_a_session_owned_elsewhere_raise_not_owner_and_change_nothing(tmp_path):
    async with nodes(tmp_path, 2) as (a, b):
        s = await a.session("chat")
        s.state.append_message("user", "mine")
        await s.commit(replicas=1, timeout=10)
        await wait_until("claim spread", lambda: b.owner_of("chat") == "n0")
        theirs = await b.session("chat")  # opening to read is allowed and claims nothing
        before = theirs.fingerprint()
        for write in (
            lambda st: st.append_message("user", "not mine"),
            lambda st: st.set_memory("k", 1),
            lambda st: st.set_cursor(3),
            lambda st: st.start_tool_call("c", "t", started_by="n1"),
            lambda st: st.add_rag("x"),
        ):
            with pytest.raises(NotOwner) as info:
                write(theirs.state)
            assert not isinstance(info.value, Fenced)
            assert info.value.owner == "n0" and info.value.epoch == 1
        with pytest.raises(NotOwner):
            await theirs.commit()
        assert theirs.fingerprint() == before
        # Reads are always allowed.
        assert [m.content for m in theirs.state.messages()] == ["mine"]
        assert b.owner_of("chat") == "n0"


async def test_losing_ownership_fences_writes_and_fires_the_events(tmp_path):
    async with nodes(tmp_path, 2) as (a, b):
        async with a.subscribe() as events:
            s = await a.session("chat")
            s.state.append_message("user", "one")
            await s.commit(replicas=1, timeout=10)
            await wait_until("claim spread", lambda: b.owner_of("chat") == "n0")
            # Another node wins a higher epoch (what a takeover does).
            b.ownership.claim("session/chat", "n1", 2)
            b._pump()
            await wait_until("fenced", lambda: a.owner_of("chat") == "n1")
            with pytest.raises(Fenced) as info:
                s.state.append_message("user", "two")
            assert info.value.owner == "n1" and info.value.epoch == 2
            seen = []
            with trio.move_on_after(5):
                async for ev in events:
                    seen.append(ev)
                    if isinstance(ev, WorkloadFenced):
                        break
        assert WorkloadFenced("session/chat", "n1", 2, 1) in seen
        assert OwnerChanged("session/chat", "n1", 2, "n0") in seen
        assert a.status()["counters"]["fenced"] == 1


async def test_graceful_leave_hands_over_to_the_standby_with_no_dead(tmp_path):
    called: list[tuple[str, str, list[str]]] = []
    prewarmed: list[tuple[str, str, str]] = []
    async with contextlib.AsyncExitStack() as outer:
        b = await outer.enter_async_context(open_mesh(config(tmp_path, "n1")))
        c = await outer.enter_async_context(
            open_mesh(config(tmp_path, "n2", seeds=[b.address], seed=2))
        )
        for m in (b, c):

            async def on_takeover(session, pending, m=m):
                called.append((m.node_id, session.id, [p.idempotency_key for p in pending]))

            async def on_prewarm(session_id, owner, m=m):
                prewarmed.append((m.node_id, session_id, owner))

            m.on_takeover(on_takeover)
            m.on_prewarm(on_prewarm)
        async with b.subscribe() as eb, c.subscribe() as ec:
            async with open_mesh(config(tmp_path, "n0", seeds=[b.address], seed=0)) as a:
                names = {"n0", "n1", "n2"}
                await wait_until("membership", lambda: all(alive(m) == names for m in (a, b, c)))
                s = await a.session("chat")
                s.state.append_message("user", "before leaving")
                s.state.start_tool_call("call-1", "search", started_by="n0", idempotency_key="k1")
                await s.commit(replicas=2, timeout=10)
                await wait_until("standby prewarmed", lambda: prewarmed)
            # Left the block: a left gracefully.
            await wait_until("handed over", lambda: called)
            seen = []
            for sub in (eb, ec):
                with trio.move_on_after(0.5):
                    async for ev in sub:
                        seen.append(ev)
        standby = prewarmed[0][0]
        other = ({"n1", "n2"} - {standby}).pop()
        # The standby of n0, then (once it owns the session) the standby of the new owner.
        assert prewarmed[0] == (standby, "chat", "n0")
        assert prewarmed[1:] in ([], [(other, "chat", standby)])
        assert called == [(standby, "chat", ["k1"])]
        assert b.owner_of("chat") == c.owner_of("chat") == standby
        assert any(isinstance(e, MemberLeft) and e.node == "n0" for e in seen)
        assert not any(isinstance(e, MemberDead) for e in seen)
        taken = [e for e in seen if isinstance(e, SessionTakenOver)]
        assert [(e.session_id, e.previous_owner, e.epoch, e.pending) for e in taken] == [
            ("chat", "n0", 2, ("k1",))
        ]
        assert taken[0].covered
        assert any(isinstance(e, StandbyAssigned) for e in seen)


async def test_takeover_handler_errors_are_counted_not_fatal(tmp_path):
    async with nodes(tmp_path, 2) as (a, b):

        async def broken(session, pending):
            raise RuntimeError("application bug")

        b.on_takeover(broken)
        s = await a.session("chat")
        s.state.append_message("user", "x")
        await s.commit(replicas=1, timeout=10)
        await wait_until("claim spread", lambda: b.owner_of("chat") == "n0")
        a.ownership.claim("session/chat", "n1", 2)  # a hands it over by hand
        a._pump()
        await wait_until("handler ran", lambda: b.stats["handler_errors"] == 1)
        assert b.owner_of("chat") == "n1"
        s2 = await b.session("chat")
        s2.state.append_message("assistant", "still working")
        await s2.commit()


async def test_stable_membership_is_persisted_and_restored(tmp_path):
    async with nodes(tmp_path, 2) as (a, _b):
        path = tmp_path / "n0" / STABLE_FILE
        await wait_until("stable adopted", lambda: path.exists(), timeout=15)
        assert json.loads(path.read_text()) == ["n0", "n1"]
        assert a.status()["stable"] == ["n0", "n1"]
    # What a crashed node finds on restart is what it had adopted last.
    path.write_text(json.dumps(["n0", "n9"]))
    async with open_mesh(config(tmp_path, "n0")) as a2:
        assert a2.status()["stable"] == ["n0", "n9"]


async def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(LocalError, match="split_brain"):
        config(tmp_path, "x", split_brain="yolo")
    (tmp_path / "n0").mkdir()
    # A damaged stable-membership file is ignored (as if never written), not fatal.
    (tmp_path / "n0" / STABLE_FILE).write_text("{not json")
    async with open_mesh(config(tmp_path, "n0")) as a:
        assert a.status()["stable"] is None
        with pytest.raises(LocalError, match="async callable"):
            a.on_takeover("not callable")
        with pytest.raises(LocalError, match="async callable"):
            a.on_prewarm(42)
        assert a.status()["policy"] == "majority"


def _crash_on_exit(mesh) -> None:
    """Make leaving `mesh`'s block a crash: no hand-off, no departure announced (a fake)."""

    async def no_handoff(timeout: float = 0.0) -> list:
        return []

    mesh.node.leave = lambda now: Output()
    mesh.failover.handoff = no_handoff


def _drop_data(mesh) -> None:
    """`mesh` stops receiving session contents (it still hears vectors, acks, claims)."""
    receive = mesh.node.receive

    def filtered(now, env):
        kept = tuple(
            m
            for m in env.messages
            if not (isinstance(m, DocUpdate | DocDiff) and m.doc_id.startswith("session/"))
        )
        return receive(now, Envelope(env.sender, env.sender_address, env.incarnation, kept))

    mesh.node.receive = filtered


async def _n1_n2_recording_takeovers(stack, tmp_path, called: list[str]):
    """Nodes n1 and n2 joined on `stack`; each appends its id to `called` when it takes over."""
    b = await stack.enter_async_context(open_mesh(config(tmp_path, "n1", seed=1)))
    c = await stack.enter_async_context(
        open_mesh(config(tmp_path, "n2", seeds=[b.address], seed=2))
    )
    for m in (b, c):

        async def on_takeover(session, pending, m=m):
            called.append(m.node_id)

        m.on_takeover(on_takeover)
    return b, c


async def test_a_behind_replica_is_not_chosen_while_a_caught_up_one_exists(tmp_path):
    # n1 ranks first for this session, so only the coverage rule can pass it over.
    sid = next(f"s{i}" for i in range(100) if rank(f"session/s{i}", ["n1", "n2"])[0] == "n1")
    called: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        b, c = await _n1_n2_recording_takeovers(stack, tmp_path, called)
        _drop_data(b)
        async with open_mesh(config(tmp_path, "n0", seeds=[b.address])) as a:
            everyone = ["n0", "n1", "n2"]
            await wait_until(
                "settled", lambda: all(m.status()["stable"] == everyone for m in (a, b, c)), 15
            )
            s = await a.session(sid)
            s.state.append_message("user", "only n2 holds this")
            assert await s.commit(replicas=1, timeout=10) == ["n2"]
            target = decode_state_vector(a.replica.state_vector(s.doc_id))

            def b_knows_c_is_ahead() -> bool:
                reported = b.node.replicator.peer_durable("n2", s.doc_id)
                if reported is None:
                    return False
                vv = decode_state_vector(reported)
                return all(vv.get(k, 0) >= v for k, v in target.items())

            await wait_until("n1 hears n2's durable vector", b_knows_c_is_ahead)
            assert not b.has_session(sid) or b.read_session(sid).message_count() == 0
            _crash_on_exit(a)
        await wait_until("takeover", lambda: called, timeout=15)
        await trio.sleep(1.0)  # n1's own slot has passed: it must still not claim
        assert called == ["n2"], called
        assert b.owner_of(sid) == c.owner_of(sid) == "n2"
        assert b.stats["takeover_claims"] == 0
        assert [m.content for m in c.read_session(sid).messages()] == ["only n2 holds this"]


async def test_two_successors_claiming_at_once_run_the_handler_once(tmp_path):
    # Force the race the stagger normally prevents: with no stagger, both caught-up
    # survivors claim at epoch 2 in the same instant. The (epoch, owner) merge keeps one
    # claim everywhere, and only that claimant may resume the agent.
    called: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        b, c = await _n1_n2_recording_takeovers(stack, tmp_path, called)
        for m in (b, c):
            m.failover.state.policy = FailoverPolicy(stagger=0.0)
        async with open_mesh(config(tmp_path, "n0", seeds=[b.address])) as a:
            everyone = ["n0", "n1", "n2"]
            await wait_until(
                "settled", lambda: all(m.status()["stable"] == everyone for m in (a, b, c)), 15
            )
            s = await a.session("raced")
            s.state.append_message("user", "both survivors hold this")
            assert await s.commit(replicas="all", timeout=10) == ["n1", "n2"]
            _crash_on_exit(a)
        await wait_until("takeover", lambda: called, timeout=15)
        await wait_until("one owner", lambda: b.owner_of("raced") == c.owner_of("raced"), 10)
        await trio.sleep(1.0)  # every claim and pull has settled by now
        winner = b.owner_of("raced")
        assert called == [winner], (called, winner)
        claims = b.stats["takeover_claims"] + c.stats["takeover_claims"]
        assert claims >= 1, claims


async def test_a_takeover_whose_claim_lost_the_merge_does_not_run_the_handler(tmp_path):
    # The window the stagger cannot close: our claim was written, then a concurrent one
    # with a higher (epoch, owner) arrived before the takeover task ran. The task pulls
    # the table first and must leave the session to the winner.
    called: list[str] = []
    async with open_mesh(config(tmp_path, "n1", seed=1)) as b:

        async def on_takeover(session, pending):
            called.append(session.id)

        b.on_takeover(on_takeover)
        s = await b.session("contested")  # n1 claims at epoch 1
        b.ownership.claim("session/contested", "n2", 2)  # the merged winner at epoch 2
        await b.failover._takeover("session/contested", "n0", 2)
        assert called == []
        assert b.stats["takeover_lost_race"] == 1 and b.stats["takeovers"] == 0
        assert b.owner_of("contested") == "n2"
        with pytest.raises(NotOwner):
            s.state.append_message("user", "not ours any more")


async def test_ownership_syncs_are_queued_deduplicated_newest_first_and_bounded(tmp_path):
    async with nodes(tmp_path, 1) as (a,):
        f = a.failover
        # No checkpoint between these calls, so no worker takes from the queue yet. The
        # announced members are made up; they are never contacted (the queue is cleared).
        for i in range(SYNC_QUEUE + 10):
            f.on_event(MemberJoined(f"x{i}", "127.0.0.1:9", 0))
        assert len(f._sync_queue) == SYNC_QUEUE and a.stats["sync_dropped"] == 10
        assert next(iter(f._sync_queue)) == "x10"  # the oldest went first
        f.on_event(MemberJoined("x20", "127.0.0.1:9", 0))  # again: moved, not duplicated
        f.on_event(MemberJoined(a.node_id, "127.0.0.1:9", 0))  # ourselves: never queued
        assert len(f._sync_queue) == SYNC_QUEUE and list(f._sync_queue)[-1] == "x20"
        assert a.stats["sync_dropped"] == 10
        f._sync_queue.clear()
        assert a.status()["sync"]["dropped"] == 10


async def test_a_node_joining_during_a_keyed_flood_admits_its_seed_and_no_made_up_member(
    tmp_path,
):
    # A key holder floods v with 2,048 made-up alive members; w then joins through v. w
    # learns of v together with the 2,048, and its ownership exchange with v is pushed out
    # of the sync queue by theirs: before asks went to seeds first, w adopted a stable set
    # of itself alone (a quorum of one). Only members that answered are admitted.
    import os

    from gossip.keyring import Keyring
    from tests.mesh.test_hostile_peers import flood_members

    key = Keyring([os.urandom(32)])
    async with open_mesh(config(tmp_path, "v", key=key)) as v:
        cap = await flood_members(v, key, wait_until)
        async with open_mesh(config(tmp_path, "w", seeds=[v.address], seed=1, key=key)) as w:
            both = {"v", "w"}
            for m in (v, w):
                stable = m.failover.state.membership
                await wait_until(f"{m.node_id} settled", lambda s=stable: s.stable == both)
            # The made-up members are still alive to both (nobody has probed most yet).
            fakes = [n for n in w.node.membership.live_members() if n.startswith("f")]
            assert len(fakes) > cap // 2
