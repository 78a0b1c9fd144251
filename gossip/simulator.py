"""A deterministic simulator: many `Node`s on a virtual network, driven by an event heap.

Everything that varies comes from one seed: per-node `random.Random`s, the network's
loss, duplication and latency draws, the scenario's choices of writers and victims, and
even the pycrdt client ids of documents written here. Virtual time only advances by
popping the heap, so a run takes as long as its computation, not its timeouts, and the
same seed replays the same trace (`trace_digest`, a blake3 over every delivery) and the
same JSON, except `wall_s`.

The network: each envelope is encoded with `gossip.codec` (so the wire format and its
checks run on every message; `wire=False` skips that for speed), then lost with
probability `loss`, duplicated with probability `duplicate`, and delivered after a
latency drawn from [latency_min, latency_max] (which reorders messages on its own); a
`reorder` fraction gets an extra `reorder_delay`. A partition is a set of groups: while it
is active, envelopes between groups are dropped at send time. A one-way cut drops only
what one node sends (to everyone or to some), as a firewall rule on its output does: it
still receives everything. A crashed node loses its
in-flight messages and timers; its replica (the durable store) survives, and a restart
builds a fresh `Node` with a higher incarnation that re-joins through live seeds.

`run_scenario` is what `statemesh sim` runs: random writes on random nodes, optional
loss, an optional partition that heals, K nodes killed; it measures convergence, failure
detection and traffic in gossip rounds (`GossipConfig.gossip_interval`).
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import msgpack

from crdt_types.errors import LocalError
from gossip.codec import decode_envelope, encode_envelope
from gossip.config import GossipConfig, lan
from gossip.events import MemberDead
from gossip.messages import PROTOCOL_VERSION, Envelope
from gossip.node import Node, Output

_DELIVER = 0
_TICK = 1
_CALL = 2


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Behaviour of the virtual network (seconds and probabilities)."""

    latency_min: float = 0.0005
    latency_max: float = 0.003
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.02

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise LocalError(f"NetworkConfig.{name} must be a probability in [0, 1]")
        if not 0 <= self.latency_min <= self.latency_max:
            raise LocalError("NetworkConfig latencies must satisfy 0 <= min <= max")


@dataclass(frozen=True, slots=True)
class Partition:
    """Groups of node ids that cannot reach one another from `start` until `heal`."""

    start: float
    heal: float
    groups: tuple[frozenset[str], ...]


@dataclass(frozen=True, slots=True)
class OneWayCut:
    """What `src` sends to `dsts` (to anyone if empty) is lost from `start` until `heal`."""

    start: float
    heal: float
    src: str
    dsts: frozenset[str] = frozenset()


class Simulator:
    """Seeded discrete-event simulation of gossip nodes."""

    def __init__(
        self,
        seed: int,
        config: GossipConfig | None = None,
        network: NetworkConfig | None = None,
        *,
        wire: bool = True,
        replicate: bool = True,
        replication: object | None = None,
    ) -> None:
        self.seed = seed
        self.replication = replication
        self.config = config or lan()
        self.network = network or NetworkConfig()
        self.wire = wire
        self.replicate = replicate
        self.now = 0.0
        self._rng = random.Random(f"net:{seed}")
        self._heap: list[tuple] = []
        self._seq = 0
        self.nodes: dict[str, Node | None] = {}  # None while crashed
        self.addresses: dict[str, str] = {}  # node id -> address
        self._by_address: dict[str, str] = {}
        self.replicas: dict[str, object] = {}
        self._scheduled: dict[str, float] = {}
        self._incarnations: dict[str, int] = {}
        self._partitions: list[Partition] = []
        self._group_of: list[dict[str, int]] = []
        self._cuts: list[OneWayCut] = []
        self._trace = blake3.blake3()
        self._client_ids = random.Random(f"clients:{seed}")
        self.bytes_sent = 0
        self.envelopes_sent = 0
        self.envelopes_delivered = 0
        self.dropped = 0
        self.event_log: list[tuple[float, str, object]] = []  # (time, observer, event)
        self.on_event: Callable[[float, str, object], None] | None = None
        self.on_deliver: Callable[[float, str, str, int], None] | None = None
        # (now, receiver, envelope) before the receiver processes it: what the runtime's
        # transport sees (e.g. answers to requests a test harness sent).
        self.on_receive: Callable[[float, str, Envelope], None] | None = None

    # --- building ----------------------------------------------------------------------

    def add_node(self, node_id: str, address: str | None = None) -> Node:
        """Create a node (not yet started) with its own seeded rng and replica."""
        if node_id in self.nodes:
            raise LocalError(f"node {node_id!r} exists")
        address = address or f"10.{len(self.nodes) // 250}.{len(self.nodes) % 250}.1:7946"
        self.addresses[node_id] = address
        self._by_address[address] = node_id
        replica = _SimReplica(self._client_ids) if self.replicate else None
        if replica is not None:
            self.replicas[node_id] = replica
        node = self._make_node(node_id, 0)
        self.nodes[node_id] = node
        return node

    def _make_node(self, node_id: str, incarnation: int) -> Node:
        rng = random.Random(f"node:{self.seed}:{node_id}:{incarnation}")
        self._incarnations[node_id] = incarnation
        return Node(
            node_id,
            self.addresses[node_id],
            self.config,
            rng,
            self.replicas.get(node_id),
            incarnation=incarnation,
            replication=self.replication,
        )

    def start(self, node_id: str, seeds: Sequence[str] = (), known: Iterable[str] = ()) -> None:
        """Start a node now, joining via seed node ids and/or knowing `known` node ids."""
        node = self._live(node_id)
        out = node.start(
            self.now,
            [self.addresses[s] for s in seeds],
            [(k, self.addresses[k]) for k in known if k != node_id],
        )
        self._handle(node_id, out)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run `fn()` at virtual time `t` (scenario steps: writes, kills, checks)."""
        self._push(t, _CALL, fn, None)

    def partition(self, start: float, heal: float, groups: Sequence[Iterable[str]]) -> None:
        """Split the network into `groups` from `start` until `heal`."""
        if heal <= start:
            raise LocalError("a partition must heal after it starts")
        part = Partition(start, heal, tuple(frozenset(g) for g in groups))
        self._partitions.append(part)
        self._group_of.append({n: i for i, g in enumerate(part.groups) for n in g})

    def cut_outbound(self, start: float, heal: float, node_id: str, to: Iterable[str] = ()) -> None:
        """Drop what `node_id` sends (to the ids in `to`, or to anyone) from `start` until `heal`."""
        if heal <= start:
            raise LocalError("a cut must heal after it starts")
        if node_id not in self.nodes:
            raise LocalError(f"unknown node {node_id!r}")
        self._cuts.append(OneWayCut(start, heal, node_id, frozenset(to)))

    def kill(self, node_id: str) -> None:
        """Crash a node now (SIGKILL): timers and in-flight messages to it are lost."""
        self._live(node_id)
        self.nodes[node_id] = None
        self._scheduled.pop(node_id, None)
        self._record("kill", node_id)

    def restart(self, node_id: str, seeds: Sequence[str] = ()) -> Node:
        """Restart a crashed node with a new incarnation and its surviving replica."""
        if self.nodes.get(node_id, 1) is not None:
            raise LocalError(f"node {node_id!r} is not crashed")
        incarnation = self._incarnations[node_id] + 1
        node = self._make_node(node_id, incarnation)
        self.nodes[node_id] = node
        self._record("restart", node_id)
        self.start(node_id, seeds)
        return node

    def is_up(self, node_id: str) -> bool:
        """Whether the node is running."""
        return self.nodes.get(node_id) is not None

    def up_nodes(self) -> list[str]:
        """Ids of running nodes, in creation order."""
        return [n for n, node in self.nodes.items() if node is not None]

    def _live(self, node_id: str) -> Node:
        node = self.nodes.get(node_id)
        if node is None:
            raise LocalError(f"node {node_id!r} is not running")
        return node

    # --- writing -----------------------------------------------------------------------

    def write(self, node_id: str, doc_id: str, key: str, value: str) -> None:
        """Write key=value into a map of `doc_id` on `node_id` and spread it."""
        import pycrdt

        node = self._live(node_id)
        replica = self.replicas[node_id]
        doc = replica.doc(doc_id)
        before = doc.get_state()
        data = doc.get("data", type=pycrdt.Map)
        with doc.transaction():
            data[key] = value
        update = doc.get_update(before)
        replica.changed(doc_id)
        self._handle(node_id, node.local_update(self.now, doc_id, update))

    def send(self, node_id: str, peer: str, messages: Sequence[object]) -> None:
        """Send `messages` from `node_id` to `peer` in one envelope now (harness requests)."""
        node = self._live(node_id)
        me = node.membership.me
        env = Envelope(node_id, me.address, me.incarnation, tuple(messages))
        self._handle(node_id, Output([(self.addresses[peer], env)], []))

    # --- running -----------------------------------------------------------------------

    def run_until(self, t_end: float, max_events: int = 50_000_000) -> None:
        """Process events up to virtual time `t_end` (bounded by `max_events`)."""
        heap = self._heap
        pop = heapq.heappop
        for _ in range(max_events):
            if not heap or heap[0][0] > t_end:
                self.now = max(self.now, t_end)
                return
            t, _, kind, a, b = pop(heap)
            self.now = t
            if kind == _DELIVER:
                self._deliver(a, b)
            elif kind == _TICK:
                if self._scheduled.get(a) == t:
                    del self._scheduled[a]
                    node = self.nodes.get(a)
                    if node is not None:
                        self._handle(a, node.tick(t))
            else:
                a()
        raise LocalError(f"simulation exceeded {max_events} events")

    def _push(self, t: float, kind: int, a, b) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def _handle(self, node_id: str, out: Output) -> None:
        for event in out.events:
            self.event_log.append((self.now, node_id, event))
            if self.on_event is not None:
                self.on_event(self.now, node_id, event)
        for address, env in out.sends:
            self._send(node_id, address, env)
        node = self.nodes.get(node_id)
        if node is None:
            return
        deadline = node.next_deadline()
        if deadline <= self.now:
            deadline = self.now + 1e-6  # a timer due now runs next, after this event
        current = self._scheduled.get(node_id, math.inf)
        if deadline < current:
            self._scheduled[node_id] = deadline
            self._push(deadline, _TICK, node_id, None)

    def _reachable(self, src: str, dst: str) -> bool:
        now = self.now
        for part, group_of in zip(self._partitions, self._group_of, strict=True):
            if part.start <= now < part.heal and group_of.get(src, -1) != group_of.get(dst, -1):
                return False
        for cut in self._cuts:
            if cut.src == src and cut.start <= now < cut.heal and (not cut.dsts or dst in cut.dsts):
                return False
        return True

    def _send(self, src: str, address: str, env: Envelope) -> None:
        dst = self._by_address.get(address)
        if self.wire:
            payload: object = encode_envelope(env)
            size = len(payload)
        else:
            payload = env
            size = wire_size(env)
        self.bytes_sent += size
        self.envelopes_sent += 1
        rng = self._rng
        net = self.network
        if dst is None or not self._reachable(src, dst) or (net.loss and rng.random() < net.loss):
            self.dropped += 1
            return
        copies = 2 if net.duplicate and rng.random() < net.duplicate else 1
        for _ in range(copies):
            delay = net.latency_min + rng.random() * (net.latency_max - net.latency_min)
            if net.reorder and rng.random() < net.reorder:
                delay += net.reorder_delay
            self._push(self.now + delay, _DELIVER, dst, (src, payload, size))

    def _deliver(self, dst: str, item: tuple) -> None:
        node = self.nodes.get(dst)
        if node is None:
            return
        src, payload, size = item
        env = decode_envelope(payload) if self.wire else payload
        self.envelopes_delivered += 1
        self._trace.update(f"{self.now:.9f} {src} {dst} {size};".encode())
        if self.on_deliver is not None:
            self.on_deliver(self.now, src, dst, size)
        if self.on_receive is not None:
            self.on_receive(self.now, dst, env)
        self._handle(dst, node.receive(self.now, env))

    def _record(self, what: str, node_id: str) -> None:
        self._trace.update(f"{self.now:.9f} {what} {node_id};".encode())

    def trace_digest(self) -> str:
        """Hex blake3 of everything delivered so far (equal runs have equal digests)."""
        return self._trace.copy().hexdigest()

    # --- observing -----------------------------------------------------------------------

    def fingerprints(self, doc_id: str) -> dict[str, bytes]:
        """Fingerprint of `doc_id` on every running node."""
        return {n: self.replicas[n].fingerprint(doc_id) for n in self.up_nodes()}

    def converged(self, doc_ids: Iterable[str]) -> bool:
        """True if every running node holds the same fingerprint for each document."""
        up = self.up_nodes()
        for doc_id in doc_ids:
            first = None
            for n in up:
                fp = self.replicas[n].fingerprint(doc_id)
                if first is None:
                    first = fp
                elif fp != first:
                    return False
        return True


def _nested(obj: object) -> list:
    return [getattr(obj, name) for name in obj.__slots__]  # type: ignore[attr-defined]


def wire_size(env: Envelope) -> int:
    """Bytes `gossip.codec.encode_envelope(env)` produces, without its per-field checks.

    The codec validates every field on the way out, which dominates a 1,000-node run; the
    same msgpack layout packed directly has the same length (a test holds them equal).
    """
    wire = [
        PROTOCOL_VERSION,
        env.sender,
        env.sender_address,
        env.incarnation,
        [[type(m).TYPE, *_nested(m)] for m in env.messages],  # type: ignore[attr-defined]
    ]
    return len(msgpack.packb(wire, use_bin_type=True, default=_nested))


def _memory_replica_class():
    from gossip.replica import MemoryReplica

    return MemoryReplica


class _SimReplica:
    """A `MemoryReplica` whose documents get pycrdt client ids from the seeded rng.

    pycrdt picks client ids at random, and they end up in update bytes and state
    vectors; drawing them from the simulator's rng keeps byte counts and traces equal
    between runs of one seed.
    """

    def __new__(cls, ids: random.Random):
        import pycrdt

        base = _memory_replica_class()

        class Replica(base):  # type: ignore[misc, valid-type]
            def doc(self, doc_id: str) -> pycrdt.Doc:
                if not self.has(doc_id):
                    self._docs[doc_id] = pycrdt.Doc(client_id=ids.randrange(1, 2**31))
                return super().doc(doc_id)

            def apply(self, doc_id: str, update: bytes) -> bool:
                # A document first seen from a peer may be written here later.
                if isinstance(doc_id, str) and doc_id and not self.has(doc_id):
                    self._docs[doc_id] = pycrdt.Doc(client_id=ids.randrange(1, 2**31))
                return super().apply(doc_id, update)

        return Replica()


# --- the `statemesh sim` scenario --------------------------------------------------------


def run_scenario(nodes: int, seed: int = 1, **options: Any) -> dict:
    """Run one scenario and return the `statemesh sim --json` dict (options: `run_scenario_sim`)."""
    return run_scenario_sim(nodes, seed, **options)[0]


def run_scenario_sim(
    nodes: int,
    seed: int = 1,
    *,
    loss: float = 0.0,
    duplicate: float = 0.0,
    reorder: float = 0.0,
    partition_at: float | None = None,
    partition_rounds: int = 30,
    kill: int = 0,
    writes: int | None = None,
    docs: int = 8,
    write_rounds: int = 10,
    bootstrap: str = "static",
    config: GossipConfig | None = None,
    wire: bool = True,
    max_rounds: int = 400,
) -> tuple[dict, Simulator]:
    """Run one scenario; returns its `statemesh sim --json` dict and the simulator (tests)."""
    if nodes < 1:
        raise LocalError("--nodes must be at least 1")
    if not 0 <= kill < nodes:
        raise LocalError("--kill must be between 0 and nodes - 1")
    if bootstrap not in ("static", "join"):
        raise LocalError("bootstrap must be 'static' or 'join'")
    if writes is None:
        writes = 20
    started = time.perf_counter()
    config = config or lan()
    sim = Simulator(
        seed,
        config,
        NetworkConfig(loss=loss, duplicate=duplicate, reorder=reorder),
        wire=wire,
    )
    rnd = config.gossip_interval
    scenario = random.Random(f"scenario:{seed}")
    ids = [f"n{i:04d}" for i in range(nodes)]
    for node_id in ids:
        sim.add_node(node_id)

    # Metrics collected from the event stream.
    dead_marks: dict[str, dict[str, float]] = {}  # victim -> observer -> first time
    killed_at: dict[str, float] = {}
    false_dead: set[str] = set()
    partition_dead: set[str] = set()
    window = config.detection_bound(nodes)

    def explained_by_partition(a: str, b: str, t: float) -> bool:
        for part, group_of in zip(sim._partitions, sim._group_of, strict=True):
            # The window covers verdicts still on their way when the partition healed.
            recent = part.start <= t <= part.heal + 2 * window
            if recent and group_of.get(a, -1) != group_of.get(b, -1):
                return True
        return False

    def on_event(t: float, observer: str, event: object) -> None:
        if type(event) is MemberDead:
            victim = event.node
            dead_marks.setdefault(victim, {}).setdefault(observer, t)
            if sim.is_up(victim) and victim not in killed_at:
                # Attribute the verdict to whoever formed it: a member that could not
                # reach the victim across a partition is not a false detection.
                if explained_by_partition(event.origin, victim, t):
                    partition_dead.add(victim)
                else:
                    false_dead.add(victim)

    sim.on_event = on_event

    if bootstrap == "static":
        for node_id in ids:
            sim.start(node_id, known=ids)
        warmup = 5
    else:
        for i, node_id in enumerate(ids):
            seeds = [ids[0]] if i else []
            sim.at(i * 0.002, lambda n=node_id, s=seeds: sim.start(n, seeds=s))
        warmup = 40 + int(2 * math.log2(max(2, nodes)))
    t0 = warmup * rnd
    sim.run_until(t0)

    # Writes on random live nodes, spread over `write_rounds` rounds.
    doc_ids = [f"session/{i}" for i in range(docs)]
    victims = scenario.sample(ids, kill)
    writers = [n for n in ids if n not in victims] or ids
    write_times = sorted(t0 + scenario.random() * write_rounds * rnd for _ in range(writes))
    for i, t in enumerate(write_times):
        writer = writers[scenario.randrange(len(writers))]
        doc_id = doc_ids[scenario.randrange(docs)]

        def do_write(w=writer, d=doc_id, k=f"k{i}", v=f"v{i}") -> None:
            if sim.is_up(w):
                sim.write(w, d, k, v)

        sim.at(t, do_write)
    last_write = write_times[-1] if write_times else t0

    for j, victim in enumerate(victims):
        t_kill = t0 + (j % 5) * 0.05

        def do_kill(v=victim, tk=t_kill) -> None:
            killed_at[v] = tk
            sim.kill(v)

        sim.at(t_kill, do_kill)

    heal_at = None
    if partition_at is not None:
        start = t0 + partition_at * rnd
        heal_at = start + partition_rounds * rnd
        shuffled = list(ids)
        scenario.shuffle(shuffled)
        half = len(shuffled) // 2
        sim.partition(start, heal_at, [shuffled[:half], shuffled[half:]])

    # Advance round by round until converged, kills detected and membership whole again.
    converged_at = None
    t = t0
    end = max(last_write, heal_at or 0.0) + max_rounds * rnd
    written = [d for d in doc_ids]
    while t < end:
        t += rnd
        sim.run_until(t)
        if t < last_write or (heal_at is not None and t < heal_at):
            continue
        if converged_at is None and sim.converged(written):
            converged_at = t
        done = converged_at is not None and _detected(sim, killed_at, dead_marks) is not None
        if done and (heal_at is None or _membership_whole(sim)):
            break
    detect = _detected(sim, killed_at, dead_marks)
    live = sim.up_nodes()
    total_rounds = max(1.0, sim.now / rnd)
    result = {
        "nodes": nodes,
        "seed": seed,
        "loss": loss,
        "kill": kill,
        "partition_at": partition_at,
        "converged": converged_at is not None and sim.converged(written),
        "rounds_to_converge": (
            None if converged_at is None else math.ceil((converged_at - last_write) / rnd - 1e-9)
        ),
        "rounds_to_converge_after_heal": (
            None
            if converged_at is None or heal_at is None
            else max(0, math.ceil((converged_at - max(heal_at, last_write)) / rnd - 1e-9))
        ),
        "log2_nodes": round(math.log2(nodes), 3),
        "detect_rounds_p50": None,
        "detect_rounds_max": None,
        "detect_bound_rounds": round(window / rnd, 2),
        "undetected": 0,
        "false_dead": len(false_dead),
        "partition_dead": len(partition_dead),
        "membership_whole": _membership_whole(sim),
        "live_nodes": len(live),
        "writes": writes,
        "bytes_per_node_per_round": round(sim.bytes_sent / nodes / total_rounds, 1),
        "envelopes": sim.envelopes_sent,
        "virtual_s": round(sim.now, 3),
        "trace_digest": sim.trace_digest(),
        "wall_s": 0.0,
    }
    if kill:
        rounds = [r for r in (detect or {}).values() if r is not None]
        result["undetected"] = kill - len(rounds) if detect else kill
        if rounds:
            result["detect_rounds_p50"] = round(statistics.median(rounds), 2)
            result["detect_rounds_max"] = round(max(rounds), 2)
    result["wall_s"] = round(time.perf_counter() - started, 3)
    return result, sim


def _detected(sim: Simulator, killed_at: dict, dead_marks: dict) -> dict | None:
    """Rounds from each kill until every live node marked it dead; None if any is pending."""
    rnd = sim.config.gossip_interval
    live = sim.up_nodes()
    out = {}
    for victim, t_kill in killed_at.items():
        marks = dead_marks.get(victim, {})
        latest = 0.0
        for n in live:
            t = marks.get(n)
            if t is None or t < t_kill:
                return None
            latest = max(latest, t)
        out[victim] = (latest - t_kill) / rnd
    return out


def _membership_whole(sim: Simulator) -> bool:
    """True if every running node sees every other running node as alive or suspect."""
    live = sim.up_nodes()
    want = set(live)
    for n in live:
        m = sim.nodes[n].membership
        if m.estimated_size() != len(live):
            return False
        if not all(x in want for x in m.live_members()):
            return False
    return True
