"""Tests for crdt_types.ownership: claims, fencing epochs and the deterministic merge."""

from __future__ import annotations

import random

import pytest
from pycrdt import Map

from crdt_types.docs import entry_key, new_doc
from crdt_types.errors import InvalidValue, LocalError, SchemaError
from crdt_types.fingerprint import fingerprint
from crdt_types.ownership import Claim, OwnershipTable
from crdt_types.schema import validate_document


def _sync(*tables: OwnershipTable) -> None:
    for a in tables:
        for b in tables:
            if a is not b:
                b.doc.apply_update(a.doc.get_update(b.doc.get_state()))


def test_claim_and_read():
    t = OwnershipTable(new_doc())
    assert t.owner_of("w") is None and t.epoch_of("w") == 0
    assert t.claim("w", "n1", 1) == Claim("w", "n1", 1)
    t.claim("w", "n2", 2)
    t.claim("v", "n1", 7)
    assert t.owner_of("w") == Claim("w", "n2", 2)
    assert t.claims() == [Claim("v", "n1", 7), Claim("w", "n2", 2)]
    assert t.workloads_of("n1") == ["v"]
    assert t.workloads_of("n2") == ["w"]
    assert t.to_dict() == {"v": {"owner": "n1", "epoch": 7}, "w": {"owner": "n2", "epoch": 2}}
    # Superseded claims were pruned: one entry per workload.
    assert len(t.doc.get("claims", type=Map)) == 2


@pytest.mark.parametrize("epoch", [1, 2])
def test_claim_not_above_current_epoch_is_refused(epoch):
    t = OwnershipTable(new_doc())
    t.claim("w", "n1", 2)
    before = fingerprint(t.doc)
    with pytest.raises(LocalError, match="not above"):
        t.claim("w", "n2", epoch)
    assert fingerprint(t.doc) == before


@pytest.mark.parametrize(
    ("workload", "owner", "epoch"),
    [
        ("", "n", 1),
        ("w", "", 1),
        (3, "n", 1),
        ("w", None, 1),
        ("w", "n", 0),
        ("w", "n", -1),
        ("w", "n", 2**64),
        ("w", "n", 1.0),
        ("w", "n", True),
        ("w", "n", "2"),
    ],
)
def test_bad_claims_are_rejected_with_nothing_changed(workload, owner, epoch):
    t = OwnershipTable(new_doc())
    t.claim("w", "n0", 1)
    before = fingerprint(t.doc)
    with pytest.raises(InvalidValue):
        t.claim(workload, owner, epoch)
    assert fingerprint(t.doc) == before


def test_plain_map_would_lose_the_higher_epoch():
    # Why claims are not a plain Y.Map workload -> {owner, epoch}: concurrent writes to
    # one key resolve by client id, and here that keeps the LOWER epoch.
    a, b = new_doc(client_id=1), new_doc(client_id=2)
    a.get("naive", type=Map)["w"] = {"owner": "na", "epoch": 5}
    b.get("naive", type=Map)["w"] = {"owner": "nb", "epoch": 4}
    b.apply_update(a.get_update(b.get_state()))
    a.apply_update(b.get_update(a.get_state()))
    assert a.get("naive", type=Map)["w"]["epoch"] == 4.0  # documents the hazard
    ta, tb = OwnershipTable(a), OwnershipTable(b)
    ta.claim("w", "na", 5)
    tb.claim("w", "nb", 4)
    _sync(ta, tb)
    assert ta.owner_of("w") == tb.owner_of("w") == Claim("w", "na", 5)


def test_concurrent_claims_converge_to_highest_epoch_then_owner():
    seed = 7
    rng = random.Random(seed)
    for trial in range(20):
        tables = [OwnershipTable(new_doc(client_id=rng.randrange(1, 2**32))) for _ in range(4)]
        made = []
        for t in tables:
            epoch = rng.randrange(1, 4)
            owner = f"n{rng.randrange(10)}"
            t.claim("w", owner, epoch)
            made.append((epoch, owner))
        _sync(*tables)
        best = max(made)
        for t in tables:
            assert t.owner_of("w") == Claim("w", best[1], best[0]), (seed, trial)
        assert len({fingerprint(t.doc) for t in tables}) == 1, (seed, trial)


def test_claim_after_merge_prunes_remote_superseded_entries():
    a, b = OwnershipTable(new_doc()), OwnershipTable(new_doc())
    a.claim("w", "na", 1)
    b.claim("w", "nb", 1)
    _sync(a, b)
    assert len(a.doc.get("claims", type=Map)) == 2
    a.claim("w", "na", 3)
    _sync(a, b)
    assert list(b.doc.get("claims", type=Map).keys()) == [entry_key("w", 3, "na")]
    assert b.owner_of("w") == Claim("w", "na", 3)


def test_schema_rejects_a_claim_with_a_value():
    t = OwnershipTable(new_doc())
    t.claim("w", "n", 1)
    validate_document("ownership", t.doc)
    t.doc.get("claims", type=Map)[entry_key("x", 1, "n")] = {
        "name": "x",
        "version": 1,
        "writer": "n",
        "value": "surprise",
    }
    with pytest.raises(SchemaError) as info:
        validate_document("ownership", t.doc)
    assert info.value.path == "claims['x']"


def test_the_remembered_claim_list_follows_local_and_remote_changes():
    a, b = OwnershipTable(new_doc()), OwnershipTable(new_doc())
    a.claim("w", "n1", 1)
    first = a.claims()
    first.append(Claim("x", "bogus", 9))  # a caller's list is its own
    assert a.claims() == [Claim("w", "n1", 1)]
    a.claim("w", "n1", 2)  # a local write drops the remembered list
    assert a.claims() == [Claim("w", "n1", 2)]
    assert b.claims() == []
    b.claim("v", "n2", 3)
    _sync(a, b)  # so does a remote update
    assert a.claims() == b.claims() == [Claim("v", "n2", 3), Claim("w", "n1", 2)]
    assert a.workloads_of("n2") == ["v"]
    a.close()  # closed: still correct, read afresh each time
    b.claim("u", "n3", 1)
    _sync(a, b)
    assert [c.workload for c in a.claims()] == ["u", "v", "w"]
