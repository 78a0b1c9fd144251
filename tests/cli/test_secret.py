"""`statemesh secret` against real peer processes: values in by stdin or file, out exactly,
the token required for everything, and the value nowhere in clear on the peers' side."""

from __future__ import annotations

import json
import os

import pytest

from gossip.keyring import write_key_file
from tests.cli.ops_peers import cli, cli_process, wait_for

pytestmark = pytest.mark.timeout(120)

VALUE = b"sk-live-6f1e0c-never-in-clear"


def one_line(out) -> str:
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_set_from_stdin_is_read_back_exactly_on_the_other_peer(pair):
    root, key, a, b = pair
    # A real process: the value arrives on its stdin, one trailing newline dropped.
    out = cli_process(
        "secret", "set", "--http", a.http, "--key-file", key, "api.token", input=VALUE + b"\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"stored secret api.token (%d bytes" % len(VALUE))
    assert VALUE not in out.stdout + out.stderr

    def on_b():
        got = cli("secret", "get", "--http", b.http, "--key-file", key, "api.token")
        return got.returncode == 0 and got.stdout

    assert wait_for(on_b, what="the secret readable on b") == VALUE  # bytes, no newline added
    got = cli("secret", "get", "--http", b.http, "--key-file", key, "api.token", "--json")
    assert json.loads(got.stdout) == {"name": "api.token", "value": VALUE.decode()}
    listed = cli("secret", "list", "--http", b.http, "--key-file", key)
    assert b"api.token\n" in listed.stdout
    as_json = json.loads(
        cli("secret", "list", "--http", a.http, "--key-file", key, "--json").stdout
    )
    assert set(as_json) >= {"api.token"} and len(as_json["api.token"]) == 8  # a key id


def test_from_file_keeps_the_bytes_exactly_binary_included(pair, tmp_path):
    _, key, a, _ = pair
    data = bytes(range(256)) + b"\n"
    path = tmp_path / "cert.bin"
    path.write_bytes(data)
    out = cli("secret", "set", "--http", a.http, "--key-file", key, "cert", "--from-file", path)
    assert out.returncode == 0, out.stderr
    got = cli("secret", "get", "--http", a.http, "--key-file", key, "cert")
    assert got.stdout == data
    got = cli("secret", "get", "--http", a.http, "--key-file", key, "cert", "--json")
    assert "value_base64" in json.loads(got.stdout)


@pytest.mark.parametrize("action", [["set", "nokey"], ["get", "api.token"], ["list"]])
def test_every_action_needs_the_token_and_refusals_change_nothing(pair, tmp_path, action):
    _, key, a, _ = pair
    other = tmp_path / "other.key"
    write_key_file(other, os.urandom(32))
    before = cli("secret", "list", "--http", a.http, "--key-file", key).stdout
    for extra in ([], ["--key-file", str(other)]):
        out = cli("secret", *action, "--http", a.http, *extra, input=b"value\n")
        assert out.returncode == 1 and out.stdout == b"", out
        assert "admin token required" in one_line(out) and "HTTP 401" in one_line(out)
    assert cli("secret", "list", "--http", a.http, "--key-file", key).stdout == before


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["set", "x", "--from-file", "/nonexistent/value"], b"", 2, "No such file"),
        (["set", "x"], b"", 2, "empty"),
        (["set", "x"], b"\n", 2, "empty"),
        (["set", "x"], b"v" * (70 * 1024), 2, "larger than"),
        (["set", "n" * 200], b"v", 1, "secret name"),
        (["get", "never.set"], b"", 1, "no secret"),
    ],
)
def test_bad_input_gets_one_clear_line(pair, args, stdin, code, message):
    _, key, a, _ = pair
    out = cli("secret", *args, "--http", a.http, "--key-file", key, input=stdin)
    assert out.returncode == code and message in one_line(out), out


def test_the_value_is_never_taken_from_argv():
    out = cli("secret", "set", "--http", "127.0.0.1:1", "name", "the-value")
    assert out.returncode == 2 and b"unrecognized arguments" in out.stderr


def test_an_unreachable_peer_exits_2():
    out = cli("secret", "list", "--http", "127.0.0.1:1")
    assert out.returncode == 2 and "cannot reach statemesh peer" in one_line(out)


def test_peers_never_hold_or_log_the_value_in_clear(pair):
    root, key, a, b = pair
    out = cli("secret", "set", "--http", a.http, "--key-file", key, "leak.check", input=VALUE)
    assert out.returncode == 0
    wait_for(
        lambda: (
            cli("secret", "get", "--http", b.http, "--key-file", key, "leak.check").stdout == VALUE
        ),
        what="leak.check on b",
    )
    seen = []
    for peer in (a, b):
        for path in ("/status", "/metrics", "/config", "/documents/cluster"):
            seen.append(cli_get(peer, path))
    for name in ("a", "b"):
        for f in (root / name).iterdir():
            seen.append(f.read_bytes())
    assert all(VALUE not in blob for blob in seen)
    # The peers' JSON logs, read after they stop (module teardown would do it later).
    logs = a.stop() + b.stop()
    assert VALUE not in logs


def cli_get(peer, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://{peer.http}{path}", timeout=5) as r:
        return r.read()
