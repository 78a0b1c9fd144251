"""Cluster state: versioned configuration and a place for sealed secrets.

One `cluster` document holds the settings every node shares, under dotted keys with a
schema per prefix:

    flags.NAME       bool            feature flags
    model.NAME       JSON scalar     model parameters (None, bool, number, str)
    prompt.version   str             the prompt version in force
    tools.NAME       URL str         tool endpoints (scheme://host...)
    slo.NAME         number          SLO thresholds

Each key carries a version. A set writes the highest version this replica knows plus
one, and concurrent sets resolve deterministically to the highest (version, writer) on
every replica (see `crdt_types.docs.MaxEntries`), not to whichever client id Y.Map would
favour. Versions are therefore monotonic per key as seen by any one replica.

`secrets` maps a name to an opaque sealed blob (bytes or str); sealing is the caller's
business, this layer only stores what it is given. Secrets are plain last-writer-wins.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pycrdt import Doc, Map

from crdt_types.docs import Entry, MaxEntries, parse_entries
from crdt_types.errors import InvalidValue, SchemaError
from crdt_types.values import check_name, check_value, from_stored

__all__ = ["ClusterState", "MAX_SECRET_BYTES", "check_setting", "validate"]

CONFIG_ROOT = "config"
SECRETS_ROOT = "secrets"
ROOTS = {CONFIG_ROOT: Map, SECRETS_ROOT: Map}
MAX_SECRET_BYTES = 64 * 1024
_MAX_SETTING_BYTES = 64 * 1024
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def _check_flag(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidValue(f"{key}: a flag must be a bool, got {type(value).__name__}")


def _check_scalar(key: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool | int | float | str):
        raise InvalidValue(
            f"{key}: a model parameter must be a JSON scalar, got {type(value).__name__}"
        )
    check_value(value, max_bytes=_MAX_SETTING_BYTES, path=key)


def _check_str(key: str, value: Any) -> None:
    if not isinstance(value, str):
        raise InvalidValue(f"{key}: must be a str, got {type(value).__name__}")
    check_name(value, key, max_len=256)


def _check_url(key: str, value: Any) -> None:
    if not isinstance(value, str):
        raise InvalidValue(f"{key}: a tool endpoint must be a URL str, got {type(value).__name__}")
    check_name(value, key, max_len=2048)
    parts = urlsplit(value)
    if not _SCHEME.fullmatch(parts.scheme) or not parts.netloc or any(c.isspace() for c in value):
        raise InvalidValue(f"{key}: {value!r} is not a URL like scheme://host[:port]/path")


def _check_number(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValue(f"{key}: an SLO threshold must be a number, got {type(value).__name__}")
    _check_scalar(key, value)


_PREFIXES = {
    "flags": _check_flag,
    "model": _check_scalar,
    "tools": _check_url,
    "slo": _check_number,
}


def check_setting(key: Any, value: Any) -> None:
    """Raise `InvalidValue` unless `value` is valid for the dotted setting `key`."""
    if not isinstance(key, str):
        raise InvalidValue(f"setting key must be a str, not {type(key).__name__}")
    if key == "prompt.version":
        _check_str(key, value)
        return
    prefix, dot, name = key.partition(".")
    if not dot or prefix not in _PREFIXES:
        raise InvalidValue(
            f"unknown setting {key!r}: keys are flags.NAME, model.NAME, prompt.version, "
            "tools.NAME or slo.NAME"
        )
    if not _NAME.fullmatch(name):
        raise InvalidValue(f"setting {key!r}: NAME must match {_NAME.pattern}")
    _PREFIXES[prefix](key, value)


def _check_secret(name: Any, blob: Any) -> None:
    check_name(name, "secret name", max_len=128)
    if isinstance(blob, bytearray | memoryview):
        blob = bytes(blob)
    if isinstance(blob, str):
        size = len(blob.encode("utf-8", "surrogatepass"))
        check_name(blob, f"secret {name!r}", max_len=MAX_SECRET_BYTES)
    elif isinstance(blob, bytes):
        size = len(blob)
    else:
        raise InvalidValue(f"secret {name!r} must be bytes or str, not {type(blob).__name__}")
    if not 0 < size <= MAX_SECRET_BYTES:
        raise InvalidValue(f"secret {name!r} must be 1..{MAX_SECRET_BYTES} bytes, got {size}")


class ClusterState:
    """Typed view of the `cluster` document: versioned settings and sealed secrets."""

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self._config = MaxEntries(doc, CONFIG_ROOT)
        self._secrets = doc.get(SECRETS_ROOT, type=Map)

    # --- settings -------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The current value of setting `key`, or `default` if it was never set."""
        entry = self._config.winner(key)
        return default if entry is None else entry.value

    def version(self, key: str) -> int:
        """The version of the current value of `key` (0 if never set)."""
        entry = self._config.winner(key)
        return 0 if entry is None else entry.version

    def entry(self, key: str) -> Entry | None:
        """The winning write for `key`: value, version and who wrote it."""
        return self._config.winner(key)

    def set(self, key: str, value: Any, *, by: str) -> int:
        """Set `key` to `value` as node `by`; return the new version (one transaction)."""
        check_setting(key, value)
        check_name(by, "writer node id", max_len=256)
        version = self.version(key) + 1
        self._config.write(Entry(key, version, by, value))
        return version

    def items(self) -> dict[str, Any]:
        """{key: value} of every setting, sorted by key."""
        return {k: e.value for k, e in sorted(self._config.winners().items())}

    # --- secrets --------------------------------------------------------------------

    def set_secret(self, name: str, blob: bytes | str) -> None:
        """Store an opaque sealed blob under `name` (replaces any previous one)."""
        _check_secret(name, blob)
        self._secrets[name] = bytes(blob) if not isinstance(blob, str) else blob

    def get_secret(self, name: str) -> bytes | str | None:
        """The sealed blob stored under `name`, or None."""
        blob = self._secrets.get(name)
        return bytes(blob) if isinstance(blob, bytearray | bytes) else blob

    def delete_secret(self, name: str) -> bool:
        """Remove secret `name`; return whether it existed."""
        if name not in self._secrets:
            return False
        del self._secrets[name]
        return True

    def secret_names(self) -> list[str]:
        """Names of the stored secrets, sorted."""
        return sorted(self._secrets.keys())

    def close(self) -> None:
        """Stop observing the document; the view still works, uncached."""
        self._config.close()

    def to_dict(self) -> dict[str, Any]:
        """Plain data: settings with version and writer, and the secrets."""
        config = {
            k: {"value": e.value, "version": e.version, "by": e.writer}
            for k, e in sorted(self._config.winners().items())
        }
        secrets = {n: self.get_secret(n) for n in self.secret_names()}
        return {"config": config, "secrets": secrets}


def validate(doc: Doc) -> None:
    """Raise `SchemaError` naming the first field of a cluster document that is invalid."""
    for entry in parse_entries(doc, CONFIG_ROOT):
        try:
            check_setting(entry.name, entry.value)
        except InvalidValue as exc:
            raise SchemaError(f"{CONFIG_ROOT}[{entry.name!r}]", str(exc)) from None
    secrets = doc.get(SECRETS_ROOT, type=Map)
    for name, blob in secrets.items():
        try:
            _check_secret(name, from_stored(blob))
        except InvalidValue as exc:
            raise SchemaError(f"{SECRETS_ROOT}[{name!r}]", str(exc)) from None
