"""Every message of the gossip protocol, as frozen dataclasses.

A frame on the wire carries one `Envelope`: who sent it and a tuple of messages
(SWIM-style piggybacking packs membership updates next to a probe). Each message class
has a stable `TYPE` number; `gossip.codec` encodes a message as `[TYPE, *fields]` in
declaration order and checks every field against its annotation when decoding, so the
annotations here are the schema of the wire. Add fields only at the end, with a
default, and never reuse a TYPE number: peers of the same protocol version must agree.

Identifiers: node ids are strings (unique per node name), document ids are strings
(`session/<id>`, `cluster`, `ownership`), version vectors travel as the pycrdt state
vector bytes (`crdt_types.vv` decodes them), updates as pycrdt update bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

PROTOCOL_VERSION = 1

REGISTRY: dict[int, type] = {}


def message(cls: type) -> type:
    """Register a message class under its TYPE number (class decorator)."""
    type_id = cls.TYPE
    if type_id in REGISTRY:
        raise RuntimeError(f"message TYPE {type_id} used twice")
    REGISTRY[type_id] = cls
    return cls


# --- membership (SWIM with Lifeguard) ---------------------------------------------------

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEFT = "left"
MEMBER_STATES = (ALIVE, SUSPECT, DEAD, LEFT)


@message
@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """A rumour about one member: its state at an incarnation, as told by `origin`."""

    TYPE: ClassVar[int] = 1
    node: str
    address: str  # "host:port" the member listens on
    incarnation: int
    state: str  # one of MEMBER_STATES
    origin: str  # who declared it (Lifeguard counts independent suspicions)
    meta: bytes = b""  # small opaque application metadata (e.g. ready flag, boot id)


@message
@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe; `target` lets a receiver detect probes meant for a previous owner of its address."""

    TYPE: ClassVar[int] = 2
    seq: int
    target: str


@message
@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to Ping (or forwarded answer to PingReq) with the same seq."""

    TYPE: ClassVar[int] = 3
    seq: int


@message
@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask the receiver to probe `target` on our behalf (indirect probe)."""

    TYPE: ClassVar[int] = 4
    seq: int
    target: str
    target_address: str


@message
@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: the intermediary got no answer from the target in time."""

    TYPE: ClassVar[int] = 5
    seq: int


@message
@dataclass(frozen=True, slots=True)
class MembershipSync:
    """Full membership exchange (join and periodic push-pull); `reply` asks for ours."""

    TYPE: ClassVar[int] = 6
    members: tuple[MemberUpdate, ...]
    reply: bool


# --- replication (dissemination and anti-entropy) --------------------------------------


@message
@dataclass(frozen=True, slots=True)
class DocUpdate:
    """A fresh update of one document, pushed as a rumour.

    `origin` is the node that wrote it (replica acks go to it as well as to the sender);
    `state_vector` is the sender's state vector of the document after the update, so a
    receiver whose apply left structs pending (out-of-order Yrs) knows to re-request.
    `reached`, set only on the origin's first copies, is a digest of the peers it pushed
    them to when that was every peer it holds alive: a receiver with the same view need
    not forward it (`gossip.replication`). Empty from older peers: they forward.
    """

    TYPE: ClassVar[int] = 20
    doc_id: str
    update: bytes
    origin: str = ""
    state_vector: bytes = b""
    reached: bytes = b""


@message
@dataclass(frozen=True, slots=True)
class Digest:
    """Anti-entropy step 1: the root of our hash tree over all (doc_id, fingerprint)."""

    TYPE: ClassVar[int] = 21
    session: int  # exchange id chosen by the initiator
    root: bytes
    documents: int


@message
@dataclass(frozen=True, slots=True)
class DigestBuckets:
    """Anti-entropy step 2: the bucket hashes under the root (sent when roots differ)."""

    TYPE: ClassVar[int] = 22
    session: int
    buckets: tuple[bytes, ...]
    reply: bool


@message
@dataclass(frozen=True, slots=True)
class DocVectors:
    """Anti-entropy step 3: our view of every document in the differing buckets.

    Entries are (doc_id, state vector, fingerprint, durable state vector). Empty
    `bucket_ids` means "only the documents listed" (a targeted resync of a few documents).
    """

    TYPE: ClassVar[int] = 23
    session: int
    bucket_ids: tuple[int, ...]
    entries: tuple[tuple[str, bytes, bytes, bytes], ...]
    reply: bool


@message
@dataclass(frozen=True, slots=True)
class DocDiff:
    """Anti-entropy step 4: the update a peer lacks, split into chunks under the frame limit."""

    TYPE: ClassVar[int] = 24
    doc_id: str
    transfer: int
    chunk: int
    chunks: int
    data: bytes


@message
@dataclass(frozen=True, slots=True)
class ReplicaAck:
    """The sender's *durable* state vector per document, so writers can count replicas."""

    TYPE: ClassVar[int] = 25
    entries: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Envelope:
    """What one frame carries: sender identity and a batch of messages."""

    sender: str
    sender_address: str
    incarnation: int
    messages: tuple[object, ...]
