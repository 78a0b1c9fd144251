"""Tests for crdt_types.schema: document kinds and errors that name the bad field."""

from __future__ import annotations

import pytest
from pycrdt import Array, Map, Text

from crdt_types.cluster import ClusterState
from crdt_types.docs import new_doc
from crdt_types.errors import RemoteError, SchemaError
from crdt_types.ownership import OwnershipTable
from crdt_types.schema import doc_kind, session_id_of, validate_document
from crdt_types.session import SessionState


def test_doc_kinds():
    assert doc_kind("cluster") == "cluster"
    assert doc_kind("ownership") == "ownership"
    assert doc_kind("session/abc-1") == "session"
    assert session_id_of("session/a/b") == "a/b"
    for bad in ("session/", "sessions/x", "Cluster", "", None, 3, "session/a\x00b"):
        with pytest.raises(SchemaError) as info:
            doc_kind(bad)
        assert info.value.path == "doc_id"
    with pytest.raises(SchemaError):
        session_id_of("cluster")


def _full_session() -> SessionState:
    s = SessionState.new("s1")
    s.append_message("user", "hi", {"a": 1})
    s.start_tool_call("c1", "t", {"x": 1}, started_by="n")
    s.start_tool_call("c2", "t", started_by="n")
    s.finish_tool_call("c1", [1, 2], by="n")
    s.fail_tool_call("c2", "boom")
    s.set_memory("k", {"v": 1})
    s.add_rag("r", source="s", score=0.5)
    s.set_cursor(3, "x")
    return s


def _received(doc):
    """A copy of `doc` as a peer would receive it (root types unknown until read)."""
    copy = new_doc()
    copy.apply_update(doc.get_update())
    return copy


def test_valid_documents_pass():
    validate_document("session/s1", _received(_full_session().doc))
    c = ClusterState(new_doc())
    c.set("flags.a", True, by="n")
    c.set_secret("s", b"x")
    validate_document("cluster", _received(c.doc))
    o = OwnershipTable(new_doc())
    o.claim("session/s1", "n", 1)
    validate_document("ownership", _received(o.doc))
    validate_document("session/empty", new_doc())


def _corrupt(mutate):
    s = _full_session()
    mutate(s.doc)
    return _received(s.doc)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (
            lambda d: d.get("messages", type=Array).append(
                {"role": "", "content": 1, "metadata": {}}
            ),
            "messages[1].role",
        ),
        (
            lambda d: d.get("messages", type=Array).append(
                {"role": "u", "content": 1, "metadata": []}
            ),
            "messages[1].metadata",
        ),
        (lambda d: d.get("messages", type=Array).append({"role": "u"}), "messages[1]"),
        (lambda d: d.get("messages", type=Array).append("just text"), "messages[1]"),
        (
            lambda d: d.get("messages", type=Array).append(
                {"role": "u", "content": b"x", "metadata": {}}
            ),
            "messages[1]",
        ),
        (
            lambda d: d.get("tool_calls", type=Map).__setitem__(
                "c3", {"name": "t", "arguments": None, "idempotency_key": "", "started_by": "n"}
            ),
            "tool_calls['c3'].idempotency_key",
        ),
        (
            lambda d: d.get("tool_results", type=Map).__setitem__(
                "c1", {"status": "maybe", "result": None, "error": None, "finished_by": None}
            ),
            "tool_results['c1'].status",
        ),
        (
            lambda d: d.get("tool_results", type=Map).__setitem__(
                "c1", {"status": "failed", "result": None, "error": None, "finished_by": None}
            ),
            "tool_results['c1'].error",
        ),
        (lambda d: d.get("memory", type=Map).__setitem__("bad", b"\x00"), "memory['bad']"),
        (
            lambda d: d.get("rag", type=Array).append(
                {"content": "x", "source": 1, "score": None, "metadata": {}}
            ),
            "rag[1].source",
        ),
        (
            lambda d: d.get("rag", type=Array).append(
                {"content": "x", "source": "", "score": "hi", "metadata": {}}
            ),
            "rag[1].score",
        ),
        (
            lambda d: d.get("cursor", type=Array).append({"step": -1, "label": ""}),
            "cursor[1].step",
        ),
        (
            lambda d: d.get("cursor", type=Array).append({"step": 1.5, "label": ""}),
            "cursor[1].step",
        ),
        (lambda d: d.get("cursor", type=Array).append({"step": 1, "label": 2}), "cursor[1].label"),
        (lambda d: d.get("cursor", type=Map).__setitem__("other", 1), "cursor"),
        (lambda d: d.get("meta", type=Map).__setitem__("session_id", "s2"), "meta.session_id"),
        (lambda d: d.get("meta", type=Map).__setitem__("schema", 99), "meta.schema"),
        (lambda d: d.get("meta", type=Map).__setitem__("extra", 1), "meta"),
        # Content written under the other shape of an expected root, or an unknown root.
        (lambda d: d.get("memory", type=Array).append(1), "memory"),
        (lambda d: d.get("messages", type=Map).__setitem__("x", 1), "messages"),
        (lambda d: d.get("memory", type=Text).insert(0, "abc"), "memory"),
        (lambda d: d.get("cursor", type=Text).insert(0, "abc"), "cursor[0]"),
        (lambda d: d.get("surprise", type=Map).__setitem__("x", 1), "surprise"),
        (lambda d: d.get("surprise2", type=Text).insert(0, "x"), "surprise2"),
    ],
)
def test_bad_session_fields_are_named(mutate, path):
    doc = _corrupt(mutate)
    with pytest.raises(SchemaError) as info:
        validate_document("session/s1", doc)
    assert info.value.path == path, str(info.value)
    assert isinstance(info.value, RemoteError) and isinstance(info.value, ValueError)


def test_validation_does_not_change_the_document_or_its_views():
    s = _full_session()
    before = s.doc.get_update()
    validate_document("session/s1", s.doc)
    assert s.doc.get_update() == before
    # The typed view keeps working after validation read roots under other shapes.
    s.append_message("user", "after")
    assert s.message_count() == 2 and s.memory() == {"k": {"v": 1}}


def test_session_document_under_the_wrong_id():
    with pytest.raises(SchemaError) as info:
        validate_document("session/other", _full_session().doc)
    assert info.value.path == "meta.session_id"
    with pytest.raises(SchemaError):
        validate_document("cluster", _full_session().doc)
