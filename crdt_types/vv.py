"""Version vectors, decoded from pycrdt state vectors.

A pycrdt (Yjs) state vector says, for each client id that has written to a document,
how many of its operations this replica holds (the next clock it expects). It is
encoded in lib0 v1: a varuint entry count, then (client, clock) varuint pairs in no
particular order. `VersionVector` is the decoded, immutable, order-independent form the
gossip layer reasons with: compare two replicas, merge what they know, list what one
lacks.

Invariants: entries are sorted by client and a zero clock is the same as no entry, so
two vectors describing the same knowledge are equal (and hash equal) however they were
encoded. Decoding is strict: truncated input, trailing bytes, duplicate clients or
numbers over 64 bits raise `InvalidValue`. That is the local-misuse error; code that
decodes bytes from a peer catches it and turns it into its own `RemoteError`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from crdt_types.errors import InvalidValue

__all__ = [
    "Order",
    "VersionVector",
    "decode_state_vector",
    "encode_state_vector",
    "read_varuint",
    "write_varuint",
]

_MAX_U64 = (1 << 64) - 1
# A state vector with more writers than this is not one we produced; refusing it early
# bounds the work a hostile peer can cause.
MAX_ENTRIES = 1 << 20


def read_varuint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Read one lib0 varuint at `pos`; return (value, next position)."""
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise InvalidValue("truncated varuint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 63:
            raise InvalidValue("varuint longer than 64 bits")
    if result > _MAX_U64:
        raise InvalidValue("varuint larger than 64 bits")
    return result, pos


def write_varuint(out: bytearray, value: int) -> None:
    """Append `value` to `out` as a lib0 varuint."""
    if not 0 <= value <= _MAX_U64:
        raise InvalidValue(f"varuint {value} outside 0..2**64-1")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def decode_state_vector(sv: bytes | bytearray | memoryview) -> dict[int, int]:
    """Decode a pycrdt state vector into {client id: clock}; `InvalidValue` if malformed."""
    if not isinstance(sv, bytes | bytearray | memoryview):
        raise InvalidValue(f"state vector must be bytes, not {type(sv).__name__}")
    count, pos = read_varuint(sv, 0)
    # Each entry takes at least two bytes, so a count the input cannot hold is garbage.
    if count > MAX_ENTRIES or count * 2 > len(sv) - pos:
        raise InvalidValue(f"state vector claims {count} entries in {len(sv)} bytes")
    clocks: dict[int, int] = {}
    for _ in range(count):
        client, pos = read_varuint(sv, pos)
        clock, pos = read_varuint(sv, pos)
        if client in clocks:
            raise InvalidValue(f"state vector lists client {client} twice")
        clocks[client] = clock
    if pos != len(sv):
        raise InvalidValue(f"state vector has {len(sv) - pos} trailing bytes")
    return clocks


def encode_state_vector(clocks: Mapping[int, int]) -> bytes:
    """Encode {client: clock} as a pycrdt state vector (sorted by client, zeros omitted)."""
    entries = sorted((c, k) for c, k in clocks.items() if k)
    out = bytearray()
    write_varuint(out, len(entries))
    for client, clock in entries:
        write_varuint(out, client)
        write_varuint(out, clock)
    return bytes(out)


class Order(enum.Enum):
    """How two version vectors relate."""

    EQUAL = "equal"
    BEFORE = "before"  # self has seen strictly less than other
    AFTER = "after"  # self has seen strictly more than other
    CONCURRENT = "concurrent"  # each has seen something the other has not


@dataclass(frozen=True, slots=True)
class VersionVector:
    """An immutable version vector: sorted (client, clock) pairs with no zero clocks."""

    entries: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        # Normalise so equality and hashing ignore encoding order and zero clocks.
        norm = tuple(sorted((c, k) for c, k in self.entries if k))
        for client, clock in norm:
            if not (0 <= client <= _MAX_U64 and 0 <= clock <= _MAX_U64):
                raise InvalidValue(f"version vector entry ({client}, {clock}) out of range")
        if len({c for c, _ in norm}) != len(norm):
            raise InvalidValue("version vector lists a client twice")
        object.__setattr__(self, "entries", norm)

    @classmethod
    def from_dict(cls, clocks: Mapping[int, int]) -> VersionVector:
        """Build from a {client: clock} mapping."""
        return cls(tuple(clocks.items()))

    @classmethod
    def from_state_vector(cls, sv: bytes | bytearray | memoryview) -> VersionVector:
        """Decode pycrdt state vector bytes; `InvalidValue` if malformed."""
        return cls.from_dict(decode_state_vector(sv))

    @classmethod
    def from_doc(cls, doc: Any) -> VersionVector:
        """The version vector of a pycrdt Doc."""
        return cls.from_state_vector(doc.get_state())

    def to_state_vector(self) -> bytes:
        """Encode as pycrdt state vector bytes (usable with `doc.get_update`)."""
        return encode_state_vector(dict(self.entries))

    def as_dict(self) -> dict[int, int]:
        """A fresh {client: clock} dict."""
        return dict(self.entries)

    def get(self, client: int) -> int:
        """The clock of `client` (0 if it never wrote)."""
        for c, k in self.entries:
            if c == client:
                return k
        return 0

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.entries)

    def compare(self, other: VersionVector) -> Order:
        """Say whether self is EQUAL to, BEFORE, AFTER or CONCURRENT with `other`."""
        mine, theirs = dict(self.entries), dict(other.entries)
        self_ahead = any(k > theirs.get(c, 0) for c, k in mine.items())
        other_ahead = any(k > mine.get(c, 0) for c, k in theirs.items())
        if self_ahead and other_ahead:
            return Order.CONCURRENT
        if self_ahead:
            return Order.AFTER
        if other_ahead:
            return Order.BEFORE
        return Order.EQUAL

    def covers(self, other: VersionVector) -> bool:
        """True if self has seen everything `other` has (EQUAL or AFTER)."""
        mine = dict(self.entries)
        return all(mine.get(c, 0) >= k for c, k in other.entries)

    def merge(self, other: VersionVector) -> VersionVector:
        """The element-wise maximum: what a replica knows after merging both."""
        merged = dict(self.entries)
        for c, k in other.entries:
            if k > merged.get(c, 0):
                merged[c] = k
        return VersionVector.from_dict(merged)

    def missing_from(self, other: VersionVector) -> dict[int, tuple[int, int]]:
        """What self lacks relative to `other`: {client: (their clock, our clock)}."""
        mine = dict(self.entries)
        return {c: (k, mine.get(c, 0)) for c, k in other.entries if k > mine.get(c, 0)}

    def total(self) -> int:
        """The number of operations seen, summed over clients."""
        return sum(k for _, k in self.entries)
