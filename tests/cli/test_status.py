"""`statemesh status` against real peer processes: JSON fields, the human view, `--watch`
bounded by `--count` and stopped by Ctrl-C, exit codes, and a takeover showing up."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.cli.ops_peers import STATEMESH, cli, wait_for

pytestmark = pytest.mark.timeout(120)


def test_json_has_members_readiness_lag_owners_and_takeovers(pair):
    _, _, a, b = pair
    out = cli("status", "--http", b.http, "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["node"] == "b"
    assert {m["node"]: m["state"] for m in status["members"]} == {"a": "alive", "b": "alive"}
    health = status["health"]
    assert health["ready"] is True and health["live"] is True and health["reasons"] == []
    assert isinstance(health["loop_lag_seconds"], float) and health["ready_lag_seconds"] == 2.0
    assert status["lag"] == {"a": 0.0}
    assert isinstance(status["sessions_owned"], dict) and status["last_takeovers"] == []


def test_the_human_view_lists_members_and_readiness(pair):
    _, _, a, _ = pair
    out = cli("status", "--http", a.http)
    assert out.returncode == 0
    text = out.stdout.decode()
    assert "node a" in text and "ready yes" in text and "live yes" in text
    assert "a (this peer)" in text and "alive" in text and a.address in text


def test_the_human_view_shows_damaged_documents_and_json_has_started_not_ready(pair):
    from rich.console import Console

    from cli.status import render

    _, _, a, _ = pair
    status = json.loads(cli("status", "--http", a.http, "--json").stdout)
    assert status["started"] is True and "ready" not in status
    assert status["health"]["damaged_documents"] == []
    # A damaged peer's answer (as /status serves it) is shown with the record and cause.
    status["health"]["ready"] = False
    status["health"]["damaged_documents"] = [
        {"document": "session/s", "record": 4, "reason": "record fails its checksum"}
    ]
    console = Console(width=200, record=True)
    console.print(render(status))
    text = console.export_text()
    assert "ready NO" in text
    assert "damaged document session/s from record 4: record fails its checksum" in text


def test_watch_refreshes_count_times_then_exits_0(pair):
    _, _, a, _ = pair
    out = cli("status", "--http", a.http, "--watch", "--json", "--count", "3", "--interval", "0.05")
    assert out.returncode == 0
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["node"] == "a" for line in lines)
    out = cli("status", "--http", a.http, "--watch", "--count", "2", "--interval", "0.05")
    assert out.returncode == 0 and b"members" in out.stdout


def test_ctrl_c_ends_a_watch_cleanly(pair):
    _, _, a, _ = pair
    proc = subprocess.Popen(
        [*STATEMESH, "status", "--http", a.http, "--watch", "--json", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Ctrl-C once the watch runs (its first line is out), not while Python imports.
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and json.loads(proc.stdout.readline())["node"] == "a"
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and b"Traceback" not in err, err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_ctrl_c_in_the_live_view_exits_0(pair, monkeypatch):
    _, _, a, _ = pair
    from cli import status as status_command

    calls = []

    class Clock:  # the command's clock; the user presses Ctrl-C during the second wait
        strftime, gmtime = time.strftime, time.gmtime

        @staticmethod
        def sleep(seconds):
            calls.append(seconds)
            if len(calls) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(status_command, "time", Clock)
    out = cli("status", "--http", a.http, "--watch", "--interval", "0.25")
    assert out.returncode == 0 and calls == [0.25, 0.25] and b"members" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http", "127.0.0.1:1"], "cannot reach statemesh peer"),
        (["--http", "localhost"], "is not HOST:PORT"),
        (["--http", "{a}", "--watch", "--interval", "0"], "--interval"),
        (["--http", "{a}", "--watch", "--count", "0"], "--count"),
    ],
)
def test_unreachable_and_bad_flags_exit_2_with_one_line(pair, args, message):
    _, _, a, _ = pair
    out = cli("status", *[x.replace("{a}", a.http) for x in args])
    lines = out.stderr.decode().strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out


@pytest.mark.slow
def test_a_takeover_shows_in_the_successors_status(pair, tmp_path):
    _, key, a, b = pair
    # An agent embedding the API owns a session, then dies with SIGKILL.
    agent = (
        "import sys, trio\n"
        "from mesh import MeshConfig, open_mesh\n"
        "async def main():\n"
        "    cfg = MeshConfig(node='w', data_dir=sys.argv[1], seeds=[sys.argv[2]], key=sys.argv[3])\n"
        "    async with open_mesh(cfg) as m:\n"
        "        s = await m.session('t1')\n"
        "        s.state.append_message('user', 'take me over')\n"
        "        await s.commit(replicas=2, timeout=20)\n"
        # replicas=2, not "all": "all" counts the members known so far, maybe none yet.
        # The claim lives in the ownership document, which commit(session) does not wait for.
        "        await m.commit('ownership', replicas=2, timeout=20)\n"
        "        print('owned', flush=True)\n"
        "        await trio.sleep(120)\n"
        "trio.run(main)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", agent, str(tmp_path / "w"), a.address, str(key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline() == b"owned\n", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        t0 = time.monotonic()

        def taken():
            for peer in (a, b):
                status = json.loads(cli("status", "--http", peer.http, "--json").stdout)
                if any(t["session"] == "t1" for t in status["last_takeovers"]):
                    return peer, status
            return None

        try:
            peer, status = wait_for(taken, timeout=40, what="a takeover of t1")
        except AssertionError:
            views = {
                p.name: json.loads(cli("status", "--http", p.http, "--json").stdout) for p in (a, b)
            }
            keep = ("members", "owners", "plans", "counters", "last_takeovers", "health")
            raise AssertionError(
                {n: {k: v.get(k) for k in keep} for n, v in views.items()}
            ) from None
        (entry,) = [t for t in status["last_takeovers"] if t["session"] == "t1"]
        assert entry["from"] == "w" and entry["epoch"] >= 2 and entry["covered"] is True
        assert status["sessions_owned"].get(peer.name, 0) >= 1
        assert {m["node"]: m["state"] for m in status["members"]}["w"] == "dead"
        view = cli("status", "--http", peer.http).stdout.decode()
        assert "last takeovers" in view and "t1" in view
        print(f"takeover visible in status {time.monotonic() - t0:.2f} s after SIGKILL")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
