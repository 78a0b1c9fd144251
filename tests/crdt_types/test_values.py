"""Tests for crdt_types.values: the allow-list, the error paths, and the number round trip."""

from __future__ import annotations

import math

import pytest
from pycrdt import Doc, Map

from crdt_types.errors import InvalidValue, LocalError
from crdt_types.values import (
    MAX_DEPTH,
    MAX_INT,
    check_name,
    check_value,
    from_stored,
    to_stored,
)

GOOD = [
    None,
    True,
    False,
    0,
    -1,
    MAX_INT,
    -MAX_INT,
    1.5,
    -0.0,
    "",
    "héllo ✓",
    [],
    (1, "a"),
    {},
    {"a": [1, {"b": None}], "c": 2.5},
]


@pytest.mark.parametrize("value", GOOD, ids=repr)
def test_json_values_are_accepted(value):
    check_value(value)


@pytest.mark.parametrize(
    ("value", "path_fragment"),
    [
        (2**64, "$"),
        (MAX_INT + 1, "$"),
        (-MAX_INT - 1, "$"),
        (math.nan, "$"),
        (math.inf, "$"),
        (-math.inf, "$"),
        ({1: "x"}, "$"),
        ({"a": {("t",): 1}}, "$.a"),
        ({1, 2}, "$"),
        (b"bytes", "$"),
        (bytearray(b"x"), "$"),
        (object(), "$"),
        ({"a": [1, 2, {"deep": 2**64}]}, "$.a[2].deep"),
        ({"odd key": math.nan}, "$['odd key']"),
        ("\ud800", "$"),
        (complex(1, 2), "$"),
    ],
    ids=repr,
)
def test_invalid_values_raise_with_the_path(value, path_fragment):
    with pytest.raises(InvalidValue) as info:
        check_value(value)
    assert str(info.value).startswith(path_fragment)
    # The family a caller can catch: ValueError and our LocalError.
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LocalError)


def test_depth_is_bounded():
    value: list = []
    inner = value
    for _ in range(MAX_DEPTH):
        inner.append([])
        inner = inner[0]
    check_value(value)
    inner.append([])
    with pytest.raises(InvalidValue, match="nested deeper"):
        check_value(value)


def test_self_reference_is_rejected_not_recursed_forever():
    value: list = []
    value.append(value)
    with pytest.raises(InvalidValue):
        check_value(value)


def test_size_limit_counts_the_encoded_size():
    check_value("x" * 90, max_bytes=100)
    with pytest.raises(InvalidValue, match="too large"):
        check_value("x" * 101, max_bytes=100)
    # Multi-byte characters count as their UTF-8 length.
    with pytest.raises(InvalidValue, match="too large"):
        check_value("✓" * 40, max_bytes=100)
    with pytest.raises(InvalidValue, match="too large"):
        check_value(["ab"] * 40, max_bytes=100)
    with pytest.raises(InvalidValue, match="too large"):
        check_value({f"k{i}": 1 for i in range(20)}, max_bytes=100)


def test_to_stored_returns_plain_copies():
    class MyInt(int):
        pass

    src = {"t": (1, 2), "i": MyInt(3), "n": {"x": [True]}}
    out = to_stored(src)
    assert out == {"t": [1, 2], "i": 3, "n": {"x": [True]}}
    assert type(out["i"]) is int
    assert out["n"] is not src["n"]


def test_round_trip_through_pycrdt_gives_ints_back():
    doc = Doc()
    m = doc.get("m", type=Map)
    value = {"n": 7, "f": 2.5, "big": MAX_INT, "l": [1, -2, 0.5], "s": "x", "b": False}
    m["v"] = to_stored(value)
    read = m["v"]
    assert read["n"] == 7.0 and isinstance(read["n"], float)  # what pycrdt does
    back = from_stored(read)
    assert back == value
    assert type(back["n"]) is int and type(back["f"]) is float and type(back["b"]) is bool


def test_check_name():
    assert check_name("abc", "name") == "abc"
    for bad in ["", "x" * 300, 5, None, "\udfff"]:
        with pytest.raises(InvalidValue):
            check_name(bad, "name")
