"""Typed agent failover state over pycrdt: values, version vectors, fingerprints, schemas.

The lowest layer of statemesh. It never imports trio, zeroconf, sqlite3 or socket; time
and randomness are passed in. The names below are the public surface; submodules hold
the details.
"""

from crdt_types.errors import (
    InvalidValue,
    LocalError,
    RemoteError,
    SchemaError,
    StatemeshError,
)
from crdt_types.fingerprint import fingerprint, fingerprint_hex
from crdt_types.values import MAX_INT, MAX_VALUE_BYTES, check_value, from_stored, to_stored
from crdt_types.vv import Order, VersionVector, decode_state_vector, encode_state_vector

__all__ = [
    "MAX_INT",
    "MAX_VALUE_BYTES",
    "InvalidValue",
    "LocalError",
    "Order",
    "RemoteError",
    "SchemaError",
    "StatemeshError",
    "VersionVector",
    "check_value",
    "decode_state_vector",
    "encode_state_vector",
    "fingerprint",
    "fingerprint_hex",
    "from_stored",
    "to_stored",
]
