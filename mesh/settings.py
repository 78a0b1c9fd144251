"""Peer settings from a TOML file, the environment and flags; and logging that hides secrets.

`statemesh peer --config FILE` reads the same settings as its flags from a TOML file.
Three layers, each overriding the one before it, key by key:

    built-in defaults  <  config file  <  STATEMESH_* environment  <  command-line flags

`resolve_settings` merges them into a frozen `PeerSettings` and checks every value, so a
typo fails before anything starts, with one line that names where the bad value came
from (``config peer.toml: unknown key 'lisen' (did you mean 'listen'?)``). Every error is
a `LocalError`; the CLI prints it and exits 2.

Rules, in the order they apply:

* File: a flat TOML table; keys are the flag names with ``_`` or ``-`` (``key_file`` or
  ``key-file``). Relative paths (``data``, ``key_file``) are relative to the file's
  directory, so a file and its key can move together. At most 1 MiB.
* Environment: ``STATEMESH_<KEY>`` (``STATEMESH_KEY_FILE``); lists are comma-separated,
  bools are 1/0, true/false, yes/no, on/off. An unknown ``STATEMESH_*`` variable is an
  error (a typo must not silently leave the default in force). ``STATEMESH_CONFIG`` names
  the file when no ``--config`` is given.
* Flags: a dict such as ``vars(argparse_namespace)``. A flag is "not given" when it is
  missing, None, an empty list, or False for the on-switches ``insecure`` and ``no_mdns``
  (argparse cannot tell an absent ``store_true`` flag from a false one), so argparse
  defaults must be None for the file and environment to show through. Keys that are not
  settings (``func``, ``command``, ...) are ignored: they come from our own parser.
* ``http`` given as a bare port (``8080`` or ``:8080``) binds to loopback
  (``127.0.0.1:8080``); anything else must name the address to bind.
* ``no_mdns = true`` is accepted everywhere as the spelling of ``mdns = false``; giving
  both in one layer is an error.
* Security by default: exactly one of ``key_file`` and ``insecure = true`` must result.
  A layer that sets one of them clears the other one from the layers below, so a flag
  ``--insecure`` overrides a file's ``key_file`` instead of clashing with it.

Logging (`configure_logging`): human-readable lines by default, JSON lines with
``log_format = "json"``. Every record goes through `RedactingFilter`: fields whose name
says secret (``secret``, ``password``, ``token``, ``authorization``, ``api_key``, ...) are
replaced, and admin tokens, ``Bearer`` credentials and key file lines are masked in the
final text, exceptions included. Values from the vault must still never be passed to a
logger; this is the net under that rule, not a licence to break it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import math
import os
import re
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TextIO

from crdt_types.errors import LocalError
from gossip.config import PROFILES
from gossip.quorum import MAJORITY, POLICIES
from mesh.config import UNREADABLE_POLICIES
from mesh.transport import parse_address

__all__ = [
    "ENV_PREFIX",
    "LOG_FORMATS",
    "PeerSettings",
    "RedactingFilter",
    "configure_logging",
    "redact",
    "resolve_settings",
]

ENV_PREFIX = "STATEMESH_"
LOG_FORMATS = ("human", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MAX_CONFIG_BYTES = 1 << 20
_MAX_NAME_BYTES = 200  # node ids and cluster names travel in mDNS TXT records


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """Everything `statemesh peer` runs with, merged and checked (see the module docstring)."""

    node: str
    data: Path
    listen: str | None = None  # None: the CLI picks port 7946 on an mDNS interface
    advertise: str | None = None
    join: tuple[str, ...] = ()
    interface: tuple[str, ...] = ()  # empty: every interface (the CLI's default)
    mdns: bool = True
    cluster: str = "statemesh"
    key_file: Path | None = None
    insecure: bool = False
    http: str | None = None
    profile: str = "lan"
    split_brain: str = MAJORITY  # or "availability": see gossip.quorum
    log_format: str = "human"
    log_level: str = "info"
    seed: int | None = None
    commit_timeout: float = 10.0
    leave_timeout: float = 2.0
    ready_lag: float = 2.0  # /readyz: how far behind peers (seconds) still counts as ready
    on_unreadable_store: str = "refill"  # or "stop": see mesh.runtime.open_mesh

    def mesh_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `mesh.config.MeshConfig` (listen only when set: the CLI picks)."""
        kwargs: dict[str, Any] = {
            "node": self.node,
            "data_dir": self.data,
            "advertise": self.advertise,
            "seeds": list(self.join),
            "interfaces": list(self.interface) if self.mdns else [],
            "mdns": self.mdns,
            "cluster": self.cluster,
            "key": self.key_file,
            "insecure": self.insecure,
            "http": self.http,
            "profile": self.profile,
            "split_brain": self.split_brain,
            "seed": self.seed,
            "commit_timeout": self.commit_timeout,
            "leave_timeout": self.leave_timeout,
            "ready_lag": self.ready_lag,
            "on_unreadable_store": self.on_unreadable_store,
        }
        if self.listen is not None:
            kwargs["listen"] = self.listen
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (paths as str), for `--json` output and logs."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                str(value)
                if isinstance(value, Path)
                else list(value)
                if isinstance(value, tuple)
                else value
            )
        return out


# --- the schema: kind of every key ---------------------------------------------------------

_STR, _PATH, _ADDR, _ADDRS, _IPS, _BOOL, _INT, _SECONDS = (
    "str", "path", "address", "addresses", "ips", "bool", "int", "seconds",
)  # fmt: skip

_KINDS: dict[str, str] = {
    "node": _STR,
    "data": _PATH,
    "listen": _ADDR,
    "advertise": _ADDR,
    "join": _ADDRS,
    "interface": _IPS,
    "mdns": _BOOL,
    "no_mdns": _BOOL,
    "cluster": _STR,
    "key_file": _PATH,
    "insecure": _BOOL,
    "http": _ADDR,
    "profile": _STR,
    "split_brain": _STR,
    "log_format": _STR,
    "log_level": _STR,
    "seed": _INT,
    "commit_timeout": _SECONDS,
    "leave_timeout": _SECONDS,
    "ready_lag": _SECONDS,
    "on_unreadable_store": _STR,
}
_CHOICES = {
    "profile": tuple(sorted(PROFILES)),
    "split_brain": POLICIES,
    "on_unreadable_store": UNREADABLE_POLICIES,
    "log_format": LOG_FORMATS,
    "log_level": LOG_LEVELS,
}
_SWITCHES = ("insecure", "no_mdns")  # store_true flags: False means "not given"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class _Source:
    """Where a layer came from, for messages: ``config FILE``, ``environment``, ``flag``."""

    def __init__(self, label: str, spell: Any) -> None:
        self.label = label
        self.spell = spell  # key -> how the user wrote it (``--key-file``, ``STATEMESH_X``)

    def error(self, key: str, message: str) -> LocalError:
        return LocalError(f"{self.label}: {self.spell(key)}: {message}")


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(_KINDS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: Any) -> str:
    return {dict: "table", list: "array", str: "string", bool: "bool"}.get(
        type(value), type(value).__name__
    )


# --- checking one value ---------------------------------------------------------------------


def _check(src: _Source, key: str, value: Any, *, base: Path | None, from_env: bool) -> Any:
    """Return the typed, checked value of `key` or raise naming `src`."""
    kind = _KINDS[key]
    if from_env:
        value = _from_env_text(src, key, kind, value)
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise src.error(key, f"expected true or false, got {_type_name(value)}")
        return value
    if kind == _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise src.error(key, f"expected an integer, got {_type_name(value)}")
        return value
    if kind == _SECONDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise src.error(key, f"expected a number of seconds, got {_type_name(value)}")
        if not (math.isfinite(value) and value > 0):
            raise src.error(key, f"must be positive and finite, got {value!r}")
        return float(value)
    if kind == _PATH and isinstance(value, os.PathLike):
        value = os.fspath(value)  # a caller's Path is as good as the flag's str
    if kind in (_ADDRS, _IPS):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise src.error(key, f"expected an array of strings, got {_type_name(value)}")
        items = []
        for item in value:
            if not isinstance(item, str):
                raise src.error(key, f"expected an array of strings, found {_type_name(item)}")
            items.append(_address(src, key, item) if kind == _ADDRS else _ipv4(src, key, item))
        return tuple(items)
    if not isinstance(value, str):
        raise src.error(key, f"expected a string, got {_type_name(value)}")
    if not value or not value.isprintable() or value != value.strip():
        raise src.error(key, f"{value!r} must be non-empty, printable and unpadded")
    if kind == _PATH:
        path = Path(value).expanduser()
        return base / path if base is not None and not path.is_absolute() else path
    if kind == _ADDR:
        if key == "http" and value.lstrip(":").isdigit() and value.count(":") <= 1:
            # A bare port: the operations endpoints bind to loopback unless told otherwise.
            value = f"127.0.0.1:{value.lstrip(':')}"
        return _address(src, key, value, port_zero=True)
    if key in ("node", "cluster") and len(value.encode()) > _MAX_NAME_BYTES:
        raise src.error(key, f"must be at most {_MAX_NAME_BYTES} bytes")
    choices = _CHOICES.get(key)
    if choices is not None:
        value = value.lower() if key == "log_level" else value
        if value not in choices:
            raise src.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def _from_env_text(src: _Source, key: str, kind: str, text: str) -> Any:
    if kind == _BOOL:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise src.error(
            key, f"expected one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}, got {text!r}"
        )
    if kind in (_ADDRS, _IPS):
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind == _INT:
        try:
            return int(text.strip())
        except ValueError:
            raise src.error(key, f"expected an integer, got {text!r}") from None
    if kind == _SECONDS:
        try:
            return float(text.strip())
        except ValueError:
            raise src.error(key, f"expected a number of seconds, got {text!r}") from None
    return text


def _address(src: _Source, key: str, value: str, *, port_zero: bool = False) -> str:
    try:
        host, port = parse_address(value)
        ipaddress.ip_address(host)
    except (LocalError, ValueError):
        raise src.error(key, f"{value!r} is not a numeric 'host:port' address") from None
    if port == 0 and not port_zero:
        raise src.error(key, f"{value!r}: port 0 is not an address peers can reach")
    return value


def _ipv4(src: _Source, key: str, value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise src.error(key, f"{value!r} is not an IPv4 address") from None
    return value


# --- the three layers ---------------------------------------------------------------------


def _layer(src: _Source, items: Mapping[str, Any], *, base: Path | None, from_env: bool) -> dict:
    """Check one layer's raw {canonical key: value} and fold `no_mdns` into `mdns`."""
    out = {k: _check(src, k, v, base=base, from_env=from_env) for k, v in items.items()}
    if out.get("insecure") is True and "key_file" in out:
        raise src.error("insecure", "given together with key_file; choose one")
    if "no_mdns" in out:
        if "mdns" in out:
            raise src.error("no_mdns", "given together with mdns; give one of them")
        out["mdns"] = not out.pop("no_mdns")
    return out


def _read_file(path: Path) -> tuple[_Source, dict[str, Any]]:
    src = _Source(f"config {path}", lambda k: repr(k))
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise LocalError(f"config {path}: no such file") from None
    except IsADirectoryError:
        raise LocalError(f"config {path}: is a directory, not a file") from None
    except OSError as exc:
        raise LocalError(f"config {path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise LocalError(f"config {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise LocalError(f"config {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise LocalError(f"config {path}: not valid TOML: {exc}") from None
    raw: dict[str, Any] = {}
    for written, value in table.items():
        key = written.replace("-", "_")
        if key not in _KINDS:
            raise LocalError(f"config {path}: unknown key {written!r}{_suggest(key)}")
        if key in raw:
            raise LocalError(f"config {path}: {written!r} given twice (as - and _)")
        raw[key] = value
    return src, raw


def _read_env(env: Mapping[str, str]) -> tuple[_Source, dict[str, Any]]:
    src = _Source("environment", lambda k: ENV_PREFIX + k.upper())
    raw: dict[str, Any] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _KINDS:
            raise LocalError(f"environment: unknown variable {name}{_suggest(key)}")
        raw[key] = text
    return src, raw


def _read_flags(flags: Mapping[str, Any]) -> tuple[_Source, dict[str, Any]]:
    src = _Source("flag", lambda k: "--" + k.replace("_", "-"))
    raw: dict[str, Any] = {}
    for key, value in flags.items():
        if key not in _KINDS or value is None:
            continue
        if key in _SWITCHES and value is False:
            continue
        if key in ("join", "interface") and isinstance(value, list | tuple) and not value:
            continue
        if key == "mdns" and flags.get("no_mdns") is True:
            continue  # argparse pairs: --no-mdns wins over a default mdns=True
        raw[key] = value
    return src, raw


def resolve_settings(
    flags: Mapping[str, Any], env: Mapping[str, str], config_file: Path | str | None
) -> PeerSettings:
    """Merge defaults < config file < STATEMESH_* env < flags into checked `PeerSettings`."""
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = env[ENV_PREFIX + "CONFIG"]
    layers: list[dict[str, Any]] = []
    if config_file is not None:
        path = Path(config_file).expanduser()
        src, raw = _read_file(path)
        layers.append(_layer(src, raw, base=path.parent, from_env=False))
    for src, raw in (_read_env(env), _read_flags(flags)):
        layers.append(_layer(src, raw, base=None, from_env=src.label == "environment"))
    merged: dict[str, Any] = {}
    for layer in layers:
        # A layer that picks a key mode replaces the other mode from the layers below it.
        if layer.get("insecure") is True:
            merged.pop("key_file", None)
        if "key_file" in layer and layer.get("insecure") is not True:
            merged.pop("insecure", None)
        merged.update(layer)
    for key in ("node", "data"):
        if key not in merged:
            raise LocalError(
                f"{key} is required: pass --{key}, set {ENV_PREFIX}{key.upper()}, "
                f"or put {key} = ... in the config file"
            )
    if merged.get("insecure") and merged.get("key_file") is not None:
        raise LocalError("key_file and insecure = true exclude each other; choose one")
    if not merged.get("insecure") and merged.get("key_file") is None:
        raise LocalError(
            "no cluster key: set key_file (create one with `statemesh keygen --out FILE`) "
            "or insecure = true"
        )
    if (
        merged.get("listen")
        and merged.get("advertise") is None
        and ipaddress.ip_address(parse_address(merged["listen"])[0]).is_unspecified
    ):
        raise LocalError(
            f"listen {merged['listen']!r} is a wildcard: set advertise to the address peers use"
        )
    return PeerSettings(**merged)


# --- logging --------------------------------------------------------------------------------

REDACTED = "[REDACTED]"
_SECRET_FIELD = re.compile(
    r"secret|passw|token|authori[sz]ation|credential|api_?key|private_?key|key_material|cookie",
    re.IGNORECASE,
)
_SECRET_TEXT = (
    (re.compile(r"smadm1t?\.[0-9a-fA-F]{8}\.[0-9A-Za-z.]+"), "smadm1." + REDACTED),
    (re.compile(r"statemesh-key-v1:[0-9a-fA-F]+"), "statemesh-key-v1:" + REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
)
# Attributes every LogRecord has: never user data, never redacted, never echoed as extras.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def redact(text: str) -> str:
    """`text` with admin tokens, bearer credentials and key file lines masked."""
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Replaces secret-named extra fields of every record; the formatters mask the text."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in list(vars(record)):
            if name not in _RECORD_FIELDS and _SECRET_FIELD.search(name):
                setattr(record, name, REDACTED)
        if isinstance(record.args, Mapping):
            record.args = {
                k: REDACTED if isinstance(k, str) and _SECRET_FIELD.search(k) else v
                for k, v in record.args.items()
            }
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")
    }


def _utc(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


class _HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(
                f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in extras.items()
            )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            obj.setdefault(key, value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        # default=str: an extra that JSON cannot encode is written as its str(), not lost.
        return redact(json.dumps(obj, default=str, ensure_ascii=False))


def configure_logging(
    fmt: str = "human", level: str | int = "info", *, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record to `stream` (stderr) as `fmt` lines ("human" or "json")."""
    if fmt not in LOG_FORMATS:
        raise LocalError(f"log format must be one of {', '.join(LOG_FORMATS)}; got {fmt!r}")
    if isinstance(level, str):
        if level.lower() not in LOG_LEVELS:
            raise LocalError(f"log level must be one of {', '.join(LOG_LEVELS)}; got {level!r}")
        level = getattr(logging, level.upper())
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _HumanFormatter())
    # On the handler, not a logger: handler filters also see records propagated from
    # every child logger (statemesh.*, zeroconf, trio), logger filters do not.
    handler.addFilter(RedactingFilter())
    handler._statemesh = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_statemesh", False)]:
        root.removeHandler(old)  # calling twice replaces, never duplicates, the output
    root.addHandler(handler)
    root.setLevel(level)
    return handler
