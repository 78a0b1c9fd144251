"""Tests for crdt_types.vv: state vector decoding and version vector algebra."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from crdt_types.errors import InvalidValue
from crdt_types.vv import (
    Order,
    VersionVector,
    decode_state_vector,
    encode_state_vector,
    read_varuint,
    write_varuint,
)

clocks_st = st.dictionaries(st.integers(0, 2**53), st.integers(0, 2**40), max_size=8)


def _doc(client_id: int, writes: int) -> Doc:
    doc = Doc(client_id=client_id)
    m = doc.get("m", type=Map)
    for i in range(writes):
        m[str(i)] = i
    return doc


def test_decodes_what_pycrdt_encodes():
    a, b = _doc(11, 3), _doc(2**40 + 7, 5)
    a.apply_update(b.get_update())
    assert decode_state_vector(a.get_state()) == {11: 3, 2**40 + 7: 5}
    assert VersionVector.from_doc(a).as_dict() == {11: 3, 2**40 + 7: 5}


def test_encoded_vector_is_usable_by_pycrdt():
    a, b = _doc(1, 4), _doc(2, 0)
    vv = VersionVector.from_dict({1: 2})
    b.apply_update(a.get_update(vv.to_state_vector()))
    # Only the two ops after clock 2 were sent, so b cannot integrate them yet.
    assert VersionVector.from_doc(b).get(1) == 0
    b.apply_update(a.get_update(b.get_state()))
    assert VersionVector.from_doc(b) == VersionVector.from_doc(a)


@given(clocks_st)
@settings(derandomize=True, max_examples=200, deadline=None)
def test_encode_decode_round_trip(clocks):
    expected = {c: k for c, k in clocks.items() if k}
    assert decode_state_vector(encode_state_vector(clocks)) == expected


@given(st.integers(0, 2**64 - 1))
@settings(derandomize=True, max_examples=200, deadline=None)
def test_varuint_round_trip(n):
    out = bytearray()
    write_varuint(out, n)
    assert read_varuint(out, 0) == (n, len(out))


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no count
        b"\x01",  # count but no entries
        b"\x01\x05",  # entry without a clock
        b"\x01\x05\x80",  # truncated varuint
        b"\x01\x05\x01\x00",  # trailing byte
        b"\x02\x05\x01\x05\x02",  # client twice
        b"\xff\xff\xff\xff\x0f",  # absurd count
        b"\x01" + b"\xff" * 11 + b"\x01" + b"\x01",  # client over 64 bits
    ],
    ids=repr,
)
def test_malformed_state_vectors_raise(data):
    with pytest.raises(InvalidValue):
        decode_state_vector(data)


def test_non_bytes_raise():
    with pytest.raises(InvalidValue):
        decode_state_vector("\x00")  # type: ignore[arg-type]


def test_normalisation_ignores_order_and_zero_clocks():
    a = VersionVector(((2, 5), (1, 3), (9, 0)))
    b = VersionVector.from_dict({1: 3, 2: 5})
    assert a == b and hash(a) == hash(b)
    assert a.entries == ((1, 3), (2, 5))
    with pytest.raises(InvalidValue):
        VersionVector(((1, 2), (1, 3)))
    with pytest.raises(InvalidValue):
        VersionVector(((-1, 2),))


def test_compare_cases():
    base = VersionVector.from_dict({1: 3, 2: 5})
    assert base.compare(base) is Order.EQUAL
    assert base.compare(VersionVector.from_dict({1: 3, 2: 6})) is Order.BEFORE
    assert base.compare(VersionVector.from_dict({1: 3})) is Order.AFTER
    assert base.compare(VersionVector.from_dict({1: 4, 2: 4})) is Order.CONCURRENT
    assert base.compare(VersionVector.from_dict({3: 1})) is Order.CONCURRENT
    assert VersionVector().compare(base) is Order.BEFORE


def test_missing_from_and_total():
    mine = VersionVector.from_dict({1: 3, 2: 5})
    theirs = VersionVector.from_dict({1: 7, 2: 1, 3: 2})
    assert mine.missing_from(theirs) == {1: (7, 3), 3: (2, 0)}
    assert theirs.missing_from(mine) == {2: (5, 1)}
    assert mine.total() == 8
    assert VersionVector().total() == 0


@given(clocks_st, clocks_st, clocks_st)
@settings(derandomize=True, max_examples=200, deadline=None)
def test_algebra_laws(x, y, z):
    a, b, c = (VersionVector.from_dict(d) for d in (x, y, z))
    m = a.merge(b)
    assert m == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert m.covers(a) and m.covers(b)
    assert a.covers(b) == (a.compare(b) in (Order.EQUAL, Order.AFTER))
    assert (a.compare(b) is Order.EQUAL) == (a == b)
    flip = {Order.BEFORE: Order.AFTER, Order.AFTER: Order.BEFORE}
    assert b.compare(a) is flip.get(a.compare(b), a.compare(b))
    # Merging in exactly what is missing makes a cover b.
    patched = a.as_dict()
    for client, (theirs, _ours) in a.missing_from(b).items():
        patched[client] = theirs
    assert VersionVector.from_dict(patched).covers(b)


def test_seeded_docs_compare_like_their_vectors():
    seed = 1234
    rng = random.Random(seed)
    a, b = Doc(client_id=1), Doc(client_id=2)
    ma, mb = a.get("m", type=Map), b.get("m", type=Map)
    for i in range(20):
        (ma if rng.random() < 0.5 else mb)[str(i)] = i
    va, vb = VersionVector.from_doc(a), VersionVector.from_doc(b)
    assert va.compare(vb) is Order.CONCURRENT, seed
    b.apply_update(a.get_update(b.get_state()))
    assert VersionVector.from_doc(b).compare(va) is Order.AFTER, seed
    a.apply_update(b.get_update(a.get_state()))
    assert VersionVector.from_doc(a).compare(VersionVector.from_doc(b)) is Order.EQUAL, seed
