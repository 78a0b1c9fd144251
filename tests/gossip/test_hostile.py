"""Hostile and broken input against one whole gossip `Node`, through the real sealer and codec.

A victim node `v` (SWIM membership plus replication over a `MemoryReplica` holding one
session) receives frames the way the runtime feeds them: `FrameCodec.unpack` (a `BadFrame`
is counted by reason and dropped), then `Node.receive` (a `LocalError` is a message the
protocol refuses; the runtime counts it and drops it). Anything else escaping is a crash.

After every input the victim must still be whole: it believes itself alive at its own
address, at an incarnation it can still refute from; everything it sends encodes (a node
must never emit a frame that its peers would reject, or be made to); rejected frames left
membership, documents and the replay window exactly as they were; garbage updates left
every fingerprint alone. Hostile peers are either outsiders (random or mutated bytes) or
an authenticated peer `a` sending well-formed but hostile messages (the codec cannot
refuse those; the protocol must).

Randomness is seeded (`SEED`) and hypothesis is derandomized, so a failure replays.
`FUZZ` counts every input fed, by class; run with ``-s`` to see the totals.
"""

from __future__ import annotations

import collections
import random

import msgpack
import pycrdt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from crdt_types.errors import BadFrame, LocalError
from gossip import messages as m
from gossip.codec import MAX_INT, encode_envelope, encode_message
from gossip.config import lan
from gossip.events import MemberJoined
from gossip.framing import MAX_FRAME_BYTES, FrameDecoder
from gossip.keyring import Keyring
from gossip.membership import MAX_INCARNATION, _check_address
from gossip.node import Node, Output
from gossip.replica import EMPTY_STATE_VECTOR, EMPTY_UPDATE, MemoryReplica
from gossip.replication import ReplicaAcked
from gossip.seal import FrameCodec, Sealer

SEED = 20261201
CLUSTER = "hostile-test"
T0 = 1_790_000_000.0  # wall clock of the sealed frames (Unix seconds)
V_ADDR, A_ADDR, B_ADDR = "127.0.0.1:7001", "127.0.0.2:7002", "127.0.0.3:7003"
DOC = "session/s"

FUZZ: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_fuzz_count():
    yield
    print(f"\nfuzz inputs fed to the node: {sum(FUZZ.values())} {dict(sorted(FUZZ.items()))}")


def _write(doc: pycrdt.Doc, key: str, value: str) -> bytes:
    before = doc.get_state()
    with doc.transaction():
        doc.get("data", type=pycrdt.Map)[key] = value
    return doc.get_update(before)


class Victim:
    """Node `v` fed frames the way `mesh.runtime` feeds them; `a` is an authenticated peer."""

    def __init__(self, seed: int = SEED) -> None:
        r = random.Random(seed)
        key = r.randbytes(32)
        self.codec = FrameCodec(Sealer(CLUSTER, Keyring([key]), "v", r.getrandbits(64)))
        self.peer = FrameCodec(Sealer(CLUSTER, Keyring([key]), "a", r.getrandbits(64)))
        self.outsider = FrameCodec(
            Sealer(CLUSTER, Keyring([r.randbytes(32)]), "a", r.getrandbits(64))
        )
        self.replica = MemoryReplica(client_ids=random.Random(seed + 1))
        _write(self.replica.doc(DOC), "greeting", "hello")
        self.good = self.replica.doc(DOC).get("data", type=pycrdt.Map).to_py()
        self.node = Node("v", V_ADDR, lan(), random.Random(seed + 2), self.replica)
        self.now = 0.0
        self.refused = 0
        self.events: list[object] = []
        self.check(self.node.start(0.0, known=[("a", A_ADDR), ("b", B_ADDR)]))

    # -- feeding ------------------------------------------------------------------------

    def wall(self) -> float:
        return T0 + self.now

    def codec_for(self, name: str) -> FrameCodec:
        """Another authenticated peer's codec (same cluster key)."""
        return FrameCodec(Sealer(CLUSTER, self.peer.sealer.keyring, name, len(name)))

    def seal(self, msgs: tuple[object, ...], *, incarnation: int = 0) -> bytes:
        """An authentic frame from `a` (values checked by the encoder)."""
        return self.peer.pack(self.wall(), m.Envelope("a", A_ADDR, incarnation, msgs))

    def seal_raw(self, wire: object) -> bytes:
        """An authentic frame from `a` whose payload is any msgpack value (no checks)."""
        return self.peer.sealer.seal(self.wall(), msgpack.packb(wire, use_bin_type=True))

    def feed(self, frame: bytes, kind: str) -> str:
        """Deliver one frame; return "ok", "refused" or the BadFrame reason."""
        FUZZ[kind] += 1
        self.now = round(self.now + 0.01, 6)
        try:
            env = self.codec.unpack(self.wall(), frame)
        except BadFrame as exc:
            assert exc.reason in BadFrame.REASONS
            return exc.reason
        try:
            out = self.node.receive(self.now, env)
        except LocalError:
            self.refused += 1
            return "refused"
        self.check(out)
        return "ok"

    def tick(self, seconds: float = 0.0) -> Output:
        self.now = round(self.now + seconds, 6)
        out = self.node.tick(self.now)
        self.check(out)
        return out

    # -- invariants ---------------------------------------------------------------------

    def check(self, out: Output) -> None:
        """Everything the node emits must be sendable and well formed."""
        self.events.extend(out.events)
        for address, env in out.sends:
            _check_address(address)
            encode_envelope(env)  # LocalError here = the node emits what peers reject
        me = self.node.membership.me
        assert me.state == m.ALIVE and me.address == V_ADDR, (SEED, me)
        # At most the highest refutation of a rumour we accepted, which still encodes.
        assert 0 <= me.incarnation <= MAX_INCARNATION, (SEED, me)

    def snapshot(self) -> tuple:
        ms = self.node.membership
        return (
            sorted((x.node, x.address, x.incarnation, x.state) for x in ms.members.values()),
            {d: self.replica.fingerprint(d) for d in self.replica.doc_ids()},
            self.node.replicator.root,
            self.codec.accepted,
            len(self.codec.sealer.replay),
            _stats(self.node),
        )

    def content_kept(self) -> bool:
        data = self.replica.doc(DOC).get("data", type=pycrdt.Map).to_py()
        return all(data.get(k) == v for k, v in self.good.items())


def _stats(node: Node) -> tuple:
    s = node.replicator.stats
    return tuple(getattr(s, f) for f in s.__slots__)


@pytest.fixture
def victim() -> Victim:
    return Victim()


def rejected_total(v: Victim) -> int:
    return sum(v.codec.rejected.values())


# --- frames from outsiders: random, mutated, truncated, oversized, replayed ---------------


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.binary(max_size=600))
def test_random_bytes_are_a_counted_badframe_and_change_nothing(data: bytes) -> None:
    v = VICTIM_FOR_BYTES
    before, n = v.snapshot(), rejected_total(v)
    reason = v.feed(data, "random_bytes")
    assert reason in BadFrame.REASONS, (SEED, data)
    assert rejected_total(v) == n + 1
    assert v.snapshot() == before


VICTIM_FOR_BYTES = Victim(SEED + 10)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.data())
def test_mutated_authentic_frames_are_rejected_and_change_nothing(data: st.DataObject) -> None:
    v = VICTIM_FOR_MUTATIONS
    good = v.seal((m.DocUpdate(DOC, _write(pycrdt.Doc(client_id=7), "k", "evil"), "a", b""),))
    frame = bytearray(good)
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if how == "flip":
        for i in data.draw(st.lists(st.integers(0, len(frame) - 1), min_size=1, max_size=4)):
            frame[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del frame[data.draw(st.integers(0, len(frame) - 1)) :]
    elif how == "extend":
        frame += data.draw(st.binary(min_size=1, max_size=64))
    else:
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    assume(bytes(frame) != good)  # two flips of one byte can cancel out
    before, n = v.snapshot(), rejected_total(v)
    reason = v.feed(bytes(frame), "mutated_frame")
    assert reason in BadFrame.REASONS, (SEED, how, bytes(frame).hex())
    assert rejected_total(v) == n + 1
    assert v.snapshot() == before
    assert v.content_kept()


VICTIM_FOR_MUTATIONS = Victim(SEED + 11)


def test_every_truncation_of_a_valid_frame_is_rejected(victim: Victim) -> None:
    frame = victim.seal((m.Ping(1, "v"),))
    before = victim.snapshot()
    reasons = collections.Counter(
        victim.feed(frame[:cut], "truncated_frame") for cut in range(len(frame))
    )
    assert set(reasons) <= {"truncated", "version", "auth", "decode"}, reasons
    assert reasons["truncated"] > 0 and sum(reasons.values()) == len(frame)
    assert victim.snapshot() == before
    assert victim.feed(frame, "valid_frame") == "ok"  # the whole frame was never "used up"


def test_oversized_frames_are_refused_before_buffering(victim: Victim) -> None:
    before = victim.snapshot()
    assert victim.feed(bytes(MAX_FRAME_BYTES + 1), "oversized_frame") == "oversized"
    assert victim.codec.rejected["oversized"] == 1
    # On a stream, a declared length over the limit fails before any body is kept.
    decoder = FrameDecoder()
    for declared in (MAX_FRAME_BYTES + 1, 2**32 - 1):
        with pytest.raises(BadFrame) as info:
            decoder.feed(declared.to_bytes(4, "big") + b"x" * 100)
        assert info.value.reason == "oversized"
        assert decoder.buffered == 0
    assert victim.snapshot() == before


def test_replayed_frames_are_rejected_and_applied_once(victim: Victim) -> None:
    frame = victim.seal((m.DocUpdate(DOC, _write(pycrdt.Doc(client_id=8), "x", "1")),))
    assert victim.feed(frame, "valid_frame") == "ok"
    applied = victim.node.replicator.stats.updates_received
    before = victim.snapshot()
    for _ in range(5):
        assert victim.feed(frame, "replayed_frame") == "replay"
    assert victim.codec.rejected["replay"] == 5
    assert victim.node.replicator.stats.updates_received == applied
    assert victim.snapshot() == before


def test_frames_sealed_with_another_key_or_cluster_change_nothing(victim: Victim) -> None:
    before = victim.snapshot()
    lie = m.MemberUpdate("v", V_ADDR, 50, m.DEAD, "a")
    frame = victim.outsider.pack(victim.wall(), m.Envelope("a", A_ADDR, 0, (lie,)))
    assert victim.feed(frame, "wrong_key") == "unknown_key"
    other = FrameCodec(Sealer("other", Keyring([bytes(32)]), "a", 7))
    frame = other.pack(victim.wall(), m.Envelope("a", A_ADDR, 0, (lie,)))
    assert victim.feed(frame, "wrong_cluster") == "cluster"
    assert victim.snapshot() == before
    assert victim.node.membership.incarnation == 0


# --- authentic frames with fields of the wrong type or out of range -----------------------

_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=-1),
    st.integers(min_value=2**63, max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.just("x" * 4097),
    st.binary(max_size=8),
    st.lists(st.integers(0, 3), max_size=3),
)


def _valid_messages(v: Victim) -> list[object]:
    sv = v.replica.state_vector(DOC)
    return [
        m.MemberUpdate("c", "127.0.0.4:7004", 1, m.ALIVE, "c", b""),
        m.Ping(1, "v"),
        m.Ack(1),
        m.PingReq(2, "b", B_ADDR),
        m.Nack(3),
        m.MembershipSync((m.MemberUpdate("a", A_ADDR, 0, m.ALIVE, "a"),), True),
        m.DocUpdate(DOC, EMPTY_UPDATE, "a", sv),
        m.Digest(1, b"r" * 16, 1),
        m.DigestBuckets(1, (b"h" * 16,), True),
        m.DocVectors(1, (0,), ((DOC, sv, b"f" * 32, sv),), True),
        m.DocDiff(DOC, 1, 0, 1, EMPTY_UPDATE),
        m.ReplicaAck(((DOC, sv),)),
    ]


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.data())
def test_authentic_frames_with_wrong_types_are_type_errors_and_change_nothing(
    data: st.DataObject,
) -> None:
    v = VICTIM_FOR_TYPES
    msgs = _valid_messages(v)
    wire = encode_message(data.draw(st.sampled_from(msgs)))
    field = data.draw(st.integers(1, len(wire) - 1))
    wire[field] = data.draw(_JUNK)
    envelope = [m.PROTOCOL_VERSION, "a", A_ADDR, 0, [wire]]
    if data.draw(st.booleans()):
        # ...or break the envelope itself instead.
        envelope[data.draw(st.integers(1, 3))] = data.draw(_JUNK)
    before, n = v.snapshot(), rejected_total(v)
    reason = v.feed(v.seal_raw(envelope), "wrong_type_field")
    if reason == "ok":
        # Junk that happens to be a valid value of the field (e.g. a short str for a str).
        return
    assert reason in ("type", "decode", "auth", "refused"), (SEED, wire, reason)
    if reason != "refused":
        assert rejected_total(v) == n + 1
        assert v.snapshot() == before


VICTIM_FOR_TYPES = Victim(SEED + 12)


# --- authentic, well-typed, hostile messages ------------------------------------------------

_INTS = st.one_of(
    st.sampled_from(
        [0, 1, 7, 2**31, 2**32, 2**53 + 1, 2**62, MAX_INCARNATION - 1, MAX_INCARNATION, MAX_INT]
    ),
    st.integers(0, MAX_INT),
)
_NODES = st.sampled_from(["v", "a", "b", "c", "x" * 4096, "é", "\x00", " "])
_ADDRESSES = st.sampled_from(
    [
        V_ADDR,
        A_ADDR,
        B_ADDR,
        "127.0.0.9:7009",
        "[::1]:7010",
        "garbage",
        "",
        ":",
        "h:0",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "x" * 4000 + ":1",
    ]
)
_DOC_IDS = st.sampled_from([DOC, "session/new", "cluster", "", "x" * 4096, "\x00", "é"])


def _blobs(v: Victim) -> st.SearchStrategy[bytes]:
    other = pycrdt.Doc(client_id=424242)
    update = _write(other, "from", "a")
    return st.one_of(
        st.binary(max_size=48),
        st.sampled_from(
            [
                b"",
                EMPTY_STATE_VECTOR,
                EMPTY_UPDATE,
                b"\xff" * 12,  # a varint that never ends
                b"\x01\xff\xff\xff\xff\x0f\x05",
                v.replica.state_vector(DOC),
                update,
                update[:-1],
            ]
        ),
    )


def _hostile(v: Victim) -> st.SearchStrategy[object]:
    blobs = _blobs(v)
    member = st.builds(
        m.MemberUpdate, _NODES, _ADDRESSES, _INTS, st.sampled_from(m.MEMBER_STATES), _NODES, blobs
    )
    return st.one_of(
        member,
        st.builds(m.Ping, _INTS, _NODES),
        st.builds(m.Ack, _INTS),
        st.builds(m.PingReq, _INTS, _NODES, _ADDRESSES),
        st.builds(m.Nack, _INTS),
        st.builds(m.MembershipSync, st.lists(member, max_size=4).map(tuple), st.booleans()),
        st.builds(m.DocUpdate, _DOC_IDS, blobs, _NODES, blobs),
        st.builds(m.Digest, _INTS, blobs, _INTS),
        st.builds(m.DigestBuckets, _INTS, st.lists(blobs, max_size=4).map(tuple), st.booleans()),
        st.builds(
            m.DocVectors,
            _INTS,
            st.lists(_INTS, max_size=3).map(tuple),
            st.lists(st.tuples(_DOC_IDS, blobs, blobs, blobs), max_size=3).map(tuple),
            st.booleans(),
        ),
        st.builds(m.DocDiff, _DOC_IDS, _INTS, _INTS, _INTS, blobs),
        st.builds(m.ReplicaAck, st.lists(st.tuples(_DOC_IDS, blobs), max_size=3).map(tuple)),
    )


VICTIM_FOR_MESSAGES = Victim(SEED + 13)


@pytest.mark.slow
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(st.lists(_hostile(VICTIM_FOR_MESSAGES), min_size=1, max_size=6), max_size=6))
def test_hostile_message_sequences_never_crash_or_silence_the_node(batches) -> None:
    v = Victim(SEED + 13)  # fresh per example: a failure replays from its example alone
    for msgs in batches:
        assert v.feed(v.seal(tuple(msgs)), "hostile_messages") in ("ok", "refused")
        v.tick(0.05)  # timers run on whatever the messages left behind
        r = v.node.replicator
        assert r.buffered_bytes <= r.config.max_buffered_bytes
        assert len(r._transfers) <= r.config.max_transfers
    assert v.content_kept(), SEED


# --- targeted: each named attack, its documented outcome ----------------------------------


def test_forged_dead_about_us_is_refuted_not_obeyed(victim: Victim) -> None:
    for state in (m.SUSPECT, m.DEAD, m.LEFT):
        inc = victim.node.membership.incarnation + 5
        assert victim.feed(victim.seal((m.MemberUpdate("v", V_ADDR, inc, state, "a"),)), state)
        assert victim.node.membership.me.state == m.ALIVE
        assert victim.node.membership.incarnation == inc + 1, state
    out = victim.tick(0.3)
    told = [
        u
        for _, env in out.sends
        for u in env.messages
        if isinstance(u, m.MemberUpdate) and u.node == "v"
    ]
    assert told and all(u.state == m.ALIVE and u.incarnation == inc + 1 for u in told)


@pytest.mark.parametrize("inc", [MAX_INCARNATION, MAX_INCARNATION + 1, MAX_INT])
@pytest.mark.parametrize("state", [m.SUSPECT, m.DEAD, m.ALIVE])
def test_rumours_at_unrefutable_incarnations_are_refused(victim, inc, state) -> None:
    # Before the fix a dead at 2**63-1 made us "refute" at 2**63: every frame we sent from
    # then on failed to encode and the node went silent for good.
    before = victim.snapshot()
    frame = victim.seal((m.MemberUpdate("v", V_ADDR, inc, state, "a"),))
    assert victim.feed(frame, "huge_incarnation") == "refused"
    frame = victim.seal((m.MemberUpdate("b", B_ADDR, inc, state, "a"),))
    assert victim.feed(frame, "huge_incarnation") == "refused"
    assert victim.snapshot()[0] == before[0]
    victim.tick(1.0)  # and everything it sends still encodes (checked by tick)


def test_highest_refutable_incarnation_still_encodes(victim: Victim) -> None:
    inc = MAX_INCARNATION - 1
    assert victim.feed(victim.seal((m.MemberUpdate("v", V_ADDR, inc, m.DEAD, "a"),)), "edge")
    assert victim.node.membership.incarnation == MAX_INCARNATION
    for _ in range(5):
        victim.tick(0.3)


def test_member_claiming_to_be_us_elsewhere_is_refuted(victim: Victim) -> None:
    impostor = m.MemberUpdate("v", "127.0.0.66:6666", 9, m.ALIVE, "v")
    assert victim.feed(victim.seal((impostor,)), "impostor") == "ok"
    me = victim.node.membership.me
    assert me.address == V_ADDR and me.incarnation == 10


@pytest.mark.parametrize(
    "address", ["garbage", "", "host:", ":7000", "127.0.0.1:0", "127.0.0.1:65536", "a:b"]
)
def test_pingreq_to_a_malformed_address_is_refused(victim: Victim, address: str) -> None:
    frame = victim.seal((m.PingReq(1, "b", address),))
    assert victim.feed(frame, "pingreq_address") == "refused"
    assert victim.refused == 1
    victim.tick(0.3)  # nothing queued for the bad address (tick checks every destination)


def test_pingreq_with_extreme_seq_is_forwarded_and_answered(victim: Victim) -> None:
    frame = victim.seal((m.PingReq(MAX_INT, "b", B_ADDR), m.Ping(MAX_INT, "v")))
    assert victim.feed(frame, "extreme_seq") == "ok"
    out = victim.tick(0.0)
    del out  # both the forwarded probe and the Ack(MAX_INT) encoded (checked)


def test_ping_for_someone_else_is_not_answered(victim: Victim) -> None:
    v = victim
    v.node.membership.take()
    assert v.feed(v.seal((m.Ping(5, "not-v"),)), "ping_other") == "ok"
    assert not any(isinstance(x, m.Ack) for _, x in v.node.membership._outbox)


@pytest.mark.parametrize("chunks", [2**31, 2**63 - 1, 8193])
def test_docdiff_chunk_bomb_is_malformed_and_buffers_nothing(victim, chunks) -> None:
    r = victim.node.replicator
    before = victim.snapshot()
    frame = victim.seal((m.DocDiff(DOC, 1, 0, chunks, b"x" * 1000),))
    assert victim.feed(frame, "chunk_bomb") == "ok"
    assert r.stats.malformed == 1 and r.buffered_bytes == 0 and not r._transfers
    assert victim.snapshot()[1] == before[1]


def test_many_partial_transfers_stay_within_the_reassembly_bounds(victim: Victim) -> None:
    r = victim.node.replicator
    cfg = r.config
    for transfer in range(cfg.max_transfers * 3):
        frame = victim.seal((m.DocDiff(DOC, transfer, 0, cfg.max_chunks, b"y" * 60_000),))
        assert victim.feed(frame, "partial_transfers") == "ok"
        assert len(r._transfers) <= cfg.max_transfers
        assert r.buffered_bytes <= cfg.max_transfers * 60_000
    assert r.stats.transfers_evicted == cfg.max_transfers * 2
    victim.tick(cfg.transfer_timeout + 1)
    assert r.buffered_bytes == 0 and not r._transfers  # expired, nothing leaks


@pytest.mark.parametrize("sv", [b"\xff" * 9, b"\x05\x01", b"", b"\x01\x01"])
def test_replica_ack_with_garbage_vectors_records_nothing(victim, sv) -> None:
    r = victim.node.replicator
    frame = victim.seal((m.ReplicaAck(((DOC, sv),)),))
    assert victim.feed(frame, "garbage_ack") == "ok"
    assert r.stats.malformed == 1
    assert r.peer_durable("a", DOC) is None
    assert not any(isinstance(e, ReplicaAcked) for e in victim.events)
    # A committer waiting for replicas must not be fooled into counting `a`.
    assert r.replicas_covering(DOC, victim.replica.state_vector(DOC)) == []


@pytest.mark.parametrize("sv", [b"\xff" * 9, b"\x03\x01", b""])
def test_doc_vectors_with_garbage_state_vectors_send_no_diff(victim, sv) -> None:
    r = victim.node.replicator
    frame = victim.seal((m.DocVectors(1, (), ((DOC, sv, b"f" * 32, sv),), True),))
    before = victim.snapshot()
    assert victim.feed(frame, "garbage_vectors") == "ok"
    assert r.stats.malformed == 1 and r.stats.diffs_sent == 0
    assert victim.snapshot()[1] == before[1]


@pytest.mark.parametrize(
    "update", [b"\x00", b"\x01\x02\x03", b"\xff" * 20, b"", b"\x01\x01\xff\xff\xff\xff\x0f"]
)
def test_garbage_update_leaves_fingerprints_unchanged(victim: Victim, update: bytes) -> None:
    before = victim.snapshot()[1]
    for doc_id in (DOC, "session/unknown"):
        frame = victim.seal((m.DocUpdate(doc_id, update, "a", b""),))
        assert victim.feed(frame, "garbage_update") == "ok"
    after = victim.snapshot()[1]
    assert after == before, "a garbage update changed a document or created one"
    assert victim.node.replicator.stats.rejected + victim.node.replicator.stats.malformed >= 1


def test_duplicate_members_and_ourselves_in_a_sync_are_harmless(victim: Victim) -> None:
    members = tuple(m.MemberUpdate("v", V_ADDR, i, m.SUSPECT, "a") for i in range(3)) + tuple(
        m.MemberUpdate("a", A_ADDR, 0, m.ALIVE, "a") for _ in range(3)
    )
    assert victim.feed(victim.seal((m.MembershipSync(members, True),)), "sync_dupes") == "ok"
    assert victim.node.membership.me.state == m.ALIVE


# --- one authenticated frame, bounded work: floods and amplification (issue 8) -------------


def _flood(n: int, prefix: str = "f") -> m.MembershipSync:
    # Short ids and one shared address: ~25 bytes a member, so 30,000 fit one frame.
    return m.MembershipSync(
        tuple(m.MemberUpdate(f"{prefix}{i:x}", "127.0.0.1:9", 0, m.ALIVE, "a") for i in range(n)),
        True,
    )


def test_keyed_member_flood_changes_the_table_by_at_most_the_cap(victim: Victim) -> None:
    # Before the fix one such frame added all 30,000 made-up members (reaped 60 s later).
    v = victim
    ms = v.node.membership
    cap, n = ms.config.max_new_members, 30_000
    frame = v.seal((_flood(n),))
    assert len(frame) <= MAX_FRAME_BYTES
    before = len(ms.members)
    v.events.clear()
    assert v.feed(frame, "member_flood") == "ok"
    assert len(ms.members) == before + cap, SEED
    assert ms.refused["envelope_cap"] == n - cap
    assert sum(isinstance(e, MemberJoined) for e in v.events) == cap
    # The node keeps working: a legitimate member joins through its own push-pull...
    c = m.MemberUpdate("c", "127.0.0.4:7004", 0, m.ALIVE, "c")
    frame = v.codec_for("c").pack(
        v.wall(), m.Envelope("c", c.address, 0, (m.MembershipSync((c,), True),))
    )
    assert v.feed(frame, "legit_join") == "ok"
    assert ms.state_of("c") == m.ALIVE
    # ...and answers its peers: a ping from `a` is acked.
    v.node.membership.take()
    out = v.node.receive(v.now, m.Envelope("a", A_ADDR, 0, (m.Ping(77, "v"),)))
    assert any(isinstance(x, m.Ack) and x.seq == 77 for _, e in out.sends for x in e.messages)
    v.tick(1.0)  # timers run over the enlarged table; everything sent still encodes


def test_repeated_floods_stop_at_the_table_cap(victim: Victim) -> None:
    v = victim
    ms = v.node.membership
    cfg = ms.config
    frames = -(-cfg.max_members // cfg.max_new_members) + 1
    for k in range(frames):
        assert v.feed(v.seal((_flood(cfg.max_new_members, f"f{k}-"),)), "member_flood") == "ok"
        assert len(ms.members) <= cfg.max_members
    assert len(ms.members) == cfg.max_members
    assert ms.refused["table_full"] > 0
    # Real peers were never evicted to make room.
    assert ms.state_of("a") == m.ALIVE and ms.state_of("b") == m.ALIVE
    # Our full-table reply still fits one frame (short ids): everything sent encodes.
    assert v.feed(v.seal((m.MembershipSync((), True),)), "sync_after_flood") == "ok"


@pytest.mark.parametrize("copies", [2, 4096])
def test_one_frame_of_sync_requests_gets_one_table(victim: Victim, copies: int) -> None:
    v = victim
    v.node.membership.take()
    sync = m.MembershipSync((m.MemberUpdate("a", A_ADDR, 0, m.ALIVE, "a"),), True)
    frame = v.seal((sync,) * copies)
    env = v.codec.unpack(v.wall(), frame)
    out = v.node.receive(v.now, env)
    v.check(out)
    tables = [x for _, e in out.sends for x in e.messages if isinstance(x, m.MembershipSync)]
    assert len(tables) == 1
    assert v.node.membership.refused["sync_replies"] == copies - 1


def test_one_frame_of_pingreqs_makes_at_most_max_forwards_probes(victim: Victim) -> None:
    v = victim
    cap = v.node.membership.config.max_forwards
    reqs = tuple(m.PingReq(i, "b", B_ADDR) for i in range(4096))
    env = v.codec.unpack(v.wall(), v.seal(reqs))
    v.node.membership.take()
    out = v.node.receive(v.now, env)
    v.check(out)
    pings = [x for _, e in out.sends for x in e.messages if isinstance(x, m.Ping)]
    assert len(pings) == cap
    assert v.node.membership.refused["forwards"] == 4096 - cap


def test_one_frame_of_digests_is_answered_once(victim: Victim) -> None:
    v = victim
    digest = m.Digest(1, b"\x00" * 16, 5)  # differs from ours: asks for our bucket hashes
    env = v.codec.unpack(v.wall(), v.seal((digest,) * 4096))
    out = v.node.receive(v.now, env)
    v.check(out)
    answers = [x for _, e in out.sends for x in e.messages if isinstance(x, m.DigestBuckets)]
    r = v.node.replicator
    assert len(answers) == 1 and r.outbox_bytes == 0 and r.stats.duplicates == 4095


def test_one_frame_of_full_state_requests_is_served_once(victim: Victim) -> None:
    v = victim
    r = v.node.replicator
    every = tuple(range(r.config.buckets))
    ask = m.DocVectors(1, every, (), True)  # "send me every document you hold"
    env = v.codec.unpack(v.wall(), v.seal((ask,) * 512))
    out = v.node.receive(v.now, env)
    v.check(out)
    diffs = [x for _, e in out.sends for x in e.messages if isinstance(x, m.DocDiff)]
    assert len(diffs) == len(v.replica.doc_ids()) == r.stats.diffs_sent
    assert r.outbox_bytes == 0 and r.stats.duplicates == 511
