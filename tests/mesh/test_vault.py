"""Tests for mesh.vault: sealed secrets in the cluster document, rotation, every refusal."""

from __future__ import annotations

import random

import pytest

from crdt_types.cluster import MAX_SECRET_BYTES, ClusterState
from crdt_types.docs import new_doc
from crdt_types.errors import InvalidValue, LocalError, RemoteError, SecretUnreadable
from gossip.keyring import Keyring, key_id
from mesh.storage import DB_NAME, Store
from mesh.vault import MAX_VALUE_BYTES, OVERHEAD, Vault, key_id_of

SEED = 20261130
VALUE = b"sk-live-PLAINTEXT-4f9a1c-never-in-clear"


def _key(rng: random.Random) -> bytes:
    return rng.randbytes(32)


def _vault(rng: random.Random, *keys: bytes) -> Vault:
    return Vault(Keyring(keys), randbytes=rng.randbytes)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(SEED)


def _assert_no_plaintext(data: bytes) -> None:
    assert VALUE not in data, f"plaintext found (seed {SEED})"
    assert VALUE[:12] not in data


def test_round_trip_through_cluster_state(rng):
    vault = _vault(rng, _key(rng))
    state = ClusterState(new_doc(rng=rng))
    vault.put(state, "openai.api_key", VALUE)
    assert vault.get(state, "openai.api_key") == VALUE
    assert vault.names(state) == ["openai.api_key"]
    assert vault.get(state, "absent") is None
    assert vault.delete(state, "openai.api_key") is True
    assert vault.names(state) == []


def test_round_trip_sizes(rng):
    vault = _vault(rng, _key(rng))
    for n in (1, 2, 15, 16, 17, 1000, MAX_VALUE_BYTES):
        value = rng.randbytes(n)
        blob = vault.seal("s", value)
        assert len(blob) == n + OVERHEAD <= MAX_SECRET_BYTES
        assert vault.open("s", blob) == value


def test_replicates_to_a_peer_with_the_key_and_not_to_one_without(rng):
    key = _key(rng)
    a, b = ClusterState(new_doc(rng=rng)), ClusterState(new_doc(rng=rng))
    _vault(rng, key).put(a, "db.password", VALUE)
    b.doc.apply_update(a.doc.get_update())
    assert _vault(rng, key).get(b, "db.password") == VALUE
    stranger = _vault(rng, _key(rng))
    with pytest.raises(SecretUnreadable) as info:
        stranger.get(b, "db.password")
    assert info.value.reason == "unknown_key"
    assert VALUE.decode() not in str(info.value)


def test_plaintext_never_in_blob_nor_document_bytes(rng):
    vault = _vault(rng, _key(rng))
    state = ClusterState(new_doc(rng=rng))
    vault.put(state, "api", VALUE)
    _assert_no_plaintext(state.get_secret("api"))
    _assert_no_plaintext(state.doc.get_update())
    _assert_no_plaintext(state.doc.get_state())
    assert VALUE.decode() not in repr(state.to_dict())


def test_plaintext_never_in_the_sqlite_file(rng, tmp_path):
    vault = _vault(rng, _key(rng))
    state = ClusterState(new_doc(rng=rng))
    updates: list[bytes] = []
    state.doc.observe(lambda event: updates.append(event.update))
    vault.put(state, "api", VALUE)
    store = Store.open(tmp_path, rng=rng)
    try:
        for update in updates:
            store.append("cluster", update)
        store.checkpoint("cluster")
        assert _vault_get_after_reload(store, vault) == VALUE
    finally:
        store.close()
    for path in tmp_path.iterdir():
        _assert_no_plaintext(path.read_bytes())
    assert (tmp_path / DB_NAME).exists()


def _vault_get_after_reload(store: Store, vault: Vault) -> bytes | None:
    return vault.get(ClusterState(store.load("cluster")), "api")


def test_wrong_key_is_refused_without_plaintext(rng):
    blob = _vault(rng, _key(rng)).seal("s", VALUE)
    with pytest.raises(SecretUnreadable) as info:
        _vault(rng, _key(rng)).open("s", blob)
    assert info.value.reason == "unknown_key"
    assert isinstance(info.value, RemoteError)
    assert "not in the keyring" in str(info.value)


def test_wrong_key_with_the_same_id_fails_authentication(rng):
    # A key id collision (or a forged header) must still not decrypt: the tag protects it.
    k1, k2 = _key(rng), _key(rng)
    blob = bytearray(_vault(rng, k1).seal("s", VALUE))
    blob[1:5] = key_id(k2)
    with pytest.raises(SecretUnreadable) as info:
        _vault(rng, k2).open("s", bytes(blob))
    assert info.value.reason == "auth"


def test_removed_key_makes_its_secrets_unreadable(rng):
    old, new = _key(rng), _key(rng)
    ring = Keyring([old, new])
    vault = Vault(ring, randbytes=rng.randbytes)
    blob = vault.seal("s", VALUE)
    ring.make_primary(key_id(new))
    assert vault.open("s", blob) == VALUE  # old key still in the ring
    ring.remove(key_id(old))
    with pytest.raises(SecretUnreadable) as info:
        vault.open("s", blob)
    assert info.value.reason == "unknown_key"
    assert key_id(old).hex() in str(info.value)


def test_tampering_at_every_byte_is_refused(rng):
    vault = _vault(rng, _key(rng))
    blob = vault.seal("s", b"short value")
    for i in range(len(blob)):
        for flip in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= flip
            with pytest.raises(SecretUnreadable) as info:
                vault.open("s", bytes(bad))
            assert info.value.reason in ("auth", "unknown_key", "format"), (i, flip)
            assert "short value" not in str(info.value)


def test_truncated_and_extended_blobs_are_refused(rng):
    vault = _vault(rng, _key(rng))
    blob = vault.seal("s", VALUE)
    for n in range(len(blob)):
        with pytest.raises(SecretUnreadable):
            vault.open("s", blob[:n])
    with pytest.raises(SecretUnreadable) as info:
        vault.open("s", blob + b"\x00")
    assert info.value.reason == "auth"


def test_blob_under_another_name_is_refused(rng):
    vault = _vault(rng, _key(rng))
    state = ClusterState(new_doc(rng=rng))
    vault.put(state, "prod.token", VALUE)
    state.set_secret("dev.token", state.get_secret("prod.token"))  # a swap by a writer
    with pytest.raises(SecretUnreadable) as info:
        vault.get(state, "dev.token")
    assert info.value.reason == "auth"
    assert info.value.name == "dev.token"
    assert vault.get(state, "prod.token") == VALUE  # the original is intact


@pytest.mark.parametrize(
    "blob",
    ["a string blob", b"", b"\x02" + bytes(40), 17, None],
    ids=["str", "empty", "version2", "int", "none"],
)
def test_format_errors(rng, blob):
    with pytest.raises(SecretUnreadable) as info:
        _vault(rng, _key(rng)).open("s", blob)
    assert info.value.reason == "format"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("s", "text, not bytes"),
        ("s", 12),
        ("s", b""),
        ("s", bytes(MAX_VALUE_BYTES + 1)),
        ("", b"v"),
        ("x" * 129, b"v"),
        (3, b"v"),
        ("bad\ud800", b"v"),
    ],
    ids=["str", "int", "empty", "too-big", "empty-name", "long-name", "int-name", "surrogate"],
)
def test_bad_input_is_refused_and_changes_nothing(rng, name, value):
    vault = _vault(rng, _key(rng))
    state = ClusterState(new_doc(rng=rng))
    vault.put(state, "keep", VALUE)
    before = state.doc.get_state()
    with pytest.raises(InvalidValue) as info:
        vault.put(state, name, value)
    assert isinstance(info.value, LocalError)
    assert "text, not bytes" not in str(info.value)  # a str value is never echoed back
    assert state.doc.get_state() == before
    assert vault.get(state, "keep") == VALUE


def test_no_key_refuses_to_seal(rng):
    for vault in (Vault(None), Vault(Keyring())):
        with pytest.raises(LocalError, match="no cluster key"):
            vault.seal("s", VALUE)
        with pytest.raises(SecretUnreadable):
            vault.open("s", _vault(rng, _key(rng)).seal("s", VALUE))
    with pytest.raises(LocalError):
        Vault(b"raw key bytes")  # type: ignore[arg-type]


def test_nonces_are_fresh(rng):
    vault = _vault(rng, _key(rng))
    blobs = {vault.seal("s", VALUE) for _ in range(50)}
    assert len(blobs) == 50
    assert len({b[5:17] for b in blobs}) == 50
    default = Vault(Keyring([_key(rng)]))  # os.urandom
    assert default.seal("s", VALUE) != default.seal("s", VALUE)


def test_repr_shows_no_key_and_no_value(rng):
    key = _key(rng)
    vault = _vault(rng, key)
    vault.seal("s", VALUE)
    text = repr(vault) + str(vault)
    assert key.hex() not in text
    assert key_id(key).hex() in text
    assert VALUE.decode() not in text


def test_rotation_reseals_under_the_new_primary(rng):
    old, new = _key(rng), _key(rng)
    ring = Keyring([old])
    vault = Vault(ring, randbytes=rng.randbytes)
    state = ClusterState(new_doc(rng=rng))
    values = {f"secret{i}": rng.randbytes(20 + i) for i in range(5)}
    for name, value in values.items():
        vault.put(state, name, value)
    ring.install(new)
    ring.make_primary(key_id(new))
    vault.put(state, "fresh", VALUE)  # sealed under the new key already
    assert set(vault.key_ids(state).values()) == {key_id(old).hex(), key_id(new).hex()}
    assert vault.rotate(state) == 5
    assert set(vault.key_ids(state).values()) == {key_id(new).hex()}
    assert vault.rotate(state) == 0  # idempotent
    ring.remove(key_id(old))
    for name, value in values.items():
        assert vault.get(state, name) == value
    assert vault.get(state, "fresh") == VALUE


def test_rotation_reaches_peers_that_only_have_the_new_key(rng):
    old, new = _key(rng), _key(rng)
    ring = Keyring([old, new])
    a = ClusterState(new_doc(rng=rng))
    vault = Vault(ring, randbytes=rng.randbytes)
    vault.put(a, "s", VALUE)
    ring.make_primary(key_id(new))
    vault.rotate(a)
    b = ClusterState(new_doc(rng=rng))
    b.doc.apply_update(a.doc.get_update())
    assert Vault(Keyring([new])).get(b, "s") == VALUE


def test_rotation_with_an_unreadable_secret_changes_nothing(rng):
    old, new, foreign = _key(rng), _key(rng), _key(rng)
    ring = Keyring([old, new])
    vault = Vault(ring, randbytes=rng.randbytes)
    state = ClusterState(new_doc(rng=rng))
    vault.put(state, "a", VALUE)
    state.set_secret("b", _vault(rng, foreign).seal("b", b"other"))
    ring.make_primary(key_id(new))
    before = state.doc.get_state()
    with pytest.raises(SecretUnreadable) as info:
        vault.rotate(state)
    assert info.value.name == "b"
    assert state.doc.get_state() == before
    assert key_id_of(state.get_secret("a")) == key_id(old)


def test_reseal_keeps_a_primary_blob_and_verifies_it(rng):
    old, new = _key(rng), _key(rng)
    ring = Keyring([old, new])
    vault = Vault(ring, randbytes=rng.randbytes)
    blob = vault.seal("s", VALUE)
    assert vault.reseal("s", blob) == blob
    ring.make_primary(key_id(new))
    moved = vault.reseal("s", blob)
    assert key_id_of(moved) == key_id(new)
    assert vault.open("s", moved) == VALUE
    with pytest.raises(SecretUnreadable):
        vault.reseal("s", blob[:-1])


def test_key_id_of_non_blobs():
    assert key_id_of("text") is None
    assert key_id_of(b"") is None
    assert key_id_of(b"\x02" + bytes(40)) is None
