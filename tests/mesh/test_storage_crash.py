"""The store against real crashes: a writer process killed with SIGKILL, torn files, flipped bytes.

The writer is `benchmarks.crash_writer`, a real process writing through AsyncStore and
printing each durable ack; these tests kill it and check every ack after reopening.
Seeded: a failure message carries the seed that replays the kill schedule.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from benchmarks.crash import _check_acks, _writer_trial, run_trials
from crdt_types.errors import CorruptRecord, StorageError
from crdt_types.vv import decode_state_vector
from mesh.storage import DB_NAME, Store


@pytest.mark.slow
def test_sigkill_mid_write_loses_no_acknowledged_write(tmp_path: Path) -> None:
    seed = 20260
    result = run_trials(tmp_path / "node", trials=4, seed=seed, corrupt_every=0)
    assert result["acked_writes"] > 0, f"seed {seed}: the writer acknowledged nothing"
    assert result["acked_lost"] == 0, f"seed {seed}: {result}"
    assert result["crash_verify_failures"] == 0, f"seed {seed}: {result['errors']}"


def _killed_writer_dir(tmp_path: Path, seed: int) -> tuple[Path, list]:
    data = tmp_path / "node"
    rng = random.Random(seed)
    acks = _writer_trial(data, 0, rng, writers=4, docs=2, run_range=(0.3, 0.4))
    assert acks, f"seed {seed}: no acks"
    return data, acks


def test_torn_wal_tail_opens_cleanly_and_keeps_a_prefix(tmp_path: Path) -> None:
    seed = 7
    data, acks = _killed_writer_dir(tmp_path, seed)
    wal = Path(str(data / DB_NAME) + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        pytest.skip("the writer left no WAL to tear (it was checkpointed into the file)")
    with Store.open(data, readonly=True) as whole:
        full = {d: whole.last_seq(d) for d in whole.documents()}
    rng = random.Random(seed)
    size = wal.stat().st_size
    if size >= 1000 * 4096:
        # SQLite may have copied frames into the file already (autocheckpoint at 1000
        # pages); cutting those frames away is not a torn tail but lost history.
        pytest.skip(f"WAL of {size} bytes passed the autocheckpoint size")
    for cut in sorted({rng.randrange(1, size) for _ in range(4)} | {size - 1}):
        copy = tmp_path / f"cut{cut}"
        shutil.copytree(data, copy)
        with open(Path(str(copy / DB_NAME) + "-wal"), "r+b") as f:
            f.truncate(cut)
        # SQLite drops the torn frames; what remains is an earlier, consistent state.
        with Store.open(copy) as store:
            report = store.verify()
            assert report.ok, f"seed {seed} cut {cut}: {report}"
            for doc_id in store.documents():
                assert store.last_seq(doc_id) <= full[doc_id]
                store.load(doc_id)  # rebuilds without CorruptRecord


def test_torn_main_file_is_reported(tmp_path: Path) -> None:
    data, _ = _killed_writer_dir(tmp_path, 11)
    with sqlite3.connect(data / DB_NAME) as conn:
        # No free pages (VACUUM) and everything in the main file: the cut removes live data.
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = data / DB_NAME
    size = db.stat().st_size
    for cut in (4096, size // 2):
        torn = tmp_path / f"torn{cut}"
        shutil.copytree(data, torn)
        with open(torn / DB_NAME, "r+b") as f:
            f.truncate(size - cut)
        try:
            store = Store.open(torn)
        except StorageError as exc:
            assert "damaged" in str(exc), exc
            continue
        with store:
            report = store.verify()
            problems = list(report.errors) + [d.error for d in report.documents if d.error]
            assert not report.ok and problems, f"cut {cut}: a torn file verified as sound"


def test_flipped_bytes_after_a_crash_are_detected_with_document_and_record(
    tmp_path: Path,
) -> None:
    data, acks = _killed_writer_dir(tmp_path, 3)
    with sqlite3.connect(data / DB_NAME) as conn:
        # VACUUM drops stale copies in free pages, so the bytes found are the live record;
        # it writes through the WAL, so fold the WAL into the file afterwards.
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        doc_id, first, blob = conn.execute(
            "SELECT doc_id, first_seq, data FROM log WHERE first_seq > (SELECT"
            " COALESCE(MAX(upto_seq), 0) FROM checkpoints c WHERE c.doc_id = log.doc_id)"
            " ORDER BY length(data) DESC LIMIT 1"
        ).fetchone()
    raw = bytearray((data / DB_NAME).read_bytes())
    at = raw.rfind(bytes(blob))
    assert at >= 0
    raw[at + len(blob) // 2] ^= 0x04
    (data / DB_NAME).write_bytes(bytes(raw))
    with Store.open(data) as store:
        with pytest.raises(CorruptRecord) as info:
            store.load(doc_id)
        assert info.value.doc_id == doc_id
        assert info.value.seq is not None and info.value.seq <= first
        assert not store.verify().ok


@pytest.mark.slow
def test_acks_survive_repeated_kills_and_restarts(tmp_path: Path) -> None:
    """Each restart rebuilds the documents with fresh client ids and keeps writing."""
    seed = 99
    rng = random.Random(seed)
    data = tmp_path / "node"
    expected: dict[tuple[str, str], int] = {}
    max_seq: dict[str, int] = {}
    for trial in range(3):
        for doc_id, key, value, seq in _writer_trial(data, trial, rng, 4, 2, (0.05, 0.2)):
            expected[(doc_id, key)] = max(expected.get((doc_id, key), 0), value)
            max_seq[doc_id] = max(max_seq.get(doc_id, 0), seq)
        lost, problems = _check_acks(data, expected, max_seq)
        assert (lost, problems) == (0, []), f"seed {seed} trial {trial}"
    with Store.open(data) as store:
        docs = store.load_all()
        used = store.used_client_ids()
    # Every client id that wrote into any document was handed out (and recorded) by the
    # store, each restart wrote with new ones, and the fresh load's ids are new again.
    writers_seen: set[int] = set()
    for doc in docs.values():
        history = set(decode_state_vector(doc.get_state()))
        assert history <= used, f"seed {seed}: unrecorded client ids {history - used}"
        assert doc.client_id in used and doc.client_id not in history
        writers_seen |= history
    assert len(writers_seen) >= 2, f"seed {seed}: restarts did not write with new ids"
