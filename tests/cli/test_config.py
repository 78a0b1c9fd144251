"""`statemesh config` against real peer processes: exit codes, output, JSON, convergence.

Two keyed peers on loopback (module fixture); one more test runs peers on network
namespace hosts and sets a value on one host that is read on another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from cli.config import parse_value
from gossip.keyring import write_key_file
from tests.cli.ops_peers import STATEMESH, cli, cli_process, wait_for

pytestmark = pytest.mark.timeout(120)


def one_line(out) -> str:
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("text", "string", "value"),
    [
        ("true", False, True),
        ("0.7", False, 0.7),
        ("3", False, 3),
        ('"3"', False, "3"),
        ("null", False, None),
        ("v3", False, "v3"),
        ("https://tools.example/search", False, "https://tools.example/search"),
        ("3", True, "3"),
        ("true", True, "true"),
    ],
)
def test_value_is_json_when_it_parses_else_a_string(text, string, value):
    assert parse_value(text, string=string) == value


def test_set_on_one_peer_is_read_on_the_other(pair):
    _, key, a, b = pair
    # The real command once (console entry point, a process of its own), then in-process.
    out = cli_process("config", "set", "--http", a.http, "--key-file", key, "flags.beta", "true")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == "flags.beta = true (version 1)\n"
    out = cli(
        "config", "set", "--http", a.http, "--key-file", key, "prompt.version", "v3", "--json"
    )
    assert out.returncode == 0
    assert json.loads(out.stdout) == {
        "key": "prompt.version",
        "value": "v3",
        "version": 1,
        "by": "a",
    }

    def on_b():
        got = cli("config", "get", "--http", b.http, "flags.beta")
        return got.returncode == 0 and got.stdout == b"true\n"

    wait_for(on_b, what="flags.beta on b")
    out = cli("config", "get", "--http", b.http, "prompt.version")
    assert out.stdout == b"v3\n"  # strings print as they are
    out = cli("config", "get", "--http", b.http, "prompt.version", "--json")
    assert json.loads(out.stdout)["by"] == "a"
    out = cli("config", "list", "--http", b.http, "--json")
    listed = json.loads(out.stdout)
    assert listed["flags.beta"] == {"value": True, "version": 1, "by": "a"}
    out = cli("config", "list", "--http", b.http)
    assert b"flags.beta true\n" in out.stdout and b'prompt.version "v3"\n' in out.stdout
    assert cli("config", "get", "--http", b.http).stdout == out.stdout  # get without KEY


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["flags.gamma", "true"], "admin token required"),  # no --key-file
        (["flags.gamma", "3", "--key-file", "{key}"], "a flag must be a bool"),
        (["--string", "slo.p99", "3", "--key-file", "{key}"], "must be a number"),
        (["tools.search", "not a url", "--key-file", "{key}"], "not a URL"),
        (["colour.red", "1", "--key-file", "{key}"], "unknown setting"),
        (["flags.gamma", "true", "--key-file", "{other}"], "admin token required"),
    ],
)
def test_refused_sets_exit_1_with_the_peers_message_and_change_nothing(
    pair, tmp_path, args, message
):
    _, key, a, _ = pair
    other = tmp_path / "other.key"
    write_key_file(other, os.urandom(32))
    args = [x.replace("{key}", str(key)).replace("{other}", str(other)) for x in args]
    before = cli("config", "list", "--http", a.http, "--json").stdout
    out = cli("config", "set", "--http", a.http, *args)
    assert out.returncode == 1 and out.stdout == b""
    line = one_line(out)
    assert line.startswith("statemesh config: error:") and message in line, line
    assert "HTTP 4" in line
    assert cli("config", "list", "--http", a.http, "--json").stdout == before


def test_unknown_key_exits_1(pair):
    _, _, a, _ = pair
    out = cli_process("config", "get", "--http", a.http, "flags.never")
    assert out.returncode == 1 and "not set" in one_line(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["get", "--http", "127.0.0.1:1", "flags.x"], "cannot reach statemesh peer"),
        (["list", "--http", "nonsense"], "is not HOST:PORT"),
        (
            ["set", "--http", "{a}", "--key-file", "/nonexistent/key", "flags.x", "true"],
            "does not exist",
        ),
    ],
)
def test_unreachable_peers_and_bad_flags_exit_2_with_one_line(pair, args, message):
    _, _, a, _ = pair
    out = cli("config", *[x.replace("{a}", a.http) for x in args])
    assert out.returncode == 2 and message in one_line(out)


def test_usage_errors_exit_2():
    assert cli("config").returncode == 2
    assert cli("config", "set", "--http", "127.0.0.1:1", "flags.x").returncode == 2  # no VALUE


@pytest.mark.slow
@pytest.mark.netns
def test_config_set_on_one_namespace_host_is_read_on_another(host_network_factory, tmp_path):
    net = host_network_factory(2)
    h0, h1 = net.hosts
    key = tmp_path / "cluster.key"
    write_key_file(key, os.urandom(32))
    for host, join in ((h0, []), (h1, ["--join", f"{h0.address}:7946"])):
        host.popen(
            [
                *STATEMESH, "peer", "--node", host.name, "--data", str(tmp_path / host.name),
                "--listen", f"{host.address}:7946", "--http", f"{host.address}:8080",
                "--key-file", str(key), "--interface", host.address, *join,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def in_host(host, *args):
        return host.run([sys.executable, "-m", "cli.main", *args], check=False, timeout=30)

    def ready(host):
        return in_host(host, "status", "--http", f"{host.address}:8080", "--json").returncode == 0

    wait_for(lambda: ready(h0) and ready(h1), timeout=30, what="both namespace peers up")
    set_ = ["config", "set", "--http", f"{h0.address}:8080", "--key-file", str(key)]
    out = in_host(h0, *set_, "model.temperature", "0.25")
    assert out.returncode == 0, out.stderr

    def on_h1():
        got = in_host(h1, "config", "get", "--http", f"{h1.address}:8080", "model.temperature")
        return got.returncode == 0 and got.stdout == "0.25\n"

    wait_for(on_h1, timeout=30, what="the value on the other host")
    refused = in_host(h0, *set_, "model.temperature", "[1, 2]")
    assert refused.returncode == 1 and "JSON scalar" in refused.stderr
    got = in_host(
        h1, "config", "get", "--http", f"{h1.address}:8080", "model.temperature", "--json"
    )
    assert json.loads(got.stdout)["version"] == 1 and json.loads(got.stdout)["by"] == h0.name


# --- the peer's own settings: `statemesh peer --config FILE` --------------------------------


def test_peer_settings_file_env_and_flags_in_that_order_with_json_logs(tmp_path):
    (tmp_path / "peer.toml").write_text(
        'node = "from-file"\n'
        'data = "d"\n'  # relative to the file's directory
        'listen = "127.0.0.1:0"\n'
        'http = "0"\n'  # a bare port: loopback
        'cluster = "file-cluster"\n'
        "insecure = true\n"
        "no_mdns = true\n"
        'log_format = "human"\n'
    )
    env = {**os.environ, "STATEMESH_CLUSTER": "env-cluster", "STATEMESH_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [*STATEMESH, "peer", "--config", str(tmp_path / "peer.toml"), "--node", "from-flag"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["node"] == "from-flag"  # flag beats file
        assert ready["cluster"] == "env-cluster"  # environment beats file
        assert ready["http"].startswith("127.0.0.1:")  # the HTTP endpoints bind to loopback
        assert (tmp_path / "d" / "statemesh.sqlite3").exists()
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    serving = [r for r in logs if r["msg"] == "serving"]
    assert serving and serving[0]["level"] == "info" and serving[0]["node"] == "from-flag"


def test_peer_settings_errors_name_their_source_and_exit_2(tmp_path):
    (tmp_path / "bad.toml").write_text('node = "a"\ndata = "d"\ninsecure = true\nlisen = "x"\n')
    out = cli_process("peer", "--config", tmp_path / "bad.toml")
    assert out.returncode == 2 and b"did you mean 'listen'" in out.stderr
    assert out.stderr.count(b"\n") == 1
