"""Operations of one running mesh node: health, metrics, configuration and the vault.

`Operations` is the component a `Mesh` composes for what operators need next to the
protocol (`mesh.ops`). It runs two tasks in the mesh's nursery: the event-loop watchdog
(`mesh.health.LoopWatchdog`) and a refresh loop that, every `REFRESH` seconds and
whenever the cluster document changes,

* recomputes readiness (`mesh.health.assess`) from the replicator's advertised durable
  vectors, membership, the store's last commit and the failover standbys;
* brings the gauges of `mesh.metrics.Metrics` up to date (members by state, replication
  lag, documents, sessions owned) and turns the runtime's running counters (takeovers,
  fencings, rejected frames) into counter increments;
* diffs the cluster configuration against what it last saw and publishes one
  `ConfigChanged` per changed key to `mesh.subscribe()` subscribers, whether the change
  was made here or arrived from a peer.

Damaged documents (loaded from a damaged log, `DurableReplica.damaged`) keep `/readyz` at
503 and are shown in `/status` and the `statemesh_store_damaged_documents` gauge. A third
task repairs them: every `REPAIR_INTERVAL` it pulls them from every live member
(`Failover.pull`); once every member answered and the replica covers each one's durable
vector, it encodes the document and asks the store to supersede the damaged log with a
checkpoint of it (`AsyncStore.repair`), which clears the mark. A node with no live peer
has nobody to refill from: the mark stays, reported, until one joins.

Per-frame, per-commit and per-fsync figures are fed by small hooks in the runtime and the
store (`frame_sent`/`frame_received`, `commit_observed`, `store_committed`), not polled.

Configuration and secrets: `set_config` validates against the cluster schema before
anything is written (a bad value raises `InvalidValue`, nothing changes) and returns once
the change is durable here; secrets are sealed by `mesh.vault.Vault` under a key derived
from the cluster key before they enter the document, so no clear value is ever stored,
logged, or put in `/status` or `/metrics`. A node without a key (``--insecure``) holds no
vault key: setting or reading a secret raises `LocalError`.

Invariants: everything here runs on the trio thread (pycrdt documents are touched only
there); refreshes are bounded in time by the size of the advertised-vector table and
never block on the network; events that subscribers cannot take are dropped and counted
by the subscription, as for every other mesh event.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from crdt_types.cluster import ClusterState
from crdt_types.docs import Entry
from crdt_types.errors import LocalError, StatemeshError
from gossip.messages import MEMBER_STATES
from gossip.replica import EMPTY_STATE_VECTOR
from mesh.health import DEFAULT_THRESHOLD, CatchUp, LoopWatchdog, Readiness, assess, covers
from mesh.metrics import Metrics
from mesh.vault import Vault

_log = logging.getLogger("statemesh.store")

if TYPE_CHECKING:
    from mesh.runtime import Mesh

__all__ = ["ConfigChanged", "Operations", "TAKEOVER_HISTORY"]

REFRESH = 0.5
REPAIR_INTERVAL = 0.5  # between attempts to refill damaged documents from peers
REPAIR_PULL_TIMEOUT = 5.0
DEFAULT_READY_LAG = 2.0
TAKEOVER_HISTORY = 20  # /status shows the last takeovers, not all of them
CLUSTER = "cluster"
SESSION_PREFIX = "session/"


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    """Cluster setting `key` now has `value` at `version`, written by node `by` (`local`: us)."""

    key: str
    value: Any
    version: int
    by: str
    local: bool


def _feed(totals: Mapping[str, int], seen: dict[str, int], inc: Callable[[str, int], None]) -> None:
    """Pass each reason's growth since the last refresh to `inc(reason, delta)`."""
    for reason, total in totals.items():
        delta = total - seen.get(reason, 0)
        if delta > 0:
            inc(reason, delta)
            seen[reason] = total


class Operations:
    """Health, metrics, configuration and secrets of one `Mesh` (see the module docstring)."""

    def __init__(
        self,
        mesh: Mesh,
        *,
        ready_lag: float | None = None,
        liveness_threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        """Compose with `mesh`; `ready_lag` defaults to the mesh config's (or 2 s)."""
        from mesh import ops_http

        ops_http.install()
        self.mesh = mesh
        self.metrics = Metrics(mesh.node_id, mesh.config.cluster)
        self.watchdog = LoopWatchdog(threshold=liveness_threshold, on_measure=self._loop_lag)
        self.catch_up = CatchUp()
        self.vault = Vault(mesh.config.keyring)
        if ready_lag is None:
            ready_lag = getattr(mesh.config, "ready_lag", DEFAULT_READY_LAG)
        self.ready_lag = float(ready_lag)
        config = mesh.config
        self.expects_peers = bool(config.seeds) or bool(config.mdns and config.interfaces)
        self.started_at = trio.current_time()
        self.store_error: str | None = None
        self.takeovers: deque[dict[str, Any]] = deque(maxlen=TAKEOVER_HISTORY)
        self._readiness: Readiness | None = None
        self._counted: dict[str, int] = {}
        self._rejected: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._config_seen: dict[str, tuple[int, str]] = {}
        self._observed: Any = None  # (doc, subscription) of the cluster document
        self._wake = trio.Event()
        if CLUSTER in mesh.replica:
            self._observe()
            self._config_seen = self._config_versions()

    # --- hooks the runtime and the store call ----------------------------------------------

    def frame_sent(self, messages: tuple[object, ...], nbytes: int) -> None:
        """A sealed frame of `nbytes` carrying `messages` was handed to the transport."""
        self.metrics.envelope_sent(messages, nbytes)

    def frame_received(self, messages: tuple[object, ...], nbytes: int) -> None:
        """A frame of `nbytes` carrying `messages` was accepted."""
        self.metrics.envelope_received(messages, nbytes)

    def commit_observed(self, level: int | str | None, seconds: float, ok: bool) -> None:
        """A `Session.commit` at `level` (None: local) returned after `seconds`, or timed out."""
        level = 0 if level is None else level
        if ok:
            self.metrics.committed(level, seconds)
        else:
            self.metrics.commit_timed_out(level)

    def store_committed(
        self, seconds: float, updates: int, nbytes: int, error: BaseException | None
    ) -> None:
        """The store's group commit of `updates` took `seconds`, or failed with `error`."""
        if error is None:
            self.metrics.store_synced(seconds, updates, nbytes)
            if self.store_error is not None:
                _log.warning("store recovered: durable writes are acknowledged again")
            self.store_error = None
        else:
            # The reason, never the data: a failed batch names the file and the cause.
            if self.store_error is None:
                # Once per outage, not once per refused batch: a full disk refuses many.
                _log.error(
                    "store failed; durable acknowledgements refused until it recovers: %s: %s",
                    type(error).__name__,
                    error,
                )
            self.store_error = f"{type(error).__name__}: {error}"
            self._wake.set()

    # --- the tasks ----------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the watchdog and the refresh loop until the mesh closes."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.watchdog.run)
            await nursery.start(self._watch_events)
            nursery.start_soon(self._repair_loop)
            task_status.started()
            try:
                while not self.mesh._closed:
                    with trio.move_on_after(REFRESH):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    if self.mesh._closed:
                        break
                    with contextlib.suppress(StatemeshError):
                        self.refresh()
            finally:
                self._unobserve()
                nursery.cancel_scope.cancel()

    async def _watch_events(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        # Takeovers and reaped members arrive as mesh events; a subscription (bounded,
        # like everyone's) is how a component outside the runtime sees them.
        from gossip.events import MemberReaped
        from mesh.failover import SessionTakenOver

        async with self.mesh.subscribe() as events:
            task_status.started()
            async for event in events:
                if isinstance(event, SessionTakenOver):
                    self.note_takeover(event)
                elif isinstance(event, MemberReaped):
                    self.metrics.forget_peer(event.node)

    async def _repair_loop(self) -> None:
        while not self.mesh._closed:
            await trio.sleep(REPAIR_INTERVAL)
            if self.mesh.replica.damaged:
                with contextlib.suppress(StatemeshError):
                    if await self.repair():
                        self._wake.set()

    async def repair(self) -> list[str]:
        """Refill damaged documents from every live member; return the ones now repaired.

        A document is repaired only when every live member answered the pull and our
        replica covers the durable vector each reported: then nothing a peer holds
        durably is missing, and the checkpoint written supersedes the damaged records.
        """
        mesh = self.mesh
        replica = mesh.replica
        failover = mesh.failover
        damaged = sorted(replica.damaged)
        if not damaged or failover is None or mesh._leaving or mesh._closed:
            return []
        # The very peers `pull` asks (no await in between): all of them must answer.
        peers = failover.pull_peers()
        if not peers:
            return []
        answered = await failover.pull(damaged, timeout=REPAIR_PULL_TIMEOUT)
        if answered < len(peers) or mesh._closed:
            return []
        replicator = mesh.node.replicator
        repaired = []
        for doc_id in damaged:
            doc = replica.doc(doc_id)
            if doc is None or doc_id not in replica.damaged:
                continue
            ours = doc.get_state()
            if not all(
                covers(ours, replicator.peer_durable(p, doc_id) or EMPTY_STATE_VECTOR)
                for p in peers
            ):
                continue
            # State and sequence number at the same instant (no await between): every
            # record committed so far is in `state` (or is the damage it supersedes), and
            # later ones get higher numbers and load on top of the checkpoint.
            state = doc.get_update()
            upto = mesh.store.committed_seq(doc_id)
            await mesh.store.repair(doc_id, upto, state)
            replica.repaired(doc_id, ours)
            repaired.append(doc_id)
        return repaired

    def _loop_lag(self, lag: float, stalled: bool) -> None:
        self.metrics.loop_lag(lag, stalled=stalled)

    def refresh(self) -> None:
        """Recompute readiness, update the metrics, publish configuration changes."""
        if self._observed is None and CLUSTER in self.mesh.replica:
            self._observe()
        self._check_config()
        readiness = self.readiness()
        m = self.metrics
        mesh = self.mesh
        counts = dict.fromkeys(MEMBER_STATES, 0)
        for member in mesh.node.membership.members.values():
            if member.state in counts:
                counts[member.state] += 1
        m.members(counts)
        m.replication_lag(readiness.lag, sum(readiness.behind.values()))
        for peer in mesh.node.membership.live_members():
            m.peer_lag(peer, readiness.peer_lag.get(peer, 0.0))
        m.documents(len(mesh.replica))
        m.sessions_owned(len(self.owners().get(mesh.node_id, [])))
        m.ready(readiness.ready)
        m.damaged_documents(len(mesh.replica.damaged))
        self._count("takeovers", m.took_over)
        self._count("fenced", m.fenced)
        rejected = mesh.codec.rejected + mesh.transport.stats.bad_frames
        _feed(rejected, self._rejected, m.frame_rejected)
        refused = {
            "protocol": mesh.stats.get("refused_messages", 0),
            "replication": mesh.node.replicator.stats.malformed,
            "sync_queue": mesh.stats.get("sync_dropped", 0),
            "durable_vectors": mesh.node.replicator.stats.durable_refused,
            **mesh.node.membership.refused,
        }
        _feed(refused, self._refused, m.refused)
        if self._observed is not None:
            m.secrets(len(mesh.cluster.secret_names()))

    def _count(self, stat: str, inc: Any) -> None:
        total = self.mesh.stats.get(stat, 0)
        delta = total - self._counted.get(stat, 0)
        if delta > 0:
            inc(delta)
            self._counted[stat] = total

    # --- health ---------------------------------------------------------------------------

    def liveness(self) -> dict[str, Any]:
        """What `/livez` reports: live, the measured loop lag and the threshold."""
        live, lag = self.watchdog.live()
        return {
            "live": live,
            "loop_lag_seconds": round(lag, 4),
            "max_loop_lag_seconds": round(self.watchdog.max_lag, 4),
            "threshold_seconds": self.watchdog.threshold,
            "stalls": self.watchdog.stalls,
        }

    def readiness(self) -> Readiness:
        """Readiness now (recomputed; cheap when nothing changed)."""
        mesh = self.mesh
        now = trio.current_time()
        replicator = mesh.node.replicator
        live = mesh.node.membership.live_members()
        advertised = getattr(replicator, "_peer_durable", {})
        self.catch_up.update(
            now,
            advertised,
            mesh.replica.durable_state_vector,
            live,
            # Only equal digest trees prove we hold what a peer holds: vectors learned
            # from a few acks say nothing about the documents they do not name.
            exchanged=replicator.stats.digests_matched > 0,
        )
        readiness = assess(
            now,
            self.catch_up,
            ready_lag=self.ready_lag,
            started_at=self.started_at,
            expects_peers=self.expects_peers,
            live_peers=len(live),
            store_error=self.store_error,
            leaving=mesh._leaving or mesh._closed,
            standby_behind=self._standby_behind(),
            damaged=[str(d) for _, d in sorted(mesh.replica.damaged.items())],
            recovered_from=mesh.store_recovered_from,
        )
        self._readiness = readiness
        return readiness

    def _standby_behind(self) -> list[tuple[str, str]]:
        failover = self.mesh.failover
        if failover is None:
            return []
        me = self.mesh.node_id
        standbys = getattr(failover.state, "_standbys", {})
        out = []
        for workload, (owner, standby) in standbys.items():
            if (
                standby == me
                and owner != me
                and workload.startswith(SESSION_PREFIX)
                and any(workload in docs for docs in self.catch_up.behind.values())
            ):
                out.append((workload[len(SESSION_PREFIX) :], owner))
        return sorted(out)

    def owners(self) -> dict[str, list[str]]:
        """{node: [session ids it owns]} from this replica's ownership table."""
        failover = self.mesh.failover
        return {} if failover is None else failover.owners()

    def status(self) -> dict[str, Any]:
        """`mesh.status()` plus health, lag per peer, sessions owned per peer, last takeovers."""
        mesh = self.mesh
        out = mesh.status()
        readiness = self.readiness()
        live = self.liveness()
        out["health"] = {
            **readiness.to_dict(),
            "live": live["live"],
            "loop_lag_seconds": live["loop_lag_seconds"],
            "ready_lag_seconds": self.ready_lag,
            "store_error": self.store_error,
            "damaged_documents": [d.to_dict() for _, d in sorted(mesh.replica.damaged.items())],
        }
        out["lag"] = {
            p: round(readiness.peer_lag.get(p, 0.0), 3)
            for p in sorted(mesh.node.membership.live_members())
        }
        out["sessions_owned"] = {n: len(s) for n, s in sorted(self.owners().items())}
        out["takeovers"] = mesh.stats.get("takeovers", 0)
        out["last_takeovers"] = list(self.takeovers)
        return out

    def note_takeover(self, event: Any) -> None:
        """Remember a `SessionTakenOver` for `/status` (wall-clock time, newest last)."""
        self.takeovers.append(
            {
                "session": event.session_id,
                "from": event.previous_owner,
                "epoch": event.epoch,
                "covered": event.covered,
                "pending_tool_calls": len(event.pending),
                "at": round(time.time(), 3),
            }
        )

    # --- configuration -------------------------------------------------------------------------

    def _observe(self) -> None:
        doc = self.mesh.replica.doc(CLUSTER)
        if doc is None or self._observed is not None:
            return

        def changed(_event: object) -> None:
            # Inside a pycrdt transaction: only wake the loop, never raise.
            self._wake.set()

        self._observed = (doc, doc.observe(changed))

    def _unobserve(self) -> None:
        if self._observed is not None:
            doc, sub = self._observed
            self._observed = None
            with contextlib.suppress(Exception):  # the document may already be gone
                doc.unobserve(sub)

    def _config_versions(self) -> dict[str, tuple[int, str]]:
        config = self.mesh.cluster.to_dict()["config"]
        return {k: (e["version"], e["by"]) for k, e in config.items()}

    def _check_config(self) -> None:
        if self._observed is None:
            return
        cluster = self.mesh.cluster
        current = self._config_versions()
        if current == self._config_seen:
            return
        me = self.mesh.node_id
        changes = []
        for key, marker in sorted(current.items()):
            if self._config_seen.get(key) != marker:
                entry = cluster.entry(key)
                if entry is not None:
                    changes.append(
                        ConfigChanged(
                            key, entry.value, entry.version, entry.writer, entry.writer == me
                        )
                    )
        self._config_seen = current
        if changes:
            self.metrics.config_changed(len(changes))
            for event in changes:
                self.mesh._publish(event)

    def config(self) -> dict[str, dict[str, Any]]:
        """{key: {value, version, by}} of every cluster setting, sorted by key."""
        if CLUSTER not in self.mesh.replica:
            return {}
        return self.mesh.cluster.to_dict()["config"]

    def config_entry(self, key: str) -> Entry | None:
        """The winning write of setting `key`, or None if it was never set."""
        if CLUSTER not in self.mesh.replica:
            return None
        return self.mesh.cluster.entry(key)

    async def set_config(self, key: str, value: Any) -> Entry:
        """Validate and set `key`; return the new entry once it is durable here."""
        mesh = self.mesh
        mesh._check_open()
        cluster: ClusterState = mesh.cluster
        cluster.set(key, value, by=mesh.node_id)  # checks the schema before writing
        self._observe()
        await mesh.commit(CLUSTER)
        self._check_config()
        entry = cluster.entry(key)
        assert entry is not None  # we just wrote it; a concurrent higher write also counts
        return entry

    # --- secrets -------------------------------------------------------------------------------

    def _require_key(self) -> None:
        if self.mesh.config.keyring is None:
            raise LocalError("this node runs --insecure: it has no cluster key to seal secrets")

    async def set_secret(self, name: str, value: bytes) -> str:
        """Seal `value` as secret `name`; return the sealing key id once durable here."""
        self._require_key()
        mesh = self.mesh
        self.vault.put(mesh.cluster, name, value)
        self._observe()
        await mesh.commit(CLUSTER)
        return self.vault.key_ids(mesh.cluster)[name] or ""

    def get_secret(self, name: str) -> bytes | None:
        """The clear value of secret `name`, or None (`SecretUnreadable` if sealed away)."""
        self._require_key()
        if CLUSTER not in self.mesh.replica:
            return None
        return self.vault.get(self.mesh.cluster, name)

    def secrets(self) -> dict[str, str | None]:
        """{name: id of the key that sealed it}; values stay sealed."""
        if CLUSTER not in self.mesh.replica:
            return {}
        return self.vault.key_ids(self.mesh.cluster)
