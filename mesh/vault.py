"""The secret vault: tool credentials and API tokens, sealed inside the cluster document.

Secrets replicate like any other cluster state (`ClusterState.secrets` maps a name to an
opaque blob), so every peer's data directory, every gossip frame and every `inspect` holds
them; what makes that safe is that the blob is ciphertext. A peer without the cluster key
holds the blob and learns nothing from it but its length.

Sealing: ChaCha20-Poly1305 (the AEAD that `gossip.seal` uses for frames) under a *vault
key* derived with blake3's key-derivation mode from the cluster key's frame base key
(`Keyring.frame_key`) with a context string of its own, so the vault key, the frame keys
and the per-sender frame subkeys are unrelated to one another. Blob layout (bytes):

    offset  size  field
    0       1     format version (1)
    1       4     key id of the cluster key that sealed it (`gossip.keyring.key_id`)
    5       12    random nonce (os.urandom by default)
    17      n+16  ciphertext of the n-byte value, then the Poly1305 tag

The associated data binds the header and the secret's *name*: a blob copied under another
name, a flipped bit anywhere, or a header edited to claim another key fails to open.
Nonces are random rather than counters because any peer may seal under the same key with
no coordination; with 96-bit nonces the collision odds stay negligible for the few
thousand writes a vault sees in a key's lifetime.

Rotation: the key id says which key sealed a blob, so secrets stay readable while that key
is in the ring. After installing a new key and making it primary, `Vault.rotate` re-seals
every secret under the primary; only then may the old key be removed. `rotate` opens every
secret before it writes any, so a secret it cannot open leaves the document untouched.

Invariants: values never appear in a repr, an exception message or a log line from this
module; an error names the secret and the reason only. Opening failures raise
`crdt_types.errors.SecretUnreadable` (a `RemoteError`: the blob came from replicated state,
and nothing changes); misuse (no key, bad name, wrong value type or size) raises
`InvalidValue` or `LocalError` before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crdt_types.cluster import MAX_SECRET_BYTES, ClusterState
from crdt_types.errors import InvalidValue, LocalError, SecretUnreadable
from crdt_types.values import check_name
from gossip.keyring import KEY_ID_BYTES, Keyring

__all__ = ["MAX_VALUE_BYTES", "OVERHEAD", "VERSION", "Vault", "key_id_of"]

VERSION = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = 1 + KEY_ID_BYTES
OVERHEAD = _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES
MAX_VALUE_BYTES = MAX_SECRET_BYTES - OVERHEAD
_MAX_NAME = 128  # ClusterState's limit for secret names

_VAULT_CONTEXT = "statemesh 2026 secret vault key v1"
_AD_PREFIX = b"statemesh vault v1\x00"


def _vault_key(frame_key: bytes) -> bytes:
    return blake3.blake3(frame_key, derive_key_context=_VAULT_CONTEXT).digest()


def _associated_data(header: bytes, name: str) -> bytes:
    # The header is fixed-size, so prefix + header + name cannot be split two ways.
    return _AD_PREFIX + header + name.encode("utf-8")


def _as_value(value: object) -> bytes:
    if isinstance(value, str):
        raise InvalidValue("a secret value must be bytes: encode text first (value not shown)")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidValue(f"a secret value must be bytes, not {type(value).__name__}")
    data = bytes(value)
    if not data:
        raise InvalidValue("a secret value must not be empty")
    if len(data) > MAX_VALUE_BYTES:
        raise InvalidValue(f"a secret value is at most {MAX_VALUE_BYTES} bytes, got {len(data)}")
    return data


def key_id_of(blob: bytes | str) -> bytes | None:
    """The id of the cluster key that sealed `blob`, or None if it is not a sealed secret."""
    if not isinstance(blob, bytes | bytearray) or len(blob) < OVERHEAD or blob[0] != VERSION:
        return None
    return bytes(blob[1:_HEADER_BYTES])


class Vault:
    """Seals and opens secrets with keys derived from a cluster keyring."""

    def __init__(
        self, keyring: Keyring | None, *, randbytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        """Use `keyring` (read at each call, so rotations apply at once); None means no key."""
        if keyring is not None and not isinstance(keyring, Keyring):
            raise LocalError(f"Vault needs a Keyring, not {type(keyring).__name__}")
        self._keyring = keyring
        self._randbytes = randbytes

    def __repr__(self) -> str:
        # The keyring's repr shows key ids only; a vault holds no values to show.
        return f"Vault({self._keyring!r})"

    # --- blobs ------------------------------------------------------------------------

    def seal(self, name: str, value: bytes) -> bytes:
        """Encrypt `value` for secret `name` under the primary key; return the blob."""
        check_name(name, "secret name", max_len=_MAX_NAME)
        data = _as_value(value)
        kid = self._keyring.primary_id if self._keyring is not None else None
        frame_key = self._keyring.frame_key(kid) if kid is not None else None
        if frame_key is None:
            raise LocalError("no cluster key: secrets need one (this node runs --insecure)")
        nonce = self._randbytes(_NONCE_BYTES)
        if type(nonce) is not bytes or len(nonce) != _NONCE_BYTES:
            raise LocalError(f"randbytes must return {_NONCE_BYTES} bytes")
        header = bytes([VERSION]) + kid
        sealed = ChaCha20Poly1305(_vault_key(frame_key)).encrypt(
            nonce, data, _associated_data(header, name)
        )
        return header + nonce + sealed

    def open(self, name: str, blob: bytes | str) -> bytes:
        """Decrypt the blob stored for secret `name`; `SecretUnreadable` if it cannot."""
        check_name(name, "secret name", max_len=_MAX_NAME)
        if isinstance(blob, bytearray | memoryview):
            blob = bytes(blob)
        if not isinstance(blob, bytes):
            raise SecretUnreadable(
                name, "format", f"a sealed secret is bytes, not {type(blob).__name__}"
            )
        if len(blob) < OVERHEAD:
            raise SecretUnreadable(
                name, "format", f"{len(blob)} bytes is shorter than any sealed secret"
            )
        if blob[0] != VERSION:
            raise SecretUnreadable(name, "format", f"unknown vault format version {blob[0]}")
        header = blob[:_HEADER_BYTES]
        kid = header[1:]
        frame_key = self._keyring.frame_key(kid) if self._keyring is not None else None
        if frame_key is None:
            raise SecretUnreadable(
                name, "unknown_key", f"sealed with key {kid.hex()}, which is not in the keyring"
            )
        nonce = blob[_HEADER_BYTES : _HEADER_BYTES + _NONCE_BYTES]
        try:
            return ChaCha20Poly1305(_vault_key(frame_key)).decrypt(
                nonce, blob[_HEADER_BYTES + _NONCE_BYTES :], _associated_data(header, name)
            )
        except InvalidTag:
            raise SecretUnreadable(
                name,
                "auth",
                "does not verify (tampered, stored under another name, or another key)",
            ) from None

    def reseal(self, name: str, blob: bytes | str) -> bytes:
        """Return `blob` re-sealed under the primary key (unchanged if it already is)."""
        kid = key_id_of(blob)
        primary = self._keyring.primary_id if self._keyring is not None else None
        value = self.open(name, blob)  # verifies even when no re-seal is needed
        if kid == primary:
            return bytes(blob)  # type: ignore[arg-type]  # open() accepted it, so bytes-like
        return self.seal(name, value)

    # --- cluster state ------------------------------------------------------------------

    def put(self, state: ClusterState, name: str, value: bytes) -> None:
        """Seal `value` and store it as secret `name` (replacing any previous value)."""
        state.set_secret(name, self.seal(name, value))

    def get(self, state: ClusterState, name: str) -> bytes | None:
        """The value of secret `name`, or None if there is none; `SecretUnreadable` if sealed away."""
        blob = state.get_secret(name)
        return None if blob is None else self.open(name, blob)

    def delete(self, state: ClusterState, name: str) -> bool:
        """Remove secret `name`; return whether it existed (no key needed)."""
        return state.delete_secret(name)

    def names(self, state: ClusterState) -> list[str]:
        """Names of the stored secrets, sorted (names are not secret; values are)."""
        return state.secret_names()

    def key_ids(self, state: ClusterState) -> dict[str, str | None]:
        """{name: hex id of the key that sealed it} (None for a blob that is not sealed)."""
        out: dict[str, str | None] = {}
        for name in state.secret_names():
            kid = key_id_of(state.get_secret(name) or b"")
            out[name] = None if kid is None else kid.hex()
        return out

    def rotate(self, state: ClusterState) -> int:
        """Re-seal every secret not under the primary key; return how many were re-sealed."""
        primary = self._keyring.primary_id if self._keyring is not None else None
        if primary is None:
            raise LocalError("no cluster key: secrets need one (this node runs --insecure)")
        # Open everything first: one unreadable secret must leave the document untouched.
        pending: list[tuple[str, bytes]] = []
        for name in state.secret_names():
            blob = state.get_secret(name)
            if blob is None or key_id_of(blob) == primary:
                continue
            pending.append((name, self.open(name, blob)))
        if pending:
            with state.doc.transaction():
                for name, value in pending:
                    state.set_secret(name, self.seal(name, value))
        return len(pending)
