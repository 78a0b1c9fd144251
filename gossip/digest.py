"""A two-level hash tree over every document's fingerprint, maintained incrementally.

Anti-entropy starts by comparing one root hash. The tree has a fixed number of buckets; a
document lives in the bucket picked by a hash of its id, its leaf is a hash of (id,
fingerprint), and a bucket's value is the XOR of its leaves, so changing one document costs
O(1): XOR the old leaf out and the new one in. The root is a hash over the bucket values and
the document count, recomputed lazily only after something changed, so an idle
anti-entropy round costs O(1) bytes and CPU whatever the number of documents.

Leaves cover the *fingerprint*, not just the state vector: a pure delete does not advance
the state vector, so a digest over state vectors alone would never notice a lost delete.

Invariants: two trees with the same bucket count and the same {doc_id: fingerprint} map
have the same root and bucket values, whatever order they were built in; `bucket_of` is a
pure function of (doc_id, bucket count), identical on every peer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import blake3

from crdt_types.errors import LocalError

HASH_BYTES = 16  # 128 bits: collisions are not a concern at any plausible document count
DEFAULT_BUCKETS = 256  # DigestBuckets then carries 4 KiB; a differing bucket ~N/256 docs
MAX_BUCKETS = 1 << 16
_ZERO = bytes(HASH_BYTES)


def leaf_hash(doc_id: str, fingerprint: bytes) -> int:
    """The leaf value of one document, as an int so buckets XOR cheaply."""
    raw = doc_id.encode("utf-8")
    # Length-prefix the id so (id, fingerprint) pairs cannot be confused by concatenation.
    h = blake3.blake3(len(raw).to_bytes(4, "big") + raw + fingerprint)
    return int.from_bytes(h.digest(HASH_BYTES), "big")


def bucket_of(doc_id: str, buckets: int) -> int:
    """The bucket a document belongs to in a tree of `buckets` buckets."""
    h = blake3.blake3(doc_id.encode("utf-8"), derive_key_context="statemesh digest bucket v1")
    return int.from_bytes(h.digest(8), "big") % buckets


class HashTree:
    """Root and bucket hashes over {doc_id: fingerprint}, updated one document at a time."""

    def __init__(self, buckets: int = DEFAULT_BUCKETS) -> None:
        if not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
            raise LocalError(f"bucket count must be in 1..{MAX_BUCKETS}, not {buckets!r}")
        self.buckets = buckets
        self._values = [0] * buckets
        self._members: list[set[str]] = [set() for _ in range(buckets)]
        self._leaves: dict[str, int] = {}
        self._bucket_index: dict[str, int] = {}
        self._root: bytes | None = None

    def __len__(self) -> int:
        return len(self._leaves)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._leaves

    def set(self, doc_id: str, fingerprint: bytes) -> bool:
        """Record the fingerprint of `doc_id`; True if the tree changed."""
        leaf = leaf_hash(doc_id, fingerprint)
        old = self._leaves.get(doc_id)
        if old == leaf:
            return False
        index = self._bucket_index.get(doc_id)
        if index is None:
            index = self._bucket_index[doc_id] = bucket_of(doc_id, self.buckets)
            self._members[index].add(doc_id)
            old = 0
        self._values[index] ^= old ^ leaf
        self._leaves[doc_id] = leaf
        self._root = None
        return True

    def discard(self, doc_id: str) -> None:
        """Forget `doc_id` (no error if unknown)."""
        old = self._leaves.pop(doc_id, None)
        if old is None:
            return
        index = self._bucket_index.pop(doc_id)
        self._values[index] ^= old
        self._members[index].discard(doc_id)
        self._root = None

    @property
    def root(self) -> bytes:
        """Hash over the document count and every bucket value (cached until a change)."""
        if self._root is None:
            h = blake3.blake3(len(self._leaves).to_bytes(8, "big"))
            h.update(b"".join(self.bucket_hashes()))
            self._root = h.digest(HASH_BYTES)
        return self._root

    def bucket_hashes(self) -> tuple[bytes, ...]:
        """Every bucket value, in bucket order."""
        return tuple(v.to_bytes(HASH_BYTES, "big") if v else _ZERO for v in self._values)

    def differing_buckets(self, remote: Iterable[bytes]) -> list[int]:
        """Indexes of buckets whose value differs from `remote` (which must have our bucket count)."""
        remote = tuple(remote)
        if len(remote) != self.buckets:
            raise LocalError(f"expected {self.buckets} bucket hashes, got {len(remote)}")
        return [
            i
            for i, (ours, theirs) in enumerate(zip(self.bucket_hashes(), remote, strict=True))
            if ours != theirs
        ]

    def docs_in(self, bucket: int) -> Iterator[str]:
        """The documents in one bucket, in sorted order (deterministic output)."""
        return iter(sorted(self._members[bucket]))
