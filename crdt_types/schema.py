"""Schema checks for documents loaded from disk or received from a peer.

Three kinds of document exist, told apart by id: `session/<id>`, `cluster` and
`ownership`. `validate_document` checks one against its kind and raises `SchemaError`
whose `path` names the offending field (`messages[3].role`, `claims['["w",2,"n"]']`), so
an operator reading `statemesh inspect --verify` can find it.

A pycrdt document does not record the type of its root entries: the same name read as
a Map or as an Array shows different parts of it. So besides checking each expected
root's content, we check that nothing was written to it under the other shape, and that
no unexpected root holds content. Reading a root under another shape does not change the
document (it produces no update). Validation reads the whole document, so it belongs on
load and takeover paths, not on every incoming update.
"""

from __future__ import annotations

from typing import Any

from pycrdt import Array, Doc, Map

from crdt_types import cluster, ownership, session
from crdt_types.errors import InvalidValue, SchemaError

__all__ = ["KINDS", "doc_kind", "session_id_of", "validate_document"]

SESSION, CLUSTER, OWNERSHIP = "session", "cluster", "ownership"
KINDS = (SESSION, CLUSTER, OWNERSHIP)
_SESSION_PREFIX = "session/"
_ROOTS: dict[str, dict[str, type]] = {
    SESSION: session.ROOTS,
    CLUSTER: cluster.ROOTS,
    OWNERSHIP: ownership.ROOTS,
}


def doc_kind(doc_id: Any) -> str:
    """The kind of document `doc_id` names; `SchemaError` (path "doc_id") if none."""
    if isinstance(doc_id, str) and doc_id in (CLUSTER, OWNERSHIP):
        return doc_id
    if isinstance(doc_id, str) and doc_id.startswith(_SESSION_PREFIX):
        try:
            session.check_session_id(doc_id[len(_SESSION_PREFIX) :])
        except InvalidValue as exc:
            raise SchemaError("doc_id", str(exc)) from None
        return SESSION
    raise SchemaError("doc_id", f"{doc_id!r} is not 'cluster', 'ownership' or 'session/<id>'")


def session_id_of(doc_id: str) -> str:
    """The session id in a `session/<id>` document id."""
    if doc_kind(doc_id) != SESSION:
        raise SchemaError("doc_id", f"{doc_id!r} is not a session document id")
    return doc_id[len(_SESSION_PREFIX) :]


def _other_shape_empty(doc: Doc, name: str, expected: type) -> None:
    other = Array if expected is Map else Map
    if len(doc.get(name, type=other)):
        raise SchemaError(name, f"expected a {expected.__name__}, holds {other.__name__} content")


def _check_roots(doc: Doc, roots: dict[str, type]) -> None:
    for name, expected in roots.items():
        _other_shape_empty(doc, name, expected)
    for name in list(doc.keys()):
        if name not in roots and (len(doc.get(name, type=Map)) or len(doc.get(name, type=Array))):
            raise SchemaError(name, "unexpected root holds content")


def validate_document(doc_id: str, doc: Doc) -> None:
    """Raise `SchemaError` naming the bad field unless `doc` is a valid `doc_id` document."""
    kind = doc_kind(doc_id)
    _check_roots(doc, _ROOTS[kind])
    if kind == SESSION:
        session.validate(doc, session_id_of(doc_id))
    elif kind == CLUSTER:
        cluster.validate(doc)
    else:
        ownership.validate(doc)
