"""Cluster keys: the keyring that `gossip.seal` reads, and the key file format.

A cluster key is 32 random bytes shared by every node of a cluster. Nothing is ever
encrypted with it directly: `Keyring.install` derives, with blake3's key-derivation mode,
a 4-byte public *key id* (so frames can say which key sealed them) and a frame base key
(from which `gossip.seal` derives one subkey per sender and boot). Different contexts make
the two unrelated, so publishing the id reveals nothing about the frame key.

Rotation without downtime: install the new key on every node (they now accept both),
make it primary everywhere (senders switch; receivers still accept the old one), then
remove the old key. Invariants: the primary is always in the ring; the primary cannot be
removed; two keys with the same id cannot be installed (a 2**-32 accident, refused rather
than guessed at). `generation` changes on every change so caches can notice.

Key file: UTF-8 text, ``#`` comment lines and blank lines ignored, exactly one line
``statemesh-key-v1:<64 hex digits>``. `load_key_file` refuses a file that group or others
can read or write (like ssh does with private keys): a cluster key that leaked is every
frame of the cluster readable and forgeable. This module does the little file I/O that
key files need, so that the runtime and the CLI share one parser; the protocol code never
touches files.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable

import blake3

from crdt_types.errors import LocalError

KEY_BYTES = 32
KEY_ID_BYTES = 4
KEY_FILE_PREFIX = "statemesh-key-v1:"
MAX_KEY_FILE_BYTES = 4096

_ID_CONTEXT = "statemesh 2026 cluster key id v1"
_FRAME_CONTEXT = "statemesh 2026 frame base key v1"


def key_id(material: bytes) -> bytes:
    """Return the public 4-byte id of a cluster key."""
    _check_material(material)
    return blake3.blake3(material, derive_key_context=_ID_CONTEXT).digest(KEY_ID_BYTES)


def _check_material(material: bytes) -> None:
    if type(material) is not bytes:
        raise LocalError(f"a cluster key is bytes, got {type(material).__name__}")
    if len(material) != KEY_BYTES:
        raise LocalError(f"a cluster key is {KEY_BYTES} bytes, got {len(material)}")


def _as_id(kid: bytes | str) -> bytes:
    """Accept a key id as 4 bytes or as 8 hex digits (what `statemesh keygen` prints)."""
    if isinstance(kid, str):
        try:
            kid = bytes.fromhex(kid)
        except ValueError:
            raise LocalError(f"key id {kid!r} is not hex") from None
    if type(kid) is not bytes or len(kid) != KEY_ID_BYTES:
        raise LocalError(f"a key id is {KEY_ID_BYTES} bytes")
    return kid


class Keyring:
    """The cluster keys a node accepts, one of them primary (the one it seals with)."""

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        """Install `keys` in order; the first becomes primary."""
        self._frame_keys: dict[bytes, bytes] = {}
        self._primary: bytes | None = None
        self.generation = 0
        for material in keys:
            self.install(material)

    def install(self, material: bytes) -> bytes:
        """Add a key (accepted from now on) and return its id; the first key becomes primary."""
        kid = key_id(material)
        frame_key = blake3.blake3(material, derive_key_context=_FRAME_CONTEXT).digest()
        existing = self._frame_keys.get(kid)
        if existing is not None:
            if existing != frame_key:
                raise LocalError(f"key id {kid.hex()} collides with an installed key")
            return kid  # installing the same key twice is harmless
        self._frame_keys[kid] = frame_key
        if self._primary is None:
            self._primary = kid
        self.generation += 1
        return kid

    def make_primary(self, kid: bytes | str) -> None:
        """Seal with key `kid` from now on (it must be installed)."""
        kid = _as_id(kid)
        if kid not in self._frame_keys:
            raise LocalError(f"key {kid.hex()} is not in the keyring")
        if kid != self._primary:
            self._primary = kid
            self.generation += 1

    def remove(self, kid: bytes | str) -> None:
        """Stop accepting key `kid`; the primary cannot be removed."""
        kid = _as_id(kid)
        if kid not in self._frame_keys:
            raise LocalError(f"key {kid.hex()} is not in the keyring")
        if kid == self._primary:
            raise LocalError(f"key {kid.hex()} is primary: make another key primary first")
        del self._frame_keys[kid]
        self.generation += 1

    @property
    def primary_id(self) -> bytes | None:
        """Id of the key frames are sealed with, or None for an empty ring."""
        return self._primary

    def ids(self) -> tuple[bytes, ...]:
        """Ids of every accepted key, in installation order."""
        return tuple(self._frame_keys)

    def frame_key(self, kid: bytes) -> bytes | None:
        """The derived frame base key for `kid`, or None if it is not installed."""
        return self._frame_keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._frame_keys

    def __len__(self) -> int:
        return len(self._frame_keys)

    def __repr__(self) -> str:
        # Never the keys themselves: reprs end up in logs.
        ids = ", ".join(k.hex() + ("*" if k == self._primary else "") for k in self._frame_keys)
        return f"Keyring([{ids}])"


# --- key files ---------------------------------------------------------------------------


def format_key(material: bytes) -> str:
    """Return the key file text for `material`."""
    _check_material(material)
    return (
        "# statemesh cluster key: anyone holding it can read and forge cluster traffic.\n"
        f"# key id {key_id(material).hex()}\n"
        f"{KEY_FILE_PREFIX}{material.hex()}\n"
    )


def parse_key(text: str, source: str = "key") -> bytes:
    """Parse key file text into the 32-byte key; raises LocalError naming `source`."""
    lines = [ln.strip() for ln in text.splitlines()]
    keys = [ln for ln in lines if ln and not ln.startswith("#")]
    if not keys:
        raise LocalError(f"{source}: no key line (expected {KEY_FILE_PREFIX}<64 hex digits>)")
    if len(keys) > 1:
        raise LocalError(f"{source}: {len(keys)} key lines, expected exactly one")
    line = keys[0]
    if not line.startswith(KEY_FILE_PREFIX):
        raise LocalError(f"{source}: key line does not start with {KEY_FILE_PREFIX!r}")
    digits = line[len(KEY_FILE_PREFIX) :]
    if len(digits) != 2 * KEY_BYTES:
        raise LocalError(f"{source}: expected {2 * KEY_BYTES} hex digits, got {len(digits)}")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise LocalError(f"{source}: key is not hex") from None


def load_key_file(path: str | os.PathLike[str], *, check_mode: bool = True) -> bytes:
    """Read a key file and return its 32-byte key; LocalError on any problem."""
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang us; no effect on files.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise LocalError(
            f"{path}: key file does not exist (create one: statemesh keygen)"
        ) from None
    except OSError as exc:
        raise LocalError(f"{path}: cannot open key file: {exc.strerror}") from None
    # Check the opened file itself (not the path again), before any read.
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LocalError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        if check_mode and st.st_mode & 0o077:
            raise LocalError(
                f"{path}: key file mode {stat.S_IMODE(st.st_mode):04o} lets others read it; "
                f"run: chmod 600 {path}"
            )
        data = f.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise LocalError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes; not a key file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LocalError(f"{path}: not UTF-8 text; not a key file") from None
    return parse_key(text, str(path))


def write_key_file(path: str | os.PathLike[str], material: bytes, *, force: bool = False) -> None:
    """Write a key file with mode 0600; refuses to replace an existing file unless `force`."""
    text = format_key(material).encode()
    path = os.fspath(path)
    if not force:
        # O_EXCL: never clobber, even if the file appears between a check and the write.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise LocalError(f"{path}: exists; pass --force to replace it") from None
        except OSError as exc:
            raise LocalError(f"{path}: cannot create: {exc.strerror}") from None
        try:
            _write_all(fd, text, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return
    # Replace atomically: a crash leaves the old key or the new one, never half a key.
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise LocalError(f"{tmp}: cannot create: {exc.strerror}") from None
    try:
        _write_all(fd, text, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes, path: str) -> None:
    try:
        with os.fdopen(fd, "wb") as f:
            # The umask may have narrowed the mode but never widens it; set it exactly.
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise LocalError(f"{path}: cannot write: {exc.strerror}") from None
