"""Checking and normalising the plain values that go into replicated documents.

Everything an application stores in statemesh state passes through `check_value` (or
`to_stored`, which checks and returns a plain copy) before it reaches pycrdt. pycrdt accepts
more than it can faithfully replicate: integers beyond 2**53 lose precision on peers and
2**64 makes the Rust side panic with a `BaseException` that `except Exception` does not
catch. So the rule here is an allow-list of JSON values:

* None, bool, str (valid UTF-8, so no lone surrogates);
* int with abs(value) <= 2**53 (larger ids and counters must be stored as strings);
* finite float;
* list or tuple of values; dict with str keys.

Nesting is bounded (`MAX_DEPTH`) and so is the encoded size (`max_bytes`, measured as
the JSON encoding), which also catches self-referencing containers. The error is
`InvalidValue` and its message names the offending path (`$.tools[3].args`), so a caller
can find the field without a debugger.

Numbers and the round trip: pycrdt stores every number as a 64-bit float, so an int
written comes back as a float (7 -> 7.0). `from_stored` undoes that for JSON data: an
integral float within 2**53 is returned as an int. This follows JSON, where 7 and 7.0 are
the same number; the typed layer then returns ints where its schema says int.
"""

from __future__ import annotations

import math
from typing import Any

from crdt_types.errors import InvalidValue

__all__ = [
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_VALUE_BYTES",
    "check_value",
    "check_name",
    "from_stored",
    "to_stored",
]

MAX_INT = 2**53
MAX_DEPTH = 32
# One value (one message, one memory entry) is at most this much JSON. Big enough for a
# long LLM turn; small enough that a runaway value cannot swamp every gossip diff.
MAX_VALUE_BYTES = 1 << 20


def check_value(value: Any, *, max_bytes: int = MAX_VALUE_BYTES, path: str = "$") -> None:
    """Raise `InvalidValue` naming the path unless `value` is a storable JSON value."""
    _walk(value, path, 0, [max_bytes], copy=False)


def to_stored(value: Any, *, max_bytes: int = MAX_VALUE_BYTES, path: str = "$") -> Any:
    """Check `value` and return a plain copy (tuples as lists, subclasses as base types)."""
    return _walk(value, path, 0, [max_bytes], copy=True)


def from_stored(value: Any) -> Any:
    """Turn a value read from pycrdt back into plain JSON data (integral floats as ints)."""
    if isinstance(value, float):
        if value.is_integer() and -MAX_INT <= value <= MAX_INT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: from_stored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [from_stored(v) for v in value]
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def check_name(name: Any, what: str, *, max_len: int = 256) -> str:
    """Raise `InvalidValue` unless `name` is a non-empty str of at most `max_len` chars."""
    if not isinstance(name, str):
        raise InvalidValue(f"{what} must be a str, not {type(name).__name__}")
    if not name or len(name) > max_len:
        raise InvalidValue(f"{what} must be 1..{max_len} characters, got {len(name)}")
    _check_utf8(name, what)
    return name


def _check_utf8(text: str, path: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidValue(f"{path}: string is not valid UTF-8 ({exc.reason})") from None


def _spend(budget: list[int], n: int, path: str) -> None:
    # The budget is shared by the whole walk so an oversized value fails as soon as it
    # crosses the limit, without walking (or copying) the rest of it.
    budget[0] -= n
    if budget[0] < 0:
        raise InvalidValue(f"{path}: value too large (encoded size over the limit)")


def _walk(value: Any, path: str, depth: int, budget: list[int], *, copy: bool) -> Any:
    if depth > MAX_DEPTH:
        raise InvalidValue(f"{path}: nested deeper than {MAX_DEPTH} levels")
    # bool before int: bool is a subclass of int.
    if value is None or isinstance(value, bool):
        _spend(budget, 5, path)
        return value if not copy or value is None else bool(value)
    if isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise InvalidValue(
                f"{path}: integer {value} outside +/-2**53 (store big numbers as str)"
            )
        _spend(budget, 20, path)
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue(f"{path}: float {value!r} is not finite")
        _spend(budget, 24, path)
        return float(value)
    if isinstance(value, str):
        _spend(budget, _check_utf8(value, path) + 2, path)
        return str(value) if copy else value
    if isinstance(value, list | tuple):
        _spend(budget, 2, path)
        out: list[Any] = []
        for i, item in enumerate(value):
            item = _walk(item, f"{path}[{i}]", depth + 1, budget, copy=copy)
            if copy:
                out.append(item)
            _spend(budget, 1, path)
        return out if copy else value
    if isinstance(value, dict):
        _spend(budget, 2, path)
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidValue(
                    f"{path}: dict key {key!r} is a {type(key).__name__}, keys must be str"
                )
            key_path = f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"
            _spend(budget, _check_utf8(key, key_path) + 4, key_path)
            item = _walk(item, key_path, depth + 1, budget, copy=copy)
            if copy:
                result[str(key)] = item
        return result if copy else value
    raise InvalidValue(
        f"{path}: {type(value).__name__} is not a JSON value "
        "(allowed: None, bool, int, float, str, list, tuple, dict)"
    )
