"""Convergence fingerprints: one 32-byte value that is equal exactly when replicas agree.

pycrdt's byte encodings are not canonical (`get_update()`, `get_state()` and snapshots
differ between replicas holding identical content), and the state vector alone misses
deletes, because a pure delete does not advance it. A replica's content is determined by
which operations it has integrated (its state vector) plus which of them are deleted (its
delete set), so the fingerprint is blake3 over a canonical encoding of both:

    b"statemesh/fp/v1"
    varuint n, then n x (client, clock)            state vector, sorted by client
    varuint m, then m x (client, varuint r,        delete set, sorted by client, each
                         r x (clock, length))      client's ranges sorted and merged

The delete set is read from `doc.get_update(doc.get_state())`: an update relative to our
own state carries no structs (its first varuint, the struct group count, is 0; pending
structs of out-of-order updates are not included), followed by the whole delete set in
the lib0 v1 encoding. GC on or off gives the same delete set, so the fingerprint does not
depend on it, nor on delivery order. The work is linear in the size of the delete set.
"""

from __future__ import annotations

import blake3
from pycrdt import Doc

from crdt_types.errors import InvalidValue
from crdt_types.vv import decode_state_vector, write_varuint

__all__ = ["DOMAIN", "decode_delete_set", "fingerprint", "fingerprint_hex", "canonical_state"]

DOMAIN = b"statemesh/fp/v1"


def _varuints(data: bytes, pos: int) -> list[int]:
    # One pass over the bytes: most varuints in a delete set are one byte, so the fast
    # path keeps this linear and cheap even for deletes in the tens of thousands.
    out: list[int] = []
    append = out.append
    value = 0
    shift = 0
    for byte in data[pos:]:
        if byte < 0x80 and not shift:
            append(byte)
            continue
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            append(value)
            value = 0
            shift = 0
        else:
            shift += 7
            if shift > 63:
                raise InvalidValue("varuint longer than 64 bits in delete set")
    if shift:
        raise InvalidValue("truncated varuint in delete set")
    return out


def decode_delete_set(update: bytes) -> dict[int, list[tuple[int, int]]]:
    """Decode the delete set of a struct-less v1 update into {client: merged [(clock, len)]}."""
    nums = _varuints(update, 0)
    if not nums or nums[0] != 0:
        raise InvalidValue("update carries structs; expected doc.get_update(doc.get_state())")
    i = 1
    if i >= len(nums):
        raise InvalidValue("update has no delete set section")
    n_clients = nums[i]
    i += 1
    result: dict[int, list[tuple[int, int]]] = {}
    try:
        for _ in range(n_clients):
            client, n_ranges = nums[i], nums[i + 1]
            i += 2
            ranges = [(nums[i + 2 * j], nums[i + 2 * j + 1]) for j in range(n_ranges)]
            if len(ranges) != n_ranges or i + 2 * n_ranges > len(nums):
                raise IndexError
            i += 2 * n_ranges
            result.setdefault(client, []).extend(ranges)
    except IndexError:
        raise InvalidValue("truncated delete set") from None
    if i != len(nums):
        raise InvalidValue("trailing data after delete set")
    merged = {client: _merge(ranges) for client, ranges in result.items()}
    return {client: ranges for client, ranges in merged.items() if ranges}


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for clock, length in ranges:
        if length == 0:
            continue
        if merged and clock <= merged[-1][0] + merged[-1][1]:
            start, prev_len = merged[-1]
            merged[-1] = (start, max(prev_len, clock + length - start))
        else:
            merged.append((clock, length))
    return merged


def canonical_state(doc: Doc) -> bytes:
    """The canonical byte form of a replica's state vector and delete set."""
    clocks = decode_state_vector(doc.get_state())
    deletes = decode_delete_set(doc.get_update(doc.get_state()))
    out = bytearray(DOMAIN)
    entries = sorted((c, k) for c, k in clocks.items() if k)
    write_varuint(out, len(entries))
    for client, clock in entries:
        write_varuint(out, client)
        write_varuint(out, clock)
    clients = sorted(c for c, r in deletes.items() if r)
    write_varuint(out, len(clients))
    for client in clients:
        ranges = deletes[client]
        write_varuint(out, client)
        write_varuint(out, len(ranges))
        for clock, length in ranges:
            write_varuint(out, clock)
            write_varuint(out, length)
    return bytes(out)


def fingerprint(doc: Doc) -> bytes:
    """32-byte blake3 fingerprint, equal on replicas holding the same operations and deletes."""
    return blake3.blake3(canonical_state(doc)).digest()


def fingerprint_hex(doc: Doc) -> str:
    """`fingerprint` as 64 hex characters."""
    return fingerprint(doc).hex()
