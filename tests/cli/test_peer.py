"""`statemesh peer` as a real process on loopback: flags, the ready line, signals, restart.

Peers run with `--no-mdns` or `--interface 127.0.0.1` (never the machine's real
interfaces) and port 0. Their /status is read over loopback HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from gossip.keyring import write_key_file
from tests.cli.ops_peers import STATEMESH, read_line

pytestmark = pytest.mark.timeout(120)


def run_peer(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*STATEMESH, "peer", *args], capture_output=True, text=True, timeout=timeout
    )


class Peer:
    """A running `statemesh peer`, killed by pid when the test ends."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*STATEMESH, "peer", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ready = json.loads(self.line(30))

    def line(self, timeout: float) -> str:
        line = read_line(self.proc, timeout)
        if line is None:
            raise AssertionError(f"no line from peer; stderr: {self.stop_hard()}")
        return line

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://{self.ready['http']}/status", timeout=5) as r:
            return json.loads(r.read())

    def states(self) -> dict[str, str]:
        return {m["node"]: m["state"] for m in self.status()["members"]}

    def stop_hard(self) -> str:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return self.proc.stderr.read()


@pytest.fixture
def peers():
    made: list[Peer] = []

    def start(*args: str) -> Peer:
        peer = Peer(*args)
        made.append(peer)
        return peer

    yield start
    for peer in made:
        peer.stop_hard()


def wait_for(check, timeout: float = 15.0, show=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out; last seen: {show() if show else value!r}")


def loopback(tmp_path, name: str, *extra: str) -> list[str]:
    return [
        "--node", name, "--data", str(tmp_path / name), "--listen", "127.0.0.1:0",
        "--http", "127.0.0.1:0", "--no-mdns", "--insecure", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--node", "a", "--data", "{tmp}/a"], "no cluster key"),
        (["--node", "a", "--insecure"], "--data"),
        (["--data", "{tmp}/a", "--insecure"], "--node"),
        (["--node", "a", "--data", "{tmp}/a", "--insecure", "--key-file", "k"], "not allowed"),
        (["--node", "a", "--data", "{tmp}/a", "--key-file", "{tmp}/missing"], "does not exist"),
        (["--node", "a", "--data", "{tmp}/a", "--insecure", "--listen", "x:1"], "numeric"),
        (["--node", "a", "--data", "{tmp}/a", "--insecure", "--join", "nope"], "host:port"),
        (["--node", "a", "--data", "{tmp}/a", "--insecure", "--profile", "fast"], "profile"),
        (["--node", "a", "--data", "{tmp}/a", "--insecure", "--interface", "eth0"], "IPv4"),
        (["--node", "a", "--data", "{tmp}/file", "--insecure", "--no-mdns"], "not a directory"),
        (["--node", "a", "--data", "/proc/statemesh", "--insecure", "--no-mdns"], "data dir"),
    ],
)
def test_bad_flags_and_unusable_data_dirs_exit_2_with_one_line(tmp_path, capsys, args, message):
    # In-process for speed (the command's own entry point); the real process is below.
    from cli.main import main

    (tmp_path / "file").write_text("not a directory")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--listen" not in args:
        args += ["--listen", "127.0.0.1:0"]
    try:
        code = main(["peer", *args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    assert code == 2, out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("statemesh peer: error:"), out.err
    assert message in lines[0], lines[0]
    assert out.out == ""
    assert not (tmp_path / "a" / "statemesh.sqlite3").exists()


def test_missing_key_exits_2_from_the_real_process(tmp_path):
    out = run_peer("--node", "a", "--data", str(tmp_path / "a"), "--no-mdns")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "statemesh keygen" in out.stderr
    assert not (tmp_path / "a").exists()


def test_ready_line_then_sigterm_leaves_gracefully_and_exits_0(tmp_path, peers):
    # The `local` profile's patient failure detector: this test is about leave versus
    # dead, and a loaded CI machine must not turn a slow answer into a false death.
    a = peers(*loopback(tmp_path, "a", "--profile", "local"))
    assert a.ready["event"] == "ready" and a.ready["node"] == "a"
    assert a.ready["address"].startswith("127.0.0.1:") and isinstance(a.ready["documents"], int)
    b = peers(*loopback(tmp_path, "b", "--join", a.ready["address"], "--profile", "local"))
    wait_for(lambda: a.states() == {"a": "alive", "b": "alive"})
    t0 = time.monotonic()
    os.kill(b.proc.pid, signal.SIGTERM)
    assert b.proc.wait(timeout=10) == 0
    assert json.loads(b.line(5)) == {"event": "stopped", "node": "b"}
    assert time.monotonic() - t0 < 10
    # A graceful leave is "left", never "dead" (no failover for a planned exit).
    wait_for(lambda: a.states().get("b") == "left", show=a.states)


def test_sigint_also_leaves_gracefully(tmp_path, peers):
    a = peers(*loopback(tmp_path, "a"))
    os.kill(a.proc.pid, signal.SIGINT)
    assert a.proc.wait(timeout=10) == 0


def test_sigkill_then_restart_from_the_data_dir_rejoins_with_state(tmp_path, peers):
    key = tmp_path / "cluster.key"
    write_key_file(key, os.urandom(32))
    keyed = ["--key-file", str(key)]

    def args(name, *extra):
        return [a for a in loopback(tmp_path, name, *keyed, *extra) if a != "--insecure"]

    a = peers(*args("a"))
    # A writer that embeds the API as a third node puts a session into the mesh.
    writer = (
        "import sys, trio\n"
        "from mesh import MeshConfig, open_mesh\n"
        "async def main():\n"
        "    cfg = MeshConfig(node='w', data_dir=sys.argv[1], seeds=[sys.argv[2]], key=sys.argv[3])\n"
        "    async with open_mesh(cfg) as m:\n"
        "        s = await m.session('kept')\n"
        "        s.state.append_message('user', 'survives a SIGKILL')\n"
        "        print(await s.commit(replicas=2, timeout=10), s.fingerprint())\n"
        "trio.run(main)\n"
    )
    b = peers(*args("b", "--join", a.ready["address"]))
    wait_for(lambda: a.states().get("b") == "alive")
    out = subprocess.run(
        [sys.executable, "-c", writer, str(tmp_path / "w"), b.ready["address"], str(key)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    fingerprint = out.stdout.split()[-1]
    assert "['a', 'b']" in out.stdout
    b.stop_hard()
    wait_for(lambda: a.states().get("b") == "dead")
    b2 = peers(*args("b", "--join", a.ready["address"]))
    assert b2.ready["documents"] >= 1  # loaded from the data dir before serving
    wait_for(lambda: a.states().get("b") == "alive" and b2.states().get("a") == "alive")
    with urllib.request.urlopen(f"http://{b2.ready['http']}/documents", timeout=5) as r:
        assert json.loads(r.read())["session/kept"] == fingerprint


def _readyz(peer: Peer) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://{peer.ready['http']}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_peer_on_a_file_that_is_not_a_database_moves_it_aside_and_starts(tmp_path, peers):
    data = tmp_path / "a"
    data.mkdir()
    junk = b"this is not a database" + bytes(4096)
    (data / "statemesh.sqlite3").write_bytes(junk)
    a = peers(*loopback(tmp_path, "a"))  # the default policy: refill
    (moved,) = list(data.glob("unreadable-*"))
    assert (moved / "statemesh.sqlite3").read_bytes() == junk
    assert a.ready["documents"] == 0
    assert a.status()["store_recovered_from"] == str(moved)
    code, body = _readyz(a)
    assert code == 503, body
    assert f"store was unreadable: moved to {moved}; refilling from peers" in body["reasons"]
    stderr = a.stop_hard()
    lines = [line for line in stderr.splitlines() if "unreadable" in line]
    assert len(lines) == 1 and str(moved) in lines[0], stderr
    assert "refills from its peers" in lines[0] and "Traceback" not in stderr


def test_a_bad_unreadable_store_policy_exits_2_with_one_line(tmp_path):
    out = run_peer(*loopback(tmp_path, "a", "--on-unreadable-store", "delete"))
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("statemesh peer: error:"), out.stderr
    assert "--on-unreadable-store" in lines[0] and "delete" in lines[0], out.stderr
    assert "refill" in out.stderr and not (tmp_path / "a").exists()
