"""Prometheus metrics of one mesh node, updated by the runtime through named events.

`Metrics` owns its own `CollectorRegistry` (never the process-global one) because several
nodes may live in one process (tests, the simulator-backed demo, an embedding program that
runs two meshes). The runtime calls methods named for what happened (`envelope_sent`,
`frame_rejected`, `committed`, `took_over`, ...) and never touches a prometheus object, so
names, labels and buckets are decided here, once.

Invariants:

* Bounded label cardinality: every label value comes from a closed set. Message types are
  the snake_case names of `gossip.messages.REGISTRY` (anything else counts as ``other``),
  rejection reasons are `BadFrame.REASONS` (else ``other``), member states are
  `MEMBER_STATES`, commit levels are ``local``, ``1`` .. ``16``, ``all`` (else ``many``).
  The only open label is the per-peer lag gauge, whose series `forget_peer` removes when
  a member is reaped.
* Every labelled series that the closed sets name exists from the start at zero, so a
  dashboard's ``rate()`` has a series to work with before the first event.
* Names follow Prometheus conventions: ``statemesh_`` prefix, base units (seconds, bytes),
  ``_total`` on counters (prometheus_client appends it), unit before ``_total``.
* Never a secret, a key or a document value in a label: labels are node ids, cluster
  names, types and reasons only.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from crdt_types.errors import BadFrame, LocalError
from gossip.membership import REFUSED_REASONS
from gossip.messages import MEMBER_STATES, REGISTRY

__all__ = ["CONTENT_TYPE", "MESSAGE_TYPES", "Metrics", "frame_type", "message_type"]

# The classic text format: every Prometheus server and agent in use reads it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

OTHER = "other"
_MAX_LEVEL = 16


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


MESSAGE_TYPES: dict[type, str] = {cls: _snake(cls.__name__) for cls in REGISTRY.values()}
_TYPE_NAMES = frozenset(MESSAGE_TYPES.values())
_FRAME_TYPES = (*sorted(_TYPE_NAMES), "empty", OTHER)
_REASONS = (*BadFrame.REASONS, OTHER)
# Authentic messages dropped after decoding: an envelope the protocol refused (LocalError),
# malformed replication input, or membership input over a cap (`gossip.membership`).
# sync_queue: ownership exchanges with joining members dropped over the queue's bound
# (`mesh.failover`); durable_vectors: durable vectors from senders that are not live
# members, or of documents this node does not hold over the bound kept (`gossip.replication`).
REFUSALS = ("protocol", "replication", *REFUSED_REASONS, "sync_queue", "durable_vectors")
_LEVELS = ("local", *(str(i) for i in range(1, _MAX_LEVEL + 1)), "all", "many")
_PIGGYBACK = "member_update"

# Commit latency: from a group-committed local fsync (~0.5 ms) to a replicated write that
# waited through a suspicion period (seconds).
_COMMIT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# One SQLite WAL fsync: ~0.1 ms on a fast SSD, tens of ms on a busy disk.
_FSYNC_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class _Family(NamedTuple):
    """One prometheus_client family: its kind, name, help text, labels and buckets."""

    kind: type[Counter] | type[Gauge] | type[Histogram]
    name: str
    doc: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


# Every prometheus_client family of a node, keyed by the `Metrics` attribute that holds it
# (the per-frame counters are in `_WireCollector`). One row per family, so a new metric is
# one line here plus the method that updates it.
_FAMILIES: dict[str, _Family] = {
    "_info": _Family(
        Gauge, "statemesh_info",
        "Constant 1, labelled with this node's id, cluster and statemesh version.",
        ("node", "cluster", "version"),
    ),
    "_members": _Family(
        Gauge, "statemesh_members",
        "Members of the cluster known to this node, by SWIM state (this node included).",
        ("state",),
    ),
    "_lag": _Family(
        Gauge, "statemesh_replication_lag_seconds",
        "How long this node's replicas have been behind what peers advertise (0: caught up).",
    ),
    "_behind": _Family(
        Gauge, "statemesh_replication_behind_documents",
        "Documents whose local replica is behind a version a peer advertised.",
    ),
    "_peer_lag": _Family(
        Gauge, "statemesh_replication_peer_lag_seconds",
        "Per peer: how long this node has been behind what that peer advertised.",
        ("peer",),
    ),
    "_commit": _Family(
        Histogram, "statemesh_commit_latency_seconds",
        "Time from a write to its commit at the requested level (local, N replicas, all).",
        ("level",), _COMMIT_BUCKETS,
    ),
    "_commit_timeouts": _Family(
        Counter, "statemesh_commit_timeouts",
        "Commits whose replication level was not reached in time (nothing rolled back).",
        ("level",),
    ),
    "_fsync": _Family(
        Histogram, "statemesh_store_fsync_seconds",
        "Duration of one durable store commit (a group of updates, one fsync).",
        (), _FSYNC_BUCKETS,
    ),
    "_store_updates": _Family(
        Counter, "statemesh_store_updates", "Updates made durable in the local store."
    ),
    "_store_bytes": _Family(
        Counter, "statemesh_store_written_bytes",
        "Bytes of updates made durable in the local store.",
    ),
    "_documents": _Family(
        Gauge, "statemesh_documents", "Documents held by this node (sessions included)."
    ),
    "_sessions": _Family(
        Gauge, "statemesh_sessions_owned", "Sessions this node currently owns."
    ),
    "_takeovers": _Family(
        Counter, "statemesh_takeovers", "Sessions this node took over from a dead owner."
    ),
    "_fencings": _Family(
        Counter, "statemesh_fencings",
        "Times this node found itself fenced: a session it owned was taken over.",
    ),
    "_loop_lag": _Family(
        Gauge, "statemesh_event_loop_lag_seconds",
        "Last measured delay of the event loop in running a task that was due.",
    ),
    "_loop_lag_max": _Family(
        Gauge, "statemesh_event_loop_lag_max_seconds",
        "Largest event loop delay measured since the node started.",
    ),
    "_loop_stalls": _Family(
        Counter, "statemesh_event_loop_stalls",
        "Event loop lag measurements over the liveness threshold.",
    ),
    "_ready": _Family(
        Gauge, "statemesh_ready", "1 when this node is ready (/readyz answers 200), else 0."
    ),
    "_damaged": _Family(
        Gauge, "statemesh_store_damaged_documents",
        "Documents loaded from a damaged log and not yet refilled from peers.",
    ),
    "_config_changes": _Family(
        Counter, "statemesh_config_changes",
        "Cluster configuration values changed (local or replicated).",
    ),
    "_secrets": _Family(
        Gauge, "statemesh_secrets", "Secrets stored in the cluster vault (count only)."
    ),
    "_refused": _Family(
        Counter, "statemesh_gossip_refused",
        "Authenticated messages dropped after decoding, by reason: protocol (envelope "
        "refused), replication (malformed), envelope_cap and table_full (new members over "
        "a cap), forwards and sync_replies (requests over a cap), non_member (anti-entropy "
        "requests from senders that are not live members), sync_queue (ownership "
        "exchanges with joining members over the queue's bound), durable_vectors (from "
        "non-members, or of documents not held here over the bound kept).",
        ("reason",),
    ),
}  # fmt: skip


def message_type(message: object) -> str:
    """The metric label of one gossip message (its class name in snake_case)."""
    return MESSAGE_TYPES.get(type(message), OTHER)


def frame_type(messages: Iterable[object]) -> str:
    """The label of a frame: its first message that is not a piggybacked member update."""
    first = None
    for msg in messages:
        label = message_type(msg)
        if label != _PIGGYBACK:
            return label
        first = first or label
    return first or "empty"


def _level_label(level: int | str) -> str:
    if isinstance(level, bool):
        return OTHER
    if isinstance(level, int):
        if level == 0:
            return "local"
        return str(level) if 0 < level <= _MAX_LEVEL else ("many" if level > 0 else OTHER)
    return level if level in _LEVELS else OTHER


def _seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LocalError(f"{what} must be a finite number of seconds, got {value!r}")
    return max(0.0, float(value))  # a clock step must not make a histogram observe < 0


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LocalError(f"{what} must be an int >= 0, got {value!r}")
    return value


class _WireCollector:
    """Frame, byte, message and rejection counters as plain ints, exported when scraped.

    These run for every frame on the wire, where a prometheus_client `Counter` child costs
    a lock and ~1.4 us per increment; a dict increment costs ~0.1 us. The runtime updates
    them from the trio thread only; a scrape reads ints, which is safe from any thread.
    """

    _FAMILIES = (
        ("frames_sent", "statemesh_gossip_frames_sent", "type",
         "Gossip frames sent, by the type of their main message."),
        ("bytes_sent", "statemesh_gossip_sent_bytes", "type",
         "Bytes of gossip frames sent (sealed size on the wire), by main message type."),
        ("frames_received", "statemesh_gossip_frames_received", "type",
         "Gossip frames received and accepted, by the type of their main message."),
        ("bytes_received", "statemesh_gossip_received_bytes", "type",
         "Bytes of accepted gossip frames received, by main message type."),
        ("messages_sent", "statemesh_gossip_messages_sent", "type",
         "Gossip messages sent (a frame carries one or more), by type."),
        ("messages_received", "statemesh_gossip_messages_received", "type",
         "Gossip messages received in accepted frames, by type."),
        ("rejected", "statemesh_gossip_frames_rejected", "reason",
         "Received frames dropped, by reason (auth, cluster, replay, decode, ...)."),
    )  # fmt: skip

    def __init__(self) -> None:
        for attr, _name, label, _doc in self._FAMILIES:
            keys = _REASONS if label == "reason" else _FRAME_TYPES
            setattr(self, attr, dict.fromkeys(keys, 0))

    def frame(
        self, frames: dict[str, int], nbytes_total: dict[str, int], type_: str, nbytes: int
    ) -> None:
        if type(nbytes) is not int or nbytes < 0:  # checked before anything is counted
            raise LocalError(f"nbytes must be an int >= 0, got {nbytes!r}")
        label = type_ if type_ in frames else OTHER
        frames[label] += 1
        nbytes_total[label] += nbytes

    def envelope(
        self,
        frames: dict[str, int],
        nbytes_total: dict[str, int],
        counts: dict[str, int],
        messages: Iterable[object],
        nbytes: int,
    ) -> None:
        messages = tuple(messages)
        self.frame(frames, nbytes_total, frame_type(messages), nbytes)
        for msg in messages:
            counts[MESSAGE_TYPES.get(type(msg), OTHER)] += 1

    def collect(self) -> Iterable[Metric]:
        for attr, name, label, doc in self._FAMILIES:
            family = CounterMetricFamily(name, doc, labels=[label])
            for value, count in list(getattr(self, attr).items()):
                family.add_metric([value], count)
            yield family


class _WithoutCreated:
    """The registry minus the ``*_created`` samples that prometheus_client adds.

    In the classic text format they show up as one extra gauge family per counter and
    histogram (doubling the series a scraper stores) and no dashboard here uses them.
    Filtering per registry, not with the process-global `disable_created_metrics()`, keeps
    other users of prometheus_client in the same process unaffected.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def _version() -> str:
    try:
        return metadata.version("statemesh")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """Every metric of one node, in a registry of its own; `render()` for /metrics."""

    def __init__(self, node: str = "", cluster: str = "") -> None:
        """Create the metric families; `node` and `cluster` label `statemesh_info`."""
        self.node = node
        self._max_loop_lag = 0.0
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        for attr, fam in _FAMILIES.items():
            extra = {"buckets": fam.buckets} if fam.buckets else {}
            setattr(self, attr, fam.kind(fam.name, fam.doc, fam.labels, registry=r, **extra))
        self._info.labels(node, cluster, _version()).set(1)
        # Per-frame counters are plain ints read at scrape time (see `_WireCollector`).
        self._wire = _WireCollector()
        r.register(self._wire)
        for state in MEMBER_STATES:
            self._members.labels(state).set(0)
        for level in ("local", "1", "2", "3", "all"):
            self._commit.labels(level)
            self._commit_timeouts.labels(level)
        for reason in (*REFUSALS, OTHER):
            self._refused.labels(reason)

    def __repr__(self) -> str:
        return f"Metrics(node={self.node!r})"

    # --- exposition -------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (serve it with `CONTENT_TYPE`)."""
        return generate_latest(_WithoutCreated(self.registry))

    # --- membership -------------------------------------------------------------------

    def members(self, counts: Mapping[str, int]) -> None:
        """Set the member count of every state (states not in `counts` become 0)."""
        unknown = set(counts) - set(MEMBER_STATES)
        if unknown:
            raise LocalError(f"unknown member states {sorted(unknown)}; known: {MEMBER_STATES}")
        checked = {s: _count(counts.get(s, 0), f"members[{s}]") for s in MEMBER_STATES}
        for state, n in checked.items():
            self._members.labels(state).set(n)

    # --- gossip -------------------------------------------------------------------------

    def frame_sent(self, type: str, nbytes: int) -> None:
        """One frame of main message `type` and `nbytes` bytes was sent."""
        self._wire.frame(self._wire.frames_sent, self._wire.bytes_sent, type, nbytes)

    def frame_received(self, type: str, nbytes: int) -> None:
        """One frame of main message `type` and `nbytes` bytes was received and accepted."""
        self._wire.frame(self._wire.frames_received, self._wire.bytes_received, type, nbytes)

    def envelope_sent(self, messages: Iterable[object], nbytes: int) -> None:
        """A frame carrying `messages` was sent: counts the frame, its bytes and each message."""
        w = self._wire
        w.envelope(w.frames_sent, w.bytes_sent, w.messages_sent, messages, nbytes)

    def envelope_received(self, messages: Iterable[object], nbytes: int) -> None:
        """An accepted frame carrying `messages` arrived: frame, bytes and each message."""
        w = self._wire
        w.envelope(w.frames_received, w.bytes_received, w.messages_received, messages, nbytes)

    def refused(self, reason: str, count: int = 1) -> None:
        """`count` authenticated messages were dropped for `reason` (a `REFUSALS` entry)."""
        self._refused.labels(reason if reason in REFUSALS else OTHER).inc(_count(count, "count"))

    def frame_rejected(self, reason: str, count: int = 1) -> None:
        """`count` received frames were dropped for `reason` (a `BadFrame.REASONS` entry)."""
        rejected = self._wire.rejected
        rejected[reason if reason in rejected else OTHER] += _count(count, "count")

    # --- replication --------------------------------------------------------------------

    def replication_lag(self, seconds: float, behind_documents: int = 0) -> None:
        """This node has been behind its peers for `seconds` (0 when caught up)."""
        seconds = _seconds(seconds, "lag")
        behind_documents = _count(behind_documents, "behind_documents")
        self._lag.set(seconds)
        self._behind.set(behind_documents)

    def peer_lag(self, peer: str, seconds: float) -> None:
        """This node has been behind what `peer` advertised for `seconds`."""
        if not isinstance(peer, str) or not peer:
            raise LocalError(f"peer must be a non-empty node id, got {peer!r}")
        self._peer_lag.labels(peer).set(_seconds(seconds, "lag"))

    def forget_peer(self, peer: str) -> None:
        """Drop the per-peer series of a member that was reaped (keeps cardinality bounded)."""
        with contextlib.suppress(KeyError):  # never had a series: nothing to forget
            self._peer_lag.remove(peer)

    # --- commits and storage ------------------------------------------------------------

    def committed(self, level: int | str, seconds: float) -> None:
        """A commit reached `level` (0 or "local", N replicas, "all") after `seconds`."""
        self._commit.labels(_level_label(level)).observe(_seconds(seconds, "commit latency"))

    def commit_timed_out(self, level: int | str) -> None:
        """A commit did not reach `level` in time (the write itself stays)."""
        self._commit_timeouts.labels(_level_label(level)).inc()

    def store_synced(self, seconds: float, updates: int = 1, nbytes: int = 0) -> None:
        """The store made `updates` updates (`nbytes` bytes) durable in one fsync of `seconds`."""
        seconds = _seconds(seconds, "fsync duration")
        updates, nbytes = _count(updates, "updates"), _count(nbytes, "nbytes")
        self._fsync.observe(seconds)
        self._store_updates.inc(updates)
        self._store_bytes.inc(nbytes)

    def documents(self, count: int) -> None:
        """This node now holds `count` documents."""
        self._documents.set(_count(count, "documents"))

    # --- ownership ----------------------------------------------------------------------

    def sessions_owned(self, count: int) -> None:
        """This node now owns `count` sessions."""
        self._sessions.set(_count(count, "sessions owned"))

    def took_over(self, sessions: int = 1) -> None:
        """This node took over `sessions` sessions from a dead owner."""
        self._takeovers.inc(_count(sessions, "sessions"))

    def fenced(self, sessions: int = 1) -> None:
        """This node was fenced out of `sessions` sessions it used to own."""
        self._fencings.inc(_count(sessions, "sessions"))

    # --- health ---------------------------------------------------------------------------

    def loop_lag(self, seconds: float, *, stalled: bool = False) -> None:
        """The event-loop watchdog measured `seconds` of lag (`stalled`: over the threshold)."""
        lag = _seconds(seconds, "loop lag")
        self._loop_lag.set(lag)
        if lag > self._max_loop_lag:  # one writer (the watchdog task): no race
            self._max_loop_lag = lag
            self._loop_lag_max.set(lag)
        if stalled:
            self._loop_stalls.inc()

    def ready(self, is_ready: bool) -> None:
        """Record readiness (what /readyz answers)."""
        self._ready.set(1 if is_ready else 0)

    def damaged_documents(self, count: int) -> None:
        """Documents damaged on disk and not yet repaired (they keep /readyz at 503)."""
        self._damaged.set(_count(count, "count"))

    # --- cluster state --------------------------------------------------------------------

    def config_changed(self, count: int = 1) -> None:
        """`count` cluster configuration values changed."""
        self._config_changes.inc(_count(count, "count"))

    def secrets(self, count: int) -> None:
        """The vault now holds `count` secrets."""
        self._secrets.set(_count(count, "secrets"))
