"""Rendezvous (highest random weight) hashing: who takes a workload over, and who stands by.

Every peer must name the same successor for a workload from the same inputs, without
talking to anyone. Rendezvous hashing gives that: each (workload, node) pair gets a
pseudo-random weight, blake3 of the two length-prefixed ids, and the nodes are ranked by
weight, highest first. The ranking depends only on the workload and the set of nodes,
never on the order the caller lists them in, and removing a node that is not first leaves
the first where it was, so a failure moves only the workloads of the failed node and
spreads them evenly over the survivors.

Which nodes are *eligible* (alive, ready, caught up) is decided in `gossip.failover`;
this module only ranks. Ties in weight (64 bits, so practically never) fall back to the
node id so the order stays total and the same everywhere.

The functions compute every ranking afresh. A `Ranker` gives the same answers from a memo
per (workload, set of nodes): failover re-ranks every workload on every step, and between
two membership changes the answer cannot change. Its owner (one node's failover state)
holds it, so nodes sharing a process share no state; the memo holds only validated inputs
and is cleared when full, so it is bounded and never changes a result.
"""

from __future__ import annotations

from collections.abc import Iterable

import blake3

from crdt_types.errors import InvalidValue

__all__ = ["RANK_MEMO_MAX", "Ranker", "rank", "standby", "successor", "weight"]

_DOMAIN = b"statemesh/rendezvous/v1\x00"
RANK_MEMO_MAX = 16384  # (workload, node set) rankings a Ranker remembers; a few MiB at most


def _encode_id(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"{what} must be a non-empty str, not {value!r}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidValue(f"{what} is not valid UTF-8 ({exc.reason})") from None


def _prefixed(value: bytes) -> bytes:
    # Length prefixes: ("ab", "c") and ("a", "bc") must not hash alike.
    return len(value).to_bytes(4, "big") + value


def weight(workload: str, node: str) -> int:
    """The 64-bit rendezvous weight of `node` for `workload`."""
    h = blake3.blake3(_DOMAIN + _prefixed(_encode_id(workload, "workload id")))
    h.update(_prefixed(_encode_id(node, "node id")))
    return int.from_bytes(h.digest(8), "big")


def _rank(workload: str, members: frozenset[str]) -> list[str]:
    base = blake3.blake3(_DOMAIN + _prefixed(_encode_id(workload, "workload id")))

    def key(node: str) -> tuple[int, str]:
        # Same bytes as `weight`, with the workload's prefix hashed once per ranking.
        h = base.copy()
        h.update(_prefixed(_encode_id(node, "node id")))
        return int.from_bytes(h.digest(8), "big"), node

    return sorted(members, key=key, reverse=True)


def rank(workload: str, nodes: Iterable[str]) -> list[str]:
    """`nodes` (duplicates dropped) ordered by rendezvous weight for `workload`, best first."""
    return _rank(workload, frozenset(nodes))


def successor(workload: str, candidates: Iterable[str]) -> str | None:
    """The best-ranked of `candidates` for `workload`, or None if there are none."""
    ranked = rank(workload, candidates)
    return ranked[0] if ranked else None


def standby(workload: str, owner: str, members: Iterable[str]) -> str | None:
    """The node that would succeed `owner` on `workload`: the best of `members` but the owner."""
    _encode_id(owner, "owner node id")
    return successor(workload, (m for m in members if m != owner))


class Ranker:
    """`rank`, `successor` and `standby` answered from a bounded memo of rankings.

    Owned by one caller (a node's `FailoverState`); the memo keeps at most `max_entries`
    rankings and starts over when full.
    """

    __slots__ = ("max_entries", "_memo")

    def __init__(self, max_entries: int = RANK_MEMO_MAX) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise InvalidValue(f"max_entries must be an int >= 1, not {max_entries!r}")
        self.max_entries = max_entries
        self._memo: dict[tuple[str, frozenset[str]], tuple[str, ...]] = {}

    def __len__(self) -> int:
        """How many rankings are remembered."""
        return len(self._memo)

    def rank(self, workload: str, nodes: Iterable[str]) -> list[str]:
        """Same as `rank`; a fresh list each call, so callers may change it."""
        members = frozenset(nodes)
        if not isinstance(workload, str):
            return _rank(workload, members)  # raises the id error; nothing to remember
        memo_key = (workload, members)
        hit = self._memo.get(memo_key)
        if hit is not None:
            return list(hit)
        ranked = _rank(workload, members)
        if len(self._memo) >= self.max_entries:
            self._memo.clear()
        self._memo[memo_key] = tuple(ranked)
        return ranked

    def successor(self, workload: str, candidates: Iterable[str]) -> str | None:
        """Same as `successor`, from the memo."""
        ranked = self.rank(workload, candidates)
        return ranked[0] if ranked else None

    def standby(self, workload: str, owner: str, members: Iterable[str]) -> str | None:
        """Same as `standby`, from the memo."""
        _encode_id(owner, "owner node id")
        return self.successor(workload, (m for m in members if m != owner))
