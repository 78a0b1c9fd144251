"""The admin token: who may change configuration or read secrets over HTTP.

Probes, metrics and status are open (bind the HTTP server to loopback, the default); the
requests that change cluster configuration or reveal secrets must carry
``Authorization: Bearer <token>``. Anyone holding the cluster key file can compute the
token, so the CLI needs only ``--key-file``; a process that can read frames but not the
key file cannot.

Two kinds of token, both derived with blake3's key-derivation mode from the cluster key's
frame base key (`Keyring.frame_key`) under contexts of their own, so neither reveals the
frame keys, the vault key or each other:

* static, ``smadm1.<key id>.<64 hex>``: what `admin_token` returns and the CLI sends. It
  is the same for every request until the key rotates, like a bearer password.
* timed, ``smadm1t.<key id>.<expires>.<64 hex>``: a keyed-blake3 MAC of the expiry time
  (unix seconds) under a separate derived key; `timed_token` mints one valid for at most
  `MAX_TTL` seconds. It is for handing a short-lived credential to a tool or a proxy log
  that should not hold the long-lived one. `check_admin` refuses it after it expires or if
  it claims to live longer than `MAX_TTL` from `now`.

Rotation: `check_admin` accepts a token of *any* key in the ring, so clients holding the
old key keep working until the old key is removed; `admin_token` always uses the primary.

Invariants: the check compares the presented token with the expected token of every key in
the ring, with `hmac.compare_digest` and no early exit, so its time does not depend on
which bytes matched or which key did; with no keyring (an ``--insecure`` node) nothing is
accepted; a malformed or oversized header is simply not a valid token (False, never an
exception). Tokens never appear in a repr or an error from this module.
"""

from __future__ import annotations

import hmac
import math
import time

import blake3

from crdt_types.errors import LocalError
from gossip.keyring import Keyring

__all__ = [
    "HEADER",
    "MAX_TTL",
    "admin_token",
    "authorization",
    "check_admin",
    "timed_token",
]

HEADER = "Authorization"
MAX_TTL = 24 * 3600  # a timed token may live at most one day
_MAX_HEADER = 256  # longer than any token we mint: not worth parsing
_STATIC = "smadm1"
_TIMED = "smadm1t"
_STATIC_CONTEXT = "statemesh 2026 admin token v1"
_TIMED_CONTEXT = "statemesh 2026 admin timed token mac key v1"


def _static_token(kid: bytes, frame_key: bytes) -> str:
    secret = blake3.blake3(frame_key, derive_key_context=_STATIC_CONTEXT).hexdigest()
    return f"{_STATIC}.{kid.hex()}.{secret}"


def _timed_token(kid: bytes, frame_key: bytes, expires: int) -> str:
    mac_key = blake3.blake3(frame_key, derive_key_context=_TIMED_CONTEXT).digest()
    # The MAC covers the key id too, so a token cannot be relabelled to another key.
    mac = blake3.blake3(kid + expires.to_bytes(8, "big"), key=mac_key).hexdigest()
    return f"{_TIMED}.{kid.hex()}.{expires}.{mac}"


def _primary(keyring: Keyring | None) -> tuple[bytes, bytes]:
    if not isinstance(keyring, Keyring):
        raise LocalError("an admin token needs the cluster keyring (this node runs --insecure?)")
    kid = keyring.primary_id
    frame_key = keyring.frame_key(kid) if kid is not None else None
    if kid is None or frame_key is None:
        raise LocalError("an admin token needs a cluster key; the keyring is empty")
    return kid, frame_key


def admin_token(keyring: Keyring) -> str:
    """The static admin token of the keyring's primary key."""
    return _static_token(*_primary(keyring))


def timed_token(keyring: Keyring, now: float, ttl: float = 300.0) -> str:
    """An admin token of the primary key that expires `ttl` seconds after `now`."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
        raise LocalError(f"ttl must be a number of seconds in (0, {MAX_TTL}], got {ttl!r}")
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise LocalError(f"now must be a finite unix time, got {now!r}")
    kid, frame_key = _primary(keyring)
    return _timed_token(kid, frame_key, int(now + ttl))


def authorization(keyring: Keyring) -> str:
    """The value of the `Authorization` header a client sends: ``Bearer <static token>``."""
    return f"Bearer {admin_token(keyring)}"


def check_admin(
    header_value: str | bytes | None, keyring: Keyring | None, *, now: float | None = None
) -> bool:
    """Whether `header_value` (``Bearer <token>`` or the bare token) is a valid admin token."""
    if not isinstance(keyring, Keyring) or not header_value:
        return False
    if isinstance(header_value, bytes):
        try:
            header_value = header_value.decode("ascii")
        except UnicodeDecodeError:
            return False
    if not isinstance(header_value, str) or len(header_value) > _MAX_HEADER:
        return False
    token = header_value.strip()
    scheme, _, rest = token.partition(" ")
    if scheme.lower() == "bearer":
        token = rest.strip()
    if not token.isascii():
        return False  # compare_digest refuses non-ASCII str; such a token is invalid anyway
    parts = token.split(".")
    expires: int | None = None
    if len(parts) == 4 and parts[0] == _TIMED:
        if not parts[2].isdigit() or len(parts[2]) > 12:
            return False
        expires = int(parts[2])
    elif not (len(parts) == 3 and parts[0] == _STATIC):
        return False
    presented = token.encode("ascii")
    ok = False
    for kid in keyring.ids():
        frame_key = keyring.frame_key(kid)
        if frame_key is None:
            continue
        expected = (
            _static_token(kid, frame_key)
            if expires is None
            else _timed_token(kid, frame_key, expires)
        )
        # No early exit: every key is compared whatever the outcome of the others.
        ok |= hmac.compare_digest(presented, expected.encode("ascii"))
    if not ok or expires is None:
        return ok
    t = time.time() if now is None else now
    return t < expires <= t + MAX_TTL + 1
