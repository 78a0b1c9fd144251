"""`statemesh bench storage` and `bench crash` at tiny sizes: JSON fields and zero-loss invariants.

No timing assertions: the rates are whatever this machine gives; only their presence,
sign and the correctness invariants are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main


def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["bench", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_storage_reports_its_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = bench(
        capsys,
        "storage",
        "--updates", "3000",
        "--writes", "2000",
        "--writers", "20",
        "--rounds", "1",
        "--dir", str(tmp_path),
    )  # fmt: skip
    for field in ("durable_ops_per_s", "raw_ops_per_s", "ratio", "recovery_s",
                  "recovery_updates_per_s", "durable_ack_each_ops_per_s"):  # fmt: skip
        assert isinstance(result[field], float) and result[field] > 0, field
    assert result["ratio"] == pytest.approx(
        result["durable_ops_per_s"] / result["raw_ops_per_s"], rel=0.01
    )
    assert result["recovery_updates"] == 3000
    assert result["recovery_records"] == 3000 // 4
    # Group commit: far fewer transactions than writes.
    assert result["transactions"] < result["durable_writes"] / 4
    assert list(tmp_path.iterdir()) == []  # scratch data removed


def test_bench_crash_loses_nothing_and_catches_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = bench(
        capsys, "crash", "--trials", "3", "--corrupt-every", "1", "--seed", "5",
        "--max-run", "0.2", "--dir", str(tmp_path),
    )  # fmt: skip
    assert result["trials"] == 3
    assert result["acked_writes"] > 0
    assert result["acked_lost"] == 0, result
    assert result["silent_corruptions"] == 0, result
    assert result["crash_verify_failures"] == 0, result
    assert result["corruption_trials"] == 3
    assert result["corruptions_detected"] + result["corruptions_harmless"] == 3


def test_bench_rejects_nonsense_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="--updates"):
        main(["bench", "storage", "--updates", "0"])
    with pytest.raises(SystemExit, match="--trials"):
        main(["bench", "crash", "--trials", "0"])
