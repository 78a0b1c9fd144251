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

Reads are served from an index that a map observer keeps current key by key, for local
and remote transactions alike. (The state vector cannot serve as a cache key: an update
applied across a gap can change the map without advancing it.) Keep one view per
document, as each view is one observer, and `close()` views you drop.
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

__all__ = [
    "MAX_DOC_ID_BYTES",
    "Entry",
    "MaxEntries",
    "check_doc_id",
    "entry_key",
    "new_doc",
    "parse_entries",
    "parse_entry",
]

# The one rule for document ids, used by the store, the replicator and the typed layer:
# the store keys its log by id, so an id it cannot log must be refused before anything
# (an ownership claim, a rumour) refers to it.
MAX_DOC_ID_BYTES = 256


def check_doc_id(doc_id: object) -> str:
    """Return `doc_id` if it is a usable document id; raise `InvalidValue` otherwise."""
    if not isinstance(doc_id, str):
        raise InvalidValue(f"document id must be a str, got {type(doc_id).__name__}")
    if not doc_id:
        raise InvalidValue("document id must not be empty")
    if "\x00" in doc_id:
        raise InvalidValue("document id must not contain NUL")
    try:
        size = len(doc_id.encode())
    except UnicodeEncodeError as exc:
        raise InvalidValue(f"document id is not valid UTF-8: {exc}") from exc
    if size > MAX_DOC_ID_BYTES:
        raise InvalidValue(f"document id is {size} bytes, more than {MAX_DOC_ID_BYTES}")
    return doc_id


def new_doc(client_id: int | None = None, *, rng: random.Random | None = None) -> Doc:
    """A new pycrdt Doc; a fresh random client id (drawn from `rng` if given) by default."""
    if client_id is None and rng is not None:
        client_id = rng.randrange(1, MAX_INT)
    if client_id is not None and not (
        isinstance(client_id, int) and not isinstance(client_id, bool) and 0 <= client_id < MAX_INT
    ):
        raise InvalidValue(f"client_id must be an int in 0..2**53-1, got {client_id!r}")
    return Doc(client_id=client_id)


# One encoder, built once: json.dumps with options builds a new encoder on every call.
_encode_key = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def entry_key(name: str, version: int, writer: str) -> str:
    """The Map key of one entry: canonical JSON, so any (name, writer) strings are safe."""
    return _encode_key([name, version, writer])


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
        # name -> {map key -> entry}; None until first read, and again after anything
        # unexpected, which makes the next read rebuild it from the map.
        self._by_name: dict[str, dict[str, Entry]] | None = None
        self._name_of: dict[str, str] = {}
        self._closed = False
        # The map observer keeps the index current key by key, so a write or a received
        # update costs O(changed keys), not a rebuild. It must never raise (exceptions in
        # observers surface as an ExceptionGroup from the writer's transaction), and it
        # holds a weak reference so a dropped view does not live as long as its document.
        ref = weakref.ref(self)

        def on_change(event: Any) -> None:
            view = ref()
            if view is None or view._by_name is None:
                return
            try:
                for key, change in event.keys.items():
                    view._forget(key)
                    if change.get("action") != "delete":
                        view._learn(key, change.get("newValue"))
            except Exception:
                view._by_name = None

        self._subscription: Any = self.map.observe(on_change)

    def _forget(self, key: str) -> None:
        name = self._name_of.pop(key, None)
        if name is not None and self._by_name is not None:
            entries = self._by_name[name]
            entries.pop(key, None)
            if not entries:
                del self._by_name[name]

    def _learn(self, key: str, raw: Any) -> None:
        # A malformed entry (from a buggy or hostile peer) is left out so reads keep
        # working; `parse_entries` (schema validation) reports it.
        try:
            entry = parse_entry(self.root, key, raw)
        except SchemaError:
            return
        assert self._by_name is not None
        self._by_name.setdefault(entry.name, {})[key] = entry
        self._name_of[key] = entry.name

    def _index(self) -> dict[str, dict[str, Entry]]:
        if self._by_name is not None and not self._closed:
            return self._by_name
        self._by_name, self._name_of = {}, {}
        # One to_py() call: reading key by key costs a Rust round trip per entry.
        for key, raw in (self.map.to_py() or {}).items():
            self._learn(key, raw)
        return self._by_name

    def winners(self) -> dict[str, Entry]:
        """{name: winning entry} (a fresh dict)."""
        return {name: max(entries.values(), key=_rank) for name, entries in self._index().items()}

    def winner(self, name: str) -> Entry | None:
        """The winning entry for `name`, or None."""
        entries = self._index().get(name)
        return None if not entries else max(entries.values(), key=_rank)

    def write(self, entry: Entry) -> None:
        """Add `entry` and prune what it supersedes, in one transaction."""
        value = {
            "name": entry.name,
            "version": entry.version,
            "writer": entry.writer,
            "value": entry.value,
        }
        check_value(value, path=f"{self.root}[{entry.name!r}]")
        new_key = entry_key(entry.name, entry.version, entry.writer)
        known = self._index().get(entry.name, {})
        stale = [k for k, old in known.items() if k != new_key and old.rank < entry.rank]
        with self.doc.transaction():
            self.map[new_key] = value
            for key in stale:
                del self.map[key]

    def close(self) -> None:
        """Stop observing the document (reads then rebuild the index every time)."""
        if self._subscription is not None:
            self.map.unobserve(self._subscription)
            self._subscription = None
        self._closed = True


def _rank(entry: Entry) -> tuple[int, str]:
    return entry.rank


def parse_entries(doc: Doc, root: str) -> list[Entry]:
    """Parse every entry of root Map `root`; `SchemaError` naming the first malformed one."""
    return [
        parse_entry(root, key, raw) for key, raw in (doc.get(root, type=Map).to_py() or {}).items()
    ]


_FIELDS = {"name", "version", "writer", "value"}


def parse_entry(root: str, key: Any, raw: Any) -> Entry:
    """Check one stored entry; `SchemaError` naming the key if it is malformed."""
    # Written for speed as well as strictness: a replica indexes every entry on load.
    if not isinstance(raw, dict):
        raise SchemaError(f"{root}[{key!r}]", f"entry must be a map, got {type(raw).__name__}")
    if raw.keys() != _FIELDS:
        raise SchemaError(f"{root}[{key!r}]", f"entry fields are {sorted(raw)}")
    name, version, writer, value = raw["name"], raw["version"], raw["writer"], raw["value"]
    if not isinstance(name, str) or not isinstance(writer, str):
        raise SchemaError(f"{root}[{key!r}]", "entry name and writer must be strings")
    if isinstance(version, float) and version.is_integer():
        version = int(version)  # pycrdt hands every number back as a float
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= MAX_INT:
        raise SchemaError(
            f"{root}[{key!r}]", f"entry version must be an int in 0..2**53, got {version!r}"
        )
    if key != entry_key(name, version, writer):
        raise SchemaError(
            f"{root}[{key!r}]", "entry key does not match its name, version and writer"
        )
    if value is not None:
        value = from_stored(value)
        try:
            check_value(value, path=f"{root}[{key!r}].value")
        except InvalidValue as exc:
            raise SchemaError(f"{root}[{key!r}].value", str(exc)) from None
    return Entry(name, version, writer, value)
