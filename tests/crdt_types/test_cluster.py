"""Tests for crdt_types.cluster: per-key schema, versions, deterministic merge, secrets."""

from __future__ import annotations

import math

import pytest
from pycrdt import Map

from crdt_types.cluster import ClusterState, check_setting
from crdt_types.docs import entry_key, new_doc
from crdt_types.errors import InvalidValue, SchemaError
from crdt_types.fingerprint import fingerprint
from crdt_types.schema import validate_document


def _sync(a: ClusterState, b: ClusterState) -> None:
    b.doc.apply_update(a.doc.get_update(b.doc.get_state()))
    a.doc.apply_update(b.doc.get_update(a.doc.get_state()))


GOOD = [
    ("flags.new_ui", True),
    ("model.temperature", 0.2),
    ("model.name", "gpt-x"),
    ("model.max_tokens", 4096),
    ("model.seed", None),
    ("prompt.version", "2024-06-01.3"),
    ("tools.search", "https://search.internal:8443/v1"),
    ("tools.db", "grpc://10.0.0.1:9000"),
    ("slo.p99_latency_ms", 250),
    ("slo.error_rate", 0.001),
]


@pytest.mark.parametrize(("key", "value"), GOOD)
def test_valid_settings_round_trip(key, value):
    c = ClusterState(new_doc())
    assert c.set(key, value, by="n1") == 1
    assert c.get(key) == value
    assert type(c.get(key)) is type(value)
    validate_document("cluster", c.doc)


BAD = [
    ("flags.x", 1),
    ("flags.x", "true"),
    ("model.x", [1]),
    ("model.x", {"a": 1}),
    ("model.x", math.nan),
    ("model.x", 2**64),
    ("model.x", b"raw"),
    ("prompt.version", 3),
    ("prompt.version", ""),
    ("tools.x", "not a url"),
    ("tools.x", "https://"),
    ("tools.x", "https://a b.c/"),
    ("tools.x", 5),
    ("slo.x", True),
    ("slo.x", "100"),
    ("slo.x", math.inf),
    ("unknown.x", 1),
    ("flags", True),
    ("flags.", True),
    ("flags.bad name", True),
    ("prompt.other", "v"),
    (7, True),
]


@pytest.mark.parametrize(("key", "value"), BAD, ids=repr)
def test_invalid_settings_are_rejected_with_nothing_changed(key, value):
    c = ClusterState(new_doc())
    c.set("flags.x", False, by="n1")
    before = fingerprint(c.doc)
    with pytest.raises(InvalidValue) as info:
        c.set(key, value, by="n1")
    assert repr(key)[1:-1] in str(info.value) or str(key) in str(info.value)
    assert fingerprint(c.doc) == before
    assert c.items() == {"flags.x": False}


def test_versions_are_monotonic_and_history_is_pruned():
    c = ClusterState(new_doc())
    assert c.version("flags.x") == 0 and c.get("flags.x", "dflt") == "dflt"
    for i in range(1, 6):
        assert c.set("flags.x", bool(i % 2), by="n1") == i
    assert c.version("flags.x") == 5
    assert c.entry("flags.x").writer == "n1"
    assert len(c.doc.get("config", type=Map)) == 1


def test_concurrent_sets_resolve_to_highest_version_then_writer():
    a, b = ClusterState(new_doc(client_id=2)), ClusterState(new_doc(client_id=1))
    a.set("slo.x", 1, by="na")
    _sync(a, b)
    a.set("slo.x", 2, by="na")  # version 2
    b.set("slo.x", 3, by="nb")  # version 2 too
    b.set("slo.x", 4, by="nb")  # version 3: the highest
    a.set("prompt.version", "a", by="na")
    b.set("prompt.version", "b", by="nb")  # same version, writer "nb" > "na"
    _sync(a, b)
    for c in (a, b):
        assert (c.get("slo.x"), c.version("slo.x")) == (4, 3)
        assert c.get("prompt.version") == "b"
    assert a.to_dict() == b.to_dict()
    assert fingerprint(a.doc) == fingerprint(b.doc)
    assert a.set("slo.x", 5, by="na") == 4  # max known + 1


def test_secrets_are_opaque_blobs():
    c = ClusterState(new_doc())
    c.set_secret("api", b"\x00sealed\xff")
    c.set_secret("token", "v1:abc")
    assert c.get_secret("api") == b"\x00sealed\xff"
    assert c.get_secret("token") == "v1:abc"
    assert c.secret_names() == ["api", "token"]
    assert c.delete_secret("api") is True and c.delete_secret("api") is False
    assert c.get_secret("api") is None
    replica = ClusterState(new_doc())
    replica.doc.apply_update(c.doc.get_update())
    assert replica.to_dict() == c.to_dict()
    validate_document("cluster", replica.doc)


@pytest.mark.parametrize(
    ("name", "blob"),
    [("", b"x"), (5, b"x"), ("k", b""), ("k", 5), ("k", {"a": 1}), ("k", b"x" * (64 * 1024 + 1))],
    ids=repr,
)
def test_bad_secrets_are_rejected_with_nothing_changed(name, blob):
    c = ClusterState(new_doc())
    c.set_secret("old", b"1")
    before = fingerprint(c.doc)
    with pytest.raises(InvalidValue):
        c.set_secret(name, blob)
    assert fingerprint(c.doc) == before


def test_schema_names_a_bad_setting_written_behind_our_back():
    c = ClusterState(new_doc())
    c.set("flags.x", True, by="n")
    raw = {"name": "flags.y", "version": 1, "writer": "n", "value": "yes"}
    c.doc.get("config", type=Map)[entry_key("flags.y", 1, "n")] = raw
    with pytest.raises(SchemaError) as info:
        validate_document("cluster", c.doc)
    assert info.value.path == "config['flags.y']"


def test_check_setting_is_public():
    check_setting("flags.a", False)
    with pytest.raises(InvalidValue):
        check_setting("flags.a", None)
