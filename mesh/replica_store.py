"""The durable `ReplicaPort`: the node's pycrdt documents, every change logged to SQLite.

`DurableReplica` holds the documents loaded from the node's `AsyncStore` and observes each
one (`doc.observe`). Whatever changes a document, a local write through a `Session` or a
remote update the `Replicator` applies, fires the observer, which only records
`(doc_id, update, local)` in a queue: observers must not raise (an exception would come
back as an ExceptionGroup from the writer's transaction) and must not do I/O. The runtime
then calls `drain()`, which submits every queued update to the store's group commit and
returns the changes, so that local ones can start rumours (`Node.local_update`) and
remote ones do not echo; a run of local changes to one document queued back to back (an
agent's turn of several writes) is merged into one change first. `durable_state_vector`
is what has been fsync'd: the state vector each document had when its last drained
update was submitted, promoted by `mark_durable` once that update's batch committed.
Replica acks therefore never claim more than the disk holds.

Invariants:

* Every document lives on the trio thread; nothing here is thread-safe, nothing blocks.
* `apply` either integrates a remote update or raises `RemoteError` with the document
  unchanged (pycrdt rejects garbage before changing anything; a Rust panic surfaces as a
  BaseException and is turned into `RemoteError` as well).
* A remote change is told apart from a local one by a flag set only for the duration of
  `apply`; the observer runs synchronously inside that call.
* A document loaded from a damaged log (`mark_damaged`) holds what came before the damage.
  Until `repaired` supersedes the log with a checkpoint, its durable vector stays what the
  store would reload (the salvaged prefix), whatever is appended meanwhile: appends land
  after the damaged record, where a restart would not reach them. So its acks never claim
  more than the disk can give back, and `check_durable` refuses durable commits on it.
* New documents get pycrdt client ids the store recorded durably (a small pool refilled
  off the event loop), so a client id is never reused with a different history. If the
  pool is empty (a burst of new remote documents), pycrdt's random id is used: those
  documents are only written to by peers until a restart, which draws a fresh id anyway.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pycrdt

from crdt_types.docs import check_doc_id
from crdt_types.errors import CorruptRecord, LocalError, RemoteError
from crdt_types.fingerprint import fingerprint as _fingerprint
from gossip.replica import EMPTY_STATE_VECTOR, check_remote_doc_id, diff_of
from mesh.storage import MAX_UPDATE_BYTES, AsyncStore, Pending

__all__ = ["Change", "Damage", "DurableReplica"]

CLIENT_ID_POOL = 32
# Consecutive local writes to one document are merged into one update before they are
# stored and spread (see `_coalesce`), up to this many bytes or updates per merge. The
# count bound matters more: pycrdt's merge is superlinear (64 small updates: 0.15 ms;
# 10,000: 0.5 s, which stalled the event loop of a node that wrote them in one go).
COALESCE_BYTES = 256 * 1024
COALESCE_UPDATES = 64

_log = logging.getLogger("statemesh.store")


@dataclass(frozen=True, slots=True)
class Change:
    """One transaction on one document: its update, and whether this node wrote it."""

    doc_id: str
    update: bytes
    local: bool


@dataclass(frozen=True, slots=True)
class Damage:
    """Document `doc_id` was loaded from a damaged log: records from `seq` on are not used."""

    doc_id: str
    seq: int | None
    reason: str

    def to_dict(self) -> dict[str, object]:
        """Plain JSON data (for `/status`)."""
        return {"document": self.doc_id, "record": self.seq, "reason": self.reason}

    def __str__(self) -> str:
        where = f" at record {self.seq}" if self.seq is not None else ""
        return f"{self.doc_id}{where}: {self.reason}"


class DurableReplica:
    """`ReplicaPort` over the node's documents, logging every change to an `AsyncStore`."""

    def __init__(
        self,
        store: AsyncStore,
        docs: dict[str, pycrdt.Doc],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self._docs: dict[str, pycrdt.Doc] = {}
        self._subs: dict[str, object] = {}
        self._changes: deque[Change] = deque()
        self._fingerprints: dict[str, bytes] = {}
        # The replicator asks for a document's state vector several times per update
        # (rumour, ack, resync checks); encoding it each time was a tenth of a replicated
        # commit's CPU. Cached like fingerprints, dropped by the observer on any change.
        self._svs: dict[str, bytes] = {}
        self._durable: dict[str, bytes] = {}
        self.damaged: dict[str, Damage] = {}
        self._remote = False
        self._closed = False
        self._on_change = on_change
        self.client_ids: list[int] = []
        self._empty_fingerprint = _fingerprint(pycrdt.Doc())
        for doc_id, doc in docs.items():
            self._adopt(doc_id, doc)
            # Loaded from disk: all of it is durable.
            self._durable[doc_id] = doc.get_state()

    # -- local use (the runtime) --------------------------------------------------------

    def _adopt(self, doc_id: str, doc: pycrdt.Doc) -> None:
        self._docs[doc_id] = doc

        def observe(event: pycrdt.TransactionEvent) -> None:
            # Only record: see the module docstring for why nothing else happens here.
            self._fingerprints.pop(doc_id, None)
            self._svs.pop(doc_id, None)
            self._changes.append(Change(doc_id, event.update, not self._remote))
            self._on_change()

        self._subs[doc_id] = doc.observe(observe)

    def doc(self, doc_id: str) -> pycrdt.Doc | None:
        """The document `doc_id`, or None if this replica does not hold it."""
        return self._docs.get(doc_id)

    def create(self, doc_id: str, client_id: int | None = None) -> pycrdt.Doc:
        """Create an empty document (a recorded client id from the pool unless given)."""
        check_doc_id(doc_id)
        if doc_id in self._docs:
            raise LocalError(f"document {doc_id!r} exists")
        if client_id is None and self.client_ids:
            client_id = self.client_ids.pop()
        doc = pycrdt.Doc(client_id=client_id) if client_id is not None else pycrdt.Doc()
        self._adopt(doc_id, doc)
        self._durable[doc_id] = EMPTY_STATE_VECTOR
        return doc

    def drain(self) -> list[tuple[Change, Pending]]:
        """Submit every queued change to the store; return (change, pending) in order."""
        out = []
        changes = self._changes
        while changes:
            change = changes.popleft()
            if change.local:
                change = _coalesce(change, changes)
            out.append((change, self.store.submit(change.doc_id, change.update)))
        return out

    @property
    def queued(self) -> int:
        """Changes observed and not yet drained."""
        return len(self._changes)

    def mark_durable(self, doc_id: str, state_vector: bytes) -> None:
        """Record that `state_vector` of `doc_id` is on disk (ignored while it is damaged)."""
        if doc_id not in self.damaged:
            self._durable[doc_id] = state_vector

    def mark_damaged(self, error: CorruptRecord) -> Damage | None:
        """Note that `error.doc_id` was loaded from a damaged log; logs one line.

        A document this replica does not hold (its stored id itself is damaged) cannot be
        served nor refilled under that id: it is only logged, and None returned.
        """
        doc_id = error.doc_id
        if doc_id not in self._docs:
            _log.error("a stored document cannot be loaded at all and is skipped: %s", error)
            return None
        # The CorruptRecord's message starts with the document and record: keep the cause.
        reason = str(error).split(": ", 1)[-1]
        damage = self.damaged[doc_id] = Damage(doc_id, error.seq, reason)
        _log.error(
            "document %r is damaged on disk (%s%s); serving what came before the damage,"
            " durable commits on it are refused until peers refill it",
            doc_id,
            "" if damage.seq is None else f"record {damage.seq}: ",
            reason,
        )
        return damage

    def check_durable(self, doc_id: str) -> None:
        """Raise `CorruptRecord` if `doc_id` is damaged: the store cannot honour a durable ack."""
        damage = self.damaged.get(doc_id)
        if damage is not None:
            raise CorruptRecord(
                doc_id,
                damage.seq,
                f"damaged on this node's disk ({damage.reason}); durable commits are refused"
                " until it is refilled from peers (see /readyz)",
            )

    def repaired(self, doc_id: str, state_vector: bytes) -> None:
        """The store now reloads `doc_id` cleanly up to `state_vector`: clear the mark."""
        if self.damaged.pop(doc_id, None) is not None:
            self._durable[doc_id] = state_vector
            _log.warning("document %r repaired: refilled from peers and checkpointed", doc_id)

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._docs

    def close(self) -> None:
        """Stop observing every document (the documents stay readable)."""
        for doc_id, sub in self._subs.items():
            self._docs[doc_id].unobserve(sub)
        self._subs.clear()
        # Unobserved documents may change unseen: nothing cached about them can be trusted.
        self._svs.clear()
        self._fingerprints.clear()
        self._closed = True

    # -- ReplicaPort ----------------------------------------------------------------------

    def doc_ids(self) -> Iterable[str]:
        """Every document this replica holds."""
        return self._docs.keys()

    def state_vector(self, doc_id: str) -> bytes:
        """The encoded state vector of `doc_id`, `EMPTY_STATE_VECTOR` if unknown."""
        sv = self._svs.get(doc_id)
        if sv is not None:
            return sv
        doc = self._docs.get(doc_id)
        if doc is None:
            return EMPTY_STATE_VECTOR
        sv = doc.get_state()
        if not self._closed:
            self._svs[doc_id] = sv
        return sv

    def fingerprint(self, doc_id: str) -> bytes:
        """The convergence fingerprint of `doc_id` (cached until the document changes)."""
        cached = self._fingerprints.get(doc_id)
        if cached is not None:
            return cached
        doc = self._docs.get(doc_id)
        if doc is None:
            return self._empty_fingerprint
        value = _fingerprint(doc)
        if not self._closed:
            self._fingerprints[doc_id] = value
        return value

    def diff(self, doc_id: str, remote_sv: bytes) -> bytes:
        """The update holding everything of `doc_id` that `remote_sv` lacks."""
        return diff_of(self._docs.get(doc_id), doc_id, remote_sv)

    def apply(self, doc_id: str, update: bytes) -> bool:
        """Integrate a remote update (logged as remote); True if the content changed."""
        # An id the store cannot log (too long, NUL) must be refused before the document
        # exists: logging it later would fail outside any peer's message.
        check_remote_doc_id(doc_id)
        if len(update) > MAX_UPDATE_BYTES:
            # The store would refuse to log it, after the document had already changed.
            raise RemoteError(f"document {doc_id!r}: update of {len(update)} bytes is too big")
        doc = self._docs.get(doc_id)
        fresh = doc is None
        if fresh:
            # Try the update on a scratch document first: garbage must not leave an
            # empty document behind.
            try:
                pycrdt.Doc().apply_update(update)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                raise RemoteError(f"document {doc_id!r}: update does not apply: {exc}") from exc
            doc = self.create(doc_id)
        # pycrdt fires the observer exactly when the content changed: not for a duplicate,
        # nor for structs left pending until the update filling their gap arrives. So a
        # change is seen without computing a fingerprint before and after.
        queued = len(self._changes)
        self._remote = True
        try:
            doc.apply_update(update)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            # pycrdt raises ValueError on garbage, and a Rust panic surfaces as pyo3's
            # PanicException, a BaseException: both mean "peer sent garbage".
            raise RemoteError(f"document {doc_id!r}: update does not apply: {exc}") from exc
        finally:
            self._remote = False
        return len(self._changes) > queued

    def durable_state_vector(self, doc_id: str) -> bytes:
        """The state vector of what is fsync'd for `doc_id`."""
        return self._durable.get(doc_id, EMPTY_STATE_VECTOR)


def _continues(change: Change, doc_id: str) -> bool:
    return change.local and change.doc_id == doc_id and len(change.update) < COALESCE_BYTES


def _coalesce(first: Change, changes: deque[Change]) -> Change:
    """Merge `first` with the local changes to its document that follow it in `changes`.

    An agent's turn is several writes (a message, memory keys, a tool call), each its own
    transaction, then one commit. Stored and gossiped one by one, every write paid the
    per-update cost (a log record, a rumour, an apply and an ack on every peer); merged,
    the turn pays it once. Only a consecutive run is merged: the order of changes to
    different documents, and of local against remote ones, is kept as observed.
    """
    run = [first.update]
    size = len(first.update)
    while (
        changes
        and _continues(changes[0], first.doc_id)
        and size < COALESCE_BYTES
        and len(run) < COALESCE_UPDATES
    ):
        update = changes.popleft().update
        run.append(update)
        size += len(update)
    if len(run) == 1:
        return first
    return Change(first.doc_id, pycrdt.merge_updates(*run), True)
