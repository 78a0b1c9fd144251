"""`statemesh bench wire`: bytes on the wire per replicated update, and the idle gossip cost.

The protocol runs as in production, sans-IO, in virtual time: real `gossip.Node`s (SWIM
membership, rumours, anti-entropy, replica acks) in the deterministic simulator, every
envelope encoded by `gossip.codec` and sealed by `gossip.seal` (ChaCha20-Poly1305 under a
generated cluster key), so each byte counted is a byte of a real frame. Frames the runtime
sends as UDP datagrams (probes that fit 1,200 bytes) are counted as they are; the others
add the 4-byte length prefix of the TCP stream. IP/UDP/TCP headers are not counted.
Virtual time makes the figures exact and repeatable: the same seed gives the same bytes.

Two measurements, each next to its baseline from the same run:

* per update: a writer appends `--batch` agent messages to a session in one transaction
  (one commit's worth: the runtime turns each transaction into one update) and the node
  pushes it as a rumour. `bytes_per_update` is the mean size of the frames the writer's
  node emits for that push, per destination; the baseline `raw_update_bytes` is the size
  of the pycrdt update itself. The same is reported for single-message updates
  (`single_*`, `--batch 1`), and `mesh_bytes_per_update` adds what the whole mesh sends
  for one update until it is quiet again (fanout copies, retransmissions, replica acks),
  over an idle window of the same length.
* idle: `--peers` peers all holding the same `--documents` documents, converged, gossip
  for `--idle-seconds`; `idle_bytes_per_peer_per_s` is every frame any peer sent, per
  peer per second. Baselines: the same mesh with no documents (membership alone), and a
  naive anti-entropy that would send every document's state vector each exchange instead
  of a digest root (computed from the same documents' real vectors).
"""

from __future__ import annotations

import argparse
import math
import random
from collections import Counter

import pycrdt

from benchmarks._plot import Bars, add_plot_argument, bar_plot, check_plot_path, usage
from benchmarks._progress import note, phase
from crdt_types.session import SessionState
from gossip.codec import encode_envelope
from gossip.config import PROFILES
from gossip.config import profile as gossip_profile
from gossip.framing import PREFIX_BYTES
from gossip.keyring import Keyring
from gossip.messages import Ack, DocVectors, Envelope, Nack, Ping, PingReq
from gossip.replication import ReplicationConfig
from gossip.seal import Sealer
from gossip.simulator import Simulator

HELP = "bytes per replicated update (sealed, framed) vs raw pycrdt; idle gossip cost per peer"

SUITE = "wire"
_DATAGRAM_MAX = 1200  # as mesh.runtime: probes that fit go as UDP datagrams
_PROBE_TYPES = (Ping, Ack, PingReq, Nack)
_EPOCH = 1_800_000_000.0  # sealed frames carry wall-clock stamps: virtual time from here
# Words of the agent messages written: ~7 bytes each with the space, like English text.
_WORDS = tuple(
    [
        "the",
        "agent",
        "calls",
        "search",
        "with",
        "the",
        "query",
        "and",
        "summarises",
        "what",
        "it",
        "found",
        "in",
        "the",
        "retrieved",
        "documents",
        "before",
        "planning",
        "the",
        "next",
        "tool",
        "call",
        "of",
        "the",
        "workflow",
    ]
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the wire benchmark."""
    parser.add_argument("--batch", type=int, default=16, help="messages per batched update")
    parser.add_argument("--updates", type=int, default=200, help="updates written per case")
    parser.add_argument("--documents", type=int, default=10_000, help="documents held when idle")
    parser.add_argument("--peers", type=int, default=5, help="peers in the idle mesh")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle virtual seconds")
    parser.add_argument("--profile", default="lan", choices=sorted(PROFILES), help="timing")
    parser.add_argument("--seed", type=int, default=1, help="seed for every random choice")
    add_plot_argument(parser, "bytes per update and idle bytes per peer per second, vs baselines")


def run(args: argparse.Namespace) -> dict:
    """Run both measurements and return the figures."""
    for name in ("batch", "updates", "documents", "peers"):
        if getattr(args, name) < 1:
            raise usage(SUITE, f"--{name} must be at least 1")
    if args.peers < 2:
        raise usage(SUITE, "--peers must be at least 2")
    if not (math.isfinite(args.idle_seconds) and args.idle_seconds >= 1):
        raise usage(SUITE, "--idle-seconds must be at least 1")
    plot = check_plot_path(SUITE, args.plot)
    config = gossip_profile(args.profile)
    key = random.Random(f"key:{args.seed}").randbytes(32)

    batched = _update_cost(config, key, args.seed, args.batch, args.updates)
    single = _update_cost(config, key, args.seed + 1, 1, args.updates)
    idle = _idle_cost(config, key, args.seed, args.peers, args.documents, args.idle_seconds)
    empty = _idle_cost(config, key, args.seed, args.peers, 0, args.idle_seconds)
    naive = _naive_vectors_per_peer_per_s(idle["vectors_bytes"], config, args.documents)

    result = {
        "bytes_per_update": round(batched["frame"], 1),
        "raw_update_bytes": round(batched["raw"], 1),
        "overhead_ratio": round(batched["frame"] / batched["raw"], 3),
        "batch_messages": args.batch,
        "single_bytes_per_update": round(single["frame"], 1),
        "single_raw_update_bytes": round(single["raw"], 1),
        "single_overhead_ratio": round(single["frame"] / single["raw"], 3),
        "mesh_bytes_per_update": round(batched["mesh"], 1),
        "mesh_copies_per_update": round(batched["mesh"] / batched["frame"], 2),
        "idle_bytes_per_peer_per_s": round(idle["rate"], 1),
        "idle_bytes_per_peer_per_s_no_documents": round(empty["rate"], 1),
        "naive_vector_exchange_bytes_per_peer_per_s": round(naive, 1),
        "documents": args.documents,
        "peers": args.peers,
        "idle_seconds": args.idle_seconds,
        "idle_bytes_by_message": idle["by_type"],
        "profile": config.name,
        "sealed": True,
        "seed": args.seed,
    }
    if plot is not None:
        bar_plot(
            plot,
            [
                Bars(
                    "bytes per replicated update",
                    [f"{args.batch} messages", "1 message"],
                    [
                        ("raw pycrdt update", [batched["raw"], single["raw"]]),
                        ("sealed, framed", [batched["frame"], single["frame"]]),
                    ],
                    "bytes",
                ),
                Bars(
                    f"idle, {args.peers} peers",
                    [f"{args.documents:,} docs", "no docs", "naive vectors"],
                    [("bytes per peer per second", [idle["rate"], empty["rate"], naive])],
                    "bytes per peer per second (log)",
                    log=True,
                ),
            ],
            title="statemesh bench wire",
            note=(
                f"overhead {batched['frame'] / batched['raw']:.3f}x batched, "
                f"{single['frame'] / single['raw']:.3f}x single; profile {config.name}, sealed"
            ),
        )
        note(SUITE, f"plot written to {plot}")
    return result


# --- a simulator whose frames are sealed and counted -------------------------------------


class SealedSimulator(Simulator):
    """The deterministic simulator, counting the bytes of real sealed frames."""

    def __init__(
        self, seed: int, config, key: bytes, replication: ReplicationConfig | None = None
    ) -> None:
        # Our own encoding below runs the codec's checks; the base need not encode again.
        super().__init__(seed, config, wire=False, replication=replication or ReplicationConfig())
        self._keyring = Keyring([key])
        self._sealers: dict[str, Sealer] = {}
        self._boot = random.Random(f"boot:{seed}")
        self.frame_bytes = 0
        self.frames = 0
        self.bytes_by_type: Counter[str] = Counter()

    def frame_size(self, src: str, env: Envelope) -> int:
        """Seal `env` as node `src` would; return the bytes it occupies on the wire."""
        sealer = self._sealers.get(src)
        if sealer is None:
            sealer = Sealer("statemesh", self._keyring, src, self._boot.getrandbits(64))
            self._sealers[src] = sealer
        frame = sealer.seal(_EPOCH + self.now, encode_envelope(env))
        datagram = len(frame) <= _DATAGRAM_MAX and any(
            isinstance(m, _PROBE_TYPES) for m in env.messages
        )
        return len(frame) + (0 if datagram else PREFIX_BYTES)

    def _send(self, src: str, address: str, env: Envelope) -> None:
        size = self.frame_size(src, env)
        self.frame_bytes += size
        self.frames += 1
        # Attribute the frame to its first message's type (envelopes are mostly one kind).
        kind = type(env.messages[0]).__name__ if env.messages else "Envelope"
        self.bytes_by_type[kind] += size
        super()._send(src, address, env)


def _mesh(seed: int, config, key: bytes, peers: int) -> tuple[SealedSimulator, list[str]]:
    sim = SealedSimulator(seed, config, key)
    ids = [f"peer{i:02d}" for i in range(peers)]
    for node_id in ids:
        sim.add_node(node_id)
    return sim, ids


def _start(sim: SealedSimulator, ids: list[str]) -> None:
    for node_id in ids:
        sim.start(node_id, known=ids)
    # Let membership settle: joins gossiped, first anti-entropy rounds done.
    sim.run_until(sim.now + 40 * sim.config.gossip_interval)


def agent_message(rng: random.Random, n_words: int = 30) -> str:
    """A plausible agent message of `n_words` words (about 7 bytes each), from `rng`."""
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


def _update_cost(config, key: bytes, seed: int, batch: int, updates: int) -> dict:
    """Frame bytes per update for the writer's push, and the whole mesh's bytes per update."""
    sim, ids = _mesh(seed, config, key, 3)
    _start(sim, ids)
    writer = sim.nodes[ids[0]]
    replica = sim.replicas[ids[0]]
    doc_id = "session/wire"
    state = SessionState.new("wire", replica.doc(doc_id))
    rng = random.Random(f"text:{seed}")
    spacing = config.gossip_interval / 4  # several updates per gossip round
    quiet = 40 * config.gossip_interval  # rumours and acks all done well before this

    # Baseline: the same span with no writes, to subtract membership traffic.
    span = updates * spacing + quiet
    before = sim.frame_bytes
    sim.run_until(sim.now + span)
    idle_bytes = sim.frame_bytes - before

    raw_total = frame_total = pushes = 0
    before = sim.frame_bytes
    t0 = sim.now
    with phase(SUITE, f"updates of {batch} message(s)", updates) as bar:
        for i in range(updates):
            sim.run_until(t0 + i * spacing)
            doc = state.doc
            box: list[bytes] = []
            sub = doc.observe(lambda event, box=box: box.append(event.update))
            with doc.transaction():
                for _ in range(batch):
                    state.append_message("assistant", agent_message(rng))
            doc.unobserve(sub)
            (update,) = box
            replica.changed(doc_id)
            out = writer.local_update(sim.now, doc_id, update)
            raw_total += len(update)
            for _, env in out.sends:
                frame_total += sim.frame_size(ids[0], env)
                pushes += 1
            sim._handle(ids[0], out)
            bar.advance()
        sim.run_until(t0 + span)
    if not sim.converged([doc_id]):
        raise RuntimeError(f"wire bench: replicas did not converge (seed {seed})")
    mesh_bytes = sim.frame_bytes - before - idle_bytes
    return {
        "raw": raw_total / updates,
        "frame": frame_total / max(1, pushes),
        "mesh": mesh_bytes / updates,
    }


def _populate(sim: SealedSimulator, ids: list[str], documents: int, seed: int) -> None:
    """Give every peer the same `documents` session documents (converged from the start)."""
    rng = random.Random(f"docs:{seed}")
    with phase(SUITE, f"loading {documents:,} documents on {len(ids)} peers", documents) as bar:
        for d in range(documents):
            doc = pycrdt.Doc(client_id=rng.randrange(1, 2**31))
            state = SessionState.new(f"s{d:05d}", doc)
            state.append_message("user", agent_message(rng, 8))
            update = doc.get_update()
            doc_id = f"session/s{d:05d}"
            for node_id in ids:
                sim.replicas[node_id].apply(doc_id, update)
            bar.advance()
    for node_id in ids:
        sim.nodes[node_id].replicator.rebuild()


def _idle_cost(config, key: bytes, seed: int, peers: int, documents: int, seconds: float) -> dict:
    """Bytes per peer per second of a converged, idle mesh holding `documents` documents."""
    sim, ids = _mesh(seed, config, key, peers)
    if documents:
        _populate(sim, ids, documents, seed)
    _start(sim, ids)
    if documents and not sim.nodes[ids[0]].replicator.root == sim.nodes[ids[-1]].replicator.root:
        raise RuntimeError("wire bench: idle replicas differ before the idle window")
    before = sim.frame_bytes
    by_type_before = Counter(sim.bytes_by_type)
    steps = max(1, math.ceil(seconds))
    t0 = sim.now
    with phase(SUITE, f"idle mesh, {documents:,} documents", steps) as bar:
        for s in range(1, steps + 1):
            sim.run_until(t0 + min(seconds, s))
            bar.advance()
    total = sim.frame_bytes - before
    by_type = Counter(sim.bytes_by_type)
    by_type.subtract(by_type_before)
    vectors = 0
    if documents:
        # What one naive exchange would carry: every document's real vector entry.
        replicator = sim.nodes[ids[0]].replicator
        entries = tuple(replicator._entry(d) for d in sorted(sim.replicas[ids[0]].doc_ids()))
        vectors = len(
            encode_envelope(
                Envelope(ids[0], sim.addresses[ids[0]], 0, (DocVectors(1, (), entries, True),))
            )
        )
        vectors += sim._sealers[ids[0]].overhead + PREFIX_BYTES
    return {
        "rate": total / peers / seconds,
        "by_type": {k: round(v / peers / seconds, 1) for k, v in sorted(by_type.items()) if v},
        "vectors_bytes": vectors,
    }


def _naive_vectors_per_peer_per_s(vectors_bytes: int, config, documents: int) -> float:
    """A peer starting an exchange every anti-entropy interval, answered in kind."""
    interval = ReplicationConfig().anti_entropy_interval or config.gossip_interval
    # Each peer starts one exchange per interval and answers about one: two lists each.
    return 2 * vectors_bytes / interval if documents else 0.0
