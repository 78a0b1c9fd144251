"""The ownership table: which node owns each workload, at which epoch.

A workload (an agent session, usually `session/<id>`) is owned by one node at a time.
Taking one over means claiming it at a higher epoch; the previous owner, seeing the
higher epoch, is fenced. The merge must be the same on every replica, so the owner of a
workload is the claim with the highest (epoch, owner), never Y.Map's
last-writer-by-client-id. Each claim is stored under its own key (see
`crdt_types.docs.MaxEntries`), so concurrent claims made on separate replicas both
survive the merge and every replica then reads the same, highest one. A claim prunes
the claims it supersedes for that workload in the same transaction, which is safe: the
highest claim ever made is never pruned.

Epochs are ints in 1..2**53. Claiming at an epoch not above the current one raises
`LocalError`: the caller's view is stale, nothing was written.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Map

from crdt_types.docs import Entry, MaxEntries, parse_entries
from crdt_types.errors import InvalidValue, LocalError, SchemaError
from crdt_types.values import MAX_INT, check_name

__all__ = ["Claim", "OwnershipTable", "validate"]

CLAIMS_ROOT = "claims"
ROOTS = {CLAIMS_ROOT: Map}


@dataclass(frozen=True, slots=True, order=True)
class Claim:
    """`owner` owns `workload` at `epoch`."""

    workload: str
    owner: str
    epoch: int


def _claim(entry: Entry) -> Claim:
    return Claim(workload=entry.name, owner=entry.writer, epoch=entry.version)


def _check_epoch(epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= MAX_INT:
        raise InvalidValue(f"epoch must be an int in 1..2**53, got {epoch!r}")
    return epoch


class OwnershipTable:
    """Typed view of the `ownership` document."""

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self._claims = MaxEntries(doc, CLAIMS_ROOT)
        # Failover reads every claim on each of its steps, many times between two
        # changes of the table: keep the sorted list until the map changes. The observer
        # only drops it, so it cannot raise; a weak reference keeps it from pinning us.
        self._sorted: tuple[Claim, ...] | None = None
        ref = weakref.ref(self)

        def on_change(_event: Any) -> None:
            table = ref()
            if table is not None:
                table._sorted = None

        self._subscription: Any = self._claims.map.observe(on_change)

    def owner_of(self, workload: str) -> Claim | None:
        """The winning claim on `workload`, or None if nobody ever claimed it."""
        entry = self._claims.winner(workload)
        return None if entry is None else _claim(entry)

    def epoch_of(self, workload: str) -> int:
        """The current epoch of `workload` (0 if never claimed)."""
        entry = self._claims.winner(workload)
        return 0 if entry is None else entry.version

    def claim(self, workload: str, owner: str, epoch: int) -> Claim:
        """Record that `owner` owns `workload` from `epoch` on (one transaction)."""
        check_name(workload, "workload id", max_len=512)
        check_name(owner, "owner node id", max_len=256)
        _check_epoch(epoch)
        current = self._claims.winner(workload)
        if current is not None and epoch <= current.version:
            raise LocalError(
                f"claim on {workload!r} at epoch {epoch} is not above the current epoch "
                f"{current.version} (owner {current.writer!r})"
            )
        self._claims.write(Entry(workload, epoch, owner, None))
        return Claim(workload, owner, epoch)

    def claims(self) -> list[Claim]:
        """Every workload's winning claim, sorted by workload."""
        cached = self._sorted
        if cached is None:
            cached = tuple(_claim(e) for _, e in sorted(self._claims.winners().items()))
            if self._subscription is not None:
                self._sorted = cached
        return list(cached)

    def workloads_of(self, owner: str) -> list[str]:
        """The workloads `owner` currently owns, sorted."""
        return [c.workload for c in self.claims() if c.owner == owner]

    def close(self) -> None:
        """Stop observing the document; the view still works, uncached."""
        if self._subscription is not None:
            self._claims.map.unobserve(self._subscription)
            self._subscription = None
        self._sorted = None
        self._claims.close()

    def to_dict(self) -> dict[str, Any]:
        """Plain data: {workload: {"owner": ..., "epoch": ...}}."""
        return {c.workload: {"owner": c.owner, "epoch": c.epoch} for c in self.claims()}


def validate(doc: Doc) -> None:
    """Raise `SchemaError` naming the first malformed claim of an ownership document."""
    for entry in parse_entries(doc, CLAIMS_ROOT):
        path = f"{CLAIMS_ROOT}[{entry.name!r}]"
        if entry.value is not None:
            raise SchemaError(path, "a claim carries no value")
        try:
            check_name(entry.name, "workload id", max_len=512)
            check_name(entry.writer, "owner node id", max_len=256)
            _check_epoch(entry.version)
        except InvalidValue as exc:
            raise SchemaError(path, str(exc)) from None
