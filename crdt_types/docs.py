"""Creating documents, and the one merge structure the typed layer shares.

`new_doc` makes a pycrdt Doc with a fresh random client id unless one is given (a node
that restarts must write under a new client id; reusing one would make its new writes
collide with the old history). Pass a seeded `random.Random` for replayable ids; without
one, pycrdt draws the id. Ids stay below 2**53 so JavaScript Yjs peers could read them.

`MaxEntries` is how cluster settings and ownership claims merge deterministically. A
plain Y.Map key resolves concurrent writes by client id, which is deterministic but not
what we want: a claim at epoch 5 could lose to a concurrent claim at epoch 4. So every
write goes under its own key, derived from (name, version, writer), in one root Map, and
a reader takes, per name, the entry with the highest (version, writer). Concurrent writes
never overwrite one another (distinct keys), so the highest one always survives a merge.

Pruning keeps the map small: a write removes the entries of the same name that it
supersedes, in the same transaction. That is safe because an entry is only ever removed
by a writer that at the same moment adds a higher one for that name, so the highest
entry ever written is never removed. Nested shared types are avoided on purpose: two
replicas that concurrently create a nested Map under one key end up with only one of
them.

Reads are served from an index rebuilt lazily after any transaction on the document
(local or remote), which `doc.observe` tells us about. The state vector cannot serve as
the cache key: an out-of-order update can change the map without advancing it. Keep one
view per document (each view is one observer) and `close()` views you drop.
"""

from __future__ import annotations

import json
import random
import weakref
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Map

from crdt_types.errors import InvalidValue, SchemaError
from crdt_types.values import MAX_INT, check_value, from_stored

__all__ = ["Entry", "MaxEntries", "entry_key", "new_doc", "parse_entries", "parse_entry"]


def new_doc(client_id: int | None = None, *, rng: random.Random | None = None) -> Doc:
    """A new pycrdt Doc; a fresh random client id (drawn from `rng` if given) by default."""
    if client_id is None and rng is not None:
        client_id = rng.randrange(1, MAX_INT)
    if client_id is not None and not (
        isinstance(client_id, int) and not isinstance(client_id, bool) and 0 <= client_id < MAX_INT
    ):
        raise InvalidValue(f"client_id must be an int in 0..2**53-1, got {client_id!r}")
    return Doc(client_id=client_id)


def entry_key(name: str, version: int, writer: str) -> str:
    """The Map key of one entry: canonical JSON, so any (name, writer) strings are safe."""
    return json.dumps([name, version, writer], ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Entry:
    """One write: `value` for `name` at `version`, by `writer`."""

    name: str
    version: int
    writer: str
    value: Any = None

    @property
    def rank(self) -> tuple[int, str]:
        """The order in which entries of one name supersede one another."""
        return (self.version, self.writer)


class MaxEntries:
    """Entries of one root Map; per name, the highest (version, writer) wins."""

    def __init__(self, doc: Doc, root: str) -> None:
        self.doc = doc
        self.root = root
        self.map = doc.get(root, type=Map)
        self._index: dict[str, Entry] | None = None
        self._closed = False
        self._keys: dict[str, list[str]] = {}
        # The callback only drops the cache: it must not raise (exceptions in observers
        # surface as an ExceptionGroup from the writer's transaction). It holds a weak
        # reference so a dropped view does not live on as long as its document.
        ref = weakref.ref(self)

        def invalidate(_event: object) -> None:
            view = ref()
            if view is not None:
                view._index = None

        self._subscription = doc.observe(invalidate)

    def _build(self) -> dict[str, Entry]:
        index: dict[str, Entry] = {}
        keys: dict[str, list[str]] = {}
        for key, raw in self.map.items():
            # A malformed entry (from a buggy or hostile peer) is skipped here so reads
            # keep working; `validate` reports it.
            try:
                entry = parse_entry(self.root, key, raw)
            except SchemaError:
                continue
            keys.setdefault(entry.name, []).append(key)
            best = index.get(entry.name)
            if best is None or entry.rank > best.rank:
                index[entry.name] = entry
        self._keys = keys
        if not self._closed:
            self._index = index
        return index

    def winners(self) -> dict[str, Entry]:
        """{name: winning entry} (a fresh dict)."""
        index = self._index if self._index is not None else self._build()
        return dict(index)

    def winner(self, name: str) -> Entry | None:
        """The winning entry for `name`, or None."""
        index = self._index if self._index is not None else self._build()
        return index.get(name)

    def write(self, entry: Entry) -> None:
        """Add `entry` and prune what it supersedes, in one transaction."""
        if self._index is None:
            self._build()
        value = {
            "name": entry.name,
            "version": entry.version,
            "writer": entry.writer,
            "value": entry.value,
        }
        check_value(value, path=f"{self.root}[{entry.name!r}]")
        new_key = entry_key(entry.name, entry.version, entry.writer)
        stale = []
        for key in self._keys.get(entry.name, []):
            if key != new_key:
                old = parse_entry(self.root, key, self.map[key])
                if old.rank < entry.rank:
                    stale.append(key)
        with self.doc.transaction():
            self.map[new_key] = value
            for key in stale:
                del self.map[key]

    def close(self) -> None:
        """Stop listening to the document (reads then rebuild the index every time)."""
        if self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None
        self._closed = True


def parse_entries(doc: Doc, root: str) -> list[Entry]:
    """Parse every entry of root Map `root`; `SchemaError` naming the first malformed one."""
    return [parse_entry(root, key, raw) for key, raw in doc.get(root, type=Map).items()]


def parse_entry(root: str, key: Any, raw: Any) -> Entry:
    """Check one stored entry; `SchemaError` naming the key if it is malformed."""
    path = f"{root}[{key!r}]"
    if not isinstance(raw, dict):
        raise SchemaError(path, f"entry must be a map, got {type(raw).__name__}")
    raw = from_stored(raw)
    if set(raw) != {"name", "version", "writer", "value"}:
        raise SchemaError(path, f"entry fields are {sorted(raw)}")
    name, version, writer = raw["name"], raw["version"], raw["writer"]
    if not isinstance(name, str) or not isinstance(writer, str):
        raise SchemaError(path, "entry name and writer must be strings")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= MAX_INT:
        raise SchemaError(path, f"entry version must be an int in 0..2**53, got {version!r}")
    if key != entry_key(name, version, writer):
        raise SchemaError(path, "entry key does not match its name, version and writer")
    try:
        check_value(raw["value"], path=f"{path}.value")
    except InvalidValue as exc:
        raise SchemaError(f"{path}.value", str(exc)) from None
    return Entry(name, version, writer, raw["value"])
