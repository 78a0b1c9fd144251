"""Dissemination and anti-entropy of CRDT documents, as a sans-IO state machine.

`Replicator` spreads document updates between peers in two complementary ways:

* **Rumour mongering.** A fresh update (written here, or received for the first time) is
  pushed at once to `fanout` random peers (one of them heard from first-hand when the draw
  has none, so made-up members cannot dilute it) and pushed again on each of the next few ticks,
  about `retransmit_mult * log10(N + 1)` rounds in all. Updates are recognised by a hash of
  (doc_id, update) kept in a bounded cache, so duplicates are neither applied nor forwarded.
  Duplicates are what rumours cost, so each rumour remembers which peers are known to
  hold it (its origin, whoever sent it to us, peers whose replica ack, rumour or
  anti-entropy state vector covers it), pushes only to the others, and ends as soon as
  every peer holds it. Every receiver acks the writer, so the writer is the one that
  knows who lacks an update: it retransmits from the second tick on (acks had a round
  to arrive), to every peer that has not acked, at most `RETRANSMIT_SPREAD * fanout`
  per round. A forwarder pushes once, on first receipt, and retransmits only while the
  writer is not alive in its view. (It forwards even when the writer could have reached
  every peer itself, unless the writer says it did: views differ exactly while members
  come and go, and a failover claim must not wait a round to reach the successor. A
  writer whose fanout covers every peer it holds alive stamps its first copies with a
  digest of that set, `DocUpdate.reached`; a receiver whose own view, with itself in
  place of the writer, hashes the same does not forward, which saves one duplicate per
  receiver per update, and owes those other receivers a replica ack instead, so peers
  still learn one another's durable vectors, which failover ranks successors by.) A
  duplicate is answered with a replica ack, so its sender stops pushing it to us. A pure delete does not advance the
  state vector, so for a delete-only update only direct evidence (the peer sent it to
  us) counts as holding it.
* **Anti-entropy (push-pull).** Every `anti_entropy_interval` one random peer (every
  other round drawn again among first-hand peers if the draw is not one) gets a
  `Digest`: the root of a hash tree (`gossip.digest`) over every document's *fingerprint*.
  Equal roots end the exchange, so an idle round costs O(1) bytes whatever the number of
  documents. Otherwise the peer answers with its bucket hashes, we send `DocVectors`
  (state vector, fingerprint, durable vector) for the differing buckets, and each side
  sends the other a `DocDiff` for every document whose fingerprint differs. Diffs are
  computed from the other side's state vector and carry the whole delete set, so a lost
  pure delete (which does not move the state vector) is healed too. Diffs larger than
  `chunk_bytes` travel in chunks that the receiver reassembles in bounded buffers.

Yrs can leave structs pending when an update arrives before the one that fills its gap,
and integrate them only partly later (FIELD-NOTES). Rumours therefore carry the sender's
state vector: if ours does not cover it after applying, and still does not after
`resync_delay`, we ask that sender for exactly that document (a targeted `DocVectors`).

Replica acknowledgements: a peer that sent us an update for a document (and the update's
origin) is owed a `ReplicaAck` with our *durable* state vector once the runtime reports it
durable (`on_durable`, which answers at once; what arrived already durable is acked on the
next tick, batched: one `ReplicaAck` per peer for all documents). Acks received, and
durable vectors seen during anti-entropy, are tracked per peer and raised as
`ReplicaAcked` when they change. Only members' vectors are kept (`is_member`: alive or
suspect), and they are forgotten when the member is no longer live (the next tick), so
a keyed peer cannot grow the table with made-up senders nor count as a replica in a
commit. Vectors of documents this node holds are kept without limit (they are bounded by
members times documents); at most `max_unknown_durable` of documents it does not hold
(those of a session still on its way here, or made up), the rest counted in
`stats.durable_refused` and dropped.

Invariants: no I/O, no clock, no global randomness (`now` and a seeded `random.Random`
are passed in); every buffer and table is bounded; input from peers that does not make
sense is counted in `stats` and dropped without changing any state. One frame asks for
each piece of work at most once: a `Digest` is answered, and a bucket or document of a
`DocVectors` request served, once per sender per instant (a node receives one envelope
at one `now`), so 4,096 copies of a request in one frame cost what one does.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

import blake3

from crdt_types.docs import check_doc_id
from crdt_types.errors import InvalidValue, LocalError, RemoteError
from crdt_types.vv import decode_state_vector
from gossip.digest import DEFAULT_BUCKETS, HashTree, bucket_of
from gossip.framing import MAX_FRAME_BYTES
from gossip.messages import Digest, DigestBuckets, DocDiff, DocUpdate, DocVectors, ReplicaAck
from gossip.replica import EMPTY_STATE_VECTOR, EMPTY_UPDATE, ReplicaPort, check_remote_doc_id

REPLICATION_MESSAGES = (DocUpdate, Digest, DigestBuckets, DocVectors, DocDiff, ReplicaAck)

# Envelope, sealing and per-message encoding overhead is a few hundred bytes; keep a
# generous margin so a chunk plus its envelope always fits one frame.
FRAME_HEADROOM = 64 * 1024
# What a chunk's message adds to its data: document id (at most 4 KiB on the wire), ints.
MESSAGE_OVERHEAD = 4096 + 64
MAX_CONFIG_BUCKETS = 16384  # 16384 hashes of 16 bytes: 256 KiB in one DigestBuckets

Send = tuple[str, object]

# A rumour is first retransmitted a full tick after its first copies, when their acks had
# time to arrive: the peers not known to hold it then are mostly peers that lack it, so
# push to all of them, up to this many times the fanout (lost acks must not make one
# round cost O(N) copies).
RETRANSMIT_SPREAD = 4
VECTOR_MEMO = 4096  # decoded state vectors remembered (cleared when full)...
VECTOR_MEMO_MAX_BYTES = 512  # ...if at most this long: the memo stays under ~10 MiB


# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentUpdated:
    """A remote update changed document `doc_id`; `origin` wrote it or sent the diff."""

    doc_id: str
    origin: str


@dataclass(frozen=True, slots=True)
class ReplicaAcked:
    """`node` reported `state_vector` as durable for `doc_id` (a new value)."""

    node: str
    doc_id: str
    state_vector: bytes


# --- configuration ---------------------------------------------------------------------


_MAY_BE_ZERO = ("anti_entropy_interval", "resync_delay")


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """Tunables of dissemination and anti-entropy; the defaults suit a LAN."""

    fanout: int = 3  # peers each rumour is pushed to per round
    retransmit_mult: int = 3  # rounds per rumour = mult * ceil(log10(N + 1))
    rumour_feedback: bool = True  # a duplicate received costs the rumour one round
    anti_entropy_interval: float = 0.5  # seconds between exchanges we start (0: every tick)
    session_timeout: float = 5.0  # an exchange we started is forgotten after this
    max_sessions: int = 32
    buckets: int = DEFAULT_BUCKETS  # must be equal on every peer
    chunk_bytes: int = 128 * 1024  # largest update/diff payload in one message
    max_rumours: int = 1024  # active rumours; the oldest stop early (anti-entropy heals)
    dedup_cache: int = 16384  # hashes of updates already seen
    max_transfers: int = 32  # chunked transfers being reassembled at once
    max_transfer_bytes: int = 256 * 1024 * 1024  # one reassembled diff
    max_buffered_bytes: int = 256 * 1024 * 1024  # all reassembly buffers together
    max_chunks: int = 8192
    transfer_timeout: float = 30.0  # a transfer not complete by then is dropped
    resync_delay: float = 1.0  # wait this long for gap-filling updates before re-requesting
    max_resyncs: int = 4096  # documents waiting to be checked for a re-request
    max_ack_targets: int = 16  # peers remembered per document as owed an ack
    # Durable vectors kept (all peers together) for documents this node does not hold.
    max_unknown_durable: int = 1024
    # Bytes (estimated) sent to one peer at one `now`: the node packs what one call
    # returns for a destination into one envelope, so this keeps every frame in bounds.
    max_send_bytes: int = MAX_FRAME_BYTES - FRAME_HEADROOM
    max_outbox_bytes: int = 64 * 1024 * 1024  # held back for later; beyond it, dropped

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, bool):
                if not isinstance(value, bool):
                    raise LocalError(f"ReplicationConfig.{f.name} must be a bool, not {value!r}")
                continue
            # Counts must be ints; durations may be ints or floats. bool is not a number here.
            kind = int if isinstance(f.default, int) else int | float
            if isinstance(value, bool) or not isinstance(value, kind):
                raise LocalError(f"ReplicationConfig.{f.name} must be {f.type}, not {value!r}")
            if value < 0 or (value == 0 and f.name not in _MAY_BE_ZERO):
                raise LocalError(f"ReplicationConfig.{f.name} must be positive, not {value!r}")
        if not 1 <= self.buckets <= MAX_CONFIG_BUCKETS:
            # DigestBuckets carries every bucket hash in one message.
            raise LocalError(f"ReplicationConfig.buckets must be in 1..{MAX_CONFIG_BUCKETS}")
        if self.max_send_bytes > MAX_FRAME_BYTES - FRAME_HEADROOM:
            raise LocalError(
                f"ReplicationConfig.max_send_bytes {self.max_send_bytes} leaves no room for "
                f"the envelope under the {MAX_FRAME_BYTES}-byte frame limit"
            )
        if self.chunk_bytes + MESSAGE_OVERHEAD > self.max_send_bytes:
            raise LocalError(
                f"ReplicationConfig.chunk_bytes {self.chunk_bytes} does not fit "
                f"max_send_bytes {self.max_send_bytes} with its message"
            )


@dataclass(slots=True)
class ReplicationStats:
    """Counters for metrics and tests; only ever increase."""

    rumours_sent: int = 0
    updates_received: int = 0
    updates_applied: int = 0  # updates and diffs that changed a document
    duplicates: int = 0
    rejected: int = 0  # updates or diffs that did not apply (garbage)
    malformed: int = 0  # messages or chunk sequences that made no sense
    unsolicited: int = 0  # replies to exchanges we did not start (or forgot)
    digests_sent: int = 0
    digests_matched: int = 0  # exchanges that ended at the root: the idle case
    diffs_sent: int = 0
    diff_bytes_sent: int = 0
    chunks_sent: int = 0
    transfers_expired: int = 0
    transfers_evicted: int = 0
    rumours_evicted: int = 0
    sends_deferred: int = 0  # held in the outbox to keep a frame under the limit
    sends_dropped: int = 0  # outbox full: dropped (anti-entropy heals)
    resyncs_requested: int = 0
    acks_sent: int = 0
    acks_received: int = 0
    durable_refused: int = 0  # durable vectors dropped: not a member, or over the bound
    last_error: str = ""


def approx_size(msg: object) -> int:
    """An upper-bound estimate of a replication message's encoded size, for packing frames."""
    quick = _QUICK_SIZE.get(type(msg))
    if quick is not None:
        return quick(msg)
    size = 16
    for name in msg.__slots__:  # type: ignore[attr-defined]
        size += _approx(getattr(msg, name))
    return size


def _approx(value: object) -> int:
    if isinstance(value, bytes):
        return len(value) + 5
    if isinstance(value, str):
        return len(value.encode()) + 5
    if isinstance(value, tuple):
        return 5 + sum(_approx(v) for v in value)
    return 9


# The hot messages, sized without walking their fields: ids are at most 4 bytes a
# character in UTF-8, every field adds at most 9 bytes of msgpack header.
_QUICK_SIZE = {
    DocUpdate: lambda x: (
        64
        + 4 * (len(x.doc_id) + len(x.origin))
        + len(x.update)
        + len(x.state_vector)
        + len(x.reached)
    ),
    DocDiff: lambda x: 64 + 4 * len(x.doc_id) + len(x.data),
    # Many entries per ack (one per document of a group commit): (str, bytes) pairs.
    ReplicaAck: lambda x: 16 + sum(24 + 4 * len(d) + len(sv) for d, sv in x.entries),
    Digest: lambda x: 48 + len(x.root),
}


# --- internal records --------------------------------------------------------------------


@dataclass(slots=True)
class _Rumour:
    doc_id: str
    update: bytes
    origin: str
    state_vector: bytes  # of the document right after the update: covering it means holding it
    holders: set[str]  # peers known to hold it already: never pushed to again
    rounds_left: int
    # A pure delete does not advance the state vector (FIELD-NOTES), so a vector covering
    # ours proves nothing for it: only direct evidence (the peer sent it) counts then.
    by_vector: bool = True
    clocks: dict[int, int] | None = None  # state_vector decoded, on first use
    fresh: bool = True  # no tick since it started: acks of its first copies may be in flight


@dataclass(slots=True)
class _Transfer:
    doc_id: str
    chunks: int
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


@dataclass(slots=True)
class _Expect:
    peer: str
    clocks: dict[int, int]
    due: float


# --- the state machine ---------------------------------------------------------------------


class Replicator:
    """Rumour mongering, push-pull anti-entropy and replica acks for one node."""

    def __init__(
        self,
        node_id: str,
        replica: ReplicaPort,
        rng: random.Random,
        config: ReplicationConfig | None = None,
        *,
        is_member: Callable[[str], bool] | None = None,
        first_hand: Callable[[str], bool] | None = None,
    ) -> None:
        """`is_member(node)`: whether `node` is alive or suspect (None: any sender counts).

        `first_hand(node)`: whether a frame from `node` reached us directly (None: no
        preference); each push of a rumour includes such a peer when there is one.
        """
        if not isinstance(node_id, str) or not node_id:
            raise LocalError(f"node id must be a non-empty string, not {node_id!r}")
        if not isinstance(rng, random.Random):
            raise LocalError("rng must be a random.Random (seeded, so runs replay)")
        self.node_id = node_id
        self.replica = replica
        self.config = config if config is not None else ReplicationConfig()
        self.stats = ReplicationStats()
        self._rng = rng
        self._tree = HashTree(self.config.buckets)
        self._peers: list[str] = []
        self._rumours: dict[bytes, _Rumour] = {}
        self._doc_rumours: dict[str, dict[bytes, None]] = {}  # doc_id -> keys of its rumours
        self._dirty: dict[str, None] = {}  # documents whose leaf in the tree is stale
        self._vectors: dict[bytes, dict[int, int]] = {}  # encoded state vector -> decoded
        self._seen: dict[bytes, None] = {}  # insertion-ordered: evict oldest first
        self._sessions: dict[int, tuple[str, float]] = {}
        self._transfers: dict[tuple[str, int], _Transfer] = {}
        self._buffered = 0
        self._expect: dict[str, _Expect] = {}
        self._ack_wanted: dict[str, dict[str, None]] = {}
        self._ack_out: dict[str, dict[str, bytes]] = {}
        self._peer_durable: dict[str, dict[str, bytes]] = {}
        self._is_member = is_member
        self._first_hand = first_hand
        # (node, doc) of the kept vectors of documents not held here when they came.
        self._unknown_durable: dict[tuple[str, str], None] = {}
        self._unknown_scanned = -1  # documents held at the last scan of that table
        self._next_anti_entropy: float | None = None
        self._ae_rounds = 0  # exchanges started, to alternate how the partner is drawn
        self._outbox: dict[str, deque[tuple[object, int]]] = {}
        self._outbox_bytes = 0
        self._budget_now: float | None = None
        self._budget_used: dict[str, int] = {}
        self._views: dict[str, bytes] = {}  # origin -> digest of our view with us for it
        self._asked_at: tuple[float, str] | None = None  # (now, sender) of `_asked`
        self._asked: set[object] = set()  # requests of that sender answered at that instant
        self.rebuild()

    # -- public API -------------------------------------------------------------------

    def rebuild(self) -> None:
        """Recompute the hash tree from every document the replica holds (O(documents))."""
        self._tree = HashTree(self.config.buckets)
        self._dirty = {}
        for doc_id in self.replica.doc_ids():
            self._tree.set(doc_id, self.replica.fingerprint(doc_id))

    def refresh(self, doc_id: str) -> None:
        """Note that `doc_id` changed outside this replicator (its leaf is re-read lazily)."""
        # A fingerprint costs a delete-set encoding; a hot document changes many times
        # between two anti-entropy rounds, and only those rounds read the tree.
        self._dirty[doc_id] = None

    def _sync_tree(self) -> None:
        """Bring every stale leaf up to date; call before reading the tree."""
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            for doc_id in dirty:
                self._tree.set(doc_id, self.replica.fingerprint(doc_id))

    @property
    def root(self) -> bytes:
        """The current root of the digest tree (equal on converged replicas)."""
        self._sync_tree()
        return self._tree.root

    def set_peers(self, peers: Iterable[str]) -> None:
        """Tell the replicator who is alive now (tick does this too)."""
        peers = [p for p in peers if p != self.node_id]
        if peers != self._peers:
            self._views = {}
            if self._is_member is not None:
                # A member that died or left is no replica a commit or a takeover can
                # count on; what it holds is reported again if it comes back.
                live = set(peers)
                for node in [n for n in self._peer_durable if n not in live]:
                    self._forget_durable(node)
        self._peers = peers

    def on_local_update(self, now: float, doc_id: str, update: bytes) -> list[Send]:
        """Spread an update already applied to the local replica; returns messages to send."""
        check_doc_id(doc_id)
        if not isinstance(update, bytes):
            raise LocalError(f"update must be bytes, not {type(update).__name__}")
        self.refresh(doc_id)
        sends: list[Send] = []
        targets = self._pick(self.config.fanout, ())
        if len(update) > self.config.chunk_bytes:
            # Too big to gossip as one rumour: push it in chunks to a few peers once and
            # let anti-entropy carry it further.
            for peer in targets:
                self._send_diff(sends, peer, doc_id, update)
            return self._shape(now, sends)
        key = self._remember(doc_id, update)
        rumour = _Rumour(
            doc_id,
            update,
            self.node_id,
            self.replica.state_vector(doc_id),
            set(),
            self._rounds(),
            _has_structs(update),
        )
        # Every peer we hold alive gets a copy from us: say so, so that receivers with
        # the same view do not forward copies that could only be duplicates.
        reached = self._view_digest(self.node_id) if len(targets) == len(self._peers) else b""
        self._push(sends, rumour, targets, reached)
        self._add_rumour(key, rumour)
        return self._shape(now, sends)

    def tick(self, now: float, peers: Sequence[str]) -> list[Send]:
        """Retransmit rumours, start an anti-entropy exchange when due, expire old state."""
        self.set_peers(peers)
        sends: list[Send] = []
        self._expire(now)
        if self._rumours:
            fanout = self.config.fanout
            live = set(self._peers)
            for key in list(self._rumours):
                rumour = self._rumours[key]
                if rumour.fresh:
                    # Its first copies left since the last tick and their acks may still
                    # be on the way: a copy now would mostly be a duplicate.
                    rumour.fresh = False
                    continue
                rumour.rounds_left -= 1
                if rumour.origin != self.node_id and rumour.origin in live:
                    # The writer is alive and retransmits itself, to exactly the peers
                    # that have not acked it (every receiver acks the writer); a copy
                    # from us could only be a guess. We step in if it is not alive.
                    pass
                else:
                    # Only peers not known to hold it: an ack or a covering vector from
                    # a peer ends its copies, and a rumour every peer holds ends at once.
                    pool = [p for p in self._peers if p not in rumour.holders]
                    if not pool:
                        self._drop_rumour(key)
                        continue
                    k = fanout * RETRANSMIT_SPREAD
                    targets = self._sample(pool, k)
                    self._push(sends, rumour, targets)
                if rumour.rounds_left <= 0:
                    self._drop_rumour(key)
        self._resync(now, sends)
        if self._peers and (self._next_anti_entropy is None or now >= self._next_anti_entropy):
            self._next_anti_entropy = now + self.config.anti_entropy_interval
            # Every other round drawn like a rumour's targets: after a flood of made-up
            # members a uniform draw alone almost never picks a real peer, and nothing is
            # healed; the uniform rounds keep mixing a large mesh still meeting its members.
            self._ae_rounds += 1
            peer = self._rng.choice(self._peers)
            if self._ae_rounds % 2 == 0:
                (peer,) = self._first_hand_in([peer], self._peers)
            session = self._new_session(now, peer)
            sends.append((peer, Digest(session, self.root, len(self._tree))))
            self.stats.digests_sent += 1
        self._flush_acks(sends)
        return self._shape(now, sends)

    def receive(self, now: float, sender: str, msg: object) -> tuple[list[Send], list[object]]:
        """Handle one replication message from `sender`; returns (messages to send, events)."""
        sends: list[Send] = []
        events: list[object] = []
        try:
            if isinstance(msg, DocUpdate):
                self._on_update(now, sender, msg, sends, events)
            elif isinstance(msg, Digest):
                if self._first_ask(now, sender, (Digest,)):
                    self._on_digest(sender, msg, sends)
            elif isinstance(msg, DigestBuckets):
                self._on_buckets(sender, msg, sends)
            elif isinstance(msg, DocVectors):
                self._on_vectors(now, sender, msg, sends, events)
            elif isinstance(msg, DocDiff):
                self._on_chunk(now, sender, msg, sends, events)
            elif isinstance(msg, ReplicaAck):
                self._on_ack(sender, msg, events)
            else:
                raise LocalError(f"not a replication message: {type(msg).__name__}")
        except RemoteError as exc:
            self.stats.malformed += 1
            self.stats.last_error = str(exc)
        # Acks owed for what arrived already durable wait for the next tick or on_durable,
        # so that a burst of updates (a full sync) is answered by one ack, not one each.
        return self._shape(now, sends), events

    def on_durable(self, now: float, doc_id: str) -> list[Send]:
        """`doc_id` was persisted: send our durable state vector to peers owed an ack."""
        return self.on_durable_many(now, (doc_id,))

    def on_durable_many(self, now: float, doc_ids: Iterable[str]) -> list[Send]:
        """Like `on_durable` for a group commit: one `ReplicaAck` per peer for all documents."""
        for doc_id in doc_ids:
            wanted = self._ack_wanted.get(doc_id)
            if wanted:
                self._queue_acks(doc_id, wanted)
        sends: list[Send] = []
        self._flush_acks(sends)
        return self._shape(now, sends)

    def pull(self, now: float, peer: str, doc_ids: Iterable[str]) -> tuple[int, list[Send]]:
        """Start a targeted exchange of `doc_ids` with `peer` (both sides send what the other lacks).

        Returns the exchange's session id (the peer's `DocVectors` reply carries it, so
        the caller can tell when the answer arrived: the peer sends it after its diffs)
        and the messages to send.
        """
        session = self._new_session(now, peer)
        self._sync_tree()
        entries = tuple(
            self._entry(d) if d in self._tree else (d, EMPTY_STATE_VECTOR, b"", EMPTY_STATE_VECTOR)
            for d in sorted(set(doc_ids))
        )
        return session, self._shape(now, [(peer, DocVectors(session, (), entries, True))])

    def peer_durable(self, node: str, doc_id: str) -> bytes | None:
        """The last durable state vector `node` reported for `doc_id`, if any."""
        return self._peer_durable.get(node, {}).get(doc_id)

    def replicas_covering(self, doc_id: str, state_vector: bytes) -> list[str]:
        """Peers whose reported durable vector of `doc_id` covers `state_vector`, sorted."""
        want: dict[int, int] | None = None
        out = []
        for node, docs in self._peer_durable.items():
            sv = docs.get(doc_id)
            if sv is None:
                continue
            # Committers ask after every ack; a peer that reports exactly the vector
            # waited for (the usual case) needs no decoding.
            if sv != state_vector:
                if want is None:
                    want = self._clocks(state_vector)
                if not _covers(self._clocks(sv), want):
                    continue
            out.append(node)
        return sorted(out)

    def forget_peer(self, node: str) -> None:
        """Drop everything kept about `node` (call when membership reaps it)."""
        self._forget_durable(node)
        self._ack_out.pop(node, None)
        for _, size in self._outbox.pop(node, ()):
            self._outbox_bytes -= size
        for wanted in self._ack_wanted.values():
            wanted.pop(node, None)
        for key in [k for k in self._transfers if k[0] == node]:
            self._drop_transfer(key)
        for session in [s for s, (p, _) in self._sessions.items() if p == node]:
            del self._sessions[session]
        self._peers = [p for p in self._peers if p != node]

    def _forget_durable(self, node: str) -> None:
        if self._peer_durable.pop(node, None) is not None and self._unknown_durable:
            for key in [k for k in self._unknown_durable if k[0] == node]:
                del self._unknown_durable[key]

    @property
    def durable_entries(self) -> int:
        """Peer durable vectors kept (one per peer and document)."""
        return sum(len(docs) for docs in self._peer_durable.values())

    @property
    def pending_rumours(self) -> int:
        """Rumours still being retransmitted."""
        return len(self._rumours)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held in chunk reassembly buffers."""
        return self._buffered

    @property
    def outbox_bytes(self) -> int:
        """Bytes held back to keep frames under the limit, sent on later calls."""
        return self._outbox_bytes

    # -- output shaping -----------------------------------------------------------------

    def _shape(self, now: float, sends: list[Send]) -> list[Send]:
        """Cap the bytes per destination at one `now`; hold the rest back in order."""
        if not sends and not self._outbox:
            return sends
        if self._budget_now != now:
            # A new instant: whatever was sent before went out in earlier frames.
            self._budget_now = now
            self._budget_used = {}
        budget = self.config.max_send_bytes
        used = self._budget_used
        out: list[Send] = []
        for dest in list(self._outbox):
            queue = self._outbox[dest]
            while queue and used.get(dest, 0) + queue[0][1] <= budget:
                msg, size = queue.popleft()
                self._outbox_bytes -= size
                used[dest] = used.get(dest, 0) + size
                out.append((dest, msg))
            if not queue:
                del self._outbox[dest]
        for dest, msg in sends:
            size = approx_size(msg)
            if dest not in self._outbox and used.get(dest, 0) + size <= budget:
                used[dest] = used.get(dest, 0) + size
                out.append((dest, msg))
            elif self._outbox_bytes + size <= self.config.max_outbox_bytes:
                self._outbox.setdefault(dest, deque()).append((msg, size))
                self._outbox_bytes += size
                self.stats.sends_deferred += 1
            else:
                self.stats.sends_dropped += 1
        return out

    # -- rumours ----------------------------------------------------------------------

    def _rounds(self) -> int:
        n = len(self._peers) + 1
        return max(1, self.config.retransmit_mult * math.ceil(math.log10(n + 1)))

    def _pick(self, k: int, exclude: Iterable[str]) -> list[str]:
        excluded = set(exclude)
        return self._sample([p for p in self._peers if p not in excluded], k)

    def _sample(self, pool: list[str], k: int) -> list[str]:
        """Up to k peers of `pool`, uniformly, but one heard from first-hand if any is there.

        Made-up members that a keyed peer announces never talk to us; drawn uniformly they
        took nearly every slot after a flood of 2,048 (a replicated commit waited seconds
        for its rumour to find the one real peer). A uniform draw without a first-hand
        peer trades its last slot for one; otherwise it is kept, so in a mesh where every
        member has talked to us the draw is exactly the uniform one, and members not yet
        heard from (newcomers) keep the other slots, and anti-entropy, as before.
        """
        if len(pool) <= k:
            return pool
        return self._first_hand_in(self._rng.sample(pool, k), pool)

    def _first_hand_in(self, chosen: list[str], pool: list[str]) -> list[str]:
        """`chosen` (drawn from `pool`), its last slot traded for a first-hand peer if it has none."""
        first_hand = self._first_hand
        if first_hand is None or not chosen or any(first_hand(p) for p in chosen):
            return chosen
        known = [p for p in pool if first_hand(p)]
        if known:
            chosen[-1] = self._rng.choice(known)
        return chosen

    def _remember(self, doc_id: str, update: bytes) -> bytes:
        key = _update_key(doc_id, update)
        self._seen[key] = None
        while len(self._seen) > self.config.dedup_cache:
            del self._seen[next(iter(self._seen))]
        return key

    def _add_rumour(self, key: bytes, rumour: _Rumour) -> None:
        self._rumours[key] = rumour
        self._doc_rumours.setdefault(rumour.doc_id, {})[key] = None
        while len(self._rumours) > self.config.max_rumours:
            self._drop_rumour(next(iter(self._rumours)))
            self.stats.rumours_evicted += 1

    def _drop_rumour(self, key: bytes) -> None:
        rumour = self._rumours.pop(key, None)
        if rumour is None:
            return
        keys = self._doc_rumours.get(rumour.doc_id)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._doc_rumours[rumour.doc_id]

    def _clocks(self, sv: bytes, sender: str | None = None) -> dict[int, int]:
        """`sv` decoded, memoised; shared, never mutate it. RemoteError names `sender`."""
        # The same few vectors come back again and again (in rumours, acks, anti-entropy
        # entries, commit checks): decoding them was the largest protocol cost per commit.
        clocks = self._vectors.get(sv)
        if clocks is None:
            clocks = decode_state_vector(sv) if sender is None else _decode_remote_sv(sv, sender)
            if len(sv) <= VECTOR_MEMO_MAX_BYTES:
                if len(self._vectors) >= VECTOR_MEMO:
                    self._vectors.clear()
                self._vectors[sv] = clocks
        return clocks

    def _note_holder(self, peer: str, doc_id: str, sv: bytes) -> None:
        """`peer` holds `sv` of `doc_id` (validated): stop pushing it what that covers."""
        keys = self._doc_rumours.get(doc_id)
        if not keys or not sv or sv == EMPTY_STATE_VECTOR:
            return
        clocks = None
        done: list[bytes] = []
        for key in keys:
            rumour = self._rumours.get(key)
            if rumour is None or not rumour.by_vector or peer in rumour.holders:
                continue
            # Usually the peer reports exactly the vector the rumour left us with.
            if sv != rumour.state_vector:
                if clocks is None:
                    clocks = self._clocks(sv)
                if rumour.clocks is None:
                    rumour.clocks = self._clocks(rumour.state_vector)
                if not _covers(clocks, rumour.clocks):
                    continue
            holders = rumour.holders
            holders.add(peer)
            if len(holders) >= len(self._peers) and all(p in holders for p in self._peers):
                done.append(key)  # every peer holds it: nothing left to push (as in tick)
        for key in done:
            self._drop_rumour(key)

    def _view_digest(self, origin: str) -> bytes:
        """Digest of the peers `origin` would push to if its view were ours (memoised)."""
        digest = self._views.get(origin)
        if digest is None:
            nodes = {*self._peers, self.node_id}
            nodes.discard(origin)
            digest = self._views[origin] = _peer_set_digest(nodes) if nodes else b""
        return digest

    def _push(
        self, sends: list[Send], rumour: _Rumour, targets: Iterable[str], reached: bytes = b""
    ) -> None:
        msg = DocUpdate(rumour.doc_id, rumour.update, rumour.origin, rumour.state_vector, reached)
        for peer in targets:
            sends.append((peer, msg))
            self.stats.rumours_sent += 1

    def _on_update(
        self, now: float, sender: str, msg: DocUpdate, sends: list[Send], events: list[object]
    ) -> None:
        check_remote_doc_id(msg.doc_id)
        self.stats.updates_received += 1
        origin = msg.origin or sender
        key = _update_key(msg.doc_id, msg.update)
        if key in self._seen:
            self.stats.duplicates += 1
            rumour = self._rumours.get(key)
            if rumour is not None:
                rumour.holders.add(sender)
                rumour.holders.add(origin)
                if self.config.rumour_feedback:
                    # Demers' "feedback" rumour mongering: hearing a rumour back means
                    # many peers know it already, so lose interest faster.
                    rumour.rounds_left -= 1
                    if rumour.rounds_left <= 0:
                        self._drop_rumour(key)
            if msg.state_vector:
                try:
                    self._clocks(msg.state_vector, sender)
                except RemoteError:
                    pass  # evidence of nothing; the duplicate itself is harmless
                else:
                    self._note_holder(sender, msg.doc_id, msg.state_vector)
            # Ack it: the writer may have lost our earlier ack, and any other sender
            # learns we hold it and stops pushing it to us. (Acks are also how peers
            # learn each other's durable vectors, which failover ranks successors by:
            # without these, a simulated failover claimed one session twice.)
            self._want_ack(msg.doc_id, (sender,))
            return
        self._remember(msg.doc_id, msg.update)
        if not self._apply(msg.doc_id, msg.update, origin, events):
            return
        rumour = _Rumour(
            msg.doc_id,
            msg.update,
            origin,
            self.replica.state_vector(msg.doc_id),
            {sender, origin},
            self._rounds(),
            _has_structs(msg.update),
        )
        owed: Iterable[str] = (sender, origin)
        if msg.reached and sender == origin and msg.reached == self._view_digest(origin):
            # The writer pushed it to every peer we know of: a copy from us would be a
            # duplicate. Those peers are owed our durable vector all the same (acks
            # of duplicates were how they learnt it, and failover ranks by it).
            # The writer last: `_want_ack` keeps the newest `max_ack_targets` targets.
            owed = (*(p for p in self._peers if p != sender), sender)
        else:
            self._push(sends, rumour, self._pick(self.config.fanout, rumour.holders))
        self._add_rumour(key, rumour)
        self._want_ack(msg.doc_id, owed)
        if msg.state_vector:
            # Raises RemoteError on a vector that does not decode (after the update,
            # which was fine, was applied and spread: nothing valid is lost).
            self._expect_cover(now, sender, msg.doc_id, msg.state_vector)
            self._note_holder(sender, msg.doc_id, msg.state_vector)

    def _apply(self, doc_id: str, update: bytes, origin: str, events: list[object]) -> bool:
        """Apply remote bytes; False if they were garbage (counted, state unchanged)."""
        try:
            changed = self.replica.apply(doc_id, update)
        except RemoteError as exc:
            self.stats.rejected += 1
            self.stats.last_error = str(exc)
            return False
        if changed:
            self.stats.updates_applied += 1
            self.refresh(doc_id)
            events.append(DocumentUpdated(doc_id, origin))
        return True

    # -- anti-entropy -------------------------------------------------------------------

    def _new_session(self, now: float, peer: str) -> int:
        session = self._rng.getrandbits(62)
        self._sessions[session] = (peer, now)
        while len(self._sessions) > self.config.max_sessions:
            del self._sessions[next(iter(self._sessions))]
        return session

    def _session_peer_ok(self, session: int, sender: str) -> bool:
        entry = self._sessions.get(session)
        if entry is None or entry[0] != sender:
            self.stats.unsolicited += 1
            return False
        return True

    def _first_ask(self, now: float, sender: str, keys: Iterable[object]) -> list[object]:
        """The `keys` that `sender` has not asked for yet at this instant (now marked asked)."""
        if self._asked_at != (now, sender):
            self._asked_at = (now, sender)
            self._asked = set()
        keys = list(keys)
        fresh = [k for k in keys if k not in self._asked]
        self._asked.update(fresh)
        if keys and not fresh:
            self.stats.duplicates += 1
        return fresh

    def _on_digest(self, sender: str, msg: Digest, sends: list[Send]) -> None:
        if msg.root == self.root and msg.documents == len(self._tree):
            self.stats.digests_matched += 1
            return
        sends.append((sender, DigestBuckets(msg.session, self._tree.bucket_hashes(), True)))

    def _on_buckets(self, sender: str, msg: DigestBuckets, sends: list[Send]) -> None:
        if not msg.reply or not self._session_peer_ok(msg.session, sender):
            return
        self._sync_tree()
        if len(msg.buckets) != self._tree.buckets:
            raise RemoteError(
                f"{sender} uses {len(msg.buckets)} digest buckets, we use {self._tree.buckets}"
            )
        differing = self._tree.differing_buckets(msg.buckets)
        if not differing:
            self.stats.digests_matched += 1
            return
        self._send_vectors(sends, sender, msg.session, differing, reply=True)

    def _entry(self, doc_id: str) -> tuple[str, bytes, bytes, bytes]:
        r = self.replica
        return (
            doc_id,
            r.state_vector(doc_id),
            r.fingerprint(doc_id),
            r.durable_state_vector(doc_id),
        )

    def _send_vectors(
        self, sends: list[Send], peer: str, session: int, buckets: list[int], *, reply: bool
    ) -> None:
        """Send our entries for `buckets`, split so no message exceeds a chunk."""
        budget = self.config.chunk_bytes
        ids: list[int] = []
        entries: list[tuple[str, bytes, bytes, bytes]] = []
        size = 0
        for bucket in buckets:
            bucket_entries = [self._entry(d) for d in self._tree.docs_in(bucket)]
            bucket_size = sum(_approx(e) for e in bucket_entries) + 9
            if ids and size + bucket_size > budget:
                sends.append((peer, DocVectors(session, tuple(ids), tuple(entries), reply)))
                ids, entries, size = [], [], 0
            ids.append(bucket)
            entries.extend(bucket_entries)
            size += bucket_size
        if ids:
            sends.append((peer, DocVectors(session, tuple(ids), tuple(entries), reply)))

    def _on_vectors(
        self, now: float, sender: str, msg: DocVectors, sends: list[Send], events: list[object]
    ) -> None:
        if not msg.reply and not self._session_peer_ok(msg.session, sender):
            return
        self._sync_tree()
        nb = self._tree.buckets
        if any(not isinstance(b, int) or not 0 <= b < nb for b in msg.bucket_ids):
            raise RemoteError(f"{sender} named a digest bucket outside 0..{nb - 1}")
        theirs: dict[str, tuple[bytes, bytes, bytes]] = {}
        for entry in msg.entries:
            if len(entry) != 4:
                raise RemoteError(f"{sender} sent a document vector entry of {len(entry)} fields")
            doc_id, sv, fp, durable = entry
            check_remote_doc_id(doc_id)
            self._clocks(sv, sender)
            self._clocks(durable, sender)
            theirs[doc_id] = (sv, fp, durable)
        wanted_buckets = set(msg.bucket_ids)
        if wanted_buckets:
            considered = {d for b in wanted_buckets for d in self._tree.docs_in(b)}
            considered.update(d for d in theirs if bucket_of(d, nb) in wanted_buckets)
        else:
            considered = set(theirs)
        if msg.reply and considered:
            # Serve each document once per request frame, however often it is asked for; a
            # request with nothing left to serve was answered already (no second reply).
            considered = set(self._first_ask(now, sender, considered))
            if not considered:
                return
        for doc_id, (sv, _, durable) in theirs.items():
            self._record_durable(sender, doc_id, durable, events)
            self._note_holder(sender, doc_id, sv)
        ours: list[tuple[str, bytes, bytes, bytes]] = []
        diffs: list[tuple[str, bytes]] = []
        for doc_id in sorted(considered):
            mine = self._entry(doc_id) if doc_id in self._tree else None
            other = theirs.get(doc_id)
            if mine is not None:
                ours.append(mine)
            elif other is not None:
                # Tell them we hold nothing, so they send the whole document.
                ours.append((doc_id, EMPTY_STATE_VECTOR, b"", EMPTY_STATE_VECTOR))
            if mine is None or (other is not None and mine[2] == other[1]):
                if mine is None and other is not None:
                    self._expect_cover(now, sender, doc_id, other[0])
                continue
            their_sv = other[0] if other is not None else EMPTY_STATE_VECTOR
            diffs.append((doc_id, their_sv))
            if other is not None:
                self._expect_cover(now, sender, doc_id, other[0])
        for doc_id, their_sv in diffs:
            try:
                data = self.replica.diff(doc_id, their_sv)
            except RemoteError as exc:
                self.stats.malformed += 1
                self.stats.last_error = str(exc)
                continue
            if data != EMPTY_UPDATE:
                self._send_diff(sends, sender, doc_id, data)
        if msg.reply:
            # After the diffs (the outbox keeps per-peer order): over an ordered stream,
            # when the requester sees this reply it has everything we sent it.
            sends.append((sender, DocVectors(msg.session, msg.bucket_ids, tuple(ours), False)))

    # -- chunked diffs ----------------------------------------------------------------------

    def _send_diff(self, sends: list[Send], peer: str, doc_id: str, data: bytes) -> None:
        size = self.config.chunk_bytes
        chunks = max(1, -(-len(data) // size))
        transfer = self._rng.getrandbits(63)
        for i in range(chunks):
            sends.append(
                (peer, DocDiff(doc_id, transfer, i, chunks, data[i * size : (i + 1) * size]))
            )
        self.stats.diffs_sent += 1
        self.stats.chunks_sent += chunks
        self.stats.diff_bytes_sent += len(data)

    def _on_chunk(
        self, now: float, sender: str, msg: DocDiff, sends: list[Send], events: list[object]
    ) -> None:
        check_remote_doc_id(msg.doc_id)
        cfg = self.config
        if not (1 <= msg.chunks <= cfg.max_chunks and 0 <= msg.chunk < msg.chunks):
            raise RemoteError(f"{sender} sent chunk {msg.chunk} of {msg.chunks}")
        if msg.chunks == 1:
            self._finish_diff(sender, msg.doc_id, msg.data, events)
            return
        key = (sender, msg.transfer)
        t = self._transfers.get(key)
        if t is None:
            while len(self._transfers) >= cfg.max_transfers:
                self._drop_transfer(next(iter(self._transfers)))
                self.stats.transfers_evicted += 1
            t = self._transfers[key] = _Transfer(msg.doc_id, msg.chunks, now)
        if t.doc_id != msg.doc_id or t.chunks != msg.chunks:
            self._drop_transfer(key)
            raise RemoteError(
                f"{sender} changed document or chunk count inside transfer {msg.transfer}"
            )
        known = t.parts.get(msg.chunk)
        if known is not None:
            if known != msg.data:
                self._drop_transfer(key)
                raise RemoteError(f"{sender} sent two different chunk {msg.chunk} in one transfer")
            self.stats.duplicates += 1
            return
        if t.size + len(msg.data) > cfg.max_transfer_bytes:
            self._drop_transfer(key)
            raise RemoteError(
                f"{sender} transfer {msg.transfer} exceeds {cfg.max_transfer_bytes} bytes"
            )
        # Make room by dropping the oldest other transfers; a dropped one is healed by the
        # next anti-entropy round.
        while self._buffered + len(msg.data) > cfg.max_buffered_bytes:
            oldest = (
                next(k for k in self._transfers if k != key) if len(self._transfers) > 1 else None
            )
            if oldest is None:
                self._drop_transfer(key)
                raise RemoteError("reassembly buffers full")
            self._drop_transfer(oldest)
            self.stats.transfers_evicted += 1
        t.parts[msg.chunk] = msg.data
        t.size += len(msg.data)
        self._buffered += len(msg.data)
        if len(t.parts) == t.chunks:
            data = b"".join(t.parts[i] for i in range(t.chunks))
            self._drop_transfer(key)
            self._finish_diff(sender, msg.doc_id, data, events)

    def _drop_transfer(self, key: tuple[str, int]) -> None:
        t = self._transfers.pop(key, None)
        if t is not None:
            self._buffered -= t.size

    def _finish_diff(self, sender: str, doc_id: str, data: bytes, events: list[object]) -> None:
        self.stats.updates_received += 1
        if self._apply(doc_id, data, sender, events):
            self._want_ack(doc_id, (sender,))

    # -- re-requests after partial integration ---------------------------------------------

    def _expect_cover(self, now: float, peer: str, doc_id: str, their_sv: bytes) -> None:
        """Remember to check later that we caught up with what `peer` said it holds."""
        ours = self.replica.state_vector(doc_id)
        exp = self._expect.get(doc_id)
        if exp is None and their_sv == ours:
            return  # the usual case: we hold exactly what they hold
        theirs = dict(self._clocks(their_sv, peer))
        if exp is not None:
            # Rumours arrive in any order: an older, smaller vector must not cancel the
            # wait for a newer one, so wait for the element-wise maximum.
            for client, clock in exp.clocks.items():
                if clock > theirs.get(client, 0):
                    theirs[client] = clock
        if _covers(self._clocks(ours), theirs):
            self._expect.pop(doc_id, None)
            return
        if exp is not None:
            exp.peer, exp.clocks = peer, theirs
        elif len(self._expect) < self.config.max_resyncs:
            self._expect[doc_id] = _Expect(peer, theirs, now + self.config.resync_delay)

    def _resync(self, now: float, sends: list[Send]) -> None:
        if not self._expect:
            return
        by_peer: dict[str, list[str]] = {}
        for doc_id, exp in list(self._expect.items()):
            if exp.due > now:
                continue
            del self._expect[doc_id]
            ours = self._clocks(self.replica.state_vector(doc_id))
            if not _covers(ours, exp.clocks):
                by_peer.setdefault(exp.peer, []).append(doc_id)
        for peer, doc_ids in by_peer.items():
            session = self._new_session(now, peer)
            entries = tuple(self._entry(d) for d in sorted(doc_ids))
            sends.append((peer, DocVectors(session, (), entries, True)))
            self.stats.resyncs_requested += len(doc_ids)

    # -- replica acks -------------------------------------------------------------------------

    def _want_ack(self, doc_id: str, peers: Iterable[str]) -> None:
        wanted = self._ack_wanted.setdefault(doc_id, {})
        for peer in peers:
            if peer and peer != self.node_id:
                wanted[peer] = None
        while len(wanted) > self.config.max_ack_targets:
            del wanted[next(iter(wanted))]
        if self.replica.durable_state_vector(doc_id) == self.replica.state_vector(doc_id):
            self._queue_acks(doc_id, wanted)

    def _queue_acks(self, doc_id: str, wanted: dict[str, None]) -> None:
        durable = self.replica.durable_state_vector(doc_id)
        if durable == EMPTY_STATE_VECTOR:
            return
        for peer in wanted:
            self._ack_out.setdefault(peer, {})[doc_id] = durable
        if durable == self.replica.state_vector(doc_id):
            # Everything we hold is durable: nobody is owed a later, larger ack.
            self._ack_wanted.pop(doc_id, None)

    def _flush_acks(self, sends: list[Send]) -> None:
        if not self._ack_out:
            return
        for peer, docs in self._ack_out.items():
            sends.append((peer, ReplicaAck(tuple(docs.items()))))
            self.stats.acks_sent += 1
        self._ack_out = {}

    def _on_ack(self, sender: str, msg: ReplicaAck, events: list[object]) -> None:
        self.stats.acks_received += 1
        checked = []
        for entry in msg.entries:
            if len(entry) != 2:
                raise RemoteError(f"{sender} sent a replica ack entry of {len(entry)} fields")
            doc_id, sv = entry
            check_remote_doc_id(doc_id)
            if sv != self.replica.state_vector(doc_id):
                # Usually a peer acks exactly what we hold, bytes we made: valid. Anything
                # else must decode before it is kept (commits decode it later).
                self._clocks(sv, sender)
            checked.append((doc_id, sv))
        for doc_id, sv in checked:
            self._record_durable(sender, doc_id, sv, events)
            self._note_holder(sender, doc_id, sv)

    def _record_durable(self, node: str, doc_id: str, sv: bytes, events: list[object]) -> None:
        if sv == EMPTY_STATE_VECTOR or node == self.node_id:
            return
        if self._is_member is not None and not self._is_member(node):
            self.stats.durable_refused += 1
            return
        docs = self._peer_durable.get(node)
        if (docs is None or doc_id not in docs) and not self._holds(doc_id):
            if not self._room_for_unknown():
                self.stats.durable_refused += 1
                return
            self._unknown_durable[(node, doc_id)] = None
        if docs is None:
            docs = self._peer_durable[node] = {}
        if docs.get(doc_id) != sv:
            docs[doc_id] = sv
            events.append(ReplicaAcked(node, doc_id, sv))

    def _holds(self, doc_id: str) -> bool:
        # Written or received here: in the tree, or waiting in `_dirty` to enter it.
        return doc_id in self._dirty or doc_id in self._tree

    def _room_for_unknown(self) -> bool:
        unknown = self._unknown_durable
        if len(unknown) < self.config.max_unknown_durable:
            return True
        # Documents that arrived since no longer count against the bound. Only a new
        # document can free room, so a flood over the bound costs one scan, not one each.
        held = len(self._tree) + len(self._dirty)
        if held != self._unknown_scanned:
            self._unknown_scanned = held
            for key in [k for k in unknown if self._holds(k[1])]:
                del unknown[key]
        return len(unknown) < self.config.max_unknown_durable

    # -- housekeeping -------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        cfg = self.config
        for session in [s for s, (_, t) in self._sessions.items() if t + cfg.session_timeout < now]:
            del self._sessions[session]
        for key in [
            k for k, t in self._transfers.items() if t.started + cfg.transfer_timeout < now
        ]:
            self._drop_transfer(key)
            self.stats.transfers_expired += 1


def _update_key(doc_id: str, update: bytes) -> bytes:
    raw = doc_id.encode("utf-8")
    return blake3.blake3(b"".join((len(raw).to_bytes(4, "big"), raw, update))).digest(16)


def _peer_set_digest(nodes: Iterable[str]) -> bytes:
    """8 bytes naming a set of node ids, the same on every peer whatever the order."""
    h = blake3.blake3(b"statemesh/peer-set/v1\x00")
    for node in sorted(nodes):
        raw = node.encode("utf-8", "surrogatepass")
        h.update(len(raw).to_bytes(4, "big") + raw)
    return h.digest(8)


def _has_structs(update: bytes) -> bool:
    # A v1 update starts with its number of client struct groups: 0 means a pure delete.
    return update[:1] != b"\x00"


def _covers(ours: dict[int, int], theirs: dict[int, int]) -> bool:
    return all(ours.get(c, 0) >= k for c, k in theirs.items())


def _decode_remote_sv(sv: bytes, sender: str) -> dict[int, int]:
    try:
        return decode_state_vector(sv)
    except (InvalidValue, TypeError) as exc:
        raise RemoteError(f"{sender} sent a state vector that does not decode: {exc}") from exc
