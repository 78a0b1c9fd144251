"""The synchronous store: appends, rebuilds, client ids, checkpoints, damage, bad input, full disk."""

from __future__ import annotations

import random
import sqlite3
import subprocess
from pathlib import Path

import pycrdt
import pytest

from crdt_types.errors import (
    CorruptRecord,
    DiskFull,
    InvalidValue,
    StorageError,
    StoreClosed,
    UnreadableStore,
)
from crdt_types.fingerprint import fingerprint_hex
from crdt_types.vv import decode_state_vector
from mesh import storage
from mesh.storage import DB_NAME, Store


class Writer:
    """A pycrdt document whose updates are captured, as a node's session writes them."""

    def __init__(self, client_id: int | None = None) -> None:
        self.doc = pycrdt.Doc(client_id=client_id)
        self.memory = self.doc.get("memory", type=pycrdt.Map)
        self.updates: list[bytes] = []
        self.doc.observe(lambda event: self.updates.append(event.update))

    def set(self, key: str, value: object) -> bytes:
        with self.doc.transaction():
            self.memory[key] = value
        return self.updates[-1]


def memory_of(doc: pycrdt.Doc) -> dict:
    return doc.get("memory", type=pycrdt.Map).to_py()


def fill(store: Store, doc_id: str, n: int, writer: Writer | None = None) -> Writer:
    writer = writer or Writer()
    for i in range(n):
        store.append(doc_id, writer.set(f"k{i}", i))
    return writer


def test_append_numbers_each_document_densely_and_continues_after_reopen(tmp_path: Path) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        assert store.append("session/a", w.set("x", 1)) == 1
        assert store.append_many(
            [
                ("session/a", w.set("y", 2)),
                ("session/b", w.set("z", 3)),
                ("session/a", w.set("q", 4)),
            ]
        ) == [2, 1, 3]
        assert store.documents() == ["session/a", "session/b"]
    with Store.open(tmp_path) as store:
        assert store.last_seq("session/a") == 3
        assert store.append("session/a", w.set("r", 5)) == 4
        info = store.info("session/a")
        assert (info.records, info.updates, info.last_seq) == (3, 4, 4)


def test_load_rebuilds_content_with_a_fresh_recorded_client_id(tmp_path: Path) -> None:
    w = Writer(client_id=77)
    with Store.open(tmp_path, rng=random.Random(5)) as store:
        fill(store, "session/a", 20, w)
        first = store.recover("session/a")
        second = store.recover("session/a")
    assert memory_of(first.doc) == memory_of(w.doc)
    assert fingerprint_hex(first.doc) == fingerprint_hex(w.doc)
    assert first.client_id != second.client_id
    assert first.doc.client_id == first.client_id
    # The fresh id is neither the writer's nor anything else in the document's history.
    assert first.client_id not in set(decode_state_vector(first.doc.get_state()))
    with Store.open(tmp_path) as store:
        assert {first.client_id, second.client_id} <= store.used_client_ids()
        # Writing with the fresh id extends the document without clashing with history.
        memory = first.doc.get("memory", type=pycrdt.Map)
        updates: list[bytes] = []
        first.doc.observe(lambda e: updates.append(e.update))
        memory["after-restart"] = "yes"
        store.append("session/a", updates[-1])
        assert memory_of(store.load("session/a"))["after-restart"] == "yes"


def test_client_ids_are_never_handed_out_twice(tmp_path: Path) -> None:
    # A seeded rng that repeats itself: the store must skip the ids it already recorded.
    class Repeating(random.Random):
        def __init__(self) -> None:
            super().__init__(1)
            self.values = [5, 5, 5, 9]

        def randint(self, a: int, b: int) -> int:
            return self.values.pop(0) if self.values else super().randint(a, b)

    with Store.open(tmp_path, rng=Repeating()) as store:
        assert store.new_client_id() == 5
        assert store.new_client_id() == 9
    with Store.open(tmp_path, rng=Repeating()) as store:
        ids = {store.new_client_id() for _ in range(3)}
    assert not ids & {5, 9}


def test_load_all_returns_every_document(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        writers = {d: fill(store, d, 5) for d in ("session/a", "session/b", "cluster")}
        docs = store.load_all()
    assert set(docs) == set(writers)
    for doc_id, w in writers.items():
        assert memory_of(docs[doc_id]) == memory_of(w.doc)


def test_checkpoint_compacts_and_keeps_two_generations(tmp_path: Path) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        fill(store, "session/a", 10, w)
        assert store.checkpoint("session/a") == 10
        assert store.checkpoint("session/a") == 10  # nothing new: no second checkpoint
        for i in range(10, 15):
            store.append("session/a", w.set(f"k{i}", i))
        assert store.checkpoint("session/a") == 15
        # Two checkpoints kept; the log is pruned only below the older one.
        info = store.info("session/a")
        assert info.checkpoints == 2
        assert info.updates == 5
        store.append("session/a", w.set("tail", True))
        assert store.checkpoint("session/a") == 16
        assert store.info("session/a").checkpoints == 2
    with Store.open(tmp_path) as store:
        loaded = store.recover("session/a")
        assert loaded.checkpoint_seq == 16
        assert memory_of(loaded.doc) == memory_of(w.doc)
        assert store.append("session/a", w.set("more", 1)) == 17


def test_damaged_newest_checkpoint_falls_back_and_is_reported(tmp_path: Path) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        fill(store, "session/a", 6, w)
        store.checkpoint("session/a")
        fill(store, "session/a", 3, w)
        store.checkpoint("session/a")
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute(
            "UPDATE checkpoints SET data = data || x'00' WHERE upto_seq = (SELECT MAX(upto_seq)"
            " FROM checkpoints)"
        )
    with Store.open(tmp_path) as store:
        loaded = store.recover("session/a")
        assert memory_of(loaded.doc) == memory_of(w.doc)  # older checkpoint + log
        assert loaded.checkpoint_seq == 6
        assert any("checkpoint fails its checksum" in p for p in loaded.problems)
        report = store.verify()
        assert not report.ok
        assert "session/a" in report.documents[0].error


def _tamper(tmp_path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute(sql, params).rowcount == 1


@pytest.mark.parametrize(
    "sql",
    [
        # flipped bytes in the data of record 3 (as a direct SQL write would do)
        "UPDATE log SET data = CAST(data AS BLOB) || x'01' WHERE doc_id = 'session/a' AND first_seq = 3",
        "UPDATE log SET checksum = zeroblob(32) WHERE doc_id = 'session/a' AND first_seq = 3",
        "UPDATE log SET data = 'text, not a blob' WHERE doc_id = 'session/a' AND first_seq = 3",
        "UPDATE log SET last_seq = 4 WHERE doc_id = 'session/a' AND first_seq = 3",
        "DELETE FROM log WHERE doc_id = 'session/a' AND first_seq = 3",
    ],
    ids=["data", "checksum", "type", "seq", "missing"],
)
def test_damaged_record_is_named_and_nothing_after_it_is_applied(tmp_path: Path, sql: str) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        fill(store, "session/a", 6, w)  # six records, seq 1..6
        other = fill(store, "session/b", 3)
    _tamper(tmp_path, sql)
    with Store.open(tmp_path) as store:
        with pytest.raises(CorruptRecord) as info:
            store.load("session/a")
        assert info.value.doc_id == "session/a"
        assert info.value.seq == 3
        assert "session/a" in str(info.value) and "record 3" in str(info.value)
        # What was acknowledged before the bad record is kept; nothing after it applied.
        salvaged = store.recover("session/a", salvage=True)
        assert memory_of(salvaged.doc) == {"k0": 0.0, "k1": 1.0}
        assert salvaged.upto_seq == 2
        assert salvaged.error is not None and salvaged.error.seq == 3
        # Other documents are untouched, and the damage shows in verify().
        assert memory_of(store.load("session/b")) == memory_of(other.doc)
        report = store.verify()
        assert not report.ok
        bad = {d.id: d.error for d in report.documents}
        assert bad["session/b"] is None and "record 3" in bad["session/a"]
        # Checkpointing over damage would bake the loss in: refused.
        with pytest.raises(CorruptRecord):
            store.checkpoint("session/a")


def test_flipped_bytes_in_the_file_are_detected(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        w = Writer()
        # A distinctive value so its bytes can be found in the file.
        store.append("session/a", w.set("k", "needle-" * 40))
        store.append("session/a", w.set("j", 1))
    raw = (tmp_path / DB_NAME).read_bytes()
    wal = Path(str(tmp_path / DB_NAME) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # closed: WAL folded into the file
    at = raw.find(b"needle-needle")
    assert at > 0
    damaged = bytearray(raw)
    damaged[at + 5] ^= 0x10
    (tmp_path / DB_NAME).write_bytes(bytes(damaged))
    with Store.open(tmp_path) as store:
        with pytest.raises(CorruptRecord) as info:
            store.load("session/a")
        assert (info.value.doc_id, info.value.seq) == ("session/a", 1)


def test_unreadable_database_file_is_a_clear_storage_error(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        fill(store, "session/a", 3)
    db = tmp_path / DB_NAME
    db.write_bytes(b"this is not a database" + bytes(4096))
    with pytest.raises(StorageError) as info:
        Store.open(tmp_path)
    # Not a CorruptRecord: the file itself, which the runtime may move aside (mesh.runtime).
    assert type(info.value) is UnreadableStore and info.value.path == db
    assert str(db) in str(info.value) and "damaged" in str(info.value)


def test_truncated_database_file_is_reported_not_a_traceback(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        w = Writer()
        store.append_many([(f"session/{i % 7}", w.set(f"k{i}", "x" * 200)) for i in range(300)])
    db = tmp_path / DB_NAME
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    try:
        store = Store.open(tmp_path)
    except StorageError as exc:
        assert "damaged" in str(exc)
        return
    with store:
        report = store.verify()
        assert not report.ok
        assert report.errors or any(d.error for d in report.documents)


def test_missing_directory_and_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        Store.open(tmp_path / "nope", create=False)
    with pytest.raises(StorageError, match="missing"):
        Store.open(tmp_path, create=False)
    with pytest.raises(StorageError, match="missing"):
        Store.open(tmp_path, readonly=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError):
        Store.open(tmp_path / "file")


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    with pytest.raises(StorageError, match="format '99'"):
        Store.open(tmp_path)


BAD_APPENDS = [
    (b"", b"\x00\x00", "document id must be a str"),
    ("", None, "must not be empty"),
    ("a\x00b", None, "NUL"),
    ("x" * 300, None, "more than 256"),
    ("\ud800", None, "UTF-8"),
    ("session/a", "text", "must be bytes"),
    ("session/a", b"", "must not be empty"),
    ("session/a", b"\xff\xff\xff garbage", "does not decode"),
]


@pytest.mark.parametrize(("doc_id", "update", "message"), BAD_APPENDS)
def test_bad_input_is_refused_and_changes_nothing(
    tmp_path: Path, doc_id: object, update: object, message: str
) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        store.append("session/a", w.set("kept", 1))
        good = w.set("good", 2)
        with pytest.raises(InvalidValue, match=message):
            # A bad item spoils its whole call, and only that call.
            store.append_many(
                [("session/a", good), (doc_id, update if update is not None else good)]
            )
        assert store.documents() == ["session/a"]
        assert store.last_seq("session/a") == 1
        assert store.append("session/a", good) == 2
        assert memory_of(store.load("session/a")) == {"kept": 1.0, "good": 2.0}


def test_oversized_update_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "MAX_UPDATE_BYTES", 64)
    with Store.open(tmp_path) as store:
        with pytest.raises(InvalidValue, match="more than 64"):
            store.append("session/a", Writer().set("k", "v" * 100))
        with pytest.raises(InvalidValue, match="max_record_updates"):
            store.append_many([("session/a", Writer().set("k", 1))], max_record_updates=0)
        assert store.documents() == []


def test_closed_and_read_only_stores_refuse_use(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    fill(store, "session/a", 2)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreClosed):
        store.append("session/a", Writer().set("k", 1))
    with pytest.raises(StoreClosed):
        store.load("session/a")
    with Store.open(tmp_path, readonly=True) as ro:
        assert memory_of(ro.load("session/a")) == {"k0": 0.0, "k1": 1.0}
        with pytest.raises(InvalidValue, match="read-only"):
            ro.append("session/a", Writer().set("k", 1))
        with pytest.raises(InvalidValue, match="read-only"):
            ro.checkpoint("session/a")


def test_records_hold_batches_and_max_record_updates_splits_them(tmp_path: Path) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        seqs = store.append_many([("session/a", w.set(f"k{i}", i)) for i in range(10)])
        assert seqs == list(range(1, 11))
        assert store.info("session/a").records == 1
        store.append_many(
            [("session/a", w.set(f"j{i}", i)) for i in range(10)], max_record_updates=3
        )
        assert store.info("session/a").records == 1 + 4
        assert memory_of(store.load("session/a")) == memory_of(w.doc)


# --- full disk -------------------------------------------------------------------------------


def _fill_until_full(store: Store, doc_id: str, w: Writer) -> tuple[int, dict]:
    acked = 0
    for i in range(100_000):
        try:
            store.append(doc_id, w.set(f"k{i}", "x" * 2000))
        except DiskFull:
            # The refused write never happened for the reader: drop it from the expectation.
            w.memory.pop(f"k{i}")
            break
        acked = i + 1
    else:
        raise AssertionError("the disk never filled up")
    return acked, {k: v for k, v in memory_of(w.doc).items()}


def _check_after_full(store: Store, doc_id: str, acked: int, expected: dict) -> None:
    assert acked > 0
    assert store.last_seq(doc_id) == acked
    loaded = store.recover(doc_id)
    assert loaded.upto_seq == acked
    assert memory_of(loaded.doc) == expected
    assert store.verify(schema=False).ok


def test_full_disk_simulated_with_max_page_count(tmp_path: Path) -> None:
    """SQLite's `PRAGMA max_page_count` stands in for a full disk (SQLITE_FULL)."""
    w = Writer()
    with Store.open(tmp_path) as store:
        store._conn.execute("PRAGMA max_page_count = 40")
        acked, expected = _fill_until_full(store, "session/full", w)
        _check_after_full(store, "session/full", acked, expected)
        # Room again: appends resume with the next sequence number, nothing skipped.
        store._conn.execute("PRAGMA max_page_count = 100000")
        assert store.append("session/full", w.set("after", 1)) == acked + 1


def _mount_tmpfs(path: Path, size: str) -> str | None:
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"mount failed: {exc}"
    return None if done.returncode == 0 else f"mount -t tmpfs failed: {done.stderr.decode()}"


def test_full_disk_on_a_tiny_tmpfs(tmp_path: Path) -> None:
    """A real full file system: a 512 KiB tmpfs (needs root and mount; skipped otherwise)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    reason = _mount_tmpfs(mnt, "512k")
    if reason is not None:
        pytest.skip(reason)
    try:
        w = Writer()
        with Store.open(mnt) as store:
            acked, expected = _fill_until_full(store, "session/full", w)
            _check_after_full(store, "session/full", acked, expected)
        with Store.open(mnt, readonly=True) as store:
            assert store.last_seq("session/full") == acked
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def test_one_writer_per_data_directory(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        fill(store, "session/a", 2)
        with pytest.raises(StorageError, match="in use by another statemesh process"):
            Store.open(tmp_path)
        # Readers (inspect) are welcome while the writer runs.
        with Store.open(tmp_path, readonly=True) as reader:
            assert reader.last_seq("session/a") == 2
    with Store.open(tmp_path) as again:  # released on close
        assert again.last_seq("session/a") == 2


def test_damaged_document_id_is_reported(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        fill(store, "session/a", 3)
        fill(store, "session/b", 2)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        # What a flipped bit in a stored id can leave behind: bytes that are not UTF-8.
        conn.execute(
            "UPDATE log SET doc_id = CAST(x'73657373696f6e2fff' AS TEXT)"
            " WHERE doc_id = 'session/b' AND first_seq = 2"
        )
    with Store.open(tmp_path) as store:
        with pytest.raises(CorruptRecord, match="not valid UTF-8"):
            store.load_all()
        docs = store.load_all(salvage=True)
        assert set(docs) == {"session/a", "session/b"}
        report = store.verify()
        assert not report.ok
        errors = [d.error for d in report.documents if d.error]
        assert any("not valid UTF-8" in e for e in errors)
        assert any("session/b" in e and "record 2" in e for e in errors)  # now missing


def test_missing_tail_record_is_detected(tmp_path: Path) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        fill(store, "session/a", 4, w)
    _tamper(tmp_path, "DELETE FROM log WHERE doc_id = 'session/a' AND first_seq = 4")
    with Store.open(tmp_path) as store:
        with pytest.raises(CorruptRecord, match="log ends at seq 3 but seq 4") as info:
            store.load("session/a")
        assert info.value.seq == 4
        # The acknowledged high-water mark also keeps seq 4 from being handed out again.
        assert store.append("session/a", w.set("next", 1)) == 5


def test_replay_without_pycrdt_internals_gives_the_same_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        for start in range(0, 300, 100):
            store.append_many(
                [("session/a", w.set(f"k{i % 13}", i)) for i in range(start, start + 100)]
            )
        store.checkpoint("session/a")
        fill(store, "session/a", 70, w)
        fast = store.load("session/a")
        monkeypatch.setattr(storage, "_FAST_REPLAY", False)
        slow = store.load("session/a")
    assert memory_of(fast) == memory_of(slow) == memory_of(w.doc)
    assert fingerprint_hex(fast) == fingerprint_hex(slow) == fingerprint_hex(w.doc)


# --- salvage on open and repair from a refilled replica -------------------------------------


def test_recover_all_salvages_every_document_and_names_the_damaged_ones(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        fill(store, "session/a", 6)
        other = fill(store, "session/b", 3)
    _tamper(
        tmp_path,
        "UPDATE log SET checksum = zeroblob(32) WHERE doc_id = 'session/a' AND first_seq = 3",
    )
    with Store.open(tmp_path) as store:
        with pytest.raises(CorruptRecord):
            store.recover_all()
        loaded, unloadable = store.recover_all(salvage=True)
        assert unloadable == ()
        assert sorted(loaded) == ["session/a", "session/b"]
        a, b = loaded["session/a"], loaded["session/b"]
        assert memory_of(a.doc) == {"k0": 0.0, "k1": 1.0} and a.error is not None
        assert (a.error.doc_id, a.error.seq) == ("session/a", 3)
        assert b.error is None and memory_of(b.doc) == memory_of(other.doc)


def test_repair_supersedes_the_damaged_log_and_the_document_loads_cleanly(tmp_path: Path) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        fill(store, "session/a", 6, w)
    _tamper(
        tmp_path,
        "UPDATE log SET data = zeroblob(length(data)) WHERE doc_id = 'session/a' AND first_seq = 3",
    )
    with Store.open(tmp_path) as store:
        upto = store.last_seq("session/a")
        # A state that stops short of the damage cannot be written below it: still damaged.
        with pytest.raises(CorruptRecord):
            store.repair("session/a", 2, w.doc.get_update())
        # The whole state (what peers refill) at the last committed seq supersedes it.
        store.repair("session/a", upto, w.doc.get_update())
        assert memory_of(store.load("session/a")) == memory_of(w.doc)
        assert store.verify().ok  # the record that failed its checksum is gone
        # Appends continue above the checkpoint and load on top of it.
        store.append("session/a", w.set("after", 7))
    with Store.open(tmp_path) as store:
        assert memory_of(store.load("session/a")) == memory_of(w.doc)


@pytest.mark.parametrize(
    ("doc_id", "upto", "state", "error"),
    [
        ("", 1, None, InvalidValue),
        ("session/a", -1, None, InvalidValue),
        ("session/a", True, None, InvalidValue),
        ("session/a", "3", None, InvalidValue),
        ("session/a", 6, b"", InvalidValue),
        ("session/a", 6, b"not an update", InvalidValue),
    ],
    ids=["doc-id", "negative", "bool", "str", "empty", "garbage"],
)
def test_repair_refuses_bad_input_and_changes_nothing(
    tmp_path: Path, doc_id: str, upto: object, state: bytes | None, error: type
) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        fill(store, "session/a", 6, w)
        before = store.info("session/a")
        with pytest.raises(error):
            store.repair(doc_id, upto, w.doc.get_update() if state is None else state)  # type: ignore[arg-type]
        assert store.info("session/a") == before
        assert memory_of(store.load("session/a")) == memory_of(w.doc)


def test_a_bad_page_under_one_document_marks_only_it_and_a_repair_gets_past_it(
    tmp_path: Path,
) -> None:
    # A value big enough to spill onto SQLite overflow pages, which opening never reads.
    rng = random.Random(5)
    big = "".join(rng.choice("abcdefghij") for _ in range(40_000))
    w = Writer()
    with Store.open(tmp_path) as store:
        other = fill(store, "session/ok", 2)
        store.append("session/big", w.set("a", 1))
        store.append("session/big", w.set("big", big))
    raw = bytearray((tmp_path / DB_NAME).read_bytes())
    page = 4096
    needle = big[20_000:20_100].encode()
    assert raw.count(needle) == 1
    start = raw.find(needle) // page * page
    raw[start : start + 4] = b"\xff\xff\xff\xff"  # the overflow chain's next-page pointer
    (tmp_path / DB_NAME).write_bytes(bytes(raw))
    with Store.open(tmp_path) as store:
        loaded, _ = store.recover_all(salvage=True)
        assert loaded["session/ok"].error is None
        assert memory_of(loaded["session/ok"].doc) == memory_of(other.doc)
        error = loaded["session/big"].error
        assert error is not None and (error.doc_id, error.seq) == ("session/big", None)
        assert "malformed" in str(error) and memory_of(loaded["session/big"].doc) == {}
        # SQLite can neither read nor delete that row; a checkpoint above it is enough.
        store.repair("session/big", store.last_seq("session/big"), w.doc.get_update())
        assert memory_of(store.load("session/big")) == memory_of(w.doc)
        # The file itself is still damaged, and a deep check keeps saying so.
        assert not store.verify().ok
