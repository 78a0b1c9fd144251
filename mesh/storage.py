"""The crash-safe durable store: one SQLite database per node data directory.

`Store` is the synchronous store (tools, tests, the crash writer); `AsyncStore` wraps it for
trio with group commit, running SQLite in worker threads so the event loop never blocks.

Layout of `DATA_DIR/statemesh.sqlite3` (WAL mode, `synchronous=FULL`):

* `log(doc_id, first_seq, last_seq, data, checksum)`: the update log. One record holds the
  updates of one document from one group-commit batch, as a msgpack array of pycrdt update
  bytes, and covers the dense sequence numbers `first_seq..last_seq`. Batching records this
  way is what makes both durable writes and recovery fast (one row and one checksum per
  batch instead of per update).
* `checkpoints(doc_id, upto_seq, data, checksum)`: the full state of a document up to and
  including `upto_seq`.
* `heads(doc_id, last_seq)`: the highest sequence number acknowledged per document, written
  in the same transaction as the records, so a log whose tail went missing is noticed.
* `meta(key, value)`: format version and node name; `client_ids(client_id, doc_id)`: every
  pycrdt client id this node ever handed out, so none is handed out twice.

Invariants:

* `append` returns only after the transaction holding the record committed; with WAL and
  `synchronous=FULL` that means after fsync. Sequence numbers of a document are dense.
* Every record and checkpoint carries blake3 over (kind, doc_id, seq range, data). Loading
  verifies it. A document's log is applied in sequence order and loading stops at the first
  record that is missing, fails its checksum or does not decode: `CorruptRecord` names the
  document and the record, and nothing after it is applied (`salvage=True` returns what came
  before). Records before it are never touched.
* Recovery is the newest valid checkpoint plus the later log. The two newest checkpoints of a
  document are kept and the log is pruned only below the older one, so one damaged
  checkpoint still leaves a complete path.
* A checkpoint covers exactly the records it read; records appended while it is computed get
  higher sequence numbers and stay in the log.
* SQLite errors never escape as tracebacks: a full disk raises `DiskFull` (the write is not
  acknowledged, nothing earlier is lost, reads keep working); a damaged file raises
  `StorageError` naming the file.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import random
import sqlite3
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3
import msgpack
import pycrdt
import trio

from crdt_types.docs import check_doc_id
from crdt_types.docs import new_doc as _new_pycrdt_doc
from crdt_types.errors import (
    CorruptRecord,
    DiskFull,
    InvalidValue,
    StatemeshError,
    StorageError,
    StoreClosed,
    UnreadableStore,
)
from crdt_types.fingerprint import fingerprint_hex
from crdt_types.schema import validate_document
from crdt_types.vv import decode_state_vector

DB_NAME = "statemesh.sqlite3"
LOCK_NAME = "statemesh.lock"
FORMAT_VERSION = "1"
MAX_UPDATE_BYTES = 64 * 1024 * 1024
# Yjs draws 32-bit client ids; peers built on Yjs expect them to fit in a JS number.
CLIENT_ID_MAX = 2**32 - 1
_CLIENT_ID_TRIES = 64
_CARRY_MAX = 256 * 1024 * 1024  # refused updates kept for the next transaction (see AsyncStore)

_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    doc_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    checksum BLOB NOT NULL,
    PRIMARY KEY (doc_id, first_seq)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    doc_id TEXT NOT NULL,
    upto_seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    checksum BLOB NOT NULL,
    PRIMARY KEY (doc_id, upto_seq)
);
CREATE TABLE IF NOT EXISTS client_ids (client_id INTEGER PRIMARY KEY, doc_id TEXT);
CREATE TABLE IF NOT EXISTS heads (doc_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
"""


# --- checksums ---------------------------------------------------------------------------


def record_checksum(doc_id: str, first_seq: int, last_seq: int, data: bytes) -> bytes:
    """blake3 binding a log record's document, sequence range and data."""
    return _checksum(_prefix(_LOG_KIND, doc_id), first_seq, last_seq, data)


def checkpoint_checksum(doc_id: str, upto_seq: int, data: bytes) -> bytes:
    """blake3 binding a checkpoint's document, sequence and state."""
    return _checksum(_prefix(_CHECKPOINT_KIND, doc_id), 0, upto_seq, data)


def _checkpoint_sound(doc_id: str, upto: object, data: object, checksum: object) -> bool:
    """Whether a stored checkpoint row has sane types and verifies against its checksum."""
    return (
        isinstance(upto, int)
        and isinstance(data, bytes)
        and checkpoint_checksum(doc_id, upto, data) == checksum
    )


_LOG_KIND = b"statemesh/log/1"
_CHECKPOINT_KIND = b"statemesh/checkpoint/1"
_SEQS = struct.Struct(">qq")


def _prefix(kind: bytes, doc_id: str) -> bytes:
    # Length-prefix the variable parts so no two different tuples hash the same input.
    name = doc_id.encode()
    return kind + struct.pack(">I", len(name)) + name


def _checksum(prefix: bytes, a: int, b: int, data: bytes) -> bytes:
    return blake3.blake3(b"".join((prefix, _SEQS.pack(a, b), data))).digest()


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """Counts for one stored document, as `inspect` shows them."""

    id: str
    records: int
    updates: int
    checkpoints: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class DocumentReport:
    """The verification result of one document; `error` is None when it is sound."""

    id: str
    records: int
    checkpoints: int
    last_seq: int
    fingerprint: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Report:
    """The result of `Store.verify`: every document plus file-level errors."""

    documents: tuple[DocumentReport, ...]
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when no document and no file-level check reported an error."""
        return not self.errors and all(d.error is None for d in self.documents)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A rebuilt document and how it was rebuilt; `error` is set only when salvaging."""

    doc: pycrdt.Doc
    doc_id: str
    client_id: int
    upto_seq: int
    checkpoint_seq: int | None
    updates_applied: int
    error: CorruptRecord | None
    problems: tuple[str, ...]


@dataclass(slots=True)
class StoreStats:
    """Counters for tests and benchmarks (transactions are counted, not timed)."""

    transactions: int = 0
    appends: int = 0
    records: int = 0


# --- the synchronous store -------------------------------------------------------------------


class Store:
    """A node's durable store; thread-safe, one SQLite connection behind a lock."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        readonly: bool,
        rng: random.Random,
        check_updates: bool = True,
    ) -> None:
        self._conn = conn
        self.check_updates = check_updates
        self._lock = threading.Lock()
        self._closed = False
        self._readonly = readonly
        self._rng = rng
        self.path = path
        self.stats = StoreStats()
        self._next_seq: dict[str, int] = {}
        self._lock_fd: int | None = None
        with self._guard("reading sequence numbers"):
            for doc_id, last in conn.execute(
                "SELECT doc_id, MAX(last_seq) FROM log GROUP BY doc_id"
            ):
                self._next_seq[doc_id] = _as_int(last, 0) + 1
            for doc_id, upto in conn.execute(
                "SELECT doc_id, MAX(upto_seq) FROM checkpoints GROUP BY doc_id"
                " UNION ALL SELECT doc_id, last_seq FROM heads"
            ):
                self._next_seq[doc_id] = max(self._next_seq.get(doc_id, 1), _as_int(upto, 0) + 1)

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        node_name: str | None = None,
        create: bool = True,
        readonly: bool = False,
        rng: random.Random | None = None,
        check_updates: bool = True,
    ) -> Store:
        """Open (or create) the store in `data_dir`; raises StorageError if unusable.

        `check_updates=False` skips decoding each appended update (about 2 us each); only
        for callers whose updates were produced or already applied by a pycrdt document.
        """
        directory = Path(data_dir)
        path = directory / DB_NAME
        if create and not readonly:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create data directory {directory}: {exc}") from exc
        if not directory.is_dir():
            raise StorageError(f"data directory {directory} does not exist or is not a directory")
        if not path.exists() and (readonly or not create):
            raise StorageError(f"no statemesh store in {directory} (missing {DB_NAME})")
        lock_fd = None if readonly else _lock_directory(directory)
        conn: sqlite3.Connection | None = None
        try:
            if readonly:
                conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            if not readonly:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"{path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            # A reader (inspect) may meet the writer mid-checkpoint: wait, do not fail.
            conn.execute("PRAGMA busy_timeout=5000")
            # Damaged text must not turn into a decode error deep inside a read.
            conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
            if not readonly:
                conn.executescript(_SCHEMA)
                _init_meta(conn, node_name)
            else:
                _check_format(conn)
            store = cls(
                conn,
                path,
                readonly=readonly,
                rng=rng or random.SystemRandom(),
                check_updates=check_updates,
            )
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if lock_fd is not None:
                os.close(lock_fd)
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc, f"opening {path}", path) from exc
            raise
        store._lock_fd = lock_fd
        return store

    # --- plumbing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _translate(exc, what, self.path) from exc

    @contextlib.contextmanager
    def _locked(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreClosed(f"store {self.path} is closed")
            with self._guard(what):
                yield self._conn

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        # One IMMEDIATE transaction; rolled back on any error so a failed write leaves
        # nothing half-done and the connection usable.
        if self._readonly:
            raise InvalidValue(f"store {self.path} was opened read-only")
        with self._locked(what) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            self.stats.transactions += 1

    @property
    def closed(self) -> bool:
        """True once `close` ran."""
        return self._closed

    def close(self) -> None:
        """Close the database; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the directory lock
                self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------

    def append(self, doc_id: str, update: bytes) -> int:
        """Durably append one update; return its sequence number."""
        return self.append_many([(doc_id, update)])[0]

    def append_many(
        self, items: Sequence[tuple[str, bytes]], *, max_record_updates: int | None = None
    ) -> list[int]:
        """Durably append updates in one transaction; return their sequence numbers in order.

        Each document's updates become one record, or records of at most
        `max_record_updates` updates.
        """
        items = list(items)
        for doc_id, update in items:
            check_doc_id(doc_id)
            _check_update(update, decode=self.check_updates)
        if max_record_updates is not None and (
            not isinstance(max_record_updates, int) or max_record_updates < 1
        ):
            raise InvalidValue(
                f"max_record_updates must be a positive int, got {max_record_updates!r}"
            )
        if not items:
            return []
        return self._commit(self._prepare(items, max_record_updates))

    def _prepare(
        self, items: list[tuple[str, bytes]], max_record_updates: int | None = None
    ) -> _Prepared:
        """Group validated items into records per document, numbered from the counters."""
        # Pure CPU work, kept apart from `_commit` so AsyncStore can do it on the trio
        # thread and hand the worker thread only SQLite calls (which release the GIL).
        groups: dict[str, list[int]] = {}
        for index, (doc_id, _) in enumerate(items):
            groups.setdefault(doc_id, []).append(index)
        seqs = [0] * len(items)
        rows = []
        firsts: dict[str, int] = {}
        for doc_id, indexes in groups.items():
            firsts[doc_id] = next_seq = self._next_seq.get(doc_id, 1)
            step = max_record_updates or len(indexes)
            for lo in range(0, len(indexes), step):
                part = indexes[lo : lo + step]
                first, last = next_seq, next_seq + len(part) - 1
                data = msgpack.packb([bytes(items[i][1]) for i in part], use_bin_type=True)
                rows.append((doc_id, first, last, data, record_checksum(doc_id, first, last, data)))
                for offset, i in enumerate(part):
                    seqs[i] = first + offset
                next_seq = last + 1
        return _Prepared(items, rows, seqs, firsts, max_record_updates)

    def _commit(self, prep: _Prepared) -> list[int]:
        """Write prepared records in one transaction; return their sequence numbers."""
        with self._write("appending updates") as conn:
            if any(self._next_seq.get(d, 1) != first for d, first in prep.firsts.items()):
                # Another thread appended first: renumber.
                prep = self._prepare(prep.items, prep.max_record_updates)
            conn.executemany(
                "INSERT INTO log (doc_id, first_seq, last_seq, data, checksum)"
                " VALUES (?, ?, ?, ?, ?)",
                prep.rows,
            )
            heads = {doc_id: last for doc_id, _, last, _, _ in prep.rows}
            conn.executemany(
                "INSERT INTO heads (doc_id, last_seq) VALUES (?, ?)"
                " ON CONFLICT (doc_id) DO UPDATE SET last_seq = excluded.last_seq",
                heads.items(),
            )
        # Only a committed transaction moves the counters: a failed one reuses its numbers.
        for doc_id, _, last, _, _ in prep.rows:
            self._next_seq[doc_id] = last + 1
        self.stats.appends += len(prep.items)
        self.stats.records += len(prep.rows)
        return prep.seqs

    def new_client_id(self, doc_id: str | None = None, avoid: Iterable[int] = ()) -> int:
        """Draw a pycrdt client id never handed out before and record it durably."""
        return self._new_client_ids([(doc_id, set(avoid))])[0]

    def _new_client_ids(self, wants: Sequence[tuple[str | None, set[int]]]) -> list[int]:
        if self._readonly:
            # Nothing written through a read-only store can be persisted, so the id only
            # has to be valid, not unique forever.
            return [self._draw_unrecorded(avoid) for _, avoid in wants]
        with self._write("recording client ids") as conn:
            chosen: list[int] = []
            for doc_id, avoid in wants:
                for _ in range(_CLIENT_ID_TRIES):
                    cid = self._rng.randint(1, CLIENT_ID_MAX)
                    if cid in avoid or cid in chosen:
                        continue
                    used = conn.execute(
                        "SELECT 1 FROM client_ids WHERE client_id = ?", (cid,)
                    ).fetchone()
                    if used is None:
                        break
                else:
                    raise StorageError("could not draw an unused client id")
                conn.execute(
                    "INSERT INTO client_ids (client_id, doc_id) VALUES (?, ?)", (cid, doc_id)
                )
                chosen.append(cid)
        return chosen

    def _draw_unrecorded(self, avoid: set[int]) -> int:
        for _ in range(_CLIENT_ID_TRIES):
            cid = self._rng.randint(1, CLIENT_ID_MAX)
            if cid not in avoid:
                return cid
        raise StorageError("could not draw an unused client id")

    def used_client_ids(self) -> set[int]:
        """Every client id this store ever handed out."""
        with self._locked("reading client ids") as conn:
            return {_as_int(row[0], 0) for row in conn.execute("SELECT client_id FROM client_ids")}

    def new_doc(self, doc_id: str) -> pycrdt.Doc:
        """A fresh empty document with a newly recorded client id, for a new document id."""
        check_doc_id(doc_id)
        return _new_pycrdt_doc(self.new_client_id(doc_id))

    # --- reading ----------------------------------------------------------------------

    def documents(self) -> list[str]:
        """Ids of every document with a record or a checkpoint, sorted."""
        with self._locked("listing documents") as conn:
            rows = conn.execute(
                "SELECT doc_id FROM log UNION SELECT doc_id FROM checkpoints"
                " UNION SELECT doc_id FROM heads ORDER BY 1"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def info(self, doc_id: str) -> DocumentInfo:
        """Record, update and checkpoint counts of one document."""
        with self._locked("counting records") as conn:
            records, updates, last = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(last_seq - first_seq + 1), 0),"
                " COALESCE(MAX(last_seq), 0) FROM log WHERE doc_id = ?",
                (doc_id,),
            ).fetchone()
            checkpoints, upto = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(upto_seq), 0) FROM checkpoints WHERE doc_id = ?",
                (doc_id,),
            ).fetchone()
        return DocumentInfo(
            id=doc_id,
            records=_as_int(records, 0),
            updates=_as_int(updates, 0),
            checkpoints=_as_int(checkpoints, 0),
            last_seq=max(_as_int(last, 0), _as_int(upto, 0)),
        )

    def last_seq(self, doc_id: str) -> int:
        """The highest sequence number acknowledged for `doc_id` (0 if none)."""
        with self._lock:
            return self._next_seq.get(doc_id, 1) - 1

    def load(self, doc_id: str, *, salvage: bool = False) -> pycrdt.Doc:
        """Rebuild a document with a fresh client id; raise CorruptRecord unless salvaging."""
        return self.recover(doc_id, salvage=salvage).doc

    def load_all(self, *, salvage: bool = False) -> dict[str, pycrdt.Doc]:
        """Rebuild every stored document, each with a fresh client id."""
        loaded, _ = self.recover_all(salvage=salvage)
        return {doc_id: result.doc for doc_id, result in loaded.items()}

    def recover_all(
        self, *, salvage: bool = False
    ) -> tuple[dict[str, Loaded], tuple[CorruptRecord, ...]]:
        """Rebuild every stored document and say how; also the ids too damaged to load.

        With `salvage`, a document whose log is damaged comes back with what came before
        the damage and its `Loaded.error` set; one whose rows SQLite cannot read (a bad
        page) comes back empty with the error. A stored id that is not valid UTF-8 cannot
        be loaded at all: it is returned in the second element.
        """
        doc_ids = []
        unloadable = []
        for doc_id in self.documents():
            damaged = _damaged_id(doc_id)
            if damaged is None:
                doc_ids.append(doc_id)
            elif not salvage:
                raise damaged
            else:
                unloadable.append(damaged)
        # One transaction records all the ids; documents are then rebuilt one at a time so
        # only one document's log is in memory at once.
        ids = self._new_client_ids([(doc_id, set()) for doc_id in doc_ids])
        loaded = {}
        for doc_id, cid in zip(doc_ids, ids, strict=True):
            try:
                plan = self._plan(doc_id, salvage=salvage)
            except (DiskFull, StoreClosed):
                raise
            except StorageError as exc:
                if not salvage or isinstance(exc, CorruptRecord):
                    raise
                # SQLite cannot read this document's rows: nothing of it can be trusted,
                # so it starts empty and is refilled from peers like any damaged one.
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                error = CorruptRecord(doc_id, None, f"its records cannot be read: {cause}")
                plan = _Plan(doc_id, None, [], 0, error, (str(error),))
            loaded[doc_id] = self._build(plan, cid, salvage=salvage)
        return loaded, tuple(unloadable)

    def recover(self, doc_id: str, *, salvage: bool = False) -> Loaded:
        """Rebuild a document and say how (checkpoint used, updates applied, problems)."""
        check_doc_id(doc_id)
        plan = self._plan(doc_id, salvage=salvage)
        return self._build(plan, self.new_client_id(doc_id), salvage=salvage)

    def _build(self, plan: _Plan, client_id: int, *, salvage: bool) -> Loaded:
        # The id is drawn before building (a client id is fixed when a Doc is made); in the
        # rare case it already appears in the document's history, draw again and rebuild.
        for _ in range(_CLIENT_ID_TRIES):
            doc, err = _apply(_new_pycrdt_doc(client_id), plan, plan.doc_id, salvage=salvage)
            clients = set(decode_state_vector(doc.get_state()))
            if client_id not in clients:
                break
            client_id = self.new_client_id(plan.doc_id, avoid=clients)
        else:
            raise StorageError(f"document {plan.doc_id!r}: no unused client id found")
        return Loaded(
            doc=doc,
            doc_id=plan.doc_id,
            client_id=client_id,
            upto_seq=plan.upto_seq,
            checkpoint_seq=plan.base[0] if plan.base else None,
            updates_applied=len(plan.updates),
            error=plan.error or err,
            problems=plan.problems + ((str(err),) if err else ()),
        )

    def _read(
        self, doc_id: str, *, all_rows: bool = False
    ) -> tuple[list[tuple], list[tuple], object]:
        """Checkpoint rows (newest first), log rows and head of a document, in one snapshot.

        Log rows at or below the newest checkpoint that verifies are not read unless
        `all_rows`: they are not needed, and a repair checkpoint must let a document load
        even when SQLite can no longer read (nor delete) a damaged row below it.
        """
        with self._locked("reading document") as conn:
            conn.execute("BEGIN")
            try:
                ckpts = conn.execute(
                    "SELECT upto_seq, CAST(data AS BLOB), CAST(checksum AS BLOB)"
                    " FROM checkpoints WHERE doc_id = ?"
                    " ORDER BY upto_seq DESC",
                    (doc_id,),
                ).fetchall()
                floor = 0
                for upto, data, checksum in [] if all_rows else ckpts:
                    if _checkpoint_sound(doc_id, upto, data, checksum):
                        floor = upto
                        break
                rows = conn.execute(
                    "SELECT first_seq, last_seq, CAST(data AS BLOB), CAST(checksum AS BLOB)"
                    " FROM log WHERE doc_id = ? AND NOT (last_seq <= ?)"
                    " ORDER BY first_seq",
                    (doc_id, floor),
                ).fetchall()
                head = conn.execute(
                    "SELECT last_seq FROM heads WHERE doc_id = ?", (doc_id,)
                ).fetchone()
            finally:
                conn.execute("COMMIT")
        return ckpts, rows, None if head is None else head[0]

    def _plan(self, doc_id: str, *, salvage: bool, all_checkpoints: bool = False) -> _Plan:
        """Verify a document's checkpoints and log and pick what to apply."""
        ckpts, rows, head = self._read(doc_id, all_rows=all_checkpoints)
        problems: list[str] = []
        base: tuple[int, bytes] | None = None
        for upto, data, checksum in ckpts:
            if _checkpoint_sound(doc_id, upto, data, checksum):
                if base is None:
                    base = (upto, data)
                if not all_checkpoints:
                    break
                continue
            problems.append(
                str(CorruptRecord(doc_id, _as_int(upto, None), "checkpoint fails its checksum"))
            )
        start = base[0] if base else 0
        expected = start + 1
        prefix = _prefix(_LOG_KIND, doc_id)
        updates: list[bytes] = []
        error: CorruptRecord | None = None
        for first, last, data, checksum in rows:
            if isinstance(last, int) and isinstance(first, int) and last <= start:
                # Covered by the checkpoint, so not needed; a deep check still reports it.
                if all_checkpoints and (
                    not isinstance(data, bytes)
                    or record_checksum(doc_id, first, last, data) != checksum
                ):
                    problems.append(
                        str(
                            CorruptRecord(
                                doc_id, first, "record (below checkpoint) fails its checksum"
                            )
                        )
                    )
                continue
            # Fast path for a sound record; `_check_record` says what is wrong otherwise.
            if (
                first == expected
                and type(last) is int
                and last >= first
                and type(data) is bytes
                and _checksum(prefix, first, last, data) == checksum
            ):
                err = None
            else:
                err = _check_record(doc_id, expected, first, last, data, checksum)
            if err is None:
                try:
                    batch = msgpack.unpackb(data, use_list=True)
                except Exception as exc:  # msgpack raises several unrelated types
                    err = CorruptRecord(doc_id, first, f"record does not decode: {exc}")
                else:
                    # Element types are left to pycrdt (TypeError in `_apply`): the
                    # checksum already vouches that these are the bytes we wrote.
                    if not isinstance(batch, list) or len(batch) != last - first + 1:
                        err = CorruptRecord(doc_id, first, "record holds the wrong update count")
            if err is not None:
                error = err
                break
            updates.extend(batch)
            expected = last + 1
        if error is None and isinstance(head, int) and head >= expected:
            error = CorruptRecord(
                doc_id,
                expected,
                f"record missing: the log ends at seq {expected - 1}"
                f" but seq {head} was acknowledged",
            )
        if error is not None:
            problems.append(str(error))
            if not salvage:
                raise error
        return _Plan(doc_id, base, updates, expected - 1, error, tuple(problems))

    def checkpoint(self, doc_id: str, *, prune: bool = True) -> int | None:
        """Write the full state of `doc_id` as a checkpoint; return the seq it covers."""
        check_doc_id(doc_id)
        if self._readonly:
            raise InvalidValue(f"store {self.path} was opened read-only")
        plan = self._plan(doc_id, salvage=False)
        if plan.upto_seq == 0 or (plan.base is not None and plan.base[0] == plan.upto_seq):
            return plan.base[0] if plan.base else None  # nothing new to compact
        # The state is computed without the lock: appends continue meanwhile and land
        # above `upto`, so they stay in the log and are never pruned by this checkpoint.
        doc = _apply(pycrdt.Doc(), plan, doc_id, salvage=False)[0]
        state = doc.get_update()
        upto = plan.upto_seq
        with self._write("writing checkpoint") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints (doc_id, upto_seq, data, checksum)"
                " VALUES (?, ?, ?, ?)",
                (doc_id, upto, state, checkpoint_checksum(doc_id, upto, state)),
            )
            if prune:
                kept = conn.execute(
                    "SELECT upto_seq FROM checkpoints WHERE doc_id = ?"
                    " ORDER BY upto_seq DESC LIMIT 1 OFFSET 1",
                    (doc_id,),
                ).fetchone()
                if kept is not None:
                    # Keep the two newest checkpoints and the log above the older one, so
                    # a damaged newest checkpoint still leaves a complete path.
                    conn.execute(
                        "DELETE FROM checkpoints WHERE doc_id = ? AND upto_seq < ?",
                        (doc_id, kept[0]),
                    )
                    conn.execute(
                        "DELETE FROM log WHERE doc_id = ? AND last_seq <= ?", (doc_id, kept[0])
                    )
        return upto

    def repair(self, doc_id: str, upto_seq: int, state: bytes) -> None:
        """Supersede a damaged log: write `state` as the checkpoint at `upto_seq`.

        The caller guarantees that `state` holds everything the records up to `upto_seq`
        should have held (the runtime passes its replica, refilled from peers, and the
        last sequence number committed when it encoded it). Records at or below
        `upto_seq` that fail verification are deleted in the same transaction (they can
        never be used again); sound ones stay until compaction prunes them. Raises
        `CorruptRecord` if the document still does not load cleanly afterwards (damage
        above `upto_seq`), `StorageError` if the file cannot be written.
        """
        check_doc_id(doc_id)
        if isinstance(upto_seq, bool) or not isinstance(upto_seq, int) or upto_seq < 0:
            raise InvalidValue(f"upto_seq must be an int >= 0, got {upto_seq!r}")
        _check_update(state)
        state = bytes(state)
        # Which records below the checkpoint fail verification, read before the write: a
        # read that hits a page SQLite cannot decode poisons the transaction it is in.
        prefix = _prefix(_LOG_KIND, doc_id)
        bad: list[int] = []
        with self._locked("checking records below the repair") as conn:
            below = conn.execute(
                "SELECT first_seq, last_seq FROM log WHERE doc_id = ? AND last_seq <= ?",
                (doc_id, upto_seq),
            ).fetchall()
            for first, last in below:
                try:
                    data, checksum = conn.execute(
                        "SELECT CAST(data AS BLOB), CAST(checksum AS BLOB) FROM log"
                        " WHERE doc_id = ? AND first_seq = ?",
                        (doc_id, first),
                    ).fetchone()
                except sqlite3.DatabaseError:
                    # SQLite can neither read nor delete a row on a damaged page; loading
                    # no longer reads it (it is below the checkpoint), so it is left.
                    continue
                if not (
                    isinstance(first, int)
                    and isinstance(last, int)
                    and isinstance(data, bytes)
                    and _checksum(prefix, first, last, data) == checksum
                ):
                    bad.append(first)
        with self._write("writing repair checkpoint") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints (doc_id, upto_seq, data, checksum)"
                " VALUES (?, ?, ?, ?)",
                (doc_id, upto_seq, state, checkpoint_checksum(doc_id, upto_seq, state)),
            )
            conn.executemany(
                "DELETE FROM log WHERE doc_id = ? AND first_seq = ?",
                [(doc_id, first) for first in bad],
            )
            bad_ckpts = [
                (doc_id, upto)
                for upto, data, checksum in conn.execute(
                    "SELECT upto_seq, CAST(data AS BLOB), CAST(checksum AS BLOB)"
                    " FROM checkpoints WHERE doc_id = ? AND upto_seq < ?",
                    (doc_id, upto_seq),
                )
                if not _checkpoint_sound(doc_id, upto, data, checksum)
            ]
            conn.executemany("DELETE FROM checkpoints WHERE doc_id = ? AND upto_seq = ?", bad_ckpts)
        with self._lock:
            self._next_seq[doc_id] = max(self._next_seq.get(doc_id, 1), upto_seq + 1)
        plan = self._plan(doc_id, salvage=True)
        if plan.error is not None:
            raise plan.error

    def verify(self, *, schema: bool = True, deep: bool = True) -> Report:
        """Check every record's checksum; `deep` adds SQLite's integrity check and every checkpoint."""
        errors: list[str] = []
        try:
            if deep:
                with self._locked("checking database integrity") as conn:
                    result = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
                if result != ["ok"]:
                    errors.extend(f"{self.path}: sqlite integrity check: {r}" for r in result[:20])
            doc_ids = self.documents()
        except StorageError as exc:
            return Report(documents=(), errors=(*errors, str(exc)))
        reports = []
        for doc_id in doc_ids:
            damaged = _damaged_id(doc_id)
            if damaged is not None:
                reports.append(DocumentReport(doc_id, 0, 0, 0, None, str(damaged)))
                continue
            info = DocumentInfo(doc_id, 0, 0, 0, 0)
            fp: str | None = None
            error: str | None = None
            try:
                info = self.info(doc_id)
                plan = self._plan(doc_id, salvage=True, all_checkpoints=deep)
                problems = list(plan.problems)
                doc, apply_error = _apply(pycrdt.Doc(), plan, doc_id, salvage=True)
                if apply_error is not None:
                    problems.append(str(apply_error))
                fp = fingerprint_hex(doc)
                if schema and not problems:
                    try:
                        validate_document(doc_id, doc)
                    except ValueError as exc:  # SchemaError, or a value it could not read
                        problems.append(f"document {doc_id!r}: schema: {exc}")
                error = "; ".join(problems) or None
            except StorageError as exc:
                error = str(exc)
            reports.append(
                DocumentReport(
                    id=doc_id,
                    records=info.records,
                    checkpoints=info.checkpoints,
                    last_seq=info.last_seq,
                    fingerprint=fp,
                    error=error,
                )
            )
        return Report(documents=tuple(reports), errors=tuple(errors))


# --- building documents -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Prepared:
    items: list[tuple[str, bytes]]
    rows: list[tuple[str, int, int, bytes, bytes]]
    seqs: list[int]
    firsts: dict[str, int]
    max_record_updates: int | None


@dataclass(frozen=True, slots=True)
class _Plan:
    doc_id: str
    base: tuple[int, bytes] | None
    updates: list[bytes]
    upto_seq: int
    error: CorruptRecord | None
    problems: tuple[str, ...]


def _apply(
    doc: pycrdt.Doc, plan: _Plan, doc_id: str, *, salvage: bool
) -> tuple[pycrdt.Doc, CorruptRecord | None]:
    """Apply the checkpoint, then every update, in one transaction (replay is the hot path)."""
    updates = plan.updates
    try:
        with doc.transaction() as txn:
            if plan.base is not None:
                doc.apply_update(plan.base[1])
            # `Doc.apply_update` re-enters the transaction and re-checks it on every call,
            # which is most of the cost for small updates; calling the binding it wraps
            # inside our one transaction replays about twice as fast. pycrdt is pinned
            # below 0.15; without these internals, fall back to merging small groups,
            # the fastest public path.
            raw_apply = getattr(getattr(doc, "_doc", None), "apply_update", None)
            raw_txn = getattr(txn, "_txn", None) if _FAST_REPLAY else None
            if raw_apply is not None and raw_txn is not None:
                for update in updates:
                    raw_apply(raw_txn, update)
            else:
                for lo in range(0, len(updates), _MERGE):
                    group = updates[lo : lo + _MERGE]
                    doc.apply_update(group[0] if len(group) == 1 else pycrdt.merge_updates(*group))
    except (ValueError, TypeError) as exc:
        # A record that verifies but does not decode was stored that way by its writer.
        err = CorruptRecord(doc_id, plan.upto_seq, f"an update does not apply: {exc}")
        if not salvage:
            raise err from exc
        return doc, err
    return doc, None


_MERGE = 64
_FAST_REPLAY = True  # tests turn it off to exercise the public fallback


# --- validation and errors ---------------------------------------------------------------------


def _check_update(update: object, *, decode: bool = True) -> None:
    if not isinstance(update, bytes | bytearray | memoryview):
        raise InvalidValue(f"update must be bytes, got {type(update).__name__}")
    if len(update) == 0:
        raise InvalidValue("update must not be empty")
    if len(update) > MAX_UPDATE_BYTES:
        raise InvalidValue(f"update is {len(update)} bytes, more than {MAX_UPDATE_BYTES}")
    if decode:
        # Stored garbage would stop every later update of the document from loading, so
        # it is refused at the door. Merging with the empty update decodes it fully.
        try:
            pycrdt.merge_updates(bytes(update), _EMPTY_UPDATE)
        except ValueError as exc:
            raise InvalidValue(f"update does not decode as a pycrdt update: {exc}") from None


_EMPTY_UPDATE = b"\x00\x00"


def _damaged_id(doc_id: str) -> CorruptRecord | None:
    """A stored document id that is not valid UTF-8 can only be damage (ids are checked on
    the way in), and SQLite cannot even be asked about it."""
    try:
        doc_id.encode()
    except UnicodeEncodeError:
        return CorruptRecord(doc_id, None, "document id is damaged (not valid UTF-8)")
    return None


def _check_record(
    doc_id: str, expected: int, first: object, last: object, data: object, checksum: object
) -> CorruptRecord | None:
    if not isinstance(first, int) or not isinstance(last, int):
        return CorruptRecord(doc_id, expected, "record has a non-integer sequence number")
    if first != expected:
        if first > expected:
            return CorruptRecord(
                doc_id, expected, f"record missing (next record starts at {first})"
            )
        return CorruptRecord(doc_id, first, f"record overlaps (expected seq {expected})")
    if last < first:
        return CorruptRecord(doc_id, first, f"record has last seq {last} below first")
    if not isinstance(data, bytes) or not isinstance(checksum, bytes):
        return CorruptRecord(doc_id, first, "record data or checksum is not a blob")
    if record_checksum(doc_id, first, last, data) != checksum:
        return CorruptRecord(doc_id, first, "record fails its checksum")
    return None


def _as_int(value: object, default: int | None) -> int | None:
    return value if isinstance(value, int) else default


def _translate(exc: sqlite3.Error, what: str, path: Path) -> StorageError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_FULL:
        return DiskFull(f"{what}: disk full at {path}: {exc}")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in str(exc):
        return UnreadableStore(
            path,
            f"{what}: database file {path} is damaged: {exc}; to recover, move it and its"
            " -wal and -shm files aside and restart the peer: it starts empty and refills"
            " from its peers",
        )
    return StorageError(f"{what}: {path}: {exc}")


def move_unreadable(data_dir: str | os.PathLike[str], now: float | None = None) -> Path:
    """Move the database file and its -wal/-shm files into DATA_DIR/unreadable-<UTC time>/.

    Holds the directory lock while moving, so a running peer's files are never moved;
    `now` (epoch seconds) names the subdirectory. Returns the subdirectory.
    """
    directory = Path(data_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    lock_fd = _lock_directory(directory)
    try:
        target = directory / f"unreadable-{stamp}"
        for n in range(1, 1000):  # two recoveries within one second get distinct homes
            if not target.exists():
                break
            target = directory / f"unreadable-{stamp}-{n}"
        try:
            target.mkdir()
            # The -wal first: moving the main file alone would leave a log SQLite would
            # replay into the fresh store.
            for suffix in ("-wal", "-shm", ""):
                source = directory / (DB_NAME + suffix)
                if source.exists():
                    os.replace(source, target / source.name)
        except OSError as exc:
            raise StorageError(f"cannot move the unreadable store aside: {exc}") from exc
    finally:
        os.close(lock_fd)
    return target


def _lock_directory(directory: Path) -> int:
    """Take the data directory's exclusive lock; StorageError if another process holds it.

    Sequence numbers are allocated in memory, so two writers on one directory would clash;
    the kernel drops the lock when its holder dies, even by SIGKILL.
    """
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create lock file in {directory}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StorageError(
            f"data directory {directory} is in use by another statemesh process"
        ) from exc
    return fd


def _init_meta(conn: sqlite3.Connection, node_name: str | None) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT_VERSION,))
        if node_name is not None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('node_name', ?)", (node_name,))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    _check_format(conn)


def _check_format(conn: sqlite3.Connection) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    if row is None or row[0] != FORMAT_VERSION:
        found = None if row is None else row[0]
        raise StorageError(f"store format {found!r} is not supported (want {FORMAT_VERSION})")


# --- trio: group commit --------------------------------------------------------------------------


class _Batch:
    __slots__ = ("items", "seqs", "error", "done")

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.seqs: list[int] = []
        self.error: BaseException | None = None
        self.done = trio.Event()


class Pending:
    """One queued update of an AsyncStore; `await wait()` returns its seq once durable.

    If the waiter is cancelled the update still commits with its batch: a cancelled wait
    means "unknown", never "rolled back".
    """

    __slots__ = ("batch", "index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self.batch = batch
        self.index = index

    @property
    def done(self) -> bool:
        """True once the batch holding this update committed or failed."""
        return self.batch.done.is_set()

    async def wait(self) -> int:
        """The update's sequence number once durable; raises the batch's error otherwise."""
        if self.batch.done.is_set():
            # Already durable: skip the scheduler round trip (the hot path of a writer
            # that queued several updates), but still honour cancellation.
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            await self.batch.done.wait()
        if self.batch.error is not None:
            raise self.batch.error
        return self.batch.seqs[self.index]


class AsyncStore:
    """The store for trio code: appends are group-committed; SQLite runs in worker threads.

    Writers queue their updates into the open batch and wait on its event; one committer
    task writes a whole batch in one transaction while the next batch fills. So the number
    of fsyncs follows the disk's speed, not the number of writers.
    """

    def __init__(self, store: Store, *, max_batch: int = 10_000) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: collections.deque[_Batch] = collections.deque()
        self._wakeup = trio.Event()
        self._closing = False
        self._stopped = False
        self._inflight: _Batch | None = None
        # The committer has a thread of its own, so a long load or checkpoint never holds
        # durability up; the Store's lock serialises their use of the one connection.
        self._commit_limiter = trio.CapacityLimiter(1)
        self._limiter = trio.CapacityLimiter(2)
        self.batches = 0
        self._known_ids: set[str] = set()
        self._check_updates = store.check_updates
        # Updates of batches refused for lack of space. Their waiters were told (DiskFull),
        # but the documents in memory hold them, and the runtime marks durable the state
        # vector a later batch was submitted at: so they go first into the next transaction
        # or that batch fails too. Otherwise a node would ack, after the disk recovered,
        # writes that are not on it (a restart loses them). Past `_CARRY_MAX` bytes they are
        # no longer kept and every later batch fails: durability is refused until restart.
        self._carry: list[tuple[str, bytes]] = []
        self._carry_bytes = 0
        self._carry_lost = False
        # Called after each group commit with (seconds, updates, bytes, error or None):
        # how the runtime feeds fsync latency and disk faults to metrics and readiness.
        self.on_commit: Callable[[float, int, int, BaseException | None], None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, data_dir: str | os.PathLike[str], **kwargs) -> AsyncIterator[AsyncStore]:
        """Open a store and run its committer for the duration of the `async with`."""
        store = await trio.to_thread.run_sync(lambda: Store.open(data_dir, **kwargs))
        astore = cls(store)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(astore.run)
                try:
                    yield astore
                finally:
                    with trio.CancelScope(shield=True):
                        await astore.aclose()
        finally:
            store.close()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The committer: take the oldest batch, commit it in one transaction, repeat."""
        task_status.started()
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    continue
                batch = self._inflight = self._queue.popleft()
                started = time.perf_counter()
                carried = self._carry
                try:
                    if self._carry_lost:
                        raise DiskFull(
                            f"{self.store.path}: writes refused earlier for lack of space could "
                            "not all be kept; restart the node to make writes durable again"
                        )
                    # Not cancellable (the default): a transaction in flight must finish so
                    # its waiters learn the truth about durability.
                    prepared = self.store._prepare(carried + batch.items)
                    seqs = await trio.to_thread.run_sync(
                        self.store._commit, prepared, limiter=self._commit_limiter
                    )
                    batch.seqs = seqs[len(carried) :]
                    self._carry, self._carry_bytes = [], 0
                    self.batches += 1
                except DiskFull as exc:
                    batch.error = exc
                    if not self._carry_lost:
                        self._carry = carried + batch.items
                        self._carry_bytes += sum(len(u) for _, u in batch.items)
                        if self._carry_bytes > _CARRY_MAX:
                            self._carry, self._carry_bytes, self._carry_lost = [], 0, True
                except StatemeshError as exc:
                    batch.error = exc
                except Exception as exc:
                    # Not ours to crash the caller's nursery over: every waiter of the
                    # batch hears that its writes are not durable.
                    batch.error = StorageError(f"group commit failed: {exc!r}")
                finally:
                    self._inflight = None
                    if self.on_commit is not None:
                        nbytes = sum(len(update) for _, update in batch.items)
                        # A metrics bug must never keep waiters from hearing about their batch.
                        with contextlib.suppress(Exception):
                            self.on_commit(
                                time.perf_counter() - started, len(batch.items), nbytes, batch.error
                            )
                    batch.done.set()
        finally:
            self._stopped = True
            # Anyone still queued must not wait forever: their writes were not made durable.
            while self._queue:
                batch = self._queue.popleft()
                batch.error = StoreClosed("store closed before this write was committed")
                batch.done.set()

    async def append(self, doc_id: str, update: bytes) -> int:
        """Append one update; return its seq once it is durable (fsync'd)."""
        return await self.submit(doc_id, update).wait()

    async def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        """Append updates in one group commit; return their seqs once durable."""
        items = list(items)
        if not items:
            self._check_open()
            return []
        pending = self._enqueue(items)
        await pending.wait()
        return pending.batch.seqs[pending.index : pending.index + len(items)]

    def submit(self, doc_id: str, update: bytes) -> Pending:
        """Queue one update for the next group commit without waiting; await `.wait()` for its seq.

        This is how a writer makes several updates and then waits once (a session's
        commit): trio's cost per wake-up is larger than pycrdt's per update.
        """
        # The hot path of every write: checks are inlined, document ids checked once.
        if self._closing or self._stopped:
            raise StoreClosed(f"store {self.store.path} is closed")
        if doc_id not in self._known_ids:
            check_doc_id(doc_id)
            if len(self._known_ids) > 100_000:
                self._known_ids.clear()
            self._known_ids.add(doc_id)
        if (
            self._check_updates
            or type(update) is not bytes
            or not 0 < len(update) <= MAX_UPDATE_BYTES
        ):
            _check_update(update, decode=self._check_updates)
        queue = self._queue
        if queue:
            batch = queue[-1]
            items = batch.items
            if len(items) < self.max_batch:
                items.append((doc_id, update))
                return Pending(batch, len(items) - 1)
        # A new batch: the committer, if idle, waits for exactly this (it finds batches
        # queued while it was busy on its own, so later appends need not wake it).
        batch = _Batch()
        batch.items.append((doc_id, update))
        queue.append(batch)
        self._wakeup.set()
        return Pending(batch, 0)

    async def flush(self) -> None:
        """Return once everything submitted so far is durable; raise if any of it failed."""
        batches = ([self._inflight] if self._inflight is not None else []) + list(self._queue)
        for batch in batches:
            await Pending(batch, 0).wait()

    def _check_open(self) -> None:
        if self._closing or self._stopped or self.store.closed:
            raise StoreClosed(f"store {self.store.path} is closed")

    def _enqueue(self, items: list[tuple[str, bytes]]) -> Pending:
        self._check_open()
        for doc_id, update in items:
            check_doc_id(doc_id)
            _check_update(update, decode=self.store.check_updates)
        if not self._queue or len(self._queue[-1].items) >= self.max_batch:
            self._queue.append(_Batch())
            self._wakeup.set()
        batch = self._queue[-1]
        index = len(batch.items)
        batch.items.extend(items)
        return Pending(batch, index)

    async def load(self, doc_id: str, *, salvage: bool = False) -> pycrdt.Doc:
        """Rebuild a document with a fresh client id, off the event loop."""
        return await self._run(self.store.load, doc_id, salvage=salvage)

    async def load_all(self, *, salvage: bool = False) -> dict[str, pycrdt.Doc]:
        """Rebuild every document, off the event loop."""
        return await self._run(self.store.load_all, salvage=salvage)

    async def recover(self, doc_id: str, *, salvage: bool = False) -> Loaded:
        """Rebuild a document and say how, off the event loop."""
        return await self._run(self.store.recover, doc_id, salvage=salvage)

    async def recover_all(
        self, *, salvage: bool = False
    ) -> tuple[dict[str, Loaded], tuple[CorruptRecord, ...]]:
        """Rebuild every document and say how, off the event loop (see `Store.recover_all`)."""
        return await self._run(self.store.recover_all, salvage=salvage)

    def committed_seq(self, doc_id: str) -> int:
        """The highest sequence number of `doc_id` committed so far (0 if none).

        Read on the trio thread (it waits for the store's lock, at most one group
        commit): `repair` needs it at the same instant as the replica's state.
        """
        return self.store.last_seq(doc_id)

    async def repair(self, doc_id: str, upto_seq: int, state: bytes) -> None:
        """Supersede a damaged log with a checkpoint, off the event loop (see `Store.repair`)."""
        await self._run(self.store.repair, doc_id, upto_seq, state)

    async def checkpoint(self, doc_id: str, *, prune: bool = True) -> int | None:
        """Checkpoint a document while appends continue."""
        return await self._run(self.store.checkpoint, doc_id, prune=prune)

    async def documents(self) -> list[str]:
        """Ids of every stored document."""
        return await self._run(self.store.documents)

    async def info(self, doc_id: str) -> DocumentInfo:
        """Record and checkpoint counts of one document."""
        return await self._run(self.store.info, doc_id)

    async def verify(self) -> Report:
        """Verify every record, checkpoint and schema."""
        return await self._run(self.store.verify)

    async def new_client_id(self, doc_id: str | None = None, avoid: Iterable[int] = ()) -> int:
        """A never-used, durably recorded client id."""
        return await self._run(self.store.new_client_id, doc_id, set(avoid))

    async def new_doc(self, doc_id: str) -> pycrdt.Doc:
        """A fresh empty document with a recorded client id."""
        return await self._run(self.store.new_doc, doc_id)

    async def aclose(self) -> None:
        """Stop accepting appends, let queued ones commit, then close the database."""
        self._closing = True
        self._wakeup.set()
        while (self._queue or self._inflight is not None) and not self._stopped:
            await (self._queue[-1] if self._queue else self._inflight).done.wait()
        await self._run(self.store.close)

    async def _run(self, fn, *args, **kwargs):
        if self.store.closed:
            raise StoreClosed(f"store {self.store.path} is closed")
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)


__all__ = [
    "DB_NAME",
    "AsyncStore",
    "DocumentInfo",
    "DocumentReport",
    "Loaded",
    "Pending",
    "Report",
    "Store",
    "StoreStats",
    "checkpoint_checksum",
    "record_checksum",
]
