"""Hostile peers against real nodes: outsiders, authenticated vandals, slow and silent sockets.

* Outsiders (no key, the cluster's old removed key, another cluster's name) run as real
  processes next to two real `statemesh peer` processes on loopback. Each outsider writes
  a session of its own and keeps knocking for a few seconds. Afterwards both sides are read
  over HTTP (`/status`, `/documents`): the cluster saw refusals counted by reason and
  nothing else; the outsiders learned no member and no document.
* An authenticated peer sending messages the store cannot log (document ids too long or
  with NUL) must be refused, not crash the node (it did: the store raised inside the
  receive loop and took the whole node down).
* Raw TCP clients that connect and say nothing, trickle a byte at a time, or declare a
  huge frame and stall are cut by the transport's timeouts while the node keeps serving
  a real peer; embedded through `open_mesh` because `statemesh peer` has no flags for
  transport timeouts.
* API misuse gets the documented error and changes nothing.

Protocol randomness is seeded (`SEED`); every wait is bounded in time.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import pycrdt
import pytest
import trio

from crdt_types.errors import (
    Closed,
    InvalidValue,
    LocalError,
    NotOwner,
    StorageError,
)
from gossip.framing import frame as length_prefixed
from gossip.keyring import Keyring, write_key_file
from gossip.messages import (
    Digest,
    DocUpdate,
    DocVectors,
    Envelope,
    MembershipSync,
    MemberUpdate,
    ReplicaAck,
)
from gossip.seal import FrameCodec, Sealer
from mesh import MeshConfig, open_mesh
from mesh.failover import SYNC_QUEUE, SYNC_WORKERS
from mesh.transport import TransportConfig
from tests.cli.test_peer import Peer, wait_for
from tests.mesh.helpers import MeshKit

SEED = 20261202

pytestmark = pytest.mark.timeout(120)


def _get(peer: Peer, path: str) -> dict:
    with urllib.request.urlopen(f"http://{peer.ready['http']}{path}", timeout=5) as r:
        return json.loads(r.read())


_WRITER = """
import json, sys, trio
from mesh import MeshConfig, open_mesh
name, data, seed, key, cluster, insecure, seconds = sys.argv[1:8]
async def main():
    cfg = MeshConfig(node=name, data_dir=data, seeds=[seed], cluster=cluster,
                     key=None if insecure == "1" else key, insecure=insecure == "1",
                     seed=int(sys.argv[8]), mdns=False)
    async with open_mesh(cfg) as m:
        s = await m.session(name + "-session")
        s.state.set_memory("written_by", name)
        if name == "writer":
            peers = await s.commit(replicas=2, timeout=20)
        else:
            await s.commit()
            peers = []
            await trio.sleep(float(seconds))
        print(json.dumps({"peers": peers, "members": m.members(), "sessions": m.sessions(),
                          "rejected": dict(m.codec.rejected)}))
trio.run(main)
"""


def _embedded(tmp_path, name, seed_address, *, key="", cluster="statemesh", seconds=0.0, n=0):
    args = [
        name,
        str(tmp_path / name),
        seed_address,
        str(key),
        cluster,
        "0" if key else "1",
        str(seconds),
        str(SEED + n),
    ]
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_outsiders_learn_nothing_and_change_nothing(tmp_path):
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    write_key_file(old, os.urandom(32))
    write_key_file(new, os.urandom(32))  # the cluster rotated: `old` was removed

    def args(name, *extra):
        return [
            "--node", name, "--data", str(tmp_path / name), "--listen", "127.0.0.1:0",
            "--http", "127.0.0.1:0", "--no-mdns", "--key-file", str(new), *extra,
        ]  # fmt: skip

    made: list[Peer] = []
    procs: list[subprocess.Popen] = []
    try:
        a = Peer(*args("a"))
        made.append(a)
        b = Peer(*args("b", "--join", a.ready["address"]))
        made.append(b)
        wait_for(lambda: {"a", "b"} <= {m["node"] for m in a.status()["members"]})
        writer = _embedded(tmp_path, "writer", a.ready["address"], key=new)
        procs.append(writer)
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        assert sorted(json.loads(out)["peers"]) == ["a", "b"]
        wait_for(lambda: _get(a, "/documents") == _get(b, "/documents"))
        docs_before = _get(a, "/documents")
        assert "session/writer-session" in docs_before

        # Outsiders knock on both peers for a few seconds, each writing a session.
        outsiders = {
            "nokey": {},  # insecure: frames without any key
            "oldkey": {"key": old},
            "othercluster": {"key": new, "cluster": "elsewhere"},
        }
        running = {}
        for i, (name, kw) in enumerate(outsiders.items()):
            target = (a if i % 2 == 0 else b).ready["address"]
            running[name] = _embedded(tmp_path, name, target, seconds=3.0, n=i + 1, **kw)
            procs.append(running[name])
        seen = {}
        for name, proc in running.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, (name, err)
            seen[name] = json.loads(out)

        # The cluster: refusals counted by reason, membership and documents untouched.
        bad = {}
        for peer in (a, b):
            status = peer.status()
            names = {m["node"] for m in status["members"]}
            assert names <= {"a", "b", "writer"}, (peer.ready["node"], names)
            assert _get(peer, "/documents") == docs_before
            for reason, count in status["bad_frames"].items():
                bad[reason] = bad.get(reason, 0) + count
        assert bad.get("insecure", 0) > 0, bad
        assert bad.get("unknown_key", 0) > 0, bad
        assert bad.get("cluster", 0) > 0, bad
        assert {m["node"]: m["state"] for m in a.status()["members"]}["b"] == "alive"

        # The outsiders: they know nobody and hold nothing but their own session.
        for name, report in seen.items():
            assert [m["node"] for m in report["members"]] == [name], (name, report)
            assert report["sessions"] == [f"{name}-session"], (name, report)
            # ...and they saw the cluster's answers (if any) refused the same way.
            assert set(report["rejected"]) <= {"insecure", "unknown_key", "cluster"}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for peer in made:
            peer.stop_hard()


# --- an authenticated vandal -----------------------------------------------------------------


wait_until = MeshKit(SEED).wait_until


def _cfg(tmp_path, name, *, seeds=(), n=0, **kw) -> MeshConfig:
    return MeshConfig(
        node=name,
        data_dir=tmp_path / name,
        seeds=list(seeds),
        seed=SEED + n,
        mdns=False,
        **kw,
    )


class Vandal:
    """An authenticated sender of hand-made envelopes over one raw TCP connection."""

    def __init__(self, keyring: Keyring, target: str) -> None:
        self.keyring = keyring
        self.codec = FrameCodec(Sealer("statemesh", keyring, "vandal", secrets.randbits(64)))
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)

    def send(self, *msgs: object) -> None:
        env = Envelope("vandal", "127.0.0.1:9", 0, tuple(msgs))
        self.sock.sendall(length_prefixed(self.codec.pack(time.time(), env)))

    def send_as(self, sender: str, *msgs: object) -> None:
        """Send `msgs` sealed with the key under any sender id the vandal likes."""
        codec = FrameCodec(Sealer("statemesh", self.keyring, sender, secrets.randbits(64)))
        env = Envelope(sender, "127.0.0.1:9", 0, tuple(msgs))
        self.sock.sendall(length_prefixed(codec.pack(time.time(), env)))

    def close(self) -> None:
        self.sock.close()


def made_up_members(n: int) -> tuple[MemberUpdate, ...]:
    """`n` made-up alive members, every address loopback port 9 (discard: nothing listens)."""
    return tuple(MemberUpdate(f"f{i:x}", "127.0.0.1:9", 0, "alive", "x") for i in range(n))


async def flood_members(mesh, key: Keyring, wait_until) -> int:
    """Fill `mesh`'s table with as many made-up alive members as one envelope may add."""
    members = mesh.node.membership
    cap = members.config.max_new_members
    vandal = Vandal(key, mesh.address)
    try:
        vandal.send(MembershipSync(made_up_members(cap), True))
        await wait_until("flood joined", lambda: len(members.members) == 1 + cap)
    finally:
        vandal.close()
    return cap


def _update(key: str) -> bytes:
    doc = pycrdt.Doc(client_id=4242)
    with doc.transaction():
        doc.get("data", type=pycrdt.Map)[key] = "x"
    return doc.get_update()


async def test_document_ids_the_store_cannot_log_are_refused_not_fatal(tmp_path):
    key = Keyring([os.urandom(32)])
    async with (
        open_mesh(_cfg(tmp_path, "v", key=key)) as v,
        open_mesh(_cfg(tmp_path, "w", seeds=[v.address], n=1, key=key)) as w,
    ):
        await wait_until("join", lambda: len(v.node.membership.live_members()) == 1)
        vandal = Vandal(key, v.address)
        try:
            # Before the fix the first of these crashed node v: the store refused the
            # id inside the receive loop. Well-formed ids in the same frame still land.
            vandal.send(
                DocUpdate("x" * 300, _update("a")),
                DocUpdate("nul\x00id", _update("b")),
                DocUpdate("session/fine", _update("c")),
            )
            # The id rule (crdt_types.docs.check_doc_id) is enforced as the message
            # arrives, so both are counted as malformed before anything reaches the store.
            await wait_until("refusal", lambda: v.node.replicator.stats.malformed >= 2)
            await wait_until("good update", lambda: v.has_session("fine"))
        finally:
            vandal.close()
        assert not any(len(d) > 256 or "\x00" in d for d in v.documents())
        # The node still serves its peers, durably.
        s = await w.session("after")
        s.state.set_memory("k", "v")
        assert await s.commit(replicas=1, timeout=10) == ["v"]
    # And what it logged loads again: nothing unloggable reached the disk.
    async with open_mesh(_cfg(tmp_path, "v", key=key)) as v2:
        assert v2.has_session("fine") and v2.has_session("after")


async def test_forged_rumours_about_a_live_node_do_not_kill_it(tmp_path):
    key = Keyring([os.urandom(32)])
    async with (
        open_mesh(_cfg(tmp_path, "v", key=key)) as v,
        open_mesh(_cfg(tmp_path, "w", seeds=[v.address], n=1, key=key)) as w,
    ):
        await wait_until("join", lambda: len(w.node.membership.live_members()) == 1)
        vandal = Vandal(key, w.address)
        try:
            inc = v.node.membership.incarnation
            vandal.send(
                MemberUpdate("v", v.address, inc + 3, "dead", "vandal"),
                MemberUpdate("v", v.address, 2**63 - 1, "dead", "vandal"),
            )
            # w may briefly believe the forged verdict; v hears it and refutes.
            await wait_until(
                "refutation",
                lambda: (
                    v.node.membership.incarnation > inc + 3
                    and w.node.membership.state_of("v") == "alive"
                ),
            )
        finally:
            vandal.close()
        assert w.stats["refused_messages"] >= 1  # the unrefutable one
        s = await v.session("still-here")
        s.state.set_memory("k", 1)
        assert await s.commit(replicas=1, timeout=10) == ["w"]


async def test_keyed_member_flood_over_loopback_is_capped_counted_and_survived(tmp_path):
    # Before the fix this one frame put 30,000 made-up members in v's table for a minute.
    key = Keyring([os.urandom(32)])
    n = 30_000
    async with open_mesh(_cfg(tmp_path, "v", key=key)) as v:
        ms = v.node.membership
        cap = ms.config.max_new_members
        vandal = Vandal(key, v.address)
        try:
            flood = made_up_members(n)
            # Its own record first: anti-entropy is served to members only.
            me = MemberUpdate("vandal", "127.0.0.1:9", 0, "alive", "vandal")
            vandal.send(
                MembershipSync((me, *flood[1:]), True),
                Digest(1, bytes(16), 9),
                *[Digest(2, bytes(16), 9)] * 999,
            )
            await wait_until("flood refused", lambda: ms.refused["envelope_cap"] == n - cap)
        finally:
            vandal.close()
        assert len(ms.members) == 1 + cap, len(ms.members)
        # The 1,000 digests of the same frame were answered once.
        assert v.node.replicator.stats.duplicates >= 999
        assert v.stats["refused_messages"] == 0  # capped, not refused: the frame's rest ran
        # v keeps serving: a real member still joins after the flood (both see each other
        # alive: v answers its probes) and v's writes still replicate to it: every rumour
        # push includes a member heard from first-hand, so the 2,048 fakes do not dilute it.
        async with open_mesh(_cfg(tmp_path, "w", seeds=[v.address], n=1, key=key)) as w:
            await wait_until("w joined", lambda: ms.state_of("w") == "alive")
            await wait_until("w sees v", lambda: w.node.membership.state_of("v") == "alive")
            s = await v.session("after-flood")
            s.state.set_memory("k", "v")
            assert await s.commit(replicas=1, timeout=20) == ["w"]
            assert len(w.node.membership.members) <= w.node.membership.config.max_members
        # ...and /metrics counts what the caps dropped.
        v.ops.refresh()
        text = v.ops.metrics.render().decode()
        line = f'statemesh_gossip_refused_total{{reason="envelope_cap"}} {float(n - cap)}'
        assert line in text, [x for x in text.splitlines() if "refused" in x]


async def test_seeded_bad_frames_over_loopback_are_counted_in_metrics_and_change_nothing(tmp_path):
    # Random, mutated, truncated and replayed frames over a real TCP connection, from an
    # outsider and from a peer holding the key: every one is rejected by reason, the exact
    # total shows in /metrics, and neither members nor documents change.
    r = random.Random(SEED)
    key = Keyring([os.urandom(32)])
    async with (
        open_mesh(_cfg(tmp_path, "v", key=key)) as v,
        open_mesh(_cfg(tmp_path, "w", seeds=[v.address], n=1, key=key)) as w,
    ):
        await wait_until("join", lambda: v.node.membership.state_of("w") == "alive")
        s = await w.session("before")
        s.state.set_memory("k", "v")
        assert await s.commit(replicas=1, timeout=10) == ["v"]
        members = sorted(v.node.membership.members)
        docs = {d: v.replica.fingerprint(d) for d in v.documents()}
        rejected_before = sum(v.codec.rejected.values())
        vandal = Vandal(key, v.address)
        sent: collections.Counter[str] = collections.Counter()
        try:
            good = vandal.codec.pack(time.time(), Envelope("vandal", "127.0.0.1:9", 0, ()))
            vandal.sock.sendall(length_prefixed(good))  # accepted once...
            for _ in range(300):
                kind = r.choice(["random", "mutated", "truncated", "replayed"])
                if kind == "random":
                    data = r.randbytes(r.randrange(1, 300))
                elif kind == "mutated":
                    data = bytearray(good)
                    for _ in range(r.randint(1, 4)):
                        data[r.randrange(len(data))] ^= r.randint(1, 255)
                    data = bytes(data)
                elif kind == "truncated":
                    data = good[: r.randrange(1, len(good))]
                else:
                    data = good  # ...and refused as a replay ever after
                sent[kind] += 1
                vandal.sock.sendall(length_prefixed(data))
            total = sum(sent.values())
            await wait_until(
                "every frame rejected",
                lambda: sum(v.codec.rejected.values()) - rejected_before == total,
            )
        finally:
            vandal.close()
        assert v.codec.rejected["replay"] >= sent["replayed"], (SEED, v.codec.rejected)
        assert sorted(v.node.membership.members) == members
        assert {d: v.replica.fingerprint(d) for d in v.documents()} == docs
        v.ops.refresh()
        text = v.ops.metrics.render().decode()
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("statemesh_gossip_frames_rejected_total{")
        )
        assert counted == sum(v.codec.rejected.values()) + sum(
            v.transport.stats.bad_frames.values()
        )
        assert counted >= total, (SEED, sent)
        # The node still serves its peer.
        s.state.set_memory("k", "after")
        assert await s.commit(replicas=1, timeout=10) == ["v"]


# --- silent and slow sockets -------------------------------------------------------------------

SHORT = TransportConfig(idle_timeout=0.5, frame_timeout=0.8, max_inbound_connections=16)


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset: cut just the same


async def test_silent_trickling_and_stalled_clients_are_cut_while_peers_are_served(tmp_path):
    async with open_mesh(_cfg(tmp_path, "v", insecure=True, transport=SHORT)) as v:
        host, port = v.address.rsplit(":", 1)
        stats = v.transport.stats
        hostile: dict[str, list[socket.socket]] = {"silent": [], "trickle": [], "stalled": []}
        for kind, socks in hostile.items():
            for _ in range(4):
                sock = socket.create_connection((host, int(port)), timeout=5)
                sock.setblocking(False)
                socks.append(sock)
                if kind == "stalled":
                    # Declares a maximum frame, sends a little of it, then nothing.
                    sock.send((1 << 20).to_bytes(4, "big") + b"x" * 100)
        try:
            async with open_mesh(
                _cfg(tmp_path, "w", seeds=[v.address], n=1, insecure=True, transport=SHORT)
            ) as w:
                await wait_until("join", lambda: len(v.node.membership.live_members()) == 1)
                s = await w.session("served")
                t_end = trio.current_time() + 10
                written = 0
                # One byte every 0.3 s: always "active", never a frame, for 10 s at most.
                while trio.current_time() < t_end:
                    for sock in hostile["trickle"]:
                        with contextlib.suppress(OSError):
                            sock.send(b"\x00")
                    s.state.set_memory("n", written)
                    written += 1
                    assert await s.commit(replicas=1, timeout=10) == ["v"]
                    if all(_closed_by_peer(x) for socks in hostile.values() for x in socks):
                        break
                    await trio.sleep(0.3)
                else:
                    raise AssertionError(f"hostile clients not all cut: {stats.connections_cut}")
                assert v.read_session("served").get_memory("n") == written - 1
            cut = stats.connections_cut
            assert cut["idle_timeout"] >= 4, cut  # the silent ones
            assert cut["frame_timeout"] >= 8, cut  # trickling and stalled frames
            # Memory: nothing of theirs is held once they are cut.
            await wait_until("inbound drained", lambda: v.transport.connections["inbound"] == 0)
            assert v.transport.queued_bytes == 0
        finally:
            for socks in hostile.values():
                for sock in socks:
                    sock.close()


async def test_connections_beyond_the_inbound_limit_are_refused_at_once(tmp_path):
    cfg = TransportConfig(idle_timeout=5.0, frame_timeout=5.0, max_inbound_connections=4)
    async with open_mesh(_cfg(tmp_path, "v", insecure=True, transport=cfg)) as v:
        host, port = v.address.rsplit(":", 1)
        # trio streams: a blocking connect here would stall the node's own accept loop.
        streams = [await trio.open_tcp_stream(host, int(port)) for _ in range(10)]
        try:
            await wait_until(
                "refusals", lambda: v.transport.stats.connections_cut["max_inbound"] >= 6
            )
            assert v.transport.connections["inbound"] <= 4
        finally:
            for stream in streams:
                await trio.aclose_forcefully(stream)


# --- API misuse ----------------------------------------------------------------------------------


async def test_api_misuse_gets_clear_errors_and_changes_nothing(tmp_path):
    async with open_mesh(_cfg(tmp_path, "a", insecure=True)) as a:
        s = await a.session("mine")
        s.state.set_memory("k", "v")
        await s.commit()
        fp = s.fingerprint()
        for bad in (2**64, float("nan"), object(), "x" * (10 << 20)):
            with pytest.raises(InvalidValue):
                s.state.set_memory("bad", bad)
        for kwargs in ({"replicas": -1}, {"replicas": "most"}, {"timeout": 0}, {"timeout": "1"}):
            with pytest.raises(LocalError):
                await s.commit(**kwargs)
        # Session ids whose document id the store cannot log ("session/" + 249 bytes) were
        # claimed in the ownership table before failing: refused up front now.
        for sid in ("", "x" * 249, "é" * 125, 7, "ctl\x01"):
            with pytest.raises(InvalidValue):
                await a.session(sid)
        assert (await a.session("x" * 248)).id == "x" * 248
        assert sorted(a.ownership.to_dict()) == ["session/mine", "session/" + "x" * 248]
        assert a.stats["pump_errors"] == 0
        assert s.fingerprint() == fp
        # A second node on the same data dir: refused while the first holds it.
        with pytest.raises(StorageError, match="lock|use|open"):
            async with open_mesh(_cfg(tmp_path, "a", insecure=True, listen="127.0.0.1:0")):
                pass
        async with open_mesh(_cfg(tmp_path, "b", seeds=[a.address], n=1, insecure=True)) as b:
            await wait_until("replica", lambda: b.has_session("mine"))
            other = await b.session("mine")
            with pytest.raises(NotOwner) as info:
                await other.commit()
            assert info.value.owner == "a"
    with pytest.raises(Closed):
        await s.commit()
    with pytest.raises(Closed):
        await a.session("late")


def _metric(mesh, reason: str) -> str:
    mesh.ops.refresh()
    text = mesh.ops.metrics.render().decode()
    return next(x for x in text.splitlines() if f'_refused_total{{reason="{reason}"}}' in x)


async def test_a_keyed_member_flood_costs_bounded_ownership_syncs_and_a_real_join_is_synced(
    tmp_path,
):
    # Before the fix every made-up member started its own ownership-sync task and
    # connection attempt: 2,048 at once, which stalled the loop for over a second.
    key = Keyring([os.urandom(32)])
    async with open_mesh(_cfg(tmp_path, "v", key=key)) as v:
        ms = v.node.membership
        failover = v.failover
        assert failover is not None
        cap = await flood_members(v, key, wait_until)
        await wait_until("syncs started", lambda: failover.sync_running == SYNC_WORKERS)
        # Bounded: never more exchanges in flight than workers, never more peers queued
        # than the queue holds; the rest were dropped and counted.
        assert failover.sync_peak == SYNC_WORKERS
        assert len(failover._sync_queue) <= SYNC_QUEUE
        dropped = v.stats["sync_dropped"]
        assert dropped >= cap - SYNC_QUEUE - SYNC_WORKERS, dropped
        assert v.stats["syncs_started"] <= cap - dropped
        assert failover.trips.outstanding() <= failover.trips.limit
        status = v.status()["sync"]
        assert status["peak"] == SYNC_WORKERS and status["dropped"] == dropped
        assert _metric(v, "sync_queue").endswith(f" {float(dropped)}")
        # A real member joining now is served first (newest first) and answers: its
        # exchange of the ownership table completes while the queue still holds fakes.
        async with open_mesh(_cfg(tmp_path, "w", seeds=[v.address], n=1, key=key)) as w:
            await wait_until("w joined", lambda: ms.state_of("w") == "alive")
            await wait_until("w synced", lambda: "w" in failover.trips.answered)
            assert failover.sync_peak == SYNC_WORKERS
            assert len(w.node.membership.members) <= w.node.membership.config.max_members


async def test_made_up_durable_vectors_stay_bounded_and_keep_no_node_behind(tmp_path):
    # Before the fix v kept every vector of every sender for every document: one frame
    # grew it by megabytes, and a keyed member's made-up documents held /readyz at 503.
    key = Keyring([os.urandom(32)])
    async with (
        open_mesh(_cfg(tmp_path, "v", key=key)) as v,
        open_mesh(_cfg(tmp_path, "w", seeds=[v.address], n=1, key=key)) as w,
    ):
        s = await w.session("real")
        s.state.set_memory("k", "v")
        assert await s.commit(replicas=1, timeout=10) == ["v"]
        await wait_until("v ready", lambda: v.ops.readiness().ready)
        replicator = v.node.replicator
        real = replicator.durable_entries
        doc = pycrdt.Doc(client_id=4242)
        with doc.transaction():
            doc.get("m", type=pycrdt.Map)["k"] = 1
        sv = doc.get_state()
        per_frame, frames = 10_000, 4
        vandal = Vandal(key, v.address)
        try:
            # Made-up senders (never members): acks and anti-entropy vectors.
            for i in range(200):
                vandal.send_as(f"ghost{i}", ReplicaAck(((f"made-up/{i}", sv),)))
            ghost_docs = tuple((f"ghost-doc/{i}", sv, b"", sv) for i in range(per_frame))
            vandal.send_as("ghost-av", DocVectors(7, (), ghost_docs, True))
            # A member that is keyed and hostile (w's own sealer, so v takes these for
            # w's frames): vectors of documents nobody holds.
            me = w.node.membership
            for f in range(frames):
                entries = tuple((f"made-up/{f}/{i}", sv) for i in range(per_frame))
                env = Envelope("w", w.address, me.incarnation, (ReplicaAck(entries),))
                vandal.sock.sendall(length_prefixed(w.codec.pack(time.time(), env)))
            flood = 200 + frames * per_frame  # ghost-av's request is refused before its vectors
            limit = replicator.config.max_unknown_durable
            await wait_until("refused", lambda: replicator.stats.durable_refused >= flood - limit)
            assert v.node.membership.refused["non_member"] == 1
        finally:
            vandal.close()
        assert replicator.durable_entries <= real + limit, replicator.durable_entries
        assert not any(n.startswith("ghost") for n in replicator._peer_durable)
        assert _metric(v, "durable_vectors").endswith(f" {float(replicator.stats.durable_refused)}")
        # The made-up documents count as behind only until nobody served them for
        # `unserved_after` (shortened here; 10 s by default): then v is behind nobody
        # (before the fix, behind w for ever: 503 once past ready_lag).
        v.ops.catch_up.unserved_after = 0.5
        await wait_until("unserved", lambda: v.ops.readiness().behind == {})
        readiness = v.ops.readiness()
        assert readiness.ready and v.ops.catch_up.unserved == limit, readiness
        # (w may be suspect a moment: v spent a while on the flood instead of its probes.)
        assert v.node.membership.is_live("w")
        # Commits still count the real peer, and only it.
        s = await v.session("after")
        s.state.set_memory("k", "v")
        assert await s.commit(replicas=1, timeout=10) == ["w"]
