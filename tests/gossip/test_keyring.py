"""Tests for gossip.keyring: keyring rules and the key file format, on real files."""

from __future__ import annotations

import os
import random
import stat

import pytest

from crdt_types.errors import LocalError
from gossip.keyring import (
    KEY_FILE_PREFIX,
    Keyring,
    format_key,
    key_id,
    load_key_file,
    parse_key,
    write_key_file,
)

SEED = 7


def keys(n: int, seed: int = SEED) -> list[bytes]:
    r = random.Random(seed)
    return [r.randbytes(32) for _ in range(n)]


# --- keyring -----------------------------------------------------------------------------------


def test_first_key_is_primary_and_ids_are_stable() -> None:
    k1, k2 = keys(2)
    ring = Keyring([k1, k2])
    assert ring.primary_id == key_id(k1)
    assert ring.ids() == (key_id(k1), key_id(k2))
    assert key_id(k1) == key_id(bytes(k1)) and len(key_id(k1)) == 4
    assert key_id(k1) != key_id(k2)


def test_install_same_key_twice_is_harmless() -> None:
    (k1,) = keys(1)
    ring = Keyring([k1])
    gen = ring.generation
    assert ring.install(k1) == key_id(k1)
    assert len(ring) == 1 and ring.generation == gen


def test_rotation_steps_and_their_rules() -> None:
    k1, k2 = keys(2)
    ring = Keyring([k1])
    id2 = ring.install(k2)
    with pytest.raises(LocalError, match="primary"):
        ring.remove(key_id(k1))
    ring.make_primary(id2.hex())
    ring.remove(key_id(k1))
    assert ring.ids() == (id2,) and ring.primary_id == id2
    assert key_id(k1) not in ring and ring.frame_key(key_id(k1)) is None


@pytest.mark.parametrize("bad", [b"\x00" * 4, "00000000", "zz", b"\x01", 5])
def test_unknown_or_malformed_ids_are_refused(bad: object) -> None:
    ring = Keyring(keys(1))
    with pytest.raises(LocalError):
        ring.make_primary(bad)  # type: ignore[arg-type]
    with pytest.raises(LocalError):
        ring.remove(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"", b"x" * 31, b"x" * 33, "k" * 32, bytearray(32)])
def test_key_material_must_be_32_bytes(bad: object) -> None:
    with pytest.raises(LocalError):
        Keyring([bad])  # type: ignore[list-item]


def test_repr_never_shows_key_material() -> None:
    (k1,) = keys(1)
    ring = Keyring([k1])
    assert k1.hex() not in repr(ring) and key_id(k1).hex() in repr(ring)


def test_frame_key_is_derived_not_the_material() -> None:
    (k1,) = keys(1)
    ring = Keyring([k1])
    fk = ring.frame_key(key_id(k1))
    assert fk is not None and len(fk) == 32 and fk != k1


# --- key file format ---------------------------------------------------------------------------


def test_format_and_parse_round_trip() -> None:
    for k in keys(5):
        assert parse_key(format_key(k)) == k


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no key line"),
        ("# only a comment\n\n", "no key line"),
        (f"{KEY_FILE_PREFIX}{'ab' * 32}\n{KEY_FILE_PREFIX}{'cd' * 32}\n", "2 key lines"),
        (f"statemesh-key-v2:{'ab' * 32}\n", "does not start"),
        ("ab" * 32 + "\n", "does not start"),
        (f"{KEY_FILE_PREFIX}{'ab' * 31}\n", "64 hex digits"),
        (f"{KEY_FILE_PREFIX}{'zz' * 32}\n", "not hex"),
    ],
    ids=["empty", "comments-only", "two-keys", "other-version", "bare-hex", "short", "not-hex"],
)
def test_parse_rejects_each_malformed_file(text: str, match: str) -> None:
    with pytest.raises(LocalError, match=match):
        parse_key(text, "test.key")


def test_write_then_load(tmp_path) -> None:
    (k,) = keys(1)
    path = tmp_path / "cluster.key"
    write_key_file(path, k)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key_file(path) == k


def test_write_refuses_to_overwrite_without_force(tmp_path) -> None:
    k1, k2 = keys(2)
    path = tmp_path / "cluster.key"
    write_key_file(path, k1)
    with pytest.raises(LocalError, match="--force"):
        write_key_file(path, k2)
    assert load_key_file(path) == k1  # untouched
    write_key_file(path, k2, force=True)
    assert load_key_file(path) == k2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["cluster.key"]  # no temporary file left behind


def test_written_mode_is_0600_whatever_the_umask(tmp_path) -> None:
    old = os.umask(0)
    try:
        write_key_file(tmp_path / "k", keys(1)[0])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600


def test_write_into_missing_directory_is_localerror(tmp_path) -> None:
    with pytest.raises(LocalError, match="cannot create"):
        write_key_file(tmp_path / "missing" / "k", keys(1)[0])


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o666])
def test_load_refuses_group_or_world_accessible_files(tmp_path, mode: int) -> None:
    path = tmp_path / "k"
    write_key_file(path, keys(1)[0])
    os.chmod(path, mode)
    with pytest.raises(LocalError, match="chmod 600"):
        load_key_file(path)
    assert load_key_file(path, check_mode=False) == keys(1)[0]


def test_load_errors_are_clear(tmp_path) -> None:
    with pytest.raises(LocalError, match="does not exist"):
        load_key_file(tmp_path / "nope")
    with pytest.raises(LocalError, match="not a regular file"):
        load_key_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(LocalError, match="not a regular file"):
        load_key_file(fifo)  # and it must not block waiting for a writer
    big = tmp_path / "big"
    big.write_bytes(b"#" * 5000)
    big.chmod(0o600)
    with pytest.raises(LocalError, match="larger than"):
        load_key_file(big)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" * 10)
    binary.chmod(0o600)
    with pytest.raises(LocalError, match="UTF-8"):
        load_key_file(binary)
