"""The one exception hierarchy of statemesh.

Every error that statemesh raises on purpose derives from `StatemeshError`, and falls
on one side of a line that tells the caller what to do about it:

* `LocalError`: the caller misused the API or passed bad input. Nothing was changed;
  fix the call.
* `RemoteError`: something outside this process misbehaved (a peer sent a bad frame,
  a file on disk does not verify). It is counted and the offending input is dropped;
  local state is unchanged.
* `StorageError`: the local disk could not do what was asked (full, corrupt, closed).

It lives in the lowest layer (`crdt_types`) so that every layer above can raise and
catch the same classes; layers add no exception classes of their own.
"""

from __future__ import annotations


class StatemeshError(Exception):
    """Base of every error statemesh raises on purpose."""


class LocalError(StatemeshError):
    """The caller misused the API or gave invalid input; nothing was changed."""


class RemoteError(StatemeshError):
    """A peer or external data misbehaved; the input was dropped, nothing was changed."""


# --- values and schema -------------------------------------------------------------


class InvalidValue(LocalError, ValueError):
    """A value cannot be stored in replicated state (type, range or size)."""


class SchemaError(RemoteError, ValueError):
    """A document does not match its schema; `path` names the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# --- storage -------------------------------------------------------------------------


class StorageError(StatemeshError):
    """The local store could not complete an operation."""


class CorruptRecord(StorageError):
    """A stored record failed verification; `doc_id` and `seq` say which one."""

    def __init__(self, doc_id: str, seq: int | None, message: str) -> None:
        where = f"document {doc_id!r}" + (f" record {seq}" if seq is not None else "")
        super().__init__(f"{where}: {message}")
        self.doc_id = doc_id
        self.seq = seq


class UnreadableStore(StorageError):
    """SQLite cannot open or read the database file itself; `path` names it."""

    def __init__(self, path: object, message: str) -> None:
        super().__init__(message)
        self.path = path


class DiskFull(StorageError):
    """The disk is full; the write was not acknowledged and nothing acknowledged is lost."""


class StoreClosed(LocalError):
    """The store was used after it was closed."""


# --- wire ------------------------------------------------------------------------------


class BadFrame(RemoteError):
    """A received frame was rejected; `reason` is one of `BadFrame.REASONS`."""

    REASONS = (
        "truncated",  # shorter than its header or its length prefix says
        "oversized",  # longer than the hard maximum frame size
        "auth",  # AEAD tag does not verify: wrong key, tampered, or another cluster
        "unknown_key",  # sealed with a key id that is not in our keyring
        "cluster",  # plaintext envelope names another cluster
        "version",  # another protocol version
        "decode",  # not msgpack, or not the envelope's shape
        "type",  # unknown message type or fields of the wrong type or range
        "replay",  # a frame we have already accepted, or too old to tell
        "insecure",  # an unsealed frame reached a sealed node, or the reverse
    )

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown BadFrame reason {reason!r}")
        super().__init__(f"bad frame ({reason})" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.detail = detail


# --- secrets -----------------------------------------------------------------------------


class SecretUnreadable(RemoteError):
    """A sealed secret cannot be opened here; `reason` is one of `REASONS` (never the value)."""

    REASONS = (
        "unknown_key",  # sealed with a cluster key that is not (or no longer) in our keyring
        "auth",  # AEAD tag does not verify: tampered, moved to another name, or a wrong key
        "format",  # not a sealed secret of a version we know
    )

    def __init__(self, name: str, reason: str, detail: str = "") -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown SecretUnreadable reason {reason!r}")
        super().__init__(
            f"secret {name!r} cannot be opened ({reason})" + (f": {detail}" if detail else "")
        )
        self.name = name
        self.reason = reason


# --- ownership and commits ---------------------------------------------------------------


class NotOwner(LocalError):
    """A write to a session this node does not own (reads are always allowed)."""

    def __init__(self, session_id: str, owner: str | None, epoch: int) -> None:
        super().__init__(f"session {session_id!r} is owned by {owner!r} at epoch {epoch}")
        self.session_id = session_id
        self.owner = owner
        self.epoch = epoch


class Fenced(NotOwner):
    """This node owned the session but another node took it over with a higher epoch."""


class CommitTimeout(StatemeshError, TimeoutError):
    """The requested replication level was not reached in time; nothing is rolled back."""


class Closed(LocalError):
    """The mesh node or session was used after it was closed."""
