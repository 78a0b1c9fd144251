"""`statemesh bench convergence` at tiny sizes: JSON fields, the plot, determinism, bad flags.

No timing assertions: the times are virtual (simulated LAN latency), and the checks are
about what they mean (converged, ordered, counted against the baseline of the same run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cli.main import main

TINY = ["--peers", "5", "--writes", "30", "--sessions", "3", "--history", "5"]


def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["bench", "convergence", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_convergence_reports_time_rounds_and_bytes_against_the_baseline(capsys) -> None:
    result = bench(capsys, *TINY, "--seed", "2")
    assert result["peers"] == 5
    assert result["converged"] is True, result
    assert isinstance(result["converge_ms"], float) and result["converge_ms"] > 0
    assert isinstance(result["rounds"], int) and result["rounds"] >= 1
    assert result["rounds"] == math.ceil(result["converge_ms"] / result["gossip_interval_ms"])
    for field in ("bytes_total", "baseline_bytes_total"):
        assert isinstance(result[field], int) and result[field] > 0, field
    assert isinstance(result["baseline_converge_ms"], float) and result["baseline_converge_ms"] > 0
    assert result["bytes_ratio_vs_baseline"] == pytest.approx(
        result["bytes_total"] / result["baseline_bytes_total"], rel=0.01
    )
    # The baseline sends the whole document every time: more bytes than one update.
    assert result["mean_full_state_bytes"] > result["mean_update_bytes"]
    assert result["virtual_time"] is True


def test_convergence_same_seed_same_figures(capsys) -> None:
    assert bench(capsys, *TINY, "--seed", "4") == bench(capsys, *TINY, "--seed", "4")


def test_more_rumour_retransmissions_cost_almost_nothing_once_peers_ack(capsys) -> None:
    default = bench(capsys, *TINY)
    lean = bench(capsys, *TINY, "--retransmit-mult", "1")
    assert default["retransmit_mult"] == 3 and lean["retransmit_mult"] == 1
    assert lean["converged"] is True and default["converged"] is True
    # Retransmissions go only to peers that have not acked: on a lossless LAN the extra
    # rounds find nobody to send to (blind retransmission cost ~1.4x the bytes here).
    assert default["bytes_total"] <= 1.05 * lean["bytes_total"]
    assert lean["baseline_bytes_total"] == default["baseline_bytes_total"]


def test_convergence_plot_is_a_png(tmp_path: Path, capsys) -> None:
    out = tmp_path / "conv.png"
    bench(capsys, *TINY, "--plot", str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_convergence_without_a_plot_writes_none(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bench(capsys, *TINY)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--peers", "1"], "--peers must be at least 2"),
        (["--writes", "0"], "--writes must be at least 1"),
        (["--sessions", "0"], "--sessions must be at least 1"),
        (["--history", "-1"], "--history must be at least 0"),
        (["--max-rounds", "0"], "--max-rounds must be at least 1"),
        (["--fanout", "0"], "--fanout must be at least 1"),
        (["--retransmit-mult", "0"], "--retransmit-mult must be at least 1"),
        (["--plot", "conv.svg"], "must end in .png"),
        (["--plot", "/nonexistent-dir/c.png"], "does not exist"),
    ],
)
def test_convergence_bad_flags_exit_2_with_one_line(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "convergence", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
