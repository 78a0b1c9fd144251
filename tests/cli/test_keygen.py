"""Tests for `statemesh keygen`: the real console script in a subprocess, and the exit codes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from cli.main import main
from gossip.keyring import Keyring, key_id, load_key_file


def statemesh(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("statemesh")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_keygen_writes_a_loadable_0600_key(tmp_path) -> None:
    path = tmp_path / "cluster.key"
    proc = statemesh("keygen", "--out", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    material = load_key_file(path)
    assert out == {"path": str(path), "key_id": key_id(material).hex()}
    assert material.hex() not in proc.stdout + proc.stderr  # the key is never printed
    assert Keyring([material]).primary_id == key_id(material)


def test_keygen_refuses_to_overwrite_and_force_replaces(tmp_path, capsys) -> None:
    path = tmp_path / "cluster.key"
    assert main(["keygen", "--out", str(path)]) == 0
    first = load_key_file(path)
    capsys.readouterr()
    assert main(["keygen", "--out", str(path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert load_key_file(path) == first
    assert main(["keygen", "--out", str(path), "--force"]) == 0
    assert load_key_file(path) != first  # 2**-256 chance of a false failure


def test_keygen_reports_a_missing_directory(tmp_path, capsys) -> None:
    assert main(["keygen", "--out", str(tmp_path / "no" / "k")]) == 2
    assert "cannot create" in capsys.readouterr().err


def test_keygen_requires_out() -> None:
    with pytest.raises(SystemExit) as info:
        main(["keygen"])
    assert info.value.code == 2
