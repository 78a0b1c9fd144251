"""`statemesh demo` as a user runs it: real processes on loopback, SIGKILL, takeover.

The demo is the README quick start's main job, so it runs here whole: its JSON is
checked against its invariants, every process it started must be gone and its
temporary directory removed afterwards, also when it is interrupted with SIGINT. Bad
flags exit 2 with one line. Figures (milliseconds) are checked for consistency only,
never against a wall-clock limit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DEMO = [sys.executable, "-m", "cli.main", "demo"]


def gone(pid: int) -> bool:
    """True if `pid` no longer runs (absent, or a zombie awaiting its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def started(text: str) -> tuple[Path, list[int]]:
    """The data directory and peer pids the demo announced in its timeline."""
    data = re.search(r"data in (\S+)", text)
    assert data, text
    return Path(data.group(1)), sorted({int(p) for p in re.findall(r"pid (\d+)", text)})


def test_demo_json_reports_a_takeover_with_nothing_acknowledged_lost(tmp_path):
    plot = tmp_path / "timeline.png"
    out = subprocess.run(
        [*DEMO, "--json", "--plot", str(plot)], capture_output=True, text=True, timeout=150
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r["peers"] == 3 and r["failed_node"] == "peer3"
    assert r["successor"] in ("peer1", "peer2")
    assert r["takeovers"] == 1, r  # exactly one successor's handler ran
    assert r["acked_writes"] == 5 and r["acked_lost"] == 0
    assert r["converged"] is True and r["fingerprint_match"] is True
    assert r["pending_resumed"] == 1
    # Detection precedes the takeover; both are after the kill.
    assert 0 < r["suspect_ms"] <= r["detect_ms"] <= r["rto_ms"]
    assert any("SIGKILL" in e["what"] for e in r["timeline"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    root, pids = started(out.stderr)
    assert len(pids) == 3
    assert not root.exists()
    assert all(gone(p) for p in pids)


def test_demo_keeps_data_with_data_flag_and_prints_a_timeline(tmp_path):
    data = tmp_path / "kept"
    out = subprocess.run(
        [*DEMO, "--peers", "2", "--data", str(data)], capture_output=True, text=True, timeout=150
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Two peers: the survivor holds the lowest id, so the tie rule lets it take over.
    assert "peer1   takeover handler called; pending tool calls: call-1-k" in out.stdout
    assert "lost 0" in out.stdout
    assert (data / "peer1").is_dir() and (data / "cluster.key").exists()
    _, pids = started(out.stdout)
    assert all(gone(p) for p in pids)


def test_sigint_stops_every_peer_and_removes_the_temp_dir(tmp_path):
    proc = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and seen.count(" up: ") < 3:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert seen.count(" up: ") == 3, seen + proc.stderr.read()
        root, pids = started(seen)
        assert root.exists()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not root.exists()
    assert all(gone(p) for p in pids), pids


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--peers", "1"], "--peers must be"),
        (["--peers", "10"], "--peers must be"),
        (["--peers", "x"], "invalid int"),
        (["--plot", "timeline.svg"], ".png"),
        (["--data", "FILE"], "not a directory"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path, flags, message):
    (tmp_path / "FILE").write_text("x")
    flags = [str(tmp_path / "FILE") if f == "FILE" else f for f in flags]
    out = subprocess.run([*DEMO, *flags], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert message in out.stderr and out.stdout == ""
