"""`statemesh chaos` end to end: a short campaign on namespace hosts, cleanup, bad input.

The campaign test runs the real command (agents on three namespace hosts, every fault
kind, the checker) and asserts the JSON invariants; the cleanup test interrupts one with
SIGTERM and checks nothing of it is left (namespaces, processes, the tmpfs). Both skip
with the reason where namespace hosts cannot be built. Bad flags and schedules need no
root: each gets exit 2 and one line on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cli.main import main
from mesh.chaos.schedule import FAULT_KINDS
from mesh.hosts import available, list_namespaces

SEED = 20261130


def _needs_netns() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(reason)


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "chaos", *args]


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.timeout(300)
def test_a_one_minute_campaign_keeps_every_promise(tmp_path):
    _needs_netns()
    keep = tmp_path / "keep"
    plot = tmp_path / "campaign.png"
    args = f"--hosts 3 --minutes 1 --seed {SEED} --json --keep {keep} --plot {plot}".split()
    proc = subprocess.run(
        _command(*args),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr
    result = json.loads(proc.stdout)
    why = f"seed {SEED}: {json.dumps(result)}\n{proc.stderr[-3000:]}"
    assert result["seed"] == SEED and result["minutes"] == 1.0, why
    assert set(result["faults"]) == set(FAULT_KINDS), why
    assert all(result["faults"][k] >= 1 for k in FAULT_KINDS), why
    assert result["acked_writes"] > 0, why
    assert set(result["acked_by_level"]) == {"local", "replicas=1", "replicas=2", "all"}, why
    assert result["acked_lost"] == 0, why
    assert result["converged"] is True, why
    assert result["split_brain_after_heal"] == 0, why
    assert result["false_takeovers"] == 0, why
    assert result["takeovers"] >= 1 and result["max_rto_ms"] is not None, why
    assert proc.returncode == 0, why
    assert (keep / "timeline.jsonl").stat().st_size > 0
    assert json.loads((keep / "schedule.json").read_text())["seed"] == SEED
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.timeout(120)
def test_sigterm_mid_campaign_cleans_up_everything():
    _needs_netns()
    # Another campaign on the machine (a person's, or a second test run) has mounts of its
    # own: only the ones this campaign adds must be gone.
    mounts_before = _chaos_mounts()
    proc = subprocess.Popen(
        _command("--hosts", "3", "--minutes", "5", "--seed", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "writing;" in line or not line:
                break
        assert any("writing;" in x for x in lines), lines
        tag = f"smc-{proc.pid}-"
        assert any(n.startswith(tag) for n in list_namespaces())
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert not [n for n in list_namespaces() if n.startswith(tag)]
    assert _chaos_mounts() <= mounts_before


def _chaos_mounts() -> set[str]:
    """Mount points of chaos campaigns' full-disk tmpfs data directories."""
    with open("/proc/mounts") as f:
        return {line.split()[1] for line in f if "statemesh-chaos-" in line}


def test_without_root_it_says_so_and_exits_2(monkeypatch, capsys):
    import mesh.hosts

    # The real check, run as if unprivileged (its cached answer set aside for the test).
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(mesh.hosts, "_available", False)
    assert main(["chaos", "--hosts", "3", "--minutes", "0.1"]) == 2
    out, err = capsys.readouterr()
    assert "need root" in err and err.count("\n") == 1, err
    assert out == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hosts", "2"], "--hosts must be in 3..16"),
        (["--hosts", "17"], "--hosts must be in 3..16"),
        (["--minutes", "0"], "--minutes must be in"),
        (["--minutes", "-1"], "--minutes must be in"),
        (["--minutes", "nan"], "--minutes must be in"),
        (["--max-faults", "0"], "--max-faults must be in"),
        (["--converge-timeout", "0"], "--converge-timeout must be in"),
        (["--hosts", "x"], "invalid int value"),
        (["--schedule", "/nonexistent/schedule.json"], "--schedule"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) if "invalid" in message else _nothing() as exc:
        code = main(["chaos", *args])
    if exc is not None and hasattr(exc, "value"):
        code = exc.value.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err


class _NoCampaign:
    """Stands in for `Campaign`: any attempt to build one fails the test."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("a campaign was started despite a bad --plot path")


@pytest.mark.parametrize(
    "plot, message",
    [
        ("/nonexistent-dir/c.png", "does not exist"),
        ("{tmp}/c.jpg", "must end in .png"),
        ("{tmp}/adir.png", "is a directory"),
    ],
)
def test_a_bad_plot_path_exits_2_before_anything_starts(
    tmp_path, monkeypatch, capsys, plot, message
):
    import mesh.chaos.campaign

    (tmp_path / "adir.png").mkdir()
    monkeypatch.setattr(mesh.chaos.campaign, "Campaign", _NoCampaign)
    before = set(list_namespaces())
    path = plot.format(tmp=tmp_path)
    assert main(["chaos", "--hosts", "3", "--minutes", "1", "--plot", path]) == 2
    out, err = capsys.readouterr()
    assert message in err and "--plot" in err and err.count("\n") == 1, err
    assert out == "" and set(list_namespaces()) == before
    assert not (tmp_path / "c.jpg").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not JSON"),
        ('{"faults": [{"at": 0, "kind": "meteor", "hosts": [0], "duration": 1}]}', "unknown"),
        ('{"faults": [{"at": 0, "kind": "kill", "hosts": [9], "duration": 1}]}', "no host 9"),
    ],
)
def test_bad_schedule_files_exit_2_naming_the_problem(tmp_path, capsys, text, message):
    path = tmp_path / "s.json"
    path.write_text(text)
    assert main(["chaos", "--hosts", "3", "--schedule", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err, err


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
