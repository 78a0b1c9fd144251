"""Tests of gossip.replication: rumours, anti-entropy, chunked diffs and replica acks.

Most tests run a tiny deterministic network in the test itself: N `Replicator`s over
`MemoryReplica`s, a seeded `random.Random` deciding delivery order, loss, duplication and
partitions. Every assertion message carries the seed so a failure replays exactly.
"""

from __future__ import annotations

import math
import random

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_types.docs import MAX_DOC_ID_BYTES
from crdt_types.errors import InvalidValue, LocalError
from crdt_types.fingerprint import fingerprint
from gossip import messages as m
from gossip.codec import decode_envelope, encode_envelope
from gossip.framing import MAX_FRAME_BYTES
from gossip.replica import MemoryReplica
from gossip.replication import (
    RETRANSMIT_SPREAD,
    DocumentUpdated,
    ReplicaAcked,
    ReplicationConfig,
    Replicator,
    approx_size,
)

FAST = ReplicationConfig(anti_entropy_interval=0.0, resync_delay=0.0)


# --- helpers ---------------------------------------------------------------------------


def write(replica: MemoryReplica, doc_id: str, fn) -> bytes:
    """Run `fn(doc)` in one transaction on `doc_id`; return the update it produced."""
    doc = replica.doc(doc_id)
    updates: list[bytes] = []
    sub = doc.observe(lambda event: updates.append(event.update))
    try:
        with doc.transaction():
            fn(doc)
    finally:
        doc.unobserve(sub)
    replica.changed(doc_id)
    assert len(updates) == 1, updates
    return updates[0]


def text(doc: pycrdt.Doc) -> pycrdt.Text:
    return doc.get("t", type=pycrdt.Text)


def content(replica: MemoryReplica, doc_id: str) -> tuple[str, list]:
    doc = replica.doc(doc_id)
    return str(text(doc)), sorted(doc.get("m", type=pycrdt.Map).to_py().items())


def random_edit(rng: random.Random, doc: pycrdt.Doc) -> None:
    """An insert, a text delete, a map set or a map delete."""
    t = text(doc)
    mp = doc.get("m", type=pycrdt.Map)
    roll = rng.random()
    if roll < 0.25 and len(t) > 2:
        start = rng.randrange(len(t) - 1)
        del t[start : start + rng.randint(1, 2)]
    elif roll < 0.4 and len(mp) > 0:
        del mp[rng.choice(sorted(mp.keys()))]
    elif roll < 0.6:
        mp[f"k{rng.randrange(5)}"] = rng.randrange(1000)
    else:
        t.insert(rng.randrange(len(t) + 1), rng.choice("abcdef") * rng.randint(1, 3))


def wire_bytes(sender: str, msg: object) -> bytes:
    """`msg` encoded alone in an envelope, as it would travel."""
    return encode_envelope(m.Envelope(sender, "127.0.0.1:1", 1, (msg,)))


class Net:
    """A seeded in-test network of replicators with loss, duplication and partitions."""

    def __init__(self, n: int, seed: int, config: ReplicationConfig = FAST, **faults) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = [f"n{i}" for i in range(n)]
        self.replicas = {i: MemoryReplica() for i in self.ids}
        self.nodes = {
            i: Replicator(i, self.replicas[i], random.Random(f"{seed}/{i}"), config)
            for i in self.ids
        }
        self.loss = faults.get("loss", 0.0)
        self.dup = faults.get("dup", 0.0)
        self.wire = faults.get("wire", True)
        self.blocked: set[frozenset[str]] = set()
        self.inflight: list[tuple[str, str, object]] = []
        self.events: dict[str, list[object]] = {i: [] for i in self.ids}
        self.sent: list[tuple[str, str, object]] = []
        self.now = 0.0
        for node in self.nodes.values():
            node.set_peers(self.ids)

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        self.blocked = {frozenset((a, b)) for a in side_a for b in side_b}

    def heal(self) -> None:
        self.blocked = set()

    def post(self, sender: str, sends) -> None:
        for dest, msg in sends:
            assert dest != sender, f"seed {self.seed}: {sender} sent to itself"
            if self.wire:
                # Through the real codec: the message shapes must survive the wire.
                (msg,) = decode_envelope(wire_bytes(sender, msg)).messages
            self.sent.append((sender, dest, msg))
            if frozenset((sender, dest)) in self.blocked or self.rng.random() < self.loss:
                continue
            self.inflight.append((dest, sender, msg))
            if self.rng.random() < self.dup:
                self.inflight.append((dest, sender, msg))

    def deliver(self, max_messages: int = 200_000) -> None:
        """Deliver everything in flight (and what it causes) in random order."""
        for _ in range(max_messages):
            if not self.inflight:
                return
            k = self.rng.randrange(len(self.inflight))
            self.inflight[k], self.inflight[-1] = self.inflight[-1], self.inflight[k]
            dest, sender, msg = self.inflight.pop()
            sends, events = self.nodes[dest].receive(self.now, sender, msg)
            self.events[dest].extend(events)
            self.post(dest, sends)
        raise AssertionError(f"seed {self.seed}: network did not go quiet")

    def local(self, node: str, doc_id: str, fn) -> bytes:
        update = write(self.replicas[node], doc_id, fn)
        self.post(node, self.nodes[node].on_local_update(self.now, doc_id, update))
        return update

    def round(self, deliver: bool = True) -> None:
        self.now += 0.2
        for i in self.ids:
            self.post(i, self.nodes[i].tick(self.now, self.ids))
        if deliver:
            self.deliver()

    def converged(self) -> bool:
        docs = set().union(*(set(r.doc_ids()) for r in self.replicas.values()))
        for doc_id in docs:
            fps = {fingerprint(r.doc(doc_id)) for r in self.replicas.values()}
            if len(fps) != 1:
                return False
        return len({n.root for n in self.nodes.values()}) == 1

    def run_until_converged(self, max_rounds: int) -> int:
        for r in range(1, max_rounds + 1):
            self.round()
            if self.converged():
                return r
        raise AssertionError(f"seed {self.seed}: not converged after {max_rounds} rounds")

    def assert_same_content(self) -> None:
        docs = sorted(set().union(*(set(r.doc_ids()) for r in self.replicas.values())))
        for doc_id in docs:
            seen = {repr(content(r, doc_id)) for r in self.replicas.values()}
            assert len(seen) == 1, f"seed {self.seed}: {doc_id} differs: {seen}"


# --- rumours ---------------------------------------------------------------------------


def test_local_update_is_pushed_to_fanout_peers_and_applied():
    net = Net(6, seed=1, config=ReplicationConfig(fanout=2, anti_entropy_interval=1e9))
    sends = net.nodes["n0"].on_local_update(0.0, "d", write(net.replicas["n0"], "d", _hello))
    assert len(sends) == 2 and {type(msg) for _, msg in sends} == {m.DocUpdate}
    net.post("n0", sends)
    net.deliver()
    reached = [i for i in net.ids if content(net.replicas[i], "d")[0] == "hello"]
    # Each receiver forwards to 2 more: the rumour spreads beyond the first two peers.
    assert len(reached) > 3
    for i in reached[1:]:
        if i != "n0":
            assert DocumentUpdated("d", "n0") in net.events[i]


def _hello(doc: pycrdt.Doc) -> None:
    text(doc).insert(0, "hello")


def test_rumours_stop_after_retransmit_limit():
    cfg = ReplicationConfig(fanout=1, retransmit_mult=2, anti_entropy_interval=1e9)
    net = Net(9, seed=2, config=cfg)  # N=9: 2 * ceil(log10(10)) = 2 rounds
    net.local("n0", "d", _hello)
    net.inflight.clear()
    rounds = 0
    for _ in range(10):  # the first tick only lets the first copies' acks arrive
        net.now += 0.2
        sends = net.nodes["n0"].tick(net.now, net.ids)
        rounds += any(isinstance(msg, m.DocUpdate) for _, msg in sends)
    assert rounds == 2 * math.ceil(math.log10(10))
    assert net.nodes["n0"].pending_rumours == 0


def test_duplicate_update_is_neither_applied_nor_forwarded():
    a, b = MemoryReplica(), MemoryReplica()
    ra = Replicator("a", a, random.Random(3), FAST)
    rb = Replicator("b", b, random.Random(4), FAST)
    # More peers than the fanout: the writer cannot have reached them all, so b forwards.
    rb.set_peers(["a", "c", "d", "e", "f"])
    ra.set_peers(["b"])
    (dest, msg), *_ = ra.on_local_update(0.0, "d", write(a, "d", _hello))
    sends1, events1 = rb.receive(0.0, "a", msg)
    sends2, events2 = rb.receive(0.0, "c", msg)
    assert events1 == [DocumentUpdated("d", "a")] and events2 == []
    assert any(isinstance(x, m.DocUpdate) for _, x in sends1)
    assert not any(isinstance(x, m.DocUpdate) for _, x in sends2)
    assert rb.stats.duplicates == 1


# --- garbage ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        m.DocUpdate("d", b"\xff\xfe garbage"),
        m.DocUpdate("d", b""),
        m.DocDiff("d", 1, 0, 1, b"\x01\x02\x03"),
        m.DocDiff("d", 1, 0, 1, b"\x05" * 40),
    ],
    ids=["update-garbage", "update-empty", "diff-short", "diff-garbage"],
)
def test_garbage_update_is_counted_and_changes_nothing(msg):
    replica = MemoryReplica()
    node = Replicator("b", replica, random.Random(5), FAST)
    write(replica, "d", _hello)
    node.refresh("d")
    before_fp, before_root = replica.fingerprint("d"), node.root
    sends, events = node.receive(0.0, "a", msg)
    assert node.stats.rejected == 1
    assert events == [] and not any(isinstance(x, m.DocUpdate) for _, x in sends)
    assert not any(isinstance(x, m.ReplicaAck) for _, x in sends)
    assert fingerprint(replica.doc("d")) == before_fp and node.root == before_root
    assert content(replica, "d")[0] == "hello"


def test_garbage_for_unknown_document_creates_nothing():
    replica = MemoryReplica()
    node = Replicator("b", replica, random.Random(6), FAST)
    node.receive(0.0, "a", m.DocUpdate("new", b"\x01garbage"))
    assert not replica.has("new") and len(replica) == 0
    assert node.stats.rejected == 1


@pytest.mark.parametrize(
    "msg",
    [
        m.DocUpdate("", b"\x00\x00"),
        m.DocVectors(1, (), (("d", b"\xff\xff", b"", b"\x00"),), True),
        m.DocVectors(1, (99999,), (), True),
        m.DocVectors(1, (), (("d", b"\x00"),), True),
        m.ReplicaAck((("d", b"\x80"),)),
        m.DocDiff("d", 7, 3, 2, b"x"),
        m.DocDiff("d", 7, 0, 0, b"x"),
        m.DocDiff("d", 7, 0, 10**9, b"x"),
    ],
    ids=[
        "empty-doc-id",
        "bad-state-vector",
        "bucket-out-of-range",
        "short-entry",
        "bad-ack-vector",
        "chunk-index-past-end",
        "zero-chunks",
        "too-many-chunks",
    ],
)
def test_malformed_messages_are_counted_and_dropped(msg):
    replica = MemoryReplica()
    node = Replicator("b", replica, random.Random(7), FAST)
    write(replica, "d", _hello)
    node.refresh("d")
    before = (replica.fingerprint("d"), node.root)
    sends, events = node.receive(0.0, "a", msg)
    assert node.stats.malformed == 1, node.stats
    assert sends == [] and events == []
    assert (replica.fingerprint("d"), node.root) == before
    assert node.peer_durable("a", "d") is None


def test_non_replication_message_is_a_local_error():
    node = Replicator("b", MemoryReplica(), random.Random(8), FAST)
    with pytest.raises(LocalError):
        node.receive(0.0, "a", m.Ping(1, "b"))


# --- convergence -----------------------------------------------------------------------


def partitioned_scenario(seed: int, config: ReplicationConfig) -> Net:
    """Random inserts and deletes on random nodes of a lossy, duplicating, partitioned net."""
    rng = random.Random(seed)
    net = Net(6, seed, config, loss=0.2, dup=0.1)
    docs = ["session/a", "session/b", "cluster"]
    net.partition(net.ids[:3], net.ids[3:])
    for step in range(60):
        net.local(rng.choice(net.ids), rng.choice(docs), lambda d: random_edit(rng, d))
        if step % 5 == 0:
            net.round()
    for _ in range(10):  # rumours run out while the partition lasts
        net.round()
    assert net.nodes["n0"].pending_rumours == 0
    assert not net.converged(), f"seed {seed}: the partition changed nothing"
    net.heal()
    for step in range(20):  # more writes after the partition heals, still lossy
        net.local(rng.choice(net.ids), rng.choice(docs), lambda d: random_edit(rng, d))
        net.round(deliver=step % 2 == 0)
    net.deliver()
    return net


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_writes_converge_under_loss_duplication_reordering_and_partition(seed):
    net = partitioned_scenario(seed, FAST)
    net.run_until_converged(max_rounds=30)  # still 20 % loss and 10 % duplication
    net.assert_same_content()


def test_without_anti_entropy_the_partition_scenario_does_not_converge():
    """Control for the test above: rumours alone do not heal a partition."""
    cfg = ReplicationConfig(anti_entropy_interval=1e9, resync_delay=1e9)
    net = partitioned_scenario(11, cfg)
    for _ in range(30):
        net.round()
    assert not net.converged()


@pytest.mark.parametrize("seed", [1, 2])
def test_thirty_nodes_converge_within_two_log2_n_rounds_of_the_last_write(seed):
    rng = random.Random(seed)
    net = Net(30, seed, loss=0.1, dup=0.05)
    for step in range(40):
        net.local(rng.choice(net.ids), rng.choice("abc"), lambda d: random_edit(rng, d))
        if step % 4 == 0:
            net.round()
    rounds = net.run_until_converged(max_rounds=60)
    assert rounds <= 2 * math.log2(30), f"seed {seed}: {rounds} rounds"
    net.assert_same_content()


def test_lost_pure_delete_is_healed_by_anti_entropy():
    net = Net(3, seed=21)
    net.local("n0", "d", _hello)
    net.deliver()
    assert net.converged()
    sv_before = net.replicas["n0"].state_vector("d")

    def delete(doc: pycrdt.Doc) -> None:
        del text(doc)[0:2]

    net.local("n0", "d", delete)
    net.inflight.clear()  # every copy of the delete rumour is lost
    # A pure delete does not move the state vector: only the fingerprint tells.
    assert net.replicas["n0"].state_vector("d") == sv_before
    assert net.replicas["n1"].state_vector("d") == sv_before
    assert not net.converged()
    # Rumour retransmits are off the table too: the writer forgets its rumours.
    net.nodes["n0"]._rumours.clear()
    net.run_until_converged(max_rounds=6)
    assert all(content(r, "d")[0] == "llo" for r in net.replicas.values())
    assert net.nodes["n0"].stats.diffs_sent >= 1


def test_out_of_order_rumours_leave_no_gap_after_resync():
    """Yrs may integrate an update that arrived before its gap-filler only partly (FIELD-NOTES)."""
    cfg = ReplicationConfig(anti_entropy_interval=1e9, resync_delay=0.0)
    gaps = 0
    for seed in range(12):
        rng = random.Random(seed)
        a, b = MemoryReplica(), MemoryReplica()
        ra = Replicator("a", a, random.Random(seed), cfg)
        rb = Replicator("b", b, random.Random(seed + 100), cfg)
        ra.set_peers(["b"])
        rb.set_peers(["a"])
        rumours = []
        for _ in range(20):
            update = write(a, "d", lambda d: random_edit(rng, d))  # noqa: B023
            rumours += [msg for _, msg in ra.on_local_update(0.0, "d", update)]
        rng.shuffle(rumours)
        for msg in rumours:
            rb.receive(0.0, "a", msg)
        gap = fingerprint(b.doc("d")) != fingerprint(a.doc("d"))
        gaps += gap
        # One tick later b re-requests what the rumours promised but did not deliver.
        pending = [(d, x) for d, x in rb.tick(1.0, ["a"]) if isinstance(x, m.DocVectors)]
        for _ in range(4):
            nxt = []
            for dest, msg in pending:
                src, dst = ("b", ra) if dest == "a" else ("a", rb)
                nxt += dst.receive(1.0, src, msg)[0]
            pending = nxt
        assert fingerprint(b.doc("d")) == fingerprint(a.doc("d")), f"seed {seed}"
        assert content(b, "d") == content(a, "d"), f"seed {seed}"
        if gap:  # healed by the targeted re-request, not by a digest exchange
            assert rb.stats.resyncs_requested == 1, f"seed {seed}"
            assert ra.stats.diffs_sent >= 1 and ra.stats.digests_sent == 0, f"seed {seed}"
    assert gaps > 0, "no delivery order produced a gap: the scenario is not exercised"


# --- chunked transfers -------------------------------------------------------------------


def big_pair(seed: int, chunk_bytes: int = 512):
    cfg = ReplicationConfig(anti_entropy_interval=0.0, chunk_bytes=chunk_bytes)
    a, b = MemoryReplica(), MemoryReplica()
    ra = Replicator("a", a, random.Random(seed), cfg)
    rb = Replicator("b", b, random.Random(seed + 1), cfg)
    rng = random.Random(seed)
    for i in range(40):
        write(a, "big", lambda d: text(d).insert(0, "".join(rng.choice("xyz") for _ in range(300))))  # noqa: B023
        if i % 3 == 0:
            write(a, "big", lambda d: text(d).__delitem__(slice(5, 20)))
    ra.rebuild()
    return a, b, ra, rb


def exchange_chunks(ra: Replicator, rb: Replicator, now: float = 0.0) -> list[m.DocDiff]:
    """Run one anti-entropy exchange a -> b; return the diff chunks a sent to b, undelivered."""
    ((_, digest),) = [x for x in ra.tick(now, ["b"]) if isinstance(x[1], m.Digest)]
    ((_, buckets),) = rb.receive(now, "a", digest)[0]
    sends_a = ra.receive(now, "b", buckets)[0]
    chunks: list[m.DocDiff] = []
    for _, msg in sends_a:
        for _, reply in rb.receive(now, "a", msg)[0]:
            for _, msg2 in ra.receive(now, "b", reply)[0]:
                assert isinstance(msg2, m.DocDiff)
                chunks.append(msg2)
    return chunks


def test_big_document_travels_in_chunks_reordered_and_duplicated():
    a, b, ra, rb = big_pair(31)
    chunks = exchange_chunks(ra, rb)
    assert len(chunks) > 10 and all(len(c.data) <= 512 for c in chunks)
    assert len({c.transfer for c in chunks}) == 1
    rng = random.Random(31)
    delivery = chunks + rng.sample(chunks, 5)
    rng.shuffle(delivery)
    events = []
    for c in delivery:
        events += rb.receive(0.0, "a", c)[1]
    assert events.count(DocumentUpdated("big", "a")) == 1
    assert fingerprint(b.doc("big")) == fingerprint(a.doc("big"))
    assert rb.buffered_bytes == 0 and rb.stats.malformed == 0


def test_missing_chunk_is_expired_then_healed_by_next_round():
    a, b, ra, rb = big_pair(32)
    chunks = exchange_chunks(ra, rb)
    lost = random.Random(32).randrange(len(chunks))
    for i, c in enumerate(chunks):
        if i != lost:
            rb.receive(0.0, "a", c)
    assert not b.has("big") or fingerprint(b.doc("big")) != fingerprint(a.doc("big"))
    assert rb.buffered_bytes > 0
    later = rb.config.transfer_timeout + 1.0
    rb.tick(later, ["a"])  # the stale transfer is dropped
    assert rb.buffered_bytes == 0 and rb.stats.transfers_expired == 1
    for c in exchange_chunks(ra, rb, now=later):
        rb.receive(later, "a", c)
    assert fingerprint(b.doc("big")) == fingerprint(a.doc("big"))


def packed_frames(src: str, sends) -> list[bytes]:
    """Pack one call's output like gossip.node does: one envelope per destination."""
    by_dest: dict[str, list[object]] = {}
    for dest, msg in sends:
        by_dest.setdefault(dest, []).append(msg)
    return [encode_envelope(m.Envelope(src, "127.0.0.1:1", 1, tuple(x))) for x in by_dest.values()]


def test_every_frame_fits_when_a_call_returns_megabytes():
    a, b, ra, rb = big_pair(33, chunk_bytes=ReplicationConfig().chunk_bytes)
    for _ in range(6):  # ~4 MB of text
        write(a, "big", lambda d: text(d).insert(0, "q" * 700_000))
    ra.rebuild()
    nodes = {"a": ra, "b": rb}
    now = 1.0
    inflight = [("a", "b", msg) for _, msg in ra.tick(now, ["b"])]
    frames = 0
    for _ in range(100):
        if not inflight and not ra.outbox_bytes:
            break
        now += 0.2
        batch, inflight = inflight, []
        for dest in ("a", "b"):  # each peer's messages arrive in one envelope per sender
            for src in ("a", "b"):
                msgs = [x for s, d, x in batch if (s, d) == (src, dest)]
                sends = []
                for msg in msgs:
                    sends += nodes[dest].receive(now, src, msg)[0]
                for data in packed_frames(dest, sends):
                    assert len(data) < MAX_FRAME_BYTES
                    frames += 1
                inflight += [(dest, d, x) for d, x in sends]
        sends = ra.tick(now, ["b"])
        assert all(len(f) < MAX_FRAME_BYTES for f in packed_frames("a", sends))
        inflight += [("a", d, x) for d, x in sends]
    assert fingerprint(b.doc("big")) == fingerprint(a.doc("big"))
    assert ra.stats.sends_deferred > 0 and ra.stats.chunks_sent > 4 and frames > 4
    assert ra.outbox_bytes == 0 and rb.buffered_bytes == 0


def test_approx_size_bounds_the_encoded_size():
    msgs = [
        m.DocDiff("session/x", 2**62, 3, 9, b"z" * 5000),
        m.DocUpdate("d", b"u" * 300, "origin", b"\x01\x02\x03"),
        m.DocVectors(7, (1, 2, 3), (("d", b"\x00", b"f" * 32, b"\x00"),) * 50, True),
        m.DigestBuckets(7, (b"h" * 16,) * 256, True),
        m.ReplicaAck((("d", b"\x01\x05\x06"),) * 20),
        m.DocUpdate("d", b"u" * 300, "origin", b"\x01\x02\x03", b"r" * 8),
        m.ReplicaAck((("séance/\u00e9\U0001f600", b"\x01\x05\x06" * 9),) * 20),
    ]
    for msg in msgs:
        assert approx_size(msg) >= len(wire_bytes("a", msg)) - 32, msg


def test_big_local_update_is_pushed_in_chunks():
    cfg = ReplicationConfig(chunk_bytes=1024)
    a, b = MemoryReplica(), MemoryReplica()
    ra = Replicator("a", a, random.Random(34), cfg)
    rb = Replicator("b", b, random.Random(35), cfg)
    ra.set_peers(["b"])
    sends = ra.on_local_update(0.0, "d", write(a, "d", lambda d: text(d).insert(0, "z" * 5000)))
    assert len(sends) > 1 and all(isinstance(x, m.DocDiff) for _, x in sends)
    assert ra.pending_rumours == 0
    for _, msg in reversed(sends):
        rb.receive(0.0, "a", msg)
    assert content(b, "d") == content(a, "d")


def _chunks(doc_id="d", transfer=9, n=4, size=10, start=0):
    return [m.DocDiff(doc_id, transfer, i, n, bytes([65 + i]) * size) for i in range(start, n)]


def test_conflicting_chunk_drops_the_transfer():
    rb = Replicator("b", MemoryReplica(), random.Random(36), FAST)
    first, second, *_ = _chunks()
    rb.receive(0.0, "a", first)
    rb.receive(0.0, "a", second)
    rb.receive(0.0, "a", m.DocDiff("d", 9, 1, 4, b"different"))
    assert rb.stats.malformed == 1 and rb.buffered_bytes == 0


def test_chunk_naming_another_document_or_count_drops_the_transfer():
    rb = Replicator("b", MemoryReplica(), random.Random(37), FAST)
    rb.receive(0.0, "a", _chunks()[0])
    rb.receive(0.0, "a", m.DocDiff("other", 9, 1, 4, b"x"))
    assert rb.stats.malformed == 1 and rb.buffered_bytes == 0
    rb.receive(0.0, "a", _chunks()[0])
    rb.receive(0.0, "a", m.DocDiff("d", 9, 1, 5, b"x"))
    assert rb.stats.malformed == 2 and rb.buffered_bytes == 0


def test_reassembly_buffers_are_bounded_in_count_and_size():
    cfg = ReplicationConfig(max_transfers=3, max_transfer_bytes=25, max_buffered_bytes=45)
    rb = Replicator("b", MemoryReplica(), random.Random(38), cfg)
    for transfer in range(10):  # ten transfers, never finished
        rb.receive(0.0, "a", _chunks(transfer=transfer)[0])
    assert len(rb._transfers) == 3 and rb.stats.transfers_evicted == 7
    assert rb.buffered_bytes == 30
    rb.receive(0.0, "a", _chunks(transfer=100)[0])  # 40 bytes buffered: still under 45
    rb.receive(0.0, "a", _chunks(transfer=100)[1])  # 50 > 45: the oldest others go
    assert rb.buffered_bytes <= 45
    rb.receive(0.0, "a", _chunks(transfer=100)[2])  # 30 > 25 for one transfer: dropped
    assert rb.stats.malformed == 1 and (("a", 100) not in rb._transfers)


# --- idle cost ----------------------------------------------------------------------------


class CountingReplica(MemoryReplica):
    """A MemoryReplica that counts the port calls made on it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def state_vector(self, doc_id):
        self.calls += 1
        return super().state_vector(doc_id)

    def fingerprint(self, doc_id):
        self.calls += 1
        return super().fingerprint(doc_id)

    def diff(self, doc_id, remote_sv):
        self.calls += 1
        return super().diff(doc_id, remote_sv)


def idle_round(docs: int) -> tuple[int, int, int]:
    """(messages, encoded bytes, replica calls) of one anti-entropy round between equals."""
    a, b = CountingReplica(), CountingReplica()
    for i in range(docs):
        update = write(a, f"session/{i}", lambda d: text(d).insert(0, "x"))  # noqa: B023
        b.apply(f"session/{i}", update)
    ra = Replicator("a", a, random.Random(41), FAST)
    rb = Replicator("b", b, random.Random(42), FAST)
    assert ra.root == rb.root
    a.calls = b.calls = 0
    pending = [("a", dest, msg) for dest, msg in ra.tick(1.0, ["b"])]
    messages = size = 0
    while pending:
        src, dest, msg = pending.pop()
        messages += 1
        size += len(wire_bytes(src, msg))
        node = {"a": ra, "b": rb}[dest]
        pending += [(dest, d, x) for d, x in node.receive(1.0, src, msg)[0]]
    return messages, size, a.calls + b.calls


def test_idle_anti_entropy_costs_the_same_for_1000_and_10000_documents():
    small, large = idle_round(1_000), idle_round(10_000)
    assert small == large, (small, large)
    messages, size, calls = large
    assert messages == 1 and calls == 0 and size < 100


def test_one_changed_document_among_many_sends_one_bucket():
    a, b = MemoryReplica(), MemoryReplica()
    for i in range(2_000):
        update = write(a, f"session/{i}", lambda d: text(d).insert(0, "x"))  # noqa: B023
        b.apply(f"session/{i}", update)
    write(a, "session/7", lambda d: text(d).insert(0, "new"))
    ra = Replicator("a", a, random.Random(43), FAST)
    rb = Replicator("b", b, random.Random(44), FAST)
    ((_, digest),) = ra.tick(1.0, ["b"])
    ((_, buckets),) = rb.receive(1.0, "a", digest)[0]
    ((_, vectors),) = ra.receive(1.0, "b", buckets)[0]
    assert isinstance(vectors, m.DocVectors) and len(vectors.bucket_ids) == 1
    assert len(vectors.entries) < 30  # ~2000/256 per bucket, not 2000
    sends, _ = rb.receive(1.0, "a", vectors)
    for _, msg in sends:
        for _, x in ra.receive(1.0, "b", msg)[0]:
            rb.receive(1.0, "a", x)
    assert content(b, "session/7") == content(a, "session/7")
    assert ra.root == rb.root


# --- replica acks --------------------------------------------------------------------------


class LaggingReplica(MemoryReplica):
    """A replica whose durable state trails until `persist` is called (like a WAL)."""

    def __init__(self) -> None:
        super().__init__()
        self.durable: dict[str, bytes] = {}

    def durable_state_vector(self, doc_id):
        return self.durable.get(doc_id, b"\x00")

    def persist(self, doc_id):
        self.durable[doc_id] = self.state_vector(doc_id)


def test_replica_ack_reports_durable_vector_only_after_on_durable():
    a, b = MemoryReplica(), LaggingReplica()
    ra = Replicator("a", a, random.Random(51), FAST)
    rb = Replicator("b", b, random.Random(52), FAST)
    ra.set_peers(["b"])
    rb.set_peers(["a"])
    ((_, rumour),) = ra.on_local_update(0.0, "d", write(a, "d", _hello))
    sends, _ = rb.receive(0.0, "a", rumour)
    assert not any(isinstance(x, m.ReplicaAck) for _, x in sends)
    assert not any(isinstance(x, m.ReplicaAck) for _, x in rb.tick(0.2, ["a"]))
    b.persist("d")
    ((dest, ack),) = rb.on_durable(0.3, "d")
    assert dest == "a" and ack == m.ReplicaAck((("d", b.state_vector("d")),))
    sends, events = ra.receive(0.3, "b", ack)
    assert events == [ReplicaAcked("b", "d", b.state_vector("d"))]
    assert ra.peer_durable("b", "d") == a.state_vector("d")
    assert ra.replicas_covering("d", a.state_vector("d")) == ["b"]
    # The same ack again is not news.
    assert ra.receive(0.4, "b", ack)[1] == []
    # Nothing more is owed once everything is durable.
    assert rb.on_durable(0.5, "d") == []


def test_acks_are_batched_per_peer_and_reach_the_origin():
    a, b = MemoryReplica(), LaggingReplica()
    rb = Replicator("b", b, random.Random(53), FAST)
    rb.set_peers(["a", "c"])
    for doc_id in ("d1", "d2", "d3"):
        update = write(a, doc_id, _hello)
        rb.receive(0.0, "c", m.DocUpdate(doc_id, update, "a", a.state_vector(doc_id)))
        b.persist(doc_id)
    sends = rb.on_durable_many(0.1, ["d1", "d2", "d3"])
    acks = {dest: msg for dest, msg in sends}
    assert set(acks) == {"a", "c"} and len(sends) == 2
    for msg in acks.values():
        assert [e[0] for e in msg.entries] == ["d1", "d2", "d3"]


def test_anti_entropy_teaches_writers_durable_vectors():
    net = Net(2, seed=54)
    net.local("n0", "d", _hello)
    net.inflight.clear()  # no rumour and so no ack: only anti-entropy
    net.nodes["n0"]._rumours.clear()
    net.run_until_converged(max_rounds=3)
    net.round()
    sv = net.replicas["n0"].state_vector("d")
    assert net.nodes["n0"].peer_durable("n1", "d") == sv
    assert ReplicaAcked("n1", "d", sv) in net.events["n0"]


# --- sessions and config -----------------------------------------------------------------


def test_unsolicited_bucket_reply_is_ignored():
    replica = MemoryReplica()
    write(replica, "d", _hello)
    rb = Replicator("b", replica, random.Random(61), FAST)
    sends, _ = rb.receive(0.0, "a", m.DigestBuckets(12345, (b"\x00" * 16,) * 256, True))
    assert sends == [] and rb.stats.unsolicited == 1


def test_bucket_count_mismatch_is_malformed():
    replica = MemoryReplica()
    rb = Replicator("b", replica, random.Random(62), FAST)
    ((_, digest),) = rb.tick(0.0, ["a"])
    sends, _ = rb.receive(0.0, "a", m.DigestBuckets(digest.session, (b"\x01" * 16,) * 8, True))
    assert sends == [] and rb.stats.malformed == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fanout": 0},
        {"buckets": 0},
        {"buckets": 1 << 20},
        {"chunk_bytes": MAX_FRAME_BYTES},
        {"anti_entropy_interval": -1.0},
        {"max_transfers": "3"},
        {"fanout": True},
        {"fanout": 2.5},
        {"max_send_bytes": MAX_FRAME_BYTES},
        {"chunk_bytes": 600_000, "max_send_bytes": 500_000},
    ],
)
def test_bad_config_is_a_local_error(kwargs):
    with pytest.raises(LocalError):
        ReplicationConfig(**kwargs)


def test_bad_constructor_and_local_update_arguments_are_local_errors():
    with pytest.raises(LocalError):
        Replicator("", MemoryReplica(), random.Random(1))
    with pytest.raises(LocalError):
        Replicator("a", MemoryReplica(), 7)  # type: ignore[arg-type]
    node = Replicator("a", MemoryReplica(), random.Random(1))
    with pytest.raises(LocalError):
        node.on_local_update(0.0, "d", "not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "doc_id", [7, None, b"d", "", "a\x00b", "x" * (MAX_DOC_ID_BYTES + 1), "\ud800"]
)
def test_local_update_refuses_a_bad_id_with_the_doc_id_rule_and_sends_nothing(doc_id):
    peers = [f"p{i}" for i in range(10)]  # more than the fanout: a rumour would retransmit
    a = MemoryReplica()
    node = Replicator("a", a, random.Random(1))
    node.set_peers(peers)
    update = write(a, "d", _hello)
    with pytest.raises(InvalidValue, match="document id"):
        node.on_local_update(0.0, doc_id, update)
    # No rumour was started: the next rounds have nothing to retransmit.
    later = [x for t in (0.5, 1.0) for _, x in node.tick(t, peers)]
    assert not [x for x in later if isinstance(x, m.DocUpdate)]


def test_same_seed_same_trace():
    def trace(seed: int) -> list:
        rng = random.Random(seed)
        net = Net(4, seed, loss=0.1, dup=0.1)
        for _ in range(15):
            net.local(rng.choice(net.ids), "d", lambda d: random_edit(rng, d))
            net.round()
        return [(s, d, type(x).__name__) for s, d, x in net.sent]

    assert trace(71) == trace(71)
    assert trace(71) != trace(72)


def test_outbox_is_bounded_and_drops_beyond_it():
    cfg = ReplicationConfig(chunk_bytes=1000, max_send_bytes=6000, max_outbox_bytes=5000)
    a = MemoryReplica()
    ra = Replicator("a", a, random.Random(39), cfg)
    ra.set_peers(["b"])
    update = write(a, "d", lambda d: text(d).insert(0, "w" * 20_000))
    sends = ra.on_local_update(0.0, "d", update)
    assert sum(approx_size(x) for _, x in sends) <= 6000
    assert 0 < ra.outbox_bytes <= 5000 and ra.stats.sends_dropped > 0
    later = ra.tick(1.0, ["b"])  # a new instant: the outbox drains first, in order
    chunks = [x.chunk for _, x in later if isinstance(x, m.DocDiff)]
    assert chunks == sorted(chunks) and chunks[0] == len(sends)


# --- MemoryReplica -------------------------------------------------------------------------


def test_memory_replica_sees_local_writes_without_being_told():
    replica = MemoryReplica()
    doc = replica.doc("d")
    before = replica.fingerprint("d")
    text(doc).insert(0, "abc")  # no replica.changed(): the observer invalidates the cache
    after = replica.fingerprint("d")
    assert after != before and after == fingerprint(doc)
    del text(doc)[0:1]  # a pure delete changes the fingerprint, not the state vector
    assert replica.fingerprint("d") != after


def test_memory_replica_client_ids_replay_from_the_seed():
    def run() -> list[bytes]:
        replica = MemoryReplica(client_ids=random.Random(5))
        return [write(replica, f"d{i}", _hello) for i in range(3)]

    assert run() == run()


def test_memory_replica_unknown_document_answers_empty():
    replica = MemoryReplica()
    assert replica.state_vector("x") == b"\x00" and replica.diff("x", b"\x00") == b"\x00\x00"
    assert replica.fingerprint("x") == fingerprint(pycrdt.Doc())
    assert not replica.has("x") and list(replica.doc_ids()) == []
    with pytest.raises(LocalError):
        replica.doc("")


def test_already_durable_updates_are_acked_once_per_peer_on_the_next_tick():
    a, b = MemoryReplica(), MemoryReplica()  # memory: durable on arrival
    rb = Replicator("b", b, random.Random(55), ReplicationConfig(anti_entropy_interval=1e9))
    rb.tick(0.0, ["a"])  # the first tick starts an exchange; later ones will not
    for i in range(5):
        update = write(a, f"d{i}", _hello)
        sends, _ = rb.receive(0.1, "a", m.DocDiff(f"d{i}", i, 0, 1, update))
        assert not any(isinstance(x, m.ReplicaAck) for _, x in sends)
    ((dest, ack),) = rb.tick(0.2, ["a"])
    assert dest == "a" and isinstance(ack, m.ReplicaAck)
    assert [(d, sv) for d, sv in ack.entries] == [
        (f"d{i}", b.state_vector(f"d{i}")) for i in range(5)
    ]
    assert rb.tick(0.4, ["a"]) == []


@pytest.mark.parametrize("feedback", [True, False])
def test_hearing_a_rumour_back_makes_it_stop_sooner(feedback):
    cfg = ReplicationConfig(retransmit_mult=2, rumour_feedback=feedback)
    a = MemoryReplica()
    rb = Replicator("b", MemoryReplica(), random.Random(56), cfg)
    rb.set_peers([f"p{i}" for i in range(20)])  # N=21: 2 * ceil(log10(22)) = 4 rounds
    msg = m.DocUpdate("d", write(a, "d", _hello), "a", a.state_vector("d"))
    rb.receive(0.0, "a", msg)
    assert rb.pending_rumours == 1
    for i in range(4):
        rb.receive(0.0, f"p{i}", msg)
    assert rb.pending_rumours == (0 if feedback else 1)


def test_pull_exchanges_only_the_named_documents_both_ways_reply_last():
    a, b = MemoryReplica(), MemoryReplica()
    shared = write(b, "shared", _hello)
    a.apply("shared", shared)
    write(a, "shared", lambda d: text(d).insert(0, ">"))  # a is ahead on "shared"
    write(b, "wanted", _hello)  # only b has it
    write(b, "other", _hello)  # not asked for
    ra = Replicator("a", a, random.Random(57), FAST)
    rb = Replicator("b", b, random.Random(58), FAST)
    session, sends = ra.pull(0.0, "b", ["wanted", "shared"])
    ((dest, request),) = sends
    assert dest == "b" and request.session == session and request.bucket_ids == ()
    replies, _ = rb.receive(0.0, "a", request)
    assert isinstance(replies[-1][1], m.DocVectors) and replies[-1][1].session == session
    assert all(isinstance(x, m.DocDiff) for _, x in replies[:-1])
    for _, msg in replies:
        for _, back in ra.receive(0.0, "b", msg)[0]:
            rb.receive(0.0, "a", back)
    assert content(a, "wanted") == content(b, "wanted")
    assert content(b, "shared") == content(a, "shared") == (">hello", [])
    assert not a.has("other")


def test_reply_after_the_session_expired_is_unsolicited():
    replica = MemoryReplica()
    write(replica, "d", _hello)
    ra = Replicator("a", replica, random.Random(63), FAST)
    ((_, digest),) = ra.tick(0.0, ["b"])
    ra.tick(ra.config.session_timeout + 1.0, [])  # no peers: only housekeeping
    sends, _ = ra.receive(10.0, "b", m.DigestBuckets(digest.session, (b"\x00" * 16,) * 256, True))
    assert sends == [] and ra.stats.unsolicited == 1


# --- hostile input never crashes ----------------------------------------------------------

_ids = st.sampled_from(["d", "e", "session/x", ""])
_blobs = st.one_of(st.binary(max_size=40), st.sampled_from([b"\x00", b"\x00\x00", b"\x01\x05\x02"]))
_hostile = st.one_of(
    st.builds(m.DocUpdate, _ids, _blobs, st.sampled_from(["", "a", "z"]), _blobs),
    st.builds(
        m.DocDiff,
        _ids,
        st.integers(0, 3),
        st.integers(-1, 5),
        st.integers(-1, 5),
        _blobs,
    ),
    st.builds(m.Digest, st.integers(0, 3), _blobs, st.integers(0, 5)),
    st.builds(
        m.DigestBuckets, st.integers(0, 3), st.lists(_blobs, max_size=5).map(tuple), st.booleans()
    ),
    st.builds(
        m.DocVectors,
        st.integers(0, 3),
        st.lists(st.integers(-2, 300), max_size=3).map(tuple),
        st.lists(st.tuples(_ids, _blobs, _blobs, _blobs), max_size=3).map(tuple),
        st.booleans(),
    ),
    st.builds(m.ReplicaAck, st.lists(st.tuples(_ids, _blobs), max_size=3).map(tuple)),
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["a", "c"]), _hostile), max_size=25))
def test_hostile_message_sequences_never_crash_and_stay_bounded(batch):
    cfg = ReplicationConfig(max_transfers=2, max_buffered_bytes=64, anti_entropy_interval=0.0)
    replica = MemoryReplica()
    write(replica, "d", _hello)
    node = Replicator("b", replica, random.Random(64), cfg)
    good = content(replica, "d")
    for i, (sender, msg) in enumerate(batch):
        sends, _ = node.receive(float(i), sender, msg)
        assert all(dest in ("a", "c") for dest, _ in sends)
        assert node.buffered_bytes <= 64 and len(node._transfers) <= 2
        node.tick(float(i) + 0.5, ["a", "c"])
    # Whatever arrived, what we had is still there (updates only add; garbage adds nothing).
    assert good[0] in content(replica, "d")[0]


# --- duplicate suppression -------------------------------------------------------------


def _doc_updates(sends, dest: str | None = None) -> list[tuple[str, m.DocUpdate]]:
    return [(d, x) for d, x in sends if isinstance(x, m.DocUpdate) and (dest is None or d == dest)]


def _first_tick(r: Replicator, peers: list[str]) -> None:
    """The tick right after a rumour started: it waits for the first copies' acks."""
    assert _doc_updates(r.tick(0.1, peers)) == []


def _acked_by(ra: Replicator, peer: str, replica: MemoryReplica, doc_id: str) -> None:
    """Deliver to `ra` the ack `peer` would send for what `replica` holds of `doc_id`."""
    ra.receive(0.1, peer, m.ReplicaAck(((doc_id, replica.state_vector(doc_id)),)))


def test_writer_stops_retransmitting_once_every_peer_acked():
    a = MemoryReplica()
    ra = Replicator("a", a, random.Random(60), ReplicationConfig(anti_entropy_interval=1e9))
    ra.set_peers(["b", "c"])
    update = write(a, "d", _hello)
    assert {d for d, _ in _doc_updates(ra.on_local_update(0.0, "d", update))} == {"b", "c"}
    _first_tick(ra, ["b", "c"])
    for peer in ("b", "c"):
        _acked_by(ra, peer, a, "d")
    assert _doc_updates(ra.tick(0.2, ["b", "c"])) == []
    assert ra.pending_rumours == 0


def test_writer_retransmits_only_to_peers_that_have_not_acked():
    a = MemoryReplica()
    peers = ["b", "c", "d", "e"]
    ra = Replicator("a", a, random.Random(61), ReplicationConfig(anti_entropy_interval=1e9))
    ra.set_peers(peers)
    ra.on_local_update(0.0, "doc", write(a, "doc", _hello))
    _first_tick(ra, peers)
    _acked_by(ra, "b", a, "doc")
    _acked_by(ra, "c", a, "doc")
    for i in range(3):
        targets = {d for d, _ in _doc_updates(ra.tick(0.2 * (i + 1), peers))}
        assert targets == {"d", "e"}, f"round {i}: {targets}"


def test_later_rounds_push_to_every_peer_that_has_not_acked_within_a_bound():
    a = MemoryReplica()
    peers = [f"p{i:02d}" for i in range(40)]
    cfg = ReplicationConfig(fanout=2, anti_entropy_interval=1e9)
    ra = Replicator("a", a, random.Random(62), cfg)
    ra.set_peers(peers)
    ra.on_local_update(0.0, "doc", write(a, "doc", _hello))
    _first_tick(ra, peers)
    for p in peers[:34]:
        _acked_by(ra, p, a, "doc")
    second = {d for d, _ in _doc_updates(ra.tick(0.4, peers))}
    assert second == set(peers[34:])  # 6 lacking it, under the bound of 4 * fanout = 8
    for p in peers[34:]:
        _acked_by(ra, p, a, "doc")
    assert _doc_updates(ra.tick(0.6, peers)) == [] and ra.pending_rumours == 0
    # With more peers lacking it than the bound, one round sends at most the bound.
    rb = Replicator("b", MemoryReplica(), random.Random(63), cfg)
    rb.set_peers(peers)
    rb.on_local_update(0.0, "doc", write(a, "doc", _hello))
    _first_tick(rb, peers)
    assert len(_doc_updates(rb.tick(0.4, peers))) == 4 * cfg.fanout


def test_a_state_vector_covering_the_update_counts_as_holding_it():
    a, b = MemoryReplica(), MemoryReplica()
    ra = Replicator("a", a, random.Random(64), ReplicationConfig(anti_entropy_interval=1e9))
    ra.set_peers(["b", "c"])
    update = write(a, "d", _hello)
    ra.on_local_update(0.0, "d", update)
    b.apply("d", update)
    write(b, "d", lambda d: text(d).insert(0, ">"))  # b is ahead: its vector covers ours
    later = b.doc("d").get_update(a.state_vector("d"))
    ra.receive(0.1, "b", m.DocUpdate("d", later, "b", b.state_vector("d")))
    _first_tick(ra, ["b", "c"])
    assert {d for d, _ in _doc_updates(ra.tick(0.2, ["b", "c"]))} == {"c"}


def test_an_older_state_vector_does_not_count_as_holding_it():
    a = MemoryReplica()
    ra = Replicator("a", a, random.Random(65), ReplicationConfig(anti_entropy_interval=1e9))
    ra.set_peers(["b"])
    first = write(a, "d", _hello)
    old_sv = a.state_vector("d")
    ra.on_local_update(0.0, "d", first)
    ra.on_local_update(0.0, "d", write(a, "d", lambda d: text(d).insert(0, ">")))
    ra.receive(0.1, "b", m.ReplicaAck((("d", old_sv),)))  # b holds only the first
    _first_tick(ra, ["b"])
    pushed = [x.update for _, x in _doc_updates(ra.tick(0.2, ["b"]))]
    assert len(pushed) == 1 and pushed[0] != first


def test_pure_delete_rumour_is_not_ended_by_a_covering_vector():
    a, b = MemoryReplica(), MemoryReplica()
    ra = Replicator("a", a, random.Random(66), ReplicationConfig(anti_entropy_interval=1e9))
    ra.set_peers(["b"])
    b.apply("d", write(a, "d", _hello))
    delete = write(a, "d", lambda d: text(d).__delitem__(slice(0, 2)))
    assert delete[:1] == b"\x00"  # no structs: the state vector did not move
    ra.on_local_update(0.0, "d", delete)
    assert b.state_vector("d") == a.state_vector("d")  # b lacks the delete all the same
    _acked_by(ra, "b", b, "d")
    _first_tick(ra, ["b"])
    assert _doc_updates(ra.tick(0.2, ["b"]), "b"), "the delete must still be pushed to b"
    # Direct evidence does count: b sending the delete back means b holds it.
    ra.receive(0.3, "b", m.DocUpdate("d", delete, "a", a.state_vector("d")))
    assert _doc_updates(ra.tick(0.4, ["b"])) == []


def test_forwarder_pushes_once_and_leaves_retransmission_to_a_live_writer():
    a = MemoryReplica()
    peers = ["a", "c", "d", "e", "f"]
    cfg = ReplicationConfig(fanout=2, anti_entropy_interval=1e9)
    rb = Replicator("b", MemoryReplica(), random.Random(67), cfg)
    rb.set_peers(peers)
    msg = m.DocUpdate("doc", write(a, "doc", _hello), "a", a.state_vector("doc"))
    sends, _ = rb.receive(0.0, "a", msg)
    forwarded = {d for d, _ in _doc_updates(sends)}
    assert len(forwarded) == 2 and "a" not in forwarded
    _first_tick(rb, peers)
    assert _doc_updates(rb.tick(0.2, peers)) == []
    # The writer is gone from our view: we retransmit in its place.
    alive = ["c", "d", "e", "f"]
    assert _doc_updates(rb.tick(0.4, alive)) != []


def test_first_receipt_is_forwarded_to_peers_not_known_to_hold_it():
    a = MemoryReplica()
    rb = Replicator("b", MemoryReplica(), random.Random(68), ReplicationConfig(fanout=3))
    # Even when the writer may have reached every peer itself: its view of the members
    # can differ from ours (a failover claim must not wait for a retransmission round).
    rb.set_peers(["a", "c", "d"])
    msg = m.DocUpdate("doc", write(a, "doc", _hello), "a", a.state_vector("doc"))
    sends, events = rb.receive(0.0, "a", msg)
    assert events == [DocumentUpdated("doc", "a")]
    assert {d for d, _ in _doc_updates(sends)} == {"c", "d"}
    msg2 = m.DocUpdate("doc2", write(a, "doc2", _hello), "a", a.state_vector("doc2"))
    sends, _ = rb.receive(0.0, "c", msg2)
    assert {d for d, _ in _doc_updates(sends)} == {"d"}


def test_a_duplicate_is_acked_to_its_sender_which_then_stops():
    a = MemoryReplica()
    cfg = ReplicationConfig(fanout=2, anti_entropy_interval=1e9)
    peers = ["a", "c", "d", "e"]
    rb = Replicator("b", MemoryReplica(), random.Random(69), cfg)
    rc = Replicator("c", MemoryReplica(), random.Random(70), cfg)
    rb.set_peers(peers)
    rc.set_peers(["a", "b", "d", "e"])
    msg = m.DocUpdate("doc", write(a, "doc", _hello), "a", a.state_vector("doc"))
    rb.receive(0.0, "a", msg)
    rc.receive(0.0, "a", msg)
    rb.receive(0.0, "c", msg)  # a duplicate from c
    acks = [x for d, x in rb.tick(0.2, peers) if d == "c" and isinstance(x, m.ReplicaAck)]
    assert len(acks) == 1 and acks[0].entries[0][0] == "doc"
    # c, forwarding in the writer's absence, learns from that ack that b holds it.
    rc.receive(0.2, "b", acks[0])
    pushed = set()
    for i in range(3):
        sends = rc.tick(0.4 + 0.2 * i, ["b", "d", "e"])
        assert _doc_updates(sends, "b") == []
        pushed |= {d for d, _ in _doc_updates(sends)}
    assert pushed == {"d", "e"}  # c does retransmit, only not to b


@pytest.mark.parametrize("seed", [71, 72, 73])
def test_three_lossless_peers_never_retransmit_once_acks_arrive(seed):
    net = Net(3, seed=seed, config=ReplicationConfig(anti_entropy_interval=1e9))

    def round_without_retransmissions() -> None:
        net.now += 0.2
        for i in net.ids:
            sends = net.nodes[i].tick(net.now, net.ids)
            assert _doc_updates(sends) == [], f"seed {seed}: {i} retransmitted"
            net.post(i, sends)
        net.deliver()

    for i in range(20):
        net.local(f"n{i % 3}", f"doc{i % 4}", lambda d, i=i: text(d).insert(0, str(i)))
        net.deliver()
        round_without_retransmissions()
    for _ in range(6):
        round_without_retransmissions()
    received = sum(n.stats.updates_received for n in net.nodes.values())
    duplicates = sum(n.stats.duplicates for n in net.nodes.values())
    # Two receivers per write, and at most one forwarded copy each (blind
    # retransmission made that about 12 copies per write).
    assert received == 40 + duplicates and duplicates <= 40, f"seed {seed}"
    assert net.converged(), f"seed {seed}"
    assert all(n.pending_rumours == 0 for n in net.nodes.values()), f"seed {seed}"


def test_replicas_covering_accepts_equal_and_larger_vectors_only():
    a = MemoryReplica()
    ra = Replicator("a", a, random.Random(74), FAST)
    first = write(a, "d", _hello)
    sv1 = a.state_vector("d")
    write(a, "d", lambda d: text(d).insert(0, ">"))
    sv2 = a.state_vector("d")
    ra.receive(0.0, "b", m.ReplicaAck((("d", sv1),)))
    ra.receive(0.0, "c", m.ReplicaAck((("d", sv2),)))
    assert first and ra.replicas_covering("d", sv1) == ["b", "c"]
    assert ra.replicas_covering("d", sv2) == ["c"]


# --- the writer's "reached every peer" stamp ---------------------------------------------


def test_receivers_sharing_the_writers_view_do_not_forward_but_ack_one_another():
    net = Net(3, seed=80, config=ReplicationConfig(anti_entropy_interval=1e9))
    writer, b, c = net.ids
    update = write(net.replicas[writer], "doc", _hello)
    first = net.nodes[writer].on_local_update(0.0, "doc", update)
    assert {d for d, _ in _doc_updates(first)} == {b, c}
    assert all(x.reached for _, x in _doc_updates(first))  # fanout 3 covers both peers
    for receiver in (b, c):
        sends, events = net.nodes[receiver].receive(
            0.0, writer, _doc_updates(first, receiver)[0][1]
        )
        assert events == [DocumentUpdated("doc", writer)]
        assert _doc_updates(sends) == [], f"{receiver} forwarded a copy every peer has"
    # Instead each receiver owes the other its durable vector (failover ranks by it).
    for receiver, other in ((b, c), (c, b)):
        sends = net.nodes[receiver].tick(0.1, net.ids)
        assert _doc_updates(sends) == []
        acks = [x for d, x in sends if d == other and isinstance(x, m.ReplicaAck)]
        assert len(acks) == 1 and acks[0].entries[0][0] == "doc"
        net.nodes[other].receive(0.1, receiver, acks[0])
        sv = net.replicas[receiver].state_vector("doc")
        assert net.nodes[other].peer_durable(receiver, "doc") == sv
    assert sum(r.stats.duplicates for r in net.nodes.values()) == 0


def test_a_receiver_knowing_a_peer_the_writer_did_not_reach_forwards_to_it():
    a = MemoryReplica()
    ra = Replicator("a", a, random.Random(81), ReplicationConfig(fanout=3))
    rb = Replicator("b", MemoryReplica(), random.Random(82), ReplicationConfig(fanout=3))
    ra.set_peers(["b", "c"])
    rb.set_peers(["a", "c", "d"])  # b already knows d; the writer does not yet
    (_, to_b), _ = _doc_updates(ra.on_local_update(0.0, "doc", write(a, "doc", _hello)))
    assert to_b.reached
    sends, _ = rb.receive(0.0, "a", to_b)
    assert {d for d, _ in _doc_updates(sends)} == {"c", "d"}
    assert all(x.reached == b"" for _, x in _doc_updates(sends))  # only the writer stamps


def test_the_stamp_is_left_off_when_the_fanout_does_not_cover_every_peer():
    a = MemoryReplica()
    ra = Replicator("a", a, random.Random(83), ReplicationConfig(fanout=2))
    peers = ["b", "c", "d", "e"]
    ra.set_peers(peers)
    sends = ra.on_local_update(0.0, "doc", write(a, "doc", _hello))
    assert len(_doc_updates(sends)) == 2
    assert all(x.reached == b"" for _, x in _doc_updates(sends))
    # Nor do retransmissions carry it: they go to a subset, maybe to a peer that missed
    # the first copy, which must then forward as before.
    _first_tick(ra, peers)
    again = _doc_updates(ra.tick(0.2, peers))
    assert again and all(x.reached == b"" for _, x in again)


def test_a_stamp_naming_another_view_is_forwarded_as_before():
    a = MemoryReplica()
    rb = Replicator("b", MemoryReplica(), random.Random(84), ReplicationConfig(fanout=3))
    rb.set_peers(["a", "c"])
    update = write(a, "doc", _hello)
    stamp = b"\x00" * 8  # the digest of some other set of peers
    sends, _ = rb.receive(0.0, "a", m.DocUpdate("doc", update, "a", a.state_vector("doc"), stamp))
    assert {d for d, _ in _doc_updates(sends)} == {"c"}
    # Relayed by someone else (not its origin): forwarded too, whatever it says.
    msg2 = m.DocUpdate("doc2", write(a, "doc2", _hello), "a", a.state_vector("doc2"), stamp)
    sends, _ = rb.receive(0.0, "c", msg2)
    assert {d for d, _ in _doc_updates(sends)} == set()  # holders: c sent it, a wrote it


@pytest.mark.parametrize("seed", [85, 86, 87])
def test_three_agreeing_peers_exchange_no_duplicates_and_learn_every_durable_vector(seed):
    net = Net(3, seed=seed, config=ReplicationConfig(anti_entropy_interval=1e9))
    for i in range(12):
        net.local(f"n{i % 3}", f"doc{i % 4}", lambda d, i=i: text(d).insert(0, str(i)))
        net.deliver()
        net.now += 0.2
        for n in net.ids:
            net.post(n, net.nodes[n].tick(net.now, net.ids))
        net.deliver()
    assert sum(r.stats.duplicates for r in net.nodes.values()) == 0, f"seed {seed}"
    assert net.converged(), f"seed {seed}"
    for k in range(4):
        doc, last_writer = f"doc{k}", f"n{(k + 8) % 3}"
        for me in net.ids:
            # Every peer that received the last write told every other peer it holds it
            # (its writer acks nobody for its own write, now as before).
            for other in net.ids:
                if other not in (me, last_writer):
                    sv = net.replicas[other].state_vector(doc)
                    assert net.nodes[me].peer_durable(other, doc) == sv, (seed, me, other, doc)


def test_a_rumour_every_peer_acked_ends_at_once_without_waiting_for_a_tick():
    a = MemoryReplica()
    ra = Replicator("a", a, random.Random(88), ReplicationConfig(anti_entropy_interval=1e9))
    ra.set_peers(["b", "c"])
    ra.on_local_update(0.0, "d", write(a, "d", _hello))
    write(a, "d", lambda d: text(d).insert(0, ">"))  # a second rumour of the same document
    ra.on_local_update(0.0, "d", write(a, "d", lambda d: text(d).insert(0, "!")))
    assert ra.pending_rumours == 2
    _acked_by(ra, "b", a, "d")
    assert ra.pending_rumours == 2  # c still lacks both
    _acked_by(ra, "c", a, "d")  # c's vector covers both rumours
    assert ra.pending_rumours == 0


# --- durable vectors kept: members only, bounded for documents not held -------------------


def _vector(seed: int) -> bytes:
    """A real state vector of a document with one write by client `seed`."""
    doc = pycrdt.Doc(client_id=seed)
    with doc.transaction():
        doc.get("m", type=pycrdt.Map)["k"] = seed
    return doc.get_state()


def test_durable_vectors_of_senders_that_are_not_members_are_dropped_and_counted():
    a = MemoryReplica()
    write(a, "d", _hello)
    members = {"b"}
    ra = Replicator("a", a, random.Random(71), FAST, is_member=members.__contains__)
    ra.set_peers(["b"])
    sv = a.state_vector("d")
    # Made-up senders (a keyed peer can name any) neither grow the table nor count as
    # replicas in a commit.
    for i in range(500):
        _, events = ra.receive(0.0, f"ghost{i}", m.ReplicaAck((("d", sv),)))
        assert events == []
    assert ra.durable_entries == 0 and ra.stats.durable_refused == 500
    assert ra.replicas_covering("d", sv) == []
    # A member's ack is kept as before.
    _, events = ra.receive(0.0, "b", m.ReplicaAck((("d", sv),)))
    assert events == [ReplicaAcked("b", "d", sv)]
    assert ra.replicas_covering("d", sv) == ["b"]


def test_durable_vectors_are_forgotten_when_the_member_is_no_longer_live():
    a = MemoryReplica()
    write(a, "d", _hello)
    members = {"b", "c"}
    ra = Replicator("a", a, random.Random(72), FAST, is_member=members.__contains__)
    ra.set_peers(["b", "c"])
    sv = a.state_vector("d")
    for peer in ("b", "c"):
        ra.receive(0.0, peer, m.ReplicaAck((("d", sv),)))
    assert ra.replicas_covering("d", sv) == ["b", "c"]
    members.discard("c")  # c died: the next tick's live list no longer names it
    ra.tick(0.1, ["b"])
    assert ra.replicas_covering("d", sv) == ["b"] and ra.peer_durable("c", "d") is None
    # Back alive, it reports again and counts again.
    members.add("c")
    ra.tick(0.2, ["b", "c"])
    ra.receive(0.3, "c", m.ReplicaAck((("d", sv),)))
    assert ra.replicas_covering("d", sv) == ["b", "c"]


@pytest.mark.parametrize("via", ["ack", "vectors"])
def test_vectors_of_documents_not_held_here_are_bounded_and_counted(via):
    a = MemoryReplica()
    write(a, "d", _hello)
    cfg = ReplicationConfig(anti_entropy_interval=0.0, resync_delay=0.0, max_unknown_durable=64)
    ra = Replicator("a", a, random.Random(73), cfg, is_member={"b"}.__contains__)
    ra.set_peers(["b"])
    fake = _vector(99)
    n = 1000
    entries = tuple((f"made-up/{i}", fake) for i in range(n))
    if via == "ack":
        ra.receive(0.0, "b", m.ReplicaAck(entries))
    else:
        # An anti-entropy request naming documents nobody holds (a keyed peer's).
        ra.receive(
            0.0, "b", m.DocVectors(5, (), tuple((d, sv, b"", sv) for d, sv in entries), True)
        )
    assert ra.durable_entries == 64, ra.durable_entries
    assert ra.stats.durable_refused == n - 64
    # A document this node holds is still recorded over the bound: commits need it.
    sv = a.state_vector("d")
    ra.receive(0.1, "b", m.ReplicaAck((("d", sv),)))
    assert ra.replicas_covering("d", sv) == ["b"] and ra.durable_entries == 65
    # Updating a vector already kept costs no new room.
    before = ra.stats.durable_refused
    ra.receive(0.2, "b", m.ReplicaAck((("made-up/0", _vector(98)),)))
    assert ra.peer_durable("b", "made-up/0") == _vector(98)
    assert ra.stats.durable_refused == before


def test_unknown_documents_that_arrive_free_their_room_in_the_bound():
    a = MemoryReplica()
    cfg = ReplicationConfig(anti_entropy_interval=0.0, resync_delay=0.0, max_unknown_durable=2)
    ra = Replicator("a", a, random.Random(74), cfg, is_member={"b"}.__contains__)
    ra.set_peers(["b"])
    sv = _vector(7)
    ra.receive(0.0, "b", m.ReplicaAck((("x", sv), ("y", sv), ("z", sv))))
    assert ra.durable_entries == 2 and ra.stats.durable_refused == 1
    # "x" arrives (a session on its way here): it no longer counts as unknown.
    update = write(MemoryReplica(), "x", _hello)
    ra.receive(0.1, "b", m.DocUpdate("x", update, "b", b""))
    ra.receive(0.2, "b", m.ReplicaAck((("z", sv),)))
    assert ra.peer_durable("b", "z") == sv and ra.durable_entries == 3


def test_forget_peer_frees_its_unknown_entries():
    a = MemoryReplica()
    cfg = ReplicationConfig(anti_entropy_interval=0.0, resync_delay=0.0, max_unknown_durable=4)
    ra = Replicator("a", a, random.Random(75), cfg, is_member={"b", "c"}.__contains__)
    sv = _vector(8)
    ra.receive(0.0, "b", m.ReplicaAck(tuple((f"u{i}", sv) for i in range(4))))
    ra.receive(0.0, "c", m.ReplicaAck((("v", sv),)))
    assert ra.peer_durable("c", "v") is None and ra.stats.durable_refused == 1
    ra.forget_peer("b")
    ra.receive(0.1, "c", m.ReplicaAck((("v", sv),)))
    assert ra.peer_durable("c", "v") == sv and ra.durable_entries == 1


# --- made-up members do not dilute rumour fan-out ------------------------------------------

FLOOD = [f"fake{i}" for i in range(2048)]


def _flooded(seed: int, first_hand) -> Replicator:
    """Writer `v` whose live peers are the real `w` among 2,048 made-up members."""
    r = Replicator("v", MemoryReplica(), random.Random(seed), first_hand=first_hand)
    r.set_peers(["w", *FLOOD])
    return r


def _targets(r: Replicator, key: str) -> set[str]:
    sends = r.on_local_update(0.0, "d", write(r.replica, "d", lambda d: text(d).insert(0, key)))
    return {dest for dest, msg in sends if isinstance(msg, m.DocUpdate)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_push_after_a_flood_reaches_the_peer_heard_first_hand(seed):
    r = _flooded(seed, first_hand=lambda p: p == "w")
    others: set[str] = set()
    for i in range(40):
        targets = _targets(r, f"k{i}")
        assert "w" in targets and len(targets) == r.config.fanout, (seed, i, targets)
        others |= targets - {"w"}
    # The other slots still go anywhere: peers not heard from yet are not starved.
    assert len(others) > 40, (seed, len(others))
    # Without the preference the real peer is almost never drawn (3 slots of 2,049).
    blind = _flooded(seed, first_hand=None)
    assert sum("w" in _targets(blind, f"k{i}") for i in range(40)) <= 2, seed


def test_forwards_and_retransmits_include_a_first_hand_peer():
    b = Replicator("b", MemoryReplica(), random.Random(5), first_hand=lambda p: p in ("c", "d"))
    b.set_peers(["a", "c", "d", *FLOOD])
    a = MemoryReplica()
    msg = m.DocUpdate("d", write(a, "d", _hello), "a", a.state_vector("d"))
    sends, _ = b.receive(0.0, "a", msg)
    forwarded = {dest for dest, x in sends if isinstance(x, m.DocUpdate)}
    assert forwarded & {"c", "d"}, forwarded
    # The writer `a` falls silent (not alive here): b retransmits from its second tick,
    # every round to a peer it knows first-hand (neither acked, so neither is a holder).
    b.tick(0.2, ["c", "d", *FLOOD])
    for now in (0.4, 0.6, 0.8):
        sends = b.tick(now, ["c", "d", *FLOOD])
        pushed = {dest for dest, x in sends if isinstance(x, m.DocUpdate)}
        assert len(pushed) == RETRANSMIT_SPREAD * b.config.fanout, (now, pushed)
        assert pushed & {"c", "d"}, (now, pushed)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_when_every_peer_is_first_hand_the_draw_is_the_uniform_one(seed):
    peers = [f"p{i}" for i in range(50)]
    draws = []
    for first_hand in (None, lambda p: True):
        r = Replicator("v", MemoryReplica(), random.Random(seed), first_hand=first_hand)
        r.set_peers(peers)
        draw = [sorted(_targets(r, f"k{i}")) for i in range(20)]
        for i in range(10):  # retransmits and anti-entropy partners too
            draw.append(sorted(dest for dest, _ in r.tick(i * 0.5, peers)))
        draws.append(draw)
    assert draws[0] == draws[1], seed


@pytest.mark.parametrize("seed", [1, 2])
def test_every_other_anti_entropy_round_after_a_flood_goes_to_a_peer_heard_first_hand(seed):
    peers = ["w", *FLOOD]
    partners = {}
    for name, first_hand in (("preferred", lambda p: p == "w"), ("blind", None)):
        r = _flooded(seed, first_hand)
        digests = []
        for i in range(20):
            sends = r.tick(i * r.config.anti_entropy_interval, peers)
            digests += [dest for dest, msg in sends if isinstance(msg, m.Digest)]
        partners[name] = digests
    # Every other round goes to the real peer; the rounds between stay uniform.
    assert partners["preferred"][1::2] == ["w"] * 10, seed
    assert partners["preferred"][0::2].count("w") <= 1, seed
    # A uniform draw alone: nothing would be healed until the fakes are probed dead.
    assert partners["blind"].count("w") <= 1, seed
