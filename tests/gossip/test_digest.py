"""Tests of gossip.digest: the incrementally maintained hash tree over fingerprints."""

from __future__ import annotations

import random

import pytest

from crdt_types.errors import LocalError
from gossip.digest import HASH_BYTES, HashTree, bucket_of, leaf_hash


def fps(seed: int, n: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"session/{i}": rng.randbytes(32) for i in range(n)}


def build(items, buckets: int = 64) -> HashTree:
    tree = HashTree(buckets)
    for doc_id, fp in items:
        tree.set(doc_id, fp)
    return tree


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_root_is_independent_of_insertion_order(seed):
    items = list(fps(seed, 300).items())
    shuffled = items[:]
    random.Random(seed).shuffle(shuffled)
    a, b = build(items), build(shuffled)
    assert a.root == b.root, f"seed {seed}"
    assert a.bucket_hashes() == b.bucket_hashes()


def test_incremental_updates_equal_a_fresh_build():
    rng = random.Random(4)
    state = fps(4, 200)
    tree = build(state.items())
    for _ in range(500):
        doc_id = f"session/{rng.randrange(260)}"
        if rng.random() < 0.2:
            state.pop(doc_id, None)
            tree.discard(doc_id)
        else:
            state[doc_id] = rng.randbytes(32)
            tree.set(doc_id, state[doc_id])
    fresh = build(state.items())
    assert tree.root == fresh.root and len(tree) == len(fresh) == len(state)
    assert tree.bucket_hashes() == fresh.bucket_hashes()


def test_one_change_moves_the_root_and_exactly_its_bucket():
    state = fps(5, 500)
    a, b = build(state.items()), build(state.items())
    b.set("session/42", b"\x01" * 32)
    assert a.root != b.root
    assert a.differing_buckets(b.bucket_hashes()) == [bucket_of("session/42", 64)]
    assert "session/42" in list(b.docs_in(bucket_of("session/42", 64)))


def test_setting_the_same_fingerprint_again_changes_nothing():
    tree = build(fps(6, 10).items())
    root = tree.root
    assert tree.set("session/3", fps(6, 10)["session/3"]) is False
    assert tree.root == root


def test_root_covers_document_count_and_empty_tree_is_stable():
    assert HashTree(8).root == HashTree(8).root
    assert len(HashTree(8).root) == HASH_BYTES
    tree = HashTree(8)
    tree.set("a", b"x")
    tree.discard("a")
    assert tree.root == HashTree(8).root
    tree.discard("never-there")  # no error


def test_leaf_separates_id_from_fingerprint():
    assert leaf_hash("ab", b"c") != leaf_hash("a", b"bc")


def test_docs_in_lists_bucket_members_sorted():
    tree = build(fps(7, 100).items(), buckets=4)
    listed = [d for b in range(4) for d in tree.docs_in(b)]
    assert sorted(listed) == sorted(fps(7, 100))
    for b in range(4):
        members = list(tree.docs_in(b))
        assert members == sorted(members)
        assert all(bucket_of(d, 4) == b for d in members)


@pytest.mark.parametrize("buckets", [0, -1, 1 << 17, 2.5, "8"])
def test_bad_bucket_count_is_a_local_error(buckets):
    with pytest.raises(LocalError):
        HashTree(buckets)


def test_differing_buckets_rejects_wrong_length():
    with pytest.raises(LocalError):
        HashTree(8).differing_buckets([b"\x00" * HASH_BYTES] * 7)
