"""Tests of mesh.replica_store.DurableReplica over a real SQLite store in a temp directory.

The replica caches state vectors and fingerprints and tells a changing remote update from
a duplicate by its observer: these tests check that what it answers always equals what
pycrdt computes from the document itself, whatever changed it.
"""

from __future__ import annotations

import random

import pycrdt
import pytest

from crdt_types.docs import MAX_DOC_ID_BYTES
from crdt_types.errors import CorruptRecord, InvalidValue, LocalError, RemoteError
from crdt_types.fingerprint import fingerprint
from gossip.replica import EMPTY_STATE_VECTOR
from mesh.replica_store import DurableReplica
from mesh.storage import AsyncStore


def _updates(n: int, seed: int) -> tuple[pycrdt.Doc, list[bytes]]:
    """A writer document and the updates of `n` random edits (inserts, deletes, sets)."""
    rng = random.Random(seed)
    doc = pycrdt.Doc()
    out: list[bytes] = []
    doc.observe(lambda event: out.append(event.update))
    text = doc.get("t", type=pycrdt.Text)
    mp = doc.get("m", type=pycrdt.Map)
    for _ in range(n):
        roll = rng.random()
        if roll < 0.3 and len(text) > 2:
            start = rng.randrange(len(text) - 1)
            del text[start : start + 1]
        elif roll < 0.6:
            mp[f"k{rng.randrange(3)}"] = str(rng.randrange(100))
        else:
            text.insert(rng.randrange(len(text) + 1), rng.choice("abc"))
    return doc, out


def _assert_consistent(replica: DurableReplica, doc_id: str, seed: int) -> None:
    doc = replica.doc(doc_id)
    assert replica.state_vector(doc_id) == doc.get_state(), f"seed {seed}"
    assert replica.fingerprint(doc_id) == fingerprint(doc), f"seed {seed}"


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_cached_vectors_follow_remote_updates_in_any_order(tmp_path, seed):
    writer, updates = _updates(40, seed)
    order = list(range(len(updates)))
    random.Random(seed).shuffle(order)
    async with AsyncStore.open(tmp_path) as store:
        replica = DurableReplica(store, {})
        changed = []
        for i in order:
            changed.append(replica.apply("d", updates[i]))
            _assert_consistent(replica, "d", seed)
        # Out of order, some updates wait for their gap; the last one integrates them all.
        replica.apply("d", writer.get_update(replica.state_vector("d")))
        _assert_consistent(replica, "d", seed)
        assert replica.fingerprint("d") == fingerprint(writer), f"seed {seed}"
        assert any(changed), f"seed {seed}"
        # Everything again: duplicates change nothing and say so.
        for update in updates:
            assert replica.apply("d", update) is False, f"seed {seed}"
        _assert_consistent(replica, "d", seed)


async def test_apply_reports_a_change_exactly_when_the_content_changed(tmp_path):
    writer, updates = _updates(6, seed=4)
    async with AsyncStore.open(tmp_path) as store:
        replica = DurableReplica(store, {})
        assert replica.apply("d", updates[0]) is True
        assert replica.apply("d", updates[0]) is False  # a duplicate
        # An update whose predecessor is missing is held pending: the flag must agree
        # with what the fingerprint says either way.
        before = replica.fingerprint("d")
        assert replica.apply("d", updates[2]) is (replica.fingerprint("d") != before)
        assert replica.apply("d", writer.get_update(replica.state_vector("d"))) is True
        assert replica.fingerprint("d") == fingerprint(writer)


async def test_cached_vector_follows_local_writes(tmp_path):
    async with AsyncStore.open(tmp_path) as store:
        replica = DurableReplica(store, {})
        doc = replica.create("d")
        assert replica.state_vector("d") == EMPTY_STATE_VECTOR
        text = doc.get("t", type=pycrdt.Text)
        for i in range(5):
            text.insert(0, str(i))
            _assert_consistent(replica, "d", 0)
        del text[0:2]  # a pure delete: the vector stays, the fingerprint moves
        _assert_consistent(replica, "d", 0)
        # Six local transactions back to back: drained as one merged local change.
        assert [c.local for c, _ in replica.drain()] == [True]


async def test_after_close_nothing_stale_is_answered(tmp_path):
    async with AsyncStore.open(tmp_path) as store:
        replica = DurableReplica(store, {})
        doc = replica.create("d")
        doc.get("t", type=pycrdt.Text).insert(0, "a")
        replica.state_vector("d")
        replica.fingerprint("d")
        replica.close()
        doc.get("t", type=pycrdt.Text).insert(0, "b")  # unobserved now
        _assert_consistent(replica, "d", 0)


# One bad id of each class `crdt_types.docs.check_doc_id` refuses.
BAD_DOC_IDS = [7, None, b"d", "", "a\x00b", "x" * (MAX_DOC_ID_BYTES + 1), "\ud800"]


@pytest.mark.parametrize("doc_id", BAD_DOC_IDS)
async def test_create_refuses_a_bad_id_with_the_doc_id_rule_and_creates_nothing(tmp_path, doc_id):
    async with AsyncStore.open(tmp_path) as store:
        replica = DurableReplica(store, {})
        with pytest.raises(InvalidValue, match="document id"):
            replica.create(doc_id)
        assert list(replica.doc_ids()) == [] and replica.queued == 0
        replica.create("x" * MAX_DOC_ID_BYTES)  # the longest id is fine
        with pytest.raises(LocalError, match="exists"):
            replica.create("x" * MAX_DOC_ID_BYTES)


async def test_garbage_changes_nothing_and_creates_nothing(tmp_path):
    _, updates = _updates(3, seed=5)
    async with AsyncStore.open(tmp_path) as store:
        replica = DurableReplica(store, {})
        with pytest.raises(RemoteError):
            replica.apply("new", b"\xff\xfe garbage")
        assert "new" not in replica
        replica.apply("d", updates[0])
        sv, fp = replica.state_vector("d"), replica.fingerprint("d")
        with pytest.raises(RemoteError):
            replica.apply("d", b"\xff\xfe garbage")
        assert (replica.state_vector("d"), replica.fingerprint("d")) == (sv, fp)
        _assert_consistent(replica, "d", 5)


async def test_a_damaged_document_never_claims_more_durable_than_its_disk(tmp_path, caplog):
    writer, updates = _updates(10, 7)
    async with AsyncStore.open(tmp_path) as store:
        first = pycrdt.Doc()
        for u in updates[:5]:
            first.apply_update(u)
        replica = DurableReplica(store, {"d": first, "ok": pycrdt.Doc()})
        salvaged = replica.durable_state_vector("d")
        damage = replica.mark_damaged(CorruptRecord("d", 6, "record fails its checksum"))
        assert damage is not None and (damage.doc_id, damage.seq) == ("d", 6)
        assert damage.to_dict() == {
            "document": "d", "record": 6, "reason": "record fails its checksum"
        }  # fmt: skip
        logged = [r.getMessage() for r in caplog.records if r.name == "statemesh.store"]
        assert len(logged) == 1 and "'d'" in logged[0] and "record 6" in logged[0]
        # Peers refill it; what is appended meanwhile is not reloadable: durable stays.
        for u in updates[5:]:
            replica.apply("d", u)
        for _, pending in replica.drain():
            await pending.wait()
        replica.mark_durable("d", replica.state_vector("d"))
        assert replica.durable_state_vector("d") == salvaged
        with pytest.raises(CorruptRecord) as info:
            replica.check_durable("d")
        assert (info.value.doc_id, info.value.seq) == ("d", 6)
        replica.check_durable("ok")  # undamaged documents are not affected
        # Repaired: the mark clears and the durable vector is what the repair wrote.
        replica.repaired("d", replica.state_vector("d"))
        assert not replica.damaged and replica.durable_state_vector("d") == writer.get_state()
        replica.check_durable("d")
        # A damaged id the replica does not hold is only logged.
        assert replica.mark_damaged(CorruptRecord("gone", None, "id damaged")) is None
        assert not replica.damaged


async def test_a_run_of_local_writes_is_stored_as_one_change_in_order(tmp_path):
    async with AsyncStore.open(tmp_path) as store:
        replica = DurableReplica(store, {})
        a, b = replica.create("a"), replica.create("b")
        peer = pycrdt.Doc()
        peer_map = peer.get("m", type=pycrdt.Map)
        ma, mb = a.get("m", type=pycrdt.Map), b.get("m", type=pycrdt.Map)
        for i in range(4):  # a turn of four writes on "a"
            ma[f"k{i}"] = i
        mb["x"] = 1  # another document breaks the run
        ma["k4"] = 4
        with peer.transaction():
            peer_map["remote"] = True
        replica.apply("a", peer.get_update())  # a remote change breaks the run too
        ma["k5"] = 5
        ma["k6"] = 6
        drained = [change for change, _ in replica.drain()]
        assert [(c.doc_id, c.local) for c in drained] == [
            ("a", True), ("b", True), ("a", True), ("a", False), ("a", True),
        ]  # fmt: skip
        # Each merged change holds exactly its run: replaying them rebuilds both documents.
        copy = {"a": pycrdt.Doc(), "b": pycrdt.Doc()}
        for change in drained:
            copy[change.doc_id].apply_update(change.update)
        assert fingerprint(copy["a"]) == fingerprint(a)
        assert fingerprint(copy["b"]) == fingerprint(b)
        first = pycrdt.Doc()
        first.apply_update(drained[0].update)
        assert first.get("m", type=pycrdt.Map).to_py() == {f"k{i}": float(i) for i in range(4)}


async def test_merging_stops_at_the_size_bound(tmp_path):
    from mesh.replica_store import COALESCE_BYTES

    async with AsyncStore.open(tmp_path) as store:
        replica = DurableReplica(store, {})
        text = replica.create("d").get("t", type=pycrdt.Text)
        chunk = "x" * (COALESCE_BYTES // 3)
        for _ in range(7):
            text += chunk
        sizes = [len(change.update) for change, _ in replica.drain()]
        # Runs close once they reach the bound, so no merged update grows past it by
        # more than one write: 7 writes of a third of the bound make 3 changes.
        assert len(sizes) == 3, sizes
        assert max(sizes) < COALESCE_BYTES + len(chunk) + 1024


async def test_merging_stops_at_the_count_bound(tmp_path):
    from mesh.replica_store import COALESCE_UPDATES

    async with AsyncStore.open(tmp_path) as store:
        replica = DurableReplica(store, {})
        doc = replica.create("d")
        memory = doc.get("m", type=pycrdt.Map)
        writes = 2 * COALESCE_UPDATES + 5
        for i in range(writes):
            memory[f"k{i % 16}"] = i
        drained = [change for change, _ in replica.drain()]
        # pycrdt's merge is superlinear in the number of updates: a long run is merged in
        # bounded pieces (64, 64, 5), and together they still hold every write.
        assert len(drained) == 3
        copy = pycrdt.Doc()
        for change in drained:
            copy.apply_update(change.update)
        assert fingerprint(copy) == fingerprint(doc)
