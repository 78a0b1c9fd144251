"""Tests for crdt_types.session: the typed session API and its all-or-nothing writes."""

from __future__ import annotations

import math

import pytest
from pycrdt import Array, Map

from crdt_types.docs import new_doc
from crdt_types.errors import InvalidValue, LocalError
from crdt_types.fingerprint import fingerprint
from crdt_types.schema import validate_document
from crdt_types.session import Cursor, Message, RagEntry, SessionState, ToolCall


def _session() -> SessionState:
    return SessionState.new("s1", client_id=5)


def _count_transactions(state: SessionState) -> list[int]:
    calls: list[int] = []
    state.doc.observe(lambda event: calls.append(1))
    return calls


def test_messages_in_order_with_metadata():
    s = _session()
    assert s.append_message("user", "hello") == 0
    assert s.append_message("assistant", [{"type": "text", "text": "hi"}], {"tokens": 3}) == 1
    assert s.message_count() == 2
    assert s.messages() == [
        Message("user", "hello", {}),
        Message("assistant", [{"type": "text", "text": "hi"}], {"tokens": 3}),
    ]
    assert s.messages(1) == [s.messages()[1]]
    # Integers come back as ints, not the floats pycrdt stores.
    assert type(s.messages()[1].metadata["tokens"]) is int


def test_tool_call_lifecycle():
    s = _session()
    call = s.start_tool_call("c1", "search", {"q": "x"}, started_by="n1", idempotency_key="k1")
    assert call == ToolCall("c1", "search", {"q": "x"}, "k1", "n1")
    s.start_tool_call("c2", "fetch", started_by="n1")
    s.start_tool_call("c3", "fetch", started_by="n1")
    assert [c.call_id for c in s.pending_tool_calls()] == ["c1", "c2", "c3"]
    done = s.finish_tool_call("c1", {"hits": 2}, by="n2")
    assert (done.status, done.result, done.finished_by) == ("done", {"hits": 2}, "n2")
    failed = s.fail_tool_call("c2", "timeout")
    assert (failed.status, failed.error) == ("failed", "timeout")
    assert [c.call_id for c in s.pending_tool_calls()] == ["c3"]
    assert s.tool_call("c2").status == "failed"
    assert s.tool_call("c2").idempotency_key == "c2"  # defaults to the call id
    assert s.tool_call("nope") is None
    assert set(s.tool_calls()) == {"c1", "c2", "c3"}


@pytest.mark.parametrize(
    "misuse",
    [
        lambda s: s.start_tool_call("c1", "again", started_by="n"),
        lambda s: s.finish_tool_call("unknown"),
        lambda s: s.fail_tool_call("unknown", "x"),
        lambda s: s.finish_tool_call("done1"),
        lambda s: s.fail_tool_call("done1", "late"),
    ],
)
def test_tool_call_misuse_raises_local_error_and_changes_nothing(misuse):
    s = _session()
    s.start_tool_call("c1", "t", started_by="n")
    s.start_tool_call("done1", "t", started_by="n")
    s.finish_tool_call("done1", 1)
    before = fingerprint(s.doc)
    with pytest.raises(LocalError):
        misuse(s)
    assert fingerprint(s.doc) == before


def test_memory_set_get_delete():
    s = _session()
    s.set_memory("plan", {"steps": [1, 2]})
    s.set_memory("n", 3)
    assert s.get_memory("plan") == {"steps": [1, 2]}
    assert s.memory() == {"n": 3, "plan": {"steps": [1, 2]}}
    assert s.delete_memory("n") is True
    assert s.delete_memory("n") is False
    assert s.get_memory("n", "gone") == "gone"


def test_rag_and_cursor():
    s = _session()
    assert s.cursor() is None
    s.add_rag("passage", source="doc.md", score=0.75, metadata={"page": 2})
    s.add_rag({"chunk": 1})
    assert s.rag() == [RagEntry("passage", "doc.md", 0.75, {"page": 2}), RagEntry({"chunk": 1})]
    s.set_cursor(4, "await-tool")
    s.set_cursor(5)
    assert s.cursor() == Cursor(5, "")
    assert type(s.cursor().step) is int
    s.set_cursor(2, "retry")  # a cursor may move back: the last write wins, not the max
    assert s.cursor() == Cursor(2, "retry")


def test_cursor_moves_leave_no_deletes():
    # Why the cursor is a log: every anti-entropy diff carries the whole delete set.
    s = _session()
    for step in range(50):
        s.append_message("user", str(step))
        s.set_cursor(step, "x")
    assert s.doc.get_update(s.doc.get_state()) == b"\x00\x00"  # empty delete set


def test_every_write_is_one_transaction():
    s = _session()
    calls = _count_transactions(s)
    s.append_message("user", "x", {"a": 1})
    s.start_tool_call("c", "t", {"a": [1, 2]}, started_by="n")
    s.finish_tool_call("c", {"r": 1})
    s.set_memory("m", {"deep": {"x": 1}})
    s.delete_memory("m")
    s.add_rag("r", metadata={"k": "v"})
    s.set_cursor(1, "one")
    assert len(calls) == 7


BAD_VALUES = [
    2**64,
    2**53 + 1,
    math.nan,
    math.inf,
    {1: "non-str key"},
    {"a", "set"},
    b"bytes",
    object(),
    "x" * (1 << 20),
    "\ud800",
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda v: repr(v)[:30])
@pytest.mark.parametrize(
    "write",
    [
        lambda s, v: s.append_message("user", v),
        lambda s, v: s.append_message("user", "ok", {"m": v}),
        lambda s, v: s.start_tool_call("new", "t", v, started_by="n"),
        lambda s, v: s.finish_tool_call("c1", v),
        lambda s, v: s.set_memory("k", v),
        lambda s, v: s.add_rag(v),
        lambda s, v: s.add_rag("ok", metadata={"m": v}),
    ],
    ids=["message", "metadata", "arguments", "result", "memory", "rag", "rag-metadata"],
)
def test_invalid_values_are_rejected_with_nothing_changed(write, bad):
    s = _session()
    s.start_tool_call("c1", "t", started_by="n")
    s.set_memory("k", "old")
    before_fp, before_dict = fingerprint(s.doc), s.to_dict()
    with pytest.raises(InvalidValue):
        write(s, bad)
    assert fingerprint(s.doc) == before_fp
    assert s.to_dict() == before_dict


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.append_message("", "x"),
        lambda s: s.append_message(7, "x"),
        lambda s: s.append_message("user", "x", ["not", "a", "dict"]),
        lambda s: s.start_tool_call("", "t", started_by="n"),
        lambda s: s.start_tool_call("c", "t", started_by=""),
        lambda s: s.start_tool_call("c", "t", started_by="n", idempotency_key=5),
        lambda s: s.fail_tool_call("c1", 42),
        lambda s: s.finish_tool_call("c1", by=""),
        lambda s: s.set_memory("", 1),
        lambda s: s.set_memory(3, 1),
        lambda s: s.delete_memory(None),
        lambda s: s.add_rag("x", source=3),
        lambda s: s.add_rag("x", score="high"),
        lambda s: s.add_rag("x", score=True),
        lambda s: s.set_cursor(-1),
        lambda s: s.set_cursor(1.5),
        lambda s: s.set_cursor(True),
        lambda s: s.set_cursor(2**64),
        lambda s: s.set_cursor(1, label=None),
    ],
)
def test_bad_arguments_are_rejected_with_nothing_changed(write):
    s = _session()
    s.start_tool_call("c1", "t", started_by="n")
    before = fingerprint(s.doc)
    with pytest.raises(InvalidValue):
        write(s)
    assert fingerprint(s.doc) == before


def test_new_and_reopen():
    s = _session()
    s.append_message("user", "x")
    again = SessionState(s.doc)
    assert again.session_id == "s1" and again.message_count() == 1
    assert SessionState.new("s1", s.doc).session_id == "s1"  # idempotent
    with pytest.raises(LocalError):
        SessionState.new("other", s.doc)
    for bad in ("", "a\nb", 5, "x" * 300):
        with pytest.raises(InvalidValue):
            SessionState.new(bad)
    assert SessionState(new_doc()).session_id is None


def test_replica_reads_the_same_state_and_validates():
    s = _session()
    s.append_message("user", "x", {"n": 1})
    s.start_tool_call("c1", "t", {"a": 1}, started_by="n")
    s.fail_tool_call("c1", "boom", by="n")
    s.set_memory("k", [1.5, 2])
    s.add_rag("r", score=1)
    s.set_cursor(2, "b")
    replica = SessionState(new_doc())
    replica.doc.apply_update(s.doc.get_update())
    assert replica.to_dict() == s.to_dict()
    assert fingerprint(replica.doc) == fingerprint(s.doc)
    validate_document("session/s1", replica.doc)


def test_concurrent_outcomes_resolve_identically():
    a = _session()
    a.start_tool_call("c1", "t", started_by="n")
    b = SessionState(new_doc(client_id=9))
    b.doc.apply_update(a.doc.get_update())
    a.finish_tool_call("c1", "from a")
    b.fail_tool_call("c1", "from b")
    b.doc.apply_update(a.doc.get_update(b.doc.get_state()))
    a.doc.apply_update(b.doc.get_update(a.doc.get_state()))
    assert a.tool_call("c1") == b.tool_call("c1")
    assert a.pending_tool_calls() == b.pending_tool_calls() == []


def test_malformed_records_from_a_peer_are_skipped_by_reads():
    s = _session()
    s.append_message("user", "good")
    s.start_tool_call("c1", "t", started_by="n")
    s.add_rag("good")
    s.set_cursor(1)
    peer = new_doc()
    peer.apply_update(s.doc.get_update())
    # What a buggy peer might write straight into the roots.
    peer.get("messages", type=Array).append("not a record")
    peer.get("tool_calls", type=Map)["bad"] = {"name": "t"}
    peer.get("rag", type=Array).append(7)
    peer.get("cursor", type=Array).append({"step": "one"})
    s.doc.apply_update(peer.get_update(s.doc.get_state()))
    assert [m.content for m in s.messages()] == ["good"]
    assert list(s.tool_calls()) == ["c1"] and s.tool_call("bad") is None
    assert [r.content for r in s.rag()] == ["good"]
    assert s.cursor() == Cursor(1, "")  # the last well-formed entry
    assert s.to_dict()["messages"] == [{"role": "user", "content": "good", "metadata": {}}]
