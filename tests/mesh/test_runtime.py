"""The mesh runtime in one trio process: real nodes on loopback, real SQLite, real sockets.

Each test opens two or three `open_mesh` nodes on 127.0.0.1 (insecure or with a key, no
mDNS unless the test is about it) joined by static seeds. Protocol randomness is seeded
per node (`SEED`), so a failure replays with the same choices.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio

from crdt_types.errors import Closed, CommitTimeout, InvalidValue, LocalError, RemoteError
from crdt_types.fingerprint import fingerprint_hex
from crdt_types.vv import VersionVector
from gossip.keyring import Keyring
from mesh import (
    MemberDead,
    MemberJoined,
    MemberLeft,
    MeshConfig,
    SessionChanged,
    open_mesh,
)
from mesh.storage import Store
from tests.mesh.helpers import MeshKit, alive

SEED = 20260

pytestmark = pytest.mark.timeout(60)


_kit = MeshKit(SEED)
config, wait_until, trio_nodes = _kit.config, _kit.wait_until, _kit.nodes


async def test_three_nodes_replicate_a_session_to_equal_fingerprints(tmp_path):
    async with trio_nodes(tmp_path, 3) as (a, b, c):
        s = await a.session("chat")
        s.state.append_message("user", "hello")
        s.state.start_tool_call(
            "call-1", "search", {"q": "x"}, idempotency_key="k1", started_by="n0"
        )
        await s.commit()

        def same():
            views = [m.read_session("chat") for m in (b, c)]
            return all(v is not None and fingerprint_hex(v.doc) == s.fingerprint() for v in views)

        await wait_until("replicas equal", same)
        assert [m.content for m in c.read_session("chat").messages()] == ["hello"]
        assert [t.call_id for t in b.read_session("chat").pending_tool_calls()] == ["call-1"]
        assert {m.documents()["session/chat"] for m in (a, b, c)} == {s.fingerprint()}


async def test_commit_levels_local_two_replicas_and_all(tmp_path):
    async with trio_nodes(tmp_path, 3) as (a, b, c):
        s = await a.session("levels")
        s.state.append_message("user", "one")
        # Local: durable in a's store (a second store handle reads the committed file).
        await s.commit()
        assert a.replica.durable_state_vector(s.doc_id) == s.state.doc.get_state()
        s.state.append_message("user", "two")
        holders = await s.commit(replicas=2, timeout=10)
        assert holders == ["n1", "n2"]
        # A holder's claim is about its disk: its durable vector covers the write.
        for peer in (b, c):
            assert peer.replica.durable_state_vector(s.doc_id) != b"\x00"
        s.state.append_message("user", "three")
        assert await s.commit(replicas="all", timeout=10) == ["n1", "n2"]
        for peer in (b, c):
            assert [m.content for m in peer.read_session("levels").messages()] == [
                "one",
                "two",
                "three",
            ]


async def test_commit_timeout_when_replicas_are_missing_rolls_nothing_back(tmp_path):
    async with open_mesh(config(tmp_path, "alone")) as a:
        s = await a.session("lonely")
        s.state.append_message("user", "keep me")
        with pytest.raises(CommitTimeout) as info:
            await s.commit(replicas=1, timeout=0.3)
        assert "1 replicas" in str(info.value)
        assert isinstance(info.value, TimeoutError)
        # Nothing rolled back: still here, durable here, and it spreads once a peer comes.
        assert [m.content for m in s.state.messages()] == ["keep me"]
        assert await s.commit() == []
        async with open_mesh(config(tmp_path, "late", seeds=[a.address], seed=1)) as late:
            assert await s.commit(replicas=1, timeout=10) == ["late"]
            view = late.read_session("lonely")
            assert view is not None and [m.content for m in view.messages()] == ["keep me"]


async def test_commit_all_with_no_peers_is_local_durability(tmp_path):
    async with open_mesh(config(tmp_path, "solo")) as a:
        s = await a.session("x")
        s.state.set_memory("k", "v")
        assert await s.commit(replicas="all", timeout=1) == []


async def test_commit_bad_arguments_raise_local_error_and_change_nothing(tmp_path):
    async with open_mesh(config(tmp_path, "a")) as a:
        s = await a.session("args")
        s.state.set_memory("k", 1)
        before = s.fingerprint()
        for bad in (-1, "some", 1.5, True):
            with pytest.raises(LocalError, match="replicas"):
                await s.commit(replicas=bad)
        for bad in (0, -2, "1", float("nan")):
            with pytest.raises(LocalError, match="timeout"):
                await s.commit(replicas=1, timeout=bad)
        with pytest.raises(LocalError, match="no document"):
            await a.commit("session/never-opened")
        with pytest.raises(InvalidValue):
            await a.session("")
        with pytest.raises(InvalidValue):
            await a.session("bad\x00id")
        assert s.fingerprint() == before


async def test_restart_loads_state_from_disk_and_writes_under_a_new_client_id(tmp_path):
    cfg = config(tmp_path, "r")
    async with open_mesh(cfg) as a:
        s = await a.session("durable")
        s.state.append_message("user", "before restart")
        await s.commit()
        fp = s.fingerprint()
        old_client = s.state.doc.client_id
    async with open_mesh(cfg) as a:
        assert a.sessions() == ["durable"]
        s = await a.session("durable")
        assert s.fingerprint() == fp
        assert s.state.doc.client_id != old_client
        s.state.append_message("agent", "after restart")
        await s.commit()
    store = Store.open(tmp_path / "r", readonly=True, create=False)
    try:
        doc = store.load("session/durable")
    finally:
        store.close()
    from crdt_types.session import SessionState

    assert [m.content for m in SessionState(doc).messages()] == ["before restart", "after restart"]


async def test_events_joined_session_changed_and_graceful_left(tmp_path):
    async with open_mesh(config(tmp_path, "a")) as a:
        async with a.subscribe() as events:
            async with open_mesh(config(tmp_path, "b", seeds=[a.address], seed=1)) as b:
                s = await b.session("evented")
                s.state.append_message("user", "hi")
                await s.commit(replicas=1, timeout=10)
            seen = []
            with trio.move_on_after(10):
                async for ev in events:
                    seen.append(ev)
                    if isinstance(ev, MemberLeft):
                        break
        assert any(isinstance(e, MemberJoined) and e.node == "b" for e in seen), seen
        assert SessionChanged("evented", local=False) in seen
        # Leaving is graceful: "left", never "dead" (no failover for a planned exit).
        assert any(isinstance(e, MemberLeft) and e.node == "b" for e in seen), seen
        assert not any(isinstance(e, MemberDead) for e in seen)
        assert {m["node"]: m["state"] for m in a.members()}["b"] == "left"


async def test_subscriber_that_does_not_read_loses_events_not_memory(tmp_path):
    async with open_mesh(config(tmp_path, "a")) as a:
        async with a.subscribe(max_buffer=2) as slow, a.subscribe() as roomy:
            s = await a.session("busy")
            for i in range(10):
                s.state.set_memory(f"k{i}", i)
                await s.commit()
            assert slow.dropped > 0 and roomy.dropped == 0

            async def drain(sub):
                got = []
                with trio.move_on_after(0.2):
                    while True:
                        got.append(await sub.receive())
                return got

            # The slow one kept only what fit (the oldest); the roomy one got every write.
            assert len(await drain(slow)) == 2
            assert SessionChanged("busy", local=True) in await drain(roomy)
        with pytest.raises(LocalError):
            async with a.subscribe(max_buffer=0):
                pass


async def test_bad_frames_are_counted_and_dropped_and_the_node_keeps_working(tmp_path):
    async with trio_nodes(tmp_path, 2) as (a, b):
        host, port = a.address.rsplit(":", 1)
        garbage = [b"\x00" * 10, os.urandom(200), b"\x01\x01" + os.urandom(80)]
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            for g in garbage:
                sock.sendall(struct.pack(">I", len(g)) + g)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(os.urandom(64), (host, int(port)))
        udp.close()
        await wait_until("rejections counted", lambda: sum(a.codec.rejected.values()) >= 4)
        s = await b.session("after-garbage")
        s.state.set_memory("ok", True)
        assert await s.commit(replicas=1, timeout=10) == ["n0"]
        assert alive(a) == {"n0", "n1"}


async def test_node_with_another_key_is_refused_and_learns_nothing(tmp_path):
    key_a, key_b = Keyring([os.urandom(32)]), Keyring([os.urandom(32)])
    async with open_mesh(config(tmp_path, "a", key=key_a)) as a:
        s = await a.session("secret")
        s.state.set_memory("k", "v")
        await s.commit()
        cfg = config(tmp_path, "intruder", key=key_b, seeds=[a.address], seed=1)
        async with open_mesh(cfg) as intruder:
            await wait_until("refusals", lambda: a.codec.rejected["unknown_key"] > 0)
            await trio.sleep(0.5)
            assert alive(a) == {"a"}
            assert alive(intruder) == {"intruder"}
            assert intruder.sessions() == []
        cfg = config(tmp_path, "other", key=key_a, cluster="elsewhere", seeds=[a.address], seed=2)
        async with open_mesh(cfg) as other:
            await wait_until("cluster refusals", lambda: a.codec.rejected["cluster"] > 0)
            assert other.sessions() == [] and alive(a) == {"a"}


async def test_keyed_nodes_replicate(tmp_path):
    key = Keyring([os.urandom(32)])
    async with trio_nodes(tmp_path, 2, key=key) as (a, b):
        s = await a.session("sealed")
        s.state.set_memory("k", "v")
        assert await s.commit(replicas=1, timeout=10) == ["n1"]
        assert b.read_session("sealed").get_memory("k") == "v"


async def test_cluster_document_spreads(tmp_path):
    async with trio_nodes(tmp_path, 2) as (a, b):
        a.cluster.set("flags.beta", True, by=a.node_id)
        assert await a.commit("cluster", replicas=1, timeout=10) == ["n1"]
        assert b.cluster.get("flags.beta") is True


async def test_mdns_discovery_on_loopback_joins_without_seeds(tmp_path):
    async with (
        open_mesh(config(tmp_path, "m0", interfaces=["127.0.0.1"])) as a,
        open_mesh(config(tmp_path, "m1", interfaces=["127.0.0.1"], seed=1)) as b,
    ):
        await wait_until("mDNS join", lambda: alive(a) == alive(b) == {"m0", "m1"}, 15)


async def test_closed_mesh_refuses_use(tmp_path):
    async with open_mesh(config(tmp_path, "c")) as a:
        s = await a.session("x")
    with pytest.raises(Closed):
        await a.session("y")
    with pytest.raises(Closed):
        await s.commit()
    with pytest.raises(Closed):
        async with a.subscribe():
            pass


async def test_user_exception_in_the_block_propagates_as_itself(tmp_path):
    with pytest.raises(KeyError):
        async with open_mesh(config(tmp_path, "k")):
            raise KeyError("mine")


async def test_unusable_data_dir_and_busy_address_raise_clear_errors(tmp_path):
    from crdt_types.errors import StorageError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError):
        async with open_mesh(MeshConfig(node="x", data_dir=blocker, insecure=True)):
            pass
    async with open_mesh(config(tmp_path, "p")) as a:
        cfg = MeshConfig(node="q", data_dir=tmp_path / "q", listen=a.address, insecure=True)
        with pytest.raises(LocalError, match="cannot bind"):
            async with open_mesh(cfg):
                pass


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"node": ""}, "node"),
        ({"cluster": 3}, "cluster"),
        ({"insecure": False}, "no cluster key"),
        ({"key": b"k" * 32}, "not both"),
        ({"key": 42, "insecure": False}, "key must be"),
        ({"key": "/nonexistent/key", "insecure": False}, "does not exist"),
        ({"listen": "localhost:1"}, "numeric"),
        ({"listen": "127.0.0.1"}, "host:port"),
        ({"listen": "0.0.0.0:0"}, "wildcard"),
        ({"seeds": "127.0.0.1:1"}, "seeds"),
        ({"seeds": ["127.0.0.1:0"]}, "port 0"),
        ({"interfaces": ["eth0"]}, "IPv4"),
        ({"profile": "fast"}, "profile"),
        ({"http": "nowhere"}, "host:port"),
        ({"leave_timeout": 0}, "leave_timeout"),
        ({"seed": "1"}, "seed"),
        ({"split_brain": "quorum"}, "split_brain"),
        ({"on_unreadable_store": "delete"}, "on_unreadable_store"),
        ({"on_unreadable_store": True}, "on_unreadable_store"),
    ],
)
def test_mesh_config_rejects_each_bad_field(tmp_path, fields, message):
    base = {"node": "n", "data_dir": tmp_path, "insecure": True}
    base.update(fields)
    with pytest.raises(LocalError, match=message) as info:
        MeshConfig(**base)
    # One class for every field check, whatever the field: callers catch one thing.
    assert type(info.value) is LocalError, type(info.value)


@pytest.mark.parametrize("nudge", [True, False])
async def test_a_lost_ack_is_recovered_by_the_commit_nudge(tmp_path, monkeypatch, nudge):
    from mesh import runtime

    if not nudge:
        # Control: without re-sending, converged replicas never report again.
        monkeypatch.setattr(runtime, "NUDGE_INTERVAL", 3600.0)
    async with trio_nodes(tmp_path, 2) as (a, b):
        s = await a.session("nudged")
        s.state.set_memory("k", "v")
        assert await s.commit(replicas=1, timeout=10) == ["n1"]

        # Let everything settle: equal digest roots, so anti-entropy exchanges end at the
        # root and carry no durable vectors; no rumour left to retransmit.
        async def settled():
            for _ in range(200):
                ra, rb = a.node.replicator, b.node.replicator
                if ra.root == rb.root and not ra.pending_rumours and not rb.pending_rumours:
                    await trio.sleep(0.7)
                    if ra.root == rb.root and not ra.pending_rumours:
                        return
                await trio.sleep(0.05)
            raise AssertionError("replicas did not settle")

        await settled()
        # The ack is "lost": a forgets what b reported.
        a.node.replicator._peer_durable.clear()
        if nudge:
            assert await s.commit(replicas=1, timeout=10) == ["n1"]
            assert a.stats["commit_nudges"] >= 1
        else:
            with pytest.raises(CommitTimeout):
                await s.commit(replicas=1, timeout=2.5)


async def test_a_replicated_commit_also_replicates_the_sessions_ownership_claim(tmp_path):
    # Fault injection (a fake in front of the real store, not a mock of the protocol):
    # b refuses ownership updates for a while, as if every rumour and diff carrying the
    # claim were lost. A commit at replicas=1 must not return before the holder also
    # holds the claim: otherwise, if a died now, b would hold an unowned session and
    # nobody would take it over.
    async with trio_nodes(tmp_path, 2) as (a, b):
        real_apply = b.replica.apply
        refusing = True

        def lossy_apply(doc_id, update):
            if refusing and doc_id == "ownership":
                raise RemoteError("claim lost in transit (test fault)")
            return real_apply(doc_id, update)

        b.replica.apply = lossy_apply

        async def stop_refusing():
            nonlocal refusing
            await trio.sleep(1.0)
            refusing = False

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_refusing)
            s = await a.session("claimed")
            s.state.append_message("user", "hello")
            assert await s.commit(replicas=1, timeout=20) == ["n1"]
            assert not refusing, "commit returned while the holder lacked the claim"
            assert b.owner_of("claimed") == "n0"
            claim = VersionVector.from_state_vector(a.replica.state_vector("ownership"))
            held = VersionVector.from_state_vector(b.replica.durable_state_vector("ownership"))
            assert held.covers(claim)


async def test_one_instant_outputs_share_a_frame_except_membership_table_parts(tmp_path):
    from gossip.messages import DocVectors, Envelope, MembershipSync
    from gossip.node import Output

    async with trio_nodes(tmp_path, 1) as (mesh,):
        sent: list[Output] = []
        mesh._emit = sent.append  # record what would be framed and sent, send nothing
        me = mesh.node_id

        def env(*messages: object) -> Envelope:
            return Envelope(me, mesh.address, 1, messages)

        vec = DocVectors(1, (), (), False)
        part = MembershipSync((), True)
        mesh._emit_all([Output([("p:1", env(vec))]), Output([("p:1", env(vec))])])
        # Two small envelopes for one address at one instant: one frame.
        assert [(a, e.messages) for a, e in sent[-1].sends] == [("p:1", (vec, vec))]
        mesh._emit_all([Output([("p:1", env(vec))]), Output([("p:1", env(part))])])
        # A table part is sized to fill a frame on its own: never merged with others.
        assert [(a, e.messages) for a, e in sent[-1].sends] == [("p:1", (vec,)), ("p:1", (part,))]
