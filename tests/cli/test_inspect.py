"""`statemesh inspect`: exit codes 0/1/2, the JSON fields, messages that name document and record."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pycrdt
import pytest

from cli.main import main
from crdt_types.fingerprint import fingerprint_hex
from mesh.storage import DB_NAME, Store
from tests.mesh.test_storage import Writer


def make_store(path: Path) -> dict[str, Writer]:
    writers = {"session/a": Writer(), "session/b": Writer()}
    with Store.open(path) as store:
        for doc_id, w in writers.items():
            for i in range(5):
                store.append(doc_id, w.set(f"k{i}", i))
        store.checkpoint("session/a")
        store.append("session/a", writers["session/a"].set("tail", 1))
    return writers


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(["inspect", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_sound_store_exits_0_with_counts_and_fingerprints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writers = make_store(tmp_path)
    for flags in ((), ("--verify",)):
        code, result = run_json(capsys, str(tmp_path), *flags)
        assert code == 0
        assert result["ok"] is True
        assert result["errors"] == []
        docs = {d["id"]: d for d in result["documents"]}
        assert set(docs) == {"session/a", "session/b"}
        assert (docs["session/a"]["records"], docs["session/a"]["checkpoints"]) == (6, 1)
        assert (docs["session/b"]["records"], docs["session/b"]["checkpoints"]) == (5, 0)
        for doc_id, w in writers.items():
            assert docs[doc_id]["fingerprint"] == fingerprint_hex(w.doc)


def test_text_output_lists_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "session/a" in out and "session/b" in out and "sound" in out


def test_corrupt_record_exits_1_naming_document_and_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(tmp_path)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute(
            "UPDATE log SET data = data || x'00' WHERE doc_id = 'session/b' AND first_seq = 4"
        )
    code, result = run_json(capsys, str(tmp_path), "--verify")
    assert code == 1
    assert result["ok"] is False
    assert any("session/b" in e and "record 4" in e for e in result["errors"])
    docs = {d["id"]: d for d in result["documents"]}
    assert docs["session/a"]["ok"] is True and docs["session/b"]["ok"] is False
    assert docs["session/a"]["error"] is None and "record 4" in docs["session/b"]["error"]
    # Without --verify the damaged record is found as well (loading verifies checksums).
    assert main(["inspect", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "session/b" in err and "record 4" in err


def test_schema_error_exits_1_only_with_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        # A root that session documents do not have, holding content, breaks the schema.
        w.doc.get("stray", type=pycrdt.Array).append(1)
        store.append("session/x", w.updates[-1])
    code, result = run_json(capsys, str(tmp_path))
    assert code == 0
    code, result = run_json(capsys, str(tmp_path), "--verify")
    assert code == 1
    assert any("session/x" in e and "schema" in e for e in result["errors"])


@pytest.mark.parametrize("case", ["missing-dir", "empty-dir", "not-a-database"])
def test_unusable_data_dir_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    target = tmp_path / "data"
    if case != "missing-dir":
        target.mkdir()
    if case == "not-a-database":
        (target / DB_NAME).write_bytes(b"garbage" * 1000)
    code, result = run_json(capsys, str(target))
    assert code == 2
    assert result["ok"] is False and result["documents"] == [] and result["errors"]
    assert main(["inspect", str(target)]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (case == "missing-dir" and target.exists())  # inspect creates nothing


def test_inspect_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path)
    with Store.open(tmp_path) as store:
        ids_before = store.used_client_ids()
    assert main(["inspect", str(tmp_path), "--verify"]) == 0
    capsys.readouterr()
    with Store.open(tmp_path) as store:
        assert store.used_client_ids() == ids_before


def test_console_script_runs_inspect(tmp_path: Path) -> None:
    make_store(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "inspect", str(tmp_path), "--json"],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True


def test_truncated_database_is_reported_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = Writer()
    with Store.open(tmp_path) as store:
        store.append_many([(f"session/{i % 5}", w.set(f"k{i}", "x" * 300)) for i in range(400)])
    db = tmp_path / DB_NAME
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)
    code, result = run_json(capsys, str(tmp_path), "--verify")
    # 2 if SQLite refuses the file outright, 1 if it opens and the damage is found inside.
    assert code in (1, 2)
    assert result["ok"] is False and result["errors"]
