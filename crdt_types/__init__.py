"""Typed agent failover state over pycrdt: values, version vectors, fingerprints, schemas.

The lowest layer of statemesh. It never imports trio, zeroconf, sqlite3 or socket; time
and randomness are passed in. The names below are the public surface; submodules hold
the details.
"""

from crdt_types.cluster import ClusterState
from crdt_types.docs import new_doc
from crdt_types.errors import (
    InvalidValue,
    LocalError,
    RemoteError,
    SchemaError,
    StatemeshError,
)
from crdt_types.fingerprint import fingerprint, fingerprint_hex
from crdt_types.ownership import Claim, OwnershipTable
from crdt_types.schema import doc_kind, validate_document
from crdt_types.session import Cursor, Message, RagEntry, SessionState, ToolCall
from crdt_types.values import MAX_INT, MAX_VALUE_BYTES, check_value, from_stored, to_stored
from crdt_types.vv import Order, VersionVector, decode_state_vector, encode_state_vector

__all__ = [
    "Claim",
    "ClusterState",
    "Cursor",
    "InvalidValue",
    "LocalError",
    "MAX_INT",
    "MAX_VALUE_BYTES",
    "Message",
    "Order",
    "OwnershipTable",
    "RagEntry",
    "RemoteError",
    "SchemaError",
    "SessionState",
    "StatemeshError",
    "ToolCall",
    "VersionVector",
    "check_value",
    "decode_state_vector",
    "doc_kind",
    "encode_state_vector",
    "fingerprint",
    "fingerprint_hex",
    "from_stored",
    "new_doc",
    "to_stored",
    "validate_document",
]
