"""Tests for crdt_types.fingerprint: equal on converged replicas, different when not."""

from __future__ import annotations

import random

import pytest
from pycrdt import Array, Doc, Map, Text

from crdt_types.errors import InvalidValue
from crdt_types.fingerprint import decode_delete_set, fingerprint, fingerprint_hex
from crdt_types.vv import write_varuint


def _writer_updates(seed: int) -> list[bytes]:
    """Three writers edit one document; return every update in causal order per writer."""
    rng = random.Random(seed)
    updates: list[bytes] = []
    writers = [Doc(client_id=100 + i) for i in range(3)]
    for w in writers:
        w.observe(lambda event: updates.append(event.update))
    for step in range(60):
        w = rng.choice(writers)
        m, a, t = w.get("m", type=Map), w.get("a", type=Array), w.get("t", type=Text)
        op = rng.randrange(5)
        if op == 0:
            m[f"k{rng.randrange(6)}"] = step
        elif op == 1 and len(m):
            del m[rng.choice(list(m.keys()))]
        elif op == 2:
            a.append(step)
        elif op == 3 and len(a):
            del a[rng.randrange(len(a))]
        else:
            t += f"{step}."
        # Occasionally sync two writers so the edits build on each other.
        if rng.random() < 0.3:
            x, y = rng.sample(writers, 2)
            y.apply_update(x.get_update(y.get_state()))
    return updates


def _replica(updates: list[bytes], order: list[int], *, skip_gc: bool) -> Doc:
    doc = Doc(skip_gc=skip_gc)
    for i in order:
        doc.apply_update(updates[i])
    return doc


def _full(updates: list[bytes]) -> Doc:
    return _replica(updates, list(range(len(updates))), skip_gc=False)


@pytest.mark.parametrize("seed", range(6))
def test_equal_over_delivery_orders_and_gc(seed):
    updates = _writer_updates(seed)
    reference = _full(updates)
    expected = fingerprint(reference)
    rng = random.Random(seed)
    for trial in range(8):
        order = list(range(len(updates)))
        rng.shuffle(order)
        replica = _replica(updates, order, skip_gc=bool(trial % 2))
        # Out-of-order delivery can leave holes in this Yrs build (field notes); one
        # state-vector resync is what anti-entropy does, after which they must agree.
        replica.apply_update(reference.get_update(replica.get_state()))
        assert fingerprint(replica) == expected, (seed, trial)
        assert replica.get("m", type=Map).to_py() == reference.get("m", type=Map).to_py()


def test_missing_delete_changes_fingerprint():
    a = Doc(client_id=1)
    m = a.get("m", type=Map)
    m["x"] = 1
    b = Doc(client_id=2)
    b.apply_update(a.get_update())
    assert fingerprint(a) == fingerprint(b)
    before = a.get_state()
    del m["x"]
    # A pure delete does not advance the state vector, but the fingerprint sees it.
    assert a.get_state() == before
    assert fingerprint(a) != fingerprint(b)
    b.apply_update(a.get_update(b.get_state()))
    assert fingerprint(a) == fingerprint(b)


def test_missing_insert_changes_fingerprint_and_hex_matches():
    a, b = Doc(client_id=1), Doc(client_id=2)
    a.get("a", type=Array).append(1)
    b.apply_update(a.get_update())
    a.get("a", type=Array).append(2)
    assert fingerprint(a) != fingerprint(b)
    assert len(fingerprint(a)) == 32
    assert fingerprint_hex(a) == fingerprint(a).hex()


def test_client_ids_matter_not_only_content():
    # Same visible content written by different clients is a different history; the
    # fingerprint is about replicas of one document, so it must tell them apart.
    a, b = Doc(client_id=1), Doc(client_id=2)
    a.get("m", type=Map)["x"] = 1
    b.get("m", type=Map)["x"] = 1
    assert fingerprint(a) != fingerprint(b)


def _ds_update(clients: list[tuple[int, list[tuple[int, int]]]]) -> bytes:
    out = bytearray()
    write_varuint(out, 0)
    write_varuint(out, len(clients))
    for client, ranges in clients:
        write_varuint(out, client)
        write_varuint(out, len(ranges))
        for clock, length in ranges:
            write_varuint(out, clock)
            write_varuint(out, length)
    return bytes(out)


def test_delete_set_is_sorted_and_merged():
    raw = _ds_update([(7, [(10, 2), (0, 3), (3, 1), (11, 4)]), (300, [(5, 0)]), (7, [(20, 1)])])
    assert decode_delete_set(raw) == {7: [(0, 4), (10, 5), (20, 1)]}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x01",  # a struct section: not an update relative to our own state
        b"\x00",  # no delete set section
        b"\x00\x01\x07",  # client without range count
        b"\x00\x01\x07\x02\x00\x01",  # two ranges promised, one given
        b"\x00\x00\x05",  # trailing data
        b"\x00\x01\x07\x01\x80",  # truncated varuint
    ],
    ids=repr,
)
def test_malformed_delete_sets_raise(data):
    with pytest.raises(InvalidValue):
        decode_delete_set(data)
