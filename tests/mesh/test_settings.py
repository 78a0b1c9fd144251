"""Tests for mesh.settings: file < env < flags, every refusal, and secret-safe logging."""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import re
from pathlib import Path

import pytest

from crdt_types.errors import LocalError
from gossip.keyring import Keyring, format_key
from mesh.auth import admin_token
from mesh.settings import (
    PeerSettings,
    RedactingFilter,
    configure_logging,
    redact,
    resolve_settings,
)

SEED = 77
README = Path(__file__).resolve().parents[2] / "README.md"

BASE = {"node": "n1", "data": "/tmp/n1", "insecure": True}


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _write(tmp_path: Path, table: dict | str, name: str = "peer.toml") -> Path:
    path = tmp_path / name
    if isinstance(table, str):
        path.write_text(table)
    else:
        path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in table.items()))
    return path


def _resolve(flags=None, env=None, config=None) -> PeerSettings:
    return resolve_settings(flags or {}, env or {}, config)


# --- merging ----------------------------------------------------------------------------------


def test_defaults():
    s = _resolve(flags={"node": "n1", "data": "d", "insecure": True})
    assert s == PeerSettings(node="n1", data=Path("d"), insecure=True)
    assert (s.listen, s.join, s.interface, s.mdns, s.cluster) == (None, (), (), True, "statemesh")
    assert (s.profile, s.log_format, s.log_level, s.key_file) == ("lan", "human", "info", None)


def test_precedence_file_then_env_then_flags(tmp_path):
    path = _write(
        tmp_path,
        {
            **BASE,
            "cluster": "from-file",
            "profile": "wan",
            "http": "127.0.0.1:1",
            "join": ["127.0.0.1:10"],
            "log_level": "debug",
        },
    )
    env = {
        "STATEMESH_CLUSTER": "from-env",
        "STATEMESH_PROFILE": "local",
        "STATEMESH_HTTP": "127.0.0.1:2",
    }
    flags = {"cluster": "from-flag", "profile": None, "join": [], "http": None}
    s = _resolve(flags, env, path)
    assert s.cluster == "from-flag"  # flag beats env and file
    assert s.profile == "local"  # env beats file; a None flag is not given
    assert s.http == "127.0.0.1:2"
    assert s.join == ("127.0.0.1:10",)  # an empty list flag is not given
    assert s.log_level == "debug"  # file beats the default
    assert s.node == "n1" and s.insecure is True


def test_every_setting_from_each_layer(tmp_path, monkeypatch):
    key = tmp_path / "cluster.key"
    values = {
        "node": "a",
        "listen": "127.0.0.1:7000",
        "advertise": "127.0.0.1:7000",
        "join": ["127.0.0.1:7001", "127.0.0.2:7002"],
        "interface": ["127.0.0.1"],
        "mdns": False,
        "cluster": "c",
        "http": "127.0.0.1:8080",
        "profile": "wan",
        "log_format": "json",
        "log_level": "warning",
        "seed": 5,
        "commit_timeout": 3,
        "leave_timeout": 0.5,
        "ready_lag": 1.5,
    }
    expected = PeerSettings(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()},
        data=tmp_path / "d",
        key_file=key,
    )
    from_file = _resolve(
        config=_write(tmp_path, {**values, "data": "d", "key_file": "cluster.key"})
    )
    env = {
        f"STATEMESH_{k.upper()}": ",".join(v) if isinstance(v, list) else str(v)
        for k, v in values.items()
    }
    env.update(STATEMESH_DATA=str(tmp_path / "d"), STATEMESH_KEY_FILE=str(key))
    from_env = _resolve(env=env)
    from_flags = _resolve(flags={**values, "data": str(tmp_path / "d"), "key_file": str(key)})
    assert from_file == from_env == from_flags == expected
    assert from_file.commit_timeout == 3.0 and isinstance(from_file.commit_timeout, float)


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path):
    (tmp_path / "etc").mkdir()
    path = _write(tmp_path / "etc", {"node": "n", "data": "state", "key_file": "k.key"})
    s = _resolve(config=path)
    assert s.data == tmp_path / "etc" / "state"
    assert s.key_file == tmp_path / "etc" / "k.key"
    # From env and flags a relative path stays relative (to the working directory).
    assert _resolve(
        env={"STATEMESH_DATA": "rel"}, flags={"node": "n", "insecure": True}
    ).data == Path("rel")


def test_dashed_keys_and_no_mdns_spelling(tmp_path):
    s = _resolve(
        config=_write(tmp_path, "node = 'n'\ndata = 'd'\nkey-file = '/k'\nno-mdns = true\n")
    )
    assert s.key_file == Path("/k") and s.mdns is False
    assert _resolve(flags={**BASE, "no_mdns": True}).mdns is False
    assert _resolve(flags={**BASE, "no_mdns": False}).mdns is True  # switch not given
    assert _resolve(env={"STATEMESH_NO_MDNS": "yes"}, flags=BASE).mdns is False
    # A flag pair (BooleanOptionalAction) can turn mDNS back on over the file.
    path = _write(tmp_path, {**BASE, "mdns": False}, "off.toml")
    assert _resolve(flags={"mdns": True}, config=path).mdns is True


def test_key_mode_from_a_higher_layer_replaces_the_lower_one(tmp_path):
    with_key = _write(tmp_path, {"node": "n", "data": "/d", "key_file": "/k"}, "a.toml")
    s = _resolve(flags={"insecure": True}, config=with_key)
    assert s.insecure is True and s.key_file is None
    insecure = _write(tmp_path, {"node": "n", "data": "/d", "insecure": True}, "b.toml")
    s = _resolve(env={"STATEMESH_KEY_FILE": "/k2"}, config=insecure)
    assert s.insecure is False and s.key_file == Path("/k2")


def test_statemesh_config_names_the_file(tmp_path):
    path = _write(tmp_path, {**BASE, "cluster": "via-env"})
    assert _resolve(env={"STATEMESH_CONFIG": str(path)}).cluster == "via-env"
    other = _write(tmp_path, {**BASE, "cluster": "explicit"}, "other.toml")
    assert _resolve(env={"STATEMESH_CONFIG": str(path)}, config=other).cluster == "explicit"


def test_argparse_namespace_with_none_defaults(tmp_path):
    # The shape `statemesh peer` passes: vars(args), every setting flag defaulting to None.
    p = argparse.ArgumentParser()
    p.add_argument("--node")
    p.add_argument("--data")
    p.add_argument("--join", action="append")
    p.add_argument("--no-mdns", action="store_true")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--key-file")
    p.add_argument("--cluster")
    p.add_argument("--config")
    p.add_argument("--log-format")
    path = _write(tmp_path, {"node": "n", "data": "/d", "key_file": "/k", "cluster": "file"})
    args = p.parse_args(["--config", str(path), "--join", "127.0.0.1:9", "--log-format", "json"])
    s = resolve_settings(vars(args), {}, args.config)
    assert (s.cluster, s.join, s.log_format, s.key_file) == (
        "file",
        ("127.0.0.1:9",),
        "json",
        Path("/k"),
    )
    assert s.mdns is True and s.insecure is False


def test_readme_example_parses(tmp_path):
    section = README.read_text().partition("## Peer configuration")[2]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert blocks, "README.md lost its peer configuration example"
    s = _resolve(config=_write(tmp_path, blocks[0]))
    assert s.node == "agent-host-1"
    assert s.key_file == tmp_path / "cluster.key"
    assert s.join == ("10.0.0.6:7946", "10.0.0.7:7946")
    assert s.log_format == "json" and s.insecure is False


def test_mesh_kwargs_build_a_mesh_config(tmp_path):
    from mesh.config import MeshConfig

    key = tmp_path / "k.key"
    key.write_text(format_key(random.Random(SEED).randbytes(32)))
    key.chmod(0o600)
    s = _resolve(
        flags={
            "node": "n1",
            "data": str(tmp_path / "d"),
            "key_file": str(key),
            "listen": "127.0.0.1:0",
            "join": ["127.0.0.1:7001"],
            "interface": ["127.0.0.1"],
            "cluster": "c",
            "seed": 3,
        }
    )
    config = MeshConfig(**s.mesh_kwargs())
    assert (config.node, config.cluster, config.seeds, config.interfaces) == (
        "n1",
        "c",
        ("127.0.0.1:7001",),
        ("127.0.0.1",),
    )
    assert config.keyring is not None and config.seed == 3
    off = _resolve(flags={**BASE, "interface": ["127.0.0.1"], "no_mdns": True}).mesh_kwargs()
    assert off["interfaces"] == [] and off["mdns"] is False and "listen" not in off


def test_to_dict_is_json(tmp_path):
    s = _resolve(flags={**BASE, "join": ["127.0.0.1:1"]})
    assert json.loads(json.dumps(s.to_dict()))["join"] == ["127.0.0.1:1"]


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lisen = '127.0.0.1:1'", r"unknown key 'lisen' \(did you mean 'listen'\?\)"),
        ("zzz = 1", r"unknown key 'zzz'$"),
        ("[peer]\nnode = 'x'", "unknown key 'peer'"),
        ("node = 5", "'node': expected a string, got int"),
        ("node = ''", "'node': '' must be non-empty"),
        ("mdns = 'yes'", "'mdns': expected true or false, got string"),
        ("join = '127.0.0.1:1'", "'join': expected an array of strings, got string"),
        ("join = [1]", "'join': expected an array of strings, found int"),
        ("join = ['localhost:1']", "'join': 'localhost:1' is not a numeric"),
        ("join = ['127.0.0.1:0']", "port 0 is not an address peers can reach"),
        ("listen = '127.0.0.1'", "'listen': '127.0.0.1' is not a numeric"),
        ("interface = ['::1']", "'interface': '::1' is not an IPv4 address"),
        ("seed = 1.5", "'seed': expected an integer, got float"),
        ("seed = true", "'seed': expected an integer, got bool"),
        ("commit_timeout = 'soon'", "expected a number of seconds, got string"),
        ("commit_timeout = -1", "must be positive and finite"),
        ("commit_timeout = inf", "must be positive and finite"),
        ("profile = 'fast'", "'profile': must be one of lan, local, wan; got 'fast'"),
        ("log_format = 'xml'", "must be one of human, json"),
        ("log_level = 'loud'", "must be one of debug, info"),
        ("key_file = 3", "'key_file': expected a string"),
        ("key_file = 'k'\ninsecure = true", "'insecure': given together with key_file"),
        ("mdns = true\nno_mdns = true", "given together with mdns"),
        ("key_file = 'a'\nkey-file = 'b'", "given twice"),
        ("node = 'x", "not valid TOML"),
        ("node = 'a'\nnode = 'b'", "not valid TOML"),
    ],
)
def test_bad_file_values(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(LocalError, match=message) as info:
        _resolve(flags=BASE, config=path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(LocalError, match="no such file"):
        _resolve(flags=BASE, config=tmp_path / "missing.toml")
    with pytest.raises(LocalError, match="is a directory"):
        _resolve(flags=BASE, config=tmp_path)
    (tmp_path / "bin.toml").write_bytes(b"node = '\xff'\n")
    with pytest.raises(LocalError, match="not UTF-8"):
        _resolve(flags=BASE, config=tmp_path / "bin.toml")
    (tmp_path / "big.toml").write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(LocalError, match="larger than"):
        _resolve(flags=BASE, config=tmp_path / "big.toml")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STATEMESH_LISEN": "127.0.0.1:1"}, "unknown variable STATEMESH_LISEN .*'listen'"),
        ({"STATEMESH_MDNS": "maybe"}, "STATEMESH_MDNS: expected one of 1/true"),
        ({"STATEMESH_SEED": "x"}, "STATEMESH_SEED: expected an integer"),
        ({"STATEMESH_COMMIT_TIMEOUT": "soon"}, "STATEMESH_COMMIT_TIMEOUT: expected a number"),
        ({"STATEMESH_COMMIT_TIMEOUT": "nan"}, "must be positive and finite"),
        ({"STATEMESH_JOIN": "127.0.0.1:1,nope"}, "STATEMESH_JOIN: 'nope' is not a numeric"),
        ({"STATEMESH_PROFILE": "fast"}, "STATEMESH_PROFILE: must be one of"),
    ],
)
def test_bad_environment(env, message):
    with pytest.raises(LocalError, match=message) as info:
        _resolve(flags=BASE, env=env)
    assert str(info.value).startswith("environment: ")


def test_unrelated_environment_is_ignored():
    s = _resolve(flags=BASE, env={"HOME": "/root", "STATEMESHX": "1", "PATH": "/bin"})
    assert s.node == "n1"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"listen": "127.0.0.1:99999"}, "flag: --listen: '127.0.0.1:99999' is not a numeric"),
        ({"join": "127.0.0.1:1"}, "--join: expected an array of strings"),
        ({"seed": "5"}, "--seed: expected an integer, got string"),
        ({"http": 8080}, "--http: expected a string, got int"),
        ({"key_file": "/k"}, "--insecure: given together with key_file"),
    ],
)
def test_bad_flags(flags, message):
    with pytest.raises(LocalError, match=message):
        _resolve(flags={**BASE, **flags})


def test_flags_that_are_not_settings_are_ignored():
    s = _resolve(flags={**BASE, "func": print, "command": "peer", "json": True})
    assert s.node == "n1"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"data": "/d", "insecure": True}, "node is required: pass --node, set STATEMESH_NODE"),
        ({"node": "n", "insecure": True}, "data is required"),
        ({"node": "n", "data": "/d"}, "no cluster key: set key_file"),
        ({**BASE, "listen": "0.0.0.0:7946"}, "wildcard: set advertise"),
    ],
)
def test_missing_and_inconsistent_settings(flags, message):
    with pytest.raises(LocalError, match=message):
        _resolve(flags=flags)


def test_wildcard_listen_with_advertise_is_accepted():
    s = _resolve(flags={**BASE, "listen": "0.0.0.0:7946", "advertise": "127.0.0.1:7946"})
    assert s.advertise == "127.0.0.1:7946"


# --- logging --------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def _ring() -> Keyring:
    return Keyring([random.Random(SEED).randbytes(32)])


def test_json_lines_parse(restore_logging):
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    log = logging.getLogger("statemesh.test")
    log.info("peer %s joined", "n2", extra={"peer": "n2", "members": 3, "where": Path("/x")})
    log.debug('quote " and newline\n inside')
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert records[0]["msg"] == "peer n2 joined"
    assert records[0]["level"] == "info" and records[0]["logger"] == "statemesh.test"
    assert records[0]["peer"] == "n2" and records[0]["members"] == 3 and records[0]["where"] == "/x"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", records[0]["ts"])
    assert records[1]["msg"] == 'quote " and newline\n inside'
    assert "ValueError: boom" in records[2]["exc"]


def test_human_lines(restore_logging):
    out = io.StringIO()
    configure_logging("human", "info", stream=out)
    log = logging.getLogger("statemesh.test")
    log.info("hello %d", 5, extra={"peer": "n2"})
    log.debug("hidden at info")
    text = out.getvalue()
    assert re.fullmatch(r"\S+Z INFO    statemesh\.test: hello 5 peer='n2'\n", text), text


def test_secrets_are_redacted_everywhere(restore_logging):
    ring = _ring()
    token = admin_token(ring)
    key_line = format_key(random.Random(SEED).randbytes(32)).splitlines()[-1]
    for fmt in ("json", "human"):
        out = io.StringIO()
        configure_logging(fmt, "debug", stream=out)
        log = logging.getLogger("statemesh.test")
        log.info("request with Authorization: Bearer %s", token)
        log.info("token alone %s", token)
        log.info("key %s", key_line)
        log.info(
            "set", extra={"secret_value": "hunter2", "api_key": "sk-1", "password": "pw-secret-9"}
        )
        log.info("mapping %(token)s", {"token": "tok-123"})
        try:
            raise RuntimeError(f"cannot use {token}")
        except RuntimeError:
            log.exception("failed")
        text = out.getvalue()
        for leaked in (
            token,
            token.split(".")[-1],
            key_line[-64:],
            "hunter2",
            "sk-1",
            "pw-secret-9",
            "tok-123",
        ):
            assert leaked not in text, (fmt, leaked)
        assert "[REDACTED]" in text
        if fmt == "json":
            for line in text.splitlines():
                if line.startswith("{"):
                    json.loads(line)


def test_json_logs_of_a_real_process_parse(tmp_path):
    import subprocess
    import sys

    program = (
        "import logging, sys\n"
        "from mesh.settings import configure_logging\n"
        "configure_logging('json', 'info')\n"
        "log = logging.getLogger('statemesh.child')\n"
        "log.info('started', extra={'node': 'n1', 'token': 'tok-xyz'})\n"
        "log.warning('multi\\nline')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["msg"] for r in records] == ["started", "multi\nline"]
    assert records[0]["node"] == "n1" and records[0]["token"] == "[REDACTED]"
    assert "tok-xyz" not in done.stderr


def test_redact_leaves_ordinary_text_alone():
    assert redact("member n2 is alive at 127.0.0.1:7946") == "member n2 is alive at 127.0.0.1:7946"
    assert redact("Bearer abc.def") == "Bearer [REDACTED]"


def test_filter_keeps_ordinary_fields():
    record = logging.LogRecord("x", logging.INFO, "f", 1, "m", None, None)
    record.peer = "n2"
    record.token = "t"
    assert RedactingFilter().filter(record) is True
    assert record.peer == "n2" and record.token == "[REDACTED]"


def test_configure_twice_does_not_duplicate(restore_logging):
    out = io.StringIO()
    configure_logging("human", "info", stream=out)
    configure_logging("json", "info", stream=out)
    logging.getLogger("statemesh.test").info("once")
    assert len(out.getvalue().splitlines()) == 1
    json.loads(out.getvalue())


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "loud")])
def test_configure_logging_refuses_bad_arguments(restore_logging, fmt, level):
    before = list(logging.getLogger().handlers)
    with pytest.raises(LocalError):
        configure_logging(fmt, level)
    assert logging.getLogger().handlers == before


def _policy_layers(tmp_path, field: str, in_file: str, in_env: str, on_flag: str):
    """Settings with `field` set in a file, overridden by its env variable, then its flag.

    Checks each layer wins over the one below and returns the settings the flag made.
    """
    from cli.main import build_parser

    path = _write(tmp_path, {**BASE, field: in_file})
    assert getattr(_resolve(config=path), field) == in_file
    env = {"STATEMESH_" + field.upper(): in_env}
    assert getattr(_resolve(env=env, config=path), field) == in_env
    args = build_parser().parse_args(
        ["peer", "--node", "n", "--data", str(tmp_path / "d"), "--insecure",
         "--" + field.replace("_", "-"), on_flag]
    )  # fmt: skip
    return _resolve(flags=vars(args), env=env, config=path)


def test_split_brain_policy_from_file_env_and_flag_reaches_the_mesh_config(tmp_path):
    from mesh.config import MeshConfig

    s = _policy_layers(tmp_path, "split_brain", "availability", "majority", "availability")
    assert s.split_brain == "availability"
    assert MeshConfig(**s.mesh_kwargs()).split_brain == "availability"
    with pytest.raises(LocalError, match="split-brain: must be one of majority, availability"):
        _resolve(flags={**BASE, "split_brain": "both"})


def test_unreadable_store_policy_from_file_env_and_flag_reaches_the_mesh_config(tmp_path):
    from mesh.config import MeshConfig

    assert _resolve(flags=BASE).on_unreadable_store == "refill"  # the default
    s = _policy_layers(tmp_path, "on_unreadable_store", "stop", "refill", "stop")
    assert MeshConfig(**s.mesh_kwargs()).on_unreadable_store == "stop"
    # Each bad-input class: a flag, a file key, an env variable, a MeshConfig field.
    with pytest.raises(LocalError, match="on-unreadable-store: must be one of refill, stop"):
        _resolve(flags={**BASE, "on_unreadable_store": "ignore"})
    bad = _write(tmp_path, {**BASE, "on_unreadable_store": "delete"})
    with pytest.raises(
        LocalError, match="'on_unreadable_store': must be one of refill, stop; got 'delete'"
    ):
        _resolve(config=bad)
    with pytest.raises(LocalError, match="STATEMESH_ON_UNREADABLE_STORE: must be one of"):
        _resolve(flags=BASE, env={"STATEMESH_ON_UNREADABLE_STORE": "yes"})
    with pytest.raises(LocalError, match="on_unreadable_store must be 'refill' or 'stop'") as info:
        MeshConfig(node="n", data_dir=tmp_path / "d", insecure=True, on_unreadable_store=True)
    assert type(info.value) is LocalError  # like every other MeshConfig field check
