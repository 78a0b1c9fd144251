"""`statemesh bench wire` at tiny sizes: JSON fields, determinism, the plot, bad flags.

No timing assertions. The byte counts come from real sealed frames in virtual time, so
they are exact: the same seed must give the same figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main

TINY = ["--documents", "200", "--updates", "20", "--idle-seconds", "5", "--peers", "3"]


def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["bench", "wire", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_wire_reports_sealed_bytes_against_raw_updates(capsys) -> None:
    result = bench(capsys, *TINY, "--seed", "3")
    for field in ("bytes_per_update", "raw_update_bytes", "overhead_ratio",
                  "idle_bytes_per_peer_per_s", "single_bytes_per_update",
                  "mesh_bytes_per_update", "naive_vector_exchange_bytes_per_peer_per_s"):  # fmt: skip
        assert isinstance(result[field], float) and result[field] > 0, field
    assert result["documents"] == 200 and isinstance(result["documents"], int)
    assert result["sealed"] is True and result["profile"] == "lan"
    # A sealed frame carries the update plus a header, tag and envelope: never less.
    assert result["bytes_per_update"] > result["raw_update_bytes"]
    assert result["overhead_ratio"] == pytest.approx(
        result["bytes_per_update"] / result["raw_update_bytes"], rel=0.01
    )
    # Batching 16 messages into one update amortises the per-frame overhead.
    assert result["overhead_ratio"] < result["single_overhead_ratio"]
    # The mesh sends each update more than once (fanout to both other peers at least).
    assert result["mesh_copies_per_update"] >= 2
    # Idle: a digest root per exchange, not a vector per document.
    assert (
        result["idle_bytes_per_peer_per_s"] < result["naive_vector_exchange_bytes_per_peer_per_s"]
    )
    assert sum(result["idle_bytes_by_message"].values()) == pytest.approx(
        result["idle_bytes_per_peer_per_s"], rel=0.01
    )


def test_wire_same_seed_same_bytes(capsys) -> None:
    first = bench(capsys, *TINY, "--seed", "7")
    second = bench(capsys, *TINY, "--seed", "7")
    assert first == second, "seed 7 did not replay"


def test_wire_plot_is_a_png(tmp_path: Path, capsys) -> None:
    out = tmp_path / "wire.png"
    bench(capsys, *TINY, "--plot", str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--peers", "1"], "--peers must be at least 2"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--documents", "0"], "--documents must be at least 1"),
        (["--idle-seconds", "0.5"], "--idle-seconds must be at least 1"),
        (["--idle-seconds", "nan"], "--idle-seconds must be at least 1"),
        (["--plot", "out.jpg"], "must end in .png"),
        (["--plot", "/nonexistent-dir/out.png"], "does not exist"),
    ],
)
def test_wire_bad_flags_exit_2_with_one_line(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "wire", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert capsys.readouterr().out == ""  # nothing measured, nothing printed


def test_wire_table_output_flattens_nested_figures(capsys) -> None:
    assert main(["bench", "wire", *TINY]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert "idle_bytes_by_message" not in rows  # no dict printed as one row
    assert any(key.startswith("idle_bytes_by_message.") for key in rows)
    assert rows["documents"].strip() == "200"
