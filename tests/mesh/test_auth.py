"""Tests for mesh.auth: admin tokens from the cluster key, rotation, timed tokens, refusals."""

from __future__ import annotations

import random

import pytest

from crdt_types.errors import LocalError
from gossip.keyring import Keyring, key_id
from mesh.auth import MAX_TTL, admin_token, authorization, check_admin, timed_token

SEED = 6061
NOW = 1_790_000_000.0


@pytest.fixture
def keys() -> tuple[bytes, bytes, bytes]:
    rng = random.Random(SEED)
    return rng.randbytes(32), rng.randbytes(32), rng.randbytes(32)


def test_valid_token_in_every_accepted_spelling(keys):
    ring = Keyring([keys[0]])
    token = admin_token(ring)
    assert token.startswith("smadm1." + key_id(keys[0]).hex() + ".")
    for header in (
        token,
        f"Bearer {token}",
        f"bearer  {token} ",
        authorization(ring),
        token.encode(),
    ):
        assert check_admin(header, ring), header


def test_token_is_deterministic_per_key_and_distinct_between_keys(keys):
    assert admin_token(Keyring([keys[0]])) == admin_token(Keyring([keys[0]]))
    assert admin_token(Keyring([keys[0]])) != admin_token(Keyring([keys[1]]))


def test_token_reveals_no_key_material(keys):
    token = admin_token(Keyring([keys[0]]))
    ring = Keyring([keys[0]])
    assert keys[0].hex() not in token
    assert ring.frame_key(key_id(keys[0])).hex() not in token


def test_other_key_token_is_refused(keys):
    assert not check_admin(admin_token(Keyring([keys[1]])), Keyring([keys[0]]))


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "smadm1",
        "smadm1..",
        "smadm1.00000000.",
        "smadm1t.00000000.x.00",
        "smadm2.00000000.00",
        "Bearer smadm1.é.ü",
        b"\xff\xfe",
        "x" * 10_000,
        12345,
    ],
    ids=lambda h: repr(h)[:24],
)
def test_malformed_headers_are_refused_without_exceptions(keys, header):
    assert check_admin(header, Keyring([keys[0]])) is False


def test_altered_token_is_refused_at_every_position(keys):
    ring = Keyring([keys[0]])
    token = admin_token(ring)
    for i in range(len(token)):
        replacement = "0" if token[i] != "0" else "1"
        assert not check_admin(token[:i] + replacement + token[i + 1 :], ring), i
    assert not check_admin(token[:-1], ring)
    assert not check_admin(token + "0", ring)


def test_relabelled_key_id_is_refused(keys):
    ring = Keyring([keys[0], keys[1]])
    token = admin_token(Keyring([keys[0]]))
    relabelled = token.replace(key_id(keys[0]).hex(), key_id(keys[1]).hex())
    assert not check_admin(relabelled, ring)


def test_rotation_accepts_every_key_in_the_ring(keys):
    old, new, _ = keys
    ring = Keyring([old])
    old_token = admin_token(ring)
    ring.install(new)
    ring.make_primary(key_id(new))
    new_token = admin_token(ring)
    assert new_token != old_token
    assert check_admin(old_token, ring) and check_admin(new_token, ring)
    ring.remove(key_id(old))
    assert not check_admin(old_token, ring)
    assert check_admin(new_token, ring)


def test_no_keyring_accepts_nothing(keys):
    token = admin_token(Keyring([keys[0]]))
    assert not check_admin(token, None)
    assert not check_admin(token, Keyring())
    with pytest.raises(LocalError):
        admin_token(None)  # type: ignore[arg-type]
    with pytest.raises(LocalError):
        admin_token(Keyring())


def test_timed_token_is_valid_until_it_expires(keys):
    ring = Keyring([keys[0]])
    token = timed_token(ring, NOW, ttl=60)
    assert token.startswith("smadm1t.")
    assert check_admin(token, ring, now=NOW)
    assert check_admin(f"Bearer {token}", ring, now=NOW + 59)
    assert not check_admin(token, ring, now=NOW + 60)
    assert not check_admin(token, ring, now=NOW + 3600)


def test_timed_token_with_the_expiry_edited_is_refused(keys):
    ring = Keyring([keys[0]])
    token = timed_token(ring, NOW, ttl=60)
    prefix, kid, expires, mac = token.split(".")
    longer = ".".join((prefix, kid, str(int(expires) + 3600), mac))
    assert not check_admin(longer, ring, now=NOW)


def test_timed_token_from_another_key_or_removed_key_is_refused(keys):
    old, new, other = keys
    assert not check_admin(timed_token(Keyring([other]), NOW), Keyring([old]), now=NOW)
    ring = Keyring([old, new])
    token = timed_token(ring, NOW)
    assert check_admin(token, ring, now=NOW)
    ring.make_primary(key_id(new))
    assert check_admin(token, ring, now=NOW)
    ring.remove(key_id(old))
    assert not check_admin(token, ring, now=NOW)


def test_timed_token_claiming_too_long_a_life_is_refused(keys):
    ring = Keyring([keys[0]])
    # Minted for a clock far in the future: from `NOW` it claims to live too long.
    token = timed_token(ring, NOW + 10 * MAX_TTL, ttl=60)
    assert not check_admin(token, ring, now=NOW)
    assert check_admin(token, ring, now=NOW + 10 * MAX_TTL)


def test_timed_token_uses_the_wall_clock_by_default(keys):
    import time

    ring = Keyring([keys[0]])
    assert check_admin(timed_token(ring, time.time(), ttl=120), ring)
    assert not check_admin(timed_token(ring, time.time() - 600, ttl=60), ring)


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL + 1, float("nan"), True, "60"])
def test_timed_token_bad_ttl(keys, ttl):
    with pytest.raises(LocalError, match="ttl"):
        timed_token(Keyring([keys[0]]), NOW, ttl=ttl)


@pytest.mark.parametrize("now", [float("inf"), float("nan"), None, True])
def test_timed_token_bad_now(keys, now):
    with pytest.raises(LocalError, match="now"):
        timed_token(Keyring([keys[0]]), now)


def test_static_and_timed_tokens_are_unrelated(keys):
    ring = Keyring([keys[0]])
    static_secret = admin_token(ring).rsplit(".", 1)[1]
    timed_mac = timed_token(ring, NOW).rsplit(".", 1)[1]
    assert static_secret != timed_mac
    # A static token dressed up as a timed one (or the reverse) does not pass.
    kid = key_id(keys[0]).hex()
    assert not check_admin(f"smadm1t.{kid}.{int(NOW) + 60}.{static_secret}", ring, now=NOW)
    assert not check_admin(f"smadm1.{kid}.{timed_mac}", ring, now=NOW)
