"""What the replication protocol needs from a document store, and an in-memory one.

`gossip.replication.Replicator` never touches pycrdt documents or a disk itself: it asks a
`ReplicaPort` for state vectors, fingerprints and diffs, and hands it updates to apply. The
runtime (`mesh`) implements the port over its SQLite store; `MemoryReplica` implements it
over a dict of pycrdt `Doc`s for tests and the deterministic simulator.

Invariants of every implementation:

* calls are pure with respect to the outside world: no I/O, no clock, no randomness;
* `apply` either integrates the update or raises a `RemoteError` and leaves the document
  exactly as it was (garbage from a peer never changes state);
* `fingerprint` changes whenever the content changes, deletes included (a pure delete does
  not advance the state vector, see FIELD-NOTES), and is equal on converged replicas;
* `durable_state_vector` never claims more than `state_vector`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import pycrdt

from crdt_types.docs import check_doc_id
from crdt_types.errors import InvalidValue, RemoteError
from crdt_types.fingerprint import fingerprint as _fingerprint

EMPTY_STATE_VECTOR = b"\x00"  # lib0 encoding of a state vector with no clients
EMPTY_UPDATE = b"\x00\x00"  # an update with no structs and an empty delete set


@runtime_checkable
class ReplicaPort(Protocol):
    """The document store as seen by the replication protocol; pure calls, no I/O."""

    def doc_ids(self) -> Iterable[str]:
        """Every document this replica holds."""
        ...

    def state_vector(self, doc_id: str) -> bytes:
        """The encoded state vector of `doc_id`, `EMPTY_STATE_VECTOR` if unknown."""
        ...

    def fingerprint(self, doc_id: str) -> bytes:
        """`crdt_types.fingerprint.fingerprint` of the document (of an empty one if unknown)."""
        ...

    def diff(self, doc_id: str, remote_sv: bytes) -> bytes:
        """The update holding everything of `doc_id` that `remote_sv` lacks, delete set included."""
        ...

    def apply(self, doc_id: str, update: bytes) -> bool:
        """Integrate a remote update; True if the content changed. Garbage raises RemoteError."""
        ...

    def durable_state_vector(self, doc_id: str) -> bytes:
        """The state vector of what is persisted for `doc_id`."""
        ...


def check_remote_doc_id(doc_id: object) -> str:
    """The document-id rule (`crdt_types.docs.check_doc_id`) for ids a peer sent: RemoteError."""
    try:
        return check_doc_id(doc_id)
    except InvalidValue as exc:
        raise RemoteError(f"bad document id {doc_id!r:.80}: {exc}") from None


def diff_of(doc: pycrdt.Doc | None, doc_id: str, remote_sv: bytes) -> bytes:
    """What `doc` holds that `remote_sv` lacks (EMPTY_UPDATE for no document)."""
    if doc is None:
        return EMPTY_UPDATE
    try:
        return doc.get_update(remote_sv)
    except ValueError as exc:
        raise RemoteError(f"document {doc_id!r}: state vector does not decode: {exc}") from exc


class MemoryReplica:
    """`ReplicaPort` over a dict of pycrdt documents; everything is durable at once.

    Pass `client_ids` (a seeded `random.Random`) to draw pycrdt client ids from it instead
    of pycrdt's own randomness, so that a simulation replays byte for byte.
    """

    def __init__(self, client_ids: random.Random | None = None) -> None:
        self._docs: dict[str, pycrdt.Doc] = {}
        self._client_ids = client_ids
        # Fingerprints cost a full delete-set encoding, and the replicator asks for them on
        # every change and every anti-entropy exchange: cache until the document changes.
        # A transaction observer invalidates the cache, so local writes cannot leave a
        # stale fingerprint behind even if the writer forgets to call `changed`.
        self._fingerprints: dict[str, bytes] = {}
        self._observed: dict[str, object] = {}
        self._empty_fingerprint = _fingerprint(pycrdt.Doc())

    # -- local use (tests, simulator, runtime) ----------------------------------------

    def doc(self, doc_id: str) -> pycrdt.Doc:
        """The document `doc_id`, created empty if unknown, for local reads and writes."""
        check_doc_id(doc_id)
        doc = self._docs.get(doc_id)
        if doc is None:
            doc = self._docs[doc_id] = self.new_doc()
        if doc_id not in self._observed:
            self._observed[doc_id] = doc.observe(
                lambda _event: self._fingerprints.pop(doc_id, None)
            )
        return doc

    def new_doc(self) -> pycrdt.Doc:
        """A fresh empty document (client id from `client_ids` when given)."""
        if self._client_ids is None:
            return pycrdt.Doc()
        return pycrdt.Doc(client_id=self._client_ids.randrange(1, 2**31))

    def has(self, doc_id: str) -> bool:
        """Whether the replica holds `doc_id`."""
        return doc_id in self._docs

    def changed(self, doc_id: str) -> None:
        """Note that `doc_id` changed behind our back (writes through `doc()` are seen anyway)."""
        self._fingerprints.pop(doc_id, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)

    # -- ReplicaPort ----------------------------------------------------------------------

    def doc_ids(self) -> Iterable[str]:
        """Every document this replica holds."""
        return self._docs.keys()

    def state_vector(self, doc_id: str) -> bytes:
        """The encoded state vector of `doc_id`, `EMPTY_STATE_VECTOR` if unknown."""
        doc = self._docs.get(doc_id)
        return EMPTY_STATE_VECTOR if doc is None else doc.get_state()

    def fingerprint(self, doc_id: str) -> bytes:
        """The convergence fingerprint of `doc_id` (of an empty document if unknown)."""
        cached = self._fingerprints.get(doc_id)
        if cached is not None:
            return cached
        doc = self._docs.get(doc_id)
        if doc is None:
            return self._empty_fingerprint
        value = self._fingerprints[doc_id] = _fingerprint(doc)
        return value

    def diff(self, doc_id: str, remote_sv: bytes) -> bytes:
        """The update holding everything of `doc_id` that `remote_sv` lacks."""
        return diff_of(self._docs.get(doc_id), doc_id, remote_sv)

    def apply(self, doc_id: str, update: bytes) -> bool:
        """Integrate a remote update; True if the fingerprint changed."""
        check_remote_doc_id(doc_id)
        before = self.fingerprint(doc_id)
        doc = self._docs.get(doc_id)
        fresh = doc is None
        if fresh:
            doc = self.new_doc()
        try:
            doc.apply_update(update)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            # pycrdt raises ValueError on garbage, and a Rust panic surfaces as
            # pyo3's PanicException, a BaseException: both mean "peer sent garbage".
            raise RemoteError(f"document {doc_id!r}: update does not apply: {exc}") from exc
        if fresh:
            self._docs[doc_id] = doc
        self._fingerprints.pop(doc_id, None)
        return self.fingerprint(doc_id) != before

    def durable_state_vector(self, doc_id: str) -> bytes:
        """Memory is all there is: the durable state vector is the state vector."""
        return self.state_vector(doc_id)
