"""Health of one mesh node: event-loop liveness and readiness to serve and to take over.

Two signals, served as `/livez` and `/readyz` by `mesh.ops_http`:

* **Liveness** (`LoopWatchdog`): a trio task sleeps `interval` seconds at a time and
  measures how late it wakes (the loop's lag). A loop that is stalled cannot run that task,
  nor answer an HTTP request, so the lag reported is the larger of the last measurement
  and the age of the last tick: the first request served after a stall sees the stall's
  full length and gets 503, whichever of the two tasks the scheduler runs first. A
  daemon thread watches the same tick age *during* a stall and logs it once, with the
  stack of the blocked trio thread, because by the time the loop answers again the
  culprit is gone. (A probe whose timeout is shorter than the stall times out instead;
  probes count that as a failure too.)
* **Readiness** (`CatchUp` and `assess`): ready when the store works and holds no
  damaged document (one loaded from a damaged log, until peers refilled it), the node has
  joined, and its replicas hold what peers advertise. "What peers advertise" is the
  durable state vector each peer reported per document (in replica acks and anti-entropy
  exchanges); we compare it with our *durable* vector, because only what is on our disk
  lets us take a session over. The first catch-up is strict: after start the node is not
  ready until an anti-entropy exchange with a live peer found equal digests and it
  covered every advertised vector at once (so a standby is never ready before it could
  take over). After that,
  being behind for less than `ready_lag` seconds still counts as ready: under steady
  writes some rumour is always in flight, and a probe must not flap with it. A document
  this node holds nothing of counts as behind only for `unserved_after` seconds after a
  peer first advertised it: a real one arrives within a few anti-entropy rounds (the
  advertiser sends it in the same exchange), and one that nobody serves by then (made
  up by a keyed peer, or gone) must not hold readiness back forever. The strict first
  catch-up still needs equal digest trees with a live peer, which a made-up vector
  cannot fake. A node whose database file was unreadable at start (moved aside, started
  empty) is not ready until that first catch-up, even with no live peer: it may have
  acknowledged writes it no longer holds.

Invariants: nothing here touches pycrdt or the network; `CatchUp` and `assess` are plain
functions of their inputs (time passed in), so they are tested without a mesh; the
watchdog's thread only reads floats the trio task writes, and never calls into trio.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from crdt_types.errors import InvalidValue, LocalError
from crdt_types.vv import decode_state_vector

__all__ = [
    "CatchUp",
    "LoopWatchdog",
    "Readiness",
    "assess",
    "covers",
]

log = logging.getLogger("statemesh.health")

DEFAULT_INTERVAL = 0.1
DEFAULT_THRESHOLD = 1.0  # a loop late by a second misses SWIM probe timeouts (0.5 s on LAN)
JOIN_GRACE = 3.0  # a node that expects peers but finds none for this long serves alone
# A document we hold nothing of, advertised by a peer that has not sent it by then, no
# longer counts as behind (about 20 anti-entropy rounds: a real one has arrived).
UNSERVED_AFTER = 10.0
# A state vector naming no client, as the replica reports a document it holds nothing of
# (gossip.replica.EMPTY_STATE_VECTOR; not imported, as that module loads pycrdt).
_EMPTY_STATE_VECTOR = b"\x00"


def _positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LocalError(f"{what} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise LocalError(f"{what} must be positive and finite, got {value!r}")
    return float(value)


# --- liveness ------------------------------------------------------------------------------


class LoopWatchdog:
    """Measures the trio loop's lag; `lag()` is safe to call from any thread."""

    def __init__(
        self,
        *,
        interval: float = DEFAULT_INTERVAL,
        threshold: float = DEFAULT_THRESHOLD,
        on_measure: Callable[[float, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Tick every `interval` s; a lag over `threshold` s means not live."""
        self.interval = _positive(interval, "watchdog interval")
        self.threshold = _positive(threshold, "liveness threshold")
        self._on_measure = on_measure
        self._clock = clock
        self.last_lag = 0.0
        self.max_lag = 0.0
        self.stalls = 0
        self._last_tick = clock()
        self._trio_thread: int | None = None
        self._stop = threading.Event()

    def lag(self) -> float:
        """Seconds the loop is late now: the last measurement or the current tick's age."""
        overdue = self._clock() - self._last_tick - self.interval
        return max(self.last_lag, overdue, 0.0)

    def live(self) -> tuple[bool, float]:
        """(live, lag): live while the lag stays at or under the threshold."""
        lag = self.lag()
        return lag <= self.threshold, lag

    def _measure(self, lag: float) -> None:
        stalled = lag > self.threshold
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)
        if stalled:
            self.stalls += 1
        if self._on_measure is not None:
            self._on_measure(lag, stalled)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The ticking task (runs until cancelled); starts the stall-reporting thread."""
        self._trio_thread = threading.get_ident()
        self._last_tick = self._clock()
        self._stop.clear()
        thread = threading.Thread(target=self._monitor, name="statemesh-watchdog", daemon=True)
        thread.start()
        task_status.started()
        try:
            while True:
                due = self._clock() + self.interval
                await trio.sleep(self.interval)
                now = self._clock()
                self._last_tick = now
                self._measure(max(0.0, now - due))
        finally:
            self._stop.set()

    def _monitor(self) -> None:
        # Sees a stall while it happens; never calls into trio (the loop is the one stuck).
        reported = False
        while not self._stop.wait(self.interval * 2):
            overdue = self._clock() - self._last_tick - self.interval
            if overdue <= self.threshold:
                reported = False
                continue
            if reported:
                continue
            reported = True
            frame = sys._current_frames().get(self._trio_thread or -1)
            stack = "".join(traceback.format_stack(frame, limit=8)) if frame else "?"
            log.warning(
                "event loop stalled for %.2f s (liveness threshold %.2f s); trio thread at:\n%s",
                overdue,
                self.threshold,
                stack,
            )


# --- readiness ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Readiness:
    """What `/readyz` answers: ready or not, why not, and how far behind peers we are."""

    ready: bool
    reasons: tuple[str, ...]
    lag: float  # seconds behind the peer we have been behind longest (0: caught up)
    peer_lag: dict[str, float] = field(default_factory=dict)
    behind: dict[str, int] = field(default_factory=dict)  # peer -> documents behind it
    caught_up_once: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "ready": self.ready,
            "reasons": list(self.reasons),
            "lag_seconds": round(self.lag, 3),
            "peer_lag_seconds": {p: round(s, 3) for p, s in sorted(self.peer_lag.items())},
            "behind_documents": dict(sorted(self.behind.items())),
            "caught_up_once": self.caught_up_once,
        }


def covers(ours: bytes, theirs: bytes) -> bool:
    """Whether state vector `ours` covers `theirs` (an unreadable `theirs` is covered)."""
    if ours == theirs:
        return True
    try:
        mine = decode_state_vector(ours)
        other = decode_state_vector(theirs)
    except InvalidValue:
        return True  # a vector we cannot read says nothing we could be behind
    return all(mine.get(client, 0) >= clock for client, clock in other.items())


class CatchUp:
    """How long this node has been behind what each peer advertised, document by document."""

    def __init__(self, *, unserved_after: float = UNSERVED_AFTER) -> None:
        """Start with nothing known (not caught up, never behind)."""
        self.unserved_after = _positive(unserved_after, "unserved_after")
        self.behind_since: dict[str, float] = {}
        # (peer, doc) -> when first advertised while we held nothing of the document.
        self._unheld_since: dict[tuple[str, str], float] = {}
        self.unserved = 0  # advertised documents ignored at the last update: nobody sent them
        self.behind: dict[str, list[str]] = {}  # peer -> documents we lack (sorted)
        self.caught_up_once = False
        # (peer, doc) -> (their vector, our vector, covered): vectors rarely change between
        # updates, and comparing bytes is much cheaper than decoding them.
        self._cache: dict[tuple[str, str], tuple[bytes, bytes, bool]] = {}

    def update(
        self,
        now: float,
        advertised: Mapping[str, Mapping[str, bytes]],
        ours: Callable[[str], bytes],
        live: Iterable[str],
        *,
        exchanged: bool,
    ) -> None:
        """Compare `advertised` {peer: {doc: durable vector}} of `live` peers with `ours(doc)`.

        `exchanged`: an anti-entropy exchange with a live peer ended with equal digest
        trees; until one has, nothing says we hold what peers hold (vectors learned from
        a few acks name only the documents they acknowledge).
        """
        live = set(live)
        cache = self._cache
        behind: dict[str, list[str]] = {}
        seen: set[tuple[str, str]] = set()
        unheld = self._unheld_since
        unserved = 0
        for peer, docs in advertised.items():
            if peer not in live:
                continue
            lacking = []
            for doc_id, theirs in docs.items():
                key = (peer, doc_id)
                seen.add(key)
                mine = ours(doc_id)
                hit = cache.get(key)
                if hit is not None and hit[0] == theirs and hit[1] == mine:
                    covered = hit[2]
                else:
                    covered = covers(mine, theirs)
                    cache[key] = (theirs, mine, covered)
                if covered:
                    continue
                if mine == _EMPTY_STATE_VECTOR:  # we hold nothing of the document
                    since = unheld.setdefault(key, now)
                    if now - since >= self.unserved_after:
                        unserved += 1
                        continue
                lacking.append(doc_id)
            if lacking:
                behind[peer] = sorted(lacking)
        if len(cache) > len(seen):
            for key in [k for k in cache if k not in seen]:
                del cache[key]  # peers reaped or documents gone: keep the cache bounded
                unheld.pop(key, None)  # every key of `unheld` is one of the cache's
        self.unserved = unserved
        for peer in list(self.behind_since):
            if peer not in behind:
                del self.behind_since[peer]
        for peer in behind:
            self.behind_since.setdefault(peer, now)
        self.behind = behind
        if not behind and exchanged:
            self.caught_up_once = True

    def peer_lag(self, now: float) -> dict[str, float]:
        """{peer: seconds we have been behind it} for peers we are behind now."""
        return {p: max(0.0, now - t) for p, t in self.behind_since.items()}


def assess(
    now: float,
    catch_up: CatchUp,
    *,
    ready_lag: float,
    started_at: float,
    expects_peers: bool,
    live_peers: int,
    store_error: str | None = None,
    leaving: bool = False,
    standby_behind: Iterable[tuple[str, str]] = (),
    damaged: Iterable[str] = (),
    recovered_from: str | None = None,
) -> Readiness:
    """Decide readiness from plain facts (see the module docstring for the rules).

    `damaged` describes each document loaded from a damaged log (id, record, cause);
    `recovered_from` is where an unreadable database file was moved at start.
    """
    ready_lag = _positive(ready_lag, "ready_lag")
    reasons: list[str] = []
    if leaving:
        reasons.append("leaving: this node is handing its sessions over and shutting down")
    if store_error is not None:
        reasons.append(f"store: {store_error}")
    damaged = list(damaged)
    if damaged:
        # One reason naming every damaged document: a probe shows one line per cause.
        reasons.append(
            f"damaged: {len(damaged)} document(s) damaged on disk, refilling from peers"
            f" (durable commits on them refused): {'; '.join(damaged)}"
        )
    if recovered_from is not None and not catch_up.caught_up_once:
        # Started empty: even alone, nothing says this node holds what it acknowledged
        # before, so it is not ready until one complete catch-up with a live peer.
        reasons.append(f"store was unreadable: moved to {recovered_from}; refilling from peers")
    alone = live_peers == 0
    if alone and expects_peers and now - started_at < JOIN_GRACE:
        reasons.append(
            f"joining: no live peer yet ({now - started_at:.1f} s of {JOIN_GRACE:.0f} s grace)"
        )
    peer_lag = catch_up.peer_lag(now)
    lag = max(peer_lag.values(), default=0.0)
    behind = {p: len(d) for p, d in catch_up.behind.items()}
    if not alone and not catch_up.caught_up_once:
        if behind:
            worst = max(behind, key=lambda p: behind[p])
            reasons.append(
                f"catching up: {behind[worst]} documents behind {worst} "
                f"(first catch-up after start must be complete)"
            )
        else:
            reasons.append("syncing: no anti-entropy exchange with a live peer completed yet")
        for session, owner in standby_behind:
            reasons.append(f"standby: session {session!r} is behind its owner {owner!r}")
    elif not alone and lag > ready_lag:
        worst = max(peer_lag, key=lambda p: peer_lag[p])
        reasons.append(
            f"lagging: {behind.get(worst, 0)} documents behind {worst} for {lag:.1f} s "
            f"(ready_lag {ready_lag:g} s)"
        )
    return Readiness(not reasons, tuple(reasons), lag, peer_lag, behind, catch_up.caught_up_once)
