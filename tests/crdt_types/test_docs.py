"""Tests for crdt_types.docs: document creation and the highest-entry-wins map."""

from __future__ import annotations

import random

import pytest
from pycrdt import Map

from crdt_types.docs import Entry, MaxEntries, entry_key, new_doc, parse_entries
from crdt_types.errors import InvalidValue, SchemaError


def _sync(a, b) -> None:
    b.apply_update(a.get_update(b.get_state()))
    a.apply_update(b.get_update(a.get_state()))


def test_new_doc_client_ids():
    assert new_doc(client_id=42).client_id == 42
    assert new_doc().client_id != new_doc().client_id
    for bad in (-1, 2**53, 1.5, True, "7"):
        with pytest.raises(InvalidValue):
            new_doc(client_id=bad)


def test_entry_key_is_unambiguous():
    assert entry_key("a,b", 1, "c") != entry_key("a", 1, "b,c")
    assert entry_key('x"]', 2, "y") == '["x\\"]",2,"y"]'


@pytest.mark.parametrize("high_client_writes_low_version", [True, False])
def test_highest_version_wins_whatever_the_client_ids(high_client_writes_low_version):
    # Y.Map would settle concurrent writes to one key by client id; entries must not.
    low, high = (2, 1) if high_client_writes_low_version else (1, 2)
    a, b = new_doc(client_id=low), new_doc(client_id=high)
    ea, eb = MaxEntries(a, "e"), MaxEntries(b, "e")
    ea.write(Entry("x", 5, "na", "five"))
    eb.write(Entry("x", 4, "nb", "four"))
    _sync(a, b)
    assert ea.winner("x") == eb.winner("x") == Entry("x", 5, "na", "five")


def test_equal_versions_tie_break_on_writer():
    a, b = new_doc(client_id=1), new_doc(client_id=2)
    ea, eb = MaxEntries(a, "e"), MaxEntries(b, "e")
    ea.write(Entry("x", 3, "zeta", 1))
    eb.write(Entry("x", 3, "alpha", 2))
    _sync(a, b)
    assert ea.winner("x").writer == eb.winner("x").writer == "zeta"


def test_write_prunes_superseded_entries_only():
    doc = new_doc()
    entries = MaxEntries(doc, "e")
    for v in range(1, 5):
        entries.write(Entry("x", v, "n", v))
    entries.write(Entry("y", 1, "n", None))
    assert sorted(doc.get("e", type=Map).keys()) == [entry_key("x", 4, "n"), entry_key("y", 1, "n")]
    assert entries.winners() == {"x": Entry("x", 4, "n", 4), "y": Entry("y", 1, "n", None)}


def test_index_follows_remote_updates():
    a, b = new_doc(), new_doc()
    ea, eb = MaxEntries(a, "e"), MaxEntries(b, "e")
    assert eb.winner("x") is None  # builds and caches an empty index
    ea.write(Entry("x", 1, "n", "v"))
    b.apply_update(a.get_update(b.get_state()))
    assert eb.winner("x") == Entry("x", 1, "n", "v")
    eb.close()


def test_invalid_value_leaves_the_map_unchanged():
    doc = new_doc()
    entries = MaxEntries(doc, "e")
    entries.write(Entry("x", 1, "n", 1))
    before = doc.get_update()
    with pytest.raises(InvalidValue):
        entries.write(Entry("x", 2, "n", 2**64))
    assert doc.get_update() == before
    assert entries.winner("x").version == 1


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("k", "not a map"),
        ("k", {"name": "x", "version": 1, "writer": "n"}),
        (entry_key("x", 1, "n"), {"name": "x", "version": 1.5, "writer": "n", "value": 1}),
        (entry_key("x", 1, "n"), {"name": 3, "version": 1, "writer": "n", "value": 1}),
        ("wrong-key", {"name": "x", "version": 1, "writer": "n", "value": 1}),
        (entry_key("x", 1, "n"), {"name": "x", "version": 1, "writer": "n", "value": b"raw"}),
    ],
)
def test_malformed_entries_are_skipped_by_reads_and_reported(key, raw):
    doc = new_doc()
    entries = MaxEntries(doc, "e")
    entries.write(Entry("ok", 1, "n", True))
    doc.get("e", type=Map)[key] = raw
    assert set(entries.winners()) == {"ok"}
    with pytest.raises(SchemaError) as info:
        parse_entries(doc, "e")
    assert info.value.path.startswith("e[")


def test_out_of_order_update_refreshes_the_index():
    # An update applied across a gap can change the map without advancing the state
    # vector, so the index must follow transactions, not the state vector.
    a, b = new_doc(client_id=1), new_doc(client_id=2)
    ea, eb = MaxEntries(a, "e"), MaxEntries(b, "e")
    updates: list[bytes] = []
    a.observe(lambda event: updates.append(event.update))
    ea.write(Entry("w", 1, "n", None))
    ea.write(Entry("v", 1, "n", None))
    ea.write(Entry("w", 2, "n", None))
    b.apply_update(updates[0])
    assert eb.winner("w").version == 1
    b.apply_update(updates[2])  # across the gap left by updates[1]
    assert eb.winner("w") == Entry("w", 2, "n", None) == ea.winner("w")
    b.apply_update(updates[1])
    assert eb.winners() == ea.winners()


def test_closed_and_dropped_views():
    a, b = new_doc(), new_doc()
    ea, eb = MaxEntries(a, "e"), MaxEntries(b, "e")
    eb.close()
    eb.close()  # idempotent
    ea.write(Entry("x", 1, "n", 1))
    b.apply_update(a.get_update())
    assert eb.winner("x") == Entry("x", 1, "n", 1)  # uncached, still right
    del ea  # the document keeps working after a view is garbage collected
    a.get("e", type=Map)["plain"] = 1
    assert MaxEntries(a, "e").winner("x").version == 1


def test_new_doc_draws_from_a_seeded_rng():
    ids = [new_doc(rng=random.Random(3)).client_id for _ in range(2)]
    assert ids[0] == ids[1] and 0 < ids[0] < 2**53
